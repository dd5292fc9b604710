//! The internal `__topics` log: the only durable record of which topics exist and how they are
//! configured.
//!
//! One record per change, keyed by topic name: a JSON [`TopicConfig`] creates a topic, a
//! tombstone (null value) deletes it. Replaying the log from the start gives the current set;
//! the log is compacted, so it stays as small as the set of topics. Appends use `fsync`
//! durability: a topic exists once its record is acknowledged.

use std::collections::BTreeMap;
use std::path::Path;

use sluice_format::{BatchBuilder, NewRecord};
use sluice_log::{AppendError, LogConfig, Partition};

use crate::config::TopicConfig;
use crate::error::EngineOpenError;
use crate::records::replay_log;

/// Name of the internal topic, and of its directory under the data directory.
pub const TOPICS_LOG: &str = "__topics";

/// The `__topics` log.
#[derive(Debug)]
pub struct MetadataLog {
    log: Partition,
}

impl MetadataLog {
    /// Opens the log in `data_dir/__topics` and replays it into the current topic set.
    ///
    /// # Errors
    /// Storage failures, and records that do not decode as topic configurations.
    pub fn open(data_dir: &Path) -> Result<(Self, BTreeMap<String, TopicConfig>), EngineOpenError> {
        let config = LogConfig { compact: true, retention_age: None, ..LogConfig::default() };
        let log = Partition::open(&data_dir.join(TOPICS_LOG), config).map_err(|source| {
            EngineOpenError::Partition { topic: TOPICS_LOG.to_owned(), partition: 0, source }
        })?;
        let topics = replay(&log)?;
        Ok((Self { log }, topics))
    }

    /// Durably records that `name` exists with `config`.
    ///
    /// # Errors
    /// The log's append error.
    pub fn put(&self, name: &str, config: &TopicConfig) -> Result<(), AppendError> {
        let value = serde_json::to_vec(config).expect("a TopicConfig always serialises");
        self.append(name, Some(&value))
    }

    /// Durably records that `name` no longer exists.
    ///
    /// # Errors
    /// The log's append error.
    pub fn delete(&self, name: &str) -> Result<(), AppendError> {
        self.append(name, None)
    }

    fn append(&self, name: &str, value: Option<&[u8]>) -> Result<(), AppendError> {
        let mut builder = BatchBuilder::new(0);
        builder.push(&NewRecord {
            key: Some(name.as_bytes()),
            value,
            headers: &[],
            timestamp_ms: now_ms(),
        });
        self.log.append(&mut builder.build()).map(drop)
    }

    /// Syncs and checkpoints the log.
    ///
    /// # Errors
    /// Storage failures.
    pub fn shutdown(&self) -> Result<(), sluice_log::MaintenanceError> {
        self.log.shutdown()
    }
}

fn replay(log: &Partition) -> Result<BTreeMap<String, TopicConfig>, EngineOpenError> {
    let mut topics = BTreeMap::new();
    replay_log(log, TOPICS_LOG, |record| {
        let key = record.key.ok_or("record has no key")?;
        let name = String::from_utf8(key).map_err(|_| "key is not UTF-8")?;
        match record.value {
            Some(value) => {
                let config = serde_json::from_slice(&value).map_err(|error| error.to_string())?;
                topics.insert(name, config);
            }
            None => {
                topics.remove(&name);
            }
        }
        Ok(())
    })?;
    Ok(topics)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let since_epoch =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}
