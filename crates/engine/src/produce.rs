//! Producing: place each record in a partition, drop the ones whose id is in the dedup window,
//! build one RecordBatch per partition (more if it would pass the log's batch limit), append the
//! partitions in parallel, and return where every record landed, in request order.
//!
//! Placement is Kafka's: an explicit partition, else murmur2 of the key (so Kafka clients and
//! Sluice agree), else the topic's sticky partition, which moves on after every request.
//! Records of one request that land in one partition keep their order and are appended as one
//! batch, atomically. A request that spans partitions is not atomic across them: if one
//! partition fails, the others may have been appended; the error names the failed partition.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use sluice_format::{BatchBuilder, Header, NewRecord};
use tokio::sync::watch;

use crate::dedup::{Lookup, Outcome, Position};
use crate::engine::Engine;
use crate::error::ProduceError;
use crate::metadata::now_ms;
use crate::partitioner::partition_for_key;
use crate::records::{ProduceRecord, ID_BYTES_MAX, ID_HEADER};
use crate::topic::Topic;

/// Most records one produce request may carry.
pub const PRODUCE_RECORDS_MAX: usize = 10_000;

/// Where a produced record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Produced {
    /// The partition.
    pub partition: u32,
    /// The offset.
    pub offset: u64,
    /// Whether the record was a duplicate (its id was already in the window): this is where the
    /// first one landed, and nothing was appended.
    pub duplicate: bool,
}

/// A record placed in a partition, waiting for its append.
struct Placed {
    index: usize,
    record: ProduceRecord,
    claim: Option<(String, watch::Sender<Outcome>)>,
}

impl Engine {
    /// Appends `records` to `topic` and returns where each landed, in order. Under the topic's
    /// default `fsync` durability this returns once every appended record is fdatasynced.
    ///
    /// # Errors
    /// [`ProduceError::UnknownTopic`], [`ProduceError::UnknownPartition`],
    /// [`ProduceError::RecordTooLarge`], [`ProduceError::Invalid`] (nothing appended); and
    /// [`ProduceError::Append`] when a partition log fails (records of other partitions may have
    /// been appended).
    pub async fn produce(
        &self,
        topic: &str,
        records: Vec<ProduceRecord>,
    ) -> Result<Vec<Produced>, ProduceError> {
        check_reserved_headers(&records)?;
        self.produce_internal(topic, records).await
    }

    /// [`Engine::produce`] without the check of headers only the engine may set: for records
    /// the engine writes itself (dead letters keep every header of the original).
    pub(crate) async fn produce_internal(
        &self,
        topic: &str,
        records: Vec<ProduceRecord>,
    ) -> Result<Vec<Produced>, ProduceError> {
        let topic =
            self.topic(topic).ok_or_else(|| ProduceError::UnknownTopic(topic.to_owned()))?;
        let records = settle_ids(records)?;
        check_request(&topic, &records)?;
        let count = records.len();
        let mut results: Vec<Option<Produced>> = vec![None; count];
        let mut waits = Vec::new();
        let by_partition = place(&topic, records, &mut results, &mut waits);
        let appended = append_partitions(&topic, by_partition).await;
        self.inner.appended.send_modify(|count| *count = count.wrapping_add(1));
        for (index, mut receiver) in waits {
            results[index] = Some(wait_for_original(&topic, &mut receiver).await?);
        }
        for (index, produced) in appended? {
            results[index] = Some(produced);
        }
        Ok(results.into_iter().map(|produced| produced.expect("every record was placed")).collect())
    }
}

/// Makes a record's id and its `ce_id` header one thing: a `ce_id` header alone is the id (the
/// window is rebuilt from that header at start-up, so runtime must agree), and an id that
/// differs from the header is refused.
fn settle_ids(mut records: Vec<ProduceRecord>) -> Result<Vec<ProduceRecord>, ProduceError> {
    for (index, record) in records.iter_mut().enumerate() {
        let header = record.headers.iter().find(|(name, _)| name == ID_HEADER).map(|(_, value)| {
            value.as_deref().map(String::from_utf8_lossy).unwrap_or_default().into_owned()
        });
        match (&record.id, header) {
            (Some(id), Some(header)) if *id != header => {
                return Err(ProduceError::Invalid(format!(
                    "record {index} has id '{id}' and a {ID_HEADER} header '{header}'; they must be equal (or send one)"
                )));
            }
            (None, Some(header)) => record.id = Some(header),
            _ => {}
        }
    }
    Ok(records)
}

/// Refuses the headers that give a record a place in an event stream: versions are handed out
/// only by stream appends, under the partition's stream lock (see `streams`).
fn check_reserved_headers(records: &[ProduceRecord]) -> Result<(), ProduceError> {
    use crate::streams::{DELETED_HEADER, VERSION_HEADER};
    for (index, record) in records.iter().enumerate() {
        if let Some((name, _)) =
            record.headers.iter().find(|(name, _)| name == VERSION_HEADER || name == DELETED_HEADER)
        {
            return Err(ProduceError::Invalid(format!(
                "record {index} has a '{name}' header; stream versions are set only by stream appends (POST /v1/streams/...)"
            )));
        }
    }
    Ok(())
}

fn check_request(topic: &Topic, records: &[ProduceRecord]) -> Result<(), ProduceError> {
    if records.is_empty() || records.len() > PRODUCE_RECORDS_MAX {
        return Err(ProduceError::Invalid(format!(
            "a produce request carries {} records; allowed is 1..={PRODUCE_RECORDS_MAX}",
            records.len()
        )));
    }
    let partitions = topic.partition_count();
    let limit = topic.config.record_bytes_max;
    for (index, record) in records.iter().enumerate() {
        if let Some(partition) = record.partition.filter(|partition| *partition >= partitions) {
            return Err(ProduceError::UnknownPartition {
                topic: topic.name.clone(),
                index,
                partition,
                partitions,
            });
        }
        let bytes = record.size_bytes();
        if bytes > u64::from(limit) {
            return Err(ProduceError::RecordTooLarge {
                topic: topic.name.clone(),
                index,
                bytes,
                limit,
            });
        }
        if let Some(id) = record.id.as_ref().filter(|id| id.is_empty() || id.len() > ID_BYTES_MAX) {
            return Err(ProduceError::Invalid(format!(
                "record {index} has an id of {} bytes; allowed is 1..={ID_BYTES_MAX}",
                id.len()
            )));
        }
    }
    Ok(())
}

/// Picks each record's partition and settles duplicates; returns the records to append, per
/// partition, in request order.
fn place(
    topic: &Topic,
    records: Vec<ProduceRecord>,
    results: &mut [Option<Produced>],
    waits: &mut Vec<(usize, watch::Receiver<Outcome>)>,
) -> BTreeMap<u32, Vec<Placed>> {
    let partitions = topic.partition_count();
    let sticky = topic.sticky.partition(partitions);
    topic.sticky.next_batch();
    let now = now_ms();
    let mut by_partition: BTreeMap<u32, Vec<Placed>> = BTreeMap::new();
    let mut dedup = topic.dedup();
    for (index, record) in records.into_iter().enumerate() {
        let mut claim = None;
        if let (Some(id), false) = (&record.id, dedup.is_disabled()) {
            match dedup.lookup(id, now) {
                Lookup::Duplicate(Position { partition, offset }) => {
                    topic.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                    results[index] = Some(Produced { partition, offset, duplicate: true });
                    continue;
                }
                Lookup::InFlight(receiver) => {
                    waits.push((index, receiver));
                    continue;
                }
                Lookup::Fresh(sender) => claim = Some((id.clone(), sender)),
            }
        }
        let partition = record.partition.unwrap_or_else(|| match &record.key {
            Some(key) => partition_for_key(key, partitions),
            None => sticky,
        });
        by_partition.entry(partition).or_default().push(Placed { index, record, claim });
    }
    by_partition
}

/// Appends every partition's records in parallel; returns (request index, where it landed).
async fn append_partitions(
    topic: &Arc<Topic>,
    by_partition: BTreeMap<u32, Vec<Placed>>,
) -> Result<Vec<(usize, Produced)>, ProduceError> {
    let mut tasks = Vec::new();
    for (partition, placed) in by_partition {
        tasks.push(tokio::spawn(append_partition(Arc::clone(topic), partition, placed)));
    }
    let mut landed = Vec::new();
    let mut first_error = None;
    for task in tasks {
        match task.await.expect("an append task does not panic") {
            Ok(produced) => landed.extend(produced),
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    first_error.map_or(Ok(landed), Err)
}

/// What writing one partition's records did, before they are durable.
struct Written {
    placed: Vec<Placed>,
    landed: Vec<(usize, Produced)>,
    failure: Option<ProduceError>,
    /// The last offset written, if it still has to be made durable.
    pending: Option<u64>,
}

/// Appends one partition's records: writes them (blocking, briefly), then awaits their group
/// commit without holding a thread, then settles their ids in the dedup window.
async fn append_partition(
    topic: Arc<Topic>,
    partition: u32,
    placed: Vec<Placed>,
) -> Result<Vec<(usize, Produced)>, ProduceError> {
    // Written on this task: a write is a copy into the page cache, and a thread hop per
    // request cost more than it (docs/decisions.md). The fsync is the syncer thread's.
    let Written { placed, mut landed, mut failure, pending } =
        write_partition(&topic, partition, placed);
    let handle = &topic.partitions[partition as usize];
    if let Some(last_offset) = pending {
        if let Err(source) = handle.durable(last_offset).await {
            landed.clear(); // not acknowledged: nothing of this request counts as stored
            failure = Some(ProduceError::Append { topic: topic.name.clone(), partition, source });
        }
    }
    handle.publish_high_watermark();
    let mut dedup = topic.dedup();
    // Chunks are appended in order and stop at the first failure, so `landed` holds exactly
    // the first `landed.len()` placed records, in order; the rest were not appended.
    let landed_offsets = landed.iter().map(|(_, produced)| Some(produced.offset));
    for (item, offset) in placed.iter().zip(landed_offsets.chain(std::iter::repeat(None))) {
        if let Some((id, sender)) = &item.claim {
            dedup.finish(id, sender, offset.map(|offset| Position { partition, offset }));
        }
    }
    failure.map_or(Ok(landed), Err)
}

/// Writes one partition's records as batches under the log's limit, leaving their sync to the
/// caller (`pending`).
fn write_partition(topic: &Topic, partition: u32, placed: Vec<Placed>) -> Written {
    let handle = &topic.partitions[partition as usize];
    let batch_limit = u64::from(handle.log.config().batch_bytes_max);
    let now = now_ms();
    let mut landed = Vec::with_capacity(placed.len());
    let mut failure = None;
    let mut last_offset = None;
    for chunk in split_by_size(&placed, batch_limit) {
        let mut batch = build_batch(chunk, now);
        match handle.log.append_unsynced(&mut batch) {
            Ok(info) => {
                topic.counters.produced_records.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                topic.counters.produced_bytes.fetch_add(batch.len() as u64, Ordering::Relaxed);
                for (delta, item) in chunk.iter().enumerate() {
                    let offset = info.base_offset + delta as u64;
                    landed.push((item.index, Produced { partition, offset, duplicate: false }));
                }
                last_offset = Some(info.last_offset);
            }
            Err(source) => {
                failure =
                    Some(ProduceError::Append { topic: topic.name.clone(), partition, source });
                break;
            }
        }
    }
    // Whatever was written is made durable even if a later chunk failed: the dedup window
    // records where those records landed.
    Written { placed, landed, failure, pending: last_offset }
}

/// Splits records into runs whose batches stay under the log's batch limit.
fn split_by_size(placed: &[Placed], batch_limit: u64) -> Vec<&[Placed]> {
    // Per-record framing: varints and attributes, at most this many bytes beyond the payload.
    const RECORD_OVERHEAD_BYTES: u64 = 64;
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, sluice_format::BATCH_HEADER_BYTES as u64);
    for (index, item) in placed.iter().enumerate() {
        let size =
            item.record.size_bytes() + RECORD_OVERHEAD_BYTES + 8 * item.record.headers.len() as u64;
        if index > start && bytes + size > batch_limit {
            chunks.push(&placed[start..index]);
            start = index;
            bytes = sluice_format::BATCH_HEADER_BYTES as u64;
        }
        bytes += size;
    }
    if start < placed.len() {
        chunks.push(&placed[start..]);
    }
    chunks
}

fn build_batch(chunk: &[Placed], now_ms: i64) -> Vec<u8> {
    let mut builder = BatchBuilder::new(0);
    let bytes: u64 = chunk.iter().map(|item| item.record.size_bytes() + 32).sum();
    builder.reserve(usize::try_from(bytes).unwrap_or(0));
    for item in chunk {
        let record = &item.record;
        let mut headers: Vec<Header<'_>> = record
            .headers
            .iter()
            .map(|(name, value)| Header { key: name.as_bytes(), value: value.as_deref() })
            .collect();
        if let Some(id) = &record.id {
            if !record.headers.iter().any(|(name, _)| name == ID_HEADER) {
                headers.push(Header { key: ID_HEADER.as_bytes(), value: Some(id.as_bytes()) });
            }
        }
        builder.push(&NewRecord {
            key: record.key.as_deref(),
            value: record.value.as_deref(),
            headers: &headers,
            timestamp_ms: record.timestamp_ms.unwrap_or(now_ms),
        });
    }
    builder.build()
}

/// Waits for the in-flight produce of the same id and reports where it landed.
async fn wait_for_original(
    topic: &Topic,
    receiver: &mut watch::Receiver<Outcome>,
) -> Result<Produced, ProduceError> {
    let outcome = receiver.wait_for(Option::is_some).await.map(|outcome| *outcome);
    match outcome {
        Ok(Some(Some(Position { partition, offset }))) => {
            Ok(Produced { partition, offset, duplicate: true })
        }
        _ => Err(ProduceError::Invalid(format!(
            "a concurrent produce of a record with the same id to topic '{}' failed; retry",
            topic.name
        ))),
    }
}
