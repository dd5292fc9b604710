//! The consumer-group protocol: FindCoordinator (10), JoinGroup (11), SyncGroup (14),
//! Heartbeat (12), LeaveGroup (13), OffsetCommit (8) and OffsetFetch (9), over the engine's
//! consumer groups (the same groups as `/v1/groups` over HTTP).
//!
//! Kafka lets one member (the leader) compute the assignment; Sluice's groups assign on the
//! server (sticky, at once on every join, leave or expiry). So the door names no member as
//! leader: every client is a follower, sends an empty SyncGroup, and gets the engine's
//! assignment for its generation. When the engine's generation moves on, a Heartbeat or
//! SyncGroup of the old one answers REBALANCE_IN_PROGRESS and the client joins again, which is
//! Kafka's eager rebalance. Whatever strategy the client proposes (`range`, `roundrobin`,
//! `sticky`), the assignment is Sluice's; `cooperative-sticky` alone is refused, because its
//! incremental protocol is not implemented.

use std::time::Duration;

use sluice_engine::{Engine, JoinRequest, Membership, StartFrom, TopicPartition};

use crate::codec::{DecodeError, Reader, Writer};
use crate::errors::{
    group_code, COORDINATOR_NOT_AVAILABLE, INCONSISTENT_GROUP_PROTOCOL, INVALID_SESSION_TIMEOUT,
    NONE, REBALANCE_IN_PROGRESS, UNKNOWN_MEMBER_ID,
};
use crate::metadata::NODE_ID;
use crate::produce::Answer;
use crate::Advertised;

/// The member id a JoinGroup answer names as leader: no client has it, so none assigns.
const NO_LEADER: &str = "sluice-assigns";
/// The strategies whose rebalance is eager (revoke everything, rejoin, get the new set).
const EAGER_STRATEGIES: [&str; 3] = ["range", "roundrobin", "sticky"];

pub fn find_coordinator(
    advertised: &Advertised,
    version: i16,
    body: &[u8],
) -> Result<Vec<u8>, DecodeError> {
    let mut reader = Reader::new(body);
    reader.string("key")?;
    let key_type = if version >= 1 { reader.i8("key_type")? } else { 0 };
    let mut writer = Writer::new();
    if version >= 1 {
        writer.i32(0); // throttle_time_ms
    }
    if key_type == 0 {
        writer.i16(NONE);
        if version >= 1 {
            writer.nullable_string(None);
        }
        writer.i32(NODE_ID).string(&advertised.host).i32(i32::from(advertised.port));
    } else {
        writer.i16(COORDINATOR_NOT_AVAILABLE);
        if version >= 1 {
            writer.nullable_string(Some("transactions are not supported by Sluice"));
        }
        writer.i32(-1).string("").i32(-1);
    }
    Ok(writer.bytes)
}

pub fn join_group(engine: &Engine, version: i16, body: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let mut reader = Reader::new(body);
    let group = reader.string("group_id")?;
    let session_timeout_ms = reader.i32("session_timeout_ms")?;
    if version >= 1 {
        reader.i32("rebalance_timeout_ms")?;
    }
    let member_id = reader.string("member_id")?;
    if version >= 5 {
        reader.nullable_string("group_instance_id")?;
    }
    reader.string("protocol_type")?;
    let count = reader.array_length("protocols", 6)?.unwrap_or(0);
    let mut chosen = None;
    for _ in 0..count {
        let name = reader.string("protocols.name")?;
        let metadata = reader.nullable_bytes("protocols.metadata")?.unwrap_or_default();
        if chosen.is_none() && EAGER_STRATEGIES.contains(&name) {
            chosen = Some((name.to_owned(), subscription_topics(metadata)?));
        }
    }
    let session_timeout = Duration::from_millis(u64::try_from(session_timeout_ms).unwrap_or(0));
    let joined = match chosen {
        None => Err(INCONSISTENT_GROUP_PROTOCOL),
        Some(_)
            if !(sluice_engine::group::SESSION_TIMEOUT_MIN
                ..=sluice_engine::group::SESSION_TIMEOUT_MAX)
                .contains(&session_timeout) =>
        {
            Err(INVALID_SESSION_TIMEOUT)
        }
        Some((protocol, topics)) => {
            let request = JoinRequest {
                member_id: (!member_id.is_empty()).then(|| member_id.to_owned()),
                topics,
                session_timeout: Some(session_timeout),
                // Where a partition without a committed offset starts is the client's
                // `auto.offset.reset`: it asks with OffsetFetch and ListOffsets.
                start: StartFrom::Earliest,
            };
            engine
                .join_group(group, request)
                .map(|membership| (protocol, membership))
                .map_err(|error| group_code(&error))
        }
    };
    let mut writer = Writer::new();
    if version >= 2 {
        writer.i32(0); // throttle_time_ms
    }
    match joined {
        Ok((protocol, membership)) => {
            writer.i16(NONE).i32(generation(&membership));
            writer.string(&protocol).string(NO_LEADER).string(&membership.member_id);
        }
        Err(code) => {
            writer.i16(code).i32(-1).string("").string("").string(member_id);
        }
    }
    writer.array_length(0); // members: only a leader gets them, and there is none
    Ok(writer.bytes)
}

/// The topics of a ConsumerProtocolSubscription (any version: they come first).
fn subscription_topics(metadata: &[u8]) -> Result<Vec<String>, DecodeError> {
    let mut reader = Reader::new(metadata);
    reader.i16("subscription.version")?;
    let count = reader.array_length("subscription.topics", 2)?.unwrap_or(0);
    (0..count).map(|_| reader.string("subscription.topic").map(str::to_owned)).collect()
}

fn generation(membership: &Membership) -> i32 {
    i32::try_from(membership.generation).unwrap_or(i32::MAX)
}

/// The member's current view if it is still at `generation`; else the error code to answer.
fn current(engine: &Engine, group: &str, member: &str, generation: i32) -> Result<Membership, i16> {
    let membership = engine.heartbeat(group, member).map_err(|error| group_code(&error))?;
    if i64::from(generation) == i64::try_from(membership.generation).unwrap_or(-1) {
        Ok(membership)
    } else {
        Err(REBALANCE_IN_PROGRESS)
    }
}

pub fn sync_group(engine: &Engine, version: i16, body: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let mut reader = Reader::new(body);
    let group = reader.string("group_id")?;
    let generation = reader.i32("generation_id")?;
    let member = reader.string("member_id")?;
    // The assignments a leader would send are ignored: no client is the leader.
    let mut writer = Writer::new();
    if version >= 1 {
        writer.i32(0); // throttle_time_ms
    }
    match current(engine, group, member, generation) {
        Ok(membership) => {
            writer.i16(NONE).nullable_bytes(Some(&assignment(&membership.assignment)));
        }
        Err(code) => {
            writer.i16(code).nullable_bytes(Some(&[]));
        }
    }
    Ok(writer.bytes)
}

/// A ConsumerProtocolAssignment v0: the partitions by topic, no user data.
fn assignment(partitions: &[TopicPartition]) -> Vec<u8> {
    let mut by_topic: Vec<(&str, Vec<i32>)> = Vec::new();
    for partition in partitions {
        let index = i32::try_from(partition.partition).unwrap_or(i32::MAX);
        match by_topic.iter_mut().find(|(topic, _)| *topic == partition.topic) {
            Some((_, indexes)) => indexes.push(index),
            None => by_topic.push((&partition.topic, vec![index])),
        }
    }
    let mut writer = Writer::new();
    writer.i16(0).array_length(by_topic.len());
    for (topic, indexes) in by_topic {
        writer.string(topic).array_length(indexes.len());
        for index in indexes {
            writer.i32(index);
        }
    }
    writer.nullable_bytes(None);
    writer.bytes
}

pub fn heartbeat(engine: &Engine, version: i16, body: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let mut reader = Reader::new(body);
    let group = reader.string("group_id")?;
    let generation = reader.i32("generation_id")?;
    let member = reader.string("member_id")?;
    let code = current(engine, group, member, generation).map_or_else(|code| code, |_| NONE);
    let mut writer = Writer::new();
    if version >= 1 {
        writer.i32(0); // throttle_time_ms
    }
    writer.i16(code);
    Ok(writer.bytes)
}

pub fn leave_group(engine: &Engine, version: i16, body: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let mut reader = Reader::new(body);
    let group = reader.string("group_id")?;
    let mut writer = Writer::new();
    if version >= 1 {
        writer.i32(0); // throttle_time_ms
    }
    let leave = |member: &str| match engine.leave_group(group, member) {
        Ok(()) => NONE,
        Err(error) => group_code(&error),
    };
    if version < 3 {
        let member = reader.string("member_id")?;
        writer.i16(leave(member));
        return Ok(writer.bytes);
    }
    let count = reader.array_length("members", 4)?.unwrap_or(0);
    let mut results = Vec::with_capacity(count);
    for _ in 0..count {
        let member = reader.string("members.member_id")?;
        let instance = reader.nullable_string("members.group_instance_id")?;
        results.push((member.to_owned(), instance.map(str::to_owned), leave(member)));
    }
    writer.i16(NONE).array_length(results.len());
    for (member, instance, code) in &results {
        writer.string(member).nullable_string(instance.as_deref()).i16(*code);
    }
    Ok(writer.bytes)
}

pub fn offset_commit(engine: &Engine, version: i16, body: &[u8]) -> Result<Answer, DecodeError> {
    let mut reader = Reader::new(body);
    let group = reader.string("group_id")?.to_owned();
    let generation = reader.i32("generation_id")?;
    let member = reader.string("member_id")?.to_owned();
    if (2..=4).contains(&version) {
        reader.i64("retention_time_ms")?;
    }
    if version >= 7 {
        reader.nullable_string("group_instance_id")?;
    }
    let topic_count = reader.array_length("topics", 6)?.unwrap_or(0);
    let mut topics = Vec::with_capacity(topic_count);
    for _ in 0..topic_count {
        let name = reader.string("topics.name")?.to_owned();
        let count = reader.array_length("topics.partitions", 14)?.unwrap_or(0);
        let mut partitions = Vec::with_capacity(count);
        for _ in 0..count {
            let index = reader.i32("partition_index")?;
            let offset = reader.i64("committed_offset")?;
            if version >= 6 {
                reader.i32("committed_leader_epoch")?;
            }
            reader.nullable_string("committed_metadata")?;
            partitions.push((index, offset));
        }
        topics.push((name, partitions));
    }
    let engine = engine.clone();
    Ok(Box::pin(async move {
        let offsets: Option<Vec<(TopicPartition, u64)>> = topics
            .iter()
            .flat_map(|(topic, partitions)| {
                partitions.iter().map(move |&(index, offset)| {
                    Some((
                        TopicPartition {
                            topic: topic.clone(),
                            partition: u32::try_from(index).ok()?,
                        },
                        u64::try_from(offset).ok()?,
                    ))
                })
            })
            .collect();
        let code = match (offsets, u64::try_from(generation)) {
            // A commit without a generation (a consumer that assigns itself partitions):
            // Sluice keeps offsets only for members of a group.
            (_, Err(_)) => UNKNOWN_MEMBER_ID,
            (None, _) => crate::errors::INVALID_REQUEST,
            (Some(offsets), Ok(generation)) => {
                let committed = tokio::task::spawn_blocking(move || {
                    engine.commit_group(&group, &member, generation, Some(offsets))
                })
                .await;
                match committed {
                    Ok(Ok(_)) => NONE,
                    Ok(Err(error)) => group_code(&error),
                    Err(_) => crate::errors::UNKNOWN_SERVER_ERROR,
                }
            }
        };
        let mut writer = Writer::new();
        if version >= 3 {
            writer.i32(0); // throttle_time_ms
        }
        writer.array_length(topics.len());
        for (name, partitions) in &topics {
            writer.string(name).array_length(partitions.len());
            for (index, _) in partitions {
                writer.i32(*index).i16(code);
            }
        }
        writer.bytes
    }))
}

pub fn offset_fetch(engine: &Engine, version: i16, body: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let mut reader = Reader::new(body);
    let group = reader.string("group_id")?;
    let asked = match reader.array_length("topics", 6)? {
        None => None,
        Some(count) => {
            let mut topics = Vec::with_capacity(count);
            for _ in 0..count {
                let name = reader.string("topics.name")?.to_owned();
                let partitions = reader.array_length("partition_indexes", 4)?.unwrap_or(0);
                let indexes = (0..partitions)
                    .map(|_| reader.i32("partition_index"))
                    .collect::<Result<Vec<_>, _>>()?;
                topics.push((name, indexes));
            }
            Some(topics)
        }
    };
    // An unknown group has no offsets: every partition answers -1, as Kafka does.
    let committed: Vec<(String, u32, Option<u64>)> = engine
        .describe_group(group)
        .map(|described| {
            described.partitions.into_iter().map(|p| (p.topic, p.partition, p.committed)).collect()
        })
        .unwrap_or_default();
    let lookup = |topic: &str, index: i32| {
        committed
            .iter()
            .find(|(t, p, _)| t == topic && i64::from(*p) == i64::from(index))
            .and_then(|(_, _, offset)| *offset)
    };
    let topics: Vec<(String, Vec<i32>)> = match asked {
        Some(topics) => topics,
        None => {
            let mut all: Vec<(String, Vec<i32>)> = Vec::new();
            for (topic, partition, offset) in &committed {
                if offset.is_none() {
                    continue;
                }
                let index = i32::try_from(*partition).unwrap_or(i32::MAX);
                match all.iter_mut().find(|(t, _)| t == topic) {
                    Some((_, indexes)) => indexes.push(index),
                    None => all.push((topic.clone(), vec![index])),
                }
            }
            all
        }
    };
    let mut writer = Writer::new();
    if version >= 3 {
        writer.i32(0); // throttle_time_ms
    }
    writer.array_length(topics.len());
    for (topic, indexes) in &topics {
        writer.string(topic).array_length(indexes.len());
        for &index in indexes {
            let offset =
                lookup(topic, index).map_or(-1, |offset| i64::try_from(offset).unwrap_or(-1));
            writer.i32(index).i64(offset);
            if version >= 5 {
                writer.i32(-1); // committed_leader_epoch
            }
            writer.nullable_string(None).i16(NONE);
        }
    }
    if version >= 2 {
        writer.i16(NONE);
    }
    Ok(writer.bytes)
}
