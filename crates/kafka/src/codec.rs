//! The protocol's primitive types: big-endian integers, strings and byte arrays with 16/32-bit
//! lengths, and the "compact" forms of flexible versions (unsigned-varint lengths plus one, and
//! tagged fields). Reading never panics: running out of bytes is an error naming the field.

use std::fmt;

/// A request that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// What was being read.
    pub field: &'static str,
    /// What was wrong.
    pub problem: &'static str,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "malformed request: {}: {}", self.field, self.problem)
    }
}

impl std::error::Error for DecodeError {}

/// Reads a request body front to back.
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    pub fn remaining(&self) -> usize {
        self.bytes.len()
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError { field, problem: "the request ends inside it" });
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    pub fn i8(&mut self, field: &'static str) -> Result<i8, DecodeError> {
        Ok(i8::from_be_bytes(self.array(field)?))
    }

    pub fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(field)?))
    }

    pub fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    pub fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    pub fn unsigned_varint(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let mut value: u32 = 0;
        for shift in (0..35).step_by(7) {
            let byte = self.take(1, field)?[0];
            value |= u32::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError { field, problem: "a varint longer than 5 bytes" })
    }

    /// A nullable string with an int16 length (-1: null).
    pub fn nullable_string(&mut self, field: &'static str) -> Result<Option<&'a str>, DecodeError> {
        let length = self.i16(field)?;
        if length < 0 {
            return Ok(None);
        }
        let bytes = self.take(length as usize, field)?;
        std::str::from_utf8(bytes)
            .map(Some)
            .map_err(|_| DecodeError { field, problem: "not UTF-8" })
    }

    /// A string with an int16 length.
    pub fn string(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        self.nullable_string(field)?
            .ok_or(DecodeError { field, problem: "null where a string is required" })
    }

    /// A compact nullable string (unsigned varint length + 1; 0: null).
    pub fn compact_nullable_string(
        &mut self,
        field: &'static str,
    ) -> Result<Option<&'a str>, DecodeError> {
        let length = self.unsigned_varint(field)?;
        if length == 0 {
            return Ok(None);
        }
        let bytes = self.take(length as usize - 1, field)?;
        std::str::from_utf8(bytes)
            .map(Some)
            .map_err(|_| DecodeError { field, problem: "not UTF-8" })
    }

    /// Nullable bytes with an int32 length (-1: null).
    pub fn nullable_bytes(&mut self, field: &'static str) -> Result<Option<&'a [u8]>, DecodeError> {
        let length = self.i32(field)?;
        if length < 0 {
            return Ok(None);
        }
        self.take(length as usize, field).map(Some)
    }

    /// An array length with an int32 count (-1: null, read as `None`). The count is checked
    /// against the bytes left (every element takes at least `min_element_bytes`), so a
    /// forged count cannot make the caller reserve unbounded memory.
    pub fn array_length(
        &mut self,
        field: &'static str,
        min_element_bytes: usize,
    ) -> Result<Option<usize>, DecodeError> {
        let count = self.i32(field)?;
        if count < 0 {
            return Ok(None);
        }
        let count = count as usize;
        if count.saturating_mul(min_element_bytes.max(1)) > self.bytes.len() {
            return Err(DecodeError { field, problem: "more elements than the request has bytes" });
        }
        Ok(Some(count))
    }

    /// Skips a flexible version's tagged fields (none is understood here).
    pub fn tagged_fields(&mut self, field: &'static str) -> Result<(), DecodeError> {
        let count = self.unsigned_varint(field)?;
        for _ in 0..count {
            self.unsigned_varint(field)?;
            let size = self.unsigned_varint(field)?;
            self.take(size as usize, field)?;
        }
        Ok(())
    }
}

/// Writes a response body.
#[derive(Default)]
pub struct Writer {
    pub bytes: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Writer { bytes: Vec::with_capacity(128) }
    }

    pub fn i8(&mut self, value: i8) -> &mut Self {
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn i16(&mut self, value: i16) -> &mut Self {
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn i32(&mut self, value: i32) -> &mut Self {
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn i64(&mut self, value: i64) -> &mut Self {
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn bool(&mut self, value: bool) -> &mut Self {
        self.i8(i8::from(value))
    }

    pub fn unsigned_varint(&mut self, mut value: u32) -> &mut Self {
        while value >= 0x80 {
            self.bytes.push((value as u8) | 0x80);
            value >>= 7;
        }
        self.bytes.push(value as u8);
        self
    }

    /// A string with an int16 length; longer ones are cut at a character boundary (names
    /// are at most 255 bytes, messages are cut to fit).
    pub fn string(&mut self, value: &str) -> &mut Self {
        let mut end = value.len().min(i16::MAX as usize);
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        self.i16(end as i16);
        self.bytes.extend_from_slice(&value.as_bytes()[..end]);
        self
    }

    pub fn nullable_string(&mut self, value: Option<&str>) -> &mut Self {
        match value {
            Some(value) => self.string(value),
            None => self.i16(-1),
        }
    }

    pub fn nullable_bytes(&mut self, value: Option<&[u8]>) -> &mut Self {
        match value {
            Some(value) => {
                self.i32(i32::try_from(value.len()).unwrap_or(i32::MAX));
                self.bytes.extend_from_slice(value);
            }
            None => {
                self.i32(-1);
            }
        }
        self
    }

    pub fn array_length(&mut self, count: usize) -> &mut Self {
        self.i32(i32::try_from(count).unwrap_or(i32::MAX))
    }

    pub fn compact_array_length(&mut self, count: usize) -> &mut Self {
        self.unsigned_varint(u32::try_from(count + 1).unwrap_or(u32::MAX))
    }

    /// No tagged fields.
    pub fn empty_tagged_fields(&mut self) -> &mut Self {
        self.unsigned_varint(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_overlong_ones_are_refused() {
        for value in [0, 1, 127, 128, 300, 16_383, 16_384, u32::MAX] {
            let mut writer = Writer::new();
            writer.unsigned_varint(value);
            let mut reader = Reader::new(&writer.bytes);
            assert_eq!(reader.unsigned_varint("v").unwrap(), value);
            assert_eq!(reader.remaining(), 0);
        }
        let mut reader = Reader::new(&[0xff; 6]);
        assert!(reader.unsigned_varint("v").is_err());
    }

    #[test]
    fn short_input_and_forged_counts_are_errors_not_panics() {
        let mut reader = Reader::new(&[0, 5, b'a']);
        assert_eq!(reader.string("name").unwrap_err().field, "name");
        let mut reader = Reader::new(&[0x7f, 0xff, 0xff, 0xff]);
        assert!(reader.array_length("topics", 1).is_err());
        let mut reader = Reader::new(&[0xff, 0xff]);
        assert_eq!(reader.nullable_string("id").unwrap(), None);
    }
}
