//! One segment: a data file of whole record batches plus its two sparse indexes, and the scan
//! that checks a data file batch by batch.
//!
//! Invariants:
//! - the data file is a concatenation of valid RecordBatch v2 batches with increasing offsets
//!   (strictly contiguous in the active segment; compaction may leave gaps in closed ones);
//! - only the active segment is ever appended to; a closed segment was fully synced, data and
//!   indexes, before the next segment was created, and changes only by compaction's atomic swap;
//! - an index entry always points at the first byte of a batch.
//!
//! File names are the segment's base offset, zero-padded to 20 digits, as in Kafka:
//! `00000000000000000000.log`, `.index`, `.timeindex`, plus the derived key index `.keys`
//! (see `keys.rs`).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sluice_format::{validate, BatchHeader, LOG_OVERHEAD_BYTES};

use crate::config::BATCH_BYTES_LIMIT;
use crate::index::{
    decode_offset_entries, decode_time_entries, OffsetEntry, SegmentIndex, TimeEntry,
};
use crate::keys::KeyIndex;
use crate::storage::{FileHandle, OpenMode, Storage, StorageFile};

/// Suffix of a segment's data file.
pub const DATA_SUFFIX: &str = ".log";
/// Suffix of a segment's offset index.
pub const OFFSET_INDEX_SUFFIX: &str = ".index";
/// Suffix of a segment's time index.
pub const TIME_INDEX_SUFFIX: &str = ".timeindex";
/// Suffix of a closed segment's key index.
pub const KEYS_SUFFIX: &str = ".keys";
/// Suffix compaction gives the files of a segment being rewritten, until the swap.
pub const CLEANED_SUFFIX: &str = ".cleaned";
/// Suffix of an index file rebuilt by a read, until it is renamed into place.
pub const REBUILT_SUFFIX: &str = ".rebuilt";
/// Bytes the recovery scan reads at once.
const SCAN_CHUNK_BYTES: usize = 1024 * 1024;

/// The kinds of segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentFile {
    /// Record batches.
    Data,
    /// Offset → position entries.
    OffsetIndex,
    /// Timestamp → offset entries.
    TimeIndex,
    /// Key hash → offsets, with a filter (closed segments only; derived).
    Keys,
}

impl SegmentFile {
    fn suffix(self) -> &'static str {
        match self {
            Self::Data => DATA_SUFFIX,
            Self::OffsetIndex => OFFSET_INDEX_SUFFIX,
            Self::TimeIndex => TIME_INDEX_SUFFIX,
            Self::Keys => KEYS_SUFFIX,
        }
    }

    /// The file's name for the segment at `base_offset`.
    pub fn name(self, base_offset: u64) -> String {
        format!("{base_offset:020}{}", self.suffix())
    }

    /// The file's path in `dir` for the segment at `base_offset`.
    pub fn path(self, dir: &Path, base_offset: u64) -> PathBuf {
        dir.join(self.name(base_offset))
    }

    /// Parses a segment file name into its base offset and kind.
    pub fn parse(name: &str) -> Option<(u64, SegmentFile)> {
        [Self::Data, Self::OffsetIndex, Self::TimeIndex, Self::Keys].into_iter().find_map(|kind| {
            let digits = name.strip_suffix(kind.suffix())?;
            let valid = digits.len() == 20 && digits.bytes().all(|byte| byte.is_ascii_digit());
            valid.then(|| digits.parse().ok().map(|base| (base, kind))).flatten()
        })
    }
}

/// Reads a file forward in large chunks, so scanning many small batches costs few system calls.
pub struct ChunkReader<'a> {
    file: &'a dyn StorageFile,
    end: u64,
    buffer: Vec<u8>,
    buffer_position: u64,
}

impl<'a> ChunkReader<'a> {
    /// A reader of `file` up to byte `end`.
    pub fn new(file: &'a dyn StorageFile, end: u64) -> Self {
        Self { file, end, buffer: Vec::new(), buffer_position: 0 }
    }

    /// The `len` bytes at `position`, or `None` if they run past the end.
    pub fn bytes(&mut self, position: u64, len: usize) -> io::Result<Option<&[u8]>> {
        if position + len as u64 > self.end {
            return Ok(None);
        }
        let buffered_end = self.buffer_position + self.buffer.len() as u64;
        if position < self.buffer_position || position + len as u64 > buffered_end {
            let want = len.max(SCAN_CHUNK_BYTES) as u64;
            let count = want.min(self.end - position);
            self.buffer.resize(usize::try_from(count).expect("chunk fits in memory"), 0);
            self.file.read_exact_at(&mut self.buffer, position)?;
            self.buffer_position = position;
        }
        let start = usize::try_from(position - self.buffer_position).expect("inside buffer");
        Ok(Some(&self.buffer[start..start + len]))
    }
}

/// Where and why a scan stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanEnd {
    /// The byte after the last valid batch.
    pub position: u64,
    /// The offset after the last valid batch.
    pub next_offset: u64,
    /// Why the scan stopped before the end of the file, if it did.
    pub fault: Option<String>,
}

/// How strictly a scan checks batch offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continuity {
    /// Each batch starts exactly at the previous batch's next offset (the active segment).
    Contiguous,
    /// Each batch starts at or after it (compacted segments may have gaps).
    Increasing,
}

/// Checks every batch of `file` from `start` to `end`: length, magic, CRC32C and offsets.
/// Calls `visit(position, header, bytes)` for each valid batch and stops at the first fault.
///
/// # Errors
/// Storage failures only; a bad batch is reported in [`ScanEnd::fault`].
pub fn scan(
    file: &dyn StorageFile,
    start: u64,
    end: u64,
    next_offset: u64,
    continuity: Continuity,
    mut visit: impl FnMut(u64, &BatchHeader, &[u8]),
) -> io::Result<ScanEnd> {
    let mut reader = ChunkReader::new(file, end);
    let mut position = start;
    let mut next = next_offset;
    let fault = loop {
        if position == end {
            break None;
        }
        let Some(prefix) = reader.bytes(position, LOG_OVERHEAD_BYTES)? else {
            break Some(format!("{} stray bytes at the end", end - position));
        };
        let total = match BatchHeader::peek_total_bytes(prefix) {
            Ok(total) if total <= u64::from(BATCH_BYTES_LIMIT) => total,
            Ok(total) => break Some(format!("batch claims {total} bytes, over the limit")),
            Err(error) => break Some(error.to_string()),
        };
        let Some(bytes) = reader.bytes(position, usize::try_from(total).expect("under limit"))?
        else {
            break Some(format!("batch of {total} bytes is cut off by the end of the file"));
        };
        let header = match validate(bytes) {
            Ok(header) => header,
            Err(error) => break Some(error.to_string()),
        };
        let base = u64::try_from(header.base_offset).unwrap_or(u64::MAX);
        let in_order = match continuity {
            Continuity::Contiguous => base == next,
            Continuity::Increasing => base >= next && base != u64::MAX,
        };
        if !in_order {
            break Some(format!("batch has base offset {base} where {next} was expected"));
        }
        visit(position, &header, bytes);
        next = base + header.last_offset_delta as u64 + 1;
        position += total;
    };
    Ok(ScanEnd { position, next_offset: next, fault })
}

/// Decides when a batch gets index entries; shared by appends, recovery and rebuilds so the
/// three always build the same index.
#[derive(Debug, Clone)]
pub struct IndexBuilder {
    interval_bytes: u64,
    bytes_since_entry: u64,
    /// The largest record timestamp seen in the segment (`i64::MIN` before any).
    pub max_timestamp: i64,
    /// Relative offset of the batch where `max_timestamp` was reached.
    pub max_timestamp_relative_offset: u32,
}

impl IndexBuilder {
    /// A builder for an empty segment.
    pub fn new(interval_bytes: u32) -> Self {
        Self {
            interval_bytes: u64::from(interval_bytes),
            bytes_since_entry: 0,
            max_timestamp: i64::MIN,
            max_timestamp_relative_offset: 0,
        }
    }

    /// A builder for a segment whose first `position` bytes are already indexed by `index`
    /// (recovery resuming from a checkpoint).
    pub fn resume(
        interval_bytes: u32,
        index: &SegmentIndex,
        position: u64,
        max_timestamp: i64,
    ) -> Self {
        let last_entry = index.offsets.last().map_or(0, |entry| u64::from(entry.position));
        let mut builder = Self::new(interval_bytes);
        // Slightly overcounts (the last indexed batch's own bytes are included), which only
        // moves the next entry a little earlier.
        builder.bytes_since_entry = position - last_entry;
        builder.max_timestamp = max_timestamp;
        builder.max_timestamp_relative_offset =
            index.times.last().map_or(0, |entry| entry.relative_offset);
        builder
    }

    /// Records a batch at `position`; returns the entries it adds to `index` (already pushed).
    pub fn observe(
        &mut self,
        index: &mut SegmentIndex,
        relative_offset: u32,
        position: u64,
        header: &BatchHeader,
    ) -> (Option<OffsetEntry>, Option<TimeEntry>) {
        if header.max_timestamp > self.max_timestamp {
            self.max_timestamp = header.max_timestamp;
            self.max_timestamp_relative_offset = relative_offset;
        }
        let mut added = (None, None);
        if self.bytes_since_entry >= self.interval_bytes {
            let position = u32::try_from(position).expect("segment_bytes_max fits in u32");
            let entry = OffsetEntry { relative_offset, position };
            index.offsets.push(entry);
            added.0 = Some(entry);
            added.1 = self.time_entry(index);
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += header.total_bytes();
        added
    }

    /// The time entry that records the segment's largest timestamp, if the index lacks it (added
    /// at interval points and when the segment is closed).
    pub fn time_entry(&self, index: &mut SegmentIndex) -> Option<TimeEntry> {
        let newer = index.max_timestamp().is_none_or(|last| self.max_timestamp > last);
        if self.max_timestamp == i64::MIN || !newer {
            return None;
        }
        let entry = TimeEntry {
            timestamp_ms: self.max_timestamp,
            relative_offset: self.max_timestamp_relative_offset,
        };
        index.times.push(entry);
        Some(entry)
    }
}

/// The relative offset of `offset` in the segment at `base_offset`.
pub fn relative(offset: u64, base_offset: u64) -> u32 {
    u32::try_from(offset - base_offset).expect("a segment spans fewer than 2^32 offsets")
}

/// A closed segment as the partition remembers it between reads.
#[derive(Debug, Clone)]
pub struct ClosedSegment {
    /// The first offset the segment covers.
    pub base_offset: u64,
    /// The base offset of the next segment.
    pub next_offset: u64,
    /// The data file's size.
    pub size_bytes: u64,
    /// The largest record timestamp, from the time index (`None` if the index is missing or
    /// damaged; known after the segment is next loaded).
    pub max_timestamp: Option<i64>,
    /// How many times compaction has replaced the segment's files since the partition opened;
    /// a read that loaded the files across a replacement sees the count change and reloads.
    pub rewrites: u64,
}

/// A segment opened for reading: its data file and its indexes in memory.
#[derive(Debug)]
pub struct LoadedSegment {
    /// The data file.
    pub data: FileHandle,
    /// The indexes.
    pub index: SegmentIndex,
    /// Whether the indexes were rebuilt from the data file (and should be saved).
    pub rebuilt: bool,
    /// The key index, once a key lookup (or the roll that closed the segment) provided it.
    pub keys: Mutex<Option<Arc<KeyIndex>>>,
}

impl LoadedSegment {
    /// A loaded segment whose key index is not loaded yet.
    pub fn new(data: FileHandle, index: SegmentIndex, rebuilt: bool) -> Self {
        Self { data, index, rebuilt, keys: Mutex::new(None) }
    }
}

/// Reads a whole small file, or `None` if it does not exist.
pub fn read_whole(storage: &dyn Storage, path: &Path) -> io::Result<Option<Vec<u8>>> {
    let file = match storage.open(path, OpenMode::Read) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let mut bytes = vec![0; usize::try_from(file.len()?).expect("index fits in memory")];
    file.read_exact_at(&mut bytes, 0)?;
    Ok(Some(bytes))
}

/// Opens a closed segment for reading. Indexes that are missing or fail their checks are
/// rebuilt from the data file; the caller saves them with [`write_index_files`] once it knows
/// the segment was not replaced meanwhile.
///
/// # Errors
/// Storage failures.
pub fn load_closed(
    storage: &dyn Storage,
    dir: &Path,
    segment: &ClosedSegment,
    index_interval_bytes: u32,
) -> io::Result<LoadedSegment> {
    let base = segment.base_offset;
    let data = storage.open(&SegmentFile::Data.path(dir, base), OpenMode::Read)?;
    let size = data.len()?;
    let span = segment.next_offset - base;
    let offsets = read_whole(storage, &SegmentFile::OffsetIndex.path(dir, base))?
        .ok_or_else(|| "missing".to_owned())
        .and_then(|bytes| decode_offset_entries(&bytes, size, span));
    let times = read_whole(storage, &SegmentFile::TimeIndex.path(dir, base))?
        .ok_or_else(|| "missing".to_owned())
        .and_then(|bytes| decode_time_entries(&bytes, span));
    match (offsets, times) {
        (Ok(offsets), Ok(times)) if size == 0 || !times.is_empty() => {
            Ok(LoadedSegment::new(data, SegmentIndex { offsets, times }, false))
        }
        (offsets, times) => {
            let reason = offsets.err().or(times.err()).unwrap_or_else(|| "empty".to_owned());
            tracing::warn!(dir = %dir.display(), base, %reason, "rebuilding segment index");
            let index = rebuild_index(data.as_ref(), base, size, index_interval_bytes)?;
            Ok(LoadedSegment::new(data, index, true))
        }
    }
}

/// Builds a closed segment's index by scanning its data file.
fn rebuild_index(
    data: &dyn StorageFile,
    base: u64,
    size: u64,
    interval: u32,
) -> io::Result<SegmentIndex> {
    let mut index = SegmentIndex::default();
    let mut builder = IndexBuilder::new(interval);
    let end = scan(data, 0, size, base, Continuity::Increasing, |position, header, _| {
        let relative = relative(header.base_offset as u64, base);
        builder.observe(&mut index, relative, position, header);
    })?;
    if let Some(fault) = end.fault {
        // Closed segments were synced before the next one began; a fault here is damage after
        // the fact. Reads stop at it with a corruption error instead of serving past it.
        tracing::error!(base, position = end.position, %fault, "closed segment is damaged");
    }
    builder.time_entry(&mut index);
    Ok(index)
}

/// Replaces a segment's index files with `index` through a temporary name, durably.
///
/// # Errors
/// Storage failures; the old files (or none) then remain, and are rebuilt again when needed.
pub fn write_index_files(
    storage: &dyn Storage,
    dir: &Path,
    base: u64,
    index: &SegmentIndex,
) -> io::Result<()> {
    let offsets: Vec<u8> = index.offsets.iter().flat_map(|entry| entry.encode()).collect();
    let times: Vec<u8> = index.times.iter().flat_map(|entry| entry.encode()).collect();
    for (kind, bytes) in [(SegmentFile::OffsetIndex, offsets), (SegmentFile::TimeIndex, times)] {
        let path = kind.path(dir, base);
        let temporary = dir.join(format!("{}{REBUILT_SUFFIX}", kind.name(base)));
        let file = storage.open(&temporary, OpenMode::CreateTruncate)?;
        file.write_all_at(&bytes, 0)?;
        file.sync_data()?;
        storage.rename(&temporary, &path)?;
    }
    storage.sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip_and_reject_lookalikes() {
        // A stray file must never be mistaken for a segment.
        assert_eq!(SegmentFile::Data.name(42), "00000000000000000042.log");
        assert_eq!(
            SegmentFile::parse("00000000000000000042.timeindex"),
            Some((42, SegmentFile::TimeIndex))
        );
        assert_eq!(SegmentFile::parse("00000000000000000042.keys"), Some((42, SegmentFile::Keys)));
        assert_eq!(SegmentFile::parse("0000000000000000042.log"), None);
        assert_eq!(SegmentFile::parse("0000000000000000004x.log"), None);
        assert_eq!(SegmentFile::parse("00000000000000000042.log.cleaned"), None);
    }
}
