//! The sparse per-segment indexes: offset → byte position, and timestamp → offset.
//!
//! Both are derived from the segment's data file and can be rebuilt from it. An entry is added
//! at most once per batch, when at least `index_interval_bytes` were appended since the previous
//! one, and always points at the first byte of a batch. Entries are strictly increasing in
//! offset and position (and, in the time index, in timestamp); [`decode_offset_entries`] and
//! [`decode_time_entries`] check that before an index read from disk is trusted.
//!
//! Layouts (big-endian, drawn in `docs/format.md`):
//! - offset index entry, 8 bytes: relative offset `u32` | position `u32`;
//! - time index entry, 12 bytes: timestamp `i64` (largest record timestamp so far in the
//!   segment) | relative offset `u32` of the batch where that timestamp was seen.

/// Bytes per offset-index entry.
pub const OFFSET_ENTRY_BYTES: usize = 8;
/// Bytes per time-index entry.
pub const TIME_ENTRY_BYTES: usize = 12;

/// An offset-index entry: the batch starting at `relative_offset` begins at byte `position`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    /// The batch's base offset minus the segment's base offset.
    pub relative_offset: u32,
    /// The batch's first byte in the data file.
    pub position: u32,
}

/// A time-index entry: no record before the batch at `relative_offset` has a timestamp above
/// `timestamp_ms`, and that batch's records reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    /// The largest record timestamp in the segment up to and including this batch.
    pub timestamp_ms: i64,
    /// The batch's base offset minus the segment's base offset.
    pub relative_offset: u32,
}

impl OffsetEntry {
    /// The entry's on-disk bytes.
    pub fn encode(self) -> [u8; OFFSET_ENTRY_BYTES] {
        let mut bytes = [0; OFFSET_ENTRY_BYTES];
        bytes[..4].copy_from_slice(&self.relative_offset.to_be_bytes());
        bytes[4..].copy_from_slice(&self.position.to_be_bytes());
        bytes
    }
}

impl TimeEntry {
    /// The entry's on-disk bytes.
    pub fn encode(self) -> [u8; TIME_ENTRY_BYTES] {
        let mut bytes = [0; TIME_ENTRY_BYTES];
        bytes[..8].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        bytes[8..].copy_from_slice(&self.relative_offset.to_be_bytes());
        bytes
    }

    /// Decodes one entry from exactly [`TIME_ENTRY_BYTES`] bytes.
    pub fn decode(bytes: &[u8; TIME_ENTRY_BYTES]) -> Self {
        let (timestamp, offset) = bytes.split_at(8);
        Self {
            timestamp_ms: i64::from_be_bytes(timestamp.try_into().expect("split at 8 of 12")),
            relative_offset: u32::from_be_bytes(offset.try_into().expect("4 bytes remain")),
        }
    }
}

/// Decodes an offset index read from disk, checking every entry against the segment: strictly
/// increasing, positions inside `data_bytes`, relative offsets below `relative_offset_end`.
///
/// # Errors
/// A sentence saying which entry breaks which rule; the caller then rebuilds the index.
pub fn decode_offset_entries(
    bytes: &[u8],
    data_bytes: u64,
    relative_offset_end: u64,
) -> Result<Vec<OffsetEntry>, String> {
    if !bytes.len().is_multiple_of(OFFSET_ENTRY_BYTES) {
        return Err(format!("length {} is not a multiple of {OFFSET_ENTRY_BYTES}", bytes.len()));
    }
    let mut entries: Vec<OffsetEntry> = Vec::with_capacity(bytes.len() / OFFSET_ENTRY_BYTES);
    for (index, chunk) in bytes.chunks_exact(OFFSET_ENTRY_BYTES).enumerate() {
        let (offset, position) = chunk.split_at(4);
        let entry = OffsetEntry {
            relative_offset: u32::from_be_bytes(offset.try_into().expect("4 of 8")),
            position: u32::from_be_bytes(position.try_into().expect("4 of 8")),
        };
        let increasing = entries.last().is_none_or(|last| {
            entry.relative_offset > last.relative_offset && entry.position > last.position
        });
        if !increasing
            || u64::from(entry.position) >= data_bytes
            || u64::from(entry.relative_offset) >= relative_offset_end
        {
            return Err(format!("entry {index} ({entry:?}) is out of order or out of range"));
        }
        entries.push(entry);
    }
    Ok(entries)
}

/// Decodes a time index read from disk with the same kind of checks as
/// [`decode_offset_entries`].
///
/// # Errors
/// A sentence saying which entry breaks which rule.
pub fn decode_time_entries(
    bytes: &[u8],
    relative_offset_end: u64,
) -> Result<Vec<TimeEntry>, String> {
    if !bytes.len().is_multiple_of(TIME_ENTRY_BYTES) {
        return Err(format!("length {} is not a multiple of {TIME_ENTRY_BYTES}", bytes.len()));
    }
    let mut entries: Vec<TimeEntry> = Vec::with_capacity(bytes.len() / TIME_ENTRY_BYTES);
    for (index, chunk) in bytes.chunks_exact(TIME_ENTRY_BYTES).enumerate() {
        let entry = TimeEntry::decode(chunk.try_into().expect("chunks_exact gives 12"));
        let increasing = entries.last().is_none_or(|last| {
            entry.timestamp_ms > last.timestamp_ms && entry.relative_offset >= last.relative_offset
        });
        if !increasing || u64::from(entry.relative_offset) >= relative_offset_end {
            return Err(format!("entry {index} ({entry:?}) is out of order or out of range"));
        }
        entries.push(entry);
    }
    Ok(entries)
}

/// A segment's two indexes in memory.
#[derive(Debug, Clone, Default)]
pub struct SegmentIndex {
    /// Offset entries, increasing.
    pub offsets: Vec<OffsetEntry>,
    /// Time entries, increasing.
    pub times: Vec<TimeEntry>,
}

impl SegmentIndex {
    /// The byte position to start scanning from for `relative_offset`: the position of the last
    /// entry at or below it, or 0.
    pub fn position_for(&self, relative_offset: u64) -> u64 {
        let after = self
            .offsets
            .partition_point(|entry| u64::from(entry.relative_offset) <= relative_offset);
        after.checked_sub(1).map_or(0, |index| u64::from(self.offsets[index].position))
    }

    /// The relative offset to start scanning from to find the first record at or after
    /// `timestamp_ms`: the batch of the last entry whose timestamp is below it, or 0. Every
    /// batch before that one holds only older records.
    pub fn relative_offset_for_time(&self, timestamp_ms: i64) -> u64 {
        let below = self.times.partition_point(|entry| entry.timestamp_ms < timestamp_ms);
        below.checked_sub(1).map_or(0, |index| u64::from(self.times[index].relative_offset))
    }

    /// How many offset entries point below `position` (those a checkpoint at `position` covers).
    pub fn offset_entries_below(&self, position: u64) -> usize {
        self.offsets.partition_point(|entry| u64::from(entry.position) < position)
    }

    /// The largest timestamp the time index has seen, if any.
    pub fn max_timestamp(&self) -> Option<i64> {
        self.times.last().map(|entry| entry.timestamp_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_pick_the_entry_at_or_below() {
        // Pins the boundary rules the read path relies on.
        let index = SegmentIndex {
            offsets: vec![
                OffsetEntry { relative_offset: 10, position: 100 },
                OffsetEntry { relative_offset: 20, position: 200 },
            ],
            times: vec![
                TimeEntry { timestamp_ms: 5, relative_offset: 0 },
                TimeEntry { timestamp_ms: 9, relative_offset: 20 },
            ],
        };
        assert_eq!(index.position_for(9), 0);
        assert_eq!(index.position_for(10), 100);
        assert_eq!(index.position_for(25), 200);
        assert_eq!(index.relative_offset_for_time(5), 0);
        assert_eq!(index.relative_offset_for_time(9), 0);
        assert_eq!(index.relative_offset_for_time(10), 20);
        assert_eq!(index.offset_entries_below(200), 1);
    }

    #[test]
    fn decoding_refuses_disorder_and_overflow() {
        // A torn or stale index must be detected, not trusted.
        let good = [OffsetEntry { relative_offset: 1, position: 10 }.encode()].concat();
        assert!(decode_offset_entries(&good, 11, 2).is_ok());
        assert!(decode_offset_entries(&good, 10, 2).is_err());
        assert!(decode_offset_entries(&good, 11, 1).is_err());
        let backwards = [
            OffsetEntry { relative_offset: 2, position: 20 }.encode(),
            OffsetEntry { relative_offset: 1, position: 30 }.encode(),
        ]
        .concat();
        assert!(decode_offset_entries(&backwards, 100, 100).is_err());
        assert!(decode_offset_entries(&good[..7], 100, 100).is_err());
        let times = [TimeEntry { timestamp_ms: 3, relative_offset: 0 }.encode()].concat();
        assert_eq!(decode_time_entries(&times, 1).map(|entries| entries.len()), Ok(1));
        assert!(decode_time_entries(&[times.clone(), times].concat(), 1).is_err());
    }
}
