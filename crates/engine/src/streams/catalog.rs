//! The internal `__streams` log: per-stream metadata and snapshots, the two things about a
//! stream that are not its events. Compacted, keyed `m \0 topic \0 stream` (metadata, JSON)
//! and `s \0 topic \0 stream` (the newest snapshot: its bytes as the value, the version it folds
//! in a header). Replayed at start-up into two maps: metadata in full (it is small and set by
//! hand), snapshots as the offset of their record (read on load).
//!
//! Every stream append asks whether its stream is deleted, so lookups take only a read lock on
//! a map, by `&str`, and never wait for a writer's fsync: writers serialise on their own lock
//! across their read-modify-write and the durable append, and publish to the maps after.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, RwLock};

use serde::{Deserialize, Serialize};
use sluice_format::{BatchBuilder, Header, NewRecord};
use sluice_log::{LogConfig, Partition};

use crate::error::{EngineOpenError, StreamError};
use crate::metadata::now_ms;
use crate::records::{decode_batches, replay_log, StoredRecord};

/// Name of the internal log, and of its directory under the data directory.
pub const STREAMS_LOG: &str = "__streams";
/// Largest snapshot (bytes), as the largest record a topic may allow.
pub const SNAPSHOT_BYTES_MAX: usize = crate::config::RECORD_BYTES_LIMIT as usize;
/// Header of a snapshot record: the stream version the snapshot folds.
const SNAPSHOT_VERSION_HEADER: &str = "sluice-snapshot-version";

/// A stream's settings, as `GET/PUT /v1/streams/{topic}/{stream}/metadata` show them. Every
/// field hides events from reads; none removes a byte from the log (the topic's retention does).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamMetadata {
    /// Reads show at most this many of the newest events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_count: Option<u64>,
    /// Reads show only events appended at most this long ago (milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_ms: Option<u64>,
    /// Reads show only events at this version or later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncate_before: Option<u64>,
    /// Set by a soft delete: the stream's version when it was deleted. The stream reads as
    /// deleted while its version is still this one; an append with `no_stream` brings it back
    /// (from the next version, with everything up to this one hidden).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<u64>,
}

impl StreamMetadata {
    /// The first version reads may show, from `truncate_before` and a soft delete.
    pub fn first_visible(&self) -> u64 {
        let deleted = self.deleted_at.map_or(0, |version| version + 1);
        self.truncate_before.unwrap_or(0).max(deleted)
    }
}

/// A stored snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The stream version it folds (events up to and including this one).
    pub version: u64,
    /// The snapshot's bytes, as the application saved them.
    pub data: Vec<u8>,
    /// When it was saved (ms since the epoch).
    pub timestamp_ms: i64,
}

/// Per topic, per stream.
type ByStream<T> = HashMap<String, HashMap<String, T>>;

/// The `__streams` log and what it says.
#[derive(Debug)]
pub struct Catalog {
    log: Partition,
    /// Held by writers across their read-modify-write and the append (see the module docs).
    writer: Mutex<()>,
    metadata: RwLock<ByStream<StreamMetadata>>,
    /// Offset in the log of each stream's newest snapshot, and its version.
    snapshots: RwLock<ByStream<(u64, u64)>>,
}

/// A catalog writer's turn: metadata changes made through it are atomic with the reads before.
pub struct CatalogWriter<'a> {
    catalog: &'a Catalog,
    _turn: MutexGuard<'a, ()>,
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn get<'a, T>(map: &'a ByStream<T>, topic: &str, stream: &str) -> Option<&'a T> {
    map.get(topic).and_then(|streams| streams.get(stream))
}

fn set<T>(map: &mut ByStream<T>, topic: &str, stream: &str, value: Option<T>) {
    match value {
        Some(value) => {
            map.entry(topic.to_owned()).or_default().insert(stream.to_owned(), value);
        }
        None => {
            if let Some(streams) = map.get_mut(topic) {
                streams.remove(stream);
                if streams.is_empty() {
                    map.remove(topic);
                }
            }
        }
    }
}

fn record_key(kind: u8, topic: &str, stream: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(topic.len() + stream.len() + 4);
    key.push(kind);
    key.push(0);
    key.extend_from_slice(topic.as_bytes());
    key.push(0);
    key.extend_from_slice(stream.as_bytes());
    key
}

fn parse_key(key: &[u8]) -> Option<(u8, (String, String))> {
    let text = std::str::from_utf8(key).ok()?;
    let mut parts = text.splitn(3, '\0');
    let kind = parts.next()?.as_bytes();
    let (topic, stream) = (parts.next()?, parts.next()?);
    (kind.len() == 1).then(|| (kind[0], (topic.to_owned(), stream.to_owned())))
}

fn snapshot_version(record: &StoredRecord) -> Option<u64> {
    let (_, value) = record.headers.iter().find(|(name, _)| name == SNAPSHOT_VERSION_HEADER)?;
    std::str::from_utf8(value.as_deref()?).ok()?.parse().ok()
}

impl Catalog {
    /// Opens the log and replays it.
    ///
    /// # Errors
    /// Storage failures and unreadable records.
    pub fn open(data_dir: &Path) -> Result<Self, EngineOpenError> {
        let config = LogConfig {
            compact: true,
            retention_age: None,
            batch_bytes_max: SNAPSHOT_BYTES_MAX as u32 + 64 * 1024,
            ..LogConfig::default()
        };
        let log = Partition::open(&data_dir.join(STREAMS_LOG), config).map_err(|source| {
            EngineOpenError::Partition { topic: STREAMS_LOG.to_owned(), partition: 0, source }
        })?;
        let (mut metadata, mut snapshots) = (ByStream::new(), ByStream::new());
        replay_log(&log, STREAMS_LOG, |record| {
            let (kind, (topic, stream)) = record
                .key
                .as_deref()
                .and_then(parse_key)
                .ok_or_else(|| "a record without a stream key".to_owned())?;
            match (kind, &record.value) {
                (b'm', None) => set(&mut metadata, &topic, &stream, None),
                (b'm', Some(value)) => {
                    let value = serde_json::from_slice(value)
                        .map_err(|error| format!("stream metadata: {error}"))?;
                    set(&mut metadata, &topic, &stream, Some(value));
                }
                (b's', None) => set(&mut snapshots, &topic, &stream, None),
                (b's', Some(_)) => {
                    let version = snapshot_version(&record)
                        .ok_or_else(|| "a snapshot without its version".to_owned())?;
                    set(&mut snapshots, &topic, &stream, Some((record.offset, version)));
                }
                _ => return Err(format!("unknown record kind {kind}")),
            }
            Ok(())
        })?;
        Ok(Self {
            log,
            writer: Mutex::new(()),
            metadata: RwLock::new(metadata),
            snapshots: RwLock::new(snapshots),
        })
    }

    /// The metadata of a stream (default if never set).
    pub fn metadata(&self, topic: &str, stream: &str) -> StreamMetadata {
        get(&read(&self.metadata), topic, stream).cloned().unwrap_or_default()
    }

    /// The version a stream was soft-deleted at, as its metadata says (no allocation: every
    /// append asks).
    pub fn deleted_at(&self, topic: &str, stream: &str) -> Option<u64> {
        get(&read(&self.metadata), topic, stream).and_then(|metadata| metadata.deleted_at)
    }

    /// Takes the writers' turn: what is read through it and written back is atomic with respect
    /// to other writers (a metadata change keeps a concurrent delete's `deleted_at`).
    pub fn writer(&self) -> CatalogWriter<'_> {
        let turn = self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        CatalogWriter { catalog: self, _turn: turn }
    }

    /// Reads a stream's newest snapshot.
    ///
    /// # Errors
    /// [`StreamError::Storage`] if its record cannot be read back.
    pub fn snapshot(&self, topic: &str, stream: &str) -> Result<Option<Snapshot>, StreamError> {
        let Some((offset, version)) = get(&read(&self.snapshots), topic, stream).copied() else {
            return Ok(None);
        };
        let storage = |reason: String| {
            StreamError::Storage(format!("reading the snapshot of {topic}/{stream}: {reason}"))
        };
        let read = self.log.read(offset, 0).map_err(|error| storage(error.to_string()))?;
        let records =
            decode_batches(&read.batches, offset).map_err(|error| storage(error.to_string()))?;
        let record = records
            .into_iter()
            .find(|record| record.offset == offset)
            .ok_or_else(|| storage(format!("no record at offset {offset}")))?;
        Ok(Some(Snapshot {
            version,
            data: record.value.unwrap_or_default(),
            timestamp_ms: record.timestamp_ms,
        }))
    }

    /// Forgets everything about the streams of a deleted topic (tombstones, so a topic created
    /// again under the name starts clean).
    ///
    /// # Errors
    /// [`StreamError::Storage`].
    pub fn forget_topic(&self, topic: &str) -> Result<(), StreamError> {
        let _turn = self.writer();
        let mut tombstones = Vec::new();
        for (kind, streams) in [
            (
                b'm',
                read(&self.metadata).get(topic).map(|streams| streams.keys().cloned().collect()),
            ),
            (
                b's',
                read(&self.snapshots).get(topic).map(|streams| streams.keys().cloned().collect()),
            ),
        ] {
            let streams: Vec<String> = streams.unwrap_or_default();
            for stream in streams {
                tombstones.push((record_key(kind, topic, &stream), None, Vec::new()));
            }
        }
        for chunk in tombstones.chunks(1000) {
            self.append(chunk)?;
        }
        write(&self.metadata).remove(topic);
        write(&self.snapshots).remove(topic);
        Ok(())
    }

    /// Appends records as one batch and waits for the fsync; returns the last offset.
    #[allow(clippy::type_complexity)]
    fn append(
        &self,
        records: &[(Vec<u8>, Option<Vec<u8>>, Vec<(String, Vec<u8>)>)],
    ) -> Result<u64, StreamError> {
        let now = now_ms();
        let mut builder = BatchBuilder::new(0);
        for (key, value, headers) in records {
            let headers: Vec<Header<'_>> = headers
                .iter()
                .map(|(name, value)| Header { key: name.as_bytes(), value: Some(value) })
                .collect();
            builder.push(&NewRecord {
                key: Some(key),
                value: value.as_deref(),
                headers: &headers,
                timestamp_ms: now,
            });
        }
        let mut batch = builder.build();
        let info = self
            .log
            .append(&mut batch)
            .map_err(|error| StreamError::Storage(format!("{STREAMS_LOG}: {error}")))?;
        Ok(info.last_offset)
    }

    /// Syncs and closes the log's files.
    ///
    /// # Errors
    /// The log's error.
    pub fn shutdown(&self) -> Result<(), sluice_log::MaintenanceError> {
        self.log.shutdown()
    }
}

impl CatalogWriter<'_> {
    /// The metadata of a stream, as of this writer's turn.
    pub fn metadata(&self, topic: &str, stream: &str) -> StreamMetadata {
        self.catalog.metadata(topic, stream)
    }

    /// Durably replaces a stream's metadata (the default removes it).
    ///
    /// # Errors
    /// [`StreamError::Storage`].
    pub fn put_metadata(
        &self,
        topic: &str,
        stream: &str,
        metadata: &StreamMetadata,
    ) -> Result<(), StreamError> {
        let unset = *metadata == StreamMetadata::default();
        let value = (!unset).then(|| serde_json::to_vec(metadata).expect("metadata serialises"));
        self.catalog.append(&[(record_key(b'm', topic, stream), value, Vec::new())])?;
        let stored = (!unset).then(|| metadata.clone());
        set(&mut write(&self.catalog.metadata), topic, stream, stored);
        Ok(())
    }

    /// Durably stores a snapshot as the stream's newest.
    ///
    /// # Errors
    /// [`StreamError::Storage`].
    pub fn put_snapshot(
        &self,
        topic: &str,
        stream: &str,
        version: u64,
        data: &[u8],
    ) -> Result<(), StreamError> {
        let header = (SNAPSHOT_VERSION_HEADER.to_owned(), version.to_string().into_bytes());
        let key = record_key(b's', topic, stream);
        let offset = self.catalog.append(&[(key, Some(data.to_vec()), vec![header])])?;
        set(&mut write(&self.catalog.snapshots), topic, stream, Some((offset, version)));
        Ok(())
    }
}
