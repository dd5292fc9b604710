//! [`fuzz_check`]: the body of the `batch` fuzz target, kept in the crate so a deterministic test
//! (`tests/fuzz_corpus.rs`) can run the same logic on stable Rust without libFuzzer.
//!
//! It feeds arbitrary bytes to every decoder here and asserts that none panics and that their verdicts
//! agree with each other (a batch `validate_records` accepts is one `validate` accepts, iterates
//! cleanly, and re-encodes to the same records; to the same bytes when it was written canonically).
//! An assertion failure is a bug in this crate, which is why it panics rather than returning.
//!
//! Not a public API for production code: it allocates freely and panics by design.

use crate::batch::{CRC_AT, CRC_START};
use crate::{
    compute_crc, records, validate, validate_records, BatchBuilder, BatchError, BatchHeader,
    NewRecord, Record,
};

/// Runs every decoder on `data` and panics if any panics or if their results disagree. Then does the
/// same for a copy with the CRC recomputed: a fuzzer almost never guesses a matching CRC32C, and
/// without this second pass it would rarely get past the checksum to the record decoders.
#[doc(hidden)]
pub fn fuzz_check(data: &[u8]) {
    check_bytes(data);
    if data.len() >= CRC_START {
        let crc = compute_crc(data);
        if data[CRC_AT..CRC_START] != crc.to_be_bytes() {
            let mut resealed = data.to_vec();
            resealed[CRC_AT..CRC_START].copy_from_slice(&crc.to_be_bytes());
            check_bytes(&resealed);
        }
    }
}

fn check_bytes(data: &[u8]) {
    let parsed = BatchHeader::parse(data);
    let peeked = BatchHeader::peek_total_bytes(data);
    if let Ok(header) = &parsed {
        assert_eq!(peeked, Ok(header.total_bytes()), "peek disagrees with parse");
    }
    let validated = validate(data);
    let loose = validate_records(data, false);
    let strict = validate_records(data, true);
    let iterated = records(data).map(|iter| iter.collect::<Vec<_>>());
    if let Ok(header) = &validated {
        assert_eq!(parsed.as_ref(), Ok(header), "validate accepted what parse rejected");
        assert!(iterated.is_ok(), "records() rejected a validated batch: {iterated:?}");
    }
    if let Ok(header) = &strict {
        assert_eq!(loose.as_ref(), Ok(header), "contiguous mode is stricter than loose mode");
    }
    let Ok(header) = loose else { return };
    assert_eq!(validated, Ok(header), "validate_records accepted what validate rejected");
    let items = iterated.expect("checked above: validated batches iterate");
    let decoded: Vec<Record<'_>> =
        items.into_iter().collect::<Result<_, BatchError>>().expect("records of a valid batch");
    check_offsets(&header, &decoded, strict.is_ok());
    check_rebuild(data, &header, &decoded, strict.is_ok());
}

fn check_offsets(header: &BatchHeader, decoded: &[Record<'_>], contiguous: bool) {
    let declared = usize::try_from(header.records_count).expect("validated count is >= 0");
    assert_eq!(decoded.len(), declared, "records() yielded a different count");
    assert!(
        decoded.windows(2).all(|pair| pair[0].offset < pair[1].offset),
        "offsets not increasing"
    );
    if let Some(last) = decoded.last() {
        assert!(last.offset <= header.last_offset(), "a record lies beyond the last offset");
    }
    if contiguous {
        let last = decoded.last().map(|record| record.offset);
        assert_eq!(last, Some(header.last_offset()), "producer batch ends below its last offset");
        for (index, record) in decoded.iter().enumerate() {
            let index = i64::try_from(index).expect("small index");
            assert_eq!(record.offset, header.base_offset + index, "contiguous offsets");
        }
    }
}

/// Re-encodes the decoded records with the builder and compares.
fn check_rebuild(data: &[u8], header: &BatchHeader, decoded: &[Record<'_>], contiguous: bool) {
    let rebuilt = rebuild(header, decoded);
    let loose = validate_records(&rebuilt, false);
    assert!(loose.is_ok(), "the builder re-encoded a valid batch into an invalid one: {loose:?}");
    if contiguous {
        assert!(validate_records(&rebuilt, true).is_ok(), "rebuilt batch lost contiguity");
    }
    let again: Vec<Record<'_>> = records(&rebuilt)
        .expect("rebuilt batch validated")
        .collect::<Result<_, _>>()
        .expect("rebuilt records decode");
    let expected: Vec<Record<'_>> =
        decoded.iter().map(|record| Record { attributes: 0, ..record.clone() }).collect();
    assert_eq!(again, expected, "rebuilt batch decodes to different records");
    if is_canonical(header, decoded) {
        // The builder writes minimal varints; any other encoding of the same content is longer.
        assert!(rebuilt.len() <= data.len(), "builder output longer than a canonical input");
        if rebuilt.len() == data.len() {
            assert_eq!(rebuilt, data, "same content and length, different bytes");
        }
    }
}

fn rebuild(header: &BatchHeader, decoded: &[Record<'_>]) -> Vec<u8> {
    let mut builder = BatchBuilder::new(header.base_offset)
        .producer(header.producer_id, header.producer_epoch, header.base_sequence)
        .partition_leader_epoch(header.partition_leader_epoch)
        .attributes(header.attributes);
    for record in decoded {
        let delta = i32::try_from(record.offset - header.base_offset).expect("delta came from i32");
        let new = NewRecord {
            key: record.key,
            value: record.value,
            headers: &record.headers,
            timestamp_ms: record.timestamp_ms,
        };
        builder.push_at(delta, &new);
    }
    builder.last_offset_delta(header.last_offset_delta);
    builder.build()
}

/// True if the header fields the builder derives (timestamps) and the record attributes it always
/// writes as 0 already have the builder's values, so only varint padding could differ.
fn is_canonical(header: &BatchHeader, decoded: &[Record<'_>]) -> bool {
    let attributes_zero = decoded.iter().all(|record| record.attributes == 0);
    let (base, max) = match decoded.first() {
        None => (-1, -1),
        Some(first) => {
            let max = decoded.iter().map(|record| record.timestamp_ms).max();
            (first.timestamp_ms, max.expect("non-empty"))
        }
    };
    attributes_zero && header.base_timestamp == base && header.max_timestamp == max
}
