//! The engine's errors, one enum per operation family. Each has a stable numeric code
//! ([`ErrorCode`]) that the front doors put on the wire; a retired code is never reused.

use std::io;
use std::path::PathBuf;

use sluice_log::{AppendError, MaintenanceError, OpenError, ReadError};

use crate::config::TopicConfigError;
use crate::names::NameError;

/// Stable error codes shared by every front door. Never renumber; never reuse a retired one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// The topic does not exist.
    UnknownTopic = 1001,
    /// A topic with that name exists.
    TopicExists = 1002,
    /// The topic or group name breaks a naming rule.
    InvalidName = 1003,
    /// A topic setting is out of range.
    InvalidConfig = 1004,
    /// The partition does not exist in the topic.
    UnknownPartition = 1005,
    /// A record is larger than the topic allows.
    RecordTooLarge = 1006,
    /// The offset is before the log start or past the high watermark.
    OffsetOutOfRange = 1007,
    /// A request parameter is out of range.
    InvalidRequest = 1008,
    /// The storage failed; the partition may be poisoned until restart.
    Storage = 1101,
    /// The disk is full; nothing was written.
    DiskFull = 1102,
    /// Stored data does not check out; it is not served.
    Corrupt = 1103,
    /// The engine is shutting down.
    ShuttingDown = 1104,
    /// The consumer group does not exist.
    UnknownGroup = 1009,
    /// The member is not (or no longer) in the group: join again.
    UnknownMember = 1010,
    /// The commit carries an old generation: the group rebalanced since.
    StaleGeneration = 1011,
    /// The member does not own the partition it commits.
    NotAssigned = 1012,
    /// The operation needs a group without members.
    GroupActive = 1013,
    /// A member joined with other topics than the group consumes.
    TopicsMismatch = 1014,
    /// A newer epoch of the producer id has written to the partition.
    ProducerFenced = 1015,
    /// The batch's sequence number does not follow the producer's last one.
    OutOfOrderSequence = 1016,
    /// The queue group does not exist.
    UnknownQueue = 1017,
    /// A queue group with that name exists with other settings.
    QueueExists = 1018,
    /// The delivery is no longer leased: settled already, or its lease expired and the message
    /// was redelivered.
    NotLeased = 1019,
    /// The delivery id was not handed out by this group.
    UnknownDelivery = 1020,
    /// The stream's version is not the one the append expected; nothing was appended.
    WrongExpectedVersion = 1021,
    /// The stream has no events, or was soft-deleted.
    StreamNotFound = 1022,
    /// The stream has no snapshot.
    SnapshotNotFound = 1023,
}

impl ErrorCode {
    /// The number on the wire.
    pub fn number(self) -> u16 {
        self as u16
    }
}

/// Opening the engine failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineOpenError {
    /// A directory or file could not be used.
    #[error("opening the engine at {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A partition log could not be opened.
    #[error("opening partition {topic}/{partition}: {source}")]
    Partition {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The underlying error.
        #[source]
        source: OpenError,
    },
    /// The topic metadata log holds something unreadable.
    #[error("topic metadata at offset {offset} is unreadable: {reason}")]
    Metadata {
        /// The metadata record's offset.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
}

/// Creating, describing or deleting a topic failed.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// Bad name.
    #[error(transparent)]
    Name(#[from] NameError),
    /// Bad settings.
    #[error(transparent)]
    Config(#[from] TopicConfigError),
    /// No such topic.
    #[error("topic '{0}' does not exist")]
    Unknown(String),
    /// The name is taken.
    #[error("topic '{0}' already exists")]
    Exists(String),
    /// The storage failed.
    #[error("storage failure for topic '{topic}': {message}")]
    Storage {
        /// The topic.
        topic: String,
        /// What failed.
        message: String,
    },
}

impl TopicError {
    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Name(_) => ErrorCode::InvalidName,
            Self::Config(_) => ErrorCode::InvalidConfig,
            Self::Unknown(_) => ErrorCode::UnknownTopic,
            Self::Exists(_) => ErrorCode::TopicExists,
            Self::Storage { .. } => ErrorCode::Storage,
        }
    }
}

/// A produce request failed. Records of other partitions in the same request may have been
/// appended; the door reports per-record outcomes where it can.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// No such topic.
    #[error("topic '{0}' does not exist")]
    UnknownTopic(String),
    /// The record names a partition the topic does not have.
    #[error("record {index} names partition {partition}; topic '{topic}' has partitions 0..{partitions}")]
    UnknownPartition {
        /// The topic.
        topic: String,
        /// The record's position in the request.
        index: usize,
        /// The partition asked for.
        partition: u32,
        /// How many the topic has.
        partitions: u32,
    },
    /// A record is too large.
    #[error("record {index} is {bytes} bytes; topic '{topic}' accepts records up to {limit} bytes (record_bytes_max)")]
    RecordTooLarge {
        /// The topic.
        topic: String,
        /// The record's position in the request.
        index: usize,
        /// Its size (key + value + headers).
        bytes: u64,
        /// The topic's limit.
        limit: u32,
    },
    /// A request parameter is out of range.
    #[error("{0}")]
    Invalid(String),
    /// A producer's batch failed the sequence check; nothing was appended.
    #[error("producing to {topic}/{partition}: {source}")]
    Sequence {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// What the check found.
        #[source]
        source: crate::producer::SequenceError,
    },
    /// The partition log refused or failed the append.
    #[error("appending to {topic}/{partition}: {source}")]
    Append {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The log's error.
        #[source]
        source: AppendError,
    },
}

impl ProduceError {
    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::UnknownTopic(_) => ErrorCode::UnknownTopic,
            Self::UnknownPartition { .. } => ErrorCode::UnknownPartition,
            Self::RecordTooLarge { .. } => ErrorCode::RecordTooLarge,
            Self::Invalid(_) => ErrorCode::InvalidRequest,
            Self::Sequence { source: crate::producer::SequenceError::Fenced { .. }, .. } => {
                ErrorCode::ProducerFenced
            }
            Self::Sequence { .. } => ErrorCode::OutOfOrderSequence,
            Self::Append {
                source: AppendError::Batch(_) | AppendError::BatchTooLarge { .. },
                ..
            } => ErrorCode::InvalidRequest,
            Self::Append { source: AppendError::DiskFull { .. }, .. } => ErrorCode::DiskFull,
            Self::Append { source: AppendError::Closed, .. } => ErrorCode::ShuttingDown,
            Self::Append { .. } => ErrorCode::Storage,
        }
    }
}

/// A fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No such topic.
    #[error("topic '{0}' does not exist")]
    UnknownTopic(String),
    /// No such partition.
    #[error("topic '{topic}' has partitions 0..{partitions}; {partition} is not one of them")]
    UnknownPartition {
        /// The topic.
        topic: String,
        /// The partition asked for.
        partition: u32,
        /// How many the topic has.
        partitions: u32,
    },
    /// The partition log failed or refused the read.
    #[error("reading {topic}/{partition}: {source}")]
    Read {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The log's error.
        #[source]
        source: ReadError,
    },
}

impl FetchError {
    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::UnknownTopic(_) => ErrorCode::UnknownTopic,
            Self::UnknownPartition { .. } => ErrorCode::UnknownPartition,
            Self::Read { source: ReadError::OffsetOutOfRange { .. }, .. } => {
                ErrorCode::OffsetOutOfRange
            }
            Self::Read {
                source: ReadError::Corrupt { .. } | ReadError::Damaged { .. }, ..
            } => ErrorCode::Corrupt,
            Self::Read { .. } => ErrorCode::Storage,
        }
    }
}

/// Shutting the engine down did not sync everything.
#[derive(Debug, thiserror::Error)]
#[error("closing {topic}/{partition}: {source}")]
pub struct CloseError {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The log's error.
    #[source]
    pub source: MaintenanceError,
}

/// A consumer-group operation failed.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// Bad group name.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A named topic does not exist.
    #[error("topic '{0}' does not exist")]
    UnknownTopic(String),
    /// No such group.
    #[error("group '{0}' does not exist")]
    UnknownGroup(String),
    /// The member left or timed out.
    #[error(
        "member '{member}' is not in group '{group}' (it left or its session expired); join again"
    )]
    UnknownMember {
        /// The group.
        group: String,
        /// The member id given.
        member: String,
    },
    /// The commit's generation is not current.
    #[error("generation {given} is stale: group '{group}' is at generation {current} after a rebalance; fetch or heartbeat for the new assignment and commit again")]
    StaleGeneration {
        /// The group.
        group: String,
        /// The generation given.
        given: u64,
        /// The group's generation.
        current: u64,
    },
    /// The partition belongs to another member.
    #[error("member '{member}' of group '{group}' does not own {topic}/{partition}")]
    NotAssigned {
        /// The group.
        group: String,
        /// The member.
        member: String,
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
    },
    /// The group has members.
    #[error(
        "group '{group}' has {members} active members; stop them before resetting its offsets"
    )]
    GroupActive {
        /// The group.
        group: String,
        /// How many members it has.
        members: usize,
    },
    /// The join names other topics than the group's.
    #[error("group '{group}' consumes {expected:?}; a member cannot join with {given:?}")]
    TopicsMismatch {
        /// The group.
        group: String,
        /// The group's topics.
        expected: Vec<String>,
        /// The topics given.
        given: Vec<String>,
    },
    /// A parameter is out of range.
    #[error("{0}")]
    Invalid(String),
    /// The group has as many members as allowed.
    #[error("group '{group}' has {members_max} members, the most allowed")]
    Full {
        /// The group.
        group: String,
        /// The limit (`MEMBERS_MAX`).
        members_max: usize,
    },
    /// Reading a partition failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The offsets log failed.
    #[error("storage failure: {0}")]
    Storage(String),
}

impl GroupError {
    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Name(_) => ErrorCode::InvalidName,
            Self::UnknownTopic(_) => ErrorCode::UnknownTopic,
            Self::UnknownGroup(_) => ErrorCode::UnknownGroup,
            Self::UnknownMember { .. } => ErrorCode::UnknownMember,
            Self::StaleGeneration { .. } => ErrorCode::StaleGeneration,
            Self::NotAssigned { .. } => ErrorCode::NotAssigned,
            Self::GroupActive { .. } => ErrorCode::GroupActive,
            Self::TopicsMismatch { .. } => ErrorCode::TopicsMismatch,
            Self::Invalid(_) | Self::Full { .. } => ErrorCode::InvalidRequest,
            Self::Fetch(error) => error.code(),
            Self::Storage(_) => ErrorCode::Storage,
        }
    }
}

/// A queue-group or dead-letter operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Bad group name.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A setting is out of range.
    #[error("{0}")]
    Config(String),
    /// A named topic does not exist.
    #[error("topic '{0}' does not exist")]
    UnknownTopic(String),
    /// No such queue group.
    #[error("queue group '{0}' does not exist")]
    UnknownQueue(String),
    /// The name is taken with other settings.
    #[error("queue group '{group}' already exists with other settings ({differing}); delete it and create it again to change them, or choose another name")]
    Exists {
        /// The group.
        group: String,
        /// The settings that differ, with both values.
        differing: String,
    },
    /// A request parameter is out of range.
    #[error("{0}")]
    Invalid(String),
    /// The delivery id is not one this group handed out.
    #[error("{0}")]
    UnknownDelivery(String),
    /// The delivery is no longer leased.
    #[error("{0}")]
    NotLeased(String),
    /// Storage failed.
    #[error("storage failure: {0}")]
    Storage(String),
}

impl QueueError {
    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Name(_) => ErrorCode::InvalidName,
            Self::Config(_) => ErrorCode::InvalidConfig,
            Self::UnknownTopic(_) => ErrorCode::UnknownTopic,
            Self::UnknownQueue(_) => ErrorCode::UnknownQueue,
            Self::Exists { .. } => ErrorCode::QueueExists,
            Self::Invalid(_) => ErrorCode::InvalidRequest,
            Self::UnknownDelivery(_) => ErrorCode::UnknownDelivery,
            Self::NotLeased(_) => ErrorCode::NotLeased,
            Self::Storage(_) => ErrorCode::Storage,
        }
    }
}

/// A stream operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The topic does not exist.
    #[error("topic '{0}' does not exist")]
    UnknownTopic(String),
    /// The expected version does not hold; nothing was appended.
    #[error("{}", wrong_expected_version(.expected, .stream, *.actual, *.deleted_at))]
    WrongExpectedVersion {
        /// The topic.
        topic: String,
        /// The stream.
        stream: String,
        /// What the append expected.
        expected: crate::streams::ExpectedVersion,
        /// The stream's version (-1: no events).
        actual: i64,
        /// The version it was soft-deleted at, if it is deleted.
        deleted_at: Option<u64>,
    },
    /// The stream has no events, or is soft-deleted.
    #[error("stream {stream} {} in topic '{topic}'", match .deleted_at { Some(version) => format!("was deleted at version {version}"), None => "has no events".to_owned() })]
    StreamNotFound {
        /// The topic.
        topic: String,
        /// The stream.
        stream: String,
        /// The version it was soft-deleted at.
        deleted_at: Option<u64>,
    },
    /// A request parameter is out of range.
    #[error("{0}")]
    Invalid(String),
    /// Storage failed.
    #[error("storage failure: {0}")]
    Storage(String),
}

fn wrong_expected_version(
    expected: &crate::streams::ExpectedVersion,
    stream: &str,
    actual: i64,
    deleted_at: Option<u64>,
) -> String {
    use crate::streams::ExpectedVersion;
    let wanted = match expected {
        ExpectedVersion::Any => "any version".to_owned(),
        ExpectedVersion::NoStream => "no stream".to_owned(),
        ExpectedVersion::StreamExists => "an existing stream".to_owned(),
        ExpectedVersion::Exact(version) => format!("version {version}"),
    };
    match deleted_at {
        Some(version) => format!(
            "expected {wanted}, stream {stream} was deleted at version {version}; append with expected version no_stream to reuse the name"
        ),
        None if actual < 0 => format!("expected {wanted}, stream {stream} does not exist"),
        None => format!("expected {wanted}, stream {stream} is at version {actual}"),
    }
}

impl StreamError {
    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::UnknownTopic(_) => ErrorCode::UnknownTopic,
            Self::WrongExpectedVersion { .. } => ErrorCode::WrongExpectedVersion,
            Self::StreamNotFound { .. } => ErrorCode::StreamNotFound,
            Self::Invalid(_) => ErrorCode::InvalidRequest,
            Self::Storage(_) => ErrorCode::Storage,
        }
    }
}
