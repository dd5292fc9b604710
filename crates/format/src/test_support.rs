//! Helpers shared by the unit tests: sample batches and in-place corruption with a fresh CRC.
//!
//! Test-only; nothing here is compiled into the library.

use crate::batch::{CRC_AT, CRC_START};
use crate::{compute_crc, BatchBuilder, Header, NewRecord};

/// A batch of `count` small records with keys, values, one header each and distinct timestamps.
pub(crate) fn sample_batch(count: usize) -> Vec<u8> {
    let headers = [Header { key: b"h", value: Some(b"v") }];
    let mut builder = BatchBuilder::new(0);
    for index in 0..count {
        let key = [b'k', index as u8];
        builder.push(&NewRecord {
            key: Some(&key),
            value: Some(b"value"),
            headers: &headers,
            timestamp_ms: 1_700_000_000_000 + index as i64,
        });
    }
    builder.build()
}

/// Recomputes the CRC after a test has edited the bytes on purpose, so only the edit is judged.
pub(crate) fn reseal(bytes: &mut [u8]) {
    let crc = compute_crc(bytes);
    bytes[CRC_AT..CRC_START].copy_from_slice(&crc.to_be_bytes());
}

/// Byte positions where each record starts, for batches whose record lengths fit in one varint byte.
pub(crate) fn record_starts(bytes: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut at = crate::BATCH_HEADER_BYTES;
    while at < bytes.len() {
        assert!(bytes[at] < 0x80, "record_starts handles only 1-byte record lengths");
        starts.push(at);
        at += 1 + usize::from(bytes[at] / 2);
    }
    starts
}

/// Overwrites a big-endian i32 header field at `at` and reseals.
pub(crate) fn patch_i32(bytes: &mut [u8], at: usize, value: i32) {
    bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
    reseal(bytes);
}
