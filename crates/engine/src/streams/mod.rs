//! Event streams: event sourcing on the broker log (design in `docs/streams.md`).
//!
//! A stream is the records of one key in a topic, so an event is at once the source of truth
//! and a message consumers read. Each event carries its version (`sluice-stream-version`) and
//! its CloudEvents attributes as headers. Versions are handed out only here, under a
//! per-partition lock ([`heads::StreamHeads`]) that also holds the check of the expected
//! version, so check and append are atomic; the batch is then fsynced outside the lock, sharing
//! the group commit with concurrent appends.
//!
//! Everything else about a stream (metadata, snapshots) lives in the compacted internal log
//! `__streams` ([`catalog`]). Reads find a stream's records with the log's per-segment key
//! index, never by scanning the partition ([`read`]).

pub mod catalog;
mod each;
mod heads;
mod read;
mod subscribe;

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use sluice_format::{BatchBuilder, Header, NewRecord};

pub use catalog::{Snapshot, StreamMetadata, SNAPSHOT_BYTES_MAX};
pub use each::APPEND_EACH_WRITES_MAX;
pub use heads::{StreamHeads, STREAM_HEADS_CACHED_MAX};
pub use read::{Direction, ReadStream, StreamSlice, READ_COUNT_MAX};
pub use subscribe::{Subscription, SubscriptionFrom};

use crate::engine::Engine;
use crate::error::StreamError;
use crate::metadata::now_ms;
use crate::partitioner::partition_for_key;
use crate::records::{ID_BYTES_MAX, ID_HEADER};
use crate::time_text::format_rfc3339_ms;
use crate::topic::Topic;

/// Header carrying an event's version in its stream.
pub const VERSION_HEADER: &str = "sluice-stream-version";
/// Header marking a soft delete's tombstone record (null value, the stream's last version).
pub const DELETED_HEADER: &str = "sluice-stream-deleted";
/// CloudEvents `type` in the Kafka binary binding.
pub const TYPE_HEADER: &str = "ce_type";
/// Longest stream name (bytes).
pub const STREAM_NAME_BYTES_MAX: usize = 256;
/// Longest event type (bytes).
pub const EVENT_TYPE_BYTES_MAX: usize = 256;
/// Most events one append may carry (over all its streams).
pub const APPEND_EVENTS_MAX: usize = crate::produce::PRODUCE_RECORDS_MAX;
/// Most streams one append may name (written to or only checked).
pub const APPEND_STREAMS_MAX: usize = 64;

/// What an append expects of a stream's version before it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream has no events (never written, or soft-deleted).
    NoStream,
    /// The stream has at least one event and is not deleted.
    StreamExists,
    /// The stream's last event has this version.
    Exact(u64),
}

impl FromStr for ExpectedVersion {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "any" => Ok(Self::Any),
            "no_stream" => Ok(Self::NoStream),
            "stream_exists" => Ok(Self::StreamExists),
            number => number.parse().map(Self::Exact).map_err(|_| {
                format!("expected version '{text}' is not one of any, no_stream, stream_exists or a version number (0 or more)")
            }),
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => formatter.write_str("any"),
            Self::NoStream => formatter.write_str("no_stream"),
            Self::StreamExists => formatter.write_str("stream_exists"),
            Self::Exact(version) => write!(formatter, "{version}"),
        }
    }
}

/// An event to append.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewEvent {
    /// Its type (CloudEvents `type`), e.g. `AccountOpened`. Required.
    pub event_type: String,
    /// Its payload.
    pub data: Vec<u8>,
    /// Its id (CloudEvents `id`); a fresh one if absent. An append with an exact or `no_stream`
    /// expected version, retried with the same ids, is answered with the first append's result
    /// (an `any` or `stream_exists` retry cannot be told from a new append, and appends again).
    pub id: Option<String>,
    /// Its content type (`content-type`); `application/json` if absent.
    pub content_type: Option<String>,
    /// CloudEvents `source`; `/streams/<topic>` if absent.
    pub source: Option<String>,
    /// More headers (`traceparent`, correlation ids, ...). Names starting `ce_` or `sluice-`
    /// and `content-type` are set from the fields above and refused here.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// What an append did, and the last offset it wrote if any (to await its durability).
type Written = (Vec<StreamAppended>, Option<u64>);

/// Where an append finds the heads it checks: only in memory, or also in the log (blocking).
#[derive(Debug, Clone, Copy)]
enum Lookup {
    Cached,
    Log,
}

impl Lookup {
    /// `stream`'s head; `None` when it is not in memory and this is [`Lookup::Cached`].
    fn head(
        self,
        heads: &mut StreamHeads,
        log: &sluice_log::Partition,
        stream: &str,
    ) -> Result<Option<Head>, StreamError> {
        match self {
            Self::Log => heads.head(log, stream).map(Some),
            Self::Cached => Ok(heads.cached(stream)),
        }
    }
}

/// The events to append to one stream, and what its version must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamWrite {
    /// The stream (the records' key).
    pub stream: String,
    /// The check.
    pub expected: ExpectedVersion,
    /// The events; none makes this write a condition only.
    pub events: Vec<NewEvent>,
}

impl StreamWrite {
    /// About how many bytes its events take as records: their data, the stream name as key,
    /// and the CloudEvents headers (names, id, type, time; about 200 bytes).
    fn record_bytes_hint(&self) -> usize {
        self.events
            .iter()
            .map(|event| event.data.len() + event.event_type.len() + self.stream.len() * 2 + 256)
            .sum()
    }
}

/// What an append did to one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAppended {
    /// The stream.
    pub stream: String,
    /// Its version after the append (-1: no events).
    pub version: i64,
    /// The partition of the stream.
    pub partition: u32,
    /// Offsets of the events appended (empty for a condition).
    pub offsets: Vec<u64>,
}

/// Where a stream is: the version of its last event, and that event's offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    /// -1 for a stream without events.
    pub version: i64,
    pub last_offset: Option<u64>,
}

/// An event read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEvent {
    /// The stream.
    pub stream: String,
    /// Its version in the stream.
    pub version: u64,
    /// Its partition.
    pub partition: u32,
    /// Its offset.
    pub offset: u64,
    /// When it was appended (ms since the epoch).
    pub timestamp_ms: i64,
    /// Its type.
    pub event_type: String,
    /// Its id.
    pub id: String,
    /// Its payload.
    pub data: Vec<u8>,
    /// Every header stored with it (CloudEvents attributes, version, the caller's own).
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Engine {
    /// Appends events to one stream if its version is as expected; returns its new version
    /// and the events' offsets. Returns once the events are durable under the topic's
    /// durability.
    ///
    /// # Errors
    /// [`StreamError::WrongExpectedVersion`] (nothing appended) and the errors of
    /// [`Engine::append_streams`].
    pub async fn append_stream(
        &self,
        topic: &str,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<StreamAppended, StreamError> {
        let write = StreamWrite { stream: stream.to_owned(), expected, events };
        let mut appended = self.append_streams(topic, vec![write]).await?;
        Ok(appended.remove(0))
    }

    /// Appends to several streams of one partition at once, all or nothing: every write's
    /// expected version is checked, and only if all hold are all events appended, as one batch.
    /// A write without events is a condition only. Streams in different partitions are refused
    /// (there is no atomic write across partitions; see `docs/streams.md`).
    ///
    /// # Errors
    /// [`StreamError::UnknownTopic`], [`StreamError::Invalid`] (names, sizes, limits,
    /// partitions), [`StreamError::WrongExpectedVersion`], [`StreamError::Storage`].
    pub async fn append_streams(
        &self,
        topic: &str,
        writes: Vec<StreamWrite>,
    ) -> Result<Vec<StreamAppended>, StreamError> {
        let topic = self.topic(topic).ok_or_else(|| StreamError::UnknownTopic(topic.to_owned()))?;
        let partition = check_writes(&topic, &writes)?;
        // The check and the write run on this task when every head is in memory: a write is
        // a copy into the page cache, briefly, and a thread hop per append cost more than it
        // (docs/decisions.md). A head that must be looked up in the log, and the retry check
        // after a conflict, read the log on a blocking thread. The fsync is awaited below
        // without holding a thread.
        let written = match self.append_in_partition(&topic, partition, &writes, Lookup::Cached) {
            Ok(Some(done)) => Ok(done),
            Ok(None) => {
                let (engine, task_topic) = (self.clone(), Arc::clone(&topic));
                tokio::task::spawn_blocking(move || {
                    engine.append_or_retry(&task_topic, partition, &writes)
                })
                .await
                .expect("an append task does not panic")
            }
            Err(conflict @ StreamError::WrongExpectedVersion { .. }) => {
                let (engine, task_topic) = (self.clone(), Arc::clone(&topic));
                tokio::task::spawn_blocking(move || {
                    engine.retried(&task_topic, partition, &writes, conflict)
                })
                .await
                .expect("an append task does not panic")
            }
            Err(error) => Err(error),
        };
        let outcome = match written {
            Ok((appended, Some(last_offset))) => {
                let handle = &topic.partitions[partition as usize];
                let synced = handle.durable(last_offset).await;
                handle.publish_high_watermark();
                synced.map(|()| appended).map_err(|error| {
                    StreamError::Storage(format!("{}/{partition}: {error}", topic.name))
                })
            }
            Ok((appended, None)) => Ok(appended),
            Err(error) => Err(error),
        };
        self.inner.appended.send_modify(|count| *count = count.wrapping_add(1));
        outcome
    }

    /// [`Engine::append_in_partition`] looking heads up in the log, then, on a conflict, the
    /// idempotent-retry check. Blocking.
    fn append_or_retry(
        &self,
        topic: &Topic,
        partition: u32,
        writes: &[StreamWrite],
    ) -> Result<Written, StreamError> {
        match self.append_in_partition(topic, partition, writes, Lookup::Log) {
            Ok(Some(done)) => Ok(done),
            Ok(None) => unreachable!("a lookup in the log always finds a head"),
            Err(conflict @ StreamError::WrongExpectedVersion { .. }) => {
                self.retried(topic, partition, writes, conflict)
            }
            Err(error) => Err(error),
        }
    }

    /// After a conflict: a retry of an append that landed (same ids, same expected version)
    /// is answered with what the first one did; anything else gets the conflict. Blocking.
    fn retried(
        &self,
        topic: &Topic,
        partition: u32,
        writes: &[StreamWrite],
        conflict: StreamError,
    ) -> Result<Written, StreamError> {
        match self.already_appended(topic, partition, writes)? {
            Some(appended) => Ok((appended, None)),
            None => Err(conflict),
        }
    }

    /// Checks and writes; returns the results and, if anything was written, its last offset
    /// for the caller to await. `Ok(None)`: a head is not in memory and `lookup` is
    /// [`Lookup::Cached`]; nothing was written.
    fn append_in_partition(
        &self,
        topic: &Topic,
        partition: u32,
        writes: &[StreamWrite],
        lookup: Lookup,
    ) -> Result<Option<Written>, StreamError> {
        let handle = &topic.partitions[partition as usize];
        let mut heads = handle.streams.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut current = Vec::with_capacity(writes.len());
        for write in writes {
            let Some(head) = lookup.head(&mut heads, &handle.log, &write.stream)? else {
                return Ok(None);
            };
            let deleted = self.deleted_at(&topic.name, &write.stream, head);
            check_expected(&topic.name, write, head, deleted)?;
            current.push(head);
        }
        let defaults = EventDefaults::new(&topic.name, now_ms());
        let mut builder = BatchBuilder::new(0);
        builder.reserve(writes.iter().map(StreamWrite::record_bytes_hint).sum());
        let mut count = 0;
        for (write, head) in writes.iter().zip(&current) {
            count += defaults.push_write(&mut builder, write, *head);
        }
        let mut results: Vec<StreamAppended> = writes
            .iter()
            .zip(&current)
            .map(|(write, head)| StreamAppended {
                stream: write.stream.clone(),
                version: head.version,
                partition,
                offsets: Vec::new(),
            })
            .collect();
        if count == 0 {
            return Ok(Some((results, None)));
        }
        let mut batch = builder.build();
        let limit = handle.log.config().batch_bytes_max;
        if batch.len() as u64 > u64::from(limit) {
            return Err(StreamError::Invalid(format!(
                "the append's {count} events take {} bytes as one batch; an append is one batch (so it is atomic) of at most {limit} bytes: append fewer events at a time",
                batch.len()
            )));
        }
        let storage = |error: sluice_log::AppendError| {
            StreamError::Storage(format!("{}/{partition}: {error}", topic.name))
        };
        let info = handle.log.append_unsynced(&mut batch).map_err(storage)?;
        let mut offset = info.base_offset;
        for (write, result) in writes.iter().zip(&mut results) {
            for _ in &write.events {
                result.offsets.push(offset);
                offset += 1;
            }
            if let Some(&last) = result.offsets.last() {
                result.version += write.events.len() as i64;
                heads.set(&write.stream, Head { version: result.version, last_offset: Some(last) });
            }
        }
        heads.trim(handle.log.high_watermark());
        drop(heads);
        topic.counters.produced_records.fetch_add(count, Ordering::Relaxed);
        topic.counters.produced_bytes.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(Some((results, Some(info.last_offset))))
    }

    /// The version a stream was soft-deleted at, if it still stands (no event since).
    fn deleted_at(&self, topic: &str, stream: &str, head: Head) -> Option<u64> {
        let deleted_at = self.catalog().deleted_at(topic, stream)?;
        (head.version == deleted_at as i64).then_some(deleted_at)
    }

    /// If every write carries events with ids and those events are already in their streams
    /// right after the expected version, the append was done before: what it did.
    fn already_appended(
        &self,
        topic: &Topic,
        partition: u32,
        writes: &[StreamWrite],
    ) -> Result<Option<Vec<StreamAppended>>, StreamError> {
        let mut results = Vec::new();
        for write in writes {
            let first = match write.expected {
                ExpectedVersion::Exact(version) => version + 1,
                // A stream brought back after a soft delete continues after the deletion.
                ExpectedVersion::NoStream => self
                    .catalog()
                    .metadata(&topic.name, &write.stream)
                    .deleted_at
                    .map_or(0, |deleted_at| deleted_at + 1),
                _ => return Ok(None),
            };
            if write.events.is_empty() || write.events.iter().any(|event| event.id.is_none()) {
                return Ok(None);
            }
            let read = ReadStream {
                from: Some(first),
                direction: Direction::Forward,
                count: write.events.len(),
                as_of_ms: None,
            };
            let slice = match self.read_stream_in(topic, partition, &write.stream, &read, true) {
                Ok(slice) => slice,
                Err(StreamError::StreamNotFound { .. }) => return Ok(None),
                Err(error) => return Err(error),
            };
            let same = slice.events.len() == write.events.len()
                && slice.events.iter().zip(&write.events).all(|(stored, event)| {
                    stored.version >= first && Some(&stored.id) == event.id.as_ref()
                })
                && slice.events.first().is_some_and(|event| event.version == first);
            if !same {
                return Ok(None);
            }
            results.push(StreamAppended {
                stream: write.stream.clone(),
                version: (first + write.events.len() as u64 - 1) as i64,
                partition,
                offsets: slice.events.iter().map(|event| event.offset).collect(),
            });
        }
        Ok(Some(results))
    }

    /// A stream's metadata.
    ///
    /// # Errors
    /// [`StreamError::UnknownTopic`], [`StreamError::Invalid`] for a bad stream name.
    pub fn stream_metadata(
        &self,
        topic: &str,
        stream: &str,
    ) -> Result<StreamMetadata, StreamError> {
        self.topic(topic).ok_or_else(|| StreamError::UnknownTopic(topic.to_owned()))?;
        check_stream_name(stream)?;
        Ok(self.catalog().metadata(topic, stream))
    }

    /// Replaces a stream's metadata (durably). `deleted_at` is kept as it is: it is set only by
    /// [`Engine::delete_stream`].
    ///
    /// # Errors
    /// [`StreamError::UnknownTopic`], [`StreamError::Invalid`], [`StreamError::Storage`].
    pub async fn set_stream_metadata(
        &self,
        topic: &str,
        stream: &str,
        metadata: StreamMetadata,
    ) -> Result<StreamMetadata, StreamError> {
        self.topic(topic).ok_or_else(|| StreamError::UnknownTopic(topic.to_owned()))?;
        check_stream_name(stream)?;
        if metadata.max_count == Some(0) {
            return Err(StreamError::Invalid(
                "max_count is 0; allowed is 1 or more (or leave it out for no limit)".to_owned(),
            ));
        }
        let engine = self.clone();
        let (topic, stream) = (topic.to_owned(), stream.to_owned());
        tokio::task::spawn_blocking(move || {
            let writer = engine.catalog().writer();
            let mut stored = metadata;
            stored.deleted_at = writer.metadata(&topic, &stream).deleted_at;
            writer.put_metadata(&topic, &stream, &stored)?;
            Ok(stored)
        })
        .await
        .expect("a metadata task does not panic")
    }

    /// Soft-deletes a stream if its version is as expected: reads then find no stream, an
    /// append with `no_stream` brings the name back from the next version, and a tombstone
    /// record (null value) tells consumers. Returns the version it was deleted at.
    ///
    /// # Errors
    /// [`StreamError::StreamNotFound`] for a stream without events or deleted already,
    /// [`StreamError::WrongExpectedVersion`], [`StreamError::Storage`].
    pub async fn delete_stream(
        &self,
        topic_name: &str,
        stream: &str,
        expected: ExpectedVersion,
    ) -> Result<u64, StreamError> {
        let topic = self
            .topic(topic_name)
            .ok_or_else(|| StreamError::UnknownTopic(topic_name.to_owned()))?;
        check_stream_name(stream)?;
        let engine = self.clone();
        let stream = stream.to_owned();
        let deleted = tokio::task::spawn_blocking(move || {
            let partition = partition_for_key(stream.as_bytes(), topic.partition_count());
            let handle = &topic.partitions[partition as usize];
            let mut heads = handle.streams.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let head = heads.head(&handle.log, &stream)?;
            let not_found = || StreamError::StreamNotFound {
                topic: topic.name.clone(),
                stream: stream.clone(),
                deleted_at: engine.deleted_at(&topic.name, &stream, head),
            };
            if head.version < 0 || engine.deleted_at(&topic.name, &stream, head).is_some() {
                return Err(not_found());
            }
            let write = StreamWrite { stream: stream.clone(), expected, events: Vec::new() };
            check_expected(&topic.name, &write, head, None)?;
            let version = head.version as u64;
            {
                let writer = engine.catalog().writer();
                let mut metadata = writer.metadata(&topic.name, &stream);
                metadata.deleted_at = Some(version);
                writer.put_metadata(&topic.name, &stream, &metadata)?;
            }
            // The metadata is the commit point; the tombstone tells consumers (and is what a
            // compacting topic drops the stream's records by).
            let version_text = version.to_string();
            let headers = [
                Header { key: VERSION_HEADER.as_bytes(), value: Some(version_text.as_bytes()) },
                Header { key: DELETED_HEADER.as_bytes(), value: Some(b"true") },
            ];
            let mut builder = BatchBuilder::new(0);
            builder.push(&NewRecord {
                key: Some(stream.as_bytes()),
                value: None,
                headers: &headers,
                timestamp_ms: now_ms(),
            });
            let mut batch = builder.build();
            let storage = |error: sluice_log::AppendError| {
                StreamError::Storage(format!("{}/{partition}: {error}", topic.name))
            };
            let info = handle.log.append_unsynced(&mut batch).map_err(storage)?;
            heads.set(&stream, Head { version: head.version, last_offset: Some(info.last_offset) });
            drop(heads);
            let synced = handle.log.wait_durable(info.last_offset).map_err(storage);
            handle.publish_high_watermark();
            synced?;
            Ok(version)
        })
        .await
        .expect("a delete task does not panic")?;
        self.inner.appended.send_modify(|count| *count = count.wrapping_add(1));
        Ok(deleted)
    }

    /// Stores a snapshot of a stream at `version` (which must exist in the stream).
    ///
    /// # Errors
    /// [`StreamError::UnknownTopic`], [`StreamError::StreamNotFound`],
    /// [`StreamError::Invalid`] (a version past the stream's, a snapshot over
    /// [`SNAPSHOT_BYTES_MAX`]), [`StreamError::Storage`].
    pub async fn save_snapshot(
        &self,
        topic_name: &str,
        stream: &str,
        version: u64,
        data: Vec<u8>,
    ) -> Result<(), StreamError> {
        let topic = self
            .topic(topic_name)
            .ok_or_else(|| StreamError::UnknownTopic(topic_name.to_owned()))?;
        check_stream_name(stream)?;
        if data.len() > SNAPSHOT_BYTES_MAX {
            return Err(StreamError::Invalid(format!(
                "the snapshot has {} bytes; allowed is at most {SNAPSHOT_BYTES_MAX}",
                data.len()
            )));
        }
        let engine = self.clone();
        let stream = stream.to_owned();
        tokio::task::spawn_blocking(move || {
            let head = engine.stream_head(&topic, &stream)?;
            if head.version < 0 || engine.deleted_at(&topic.name, &stream, head).is_some() {
                return Err(StreamError::StreamNotFound {
                    topic: topic.name.clone(),
                    deleted_at: engine.deleted_at(&topic.name, &stream, head),
                    stream,
                });
            }
            if version as i64 > head.version {
                return Err(StreamError::Invalid(format!(
                    "a snapshot at version {version}, but stream {stream} is at version {}",
                    head.version
                )));
            }
            engine.catalog().writer().put_snapshot(&topic.name, &stream, version, &data)
        })
        .await
        .expect("a snapshot task does not panic")
    }

    /// The newest snapshot of a stream, if one was saved.
    ///
    /// # Errors
    /// [`StreamError::UnknownTopic`], [`StreamError::Invalid`], [`StreamError::Storage`].
    pub async fn load_snapshot(
        &self,
        topic: &str,
        stream: &str,
    ) -> Result<Option<Snapshot>, StreamError> {
        self.topic(topic).ok_or_else(|| StreamError::UnknownTopic(topic.to_owned()))?;
        check_stream_name(stream)?;
        let engine = self.clone();
        let (topic, stream) = (topic.to_owned(), stream.to_owned());
        tokio::task::spawn_blocking(move || engine.catalog().snapshot(&topic, &stream))
            .await
            .expect("a snapshot task does not panic")
    }

    /// A stream's head (taking the partition's stream lock briefly).
    pub(crate) fn stream_head(&self, topic: &Topic, stream: &str) -> Result<Head, StreamError> {
        let partition = partition_for_key(stream.as_bytes(), topic.partition_count());
        let handle = &topic.partitions[partition as usize];
        let mut heads = handle.streams.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        heads.head(&handle.log, stream)
    }

    pub(crate) fn catalog(&self) -> &catalog::Catalog {
        &self.inner.streams
    }
}

/// Checks names, sizes and limits, and that every stream is in one partition; returns it.
fn check_writes(topic: &Topic, writes: &[StreamWrite]) -> Result<u32, StreamError> {
    if writes.is_empty() || writes.len() > APPEND_STREAMS_MAX {
        return Err(StreamError::Invalid(format!(
            "an append names {} streams; allowed is 1..={APPEND_STREAMS_MAX}",
            writes.len()
        )));
    }
    let events: usize = writes.iter().map(|write| write.events.len()).sum();
    if events == 0 || events > APPEND_EVENTS_MAX {
        return Err(StreamError::Invalid(format!(
            "an append carries {events} events; allowed is 1..={APPEND_EVENTS_MAX}"
        )));
    }
    let partitions = topic.partition_count();
    let first = &writes[0].stream;
    let partition = partition_for_key(first.as_bytes(), partitions);
    let mut seen = HashSet::new();
    for write in writes {
        check_stream_name(&write.stream)?;
        if !seen.insert(&write.stream) {
            return Err(StreamError::Invalid(format!(
                "stream {} is named twice in one append; name each stream once",
                write.stream
            )));
        }
        let other = partition_for_key(write.stream.as_bytes(), partitions);
        if other != partition {
            return Err(StreamError::Invalid(format!(
                "streams {first} (partition {partition}) and {} (partition {other}) are in different partitions of topic {}; an append is atomic only within one partition",
                write.stream, topic.name
            )));
        }
        for (index, event) in write.events.iter().enumerate() {
            check_event(topic, &write.stream, index, event)?;
        }
    }
    Ok(partition)
}

/// A stream name: 1..=256 bytes, no NUL (names are keys, and `__streams` keys use NUL).
pub fn check_stream_name(stream: &str) -> Result<(), StreamError> {
    if stream.is_empty() || stream.len() > STREAM_NAME_BYTES_MAX || stream.contains('\0') {
        return Err(StreamError::Invalid(format!(
            "stream name '{}' is {} bytes; allowed is 1..={STREAM_NAME_BYTES_MAX} bytes without NUL",
            stream.escape_debug(),
            stream.len()
        )));
    }
    Ok(())
}

fn check_event(
    topic: &Topic,
    stream: &str,
    index: usize,
    event: &NewEvent,
) -> Result<(), StreamError> {
    let invalid =
        |what: String| StreamError::Invalid(format!("event {index} of stream {stream}: {what}"));
    if event.event_type.is_empty()
        || event.event_type.len() > EVENT_TYPE_BYTES_MAX
        || event.event_type.chars().any(char::is_control)
    {
        return Err(invalid(format!(
            "its type '{}' is {} bytes; allowed is 1..={EVENT_TYPE_BYTES_MAX} bytes without control characters",
            event.event_type.escape_debug(),
            event.event_type.len()
        )));
    }
    if let Some(id) = event.id.as_ref().filter(|id| id.is_empty() || id.len() > ID_BYTES_MAX) {
        return Err(invalid(format!(
            "its id is {} bytes; allowed is 1..={ID_BYTES_MAX}",
            id.len()
        )));
    }
    for (name, _) in &event.headers {
        if name.starts_with("ce_") || name.starts_with("sluice-") || name == "content-type" {
            return Err(invalid(format!(
                "header '{name}' is reserved (ce_*, sluice-*, content-type are set from the event's fields)"
            )));
        }
    }
    let headers: usize = event
        .headers
        .iter()
        .map(|(name, value)| name.len() + value.as_ref().map_or(0, Vec::len))
        .sum();
    // The attributes Sluice adds take at most this much besides the caller's fields.
    const ATTRIBUTES_BYTES: usize = 256;
    let bytes = stream.len()
        + event.data.len()
        + headers
        + event.event_type.len()
        + event.id.as_ref().map_or(36, String::len)
        + event.content_type.as_ref().map_or(16, String::len)
        + event.source.as_ref().map_or(topic.name.len() + 9, String::len)
        + stream.len()
        + ATTRIBUTES_BYTES;
    let limit = topic.config.record_bytes_max as usize;
    if bytes > limit {
        return Err(invalid(format!(
            "it takes {bytes} bytes with its attributes; topic {} allows records of at most {limit} bytes",
            topic.name
        )));
    }
    Ok(())
}

/// The check of one write's expected version against the stream's head.
fn check_expected(
    topic: &str,
    write: &StreamWrite,
    head: Head,
    deleted_at: Option<u64>,
) -> Result<(), StreamError> {
    let exists = head.version >= 0 && deleted_at.is_none();
    let holds = match write.expected {
        ExpectedVersion::Any => deleted_at.is_none(),
        ExpectedVersion::NoStream => !exists,
        ExpectedVersion::StreamExists => exists,
        ExpectedVersion::Exact(version) => exists && head.version == version as i64,
    };
    if holds {
        return Ok(());
    }
    Err(StreamError::WrongExpectedVersion {
        topic: topic.to_owned(),
        stream: write.stream.clone(),
        expected: write.expected,
        actual: head.version,
        deleted_at,
    })
}

/// What every event of one append shares in its record: the time and the defaults of its
/// CloudEvents attributes, formatted once.
struct EventDefaults {
    now_ms: i64,
    time: String,
    source: String,
}

impl EventDefaults {
    fn new(topic: &str, now_ms: i64) -> Self {
        Self { now_ms, time: format_rfc3339_ms(now_ms), source: format!("/streams/{topic}") }
    }

    /// Pushes one event's record (key: the stream; headers: the CloudEvents attributes, its
    /// version and the caller's own) onto `builder`.
    /// Pushes `write`'s events, versioned after `head`; returns how many.
    fn push_write(&self, builder: &mut BatchBuilder, write: &StreamWrite, head: Head) -> u64 {
        for (index, event) in write.events.iter().enumerate() {
            self.push(builder, &write.stream, head.version + 1 + index as i64, event);
        }
        write.events.len() as u64
    }

    fn push(&self, builder: &mut BatchBuilder, stream: &str, version: i64, event: &NewEvent) {
        let id: Cow<'_, str> = match &event.id {
            Some(id) => Cow::Borrowed(id),
            None => Cow::Owned(new_event_id()),
        };
        let version = version.to_string();
        let fixed = [
            Header { key: ID_HEADER.as_bytes(), value: Some(id.as_bytes()) },
            Header { key: b"ce_specversion", value: Some(b"1.0") },
            Header { key: TYPE_HEADER.as_bytes(), value: Some(event.event_type.as_bytes()) },
            Header {
                key: b"ce_source",
                value: Some(event.source.as_deref().unwrap_or(&self.source).as_bytes()),
            },
            Header { key: b"ce_subject", value: Some(stream.as_bytes()) },
            Header { key: b"ce_time", value: Some(self.time.as_bytes()) },
            Header {
                key: b"content-type",
                value: Some(event.content_type.as_deref().unwrap_or("application/json").as_bytes()),
            },
            Header { key: VERSION_HEADER.as_bytes(), value: Some(version.as_bytes()) },
        ];
        let own = event.headers.iter().map(|(name, value)| Header {
            key: name.as_bytes(),
            value: Some(value.as_deref().unwrap_or_default()),
        });
        let mut headers = Vec::with_capacity(fixed.len() + event.headers.len());
        headers.extend(fixed);
        headers.extend(own);
        builder.push(&NewRecord {
            key: Some(stream.as_bytes()),
            value: Some(&event.data),
            headers: &headers,
            timestamp_ms: self.now_ms,
        });
    }
}

/// A fresh event id: 128 random-enough bits as a UUID v4 string (time, a counter and the
/// process id mixed; unique within one engine, which is what the dedup window needs).
fn new_event_id() -> String {
    use std::sync::atomic::AtomicU64;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64);
    // `low` is a bijection of the counter, so ids of one process never repeat.
    // The process id is a system call each time; it does not change, so ask once.
    static PROCESS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let process = *PROCESS.get_or_init(|| u64::from(std::process::id()));
    let high = mix(nanos ^ process.rotate_left(32));
    let low = mix(count ^ 0x5bd1_e995_9e37_79b9);
    let high = (high & !0xf000) | 0x4000; // version 4
    let low = (low & !(0xc0 << 56)) | (0x80 << 56); // variant 10
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0xffff,
        low >> 48,
        low & 0xffff_ffff_ffff
    )
}

/// splitmix64's finaliser.
fn mix(mut value: u64) -> u64 {
    value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}
