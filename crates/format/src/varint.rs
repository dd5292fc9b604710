//! Kafka's zigzag varints: `varint` for i32 (at most 5 bytes) and `varlong` for i64 (at most 10).
//!
//! Encoding: zigzag-map the signed value to unsigned (0, -1, 1, -2, ... -> 0, 1, 2, 3, ...), then write
//! it 7 bits at a time, least significant group first, with the high bit set on every byte but the last.
//!
//! Invariants: decoding never reads past the slice, never loops more than the maximum length, and never
//! panics. An encoding longer than the maximum, or whose last byte carries bits beyond the type's width,
//! is rejected ([`VarintError::TooLong`]); Kafka's Java client silently drops such bits, we refuse them
//! so a corrupted length cannot be read as a different, valid one.
//!
//! Not done here: rejecting non-minimal encodings (e.g. `0x80 0x00` for 0). Kafka accepts them, so we do
//! too; the builder always writes minimal ones. The unsigned varints of Kafka's flexible request
//! versions belong to the protocol crate, not here.

/// Longest legal `varint` (i32) encoding in bytes.
pub(crate) const VARINT_BYTES_MAX: usize = 5;
/// Longest legal `varlong` (i64) encoding in bytes.
pub(crate) const VARLONG_BYTES_MAX: usize = 10;

/// Why a varint could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VarintError {
    /// The bytes ended while the continuation bit was still set.
    Truncated,
    /// More than the maximum number of bytes, or value bits beyond the type's width.
    TooLong,
}

impl VarintError {
    /// A phrase to follow a field name in an error message ("key length" + reason).
    pub(crate) fn reason(self) -> &'static str {
        match self {
            VarintError::Truncated => "runs past the end of the record",
            VarintError::TooLong => "is an over-long varint (more bits than the field holds)",
        }
    }
}

/// Reads unsigned LEB128 of at most `bytes_max` bytes whose value fits in `value_bits`.
/// Returns the raw (still zigzagged) value and the bytes consumed.
fn read_unsigned(
    bytes: &[u8],
    bytes_max: usize,
    value_bits: u32,
) -> Result<(u64, usize), VarintError> {
    let mut value: u64 = 0;
    for index in 0..bytes_max {
        let byte = *bytes.get(index).ok_or(VarintError::Truncated)?;
        let shift = 7 * u32::try_from(index).expect("index < bytes_max <= 10");
        let payload = u64::from(byte & 0x7f);
        // Bits that would land at or above `value_bits` mean the encoding is not of this type.
        if shift + 7 > value_bits && payload >> (value_bits - shift) != 0 {
            return Err(VarintError::TooLong);
        }
        value |= payload << shift;
        if byte & 0x80 == 0 {
            return Ok((value, index + 1));
        }
    }
    Err(VarintError::TooLong)
}

/// Decodes a zigzag `varint` (i32) from the start of `bytes`; returns the value and bytes consumed.
pub(crate) fn read_varint(bytes: &[u8]) -> Result<(i32, usize), VarintError> {
    let (raw, used) = read_unsigned(bytes, VARINT_BYTES_MAX, 32)?;
    let raw = u32::try_from(raw).expect("read_unsigned keeps the value within 32 bits");
    // Zigzag: the low bit is the sign, the rest is the magnitude (or its complement).
    let value = (raw >> 1) as i32 ^ -((raw & 1) as i32);
    Ok((value, used))
}

/// Decodes a zigzag `varlong` (i64) from the start of `bytes`; returns the value and bytes consumed.
pub(crate) fn read_varlong(bytes: &[u8]) -> Result<(i64, usize), VarintError> {
    let (raw, used) = read_unsigned(bytes, VARLONG_BYTES_MAX, 64)?;
    let value = (raw >> 1) as i64 ^ -((raw & 1) as i64);
    Ok((value, used))
}

fn zigzag32(value: i32) -> u64 {
    u64::from(((value << 1) ^ (value >> 31)) as u32)
}

fn zigzag64(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn write_unsigned(out: &mut Vec<u8>, mut raw: u64) {
    while raw >= 0x80 {
        out.push((raw as u8 & 0x7f) | 0x80);
        raw >>= 7;
    }
    out.push(raw as u8);
}

fn unsigned_len(raw: u64) -> usize {
    // One byte per started group of 7 significant bits; zero still takes a byte.
    let bits = 64 - raw.leading_zeros() as usize;
    bits.div_ceil(7).max(1)
}

/// Appends the minimal zigzag `varint` encoding of `value`.
pub(crate) fn write_varint(out: &mut Vec<u8>, value: i32) {
    write_unsigned(out, zigzag32(value));
}

/// Appends the minimal zigzag `varlong` encoding of `value`.
pub(crate) fn write_varlong(out: &mut Vec<u8>, value: i64) {
    write_unsigned(out, zigzag64(value));
}

/// Bytes [`write_varint`] writes for `value`.
pub(crate) fn varint_len(value: i32) -> usize {
    unsigned_len(zigzag32(value))
}

/// Bytes [`write_varlong`] writes for `value`.
pub(crate) fn varlong_len(value: i64) -> usize {
    unsigned_len(zigzag64(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encodings() {
        // Goal: match the zigzag examples from the Kafka/protobuf documentation byte for byte.
        let cases: &[(i32, &[u8])] = &[
            (0, &[0x00]),
            (-1, &[0x01]),
            (1, &[0x02]),
            (-2, &[0x03]),
            (63, &[0x7e]),
            (-64, &[0x7f]),
            (64, &[0x80, 0x01]),
            (300, &[0xd8, 0x04]),
            (i32::MAX, &[0xfe, 0xff, 0xff, 0xff, 0x0f]),
            (i32::MIN, &[0xff, 0xff, 0xff, 0xff, 0x0f]),
        ];
        for &(value, encoded) in cases {
            let mut out = Vec::new();
            write_varint(&mut out, value);
            assert_eq!(out, encoded, "encoding {value}");
            assert_eq!(varint_len(value), encoded.len());
            assert_eq!(read_varint(encoded), Ok((value, encoded.len())));
        }
    }

    #[test]
    fn varlong_extremes_take_ten_bytes() {
        // Goal: the 10-byte boundary of varlong is accepted and round-trips.
        for value in [i64::MIN, i64::MAX] {
            let mut out = Vec::new();
            write_varlong(&mut out, value);
            assert_eq!(out.len(), VARLONG_BYTES_MAX);
            assert_eq!(read_varlong(&out), Ok((value, VARLONG_BYTES_MAX)));
        }
    }

    #[test]
    fn rejects_over_long_and_truncated() {
        // Goal: a corrupt varint is an error, never a panic or a silently truncated value.
        assert_eq!(read_varint(&[]), Err(VarintError::Truncated));
        assert_eq!(read_varint(&[0x80, 0x80]), Err(VarintError::Truncated));
        assert_eq!(read_varint(&[0x80; 6]), Err(VarintError::TooLong));
        // Fifth byte may carry only 4 value bits for an i32.
        assert_eq!(read_varint(&[0xff, 0xff, 0xff, 0xff, 0x1f]), Err(VarintError::TooLong));
        assert_eq!(read_varlong(&[0x80; 11]), Err(VarintError::TooLong));
        let mut ten = [0xff_u8; 10];
        ten[9] = 0x02; // Only one value bit is left for the tenth byte of an i64.
        assert_eq!(read_varlong(&ten), Err(VarintError::TooLong));
    }

    #[test]
    fn accepts_non_minimal_encodings() {
        // Goal: like Kafka, a zero-padded encoding decodes (it is longer, not different).
        assert_eq!(read_varint(&[0x80, 0x80, 0x80, 0x80, 0x00]), Ok((0, 5)));
    }

    proptest! {
        #[test]
        fn varint_round_trips(value: i32, tail in proptest::collection::vec(any::<u8>(), 0..4)) {
            let mut out = Vec::new();
            write_varint(&mut out, value);
            prop_assert_eq!(out.len(), varint_len(value));
            out.extend_from_slice(&tail);
            prop_assert_eq!(read_varint(&out), Ok((value, varint_len(value))));
        }

        #[test]
        fn varlong_round_trips(value: i64) {
            let mut out = Vec::new();
            write_varlong(&mut out, value);
            prop_assert_eq!(out.len(), varlong_len(value));
            prop_assert_eq!(read_varlong(&out), Ok((value, out.len())));
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..12)) {
            if let Ok((_, used)) = read_varint(&bytes) {
                prop_assert!(used <= VARINT_BYTES_MAX);
            }
            if let Ok((_, used)) = read_varlong(&bytes) {
                prop_assert!(used <= VARLONG_BYTES_MAX);
            }
        }
    }
}
