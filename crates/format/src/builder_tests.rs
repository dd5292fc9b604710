//! Unit tests for `builder.rs`: a hand-built known answer, the round trip through `records()`, the
//! compaction-style pushes, and the documented panics.

use super::*;
use crate::{records, validate_records, BatchError, Record};
use proptest::prelude::*;

#[test]
fn known_answer_one_record() {
    // Goal: the builder's bytes match a batch written out by hand from the Kafka spec, and the CRC
    // matches both crc32c and a value computed by an independent (bitwise Python) implementation.
    let timestamp_ms: i64 = 1_700_000_000_000;
    let mut record = vec![
        0x20, // length 16, zigzag
        0x00, // attributes
        0x00, // timestampDelta 0
        0x00, // offsetDelta 0
        0x02, b'k', // keyLength 1, key
        0x0a, b'h', b'e', b'l', b'l', b'o', // valueLength 5, value
        0x02, // headersCount 1
        0x02, b'h', 0x02, b'v', // header key "h", value "v"
    ];
    let mut expected = Vec::new();
    expected.extend_from_slice(&0_i64.to_be_bytes()); // baseOffset
    expected.extend_from_slice(&66_i32.to_be_bytes()); // batchLength = 49 + 17
    expected.extend_from_slice(&(-1_i32).to_be_bytes()); // partitionLeaderEpoch
    expected.push(2); // magic
    expected.extend_from_slice(&[0; 4]); // crc, filled in below
    expected.extend_from_slice(&0_i16.to_be_bytes()); // attributes
    expected.extend_from_slice(&0_i32.to_be_bytes()); // lastOffsetDelta
    expected.extend_from_slice(&timestamp_ms.to_be_bytes()); // baseTimestamp
    expected.extend_from_slice(&timestamp_ms.to_be_bytes()); // maxTimestamp
    expected.extend_from_slice(&(-1_i64).to_be_bytes()); // producerId
    expected.extend_from_slice(&(-1_i16).to_be_bytes()); // producerEpoch
    expected.extend_from_slice(&(-1_i32).to_be_bytes()); // baseSequence
    expected.extend_from_slice(&1_i32.to_be_bytes()); // recordsCount
    expected.append(&mut record);
    let crc = crc32c::crc32c(&expected[21..]);
    assert_eq!(crc, 0xc622_acfa);
    expected[17..21].copy_from_slice(&crc.to_be_bytes());

    let headers = [Header { key: b"h", value: Some(b"v") }];
    let mut builder = BatchBuilder::new(0);
    builder.push(&NewRecord {
        key: Some(b"k"),
        value: Some(b"hello"),
        headers: &headers,
        timestamp_ms,
    });
    assert_eq!(builder.bytes_len(), 78);
    assert_eq!(builder.build(), expected);
}

#[test]
fn compaction_style_batch_keeps_gaps_and_last_offset() {
    // Goal: push_at + last_offset_delta make a batch valid for compaction but not as a producer batch.
    let mut builder = BatchBuilder::new(500);
    for delta in [1, 4, 5] {
        builder.push_at(
            delta,
            &NewRecord { key: Some(b"k"), value: None, headers: &[], timestamp_ms: 9 },
        );
    }
    builder.last_offset_delta(9);
    let bytes = builder.build();
    let header = validate_records(&bytes, false).unwrap();
    assert_eq!((header.records_count, header.last_offset()), (3, 509));
    let offsets: Vec<i64> = records(&bytes).unwrap().map(|r| r.unwrap().offset).collect();
    assert_eq!(offsets, vec![501, 504, 505]);
    assert_eq!(
        validate_records(&bytes, true),
        Err(BatchError::OffsetDeltaNotContiguous { index: 0, offset_delta: 1 })
    );
}

#[test]
fn empty_batch_with_forced_last_offset() {
    // Goal: compaction may empty a batch but keep it to preserve its offset range.
    let mut builder = BatchBuilder::new(10).producer(3, 1, 40);
    builder.last_offset_delta(7);
    let bytes = builder.build();
    assert_eq!(bytes.len(), BATCH_HEADER_BYTES);
    let header = validate_records(&bytes, false).unwrap();
    assert_eq!((header.records_count, header.last_offset()), (0, 17));
    assert_eq!((header.base_timestamp, header.max_timestamp), (-1, -1));
    assert_eq!(validate_records(&bytes, true), Err(BatchError::NoRecords));
    assert_eq!(records(&bytes).unwrap().count(), 0);
}

#[test]
fn max_timestamp_is_the_largest_even_below_minus_one() {
    // Goal: the "no timestamp" starting value never leaks into a batch of negative timestamps.
    let mut builder = BatchBuilder::new(0);
    for timestamp_ms in [-50, -70, -20] {
        builder.push(&NewRecord { key: None, value: None, headers: &[], timestamp_ms });
    }
    let header = crate::validate(&builder.build()).unwrap();
    assert_eq!((header.base_timestamp, header.max_timestamp), (-50, -20));
}

#[test]
fn extreme_timestamps_round_trip() {
    // Goal: wrapping deltas decode back to the exact timestamps at the ends of the i64 range.
    let mut builder = BatchBuilder::new(0);
    for timestamp_ms in [i64::MAX, i64::MIN, 0] {
        builder.push(&NewRecord { key: None, value: None, headers: &[], timestamp_ms });
    }
    let bytes = builder.build();
    let stamps: Vec<i64> = records(&bytes).unwrap().map(|r| r.unwrap().timestamp_ms).collect();
    assert_eq!(stamps, vec![i64::MAX, i64::MIN, 0]);
}

#[test]
#[should_panic(expected = "needs last_offset_delta() set")]
fn empty_build_without_last_offset_panics() {
    // Goal: an empty producer batch is a caller bug, not a silently odd batch.
    BatchBuilder::new(0).build();
}

#[test]
#[should_panic(expected = "it must be at least 3")]
fn push_at_must_increase() {
    // Goal: out-of-order deltas are refused at the source.
    let mut builder = BatchBuilder::new(0);
    let record = NewRecord { key: None, value: None, headers: &[], timestamp_ms: 0 };
    builder.push_at(2, &record);
    builder.push_at(2, &record);
}

#[test]
#[should_panic(expected = "writes only uncompressed batches")]
fn codec_attributes_panic() {
    // Goal: the builder cannot produce a batch that claims a codec it did not apply.
    let _ = BatchBuilder::new(0).attributes(1);
}

#[test]
#[should_panic(expected = "was forced but a record was pushed at delta 4")]
fn forced_last_offset_below_a_later_push_panics() {
    // Goal: forcing lastOffsetDelta and then pushing past it cannot build an invalid batch.
    let mut builder = BatchBuilder::new(0);
    builder.last_offset_delta(2);
    builder.push_at(4, &NewRecord { key: None, value: None, headers: &[], timestamp_ms: 0 });
    builder.build();
}

/// An owned record for proptest to generate; borrowed into `NewRecord`s for the builder.
#[derive(Debug, Clone)]
struct OwnedRecord {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    timestamp_ms: i64,
}

fn owned_record() -> impl Strategy<Value = OwnedRecord> {
    let bytes = || prop::option::of(prop::collection::vec(any::<u8>(), 0..300));
    let header = (prop::collection::vec(any::<u8>(), 0..20), bytes());
    let timestamp = prop_oneof![any::<i64>(), 1_600_000_000_000i64..1_800_000_000_000];
    (bytes(), bytes(), prop::collection::vec(header, 0..=4), timestamp).prop_map(
        |(key, value, headers, timestamp_ms)| OwnedRecord { key, value, headers, timestamp_ms },
    )
}

proptest! {
    #[test]
    fn build_validate_iterate_round_trip(
        owned in prop::collection::vec(owned_record(), 1..20),
        base_offset in 0i64..1 << 40,
    ) {
        // Goal: whatever goes into the builder comes back out of records(), in order, unchanged.
        let headers: Vec<Vec<Header<'_>>> = owned
            .iter()
            .map(|r| r.headers.iter().map(|(k, v)| Header { key: k, value: v.as_deref() }).collect())
            .collect();
        let mut builder = BatchBuilder::new(base_offset);
        for (record, headers) in owned.iter().zip(&headers) {
            builder.push(&NewRecord {
                key: record.key.as_deref(),
                value: record.value.as_deref(),
                headers,
                timestamp_ms: record.timestamp_ms,
            });
        }
        prop_assert_eq!(builder.record_count(), owned.len());
        let expected_len = builder.bytes_len();
        let bytes = builder.build();
        prop_assert_eq!(bytes.len(), expected_len);
        let header = validate_records(&bytes, true).unwrap();
        let max = owned.iter().map(|r| r.timestamp_ms).max().unwrap();
        prop_assert_eq!(header.max_timestamp, max);
        let decoded: Vec<Record<'_>> = records(&bytes).unwrap().map(Result::unwrap).collect();
        prop_assert_eq!(decoded.len(), owned.len());
        for (index, (got, want)) in decoded.iter().zip(&owned).enumerate() {
            prop_assert_eq!(got.offset, base_offset + index as i64);
            prop_assert_eq!(got.timestamp_ms, want.timestamp_ms);
            prop_assert_eq!(got.key, want.key.as_deref());
            prop_assert_eq!(got.value, want.value.as_deref());
            prop_assert_eq!(&got.headers, &headers[index]);
        }
        crate::fuzz_check(&bytes);
    }
}
