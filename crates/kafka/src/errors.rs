//! Kafka's error codes, and the engine's errors as Kafka clients understand them.

use sluice_engine::producer::SequenceError;
use sluice_engine::{FetchError, ProduceError};
use sluice_log::{AppendError, ReadError};

pub const NONE: i16 = 0;
pub const OFFSET_OUT_OF_RANGE: i16 = 1;
pub const CORRUPT_MESSAGE: i16 = 2;
pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
pub const MESSAGE_TOO_LARGE: i16 = 10;
pub const INVALID_REQUIRED_ACKS: i16 = 21;
pub const UNSUPPORTED_VERSION: i16 = 35;
pub const INVALID_REQUEST: i16 = 42;
pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
pub const INVALID_PRODUCER_EPOCH: i16 = 47;
pub const KAFKA_STORAGE_ERROR: i16 = 56;
pub const UNSUPPORTED_COMPRESSION_TYPE: i16 = 76;
pub const INVALID_RECORD: i16 = 87;

/// The Kafka error code of a refused or failed produce.
pub fn produce_code(error: &ProduceError) -> i16 {
    match error {
        ProduceError::UnknownTopic(_) | ProduceError::UnknownPartition { .. } => {
            UNKNOWN_TOPIC_OR_PARTITION
        }
        ProduceError::RecordTooLarge { .. } => MESSAGE_TOO_LARGE,
        ProduceError::Invalid(_) => INVALID_RECORD,
        ProduceError::Sequence { source: SequenceError::Fenced { .. }, .. } => {
            INVALID_PRODUCER_EPOCH
        }
        ProduceError::Sequence { source: SequenceError::OutOfOrder { .. }, .. } => {
            OUT_OF_ORDER_SEQUENCE_NUMBER
        }
        ProduceError::Append { source, .. } => append_code(source),
    }
}

fn append_code(error: &AppendError) -> i16 {
    use sluice_format::BatchError;
    match error {
        AppendError::BatchTooLarge { .. } => MESSAGE_TOO_LARGE,
        AppendError::Batch(
            BatchError::CompressionUnsupported { .. } | BatchError::UnknownCompression { .. },
        ) => UNSUPPORTED_COMPRESSION_TYPE,
        AppendError::Batch(BatchError::CrcMismatch { .. }) => CORRUPT_MESSAGE,
        AppendError::Batch(_) => INVALID_RECORD,
        _ => KAFKA_STORAGE_ERROR,
    }
}

/// The Kafka error code of a failed read.
pub fn fetch_code(error: &FetchError) -> i16 {
    match error {
        FetchError::UnknownTopic(_) | FetchError::UnknownPartition { .. } => {
            UNKNOWN_TOPIC_OR_PARTITION
        }
        FetchError::Read { source: ReadError::OffsetOutOfRange { .. }, .. } => OFFSET_OUT_OF_RANGE,
        FetchError::Read { .. } => KAFKA_STORAGE_ERROR,
    }
}

pub const UNKNOWN_SERVER_ERROR: i16 = -1;
pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
pub const ILLEGAL_GENERATION: i16 = 22;
pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
pub const INVALID_GROUP_ID: i16 = 24;
pub const UNKNOWN_MEMBER_ID: i16 = 25;
pub const INVALID_SESSION_TIMEOUT: i16 = 26;
pub const REBALANCE_IN_PROGRESS: i16 = 27;
pub const GROUP_MAX_SIZE_REACHED: i16 = 81;

/// The Kafka error code of a refused or failed group operation.
pub fn group_code(error: &sluice_engine::GroupError) -> i16 {
    use sluice_engine::GroupError;
    match error {
        GroupError::Name(_) => INVALID_GROUP_ID,
        GroupError::UnknownTopic(_) => UNKNOWN_TOPIC_OR_PARTITION,
        // The member is gone (left, expired, or the group with it): it joins again.
        GroupError::UnknownGroup(_) | GroupError::UnknownMember { .. } => UNKNOWN_MEMBER_ID,
        // A commit of another generation, or of a partition that moved: the client rejoins.
        GroupError::StaleGeneration { .. } | GroupError::NotAssigned { .. } => ILLEGAL_GENERATION,
        GroupError::TopicsMismatch { .. } => INCONSISTENT_GROUP_PROTOCOL,
        GroupError::Storage(_) => KAFKA_STORAGE_ERROR,
        GroupError::Full { .. } => GROUP_MAX_SIZE_REACHED,
        GroupError::Invalid(_) => INVALID_REQUEST,
        // Not reachable from the Kafka door's requests (offset resets, HTTP group fetches).
        GroupError::GroupActive { .. } | GroupError::Fetch(_) => UNKNOWN_SERVER_ERROR,
    }
}
