//! The engine: the set of live topics over one data directory, and topic administration.
//!
//! Layout of the data directory:
//! ```text
//! <data>/__topics/                 the internal topic-metadata log (the truth about topics)
//! <data>/topics/<name>/<p>/        partition logs
//! ```
//! Creating a topic appends its configuration to `__topics` first, then creates its partitions;
//! deleting appends a tombstone first, then removes the directory. A crash between the two
//! steps is repaired at open: partitions of a recorded topic are created if missing, and topic
//! directories with no live record are removed.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;

use crate::config::TopicConfig;
use crate::error::{CloseError, EngineOpenError, TopicError};
use crate::group::offsets::OffsetsLog;
use crate::group::Groups;
use crate::metadata::MetadataLog;
use crate::names::validate_topic_name;
use crate::queue::Queues;
use crate::streams::catalog::Catalog;
use crate::topic::{topic_dir, Topic, TOPICS_DIR};

/// A topic as described to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    /// The name.
    pub name: String,
    /// The configuration.
    pub config: TopicConfig,
    /// Per partition: (log start offset, high watermark, bytes stored).
    pub partitions: Vec<PartitionDescription>,
}

/// One partition as described to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionDescription {
    /// The partition number.
    pub partition: u32,
    /// The first offset still stored.
    pub log_start_offset: u64,
    /// The offset after the last visible record.
    pub high_watermark: u64,
    /// Bytes stored.
    pub size_bytes: u64,
}

pub(crate) struct EngineInner {
    pub dir: PathBuf,
    pub metadata: Mutex<MetadataLog>,
    pub topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    pub groups: Groups,
    pub queues: Queues,
    /// Stream metadata and snapshots (`__streams`).
    pub streams: Catalog,
    /// Bumped after every produce, so group fetches waiting on many partitions wake once.
    pub appended: watch::Sender<u64>,
    /// The producer id handed out last (see [`Engine::allocate_producer_id`]).
    pub last_producer_id: std::sync::atomic::AtomicI64,
}

/// The Sluice engine. Cheap to clone; every clone is the same engine.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<EngineInner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Engine").field("dir", &self.inner.dir).finish_non_exhaustive()
    }
}

impl Engine {
    /// Opens the engine on `dir` (created if missing), recovering every topic.
    ///
    /// # Errors
    /// Storage failures, an unreadable metadata log, or a partition that cannot be opened.
    pub fn open(dir: &Path) -> Result<Engine, EngineOpenError> {
        let io_error = |path: &Path| {
            let path = path.to_owned();
            move |source| EngineOpenError::Io { path, source }
        };
        std::fs::create_dir_all(dir.join(TOPICS_DIR)).map_err(io_error(dir))?;
        let (metadata, configs) = MetadataLog::open(dir)?;
        remove_unrecorded_topics(dir, &configs).map_err(io_error(dir))?;
        let mut topics = BTreeMap::new();
        for (name, config) in configs {
            let topic = Topic::open(dir, &name, config)?;
            topics.insert(name, Arc::new(topic));
        }
        let (offsets_log, committed) = OffsetsLog::open(dir)?;
        let queues = Queues::open(dir)?;
        let streams = Catalog::open(dir)?;
        tracing::info!(dir = %dir.display(), topics = topics.len(), groups = committed.len(), "engine open");
        let inner = EngineInner {
            dir: dir.to_owned(),
            metadata: Mutex::new(metadata),
            topics: RwLock::new(topics),
            groups: Groups::new(offsets_log, committed),
            queues,
            streams,
            appended: watch::channel(0).0,
            last_producer_id: std::sync::atomic::AtomicI64::new(0),
        };
        Ok(Engine { inner: Arc::new(inner) })
    }

    /// A producer id for Kafka-style idempotence that no producer of this data directory had:
    /// the microseconds since the Unix epoch, or one more than the last id handed out if that
    /// is larger. Unique across restarts as long as the clock does not step back past the ids
    /// of the last run (docs/kafka.md).
    pub fn allocate_producer_id(&self) -> i64 {
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| i64::try_from(since.as_micros()).unwrap_or(i64::MAX - 1));
        let previous = self
            .inner
            .last_producer_id
            .fetch_update(
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
                |last| Some(now_us.max(last + 1)),
            )
            .unwrap_or_else(|last| last);
        now_us.max(previous + 1)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub(crate) fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.inner.topics.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(name).cloned()
    }

    /// Creates a topic. Blocks until its record in `__topics` is fsynced.
    ///
    /// # Errors
    /// [`TopicError::Name`], [`TopicError::Config`], [`TopicError::Exists`],
    /// [`TopicError::Storage`].
    pub fn create_topic(
        &self,
        name: &str,
        config: TopicConfig,
    ) -> Result<TopicDescription, TopicError> {
        validate_topic_name(name)?;
        config.validate()?;
        let metadata = self.inner.metadata.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.topic(name).is_some() {
            return Err(TopicError::Exists(name.to_owned()));
        }
        let storage = |message: String| TopicError::Storage { topic: name.to_owned(), message };
        metadata.put(name, &config).map_err(|error| storage(error.to_string()))?;
        let topic = Topic::open(&self.inner.dir, name, config)
            .map_err(|error| storage(error.to_string()))?;
        let topic = Arc::new(topic);
        let description = describe(&topic);
        self.inner
            .topics
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(name.to_owned(), topic);
        tracing::info!(topic = name, "topic created");
        Ok(description)
    }

    /// Every topic, by name.
    pub fn list_topics(&self) -> Vec<TopicDescription> {
        self.all_topics().iter().map(|topic| describe(topic)).collect()
    }

    /// One topic.
    ///
    /// # Errors
    /// [`TopicError::Unknown`].
    pub fn describe_topic(&self, name: &str) -> Result<TopicDescription, TopicError> {
        self.topic(name)
            .map(|topic| describe(&topic))
            .ok_or_else(|| TopicError::Unknown(name.to_owned()))
    }

    /// Deletes a topic and all its records. Blocks until the deletion is fsynced.
    ///
    /// # Errors
    /// [`TopicError::Unknown`], [`TopicError::Storage`].
    pub fn delete_topic(&self, name: &str) -> Result<(), TopicError> {
        let metadata = self.inner.metadata.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let storage = |message: String| TopicError::Storage { topic: name.to_owned(), message };
        if self.topic(name).is_none() {
            return Err(TopicError::Unknown(name.to_owned()));
        }
        metadata.delete(name).map_err(|error| storage(error.to_string()))?;
        let removed =
            self.inner.topics.write().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(name);
        if let Some(topic) = removed {
            for handle in &topic.partitions {
                // In-flight produces now fail with "closed"; long-polls wake and see the topic
                // is gone rather than wait out their time.
                if let Err(error) = handle.log.shutdown() {
                    tracing::warn!(topic = name, %error, "closing a deleted topic's partition");
                }
                handle.high_watermark.send_modify(|_| {});
            }
        }
        remove_topic_dir(&self.inner.dir, name).map_err(|error| storage(error.to_string()))?;
        // Replay marks name offsets of this topic; a topic created again under the name starts
        // at offset 0, and must not find its records marked as replayed.
        if let Err(error) = self.forget_marks(name) {
            tracing::error!(topic = name, %error, "forgetting the dead-letter marks of a deleted topic");
        }
        // Likewise stream metadata and snapshots: a new topic's streams start clean.
        if let Err(error) = self.catalog().forget_topic(name) {
            tracing::error!(topic = name, %error, "forgetting the stream metadata of a deleted topic");
        }
        tracing::info!(topic = name, "topic deleted");
        Ok(())
    }

    /// A receiver that changes after every produce: a reader following several partitions
    /// waits on it once instead of on each partition.
    pub fn subscribe_appends(&self) -> watch::Receiver<u64> {
        self.inner.appended.subscribe()
    }

    /// Every live topic, at this moment.
    pub(crate) fn all_topics(&self) -> Vec<Arc<Topic>> {
        self.inner
            .topics
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Runs retention and compaction on every partition of every topic.
    pub fn run_maintenance(&self) {
        let topics = self.all_topics();
        for topic in topics {
            for (partition, handle) in topic.partitions.iter().enumerate() {
                if let Err(error) = handle.log.run_maintenance() {
                    tracing::error!(topic = %topic.name, partition, %error, "maintenance failed");
                }
            }
        }
    }

    /// Syncs every partition and the metadata log and refuses further produces.
    ///
    /// # Errors
    /// The first partition that could not be synced (the others are still synced).
    pub fn shutdown(&self) -> Result<(), CloseError> {
        let mut first_error = None;
        let topics = self.all_topics();
        for topic in topics {
            for (partition, handle) in topic.partitions.iter().enumerate() {
                if let Err(source) = handle.log.shutdown() {
                    let partition = u32::try_from(partition).expect("at most PARTITIONS_MAX");
                    first_error.get_or_insert(CloseError {
                        topic: topic.name.clone(),
                        partition,
                        source,
                    });
                }
            }
        }
        if let Err(source) = self.inner.groups.offsets_log.shutdown() {
            let topic = crate::group::offsets::OFFSETS_LOG.to_owned();
            first_error.get_or_insert(CloseError { topic, partition: 0, source });
        }
        if let Err(source) = self.inner.queues.shutdown() {
            let topic = crate::queue::journal::QUEUES_DIR.to_owned();
            first_error.get_or_insert(CloseError { topic, partition: 0, source });
        }
        if let Err(source) = self.catalog().shutdown() {
            let topic = crate::streams::catalog::STREAMS_LOG.to_owned();
            first_error.get_or_insert(CloseError { topic, partition: 0, source });
        }
        let metadata = self.inner.metadata.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(source) = metadata.shutdown() {
            first_error.get_or_insert(CloseError {
                topic: crate::metadata::TOPICS_LOG.to_owned(),
                partition: 0,
                source,
            });
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn describe(topic: &Topic) -> TopicDescription {
    let partitions = topic
        .partitions
        .iter()
        .enumerate()
        .map(|(partition, handle)| PartitionDescription {
            partition: u32::try_from(partition).expect("at most PARTITIONS_MAX"),
            log_start_offset: handle.log.log_start_offset(),
            high_watermark: handle.log.high_watermark(),
            size_bytes: handle.log.size_bytes(),
        })
        .collect();
    TopicDescription { name: topic.name.clone(), config: topic.config.clone(), partitions }
}

/// Removes a topic's directory: renamed aside first, so a crash mid-removal never leaves a
/// half-deleted directory under the topic's name.
fn remove_topic_dir(data_dir: &Path, name: &str) -> io::Result<()> {
    let dir = topic_dir(data_dir, name);
    if !dir.exists() {
        return Ok(());
    }
    let aside = data_dir.join(TOPICS_DIR).join(format!(".deleted-{name}-{}", std::process::id()));
    std::fs::rename(&dir, &aside)?;
    std::fs::remove_dir_all(&aside)
}

/// Removes topic directories that `__topics` does not record (a crash between the tombstone
/// and the directory removal) and leftovers of interrupted removals.
fn remove_unrecorded_topics(
    data_dir: &Path,
    configs: &BTreeMap<String, TopicConfig>,
) -> io::Result<()> {
    for entry in std::fs::read_dir(data_dir.join(TOPICS_DIR))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".deleted-") {
            std::fs::remove_dir_all(entry.path())?;
        } else if !configs.contains_key(&name) {
            tracing::warn!(topic = %name, "removing the directory of a topic that no longer exists");
            remove_topic_dir(data_dir, &name)?;
        }
    }
    Ok(())
}
