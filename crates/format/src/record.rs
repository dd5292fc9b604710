//! Iterating the records of a batch as borrowed [`Record`]s.
//!
//! Invariants: [`records`] checks the header, exact length and compression before yielding anything,
//! and every yielded record's fields borrow from the batch bytes (only the header list is allocated).
//! After the first error the iterator is finished, so a caller cannot read past a corrupt record.
//!
//! Not done here: the CRC and the offset-delta ordering rules. Callers run [`crate::validate`] or
//! [`crate::validate_records`] first; iterating an unvalidated batch is safe (never panics) but may
//! yield records of a corrupt batch. Offsets and timestamps are computed with wrapping arithmetic for
//! the same reason: garbage in gives garbage out, never a panic.

use crate::batch::{parse_uncompressed_exact, BatchHeader, BATCH_HEADER_BYTES};
use crate::error::BatchError;
use crate::frame::{read_record_frame, RecordFrame};

/// One decoded record, borrowing its key, value and headers from the batch bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// Absolute offset: `base_offset + offsetDelta`.
    pub offset: i64,
    /// Milliseconds since the Unix epoch: `base_timestamp + timestampDelta`.
    pub timestamp_ms: i64,
    /// Record attributes; unused by RecordBatch v2 and passed through as read.
    pub attributes: i8,
    /// The key, or `None` for a null key.
    pub key: Option<&'a [u8]>,
    /// The value, or `None` for a null value (a tombstone under compaction).
    pub value: Option<&'a [u8]>,
    /// Headers in the order they were written.
    pub headers: Vec<Header<'a>>,
}

/// A record header. Kafka calls the key a string; we keep the raw bytes and do not check UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    /// Header key bytes (never null in Kafka's format).
    pub key: &'a [u8],
    /// Header value, or `None` for null.
    pub value: Option<&'a [u8]>,
}

/// Starts iterating the records of one uncompressed batch.
///
/// Checks [`BatchHeader::parse`], that `bytes` is exactly the declared length, that the batch is
/// uncompressed and that `recordsCount` is not negative. Does NOT check the CRC: validate first.
///
/// # Errors
/// The [`BatchError`] of the first failed check. Record-level problems come from the iterator.
pub fn records(bytes: &[u8]) -> Result<RecordIter<'_>, BatchError> {
    let header = parse_uncompressed_exact(bytes)?;
    if header.records_count < 0 {
        return Err(BatchError::RecordCountNegative { records_count: header.records_count });
    }
    Ok(RecordIter { header, rest: &bytes[BATCH_HEADER_BYTES..], index: 0, finished: false })
}

/// Iterator over the records of a batch; see [`records`].
///
/// Yields `recordsCount` records, then an error if bytes remain ([`BatchError::TrailingBytes`]) or if
/// the bytes ran out first ([`BatchError::RecordCountMismatch`]). After any error it yields `None`.
#[derive(Debug, Clone)]
pub struct RecordIter<'a> {
    header: BatchHeader,
    /// Batch bytes from the next record on.
    rest: &'a [u8],
    /// Index of the next record.
    index: u32,
    finished: bool,
}

impl<'a> RecordIter<'a> {
    /// The batch header the records belong to.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    fn next_record(&mut self) -> Option<Result<Record<'a>, BatchError>> {
        let declared = self.header.records_count;
        if i64::from(self.index) == i64::from(declared) {
            if self.rest.is_empty() {
                return None;
            }
            let count = u64::try_from(self.rest.len()).expect("usize fits in u64");
            return Some(Err(BatchError::TrailingBytes { count, records_count: declared }));
        }
        if self.rest.is_empty() {
            return Some(Err(BatchError::RecordCountMismatch { declared, found: self.index }));
        }
        let index = self.index;
        let (frame, used) = match read_record_frame(self.rest) {
            Ok(decoded) => decoded,
            Err(malformed) => return Some(Err(malformed.at(index))),
        };
        self.rest = &self.rest[used..];
        self.index += 1;
        Some(to_record(&self.header, frame).map_err(|malformed| malformed.at(index)))
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<Record<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        let item = self.next_record();
        self.finished = !matches!(item, Some(Ok(_)));
        item
    }
}

fn to_record<'a>(
    header: &BatchHeader,
    frame: RecordFrame<'a>,
) -> Result<Record<'a>, crate::frame::Malformed> {
    // The frame has checked that every header fits, and each takes at least 2 bytes, so this
    // capacity is bounded by the record's size, not by the declared count.
    let capacity = usize::try_from(frame.headers.remaining())
        .unwrap_or(usize::MAX)
        .min(frame.headers.bytes_left() / 2);
    let mut headers = Vec::with_capacity(capacity);
    for decoded in frame.headers {
        headers.push(decoded?);
    }
    Ok(Record {
        offset: header.base_offset.wrapping_add(i64::from(frame.offset_delta)),
        timestamp_ms: header.base_timestamp.wrapping_add(frame.timestamp_delta),
        attributes: frame.attributes,
        key: frame.key,
        value: frame.value,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{patch_i32, reseal, sample_batch};

    #[test]
    fn yields_sample_records() {
        // Goal: keys, values, headers and timestamps come back as written.
        let bytes = sample_batch(3);
        let decoded: Vec<Record<'_>> = records(&bytes).unwrap().map(Result::unwrap).collect();
        assert_eq!(decoded.len(), 3);
        let second = &decoded[1];
        assert_eq!((second.offset, second.timestamp_ms), (1, 1_700_000_000_001));
        assert_eq!((second.key, second.value), (Some(&[b'k', 1][..]), Some(&b"value"[..])));
        assert_eq!(second.headers, vec![Header { key: b"h", value: Some(b"v") }]);
        assert_eq!(second.attributes, 0);
    }

    #[test]
    fn does_not_check_the_crc() {
        // Goal: iteration trusts the caller's earlier validate; a stale CRC does not stop it.
        let mut bytes = sample_batch(2);
        bytes[17] ^= 0xff;
        assert_eq!(records(&bytes).unwrap().count(), 2);
    }

    #[test]
    fn stops_after_the_first_error() {
        // Goal: once a record is bad, nothing after it is yielded.
        let mut bytes = sample_batch(3);
        patch_i32(&mut bytes, 57, 1);
        let mut iter = records(&bytes).unwrap();
        assert!(iter.next().unwrap().is_ok());
        assert!(matches!(iter.next(), Some(Err(BatchError::TrailingBytes { .. }))));
        assert_eq!(iter.next(), None);
        assert_eq!(iter.header().records_count, 1);
    }

    #[test]
    fn reports_missing_records() {
        // Goal: a count larger than the records present ends in an error, not a silent short read.
        let mut bytes = sample_batch(2);
        patch_i32(&mut bytes, 57, 5);
        let items: Vec<_> = records(&bytes).unwrap().collect();
        assert_eq!(items.len(), 3);
        assert_eq!(items[2], Err(BatchError::RecordCountMismatch { declared: 5, found: 2 }));
    }

    #[test]
    fn rejects_negative_count_and_compression_up_front() {
        // Goal: records() refuses what it cannot iterate before yielding anything.
        let mut negative = sample_batch(1);
        patch_i32(&mut negative, 57, -1);
        assert_eq!(
            records(&negative).err(),
            Some(BatchError::RecordCountNegative { records_count: -1 })
        );
        let mut zstd = sample_batch(1);
        zstd[22] |= 4;
        reseal(&mut zstd);
        assert_eq!(
            records(&zstd).err(),
            Some(BatchError::CompressionUnsupported { codec: "zstd" })
        );
    }
}
