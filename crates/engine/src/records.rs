//! Records as the engine hands them to front doors and takes them from producers: owned,
//! decoded from stored batches.

use sluice_format::{records, split_batches, BatchError};

/// The record header that carries a record's id (CloudEvents `id` in the Kafka binary binding).
pub const ID_HEADER: &str = "ce_id";
/// Longest record id accepted (bytes).
pub const ID_BYTES_MAX: usize = 256;

/// A record to produce.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProduceRecord {
    /// The key; records with the same key go to the same partition.
    pub key: Option<Vec<u8>>,
    /// The value; `None` is a tombstone when a key is set.
    pub value: Option<Vec<u8>>,
    /// Headers, in order; a key may repeat.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// An explicit partition, overriding the key's.
    pub partition: Option<u32>,
    /// A producer-chosen id: a second record with the same id within the topic's dedup window
    /// is not appended again. Stored as the `ce_id` header.
    pub id: Option<String>,
    /// The record's timestamp in milliseconds; the time of the produce if absent.
    pub timestamp_ms: Option<i64>,
}

impl ProduceRecord {
    /// Bytes counted against `record_bytes_max`: key, value, header keys and values.
    pub fn size_bytes(&self) -> u64 {
        let key = self.key.as_ref().map_or(0, Vec::len);
        let value = self.value.as_ref().map_or(0, Vec::len);
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.len() + value.as_ref().map_or(0, Vec::len))
            .sum();
        let id = self.id.as_ref().map_or(0, |id| ID_HEADER.len() + id.len());
        (key + value + headers + id) as u64
    }
}

/// A stored record, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Its offset in the partition.
    pub offset: u64,
    /// Its timestamp in milliseconds.
    pub timestamp_ms: i64,
    /// The key.
    pub key: Option<Vec<u8>>,
    /// The value.
    pub value: Option<Vec<u8>>,
    /// The headers, in order. Keys that are not UTF-8 are replaced lossily.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl StoredRecord {
    /// Bytes of its key, value, header names and header values: what byte budgets (a fetch's
    /// `max_bytes`, a queue group's window, a dead-letter listing) count.
    pub fn size_bytes(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.len() + value.as_ref().map_or(0, Vec::len))
            .sum();
        self.key.as_ref().map_or(0, Vec::len) + self.value.as_ref().map_or(0, Vec::len) + headers
    }

    /// The record's id, if it carries one.
    pub fn id(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(name, _)| name == ID_HEADER)
            .and_then(|(_, value)| value.as_deref())
            .and_then(|value| std::str::from_utf8(value).ok())
    }
}

/// Decodes concatenated batches into records, skipping those before `from_offset` (a read
/// returns whole batches, which may start before the offset asked for).
///
/// # Errors
/// A batch or record that does not decode.
pub fn decode_batches(bytes: &[u8], from_offset: u64) -> Result<Vec<StoredRecord>, BatchError> {
    let mut decoded = Vec::new();
    for split in split_batches(bytes) {
        let (_, batch) = split?;
        for record in records(batch)? {
            let record = record?;
            let offset = u64::try_from(record.offset).unwrap_or(0);
            if offset < from_offset {
                continue;
            }
            decoded.push(StoredRecord {
                offset,
                timestamp_ms: record.timestamp_ms,
                key: record.key.map(<[u8]>::to_vec),
                value: record.value.map(<[u8]>::to_vec),
                headers: record
                    .headers
                    .iter()
                    .map(|header| {
                        let name = String::from_utf8_lossy(header.key).into_owned();
                        (name, header.value.map(<[u8]>::to_vec))
                    })
                    .collect(),
            });
        }
    }
    Ok(decoded)
}

/// Bytes read per step when an internal log is replayed.
const REPLAY_READ_BYTES: u32 = 4 * 1024 * 1024;

/// Replays an internal log (`__topics`, `__consumer_offsets`, a queue journal, ...): hands every
/// record from the log start to the high watermark to `apply`, in order. An unreadable batch,
/// or a record `apply` refuses, is an error naming the log `name` and the record's offset.
///
/// # Errors
/// [`crate::EngineOpenError::Metadata`].
pub(crate) fn replay_log(
    log: &sluice_log::Partition,
    name: &str,
    mut apply: impl FnMut(StoredRecord) -> Result<(), String>,
) -> Result<(), crate::EngineOpenError> {
    let unreadable = |offset, reason: String| crate::EngineOpenError::Metadata {
        offset,
        reason: format!("{name}: {reason}"),
    };
    let mut next = log.log_start_offset();
    let end = log.high_watermark();
    while next < end {
        let read = log
            .read(next, REPLAY_READ_BYTES)
            .map_err(|error| unreadable(next, error.to_string()))?;
        let records = decode_batches(&read.batches, next)
            .map_err(|error| unreadable(next, error.to_string()))?;
        let Some(last) = records.last() else { break };
        next = last.offset + 1;
        for record in records {
            let offset = record.offset;
            apply(record).map_err(|reason| unreadable(offset, reason))?;
        }
    }
    Ok(())
}
