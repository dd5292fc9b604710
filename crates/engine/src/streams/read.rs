//! Reading a stream: forward or backward from a version, with a count, optionally as of a time.
//!
//! The log's key index gives the offsets whose key hash matches the stream's (never a scan of
//! the partition); each candidate record is read and kept only if its key is the stream's and
//! it carries a version. Versions grow with offsets, so the first event at a version is found
//! by a binary search over the candidates, reading O(log n) batches, and a read then walks from
//! there for `count` events.

use sluice_log::{Partition, ReadError};

use super::catalog::StreamMetadata;
use super::{Head, StreamEvent, DELETED_HEADER, TYPE_HEADER, VERSION_HEADER};
use crate::engine::Engine;
use crate::error::StreamError;
use crate::metadata::now_ms;
use crate::partitioner::partition_for_key;
use crate::records::{decode_batches, StoredRecord};
use crate::topic::Topic;

/// Most events one read returns.
pub const READ_COUNT_MAX: usize = 4096;
/// Most bytes (keys, values, headers) one read returns, past its first event.
pub const READ_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Which way a read walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// Oldest first.
    #[default]
    Forward,
    /// Newest first.
    Backward,
}

/// A read of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadStream {
    /// The first version to return: forward, the first visible if absent; backward, the
    /// newest if absent.
    pub from: Option<u64>,
    /// Which way.
    pub direction: Direction,
    /// Most events to return, 1..=[`READ_COUNT_MAX`].
    pub count: usize,
    /// Read the stream as it was at this time (ms since the epoch): only events appended at or
    /// before it.
    pub as_of_ms: Option<i64>,
}

impl Default for ReadStream {
    fn default() -> Self {
        Self { from: None, direction: Direction::Forward, count: READ_COUNT_MAX, as_of_ms: None }
    }
}

/// What a read returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSlice {
    /// The events, in the read's direction.
    pub events: Vec<StreamEvent>,
    /// The stream's version (as of `as_of_ms` if given; -1: no events then).
    pub version: i64,
    /// The first version reads may show (truncation, max count, a soft delete before).
    pub first_visible: u64,
    /// Where the next page starts, if the read stopped at its count or byte limit.
    pub next: Option<u64>,
}

/// A versioned record of the stream: an event, or a soft delete's tombstone.
struct Versioned {
    version: u64,
    tombstone: bool,
    timestamp_ms: i64,
}

/// Reads candidate records of one stream, remembering the last batch read.
struct Probe<'a> {
    log: &'a Partition,
    stream: &'a str,
    candidates: Vec<u64>,
    batch: Vec<StoredRecord>,
}

impl<'a> Probe<'a> {
    fn new(log: &'a Partition, stream: &'a str, candidates: Vec<u64>) -> Self {
        Self { log, stream, candidates, batch: Vec::new() }
    }

    /// The record at candidate `index` if it is one of the stream's versioned records.
    fn record(&mut self, index: usize) -> Result<Option<&StoredRecord>, StreamError> {
        let offset = self.candidates[index];
        let cached = self.batch.first().is_some_and(|first| first.offset <= offset)
            && self.batch.last().is_some_and(|last| last.offset >= offset);
        if !cached {
            let read = match self.log.read(offset, 0) {
                Ok(read) => read,
                Err(ReadError::OffsetOutOfRange { .. }) => return Ok(None), // retention, meanwhile
                Err(error) => return Err(read_error(self.log, &error)),
            };
            self.batch = decode_batches(&read.batches, 0).map_err(|error| {
                StreamError::Storage(format!("{}: {error}", self.log.dir().display()))
            })?;
        }
        let stream = self.stream.as_bytes();
        Ok(self
            .batch
            .iter()
            .find(|record| record.offset == offset)
            .filter(|record| record.key.as_deref() == Some(stream) && version_of(record).is_some()))
    }

    fn versioned(&mut self, index: usize) -> Result<Option<Versioned>, StreamError> {
        Ok(self.record(index)?.map(|record| Versioned {
            version: version_of(record).expect("filtered on a version"),
            tombstone: record.headers.iter().any(|(name, _)| name == DELETED_HEADER),
            timestamp_ms: record.timestamp_ms,
        }))
    }

    /// The newest versioned record among candidates below `end`, with its index.
    fn last_before(&mut self, end: usize) -> Result<Option<(usize, Versioned)>, StreamError> {
        for index in (0..end).rev() {
            if let Some(found) = self.versioned(index)? {
                return Ok(Some((index, found)));
            }
        }
        Ok(None)
    }

    /// The index from which the first record at version `target` or later is found by walking
    /// forward (every versioned record before it is older than `target`), below `end`.
    fn lower_bound(&mut self, target: u64, end: usize) -> Result<usize, StreamError> {
        let (mut low, mut high) = (0, end);
        while low < high {
            let middle = low + (high - low) / 2;
            let mut found = None;
            for index in middle..high {
                if let Some(versioned) = self.versioned(index)? {
                    found = Some((index, versioned.version));
                    break;
                }
            }
            match found {
                Some((index, version)) if version < target => low = index + 1,
                _ => high = middle,
            }
        }
        Ok(low)
    }
}

fn read_error(log: &Partition, error: &ReadError) -> StreamError {
    StreamError::Storage(format!("reading {}: {error}", log.dir().display()))
}

/// The version header of a record, if it has a valid one.
pub(crate) fn version_of(record: &StoredRecord) -> Option<u64> {
    let (_, value) = record.headers.iter().find(|(name, _)| name == VERSION_HEADER)?;
    std::str::from_utf8(value.as_deref()?).ok()?.parse().ok()
}

/// The head of a stream as the log has it: its newest versioned record.
pub(crate) fn find_head(log: &Partition, stream: &str) -> Result<Head, StreamError> {
    let candidates = log
        .key_candidates(stream.as_bytes(), 0, u64::MAX)
        .map_err(|error| read_error(log, &error))?;
    let end = candidates.len();
    let mut probe = Probe::new(log, stream, candidates);
    Ok(match probe.last_before(end)? {
        Some((index, found)) => {
            Head { version: found.version as i64, last_offset: Some(probe.candidates[index]) }
        }
        None => Head { version: -1, last_offset: None },
    })
}

/// An event from a stored record of the stream.
pub(crate) fn to_event(stream: &str, partition: u32, record: &StoredRecord) -> StreamEvent {
    let header = |wanted: &str| {
        record
            .headers
            .iter()
            .find(|(name, _)| name == wanted)
            .and_then(|(_, value)| value.as_deref())
            .map(|value| String::from_utf8_lossy(value).into_owned())
            .unwrap_or_default()
    };
    StreamEvent {
        stream: stream.to_owned(),
        version: version_of(record).unwrap_or_default(),
        partition,
        offset: record.offset,
        timestamp_ms: record.timestamp_ms,
        event_type: header(TYPE_HEADER),
        id: header(crate::records::ID_HEADER),
        data: record.value.clone().unwrap_or_default(),
        headers: record.headers.clone(),
    }
}

impl Engine {
    /// Reads a stream (see [`ReadStream`]). Events hidden by the stream's metadata (truncation,
    /// max count, max age) are left out.
    ///
    /// # Errors
    /// [`StreamError::UnknownTopic`], [`StreamError::StreamNotFound`] (no events, or soft
    /// deleted), [`StreamError::Invalid`] (a count out of range), [`StreamError::Storage`].
    pub async fn read_stream(
        &self,
        topic: &str,
        stream: &str,
        read: ReadStream,
    ) -> Result<StreamSlice, StreamError> {
        let topic = self.topic(topic).ok_or_else(|| StreamError::UnknownTopic(topic.to_owned()))?;
        super::check_stream_name(stream)?;
        if read.count == 0 || read.count > READ_COUNT_MAX {
            return Err(StreamError::Invalid(format!(
                "count is {}; allowed is 1..={READ_COUNT_MAX}",
                read.count
            )));
        }
        let partition = partition_for_key(stream.as_bytes(), topic.partition_count());
        let engine = self.clone();
        let stream = stream.to_owned();
        tokio::task::spawn_blocking(move || {
            engine.read_stream_in(&topic, partition, &stream, &read, false)
        })
        .await
        .expect("a read task does not panic")
    }

    /// The read itself (blocking). `raw` ignores the stream's metadata: a soft delete,
    /// truncation, max count and max age (for the engine's own look-ups, which need the events
    /// whatever reads may show).
    pub(crate) fn read_stream_in(
        &self,
        topic: &Topic,
        partition: u32,
        stream: &str,
        read: &ReadStream,
        raw: bool,
    ) -> Result<StreamSlice, StreamError> {
        let log = &topic.partitions[partition as usize].log;
        let metadata = self.catalog().metadata(&topic.name, stream);
        let high_watermark = log.high_watermark();
        let candidates = log
            .key_candidates(stream.as_bytes(), 0, high_watermark)
            .map_err(|error| read_error(log, &error))?;
        let end = candidates.len();
        let mut probe = Probe::new(log, stream, candidates);
        let not_found = |deleted_at| StreamError::StreamNotFound {
            topic: topic.name.clone(),
            stream: stream.to_owned(),
            deleted_at,
        };
        let Some((_, current)) = probe.last_before(end)? else {
            return Err(not_found(None));
        };
        let metadata = if raw { StreamMetadata::default() } else { metadata };
        if metadata.deleted_at == Some(current.version) {
            return Err(not_found(metadata.deleted_at));
        }
        let mut first_visible = metadata.first_visible();
        if let Some(max_count) = metadata.max_count {
            first_visible = first_visible.max((current.version + 1).saturating_sub(max_count));
        }
        let oldest_ms = metadata.max_age_ms.map(|age| now_ms().saturating_sub(age as i64));
        let (end, version) = match read.as_of_ms {
            None => (end, current.version as i64),
            Some(as_of) => {
                let to = log
                    .offset_for_timestamp(as_of.saturating_add(1))
                    .map_err(|error| read_error(log, &error))?
                    .unwrap_or(high_watermark);
                let mut end = probe.candidates.partition_point(|offset| *offset < to);
                // Clocks may step back: a record below `to` may still be later than `as_of`.
                let version = loop {
                    match probe.last_before(end)? {
                        Some((index, found)) if found.timestamp_ms > as_of => end = index,
                        Some((_, found)) => break found.version as i64,
                        None => break -1,
                    }
                };
                (end, version)
            }
        };
        let mut slice = StreamSlice { events: Vec::new(), version, first_visible, next: None };
        if version < 0 || (version as u64) < first_visible {
            return Ok(slice);
        }
        let head = version as u64;
        let keep = |found: &Versioned| {
            !found.tombstone
                && found.version >= first_visible
                && oldest_ms.is_none_or(|oldest| found.timestamp_ms >= oldest)
                && read.as_of_ms.is_none_or(|as_of| found.timestamp_ms <= as_of)
        };
        let mut bytes = 0;
        let full = |slice: &StreamSlice, bytes: usize| {
            slice.events.len() >= read.count
                || (bytes >= READ_BYTES_MAX && !slice.events.is_empty())
        };
        match read.direction {
            super::Direction::Forward => {
                let start = read.from.unwrap_or(0).max(first_visible);
                let mut index = probe.lower_bound(start, end)?;
                while index < end && !full(&slice, bytes) {
                    if let Some(found) = probe.versioned(index)? {
                        if found.version > head {
                            break;
                        }
                        if found.version >= start && keep(&found) {
                            let record = probe.record(index)?.expect("versioned");
                            bytes += record.size_bytes();
                            slice.events.push(to_event(stream, partition, record));
                        }
                    }
                    index += 1;
                }
                let last = slice.events.last().map(|event| event.version);
                slice.next =
                    last.filter(|last| *last < head && full(&slice, bytes)).map(|last| last + 1);
            }
            super::Direction::Backward => {
                let start = read.from.unwrap_or(u64::MAX).min(head);
                let mut index = probe.lower_bound(start.saturating_add(1), end)?;
                while index > 0 && !full(&slice, bytes) {
                    index -= 1;
                    if let Some(found) = probe.versioned(index)? {
                        if found.version < first_visible {
                            break;
                        }
                        if found.version <= start && keep(&found) {
                            let record = probe.record(index)?.expect("versioned");
                            bytes += record.size_bytes();
                            slice.events.push(to_event(stream, partition, record));
                        }
                    }
                }
                let last = slice.events.last().map(|event| event.version);
                slice.next = last
                    .filter(|last| *last > first_visible && full(&slice, bytes))
                    .map(|last| last - 1);
            }
        }
        Ok(slice)
    }
}
