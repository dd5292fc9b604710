//! Produce (key 0, versions 3 to 8): each partition's RecordBatch v2 is appended as the
//! producer built it (offsets assigned, nothing re-encoded), with Kafka-style idempotence for
//! batches that carry a producer id. The batches of one request, and of the requests of one
//! connection, are written in the order they arrive; their fsyncs are awaited together, so
//! concurrent producers share group commits. An answer with `acks` 1 or -1 comes after the
//! fsync (Sluice has no replicas: both mean "on this server's disk"); `acks` 0 gets none.

use std::future::Future;
use std::pin::Pin;

use sluice_engine::{Engine, ProduceError, WrittenBatch};

use crate::codec::{DecodeError, Reader, Writer};
use crate::errors::{produce_code, INVALID_REQUEST, INVALID_REQUIRED_ACKS, NONE};

/// What became of one partition's batch so far.
enum Outcome {
    Written(WrittenBatch),
    Failed { code: i16, message: String },
}

struct TopicOutcomes {
    name: String,
    partitions: Vec<(i32, Outcome)>,
}

/// A response still to be built once the batches are durable.
pub type Answer = Pin<Box<dyn Future<Output = Vec<u8>> + Send>>;

/// Parses the request and writes its batches now; returns the answer to await, or `None` for
/// `acks` 0 (the batches' durability is then awaited in the background).
pub fn handle(engine: &Engine, version: i16, body: &[u8]) -> Result<Option<Answer>, DecodeError> {
    let mut reader = Reader::new(body);
    let transactional_id = reader.nullable_string("transactional_id")?;
    let acks = reader.i16("acks")?;
    reader.i32("timeout_ms")?;
    let topic_count = reader.array_length("topic_data", 6)?.unwrap_or(0);
    let refusal = if transactional_id.is_some() {
        Some((INVALID_REQUEST, "transactions are not supported by Sluice".to_owned()))
    } else if !matches!(acks, -1..=1) {
        Some((INVALID_REQUIRED_ACKS, format!("acks is {acks}; allowed are -1, 0 and 1")))
    } else {
        None
    };
    let mut topics = Vec::with_capacity(topic_count);
    for _ in 0..topic_count {
        let name = reader.string("topic_data.name")?.to_owned();
        let partition_count = reader.array_length("partition_data", 8)?.unwrap_or(0);
        let mut partitions = Vec::with_capacity(partition_count);
        for _ in 0..partition_count {
            let index = reader.i32("partition_data.index")?;
            let records = reader.nullable_bytes("partition_data.records")?;
            let outcome = match (&refusal, records) {
                (Some((code, message)), _) => {
                    Outcome::Failed { code: *code, message: message.clone() }
                }
                (None, None) => Outcome::Failed {
                    code: crate::errors::INVALID_RECORD,
                    message: "the partition's records are null; send one RecordBatch v2".to_owned(),
                },
                (None, Some(records)) => write(engine, &name, index, records),
            };
            partitions.push((index, outcome));
        }
        topics.push(TopicOutcomes { name, partitions });
    }
    // A producer with acks 0 reads no answers, so none is sent, not even a refusal (Kafka
    // sends none either); what was written is still synced.
    if acks == 0 {
        let waits: Vec<WrittenBatch> = topics
            .into_iter()
            .flat_map(|topic| topic.partitions)
            .filter_map(|(_, outcome)| match outcome {
                Outcome::Written(written) => Some(written),
                Outcome::Failed { .. } => None,
            })
            .collect();
        if !waits.is_empty() {
            tokio::spawn(async move {
                for written in waits {
                    if let Err(error) = written.durable().await {
                        tracing::warn!(%error, "an acks=0 batch was written but not synced");
                    }
                }
            });
        }
        return Ok(None);
    }
    Ok(Some(Box::pin(answer(version, topics))))
}

fn write(engine: &Engine, topic: &str, index: i32, records: &[u8]) -> Outcome {
    let Ok(partition) = u32::try_from(index) else {
        return Outcome::Failed {
            code: crate::errors::UNKNOWN_TOPIC_OR_PARTITION,
            message: format!("partition {index} does not exist"),
        };
    };
    match engine.write_batch(topic, partition, records.to_vec()) {
        Ok(written) => Outcome::Written(written),
        Err(error) => {
            let (code, message) = refused(&error);
            Outcome::Failed { code, message }
        }
    }
}

fn refused(error: &ProduceError) -> (i16, String) {
    (produce_code(error), error.to_string())
}

async fn answer(version: i16, topics: Vec<TopicOutcomes>) -> Vec<u8> {
    let mut writer = Writer::new();
    writer.array_length(topics.len());
    for topic in topics {
        writer.string(&topic.name);
        writer.array_length(topic.partitions.len());
        for (index, outcome) in topic.partitions {
            let outcome = match outcome {
                Outcome::Written(written) => match written.durable().await {
                    Ok(appended) => Ok(appended.base_offset),
                    Err(error) => Err(refused(&error)),
                },
                Outcome::Failed { code, message } => Err((code, message)),
            };
            writer.i32(index);
            let message = match &outcome {
                Ok(base_offset) => {
                    writer.i16(NONE).i64(i64::try_from(*base_offset).unwrap_or(i64::MAX));
                    None
                }
                Err((code, message)) => {
                    writer.i16(*code).i64(-1);
                    Some(message.as_str())
                }
            };
            writer.i64(-1); // log_append_time_ms: -1, records keep the producer's CreateTime
            if version >= 5 {
                writer.i64(-1); // log_start_offset: not tracked per answer
            }
            if version >= 8 {
                writer.array_length(0); // record_errors
                writer.nullable_string(message);
            }
        }
    }
    writer.i32(0); // throttle_time_ms
    writer.bytes
}
