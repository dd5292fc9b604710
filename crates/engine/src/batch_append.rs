//! Appending a batch exactly as a producer built it (the Kafka door's path): the partition's
//! producer states check its producer id, epoch and sequence, and the check and the write happen
//! under the partition's producer lock, so two batches of one producer cannot pass each other.
//! The wait for durability happens after the lock is released, so producers still share fsyncs.

use std::sync::Arc;

use sluice_format::BatchHeader;

use crate::engine::Engine;
use crate::error::ProduceError;
use crate::producer::Verdict;
use crate::topic::Topic;

/// Where a batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchAppended {
    /// The offset of its first record.
    pub base_offset: u64,
    /// The offset of its last record.
    pub last_offset: u64,
    /// Whether it repeated a batch already appended (these are the original's offsets).
    pub duplicate: bool,
}

impl Engine {
    /// Appends one RecordBatch v2 as built by a producer to `topic`/`partition`, enforcing
    /// Kafka-style idempotence when the batch carries a producer id. Returns once the batch is as
    /// durable as the topic promises.
    ///
    /// # Errors
    /// [`ProduceError::UnknownTopic`], [`ProduceError::UnknownPartition`],
    /// [`ProduceError::Sequence`] (fenced epoch or out-of-order sequence; nothing appended),
    /// [`ProduceError::Append`] (a malformed batch, a full disk, a storage failure).
    pub async fn append_batch(
        &self,
        topic: &str,
        partition: u32,
        batch: Vec<u8>,
    ) -> Result<BatchAppended, ProduceError> {
        let topic =
            self.topic(topic).ok_or_else(|| ProduceError::UnknownTopic(topic.to_owned()))?;
        let partitions = topic.partition_count();
        if partition >= partitions {
            return Err(ProduceError::UnknownPartition {
                topic: topic.name.clone(),
                index: 0,
                partition,
                partitions,
            });
        }
        // Written on this task (a copy into the page cache); the fsync is the syncer's.
        let appended = write_batch(&topic, partition, batch)?;
        let handle = &topic.partitions[partition as usize];
        // A duplicate waits too: the original may still be on its way to the disk.
        handle.durable(appended.last_offset).await.map_err(|source| ProduceError::Append {
            topic: topic.name.clone(),
            partition,
            source,
        })?;
        handle.publish_high_watermark();
        self.inner.appended.send_modify(|count| *count = count.wrapping_add(1));
        Ok(appended)
    }
}

fn write_batch(
    topic: &Arc<Topic>,
    partition: u32,
    mut batch: Vec<u8>,
) -> Result<BatchAppended, ProduceError> {
    let handle = &topic.partitions[partition as usize];
    let append_error =
        |source| ProduceError::Append { topic: topic.name.clone(), partition, source };
    let header = BatchHeader::parse(&batch).map_err(|error| append_error(error.into()))?;
    let appended = {
        let mut producers =
            handle.producers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let verdict = producers.check(&header).map_err(|source| ProduceError::Sequence {
            topic: topic.name.clone(),
            partition,
            source,
        })?;
        match verdict {
            Verdict::Duplicate { base_offset, last_offset } => {
                BatchAppended { base_offset, last_offset, duplicate: true }
            }
            Verdict::Append => {
                let info = handle.log.append_unsynced(&mut batch).map_err(append_error)?;
                producers.record(&header, info.base_offset);
                BatchAppended {
                    base_offset: info.base_offset,
                    last_offset: info.last_offset,
                    duplicate: false,
                }
            }
        }
    };
    Ok(appended)
}
