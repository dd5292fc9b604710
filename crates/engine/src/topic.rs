//! A live topic: its partitions' logs, the watch each partition's readers wait on, the sticky
//! partitioner for keyless records and the id dedup window.
//!
//! On disk a topic is `<data>/topics/<name>/<partition>/`, one partition log per directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use sluice_log::Partition;
use tokio::sync::watch;

use crate::config::TopicConfig;
use crate::dedup::{DedupWindow, Position};
use crate::error::EngineOpenError;
use crate::metadata::now_ms;
use crate::partitioner::StickyPartitioner;
use crate::producer::ProducerStates;
use crate::records::decode_batches;
use crate::streams::StreamHeads;
use crate::sync_watch::SyncWatch;

/// Directory under the data directory that holds every topic's partitions.
pub const TOPICS_DIR: &str = "topics";
const REBUILD_READ_BYTES: u32 = 1024 * 1024;

/// One partition of a live topic.
#[derive(Debug)]
pub struct PartitionHandle {
    /// The partition log.
    pub log: Partition,
    /// Kafka-style producer states; held while a producer's batch is checked and written.
    pub producers: Mutex<ProducerStates>,
    /// The high watermark as last published; long-polling fetches wait for it to change.
    pub high_watermark: watch::Sender<u64>,
    /// The heads of the partition's event streams; held while an append's expected versions
    /// are checked and its batch written.
    pub streams: Mutex<StreamHeads>,
    /// The log's synced offset as its sync listener last reported it: async appenders wait on
    /// it instead of holding a thread for the group commit (see [`PartitionHandle::durable`]).
    pub(crate) synced: SyncWatch,
}

impl PartitionHandle {
    /// Returns once the record at `last_offset` is durable as the topic's durability promises
    /// (what [`Partition::wait_durable`] does), without holding a thread: the log's background
    /// syncer leads the group commit and its listener wakes this task.
    ///
    /// # Errors
    /// The partition's poisoning error.
    pub async fn durable(&self, last_offset: u64) -> Result<(), sluice_log::AppendError> {
        self.synced.wait(&self.log, last_offset).await
    }

    /// Publishes the log's current high watermark if it moved forward.
    pub fn publish_high_watermark(&self) {
        let current = self.log.high_watermark();
        self.high_watermark.send_if_modified(|published| {
            let moved = current > *published;
            if moved {
                *published = current;
            }
            moved
        });
    }
}

/// Counters of one topic since the engine opened, for `/metrics`.
#[derive(Debug, Default)]
pub struct TopicCounters {
    /// Records appended.
    pub produced_records: AtomicU64,
    /// Bytes of batches appended.
    pub produced_bytes: AtomicU64,
    /// Records returned by fetches (whole batches counted).
    pub fetched_records: AtomicU64,
    /// Bytes of batches returned by fetches.
    pub fetched_bytes: AtomicU64,
    /// Records not appended because their id was in the dedup window.
    pub duplicates: AtomicU64,
}

/// A topic open for producing and fetching.
#[derive(Debug)]
pub struct Topic {
    /// The topic's name.
    pub name: String,
    /// Its configuration.
    pub config: TopicConfig,
    /// Its partitions, indexed by partition number.
    pub partitions: Vec<PartitionHandle>,
    /// Where keyless records go.
    pub sticky: StickyPartitioner,
    /// Produce and fetch counters.
    pub counters: TopicCounters,
    dedup: Mutex<DedupWindow>,
}

/// The directory of a topic.
pub fn topic_dir(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join(TOPICS_DIR).join(name)
}

impl Topic {
    /// Opens (creating if needed) every partition of `name` and rebuilds its dedup window.
    ///
    /// # Errors
    /// A partition that cannot be opened, or a record in the dedup window that cannot be read.
    pub fn open(data_dir: &Path, name: &str, config: TopicConfig) -> Result<Self, EngineOpenError> {
        let dir = topic_dir(data_dir, name);
        let mut partitions = Vec::new();
        for partition in 0..config.partitions {
            let log = Partition::open(&dir.join(partition.to_string()), config.log_config())
                .map_err(|source| EngineOpenError::Partition {
                    topic: name.to_owned(),
                    partition,
                    source,
                })?;
            let (high_watermark, _) = watch::channel(log.high_watermark());
            let producers = Mutex::new(ProducerStates::default());
            let streams = Mutex::new(StreamHeads::default());
            let synced = SyncWatch::attach(&log);
            partitions.push(PartitionHandle { log, high_watermark, producers, streams, synced });
        }
        let mut dedup = DedupWindow::new(config.dedup_window_ms);
        if !dedup.is_disabled() {
            for (partition, handle) in partitions.iter().enumerate() {
                let partition =
                    u32::try_from(partition).expect("at most PARTITIONS_MAX partitions");
                let mut producers =
                    handle.producers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let window = config.dedup_window();
                rebuild_window(name, partition, &handle.log, window, &mut dedup, &mut producers)?;
            }
        }
        Ok(Self {
            name: name.to_owned(),
            config,
            partitions,
            sticky: StickyPartitioner::default(),
            counters: TopicCounters::default(),
            dedup: Mutex::new(dedup),
        })
    }

    /// The dedup window, locked.
    pub fn dedup(&self) -> MutexGuard<'_, DedupWindow> {
        self.dedup.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The number of partitions.
    pub fn partition_count(&self) -> u32 {
        u32::try_from(self.partitions.len()).expect("at most PARTITIONS_MAX partitions")
    }
}

/// Reads a partition back from the first record inside the dedup window and remembers the ids
/// and the producers' recent batches.
fn rebuild_window(
    topic: &str,
    partition: u32,
    log: &Partition,
    window: Duration,
    dedup: &mut DedupWindow,
    producers: &mut ProducerStates,
) -> Result<(), EngineOpenError> {
    let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    let unreadable = |offset, reason: String| EngineOpenError::Metadata {
        offset,
        reason: format!("rebuilding the dedup window of {topic}/{partition}: {reason}"),
    };
    let start = log
        .offset_for_timestamp(now_ms().saturating_sub(window_ms))
        .map_err(|error| unreadable(0, error.to_string()))?;
    let Some(mut offset) = start else { return Ok(()) };
    let end = log.high_watermark();
    while offset < end {
        let read = log
            .read(offset, REBUILD_READ_BYTES)
            .map_err(|error| unreadable(offset, error.to_string()))?;
        let records = decode_batches(&read.batches, offset)
            .map_err(|error| unreadable(offset, error.to_string()))?;
        for (header, _) in sluice_format::split_batches(&read.batches).map_while(Result::ok) {
            let base_offset = u64::try_from(header.base_offset).unwrap_or(0);
            if base_offset >= offset {
                producers.record(&header, base_offset);
            }
        }
        let Some(last) = records.last() else { break };
        offset = last.offset + 1;
        for record in &records {
            if let Some(id) = record.id() {
                dedup.remember(
                    id.to_owned(),
                    Position { partition, offset: record.offset },
                    record.timestamp_ms,
                );
            }
        }
    }
    Ok(())
}
