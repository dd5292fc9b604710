//! [`validate_records`]: [`crate::validate`] plus a walk over every record's framing and offset deltas.
//!
//! Invariants once it returns `Ok`: every record parses (see `frame.rs`), there are exactly
//! `recordsCount` of them with no bytes after the last, and their offset deltas strictly increase from
//! at least 0 up to at most `lastOffsetDelta`. In contiguous mode the deltas are exactly
//! `0..recordsCount`, the last equals `lastOffsetDelta`, and there is at least one record: what a
//! producer must send. Loose mode lets the last record sit below `lastOffsetDelta` because compaction
//! keeps a batch's offset range after removing its last record (as Kafka does).
//!
//! It allocates nothing and its loop is bounded by the batch length (each record consumes at least one
//! byte or fails). For producer batches it checks that `maxTimestamp` is the largest record timestamp; it does not check record attributes or header key UTF-8.

use crate::batch::{validate, BatchHeader, BATCH_HEADER_BYTES};
use crate::error::BatchError;
use crate::frame::read_record_frame;

/// Full check of a batch including every record's framing; allocates nothing.
///
/// Runs [`validate`], then checks each record's length varint and fields fit inside it, the number of
/// records matches `recordsCount` with no trailing bytes, and offset deltas strictly increase and stay
/// within `lastOffsetDelta`. With `contiguous` true (batches from producers) the deltas must be exactly
/// `0, 1, ..., n-1`, the last must equal `lastOffsetDelta`, and the batch must not be empty.
/// Compacted batches pass `false`, which allows gaps, empty batches, and a last record below
/// `lastOffsetDelta` (compaction removed the records after it but kept the offset range).
///
/// # Errors
/// The first failed check, as a [`BatchError`].
pub fn validate_records(bytes: &[u8], contiguous: bool) -> Result<BatchHeader, BatchError> {
    let header = validate(bytes)?;
    if contiguous && header.records_count == 0 {
        return Err(BatchError::NoRecords);
    }
    let mut order =
        DeltaOrder { contiguous, last_offset_delta: header.last_offset_delta, previous: None };
    let mut rest = &bytes[BATCH_HEADER_BYTES..];
    let mut index: u32 = 0;
    let mut timestamp_max: Option<i64> = None;
    while !rest.is_empty() {
        if i64::from(index) == i64::from(header.records_count) {
            let count = u64::try_from(rest.len()).expect("usize fits in u64");
            return Err(BatchError::TrailingBytes { count, records_count: header.records_count });
        }
        let (frame, used) = read_record_frame(rest).map_err(|malformed| malformed.at(index))?;
        order.check(index, frame.offset_delta)?;
        let timestamp = header.base_timestamp.wrapping_add(frame.timestamp_delta);
        timestamp_max = Some(timestamp_max.map_or(timestamp, |max| max.max(timestamp)));
        rest = &rest[used..];
        index += 1;
    }
    if i64::from(index) != i64::from(header.records_count) {
        return Err(BatchError::RecordCountMismatch {
            declared: header.records_count,
            found: index,
        });
    }
    order.check_last()?;
    check_max_timestamp(&header, contiguous, timestamp_max)?;
    Ok(header)
}

/// A producer's batch (CreateTime) must declare the largest record timestamp as its
/// `maxTimestamp`: the log indexes and expires by it without decoding records, so a wrong value
/// would hide records from time lookups or keep a segment forever. LogAppendTime batches carry
/// the broker's time in `maxTimestamp` by design and are not checked.
fn check_max_timestamp(
    header: &crate::BatchHeader,
    contiguous: bool,
    timestamp_max: Option<i64>,
) -> Result<(), BatchError> {
    match timestamp_max {
        Some(computed)
            if contiguous
                && !header.timestamp_type_log_append()
                && computed != header.max_timestamp =>
        {
            Err(BatchError::MaxTimestampMismatch { declared: header.max_timestamp, computed })
        }
        _ => Ok(()),
    }
}

/// The offset-delta rules across the records of one batch.
struct DeltaOrder {
    contiguous: bool,
    last_offset_delta: i32,
    previous: Option<i32>,
}

impl DeltaOrder {
    fn check(&mut self, index: u32, offset_delta: i32) -> Result<(), BatchError> {
        if self.contiguous && i64::from(offset_delta) != i64::from(index) {
            return Err(BatchError::OffsetDeltaNotContiguous { index, offset_delta });
        }
        let min = self.previous.map_or(0, |previous| i64::from(previous) + 1);
        if i64::from(offset_delta) < min {
            return Err(BatchError::OffsetDeltaOutOfOrder { index, offset_delta, min });
        }
        if offset_delta > self.last_offset_delta {
            let last_offset_delta = self.last_offset_delta;
            return Err(BatchError::OffsetDeltaBeyondLast {
                index,
                offset_delta,
                last_offset_delta,
            });
        }
        self.previous = Some(offset_delta);
        Ok(())
    }

    /// Producer batches end exactly at `lastOffsetDelta`; compacted ones may end below it.
    fn check_last(&self) -> Result<(), BatchError> {
        match self.previous {
            Some(last_record_delta)
                if self.contiguous && last_record_delta != self.last_offset_delta =>
            {
                Err(BatchError::LastOffsetDeltaMismatch {
                    last_offset_delta: self.last_offset_delta,
                    last_record_delta,
                })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{patch_i32, record_starts, reseal, sample_batch};
    use crate::{BatchBuilder, NewRecord};

    /// Byte position of the offsetDelta varint in a record written by `sample_batch` (1-byte length,
    /// attributes, 1-byte timestampDelta).
    const OFFSET_DELTA_IN_RECORD: usize = 3;
    const RECORDS_COUNT_AT: usize = 57;
    const LAST_OFFSET_DELTA_AT: usize = 23;

    #[test]
    fn producer_batches_pass_both_modes() {
        // Goal: what the builder writes is accepted as a producer batch and as a stored batch.
        let bytes = sample_batch(5);
        assert_eq!(validate_records(&bytes, true), validate_records(&bytes, false));
        assert!(validate_records(&bytes, true).is_ok());
    }

    #[test]
    fn record_count_must_match_records() {
        // Goal: recordsCount too small leaves trailing bytes; too large runs out of records.
        let bytes = sample_batch(3);
        let mut fewer = bytes.clone();
        patch_i32(&mut fewer, RECORDS_COUNT_AT, 2);
        let trailing = validate_records(&fewer, false);
        assert!(matches!(trailing, Err(BatchError::TrailingBytes { records_count: 2, .. })));
        let mut more = bytes.clone();
        patch_i32(&mut more, LAST_OFFSET_DELTA_AT, 3); // lastOffsetDelta 3 so that 4 records would be allowed
        patch_i32(&mut more, RECORDS_COUNT_AT, 4);
        assert_eq!(
            validate_records(&more, false),
            Err(BatchError::RecordCountMismatch { declared: 4, found: 3 })
        );
    }

    #[test]
    fn offset_deltas_must_strictly_increase() {
        // Goal: a repeated offset delta is rejected in both modes, naming the record.
        let mut bytes = sample_batch(3);
        let third = record_starts(&bytes)[2];
        bytes[third + OFFSET_DELTA_IN_RECORD] = 0x02; // delta 2 -> 1, same as record 1
        reseal(&mut bytes);
        assert_eq!(
            validate_records(&bytes, false),
            Err(BatchError::OffsetDeltaOutOfOrder { index: 2, offset_delta: 1, min: 2 })
        );
        assert_eq!(
            validate_records(&bytes, true),
            Err(BatchError::OffsetDeltaNotContiguous { index: 2, offset_delta: 1 })
        );
    }

    #[test]
    fn last_offset_delta_bounds_the_records() {
        // Goal: producer batches end exactly at lastOffsetDelta; compacted ones may end below it but
        // never beyond it.
        let mut builder = BatchBuilder::new(0);
        for _ in 0..2 {
            builder.push(&NewRecord { key: None, value: None, headers: &[], timestamp_ms: 1 });
        }
        builder.last_offset_delta(5);
        let mut bytes = builder.build();
        assert!(validate_records(&bytes, false).is_ok());
        assert_eq!(
            validate_records(&bytes, true),
            Err(BatchError::LastOffsetDeltaMismatch { last_offset_delta: 5, last_record_delta: 1 })
        );
        patch_i32(&mut bytes, LAST_OFFSET_DELTA_AT, 1);
        assert!(validate_records(&bytes, true).is_ok());
        let mut gap = BatchBuilder::new(0);
        for delta in [0, 5] {
            gap.push_at(
                delta,
                &NewRecord { key: None, value: None, headers: &[], timestamp_ms: 1 },
            );
        }
        let mut beyond = gap.build();
        patch_i32(&mut beyond, LAST_OFFSET_DELTA_AT, 3);
        assert_eq!(
            validate_records(&beyond, false),
            Err(BatchError::OffsetDeltaBeyondLast {
                index: 1,
                offset_delta: 5,
                last_offset_delta: 3
            })
        );
    }

    #[test]
    fn malformed_record_is_named_by_index() {
        // Goal: a framing error points at the record that has it.
        let mut bytes = sample_batch(3);
        let second = record_starts(&bytes)[1];
        bytes[second + 4] = 0x7f; // keyLength: zigzag 0x7f = -64
        reseal(&mut bytes);
        assert!(crate::validate(&bytes).is_ok());
        assert!(matches!(
            validate_records(&bytes, false),
            Err(BatchError::RecordMalformed { index: 1, field: "keyLength", .. })
        ));
    }

    #[test]
    fn crc_is_checked_before_records() {
        // Goal: validate_records never reports record errors for a batch that is simply corrupt.
        let mut bytes = sample_batch(2);
        let first = record_starts(&bytes)[0];
        bytes[first] = 0x01; // record length -1
        assert!(matches!(validate_records(&bytes, false), Err(BatchError::CrcMismatch { .. })));
    }
}
