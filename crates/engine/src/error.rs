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
