//! The one error type for everything this crate decodes or checks: [`BatchError`].
//!
//! Every message names what was wrong and what would have been accepted, because these errors end up
//! in producer-facing responses and operator logs where nobody can read the source.
//!
//! Record-level problems carry the record's index within its batch (0-based) so a bad record can be
//! found with a hex dump. Field names in messages use the Kafka protocol's names (`batchLength`,
//! `recordsCount`, ...) so they can be looked up in the Kafka documentation.
//!
//! This file does not decide *when* an error is raised; `batch.rs` and `record.rs` do.

/// Why a RecordBatch was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum BatchError {
    /// Fewer bytes than the smallest possible batch (or batch prefix) were given.
    #[error("batch is {len} bytes; a RecordBatch v2 needs at least {min}")]
    TooShort {
        /// Bytes given.
        len: u64,
        /// Bytes needed.
        min: u64,
    },
    /// `batchLength` is below the size of the fixed header fields it must cover.
    #[error("batchLength is {batch_length}; a RecordBatch v2 needs at least {min}")]
    BatchLengthTooSmall {
        /// The declared `batchLength`.
        batch_length: i32,
        /// The smallest legal `batchLength`.
        min: i32,
    },
    /// The byte slice is not exactly as long as `batchLength` says.
    #[error("batchLength says the batch is {declared} bytes but {actual} were given")]
    LengthMismatch {
        /// Total bytes the batch declares (12 + `batchLength`).
        declared: u64,
        /// Bytes given.
        actual: u64,
    },
    /// `maxTimestamp` is not the largest record timestamp of a CreateTime producer batch.
    #[error(
        "maxTimestamp is {declared} but the records' largest timestamp is {computed}; a producer \
         must set maxTimestamp to the largest record timestamp"
    )]
    MaxTimestampMismatch {
        /// The declared `maxTimestamp`.
        declared: i64,
        /// The largest record timestamp.
        computed: i64,
    },
    /// The magic byte is not 2 (older message sets, or not a batch at all).
    #[error("magic byte is {magic}; only RecordBatch v2 (magic 2) is supported")]
    UnsupportedMagic {
        /// The magic byte found.
        magic: i8,
    },
    /// The stored CRC32C does not match the bytes: the batch was corrupted.
    #[error("batch CRC32C is {stored:#010x} but the bytes hash to {computed:#010x}; the batch is corrupt")]
    CrcMismatch {
        /// CRC stored in the batch header.
        stored: u32,
        /// CRC computed over attributes..end.
        computed: u32,
    },
    /// The batch uses a known compression codec, which Sluice does not decode yet.
    #[error("batch is compressed with {codec}; Sluice accepts only uncompressed batches for now")]
    CompressionUnsupported {
        /// Codec name, as in [`crate::Compression::name`].
        codec: &'static str,
    },
    /// The compression bits of `attributes` name no codec.
    #[error("compression bits of attributes are {bits}; only 0 (none) to 4 (zstd) are defined")]
    UnknownCompression {
        /// The value of attribute bits 0-2.
        bits: u8,
    },
    /// `recordsCount` is negative.
    #[error("recordsCount is {records_count}; it must be 0 or more")]
    RecordCountNegative {
        /// The declared `recordsCount`.
        records_count: i32,
    },
    /// `lastOffsetDelta` is negative.
    #[error("lastOffsetDelta is {last_offset_delta}; it must be 0 or more")]
    LastOffsetDeltaNegative {
        /// The declared `lastOffsetDelta`.
        last_offset_delta: i32,
    },
    /// More records are declared than the offset range `0..=lastOffsetDelta` can number.
    #[error(
        "recordsCount is {records_count} but lastOffsetDelta is {last_offset_delta}; a batch holds \
         at most lastOffsetDelta + 1 records"
    )]
    RecordCountExceedsOffsetRange {
        /// The declared `recordsCount`.
        records_count: i32,
        /// The declared `lastOffsetDelta`.
        last_offset_delta: i32,
    },
    /// `baseOffset + lastOffsetDelta` does not fit in an i64.
    #[error("baseOffset {base_offset} plus lastOffsetDelta {last_offset_delta} overflows a 64-bit offset")]
    OffsetOverflow {
        /// The declared `baseOffset`.
        base_offset: i64,
        /// The declared `lastOffsetDelta`.
        last_offset_delta: i32,
    },
    /// A producer batch (contiguous offsets) holds no records.
    #[error("batch holds no records; a producer batch needs at least one")]
    NoRecords,
    /// The records run out before `recordsCount` of them were read.
    #[error("recordsCount says {declared} records but the batch holds only {found}")]
    RecordCountMismatch {
        /// The declared `recordsCount`.
        declared: i32,
        /// Records found before the bytes ran out.
        found: u32,
    },
    /// Bytes remain after the last record `recordsCount` declares.
    #[error("{count} bytes follow the last of the {records_count} records recordsCount declares")]
    TrailingBytes {
        /// Bytes left over.
        count: u64,
        /// The declared `recordsCount`.
        records_count: i32,
    },
    /// A record's framing is broken (a length runs past its end, a varint is too long, ...).
    #[error("record {index} is malformed: {field} {reason}")]
    RecordMalformed {
        /// 0-based index of the record within the batch.
        index: u32,
        /// Which field was being read, e.g. "key length".
        field: &'static str,
        /// What was wrong with it, e.g. "runs past the end of the record".
        reason: &'static str,
    },
    /// A record's offset delta is not above the previous record's.
    #[error("record {index} has offsetDelta {offset_delta}; it must be at least {min} (deltas start at 0 and strictly increase)")]
    OffsetDeltaOutOfOrder {
        /// 0-based index of the record within the batch.
        index: u32,
        /// The record's offset delta.
        offset_delta: i32,
        /// The smallest delta that would have been accepted.
        min: i64,
    },
    /// In a producer batch, a record's offset delta is not its index.
    #[error("record {index} has offsetDelta {offset_delta}; a producer batch numbers its records 0, 1, 2, ... so {index} was expected")]
    OffsetDeltaNotContiguous {
        /// 0-based index of the record within the batch.
        index: u32,
        /// The record's offset delta.
        offset_delta: i32,
    },
    /// A record's offset delta lies beyond the header's `lastOffsetDelta`.
    #[error("record {index} has offsetDelta {offset_delta}, beyond lastOffsetDelta {last_offset_delta}; no record may come after the batch's last offset")]
    OffsetDeltaBeyondLast {
        /// 0-based index of the record within the batch.
        index: u32,
        /// The record's offset delta.
        offset_delta: i32,
        /// The declared `lastOffsetDelta`.
        last_offset_delta: i32,
    },
    /// In a producer batch, the last record's offset delta differs from the header's `lastOffsetDelta`.
    #[error("lastOffsetDelta is {last_offset_delta} but the last record has offsetDelta {last_record_delta}; they must be equal")]
    LastOffsetDeltaMismatch {
        /// The declared `lastOffsetDelta`.
        last_offset_delta: i32,
        /// The last record's offset delta.
        last_record_delta: i32,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_is_allowed() {
        // Goal: the wording promised to producers and operators stays as specified.
        let short = BatchError::TooShort { len: 10, min: 61 };
        assert_eq!(short.to_string(), "batch is 10 bytes; a RecordBatch v2 needs at least 61");
        let magic = BatchError::UnsupportedMagic { magic: 1 };
        assert_eq!(
            magic.to_string(),
            "magic byte is 1; only RecordBatch v2 (magic 2) is supported"
        );
        let gzip = BatchError::CompressionUnsupported { codec: "gzip" };
        assert_eq!(
            gzip.to_string(),
            "batch is compressed with gzip; Sluice accepts only uncompressed batches for now"
        );
        let crc = BatchError::CrcMismatch { stored: 1, computed: 0xabcd };
        assert_eq!(
            crc.to_string(),
            "batch CRC32C is 0x00000001 but the bytes hash to 0x0000abcd; the batch is corrupt"
        );
    }
}
