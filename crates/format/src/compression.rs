//! The batch `attributes` field: compression codec bits and the flag bits.
//!
//! Layout of the i16 (bit 0 is least significant): bits 0-2 codec (0 none, 1 gzip, 2 snappy, 3 lz4,
//! 4 zstd), bit 3 timestamp type (0 CreateTime, 1 LogAppendTime), bit 4 transactional, bit 5 control,
//! bit 6 has delete horizon. Higher bits are unused and ignored, as Kafka does.
//!
//! This file only names codecs; it does not compress or decompress anything. Sluice accepts only
//! uncompressed batches for now, and refuses the others by name rather than misreading them.

use crate::error::BatchError;

/// Mask of the codec bits (0-2).
pub(crate) const ATTRIBUTE_COMPRESSION_MASK: i16 = 0b111;
/// Set when the broker, not the producer, stamped the timestamps.
pub(crate) const ATTRIBUTE_LOG_APPEND_TIME: i16 = 1 << 3;
/// Set on batches written inside a transaction.
pub(crate) const ATTRIBUTE_TRANSACTIONAL: i16 = 1 << 4;
/// Set on transaction markers (commit/abort), which are not user records.
pub(crate) const ATTRIBUTE_CONTROL: i16 = 1 << 5;

/// The compression codec named by a batch's attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Records are stored as-is.
    None,
    /// gzip (codec 1).
    Gzip,
    /// Snappy (codec 2).
    Snappy,
    /// LZ4 frame format (codec 3).
    Lz4,
    /// Zstandard (codec 4).
    Zstd,
}

impl Compression {
    /// Decodes the codec bits (0-2) of `attributes`.
    ///
    /// # Errors
    /// [`BatchError::UnknownCompression`] for codec values 5, 6 and 7, which Kafka does not define.
    pub fn from_attributes(attributes: i16) -> Result<Compression, BatchError> {
        let bits = u8::try_from(attributes & ATTRIBUTE_COMPRESSION_MASK)
            .expect("masked to 3 bits, so it fits in a u8");
        match bits {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Gzip),
            2 => Ok(Compression::Snappy),
            3 => Ok(Compression::Lz4),
            4 => Ok(Compression::Zstd),
            _ => Err(BatchError::UnknownCompression { bits }),
        }
    }

    /// The codec's lowercase name, as Kafka's `compression.type` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_bits_ignore_the_flag_bits() {
        // Goal: flags set alongside the codec never change which codec is read.
        let flags = ATTRIBUTE_LOG_APPEND_TIME | ATTRIBUTE_TRANSACTIONAL | ATTRIBUTE_CONTROL;
        assert_eq!(Compression::from_attributes(flags | 4), Ok(Compression::Zstd));
        assert_eq!(Compression::from_attributes(flags), Ok(Compression::None));
        assert_eq!(Compression::from_attributes(2).map(Compression::name), Ok("snappy"));
    }

    #[test]
    fn undefined_codecs_are_errors() {
        // Goal: codec values 5-7 are reported, not mapped to some codec.
        for bits in 5..=7u8 {
            assert_eq!(
                Compression::from_attributes(i16::from(bits)),
                Err(BatchError::UnknownCompression { bits })
            );
        }
    }
}
