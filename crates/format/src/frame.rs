//! Decoding the framing of one record inside a batch, without allocating.
//!
//! Record layout: `length varint | attributes i8 | timestampDelta varlong | offsetDelta varint |
//! keyLength varint | key | valueLength varint | value | headersCount varint | headers`, and each header
//! is `keyLength varint | key | valueLength varint | value`. A length of -1 means null (not allowed for
//! header keys).
//!
//! Invariants: a frame is returned only if every field fits inside the record, the fields fill the
//! record's `length` exactly (as Kafka requires), and all `headersCount` headers parse. Every loop is
//! bounded by the bytes it consumes (each header takes at least 2 bytes), so a huge declared count
//! cannot make it spin, and nothing recurses.
//!
//! Not done here: UTF-8 checks of header keys (Kafka clients send UTF-8, but the broker passes the
//! bytes through and so do we), offset-delta ordering (the callers own that, since it spans records),
//! and anything about record attributes (unused in v2; kept as read).

use crate::error::BatchError;
use crate::record::Header;
use crate::varint::{read_varint, read_varlong, VarintError};

/// A framing problem in a record whose index the caller knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed {
    field: &'static str,
    reason: &'static str,
}

impl Malformed {
    fn new(field: &'static str, reason: &'static str) -> Malformed {
        Malformed { field, reason }
    }

    fn varint(field: &'static str, error: VarintError) -> Malformed {
        Malformed::new(field, error.reason())
    }

    /// Attaches the record's index within its batch.
    pub(crate) fn at(self, index: u32) -> BatchError {
        BatchError::RecordMalformed { index, field: self.field, reason: self.reason }
    }
}

const PAST_END: &str = "runs past the end of the record";

/// Reads fields front to back from a slice, never past its end.
#[derive(Debug, Clone)]
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn varint(&mut self, field: &'static str) -> Result<i32, Malformed> {
        let (value, used) = read_varint(self.rest).map_err(|e| Malformed::varint(field, e))?;
        self.rest = &self.rest[used..];
        Ok(value)
    }

    fn varlong(&mut self, field: &'static str) -> Result<i64, Malformed> {
        let (value, used) = read_varlong(self.rest).map_err(|e| Malformed::varint(field, e))?;
        self.rest = &self.rest[used..];
        Ok(value)
    }

    fn byte(&mut self, field: &'static str) -> Result<i8, Malformed> {
        let (&first, rest) = self.rest.split_first().ok_or(Malformed::new(field, PAST_END))?;
        self.rest = rest;
        Ok(i8::from_be_bytes([first]))
    }

    fn take(&mut self, len: usize, field: &'static str) -> Result<&'a [u8], Malformed> {
        if len > self.rest.len() {
            return Err(Malformed::new(field, PAST_END));
        }
        let (taken, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(taken)
    }

    /// A length varint then that many bytes; -1 means null.
    fn nullable_bytes(
        &mut self,
        length_field: &'static str,
        field: &'static str,
    ) -> Result<Option<&'a [u8]>, Malformed> {
        let len = self.varint(length_field)?;
        if len == -1 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| {
            Malformed::new(length_field, "is below -1 (only -1, null, may be negative)")
        })?;
        self.take(len, field).map(Some)
    }
}

/// The headers of a record, already checked by [`read_record_frame`]; decoding them again cannot fail
/// but still reports errors rather than trusting that.
#[derive(Debug, Clone)]
pub(crate) struct HeaderIter<'a> {
    cursor: Cursor<'a>,
    remaining: u32,
}

impl<'a> HeaderIter<'a> {
    /// Headers left to yield (as declared by `headersCount`).
    pub(crate) fn remaining(&self) -> u32 {
        self.remaining
    }

    /// Bytes not yet consumed.
    pub(crate) fn bytes_left(&self) -> usize {
        self.cursor.rest.len()
    }

    fn read_header(&mut self) -> Result<Header<'a>, Malformed> {
        let key_len = self.cursor.varint("header keyLength")?;
        let key_len = usize::try_from(key_len).map_err(|_| {
            Malformed::new("header keyLength", "is negative (header keys cannot be null)")
        })?;
        let key = self.cursor.take(key_len, "header key")?;
        let value = self.cursor.nullable_bytes("header valueLength", "header value")?;
        Ok(Header { key, value })
    }
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = Result<Header<'a>, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        let header = self.read_header();
        // After an error nothing more is read: the position is meaningless.
        self.remaining = if header.is_ok() { self.remaining - 1 } else { 0 };
        Some(header)
    }
}

/// One record's fields, borrowed from the batch bytes.
#[derive(Debug, Clone)]
pub(crate) struct RecordFrame<'a> {
    pub(crate) attributes: i8,
    pub(crate) timestamp_delta: i64,
    pub(crate) offset_delta: i32,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) value: Option<&'a [u8]>,
    pub(crate) headers: HeaderIter<'a>,
}

/// Decodes the record at the start of `batch_rest` (the batch bytes from this record on) and returns
/// it with the number of bytes it occupies, length prefix included.
pub(crate) fn read_record_frame(batch_rest: &[u8]) -> Result<(RecordFrame<'_>, usize), Malformed> {
    let mut outer = Cursor { rest: batch_rest };
    let length = outer.varint("length")?;
    let length = usize::try_from(length).map_err(|_| Malformed::new("length", "is negative"))?;
    let body = outer
        .take(length, "length")
        .map_err(|_| Malformed::new("length", "runs past the end of the batch"))?;
    let frame = read_record_body(body)?;
    Ok((frame, batch_rest.len() - outer.rest.len()))
}

fn read_record_body(body: &[u8]) -> Result<RecordFrame<'_>, Malformed> {
    let mut cursor = Cursor { rest: body };
    let attributes = cursor.byte("attributes")?;
    let timestamp_delta = cursor.varlong("timestampDelta")?;
    let offset_delta = cursor.varint("offsetDelta")?;
    let key = cursor.nullable_bytes("keyLength", "key")?;
    let value = cursor.nullable_bytes("valueLength", "value")?;
    let headers_count = cursor.varint("headersCount")?;
    let remaining =
        u32::try_from(headers_count).map_err(|_| Malformed::new("headersCount", "is negative"))?;
    let headers = HeaderIter { cursor, remaining };
    check_headers_fill_record(headers.clone())?;
    Ok(RecordFrame { attributes, timestamp_delta, offset_delta, key, value, headers })
}

/// Walks every header (no allocation) and checks they end exactly where the record does.
fn check_headers_fill_record(mut headers: HeaderIter<'_>) -> Result<(), Malformed> {
    for header in headers.by_ref() {
        header?;
    }
    if headers.bytes_left() != 0 {
        return Err(Malformed::new("length", "is longer than the record's fields"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::varint::{write_varint, write_varlong};

    /// Encodes a record body field by field, for tests that need broken records.
    fn body(key_len: i32, key: &[u8], headers_count: i32, headers: &[u8]) -> Vec<u8> {
        let mut out = vec![0]; // attributes
        write_varlong(&mut out, 0);
        write_varint(&mut out, 0);
        write_varint(&mut out, key_len);
        out.extend_from_slice(key);
        write_varint(&mut out, -1); // null value
        write_varint(&mut out, headers_count);
        out.extend_from_slice(headers);
        out
    }

    fn framed(body: &[u8], length: i32) -> Vec<u8> {
        let mut out = Vec::new();
        write_varint(&mut out, length);
        out.extend_from_slice(body);
        out
    }

    fn error_of(bytes: &[u8]) -> Malformed {
        read_record_frame(bytes).expect_err("the record is malformed")
    }

    #[test]
    fn well_formed_record_reports_its_size() {
        // Goal: the consumed size covers the length prefix and the body exactly.
        let record_body = body(2, b"ab", 1, &[2, b'h', 1]);
        let bytes = framed(&record_body, i32::try_from(record_body.len()).unwrap());
        let mut with_tail = bytes.clone();
        with_tail.extend_from_slice(&[9, 9, 9]);
        let (frame, used) = read_record_frame(&with_tail).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(frame.key, Some(&b"ab"[..]));
        assert_eq!(frame.value, None);
        let headers: Vec<_> = frame.headers.map(Result::unwrap).collect();
        assert_eq!(headers, vec![Header { key: b"h", value: None }]);
    }

    #[test]
    fn length_must_match_fields_exactly() {
        // Goal: Kafka rejects records whose length is longer or shorter than their fields; so do we.
        let record_body = body(-1, b"", 0, &[]);
        let len = i32::try_from(record_body.len()).unwrap();
        let mut longer = record_body.clone();
        longer.push(0);
        assert_eq!(
            error_of(&framed(&longer, len + 1)).reason,
            "is longer than the record's fields"
        );
        assert_eq!(error_of(&framed(&record_body, len - 1)).field, "headersCount");
        assert_eq!(
            error_of(&framed(&record_body, len + 1)).reason,
            "runs past the end of the batch"
        );
        assert_eq!(error_of(&framed(&record_body, -2)).reason, "is negative");
    }

    #[test]
    fn bad_lengths_inside_the_record() {
        // Goal: each kind of bad inner length names its field.
        let cases: &[(Vec<u8>, &str)] = &[
            (body(-2, b"", 0, &[]), "keyLength"),
            (body(5, b"ab", 0, &[]), "key"),
            (body(-1, b"", -1, &[]), "headersCount"),
            (body(-1, b"", 2, &[2, b'h', 1]), "header keyLength"),
            (body(-1, b"", 1, &[1, 1]), "header keyLength"),
            (body(-1, b"", 1, &[2, b'h', 3]), "header valueLength"),
            (body(-1, b"", 1, &[2, b'h', 4, b'x']), "header value"),
        ];
        for (record_body, field) in cases {
            let bytes = framed(record_body, i32::try_from(record_body.len()).unwrap());
            assert_eq!(error_of(&bytes).field, *field, "body {record_body:?}");
        }
    }

    #[test]
    fn huge_header_count_fails_fast() {
        // Goal: a declared count far beyond the bytes ends at the first missing header.
        let record_body = body(-1, b"", i32::MAX, &[]);
        let bytes = framed(&record_body, i32::try_from(record_body.len()).unwrap());
        assert_eq!(error_of(&bytes), Malformed::new("header keyLength", PAST_END));
    }
}
