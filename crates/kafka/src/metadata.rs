//! Metadata (key 3): the one broker (this server, node 0, leader of every partition) and the
//! topics asked for, or all of them. Topics are not created by asking (Kafka's
//! `auto.create.topics.enable` is off here): an unknown one is UNKNOWN_TOPIC_OR_PARTITION.

use sluice_engine::{Engine, TopicDescription};

use crate::codec::{DecodeError, Reader, Writer};
use crate::errors::{NONE, UNKNOWN_TOPIC_OR_PARTITION};
use crate::Advertised;

/// The node id of this server in every answer.
pub const NODE_ID: i32 = 0;
/// The cluster id every answer gives.
pub const CLUSTER_ID: &str = "sluice";

pub fn handle(
    engine: &Engine,
    advertised: &Advertised,
    version: i16,
    body: &[u8],
) -> Result<Vec<u8>, DecodeError> {
    let mut reader = Reader::new(body);
    let asked = match reader.array_length("topics", 2)? {
        None => None,
        Some(count) => {
            let mut names = Vec::with_capacity(count);
            for _ in 0..count {
                names.push(reader.string("topics.name")?.to_owned());
            }
            Some(names)
        }
    };
    let topics: Vec<Result<TopicDescription, String>> = match asked {
        None => engine.list_topics().into_iter().map(Ok).collect(),
        Some(names) => {
            names.into_iter().map(|name| engine.describe_topic(&name).map_err(|_| name)).collect()
        }
    };
    let mut writer = Writer::new();
    if version >= 3 {
        writer.i32(0); // throttle_time_ms
    }
    writer.array_length(1);
    writer.i32(NODE_ID).string(&advertised.host).i32(i32::from(advertised.port));
    writer.nullable_string(None); // rack
    if version >= 2 {
        writer.nullable_string(Some(CLUSTER_ID));
    }
    writer.i32(NODE_ID); // controller_id
    writer.array_length(topics.len());
    for topic in &topics {
        match topic {
            Ok(topic) => {
                writer.i16(NONE).string(&topic.name).bool(false);
                writer.array_length(topic.partitions.len());
                for partition in &topic.partitions {
                    writer.i16(NONE).i32(partition.partition as i32).i32(NODE_ID);
                    if version >= 7 {
                        writer.i32(0); // leader_epoch
                    }
                    writer.array_length(1).i32(NODE_ID); // replicas
                    writer.array_length(1).i32(NODE_ID); // in-sync replicas
                    if version >= 5 {
                        writer.array_length(0); // offline replicas
                    }
                }
            }
            Err(name) => {
                writer.i16(UNKNOWN_TOPIC_OR_PARTITION).string(name).bool(false).array_length(0);
            }
        }
        if version >= 8 {
            writer.i32(i32::MIN); // topic_authorized_operations: not asked for
        }
    }
    if version >= 8 {
        writer.i32(i32::MIN); // cluster_authorized_operations: not asked for
    }
    Ok(writer.bytes)
}
