//! Fetching: whole batches of one partition from an offset, waiting up to a bound for records to
//! arrive when the reader is at the end (long-poll).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::Engine;
use crate::error::FetchError;
use crate::records::{decode_batches, StoredRecord};
use crate::topic::Topic;

/// Longest a fetch may wait for records.
pub const FETCH_WAIT_MAX: Duration = Duration::from_secs(30);
/// Largest byte budget of one fetch.
pub const FETCH_BYTES_MAX: u32 = 64 * 1024 * 1024;

/// What a fetch returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchResult {
    /// Whole batches as stored; the first may start before the offset asked for.
    pub batches: Vec<u8>,
    /// The partition's high watermark when read.
    pub high_watermark: u64,
    /// The partition's first stored offset when read.
    pub log_start_offset: u64,
}

impl FetchResult {
    /// The records at or after `offset`, decoded.
    ///
    /// # Errors
    /// Batches that do not decode (the log checked their CRC, so this means a format bug).
    pub fn records_from(
        &self,
        offset: u64,
    ) -> Result<Vec<StoredRecord>, sluice_format::BatchError> {
        decode_batches(&self.batches, offset)
    }
}

impl Engine {
    /// Reads whole batches of `topic`/`partition` from `offset`, up to `max_bytes` (at least one
    /// batch). At the end of the partition it waits up to `wait` (at most [`FETCH_WAIT_MAX`]) for
    /// a record to arrive, and returns no batches if none did.
    ///
    /// # Errors
    /// [`FetchError::UnknownTopic`], [`FetchError::UnknownPartition`], and the log's read errors
    /// (an offset out of range among them).
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        wait: Duration,
    ) -> Result<FetchResult, FetchError> {
        let topic = self.topic(topic).ok_or_else(|| FetchError::UnknownTopic(topic.to_owned()))?;
        let partitions = topic.partition_count();
        if partition >= partitions {
            return Err(FetchError::UnknownPartition {
                topic: topic.name.clone(),
                partition,
                partitions,
            });
        }
        let handle = &topic.partitions[partition as usize];
        let mut changes = handle.high_watermark.subscribe();
        if offset >= handle.log.high_watermark() && !wait.is_zero() {
            let wait = wait.min(FETCH_WAIT_MAX);
            let arrived = changes.wait_for(|high_watermark| *high_watermark > offset);
            // Either way, read what is there now: a timeout is an empty result, not an error.
            let _ = tokio::time::timeout(wait, arrived).await;
        }
        read(topic, partition, offset, max_bytes.min(FETCH_BYTES_MAX)).await
    }
}

impl Engine {
    /// The offset of the first record of `topic`/`partition` at or after `timestamp_ms`, or
    /// `None` if none is that recent.
    ///
    /// # Errors
    /// [`FetchError::UnknownTopic`], [`FetchError::UnknownPartition`], the log's read errors.
    pub fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<Option<u64>, FetchError> {
        let topic = self.topic(topic).ok_or_else(|| FetchError::UnknownTopic(topic.to_owned()))?;
        let partitions = topic.partition_count();
        let handle = topic.partitions.get(partition as usize).ok_or_else(|| {
            FetchError::UnknownPartition { topic: topic.name.clone(), partition, partitions }
        })?;
        handle.log.offset_for_timestamp(timestamp_ms).map_err(|source| FetchError::Read {
            topic: topic.name.clone(),
            partition,
            source,
        })
    }
}

async fn read(
    topic: Arc<Topic>,
    partition: u32,
    offset: u64,
    max_bytes: u32,
) -> Result<FetchResult, FetchError> {
    tokio::task::spawn_blocking(move || {
        let handle = &topic.partitions[partition as usize];
        let read = handle.log.read(offset, max_bytes).map_err(|source| FetchError::Read {
            topic: topic.name.clone(),
            partition,
            source,
        })?;
        // From the headers only: the log checked every batch as it read it.
        let records: u64 = sluice_format::split_batches(&read.batches)
            .map_while(Result::ok)
            .map(|(header, _)| u64::try_from(header.records_count).unwrap_or(0))
            .sum();
        topic.counters.fetched_records.fetch_add(records, Ordering::Relaxed);
        topic.counters.fetched_bytes.fetch_add(read.batches.len() as u64, Ordering::Relaxed);
        Ok(FetchResult {
            batches: read.batches,
            high_watermark: read.high_watermark,
            log_start_offset: read.log_start_offset,
        })
    })
    .await
    .expect("a read task does not panic")
}
