//! The per-segment key index: which offsets of a segment hold records with a given key, so that
//! reading one key's records (an event stream) does not scan the partition.
//!
//! Closed segments have a `.keys` file: a header, a bloom-style filter over the 64-bit hash of
//! every indexed key (so a lookup skips a segment that lacks the key without searching it), the
//! sorted entries `(key hash, relative offset)`, and a CRC32C of all of it. The active segment's
//! keys live in memory ([`ActiveKeys`]), maintained by appends; its file is written when it rolls.
//!
//! The index is derived: the segment's data file is the truth. A `.keys` file that is missing,
//! fails its CRC or does not describe the data file as it is now (base offset, data bytes) is
//! rebuilt from the data file when a lookup first needs it (and logged); nothing in appends,
//! reads or recovery depends on it. Lookups return offsets whose key *hash* matches; the public
//! [`Partition::key_offsets`] then reads those records and keeps only true matches.
//!
//! Only records with a key in non-control batches are indexed.
//!
//! The hash is 64-bit FNV-1a of the key bytes (written here; no dependency). The filter derives
//! its bit positions from a splitmix64 finalisation of that hash, split into two 32-bit halves
//! `h1`, `h2` (Kirsch-Mitzenmacher double hashing: bit `i` is `(h1 + i * h2) mod bits`).
//!
//! Layout (big-endian, drawn in `docs/format.md`):
//! magic `SLKI` | version `u16` = 1 | hash functions `u16` | segment base offset `u64` |
//! data bytes `u64` | entry count `u32` | filter bytes `u32` | filter | entries (hash `u64`,
//! relative offset `u32`), strictly increasing | CRC32C of everything before it `u32`.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sluice_format::{records, BatchError, BatchHeader};

use crate::error::ReadError;
use crate::partition::{lock, Inner, Partition};
use crate::segment::{
    relative, scan, ClosedSegment, Continuity, LoadedSegment, SegmentFile, REBUILT_SUFFIX,
};
use crate::storage::{OpenMode, Storage, StorageFile};

const MAGIC: &[u8; 4] = b"SLKI";
const VERSION: u16 = 1;
/// Bytes of the `.keys` header, before the filter.
pub const KEYS_HEADER_BYTES: usize = 32;
/// Bytes per `.keys` entry.
pub const KEY_ENTRY_BYTES: usize = 12;
/// Filter bits per distinct key hash in a segment (about 1% false positives with
/// [`KEY_FILTER_HASHES`]).
pub const KEY_FILTER_BITS_PER_KEY: u64 = 10;
/// Bit positions set per key in the filter.
pub const KEY_FILTER_HASHES: u16 = 7;
/// Most hash functions a `.keys` file may declare (a larger count is treated as damage).
const KEY_FILTER_HASHES_LIMIT: u16 = 32;

/// The 64-bit FNV-1a hash of a key: what the key index stores and looks up.
pub fn key_hash(key: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The filter bit positions of `hash` in a filter of `bits` bits.
fn filter_bits(hash: u64, hashes: u16, bits: u64) -> impl Iterator<Item = u64> {
    // splitmix64's finaliser spreads FNV's weak low bits over the whole word.
    let mut mixed = hash;
    mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    mixed ^= mixed >> 31;
    let first = mixed & 0xffff_ffff;
    let step = (mixed >> 32) | 1;
    (0..u64::from(hashes)).map(move |index| first.wrapping_add(index.wrapping_mul(step)) % bits)
}

/// One indexed record: its key's hash and its offset relative to the segment's base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyEntry {
    /// [`key_hash`] of the record's key.
    pub hash: u64,
    /// The record's offset minus the segment's base offset.
    pub relative_offset: u32,
}

/// A closed segment's key index in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyIndex {
    base_offset: u64,
    data_bytes: u64,
    hashes: u16,
    filter: Vec<u8>,
    entries: Vec<KeyEntry>,
}

impl KeyIndex {
    /// The index of the segment at `base_offset` whose data file holds `data_bytes`, over
    /// `entries` (in any order).
    pub fn build(base_offset: u64, data_bytes: u64, mut entries: Vec<KeyEntry>) -> Self {
        entries.sort_unstable();
        entries.dedup();
        let mut distinct = 0u64;
        let mut previous = None;
        for entry in &entries {
            if previous != Some(entry.hash) {
                distinct += 1;
                previous = Some(entry.hash);
            }
        }
        let bits = (distinct * KEY_FILTER_BITS_PER_KEY).max(64).div_ceil(64) * 64;
        let mut filter = vec![0u8; usize::try_from(bits / 8).expect("filter fits in memory")];
        for entry in &entries {
            for bit in filter_bits(entry.hash, KEY_FILTER_HASHES, bits) {
                filter[(bit / 8) as usize] |= 1 << (bit % 8);
            }
        }
        Self { base_offset, data_bytes, hashes: KEY_FILTER_HASHES, filter, entries }
    }

    /// Whether the filter lets `hash` through (false positives possible, no false negatives).
    pub fn may_contain(&self, hash: u64) -> bool {
        let bits = self.filter.len() as u64 * 8;
        filter_bits(hash, self.hashes, bits)
            .all(|bit| self.filter[(bit / 8) as usize] & (1 << (bit % 8)) != 0)
    }

    /// The relative offsets indexed under `hash`, ascending. Does not consult the filter.
    pub fn relative_offsets(&self, hash: u64) -> impl Iterator<Item = u32> + '_ {
        let start = self.entries.partition_point(|entry| entry.hash < hash);
        self.entries[start..]
            .iter()
            .take_while(move |entry| entry.hash == hash)
            .map(|entry| entry.relative_offset)
    }

    /// How many records are indexed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no record is indexed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let count = u32::try_from(self.entries.len()).expect("a segment spans fewer than 2^32");
        let filter_bytes = u32::try_from(self.filter.len()).expect("filter under 4 GiB");
        let mut bytes = Vec::with_capacity(
            KEYS_HEADER_BYTES + self.filter.len() + self.entries.len() * KEY_ENTRY_BYTES + 4,
        );
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&VERSION.to_be_bytes());
        bytes.extend_from_slice(&self.hashes.to_be_bytes());
        bytes.extend_from_slice(&self.base_offset.to_be_bytes());
        bytes.extend_from_slice(&self.data_bytes.to_be_bytes());
        bytes.extend_from_slice(&count.to_be_bytes());
        bytes.extend_from_slice(&filter_bytes.to_be_bytes());
        bytes.extend_from_slice(&self.filter);
        for entry in &self.entries {
            bytes.extend_from_slice(&entry.hash.to_be_bytes());
            bytes.extend_from_slice(&entry.relative_offset.to_be_bytes());
        }
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_be_bytes());
        bytes
    }

    /// Decodes a `.keys` file, checking that it is whole (length, CRC), that it describes the
    /// segment at `base_offset` whose data file now holds `data_bytes`, that its entries are
    /// strictly increasing with relative offsets below `relative_offset_end`, and that the
    /// filter lets every entry through.
    ///
    /// # Errors
    /// A sentence saying which check failed; the caller then rebuilds the index.
    pub fn decode(
        bytes: &[u8],
        base_offset: u64,
        data_bytes: u64,
        relative_offset_end: u64,
    ) -> Result<Self, String> {
        if bytes.len() < KEYS_HEADER_BYTES + 4 {
            return Err(format!("{} bytes is shorter than a header", bytes.len()));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        let crc = u32::from_be_bytes(crc.try_into().expect("split 4 bytes off"));
        if crc32c::crc32c(body) != crc {
            return Err("CRC32C does not match".to_owned());
        }
        let u16_at = |at: usize| u16::from_be_bytes(body[at..at + 2].try_into().expect("2"));
        let u32_at = |at: usize| u32::from_be_bytes(body[at..at + 4].try_into().expect("4"));
        let u64_at = |at: usize| u64::from_be_bytes(body[at..at + 8].try_into().expect("8"));
        if &body[..4] != MAGIC || u16_at(4) != VERSION {
            return Err("wrong magic or version".to_owned());
        }
        let hashes = u16_at(6);
        if hashes == 0 || hashes > KEY_FILTER_HASHES_LIMIT {
            return Err(format!("{hashes} hash functions is out of range"));
        }
        if u64_at(8) != base_offset || u64_at(16) != data_bytes {
            return Err(format!(
                "describes segment {} of {} bytes, not {base_offset} of {data_bytes} bytes",
                u64_at(8),
                u64_at(16)
            ));
        }
        let count = u32_at(24) as usize;
        let filter_len = u32_at(28) as usize;
        let expected =
            KEYS_HEADER_BYTES as u64 + filter_len as u64 + count as u64 * KEY_ENTRY_BYTES as u64;
        if filter_len == 0 || !filter_len.is_multiple_of(8) || body.len() as u64 != expected {
            return Err(format!("{count} entries and a {filter_len}-byte filter do not fit"));
        }
        let filter = body[KEYS_HEADER_BYTES..KEYS_HEADER_BYTES + filter_len].to_vec();
        let mut index = Self { base_offset, data_bytes, hashes, filter, entries: Vec::new() };
        index.entries.reserve(count);
        for chunk in body[KEYS_HEADER_BYTES + filter_len..].chunks_exact(KEY_ENTRY_BYTES) {
            let (hash, offset) = chunk.split_at(8);
            let entry = KeyEntry {
                hash: u64::from_be_bytes(hash.try_into().expect("8 of 12")),
                relative_offset: u32::from_be_bytes(offset.try_into().expect("4 of 12")),
            };
            let increasing = index.entries.last().is_none_or(|last| entry > *last);
            if !increasing
                || u64::from(entry.relative_offset) >= relative_offset_end
                || !index.may_contain(entry.hash)
            {
                return Err(format!("entry {entry:?} is out of order, out of range or filtered"));
            }
            index.entries.push(entry);
        }
        Ok(index)
    }
}

/// The indexed keys of one batch: `(hash, offset delta from the batch's base offset)` for every
/// record with a key; nothing for a control batch.
///
/// # Errors
/// The record framing does not check out.
pub fn batch_keys(bytes: &[u8]) -> Result<Vec<(u64, u32)>, BatchError> {
    let iter = records(bytes)?;
    let header = *iter.header();
    if header.is_control() {
        return Ok(Vec::new());
    }
    let mut keys = Vec::new();
    for record in iter {
        let record = record?;
        if let Some(key) = record.key {
            let delta = u32::try_from(record.offset.wrapping_sub(header.base_offset)).unwrap_or(0);
            keys.push((key_hash(key), delta));
        }
    }
    Ok(keys)
}

/// The active segment's key index, in memory.
#[derive(Debug, Default)]
pub(crate) struct ActiveKeys {
    /// Relative offsets per key hash, ascending, of every record written to the segment from
    /// `unindexed_prefix` on (written, not necessarily visible: lookups cut at the high
    /// watermark).
    map: HashMap<u64, Vec<u32>>,
    records: usize,
    /// `(position, next offset)`: the segment's first `position` bytes are not in `map` yet
    /// (recovery resumed from a checkpoint there); the first lookup scans them.
    pub unindexed_prefix: Option<(u64, u64)>,
}

impl ActiveKeys {
    /// Records the key of the record at `relative_offset`.
    pub fn add(&mut self, hash: u64, relative_offset: u32) {
        self.map.entry(hash).or_default().push(relative_offset);
        self.records += 1;
    }

    /// Adds the keys of the unindexed prefix, all older than those already held.
    pub fn merge_prefix(&mut self, prefix: Vec<KeyEntry>) {
        let mut older: HashMap<u64, Vec<u32>> = HashMap::new();
        for entry in prefix {
            older.entry(entry.hash).or_default().push(entry.relative_offset);
        }
        for (hash, mut offsets) in older {
            self.records += offsets.len();
            let newer = self.map.remove(&hash).unwrap_or_default();
            offsets.extend(newer);
            self.map.insert(hash, offsets);
        }
        self.unindexed_prefix = None;
    }

    /// The relative offsets held for `hash` (the prefix must be merged).
    pub fn relative_offsets(&self, hash: u64) -> &[u32] {
        self.map.get(&hash).map_or(&[], Vec::as_slice)
    }

    /// The closed segment's index, or `None` while the prefix is unindexed.
    pub fn to_index(&self, base_offset: u64, data_bytes: u64) -> Option<KeyIndex> {
        if self.unindexed_prefix.is_some() {
            return None;
        }
        let mut entries = Vec::with_capacity(self.records);
        for (hash, offsets) in &self.map {
            entries.extend(
                offsets.iter().map(|&relative_offset| KeyEntry { hash: *hash, relative_offset }),
            );
        }
        Some(KeyIndex::build(base_offset, data_bytes, entries))
    }
}

/// Where a key scan failed.
#[derive(Debug)]
pub(crate) enum KeyScanError {
    Io(io::Error),
    /// A batch failed its checks at this position.
    Damaged(u64, String),
    /// A batch passed its checks but its records do not parse.
    Corrupt(u64, BatchError),
}

impl KeyScanError {
    pub fn into_read_error(self, path: &Path) -> ReadError {
        let path = path.to_owned();
        match self {
            Self::Io(source) => ReadError::Io { path, source },
            Self::Damaged(position, fault) => ReadError::Damaged { path, position, fault },
            Self::Corrupt(position, source) => ReadError::Corrupt { path, position, source },
        }
    }
}

/// The key entries of the batches in `data` from its start to `end`.
pub(crate) fn scan_keys(
    data: &dyn StorageFile,
    base_offset: u64,
    end: u64,
    continuity: Continuity,
) -> Result<Vec<KeyEntry>, KeyScanError> {
    let mut entries = Vec::new();
    let mut failure = None;
    let scanned = scan(data, 0, end, base_offset, continuity, |position, header, bytes| {
        if failure.is_some() {
            return;
        }
        match batch_keys(bytes) {
            Ok(keys) => entries.extend(keys.into_iter().map(|(hash, delta)| KeyEntry {
                hash,
                relative_offset: relative(header.base_offset as u64, base_offset) + delta,
            })),
            Err(source) => failure = Some((position, source)),
        }
    })
    .map_err(KeyScanError::Io)?;
    if let Some((position, source)) = failure {
        return Err(KeyScanError::Corrupt(position, source));
    }
    if let Some(fault) = scanned.fault {
        return Err(KeyScanError::Damaged(scanned.position, fault));
    }
    Ok(entries)
}

/// Writes `index` as the segment's `.keys` file in place and syncs it (no directory sync: the
/// caller's next directory sync makes the name durable). Used by a roll, where a torn file is
/// caught by its CRC.
pub(crate) fn write_key_file(
    storage: &dyn Storage,
    dir: &Path,
    index: &KeyIndex,
) -> io::Result<()> {
    let path = SegmentFile::Keys.path(dir, index.base_offset);
    let file = storage.open(&path, OpenMode::CreateTruncate)?;
    file.write_all_at(&index.encode(), 0)?;
    file.sync_data()
}

/// Replaces the segment's `.keys` file with `index` through a temporary name, durably.
pub(crate) fn save_key_file(storage: &dyn Storage, dir: &Path, index: &KeyIndex) -> io::Result<()> {
    let name = SegmentFile::Keys.name(index.base_offset);
    let temporary = dir.join(format!("{name}{REBUILT_SUFFIX}"));
    let file = storage.open(&temporary, OpenMode::CreateTruncate)?;
    file.write_all_at(&index.encode(), 0)?;
    file.sync_data()?;
    storage.rename(&temporary, &dir.join(name))?;
    storage.sync_dir(dir)
}

/// The batch a key check read last: its offset range, and per record its offset and whether
/// its key matched.
struct CheckedBatch {
    first: u64,
    last: u64,
    records: Vec<(u64, bool)>,
}

/// Counters of key lookups, for tests: they show what the filter saved.
#[derive(Debug, Default)]
pub(crate) struct KeyLookupCounters {
    probed: AtomicU64,
    skipped: AtomicU64,
    batches_read: AtomicU64,
    rebuilt: AtomicU64,
}

/// What key lookups did since the partition was opened (for tests and diagnostics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyLookupStats {
    /// Closed segments whose entries were searched because their filter let the key through.
    pub segments_probed: u64,
    /// Closed segments skipped because their filter excluded the key.
    pub segments_skipped: u64,
    /// Batches read from segment data to check candidate records' keys.
    pub batches_read: u64,
    /// `.keys` files rebuilt from segment data (missing, damaged or stale).
    pub indexes_rebuilt: u64,
}

impl Partition {
    /// The offsets in `[from, to)` of the records whose key is `key`, ascending.
    ///
    /// Only visible records are returned (below the high watermark, so never an unsynced one
    /// under `Durability::Fsync`) and none before the log start offset. The key index matches
    /// key *hashes*; every candidate is then read and its key compared, so the result holds
    /// true matches only. A closed segment whose filter excludes the key is not searched and
    /// its data is not read. Records compacted away or deleted by retention during the lookup
    /// are left out.
    ///
    /// # Errors
    /// [`ReadError::Io`], [`ReadError::Corrupt`] or [`ReadError::Damaged`] when a segment that
    /// may hold the key cannot be read or does not check out.
    pub fn key_offsets(&self, key: &[u8], from: u64, to: u64) -> Result<Vec<u64>, ReadError> {
        let candidates = self.key_candidates(key, from, to)?;
        self.verify_keys(key, &candidates)
    }

    /// The offsets in `[from, to)` whose key *hash* matches `key`'s, ascending, without reading
    /// a record: a superset of [`Partition::key_offsets`] (a hash may collide, and a record may
    /// be compacted away meanwhile) for callers that read the candidates anyway and check each
    /// record's key themselves, and may stop early (a reader after the newest match, or the
    /// first one at a version). Bounded like [`Partition::key_offsets`]: visible records only,
    /// none before the log start.
    ///
    /// # Errors
    /// As [`Partition::key_offsets`].
    pub fn key_candidates(&self, key: &[u8], from: u64, to: u64) -> Result<Vec<u64>, ReadError> {
        let (high_watermark, log_start_offset) = self.bounds();
        let from = from.max(log_start_offset);
        let to = to.min(high_watermark);
        if from >= to {
            return Ok(Vec::new());
        }
        let hash = key_hash(key);
        let (active_base, mut active) = self.inner.active_key_offsets(hash, from, to)?;
        let segments: Vec<ClosedSegment> = lock(&self.inner.state)
            .closed
            .range(..active_base)
            .map(|(_, segment)| segment.clone())
            .filter(|segment| segment.next_offset > from && segment.base_offset < to)
            .collect();
        let mut candidates = Vec::new();
        for segment in &segments {
            let Some(relatives) = self.inner.closed_key_offsets(segment, hash)? else {
                continue; // deleted by retention meanwhile
            };
            candidates.extend(
                relatives
                    .into_iter()
                    .map(|relative| segment.base_offset + u64::from(relative))
                    .filter(|offset| (from..to).contains(offset)),
            );
        }
        candidates.append(&mut active);
        Ok(candidates)
    }

    /// What key lookups did since the partition was opened.
    pub fn key_lookup_stats(&self) -> KeyLookupStats {
        let counters = &self.inner.key_counters;
        KeyLookupStats {
            segments_probed: counters.probed.load(Ordering::Relaxed),
            segments_skipped: counters.skipped.load(Ordering::Relaxed),
            batches_read: counters.batches_read.load(Ordering::Relaxed),
            indexes_rebuilt: counters.rebuilt.load(Ordering::Relaxed),
        }
    }

    /// Reads the records at `candidates` (ascending) and keeps those whose key is `key`.
    fn verify_keys(&self, key: &[u8], candidates: &[u64]) -> Result<Vec<u64>, ReadError> {
        let mut matches = Vec::new();
        let mut batch: Option<CheckedBatch> = None;
        for &offset in candidates {
            let cached =
                batch.as_ref().is_some_and(|batch| (batch.first..=batch.last).contains(&offset));
            if !cached {
                let read = match self.read(offset, 0) {
                    Ok(read) => read,
                    Err(ReadError::OffsetOutOfRange { .. }) => continue, // deleted meanwhile
                    Err(error) => return Err(error),
                };
                self.inner.key_counters.batches_read.fetch_add(1, Ordering::Relaxed);
                if read.batches.is_empty() {
                    continue;
                }
                batch = Some(check_first_batch(self.dir(), &read.batches, key)?);
            }
            let matched = batch.as_ref().is_some_and(|batch| {
                batch.records.iter().any(|(at, matched)| *at == offset && *matched)
            });
            if matched {
                matches.push(offset);
            }
        }
        Ok(matches)
    }
}

/// The offsets of the first batch in `batches` and, per record, whether its key is `key`.
fn check_first_batch(dir: &Path, batches: &[u8], key: &[u8]) -> Result<CheckedBatch, ReadError> {
    let corrupt = |source| ReadError::Corrupt { path: dir.to_owned(), position: 0, source };
    let header = BatchHeader::parse(batches).map_err(corrupt)?;
    let total = usize::try_from(header.total_bytes()).expect("batch fits in memory");
    let mut checked = CheckedBatch {
        first: header.base_offset as u64,
        last: header.last_offset() as u64,
        records: Vec::new(),
    };
    for record in records(&batches[..total.min(batches.len())]).map_err(corrupt)? {
        let record = record.map_err(corrupt)?;
        // Control records are never indexed; their keys are not the producer's.
        let matched = !header.is_control() && record.key == Some(key);
        checked.records.push((record.offset as u64, matched));
    }
    Ok(checked)
}

impl Inner {
    /// The active segment's base offset, and its offsets in `[from, to)` under `hash`. Scans the
    /// segment's unindexed prefix first if there is one (outside the state lock: those bytes
    /// were synced before the partition opened and never change).
    fn active_key_offsets(
        &self,
        hash: u64,
        from: u64,
        to: u64,
    ) -> Result<(u64, Vec<u64>), ReadError> {
        loop {
            let (base, data, (end, _)) = {
                let state = lock(&self.state);
                let active = &state.active;
                let Some(prefix) = active.keys.unindexed_prefix else {
                    let offsets = active
                        .keys
                        .relative_offsets(hash)
                        .iter()
                        .map(|relative| active.base_offset + u64::from(*relative))
                        .filter(|offset| (from..to).contains(offset))
                        .collect();
                    return Ok((active.base_offset, offsets));
                };
                (active.base_offset, Arc::clone(&active.data), prefix)
            };
            let path = SegmentFile::Data.path(&self.dir, base);
            let entries = scan_keys(data.as_ref(), base, end, Continuity::Contiguous)
                .map_err(|error| error.into_read_error(&path))?;
            let mut state = lock(&self.state);
            let active = &mut state.active;
            if active.base_offset == base && active.keys.unindexed_prefix.is_some() {
                active.keys.merge_prefix(entries);
            }
        }
    }

    /// The relative offsets under `hash` in a closed segment, or `None` if it was deleted.
    /// Loads (or rebuilds) its key index on first use.
    fn closed_key_offsets(
        &self,
        segment: &ClosedSegment,
        hash: u64,
    ) -> Result<Option<Vec<u32>>, ReadError> {
        let Some((known, loaded)) = self.loaded_closed(segment.base_offset)? else {
            return Ok(None);
        };
        let index = self.key_index(&known, &loaded)?;
        if !index.may_contain(hash) {
            self.key_counters.skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(Vec::new()));
        }
        self.key_counters.probed.fetch_add(1, Ordering::Relaxed);
        Ok(Some(index.relative_offsets(hash).collect()))
    }

    /// The key index of a loaded closed segment: from memory, else from its `.keys` file, else
    /// rebuilt from its data (and saved, if the segment was not rewritten meanwhile).
    fn key_index(
        &self,
        known: &ClosedSegment,
        loaded: &LoadedSegment,
    ) -> Result<Arc<KeyIndex>, ReadError> {
        let mut slot = lock(&loaded.keys);
        if let Some(index) = slot.as_ref() {
            return Ok(Arc::clone(index));
        }
        let base = known.base_offset;
        let path = SegmentFile::Keys.path(&self.dir, base);
        let span = known.next_offset - base;
        let decoded = crate::segment::read_whole(self.storage.as_ref(), &path)
            .map_err(|source| ReadError::Io { path: path.clone(), source })?
            .ok_or_else(|| "missing".to_owned())
            .and_then(|bytes| KeyIndex::decode(&bytes, base, known.size_bytes, span));
        let index = match decoded {
            Ok(index) => index,
            Err(reason) => {
                tracing::warn!(dir = %self.dir.display(), base, %reason, "rebuilding key index");
                self.key_counters.rebuilt.fetch_add(1, Ordering::Relaxed);
                let data_path = SegmentFile::Data.path(&self.dir, base);
                let entries =
                    scan_keys(loaded.data.as_ref(), base, known.size_bytes, Continuity::Increasing)
                        .map_err(|error| error.into_read_error(&data_path))?;
                let index = KeyIndex::build(base, known.size_bytes, entries);
                let state = lock(&self.state);
                let unchanged = state.closed.get(&base).is_some_and(|now| {
                    now.rewrites == known.rewrites && now.size_bytes == known.size_bytes
                });
                if unchanged {
                    if let Err(error) = save_key_file(self.storage.as_ref(), &self.dir, &index) {
                        tracing::warn!(dir = %self.dir.display(), base, %error, "could not save a rebuilt key index");
                    }
                }
                index
            }
        };
        let index = Arc::new(index);
        *slot = Some(Arc::clone(&index));
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_vectors() {
        // Pins the hash: it is stored on disk, so it must never change silently.
        assert_eq!(key_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(key_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(key_hash(b"foobar"), 0x8594_4171_f739_67e8);
    }

    fn sample() -> KeyIndex {
        let entries = (0..500u32)
            .map(|offset| KeyEntry {
                hash: key_hash(&(offset % 70).to_be_bytes()),
                relative_offset: offset,
            })
            .collect();
        KeyIndex::build(1000, 4096, entries)
    }

    #[test]
    fn round_trips_and_finds_every_entry_and_filters_most_others() {
        let index = sample();
        let decoded = KeyIndex::decode(&index.encode(), 1000, 4096, 500).unwrap();
        assert_eq!(decoded, index);
        for key in 0..70u32 {
            let hash = key_hash(&key.to_be_bytes());
            assert!(index.may_contain(hash));
            let found: Vec<u32> = index.relative_offsets(hash).collect();
            let expected: Vec<u32> = (0..500).filter(|offset| offset % 70 == key).collect();
            assert_eq!(found, expected);
        }
        let passed =
            (1000..11_000u32).filter(|key| index.may_contain(key_hash(&key.to_be_bytes()))).count();
        assert!(passed < 500, "false positive rate too high: {passed} of 10000");
    }

    #[test]
    fn refuses_damage_and_a_file_of_other_data() {
        // A torn, flipped or stale file must be rebuilt, never trusted.
        let bytes = sample().encode();
        for bit in (0..bytes.len() * 8).step_by(7) {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(KeyIndex::decode(&flipped, 1000, 4096, 500).is_err(), "bit {bit}");
        }
        for len in 0..bytes.len() {
            assert!(KeyIndex::decode(&bytes[..len], 1000, 4096, 500).is_err(), "len {len}");
        }
        assert!(KeyIndex::decode(&bytes, 1000, 4097, 500).is_err());
        assert!(KeyIndex::decode(&bytes, 999, 4096, 500).is_err());
        assert!(KeyIndex::decode(&bytes, 1000, 4096, 499).is_err());
    }
}
