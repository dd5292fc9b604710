//! [`BatchBuilder`]: encodes records into a new uncompressed RecordBatch v2 with its CRC filled in.
//!
//! Records are encoded as they are pushed, so [`BatchBuilder::bytes_len`] is exact at every step and
//! [`BatchBuilder::build`] only prepends the header. The first record's timestamp becomes
//! `baseTimestamp`; later timestamps are stored as (wrapping) deltas from it, which decode back to the
//! exact value for any pair of i64 timestamps.
//!
//! Invariants of a built batch: it passes [`crate::validate_records`] (contiguous mode when only
//! [`BatchBuilder::push`] was used), varints are minimal, record attributes are 0, and
//! `maxTimestamp` is the largest record timestamp (-1, Kafka's "no timestamp", when empty).
//!
//! Misuse is a programmer error and panics: offset deltas out of order, an empty batch without an
//! explicit `lastOffsetDelta`, compression bits in the attributes, or sizes beyond `i32::MAX` bytes.
//! It does not compress, and it does not assign real offsets (the log does, via
//! [`crate::set_base_offset`]).

use crate::batch::{
    compute_crc, BatchHeader, BATCH_HEADER_BYTES, CRC_AT, CRC_START, LOG_OVERHEAD_BYTES, MAGIC_V2,
};
use crate::compression::ATTRIBUTE_COMPRESSION_MASK;
use crate::record::Header;
use crate::varint::{varint_len, varlong_len, write_varint, write_varlong};

/// Kafka's "no timestamp" value, used for the timestamps of a batch without records.
const NO_TIMESTAMP: i64 = -1;
/// Producer id, epoch and base sequence of a batch from a non-idempotent producer.
const NO_PRODUCER_ID: i64 = -1;
const NO_PRODUCER_EPOCH: i16 = -1;
const NO_SEQUENCE: i32 = -1;
/// What producers send before a leader has stamped the batch.
const NO_PARTITION_LEADER_EPOCH: i32 = -1;

/// A record to put into a new batch.
#[derive(Debug, Clone, Copy)]
pub struct NewRecord<'a> {
    /// The key, or `None` for null.
    pub key: Option<&'a [u8]>,
    /// The value, or `None` for null (a tombstone).
    pub value: Option<&'a [u8]>,
    /// Headers, written in this order.
    pub headers: &'a [Header<'a>],
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

/// Builds one uncompressed RecordBatch v2; see the module docs for the guarantees.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    base_offset: i64,
    partition_leader_epoch: i32,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    attributes: i16,
    /// The batch as built so far: room for its header (written by `build`), then the encoded
    /// records, each with its length prefix, in push order. `build` hands this buffer out, so
    /// the records are never copied again.
    records: Vec<u8>,
    record_count: usize,
    /// Set by the first push; every record's timestamp delta is relative to it.
    base_timestamp: Option<i64>,
    max_timestamp: i64,
    last_pushed_delta: Option<i32>,
    /// Compaction keeps a batch's original last offset even when its last record is gone.
    forced_last_offset_delta: Option<i32>,
}

fn len_i32(len: usize, what: &str) -> i32 {
    i32::try_from(len).unwrap_or_else(|_| panic!("{what} of {len} bytes exceeds i32::MAX"))
}

fn nullable_len(bytes: Option<&[u8]>) -> usize {
    match bytes {
        None => varint_len(-1),
        Some(bytes) => varint_len(len_i32(bytes.len(), "field")) + bytes.len(),
    }
}

fn write_nullable(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => write_varint(out, -1),
        Some(bytes) => {
            write_varint(out, len_i32(bytes.len(), "field"));
            out.extend_from_slice(bytes);
        }
    }
}

impl BatchBuilder {
    /// A builder for a batch at `base_offset` (usually 0; the log assigns the real one). Producer id,
    /// epoch, base sequence and partition leader epoch default to -1; attributes to 0.
    pub fn new(base_offset: i64) -> Self {
        BatchBuilder {
            base_offset,
            partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            base_sequence: NO_SEQUENCE,
            attributes: 0,
            records: vec![0; BATCH_HEADER_BYTES],
            record_count: 0,
            base_timestamp: None,
            max_timestamp: NO_TIMESTAMP,
            last_pushed_delta: None,
            forced_last_offset_delta: None,
        }
    }

    /// Sets the idempotent-producer fields.
    pub fn producer(mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    /// Sets `partitionLeaderEpoch`.
    pub fn partition_leader_epoch(mut self, epoch: i32) -> Self {
        self.partition_leader_epoch = epoch;
        self
    }

    /// Sets the attribute flags (timestamp type, transactional, control), e.g. to keep them when
    /// compaction rewrites a batch.
    ///
    /// # Panics
    /// If the codec bits (0-2) are not 0: this builder writes only uncompressed batches.
    pub fn attributes(mut self, attributes: i16) -> Self {
        assert_eq!(
            attributes & ATTRIBUTE_COMPRESSION_MASK,
            0,
            "BatchBuilder writes only uncompressed batches; attributes {attributes:#x} name a codec"
        );
        self.attributes = attributes;
        self
    }

    /// Appends a record at offset delta = last pushed delta + 1 (0 for the first).
    ///
    /// # Panics
    /// If the delta would overflow i32, or a field or the batch exceeds `i32::MAX` bytes.
    pub fn push(&mut self, record: &NewRecord<'_>) {
        let offset_delta = match self.last_pushed_delta {
            None => 0,
            Some(previous) => previous.checked_add(1).expect("offset delta overflowed i32"),
        };
        self.push_at(offset_delta, record);
    }

    /// Appends a record at an explicit offset delta (compaction keeps original offsets).
    ///
    /// # Panics
    /// If `offset_delta` is negative or not greater than the previous record's, or a field or the
    /// batch exceeds `i32::MAX` bytes.
    pub fn push_at(&mut self, offset_delta: i32, record: &NewRecord<'_>) {
        let min = self.last_pushed_delta.map_or(0, |previous| i64::from(previous) + 1);
        assert!(
            i64::from(offset_delta) >= min,
            "offset delta {offset_delta} pushed; it must be at least {min}"
        );
        let base_timestamp = *self.base_timestamp.get_or_insert(record.timestamp_ms);
        let timestamp_delta = record.timestamp_ms.wrapping_sub(base_timestamp);
        encode_record(&mut self.records, offset_delta, timestamp_delta, record);
        let batch_bytes = self.bytes_len();
        assert!(
            batch_bytes - LOG_OVERHEAD_BYTES <= i32::MAX as usize,
            "batch of {batch_bytes} bytes exceeds what batchLength (i32) can describe"
        );
        // The initial NO_TIMESTAMP must not win against real timestamps below -1.
        self.max_timestamp = if self.record_count == 0 {
            record.timestamp_ms
        } else {
            self.max_timestamp.max(record.timestamp_ms)
        };
        self.record_count += 1;
        self.last_pushed_delta = Some(offset_delta);
    }

    /// Forces `lastOffsetDelta` (compaction keeps the original batch's last offset even if its last
    /// record was removed).
    ///
    /// # Panics
    /// If `delta` is negative or below the last pushed delta.
    pub fn last_offset_delta(&mut self, delta: i32) {
        let min = self.last_pushed_delta.unwrap_or(0);
        assert!(delta >= min, "lastOffsetDelta {delta} set; it must be at least {min}");
        self.forced_last_offset_delta = Some(delta);
    }

    /// Makes room for at least `bytes` more bytes of records, so pushing them does not grow
    /// (and copy) the buffer again and again. A hint: pushing more still works.
    pub fn reserve(&mut self, bytes: usize) {
        self.records.reserve(bytes);
    }

    /// Records pushed so far.
    pub fn record_count(&self) -> usize {
        self.record_count
    }

    /// Size in bytes the built batch would have now.
    pub fn bytes_len(&self) -> usize {
        self.records.len()
    }

    /// Builds the batch with its CRC filled in.
    ///
    /// # Panics
    /// If no record was pushed and [`BatchBuilder::last_offset_delta`] was not called, or records
    /// were pushed after forcing a `lastOffsetDelta` below their delta.
    pub fn build(self) -> Vec<u8> {
        let last_offset_delta = self.resolve_last_offset_delta();
        let header = BatchHeader {
            base_offset: self.base_offset,
            batch_length: len_i32(self.bytes_len() - LOG_OVERHEAD_BYTES, "batch"),
            partition_leader_epoch: self.partition_leader_epoch,
            magic: MAGIC_V2,
            crc: 0,
            attributes: self.attributes,
            last_offset_delta,
            base_timestamp: self.base_timestamp.unwrap_or(NO_TIMESTAMP),
            max_timestamp: self.max_timestamp,
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            base_sequence: self.base_sequence,
            records_count: len_i32(self.record_count, "record count"),
        };
        let mut out = self.records;
        header.encode(&mut out[..BATCH_HEADER_BYTES]);
        let crc = compute_crc(&out);
        out[CRC_AT..CRC_START].copy_from_slice(&crc.to_be_bytes());
        out
    }

    fn resolve_last_offset_delta(&self) -> i32 {
        let Some(forced) = self.forced_last_offset_delta else {
            return self
                .last_pushed_delta
                .expect("a batch with no records needs last_offset_delta() set before build()");
        };
        if let Some(pushed) = self.last_pushed_delta {
            assert!(
                forced >= pushed,
                "lastOffsetDelta {forced} was forced but a record was pushed at delta {pushed}"
            );
        }
        forced
    }
}

/// Appends one record, length prefix included.
fn encode_record(out: &mut Vec<u8>, offset_delta: i32, timestamp_delta: i64, record: &NewRecord) {
    let header_count = len_i32(record.headers.len(), "header count");
    let headers_len: usize = record
        .headers
        .iter()
        .map(|h| {
            varint_len(len_i32(h.key.len(), "header key")) + h.key.len() + nullable_len(h.value)
        })
        .sum();
    let body_len = 1 // attributes
        + varlong_len(timestamp_delta)
        + varint_len(offset_delta)
        + nullable_len(record.key)
        + nullable_len(record.value)
        + varint_len(header_count)
        + headers_len;
    let body_len = len_i32(body_len, "record");
    let start = out.len();
    write_varint(out, body_len);
    out.push(0); // Record attributes are unused in v2.
    write_varlong(out, timestamp_delta);
    write_varint(out, offset_delta);
    write_nullable(out, record.key);
    write_nullable(out, record.value);
    write_varint(out, header_count);
    for header in record.headers {
        write_varint(out, len_i32(header.key.len(), "header key"));
        out.extend_from_slice(header.key);
        write_nullable(out, header.value);
    }
    debug_assert_eq!(out.len() - start, varint_len(body_len) + body_len as usize);
}

#[cfg(test)]
#[path = "builder_tests.rs"]
mod tests;
