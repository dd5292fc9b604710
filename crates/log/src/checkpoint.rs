//! The recovery checkpoint: how much of the active segment is known to be synced and valid, so
//! that opening a partition rescans only the tail past it.
//!
//! The file is replaced atomically (write a temporary file, fdatasync it, rename it over the old
//! one, sync the directory), so a crash leaves either the old or the new checkpoint. Its CRC32C
//! catches anything else. A checkpoint that is missing, fails its CRC, or does not fit the
//! segment files is ignored and the whole active segment is rescanned; it is an optimisation,
//! never the source of truth.
//!
//! Layout (big-endian, 52 bytes; drawn in `docs/format.md`):
//! magic `SLCP` | version `u16` = 1 | reserved `u16` = 0 | segment base offset `u64` |
//! position `u64` | next offset `u64` | max timestamp `i64` | offset-index entries `u32` |
//! time-index entries `u32` | CRC32C of the 48 bytes before it `u32`.

use std::io;
use std::path::Path;

use crate::storage::{OpenMode, Storage};

/// The checkpoint's file name in the partition directory.
pub const CHECKPOINT_FILE: &str = "recovery-checkpoint";
/// The temporary name a checkpoint written while rolling, opening or closing takes before the
/// rename (under the state lock).
pub const CHECKPOINT_TEMP_FILE: &str = "recovery-checkpoint.tmp";
/// The temporary name a checkpoint written by the sync path takes. It differs from
/// [`CHECKPOINT_TEMP_FILE`] because the two writers do not share a lock; if the sync path's
/// older checkpoint lands last, recovery merely rescans more (see `docs/format.md`).
pub const CHECKPOINT_SYNC_TEMP_FILE: &str = "recovery-checkpoint.sync.tmp";
const MAGIC: &[u8; 4] = b"SLCP";
const VERSION: u16 = 1;
/// Size of the checkpoint file.
pub const CHECKPOINT_BYTES: usize = 52;

/// What the checkpoint records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// The base offset of the segment it describes (the active one when written).
    pub segment_base_offset: u64,
    /// Bytes of that segment's data file that are synced and hold whole, valid batches.
    pub position: u64,
    /// The offset after the last record below `position`.
    pub next_offset: u64,
    /// The largest record timestamp below `position` (`i64::MIN` if none).
    pub max_timestamp: i64,
    /// Offset-index entries, all pointing below `position`, that were synced.
    pub offset_index_entries: u32,
    /// Time-index entries that were synced and describe batches below `position`.
    pub time_index_entries: u32,
}

impl Checkpoint {
    /// The checkpoint's bytes.
    pub fn encode(&self) -> [u8; CHECKPOINT_BYTES] {
        let mut bytes = [0u8; CHECKPOINT_BYTES];
        bytes[0..4].copy_from_slice(MAGIC);
        bytes[4..6].copy_from_slice(&VERSION.to_be_bytes());
        bytes[8..16].copy_from_slice(&self.segment_base_offset.to_be_bytes());
        bytes[16..24].copy_from_slice(&self.position.to_be_bytes());
        bytes[24..32].copy_from_slice(&self.next_offset.to_be_bytes());
        bytes[32..40].copy_from_slice(&self.max_timestamp.to_be_bytes());
        bytes[40..44].copy_from_slice(&self.offset_index_entries.to_be_bytes());
        bytes[44..48].copy_from_slice(&self.time_index_entries.to_be_bytes());
        let crc = crc32c::crc32c(&bytes[..48]);
        bytes[48..52].copy_from_slice(&crc.to_be_bytes());
        bytes
    }

    /// Decodes a checkpoint, or `None` if the bytes are not a valid one.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != CHECKPOINT_BYTES || &bytes[0..4] != MAGIC {
            return None;
        }
        let u64_at = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let u32_at = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let version = u16::from_be_bytes([bytes[4], bytes[5]]);
        if version != VERSION || crc32c::crc32c(&bytes[..48]) != u32_at(48) {
            return None;
        }
        Some(Self {
            segment_base_offset: u64_at(8),
            position: u64_at(16),
            next_offset: u64_at(24),
            max_timestamp: u64_at(32) as i64,
            offset_index_entries: u32_at(40),
            time_index_entries: u32_at(44),
        })
    }

    /// Reads the checkpoint in `dir`, or `None` if it is missing or invalid.
    ///
    /// # Errors
    /// Storage failures other than a missing file.
    pub fn read(storage: &dyn Storage, dir: &Path) -> io::Result<Option<Self>> {
        let file = match storage.open(&dir.join(CHECKPOINT_FILE), OpenMode::Read) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        let mut bytes = [0u8; CHECKPOINT_BYTES];
        if file.len()? != CHECKPOINT_BYTES as u64 {
            return Ok(None);
        }
        file.read_exact_at(&mut bytes, 0)?;
        Ok(Self::decode(&bytes))
    }

    /// Replaces the checkpoint in `dir` atomically and durably, through `temporary_name`.
    ///
    /// # Errors
    /// Any storage failure; the previous checkpoint then still stands.
    pub fn write_as(
        &self,
        storage: &dyn Storage,
        dir: &Path,
        temporary_name: &str,
    ) -> io::Result<()> {
        let temporary = dir.join(temporary_name);
        let file = storage.open(&temporary, OpenMode::CreateTruncate)?;
        file.write_all_at(&self.encode(), 0)?;
        file.sync_data()?;
        storage.rename(&temporary, &dir.join(CHECKPOINT_FILE))?;
        storage.sync_dir(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_any_flipped_bit() {
        // A damaged checkpoint must read as "none", never as a wrong position.
        let checkpoint = Checkpoint {
            segment_base_offset: 7,
            position: 4096,
            next_offset: 99,
            max_timestamp: -5,
            offset_index_entries: 3,
            time_index_entries: 2,
        };
        let bytes = checkpoint.encode();
        assert_eq!(Checkpoint::decode(&bytes), Some(checkpoint));
        for bit in 0..CHECKPOINT_BYTES * 8 {
            let mut flipped = bytes;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(Checkpoint::decode(&flipped), None, "bit {bit}");
        }
    }
}
