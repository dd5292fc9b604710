//! A snapshot of what `/metrics` reports: per-partition offsets and sizes, per-topic counters,
//! and per-group committed offsets and lag. The HTTP door renders it as Prometheus text.

use std::sync::atomic::Ordering;

use crate::engine::Engine;

/// One partition's offsets and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMetrics {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The first stored offset.
    pub log_start_offset: u64,
    /// The high watermark.
    pub high_watermark: u64,
    /// Bytes stored.
    pub size_bytes: u64,
}

/// One topic's counters since the engine opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMetrics {
    /// The topic.
    pub topic: String,
    /// Records appended.
    pub produced_records: u64,
    /// Bytes appended.
    pub produced_bytes: u64,
    /// Records fetched.
    pub fetched_records: u64,
    /// Bytes fetched.
    pub fetched_bytes: u64,
    /// Records dropped as duplicates.
    pub duplicates: u64,
}

/// One group's committed offset and lag on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLagMetrics {
    /// The group.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The committed offset, if any.
    pub committed: Option<u64>,
    /// High watermark minus committed offset.
    pub lag: u64,
    /// Members in the group.
    pub members: usize,
}

/// Everything `/metrics` shows.
#[derive(Debug, Clone, Default)]
pub struct MetricsSnapshot {
    /// Per partition.
    pub partitions: Vec<PartitionMetrics>,
    /// Per topic.
    pub topics: Vec<TopicMetrics>,
    /// Per group and partition.
    pub groups: Vec<GroupLagMetrics>,
}

impl Engine {
    /// Reads every counter, offset and lag now.
    pub fn metrics(&self) -> MetricsSnapshot {
        let mut snapshot = MetricsSnapshot::default();
        let topics = self.all_topics();
        for topic in topics {
            let counters = &topic.counters;
            snapshot.topics.push(TopicMetrics {
                topic: topic.name.clone(),
                produced_records: counters.produced_records.load(Ordering::Relaxed),
                produced_bytes: counters.produced_bytes.load(Ordering::Relaxed),
                fetched_records: counters.fetched_records.load(Ordering::Relaxed),
                fetched_bytes: counters.fetched_bytes.load(Ordering::Relaxed),
                duplicates: counters.duplicates.load(Ordering::Relaxed),
            });
            for (partition, handle) in topic.partitions.iter().enumerate() {
                snapshot.partitions.push(PartitionMetrics {
                    topic: topic.name.clone(),
                    partition: u32::try_from(partition).expect("at most PARTITIONS_MAX"),
                    log_start_offset: handle.log.log_start_offset(),
                    high_watermark: handle.log.high_watermark(),
                    size_bytes: handle.log.size_bytes(),
                });
            }
        }
        for group in self.list_groups() {
            let Ok(description) = self.describe_group(&group) else { continue };
            let members = description.members.len();
            for lag in description.partitions {
                snapshot.groups.push(GroupLagMetrics {
                    group: group.clone(),
                    topic: lag.topic,
                    partition: lag.partition,
                    committed: lag.committed,
                    lag: lag.lag,
                    members,
                });
            }
        }
        snapshot
    }
}
