//! Fetch (key 1, versions 4 to 11): whole batches as they lie on disk, from each partition's
//! fetch offset. An answer with fewer than `min_bytes` waits up to `max_wait_ms` (at most
//! [`FETCH_WAIT_MAX`]) for any produce, then reads again. There are no fetch sessions: every
//! answer has session id 0, so clients send full fetch requests. `isolation_level` is
//! ignored (there are no transactions, so every record is committed).

use std::time::Duration;

use sluice_engine::{Engine, TopicDescription, FETCH_BYTES_MAX, FETCH_WAIT_MAX};
use tokio::time::Instant;

use crate::codec::{DecodeError, Reader, Writer};
use crate::errors::{fetch_code, NONE};
use crate::produce::Answer;

struct PartitionAsk {
    partition: i32,
    offset: i64,
    max_bytes: i32,
}

struct TopicAsk {
    name: String,
    partitions: Vec<PartitionAsk>,
}

struct Request {
    max_wait: Duration,
    min_bytes: usize,
    max_bytes: u32,
    topics: Vec<TopicAsk>,
}

struct PartitionAnswer {
    partition: i32,
    code: i16,
    high_watermark: i64,
    log_start_offset: i64,
    records: Vec<u8>,
}

pub fn handle(engine: &Engine, version: i16, body: &[u8]) -> Result<Answer, DecodeError> {
    let request = parse(version, body)?;
    let engine = engine.clone();
    Ok(Box::pin(async move { answer(&engine, version, &request).await }))
}

fn parse(version: i16, body: &[u8]) -> Result<Request, DecodeError> {
    let mut reader = Reader::new(body);
    reader.i32("replica_id")?;
    let max_wait_ms = reader.i32("max_wait_ms")?;
    let min_bytes = reader.i32("min_bytes")?;
    let max_bytes = reader.i32("max_bytes")?;
    reader.i8("isolation_level")?;
    if version >= 7 {
        reader.i32("session_id")?;
        reader.i32("session_epoch")?;
    }
    let topic_count = reader.array_length("topics", 6)?.unwrap_or(0);
    let mut topics = Vec::with_capacity(topic_count);
    for _ in 0..topic_count {
        let name = reader.string("topics.topic")?.to_owned();
        let count = reader.array_length("topics.partitions", 16)?.unwrap_or(0);
        let mut partitions = Vec::with_capacity(count);
        for _ in 0..count {
            let partition = reader.i32("partition")?;
            if version >= 9 {
                reader.i32("current_leader_epoch")?;
            }
            let offset = reader.i64("fetch_offset")?;
            if version >= 5 {
                reader.i64("log_start_offset")?;
            }
            let max_bytes = reader.i32("partition_max_bytes")?;
            partitions.push(PartitionAsk { partition, offset, max_bytes });
        }
        topics.push(TopicAsk { name, partitions });
    }
    // Forgotten topics (v7+) and the rack id (v11+) mean nothing without sessions or racks.
    Ok(Request {
        max_wait: Duration::from_millis(u64::try_from(max_wait_ms).unwrap_or(0))
            .min(FETCH_WAIT_MAX),
        min_bytes: usize::try_from(min_bytes).unwrap_or(0),
        max_bytes: u32::try_from(max_bytes).unwrap_or(0).clamp(1, FETCH_BYTES_MAX),
        topics,
    })
}

async fn answer(engine: &Engine, version: i16, request: &Request) -> Vec<u8> {
    let deadline = Instant::now() + request.max_wait;
    let mut appends = engine.subscribe_appends();
    let answers = loop {
        appends.borrow_and_update();
        let answers = read_all(engine, request).await;
        let bytes: usize = answers.iter().flatten().map(|answer| answer.records.len()).sum();
        let failed = answers.iter().flatten().any(|answer| answer.code != NONE);
        if bytes >= request.min_bytes.max(1) || failed || Instant::now() >= deadline {
            break answers;
        }
        if tokio::time::timeout_at(deadline, appends.changed()).await.is_err() {
            break read_all(engine, request).await;
        }
    };
    let mut writer = Writer::new();
    writer.i32(0); // throttle_time_ms
    if version >= 7 {
        writer.i16(NONE).i32(0); // error_code, session_id: no session
    }
    writer.array_length(request.topics.len());
    for (topic, partitions) in request.topics.iter().zip(&answers) {
        writer.string(&topic.name);
        writer.array_length(partitions.len());
        for answer in partitions {
            writer.i32(answer.partition).i16(answer.code).i64(answer.high_watermark);
            writer.i64(answer.high_watermark); // last_stable_offset: no transactions
            if version >= 5 {
                writer.i64(answer.log_start_offset);
            }
            writer.i32(-1); // aborted_transactions: null
            if version >= 11 {
                writer.i32(-1); // preferred_read_replica: none
            }
            writer.nullable_bytes(Some(&answer.records));
        }
    }
    writer.bytes
}

/// One read of every partition asked for, within the request's byte budgets. The first
/// partition with records gets at least one whole batch even past the budget, as in Kafka, so
/// a batch larger than `max_bytes` does not stall its consumer.
async fn read_all(engine: &Engine, request: &Request) -> Vec<Vec<PartitionAnswer>> {
    use crate::errors::{OFFSET_OUT_OF_RANGE, UNKNOWN_TOPIC_OR_PARTITION};
    let mut left = request.max_bytes;
    let mut answers = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        // The topic's offsets, looked up once and only if a partition is answered unread.
        let mut described = None;
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for ask in &topic.partitions {
            let code = match (u32::try_from(ask.partition), u64::try_from(ask.offset)) {
                (Ok(partition), Ok(offset)) if left > 0 => {
                    let budget = u32::try_from(ask.max_bytes).unwrap_or(0).clamp(1, left);
                    match engine.fetch(&topic.name, partition, offset, budget, Duration::ZERO).await
                    {
                        Ok(read) => {
                            left = left.saturating_sub(read.batches.len() as u32);
                            partitions.push(PartitionAnswer {
                                partition: ask.partition,
                                code: NONE,
                                high_watermark: read.high_watermark as i64,
                                log_start_offset: read.log_start_offset as i64,
                                records: read.batches,
                            });
                            continue;
                        }
                        Err(error) => fetch_code(&error),
                    }
                }
                // The budget is spent: this partition waits for the next fetch.
                (Ok(_), Ok(_)) => NONE,
                (Ok(_), Err(_)) => OFFSET_OUT_OF_RANGE,
                (Err(_), _) => UNKNOWN_TOPIC_OR_PARTITION,
            };
            let described =
                described.get_or_insert_with(|| engine.describe_topic(&topic.name).ok());
            partitions.push(unread(described.as_ref(), ask.partition, code));
        }
        answers.push(partitions);
    }
    answers
}

/// An answer without records, with the partition's offsets if it exists.
fn unread(topic: Option<&TopicDescription>, partition: i32, code: i16) -> PartitionAnswer {
    let offsets = topic.and_then(|topic| {
        topic.partitions.iter().find(|p| i64::from(p.partition) == i64::from(partition)).copied()
    });
    PartitionAnswer {
        partition,
        code,
        high_watermark: offsets.map_or(-1, |p| p.high_watermark as i64),
        log_start_offset: offsets.map_or(-1, |p| p.log_start_offset as i64),
        records: Vec::new(),
    }
}
