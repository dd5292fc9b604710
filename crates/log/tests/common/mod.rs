//! Helpers shared by the log's integration tests: building batches, decoding reads, and a
//! small configuration that makes segments roll often.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sluice_format::{records, BatchBuilder, BatchHeader, NewRecord};
use sluice_log::sim::SimStorage;
use sluice_log::{Clock, LogConfig, ManualClock, Partition};

/// A decoded record: offset, key, value, timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub offset: u64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub timestamp_ms: i64,
}

/// A record to build: key, value, timestamp.
pub type Spec<'a> = (Option<&'a [u8]>, Option<&'a [u8]>, i64);

/// One batch of `(key, value, timestamp)` records.
pub fn batch(records: &[Spec<'_>]) -> Vec<u8> {
    let mut builder = BatchBuilder::new(0);
    for (key, value, timestamp_ms) in records {
        builder.push(&NewRecord {
            key: *key,
            value: *value,
            headers: &[],
            timestamp_ms: *timestamp_ms,
        });
    }
    builder.build()
}

/// One batch of keyless records holding `values`, all at `timestamp_ms`.
pub fn value_batch(values: &[Vec<u8>], timestamp_ms: i64) -> Vec<u8> {
    let records: Vec<_> =
        values.iter().map(|value| (None, Some(value.as_slice()), timestamp_ms)).collect();
    batch(&records)
}

/// Decodes concatenated batches into records.
pub fn decode(mut bytes: &[u8]) -> Vec<Rec> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let total = BatchHeader::peek_total_bytes(bytes).unwrap() as usize;
        sluice_format::validate(&bytes[..total]).unwrap();
        for record in records(&bytes[..total]).unwrap() {
            let record = record.unwrap();
            out.push(Rec {
                offset: record.offset as u64,
                key: record.key.map(<[u8]>::to_vec),
                value: record.value.map(<[u8]>::to_vec),
                timestamp_ms: record.timestamp_ms,
            });
        }
        bytes = &bytes[total..];
    }
    out
}

/// Every visible record from the log start to the high watermark.
pub fn read_all(log: &Partition) -> Vec<Rec> {
    let mut out: Vec<Rec> = Vec::new();
    let high_watermark = log.high_watermark();
    let mut offset = log.log_start_offset();
    while offset < high_watermark {
        let read = log.read(offset, 64 * 1024).unwrap();
        let records = decode(&read.batches);
        if read.batches.is_empty() {
            break;
        }
        out.extend(records.into_iter().filter(|record| record.offset >= offset));
        // Continue after the last batch returned: compaction may have emptied the end of a
        // batch (it keeps `lastOffsetDelta`), so its last record can sit before its last offset.
        offset = last_offset_after(&read.batches);
    }
    out
}

/// The offset after the last batch in `bytes` (concatenated whole batches, not empty).
pub fn last_offset_after(mut bytes: &[u8]) -> u64 {
    let mut next = 0;
    while !bytes.is_empty() {
        let total = BatchHeader::peek_total_bytes(bytes).unwrap() as usize;
        next = BatchHeader::parse(&bytes[..total]).unwrap().last_offset() as u64 + 1;
        bytes = &bytes[total..];
    }
    next
}

/// Segments of 4 KiB, index entries every 128 bytes, checkpoints every 1 KiB, nothing expires.
pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 4096,
        batch_bytes_max: 4096,
        index_interval_bytes: 128,
        recovery_checkpoint_interval_bytes: 1024,
        retention_age: None,
        segment_age_max: None,
        tombstone_retention: Duration::from_secs(3600),
        ..LogConfig::default()
    }
}

/// Opens a partition on the simulated disk at a fixed directory.
pub fn open_sim(storage: &SimStorage, config: LogConfig, clock: &Arc<ManualClock>) -> Partition {
    let clock: Arc<dyn Clock> = Arc::clone(clock) as Arc<dyn Clock>;
    Partition::open_with(Path::new("/p"), config, Arc::new(storage.incarnation()), clock).unwrap()
}

/// A value of `len` bytes derived from `seed`, so every record's bytes can be checked.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}
