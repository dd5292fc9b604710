//! The internal `__consumer_offsets` log: committed offsets of every group, the only durable
//! part of a group. One record per commit and partition, keyed `group \0 topic \0 partition`,
//! valued with JSON `{"offset", "generation", "timestamp"}`; compacted, so it holds about one
//! record per group and partition. Replayed at start-up into a map.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sluice_format::{BatchBuilder, NewRecord};
use sluice_log::{AppendError, LogConfig, Partition};

use crate::error::EngineOpenError;
use crate::group::assignment::TopicPartition;
use crate::metadata::now_ms;
use crate::records::replay_log;

/// Name of the internal topic, and of its directory under the data directory.
pub const OFFSETS_LOG: &str = "__consumer_offsets";

/// A committed offset: the next offset the group will read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// The next offset to read.
    pub offset: u64,
    /// The generation the commit was made in.
    pub generation: u64,
    /// When it was committed (ms since the epoch).
    pub timestamp: i64,
}

/// Every group's committed offsets, by group then partition.
pub type CommittedOffsets = BTreeMap<String, BTreeMap<TopicPartition, Committed>>;

/// The `__consumer_offsets` log.
#[derive(Debug)]
pub struct OffsetsLog {
    log: Partition,
}

fn key(group: &str, partition: &TopicPartition) -> Vec<u8> {
    format!("{group}\0{}\0{}", partition.topic, partition.partition).into_bytes()
}

impl OffsetsLog {
    /// Opens the log and replays it.
    ///
    /// # Errors
    /// Storage failures and unreadable records.
    pub fn open(data_dir: &Path) -> Result<(Self, CommittedOffsets), EngineOpenError> {
        let config = LogConfig { compact: true, retention_age: None, ..LogConfig::default() };
        let log = Partition::open(&data_dir.join(OFFSETS_LOG), config).map_err(|source| {
            EngineOpenError::Partition { topic: OFFSETS_LOG.to_owned(), partition: 0, source }
        })?;
        let offsets = replay(&log)?;
        Ok((Self { log }, offsets))
    }

    /// Durably records `offsets` for `group` (one batch: all or nothing).
    ///
    /// # Errors
    /// The log's append error.
    pub fn commit(
        &self,
        group: &str,
        generation: u64,
        offsets: &[(TopicPartition, u64)],
    ) -> Result<Vec<Committed>, AppendError> {
        let timestamp = now_ms();
        let mut builder = BatchBuilder::new(0);
        let mut committed = Vec::with_capacity(offsets.len());
        let encoded: Vec<(Vec<u8>, Vec<u8>)> = offsets
            .iter()
            .map(|(partition, offset)| {
                let value = Committed { offset: *offset, generation, timestamp };
                committed.push(value);
                (key(group, partition), serde_json::to_vec(&value).expect("a Committed serialises"))
            })
            .collect();
        for (key, value) in &encoded {
            builder.push(&NewRecord {
                key: Some(key),
                value: Some(value),
                headers: &[],
                timestamp_ms: timestamp,
            });
        }
        self.log.append(&mut builder.build())?;
        Ok(committed)
    }

    /// Syncs and checkpoints the log.
    ///
    /// # Errors
    /// Storage failures.
    pub fn shutdown(&self) -> Result<(), sluice_log::MaintenanceError> {
        self.log.shutdown()
    }
}

fn replay(log: &Partition) -> Result<CommittedOffsets, EngineOpenError> {
    let mut offsets = CommittedOffsets::new();
    replay_log(log, OFFSETS_LOG, |record| {
        let text = String::from_utf8(record.key.unwrap_or_default())
            .map_err(|_| "key is not UTF-8".to_owned())?;
        let mut parts = text.split('\0');
        let (Some(group), Some(topic), Some(partition)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("key {text:?} is not group/topic/partition"));
        };
        let partition = partition.parse().map_err(|_| format!("bad partition in {text:?}"))?;
        let topic_partition = TopicPartition { topic: topic.to_owned(), partition };
        let Some(value) = record.value else {
            if let Some(group) = offsets.get_mut(group) {
                group.remove(&topic_partition);
            }
            return Ok(());
        };
        let committed: Committed =
            serde_json::from_slice(&value).map_err(|error| error.to_string())?;
        offsets.entry(group.to_owned()).or_default().insert(topic_partition, committed);
        Ok(())
    })?;
    Ok(offsets)
}
