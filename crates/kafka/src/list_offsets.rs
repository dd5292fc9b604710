//! ListOffsets (key 2, versions 1 to 5): a partition's earliest offset (timestamp -2), its
//! latest (-1: the high watermark), or the first offset at or after a timestamp (the high
//! watermark if no record is that recent, as Kafka answers).

use sluice_engine::Engine;

use crate::codec::{DecodeError, Reader, Writer};
use crate::errors::{fetch_code, NONE, UNKNOWN_TOPIC_OR_PARTITION};

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;

pub fn handle(engine: &Engine, version: i16, body: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let mut reader = Reader::new(body);
    reader.i32("replica_id")?;
    if version >= 2 {
        reader.i8("isolation_level")?;
    }
    let topic_count = reader.array_length("topics", 6)?.unwrap_or(0);
    let mut writer = Writer::new();
    if version >= 2 {
        writer.i32(0); // throttle_time_ms
    }
    writer.array_length(topic_count);
    for _ in 0..topic_count {
        let name = reader.string("topics.name")?;
        let described = engine.describe_topic(name).ok();
        writer.string(name);
        let count = reader.array_length("topics.partitions", 12)?.unwrap_or(0);
        writer.array_length(count);
        for _ in 0..count {
            let partition = reader.i32("partition_index")?;
            if version >= 4 {
                reader.i32("current_leader_epoch")?;
            }
            let timestamp = reader.i64("timestamp")?;
            let offsets = described.as_ref().and_then(|topic| {
                topic.partitions.iter().find(|p| i64::from(p.partition) == i64::from(partition))
            });
            let found = match offsets {
                None => Err(UNKNOWN_TOPIC_OR_PARTITION),
                Some(offsets) => match timestamp {
                    LATEST => Ok((offsets.high_watermark, -1)),
                    EARLIEST => Ok((offsets.log_start_offset, -1)),
                    timestamp => engine
                        .offset_for_timestamp(name, offsets.partition, timestamp)
                        // The record's own timestamp is not looked up: -1 ("unknown").
                        .map(|found| (found.unwrap_or(offsets.high_watermark), -1))
                        .map_err(|error| fetch_code(&error)),
                },
            };
            writer.i32(partition);
            match found {
                Ok((offset, timestamp)) => {
                    writer.i16(NONE).i64(timestamp).i64(offset as i64);
                }
                Err(code) => {
                    writer.i16(code).i64(-1).i64(-1);
                }
            }
            if version >= 4 {
                writer.i32(0); // leader_epoch
            }
        }
    }
    Ok(writer.bytes)
}
