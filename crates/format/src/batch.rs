//! The 61-byte RecordBatch v2 header: parsing it, checking a whole batch's structure without decoding
//! records ([`validate`]), the CRC, and rewriting `baseOffset` in place.
//!
//! Layout (big-endian; byte positions in brackets):
//!
//! ```text
//! [0]  baseOffset i64            [8]  batchLength i32 (bytes after this field)
//! [12] partitionLeaderEpoch i32  [16] magic i8 (= 2)
//! [17] crc u32 (CRC32C of [21..end])
//! [21] attributes i16            [23] lastOffsetDelta i32
//! [27] baseTimestamp i64         [35] maxTimestamp i64
//! [43] producerId i64            [51] producerEpoch i16
//! [53] baseSequence i32          [57] recordsCount i32
//! [61] records...
//! ```
//!
//! Invariants: [`validate`] accepts a slice only if it is exactly one whole batch, its CRC matches, it is
//! uncompressed, and its counts are mutually consistent; nothing here panics on any input except the
//! documented programmer errors of [`set_base_offset`] and [`compute_crc`].
//!
//! Not done here: decoding records (see `record.rs`), checking `maxTimestamp` against the records (the
//! broker decides timestamps), or any producer-state (idempotence) checks, which need the log.

use crate::compression::{
    Compression, ATTRIBUTE_CONTROL, ATTRIBUTE_LOG_APPEND_TIME, ATTRIBUTE_TRANSACTIONAL,
};
use crate::error::BatchError;

/// The only batch format Sluice reads and writes.
pub const MAGIC_V2: i8 = 2;
/// Size of the fixed batch header; records start at this byte.
pub const BATCH_HEADER_BYTES: usize = 61;
/// baseOffset + batchLength: the bytes before the length-counted part.
pub const LOG_OVERHEAD_BYTES: usize = 12;
/// Smallest legal batchLength (header minus the 12 overhead bytes) = 49.
pub const BATCH_LENGTH_MIN: i32 = 49;

// Byte positions of the header fields; see the layout in the module doc.
const BASE_OFFSET_AT: usize = 0;
const BATCH_LENGTH_AT: usize = 8;
const PARTITION_LEADER_EPOCH_AT: usize = 12;
pub(crate) const MAGIC_AT: usize = 16;
pub(crate) const CRC_AT: usize = 17;
/// The CRC covers everything from here (attributes) to the end of the batch.
pub(crate) const CRC_START: usize = 21;
const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const BASE_TIMESTAMP_AT: usize = 27;
const MAX_TIMESTAMP_AT: usize = 35;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;
const RECORDS_COUNT_AT: usize = 57;

const _: () = assert!(RECORDS_COUNT_AT + 4 == BATCH_HEADER_BYTES);
const _: () = assert!(LOG_OVERHEAD_BYTES as i32 + BATCH_LENGTH_MIN == BATCH_HEADER_BYTES as i32);
const _: () = assert!(CRC_AT + 4 == CRC_START && CRC_START == ATTRIBUTES_AT);
const _: () = assert!(MAGIC_AT + 1 == CRC_AT && PARTITION_LEADER_EPOCH_AT == LOG_OVERHEAD_BYTES);

/// The decoded fixed header of a RecordBatch v2. Field names follow the Kafka protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record; assigned by the log on append.
    pub base_offset: i64,
    /// Bytes after the `batchLength` field (total batch size minus 12).
    pub batch_length: i32,
    /// Leader epoch of the partition leader that appended the batch.
    pub partition_leader_epoch: i32,
    /// Format version; always [`MAGIC_V2`] once parsed.
    pub magic: i8,
    /// CRC32C of the bytes from `attributes` to the end, as stored.
    pub crc: u32,
    /// Codec and flag bits; see [`Compression`] and the `is_*` methods.
    pub attributes: i16,
    /// Offset of the last offset slot relative to `base_offset`.
    pub last_offset_delta: i32,
    /// Timestamp (ms since the Unix epoch) that record timestamp deltas are relative to.
    pub base_timestamp: i64,
    /// Largest record timestamp (ms), or the append time for LogAppendTime batches.
    pub max_timestamp: i64,
    /// Idempotent producer id, or -1.
    pub producer_id: i64,
    /// Idempotent producer epoch, or -1.
    pub producer_epoch: i16,
    /// Sequence number of the first record, or -1.
    pub base_sequence: i32,
    /// Number of records the batch declares.
    pub records_count: i32,
}

fn be_i16(bytes: &[u8], at: usize) -> i16 {
    i16::from_be_bytes(bytes[at..at + 2].try_into().expect("slice of length 2"))
}

fn be_i32(bytes: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(bytes[at..at + 4].try_into().expect("slice of length 4"))
}

fn be_i64(bytes: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(bytes[at..at + 8].try_into().expect("slice of length 8"))
}

fn len_u64(len: usize) -> u64 {
    u64::try_from(len).expect("usize fits in u64 on supported targets")
}

impl BatchHeader {
    /// Parses the 61 header bytes at the start of `bytes` (which may be longer). Checks only that the
    /// header is there, that `batchLength` >= [`BATCH_LENGTH_MIN`] and that magic is 2. No CRC.
    ///
    /// # Errors
    /// [`BatchError::TooShort`], [`BatchError::UnsupportedMagic`], [`BatchError::BatchLengthTooSmall`].
    /// The magic byte sits at the same position in the older message formats, so it is checked as
    /// soon as it is present: an old-format message gets the more useful magic error.
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
        if let Some(&magic) = bytes.get(MAGIC_AT) {
            let magic = i8::from_be_bytes([magic]);
            if magic != MAGIC_V2 {
                return Err(BatchError::UnsupportedMagic { magic });
            }
        }
        if bytes.len() < BATCH_HEADER_BYTES {
            let min = len_u64(BATCH_HEADER_BYTES);
            return Err(BatchError::TooShort { len: len_u64(bytes.len()), min });
        }
        let header = BatchHeader::decode(bytes);
        check_batch_length(header.batch_length)?;
        Ok(header)
    }

    /// Decodes the fields; the caller guarantees `bytes.len() >= BATCH_HEADER_BYTES`.
    fn decode(bytes: &[u8]) -> BatchHeader {
        BatchHeader {
            base_offset: be_i64(bytes, BASE_OFFSET_AT),
            batch_length: be_i32(bytes, BATCH_LENGTH_AT),
            partition_leader_epoch: be_i32(bytes, PARTITION_LEADER_EPOCH_AT),
            magic: i8::from_be_bytes([bytes[MAGIC_AT]]),
            crc: u32::from_be_bytes(bytes[CRC_AT..CRC_START].try_into().expect("4 bytes")),
            attributes: be_i16(bytes, ATTRIBUTES_AT),
            last_offset_delta: be_i32(bytes, LAST_OFFSET_DELTA_AT),
            base_timestamp: be_i64(bytes, BASE_TIMESTAMP_AT),
            max_timestamp: be_i64(bytes, MAX_TIMESTAMP_AT),
            producer_id: be_i64(bytes, PRODUCER_ID_AT),
            producer_epoch: be_i16(bytes, PRODUCER_EPOCH_AT),
            base_sequence: be_i32(bytes, BASE_SEQUENCE_AT),
            records_count: be_i32(bytes, RECORDS_COUNT_AT),
        }
    }

    /// Writes every field into `out[..61]`, CRC included as stored in `self`.
    pub(crate) fn encode(&self, out: &mut [u8]) {
        out[BASE_OFFSET_AT..BATCH_LENGTH_AT].copy_from_slice(&self.base_offset.to_be_bytes());
        out[BATCH_LENGTH_AT..PARTITION_LEADER_EPOCH_AT]
            .copy_from_slice(&self.batch_length.to_be_bytes());
        out[PARTITION_LEADER_EPOCH_AT..MAGIC_AT]
            .copy_from_slice(&self.partition_leader_epoch.to_be_bytes());
        out[MAGIC_AT] = self.magic.to_be_bytes()[0];
        out[CRC_AT..CRC_START].copy_from_slice(&self.crc.to_be_bytes());
        out[ATTRIBUTES_AT..LAST_OFFSET_DELTA_AT].copy_from_slice(&self.attributes.to_be_bytes());
        out[LAST_OFFSET_DELTA_AT..BASE_TIMESTAMP_AT]
            .copy_from_slice(&self.last_offset_delta.to_be_bytes());
        out[BASE_TIMESTAMP_AT..MAX_TIMESTAMP_AT]
            .copy_from_slice(&self.base_timestamp.to_be_bytes());
        out[MAX_TIMESTAMP_AT..PRODUCER_ID_AT].copy_from_slice(&self.max_timestamp.to_be_bytes());
        out[PRODUCER_ID_AT..PRODUCER_EPOCH_AT].copy_from_slice(&self.producer_id.to_be_bytes());
        out[PRODUCER_EPOCH_AT..BASE_SEQUENCE_AT]
            .copy_from_slice(&self.producer_epoch.to_be_bytes());
        out[BASE_SEQUENCE_AT..RECORDS_COUNT_AT].copy_from_slice(&self.base_sequence.to_be_bytes());
        out[RECORDS_COUNT_AT..BATCH_HEADER_BYTES]
            .copy_from_slice(&self.records_count.to_be_bytes());
    }

    /// Reads only `baseOffset` and `batchLength` from the first 12 bytes and returns the batch's total
    /// size in bytes (12 + `batchLength`). For recovery scans, which must find the next batch without
    /// trusting anything else in this one.
    ///
    /// # Errors
    /// [`BatchError::TooShort`] with fewer than 12 bytes; [`BatchError::BatchLengthTooSmall`].
    pub fn peek_total_bytes(bytes: &[u8]) -> Result<u64, BatchError> {
        if bytes.len() < LOG_OVERHEAD_BYTES {
            let min = len_u64(LOG_OVERHEAD_BYTES);
            return Err(BatchError::TooShort { len: len_u64(bytes.len()), min });
        }
        let batch_length = be_i32(bytes, BATCH_LENGTH_AT);
        check_batch_length(batch_length)?;
        Ok(overhead_plus(batch_length))
    }

    /// Total batch size in bytes: 12 + `batch_length` (a negative `batch_length` counts as 0; parsed
    /// headers never have one).
    pub fn total_bytes(&self) -> u64 {
        overhead_plus(self.batch_length)
    }

    /// Offset of the last offset slot: `base_offset + last_offset_delta`. Wraps on overflow rather than
    /// panicking; [`validate`] rejects batches where it would overflow.
    pub fn last_offset(&self) -> i64 {
        self.base_offset.wrapping_add(i64::from(self.last_offset_delta))
    }

    /// The codec named by the attributes.
    ///
    /// # Errors
    /// [`BatchError::UnknownCompression`] for codec bits 5, 6 and 7.
    pub fn compression(&self) -> Result<Compression, BatchError> {
        Compression::from_attributes(self.attributes)
    }

    /// True for transaction markers (control batches), which hold no user records.
    pub fn is_control(&self) -> bool {
        self.attributes & ATTRIBUTE_CONTROL != 0
    }

    /// True for batches written inside a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTRIBUTE_TRANSACTIONAL != 0
    }

    /// True if timestamps are LogAppendTime (set by the broker) rather than CreateTime.
    pub fn timestamp_type_log_append(&self) -> bool {
        self.attributes & ATTRIBUTE_LOG_APPEND_TIME != 0
    }
}

fn overhead_plus(batch_length: i32) -> u64 {
    len_u64(LOG_OVERHEAD_BYTES) + u64::try_from(batch_length).unwrap_or(0)
}

fn check_batch_length(batch_length: i32) -> Result<(), BatchError> {
    if batch_length < BATCH_LENGTH_MIN {
        return Err(BatchError::BatchLengthTooSmall { batch_length, min: BATCH_LENGTH_MIN });
    }
    Ok(())
}

/// Parses the header and checks that `bytes` is exactly one uncompressed batch by its length fields.
/// Shared by [`validate`] (which adds the CRC and counts) and `records()` (which trusts the caller for
/// those).
pub(crate) fn parse_uncompressed_exact(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(bytes)?;
    check_exact_length(&header, bytes)?;
    check_uncompressed(&header)?;
    Ok(header)
}

fn check_exact_length(header: &BatchHeader, bytes: &[u8]) -> Result<(), BatchError> {
    let declared = header.total_bytes();
    let actual = len_u64(bytes.len());
    if declared != actual {
        return Err(BatchError::LengthMismatch { declared, actual });
    }
    Ok(())
}

fn check_uncompressed(header: &BatchHeader) -> Result<(), BatchError> {
    match header.compression()? {
        Compression::None => Ok(()),
        codec => Err(BatchError::CompressionUnsupported { codec: codec.name() }),
    }
}

fn check_crc(header: &BatchHeader, bytes: &[u8]) -> Result<(), BatchError> {
    let computed = compute_crc(bytes);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch { stored: header.crc, computed });
    }
    Ok(())
}

fn check_counts(header: &BatchHeader) -> Result<(), BatchError> {
    let BatchHeader { records_count, last_offset_delta, base_offset, .. } = *header;
    if records_count < 0 {
        return Err(BatchError::RecordCountNegative { records_count });
    }
    if last_offset_delta < 0 {
        return Err(BatchError::LastOffsetDeltaNegative { last_offset_delta });
    }
    if i64::from(records_count) > i64::from(last_offset_delta) + 1 {
        return Err(BatchError::RecordCountExceedsOffsetRange { records_count, last_offset_delta });
    }
    if base_offset.checked_add(i64::from(last_offset_delta)).is_none() {
        return Err(BatchError::OffsetOverflow { base_offset, last_offset_delta });
    }
    Ok(())
}

/// Full structural check of one batch without decoding its records.
///
/// Checks, in order: header present and magic 2, `bytes.len()` exactly 12 + `batchLength`, CRC32C,
/// compression none, `recordsCount >= 0`, `lastOffsetDelta >= 0`,
/// `recordsCount <= lastOffsetDelta + 1`, and `baseOffset + lastOffsetDelta` fits in an i64. The CRC
/// comes before the codec so a corrupted batch reports corruption, while an intact compressed batch
/// is refused by codec name instead of being misread.
///
/// # Errors
/// The first failed check, as a [`BatchError`].
pub fn validate(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(bytes)?;
    check_exact_length(&header, bytes)?;
    check_crc(&header, bytes)?;
    check_uncompressed(&header)?;
    check_counts(&header)?;
    Ok(header)
}

/// Rewrites `baseOffset` in place. The CRC does not cover it, so the batch stays valid; this is how the
/// log assigns offsets without re-encoding.
///
/// # Panics
/// If `bytes.len() < 12` (the caller passes a batch it has already validated or peeked).
pub fn set_base_offset(bytes: &mut [u8], base_offset: i64) {
    assert!(
        bytes.len() >= LOG_OVERHEAD_BYTES,
        "set_base_offset needs at least {LOG_OVERHEAD_BYTES} bytes, got {}",
        bytes.len()
    );
    bytes[BASE_OFFSET_AT..BATCH_LENGTH_AT].copy_from_slice(&base_offset.to_be_bytes());
}

/// CRC32C of `bytes[21..]` (attributes to the end): the value a batch's `crc` field must hold.
///
/// # Panics
/// If `bytes.len() < 21`.
pub fn compute_crc(bytes: &[u8]) -> u32 {
    assert!(
        bytes.len() >= CRC_START,
        "compute_crc needs at least {CRC_START} bytes, got {}",
        bytes.len()
    );
    crc32c::crc32c(&bytes[CRC_START..])
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
