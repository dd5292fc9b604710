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
    /// [`ProduceError::Invalid`] (a reserved stream header), [`ProduceError::Append`] (a
    /// malformed batch, a full disk, a storage failure).
    pub async fn append_batch(
        &self,
        topic: &str,
        partition: u32,
        batch: Vec<u8>,
    ) -> Result<BatchAppended, ProduceError> {
        self.write_batch(topic, partition, batch)?.durable().await
    }

    /// The first half of [`Engine::append_batch`]: checks and writes the batch now, on the
    /// calling thread (a copy into the page cache), and returns what to await for its
    /// durability. A front door that must keep a connection's batches in order (the Kafka
    /// door) writes them one after another and awaits their durability together.
    ///
    /// # Errors
    /// As [`Engine::append_batch`].
    pub fn write_batch(
        &self,
        topic: &str,
        partition: u32,
        batch: Vec<u8>,
    ) -> Result<WrittenBatch, ProduceError> {
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
        let appended = write_batch(&topic, partition, batch)?;
        // The sync starts now, not when the caller gets to await it (a door may answer an
        // earlier request first).
        topic.partitions[partition as usize].log.request_sync(appended.last_offset);
        Ok(WrittenBatch { engine: self.clone(), topic, partition, appended })
    }
}

/// A batch written to its partition, not yet known to be durable.
#[derive(Debug)]
#[must_use = "a written batch is not acknowledged until its durability is awaited"]
pub struct WrittenBatch {
    engine: Engine,
    topic: Arc<Topic>,
    partition: u32,
    appended: BatchAppended,
}

impl WrittenBatch {
    /// Where the batch landed (not yet durable).
    pub fn appended(&self) -> BatchAppended {
        self.appended
    }

    /// Waits until the batch is as durable as the topic promises (a duplicate waits for its
    /// original) and makes it visible to readers.
    ///
    /// # Errors
    /// [`ProduceError::Append`] if the partition's sync failed.
    pub async fn durable(self) -> Result<BatchAppended, ProduceError> {
        let handle = &self.topic.partitions[self.partition as usize];
        handle.durable(self.appended.last_offset).await.map_err(|source| ProduceError::Append {
            topic: self.topic.name.clone(),
            partition: self.partition,
            source,
        })?;
        handle.publish_high_watermark();
        self.engine.inner.appended.send_modify(|count| *count = count.wrapping_add(1));
        Ok(self.appended)
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
    check_reserved_headers(&batch)?;
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

/// Refuses a batch with a record that carries a stream header: stream versions are handed out
/// only by stream appends (as for [`Engine::produce`]). A batch that does not decode is left to
/// the log's validation, which names what is wrong with it.
fn check_reserved_headers(batch: &[u8]) -> Result<(), ProduceError> {
    use crate::streams::{DELETED_HEADER, VERSION_HEADER};
    let Ok(records) = sluice_format::records(batch) else { return Ok(()) };
    for (index, record) in records.enumerate() {
        let Ok(record) = record else { return Ok(()) };
        if let Some(header) = record
            .headers
            .iter()
            .find(|h| h.key == VERSION_HEADER.as_bytes() || h.key == DELETED_HEADER.as_bytes())
        {
            return Err(ProduceError::Invalid(format!(
                "record {index} of the batch has a '{}' header; stream versions are set only by stream appends",
                String::from_utf8_lossy(header.key)
            )));
        }
    }
    Ok(())
}
