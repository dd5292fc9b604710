//! Unit tests for `batch.rs`: header parsing, `validate`'s checks one by one, CRC coverage and
//! `set_base_offset`.

use super::*;
use crate::test_support::{patch_i32, reseal, sample_batch};
use crate::{BatchBuilder, NewRecord};
use proptest::prelude::*;

#[test]
fn parse_reads_every_field() {
    // Goal: each header field lands at its documented position.
    let mut builder =
        BatchBuilder::new(1000).producer(77, 3, 11).partition_leader_epoch(5).attributes(0b1_1000);
    for timestamp_ms in [50, 10, 90] {
        builder.push(&NewRecord { key: None, value: Some(b"x"), headers: &[], timestamp_ms });
    }
    let bytes = builder.build();
    let header = BatchHeader::parse(&bytes).unwrap();
    let expected = BatchHeader {
        base_offset: 1000,
        batch_length: i32::try_from(bytes.len() - LOG_OVERHEAD_BYTES).unwrap(),
        partition_leader_epoch: 5,
        magic: MAGIC_V2,
        crc: compute_crc(&bytes),
        attributes: 0b1_1000,
        last_offset_delta: 2,
        base_timestamp: 50,
        max_timestamp: 90,
        producer_id: 77,
        producer_epoch: 3,
        base_sequence: 11,
        records_count: 3,
    };
    assert_eq!(header, expected);
    assert_eq!(header.total_bytes(), bytes.len() as u64);
    assert_eq!(header.last_offset(), 1002);
    assert!(header.is_transactional() && header.timestamp_type_log_append());
    assert!(!header.is_control());
    assert_eq!(validate(&bytes), Ok(header));
}

#[test]
fn parse_accepts_longer_input_and_checks_only_the_header() {
    // Goal: parse reads a header out of a larger buffer (e.g. a segment) without judging the rest.
    let mut bytes = sample_batch(2);
    bytes[BATCH_HEADER_BYTES] ^= 0xff; // Corrupt a record: parse must not care.
    bytes.extend_from_slice(&[0; 100]);
    assert!(BatchHeader::parse(&bytes).is_ok());
}

#[test]
fn parse_rejects_short_old_and_undersized() {
    // Goal: each header-level rejection has its own error.
    let bytes = sample_batch(1);
    assert_eq!(BatchHeader::parse(&bytes[..10]), Err(BatchError::TooShort { len: 10, min: 61 }));
    assert_eq!(BatchHeader::parse(&bytes[..60]), Err(BatchError::TooShort { len: 60, min: 61 }));
    let mut old = bytes[..30].to_vec();
    old[MAGIC_AT] = 1;
    assert_eq!(BatchHeader::parse(&old), Err(BatchError::UnsupportedMagic { magic: 1 }));
    let mut small = bytes.clone();
    small[BATCH_LENGTH_AT..PARTITION_LEADER_EPOCH_AT].copy_from_slice(&48_i32.to_be_bytes());
    let too_small = Err(BatchError::BatchLengthTooSmall { batch_length: 48, min: 49 });
    assert_eq!(BatchHeader::parse(&small), too_small);
}

#[test]
fn peek_needs_only_twelve_bytes() {
    // Goal: recovery can size a batch from its first 12 bytes and nothing else.
    let bytes = sample_batch(3);
    assert_eq!(BatchHeader::peek_total_bytes(&bytes[..12]), Ok(bytes.len() as u64));
    assert_eq!(
        BatchHeader::peek_total_bytes(&bytes[..11]),
        Err(BatchError::TooShort { len: 11, min: 12 })
    );
    let mut negative = bytes[..12].to_vec();
    negative[BATCH_LENGTH_AT..].copy_from_slice(&(-1_i32).to_be_bytes());
    assert_eq!(
        BatchHeader::peek_total_bytes(&negative),
        Err(BatchError::BatchLengthTooSmall { batch_length: -1, min: 49 })
    );
}

#[test]
fn validate_requires_exact_length() {
    // Goal: a batch with extra or missing bytes is rejected before anything else is trusted.
    let bytes = sample_batch(2);
    let declared = bytes.len() as u64;
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(
        validate(&longer),
        Err(BatchError::LengthMismatch { declared, actual: declared + 1 })
    );
    assert_eq!(
        validate(&bytes[..bytes.len() - 1]),
        Err(BatchError::LengthMismatch { declared, actual: declared - 1 })
    );
}

#[test]
fn validate_detects_corruption() {
    // Goal: a changed byte under the CRC is reported as a CRC mismatch, with both values.
    let mut bytes = sample_batch(2);
    let stored = compute_crc(&bytes);
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let computed = compute_crc(&bytes);
    assert_eq!(validate(&bytes), Err(BatchError::CrcMismatch { stored, computed }));
}

#[test]
fn every_codec_is_refused_by_name() {
    // Goal: intact compressed batches are refused, naming the codec, never decoded as plain records.
    let names = [(1, "gzip"), (2, "snappy"), (3, "lz4"), (4, "zstd")];
    for (bits, codec) in names {
        let mut bytes = sample_batch(1);
        bytes[ATTRIBUTES_AT + 1] |= bits;
        reseal(&mut bytes);
        assert_eq!(validate(&bytes), Err(BatchError::CompressionUnsupported { codec }));
        assert!(crate::records(&bytes).is_err());
    }
    for bits in 5..=7u8 {
        let mut bytes = sample_batch(1);
        bytes[ATTRIBUTES_AT + 1] |= bits;
        reseal(&mut bytes);
        assert_eq!(validate(&bytes), Err(BatchError::UnknownCompression { bits }));
    }
}

#[test]
fn validate_checks_counts_and_offset_range() {
    // Goal: impossible count/offset combinations in the header are rejected without reading records.
    let bytes = sample_batch(3);
    let mut negative = bytes.clone();
    patch_i32(&mut negative, RECORDS_COUNT_AT, -1);
    assert_eq!(validate(&negative), Err(BatchError::RecordCountNegative { records_count: -1 }));
    let mut negative_delta = bytes.clone();
    patch_i32(&mut negative_delta, LAST_OFFSET_DELTA_AT, -1);
    assert_eq!(
        validate(&negative_delta),
        Err(BatchError::LastOffsetDeltaNegative { last_offset_delta: -1 })
    );
    let mut too_many = bytes.clone();
    patch_i32(&mut too_many, RECORDS_COUNT_AT, 4);
    assert_eq!(
        validate(&too_many),
        Err(BatchError::RecordCountExceedsOffsetRange { records_count: 4, last_offset_delta: 2 })
    );
    let mut overflow = bytes.clone();
    set_base_offset(&mut overflow, i64::MAX - 1);
    assert_eq!(
        validate(&overflow),
        Err(BatchError::OffsetOverflow { base_offset: i64::MAX - 1, last_offset_delta: 2 })
    );
}

#[test]
fn set_base_offset_keeps_the_crc_valid() {
    // Goal: the log can assign offsets in place without re-encoding or re-hashing.
    let mut bytes = sample_batch(4);
    set_base_offset(&mut bytes, 123_456);
    let header = validate(&bytes).unwrap();
    assert_eq!((header.base_offset, header.last_offset()), (123_456, 123_459));
    let offsets: Vec<i64> = crate::records(&bytes).unwrap().map(|r| r.unwrap().offset).collect();
    assert_eq!(offsets, vec![123_456, 123_457, 123_458, 123_459]);
}

#[test]
#[should_panic(expected = "set_base_offset needs at least 12 bytes")]
fn set_base_offset_panics_on_short_input() {
    // Goal: a caller bug (no batch at all) is loud, not a silent partial write.
    set_base_offset(&mut [0; 11], 1);
}

proptest! {
    #[test]
    fn any_single_byte_change_under_the_crc_is_caught(
        count in 1usize..6,
        position in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        // Goal: CRC32C catches every single-byte corruption from the CRC field to the end.
        let mut bytes = sample_batch(count);
        let at = CRC_AT + position.index(bytes.len() - CRC_AT);
        bytes[at] ^= flip;
        prop_assert!(validate(&bytes).is_err(), "flip {flip:#x} at {at} went unnoticed");
    }

    #[test]
    fn any_truncation_or_extension_is_caught(count in 0usize..6, cut in any::<prop::sample::Index>()) {
        // Goal: a batch cut short (torn write) or with bytes appended never validates.
        let bytes = sample_batch(count.max(1));
        let len = cut.index(bytes.len());
        prop_assert!(validate(&bytes[..len]).is_err());
        let mut longer = bytes.clone();
        longer.extend(std::iter::repeat_n(0, count + 1));
        prop_assert!(validate(&longer).is_err());
    }

    #[test]
    fn set_base_offset_moves_every_offset(base in 0i64..i64::MAX / 2, count in 1usize..8) {
        // Goal: offsets follow baseOffset and the batch stays valid for any reasonable base.
        let mut bytes = sample_batch(count);
        set_base_offset(&mut bytes, base);
        prop_assert!(crate::validate_records(&bytes, true).is_ok());
        let offsets: Vec<i64> = crate::records(&bytes).unwrap().map(|r| r.unwrap().offset).collect();
        let expected: Vec<i64> = (0..count as i64).map(|delta| base + delta).collect();
        prop_assert_eq!(offsets, expected);
    }
}
