//! Retention (deleting old closed segments) and compaction (keeping the newest record per key in
//! closed segments). Neither ever touches the active segment.
//!
//! Retention deletes whole segments from the oldest, and stops at the first one it keeps, so
//! the log stays a contiguous range of offsets. A segment goes when the log would still hold at
//! least `retention_bytes` without it, or when its newest record timestamp is older than
//! `retention_age`. The data file is unlinked first (that is the commit point); index files
//! whose data file is gone are removed at the next open if a crash interrupts.
//!
//! Compaction maps every key in the closed segments to its newest offset (holding at most
//! [`COMPACTION_KEYS_MAX`] keys: segments past that are left for a later run), then rewrites each
//! segment that holds a superseded record or an expired tombstone. Kept records keep their
//! offsets, timestamps, headers and their batch's producer fields; a batch's `lastOffsetDelta` is
//! kept so offsets stay where they were. Control batches are kept whole. The rewritten files are
//! swapped in with synced directory steps so a crash at any point leaves either the old segment,
//! or the new data file with indexes that are missing (rebuilt on next read) — never new data
//! with old indexes. See `docs/format.md`.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use sluice_format::{records, BatchBuilder, BatchError, BatchHeader, NewRecord, Record};

use crate::error::{MaintenanceError, ReadError};
use crate::index::SegmentIndex;
use crate::keys::{batch_keys, KeyEntry, KeyIndex};
use crate::partition::{lock, Inner, Partition};
use crate::segment::{
    load_closed, relative, scan, ClosedSegment, Continuity, IndexBuilder, SegmentFile,
    CLEANED_SUFFIX,
};
use crate::storage::{OpenMode, Storage};

/// Most distinct keys one compaction run maps (about 100 bytes of memory each plus the key).
pub const COMPACTION_KEYS_MAX: usize = 4_000_000;

/// What a retention pass deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Segments deleted.
    pub segments_deleted: usize,
    /// Bytes of data files deleted.
    pub bytes_deleted: u64,
}

/// What a compaction pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Segments rewritten.
    pub segments_rewritten: usize,
    /// Records removed (superseded values and expired tombstones).
    pub records_removed: u64,
    /// Data bytes of the rewritten segments before.
    pub bytes_before: u64,
    /// Data bytes of the rewritten segments after.
    pub bytes_after: u64,
}

impl Partition {
    /// Runs retention, then compaction if the partition is configured to compact.
    ///
    /// # Errors
    /// See [`Partition::enforce_retention`] and [`Partition::compact`].
    pub fn run_maintenance(&self) -> Result<(RetentionReport, CompactionReport), MaintenanceError> {
        let retention = self.enforce_retention()?;
        let compaction = if self.inner.config.compact {
            self.compact()?
        } else if self.inner.config.purge_before_tombstones {
            self.purge_before_tombstones()?
        } else {
            CompactionReport::default()
        };
        Ok((retention, compaction))
    }

    /// Deletes closed segments that retention by size or age no longer keeps.
    ///
    /// # Errors
    /// [`MaintenanceError::Io`] if a file cannot be removed. If the data file could not be
    /// removed the segment stays; if only an index file could not, it is removed at next open.
    pub fn enforce_retention(&self) -> Result<RetentionReport, MaintenanceError> {
        let _maintenance = lock(&self.inner.maintenance);
        let mut report = RetentionReport::default();
        while let Some(segment) = self.inner.oldest_expired(self.inner.clock.now_ms())? {
            self.inner.delete_segment(&segment)?;
            report.segments_deleted += 1;
            report.bytes_deleted += segment.size_bytes;
        }
        Ok(report)
    }

    /// Rewrites closed segments to keep only the newest record of each key, dropping tombstones
    /// older than `tombstone_retention`.
    ///
    /// # Errors
    /// [`MaintenanceError::Read`] if a segment does not check out (it is left as it is);
    /// [`MaintenanceError::Io`] for storage failures.
    pub fn compact(&self) -> Result<CompactionReport, MaintenanceError> {
        let _maintenance = lock(&self.inner.maintenance);
        let segments: Vec<ClosedSegment> =
            lock(&self.inner.state).closed.values().cloned().collect();
        let mut newest: HashMap<Vec<u8>, u64> = HashMap::new();
        let mut mapped = 0;
        for segment in &segments {
            let mut keys = Vec::new();
            self.inner.for_each_record(segment, |record| {
                if let Some(key) = record.key {
                    keys.push((key.to_vec(), record.offset as u64));
                }
            })?;
            if mapped > 0 && newest.len() + keys.len() > COMPACTION_KEYS_MAX {
                break;
            }
            newest.extend(keys);
            mapped += 1;
        }
        let expiry_ms = self.inner.clock.now_ms().saturating_sub(
            i64::try_from(self.inner.config.tombstone_retention.as_millis()).unwrap_or(i64::MAX),
        );
        let keep = |record: &Record<'_>| match record.key {
            None => true,
            Some(key) => {
                let newest_offset = newest.get(key).copied().unwrap_or(record.offset as u64);
                let expired_tombstone = record.value.is_none() && record.timestamp_ms < expiry_ms;
                newest_offset == record.offset as u64 && !expired_tombstone
            }
        };
        let mut report = CompactionReport::default();
        for segment in &segments[..mapped] {
            self.inner.compact_segment(segment, &keep, &mut report)?;
        }
        Ok(report)
    }
}

impl Partition {
    /// Rewrites closed segments without the records that a later tombstone of their key (in a
    /// closed segment) deletes; tombstones themselves, keyless records and keys without a
    /// tombstone are kept. See `LogConfig::purge_before_tombstones`.
    ///
    /// # Errors
    /// As [`Partition::compact`].
    pub fn purge_before_tombstones(&self) -> Result<CompactionReport, MaintenanceError> {
        let _maintenance = lock(&self.inner.maintenance);
        let segments: Vec<ClosedSegment> =
            lock(&self.inner.state).closed.values().cloned().collect();
        // Only keys with a tombstone are mapped, to the offset of their newest one.
        let mut tombstones: HashMap<Vec<u8>, u64> = HashMap::new();
        for segment in &segments {
            self.inner.for_each_record(segment, |record| {
                if let (Some(key), None) = (record.key, record.value) {
                    if tombstones.len() < COMPACTION_KEYS_MAX || tombstones.contains_key(key) {
                        tombstones.insert(key.to_vec(), record.offset as u64);
                    }
                }
            })?;
        }
        let keep = |record: &Record<'_>| match record.key.and_then(|key| tombstones.get(key)) {
            Some(&tombstone) => record.offset as u64 >= tombstone,
            None => true,
        };
        let mut report = CompactionReport::default();
        if tombstones.is_empty() {
            return Ok(report);
        }
        for segment in &segments {
            self.inner.compact_segment(segment, &keep, &mut report)?;
        }
        Ok(report)
    }
}

impl Inner {
    /// The oldest closed segment if retention deletes it.
    fn oldest_expired(&self, now_ms: i64) -> Result<Option<ClosedSegment>, MaintenanceError> {
        let (oldest, total) = {
            let state = lock(&self.state);
            let total: u64 = state.closed.values().map(|segment| segment.size_bytes).sum::<u64>()
                + state.active.size_bytes;
            (state.closed.values().next().cloned(), total)
        };
        let Some(mut oldest) = oldest else { return Ok(None) };
        let by_size =
            self.config.retention_bytes.is_some_and(|limit| total - oldest.size_bytes >= limit);
        if by_size {
            return Ok(Some(oldest));
        }
        let Some(age) = self.config.retention_age else { return Ok(None) };
        if oldest.max_timestamp.is_none() {
            let loaded = load_closed(
                self.storage.as_ref(),
                &self.dir,
                &oldest,
                self.config.index_interval_bytes,
            )
            .map_err(|source| self.io("reading", oldest.base_offset, source))?;
            oldest.max_timestamp = loaded.index.max_timestamp();
        }
        let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        let expired = oldest.max_timestamp.is_some_and(|max| max < now_ms.saturating_sub(age_ms))
            || oldest.size_bytes == 0;
        Ok(expired.then_some(oldest))
    }

    fn io(&self, action: &'static str, base: u64, source: io::Error) -> MaintenanceError {
        MaintenanceError::Io { action, path: SegmentFile::Data.path(&self.dir, base), source }
    }

    /// Unlinks the data file first (if that fails nothing changed), then forgets the segment,
    /// then unlinks its indexes (an orphan index left by a crash is removed at open).
    fn delete_segment(&self, segment: &ClosedSegment) -> Result<(), MaintenanceError> {
        let base = segment.base_offset;
        tracing::info!(dir = %self.dir.display(), base, bytes = segment.size_bytes, "retention deletes segment");
        remove_if_present(self.storage.as_ref(), &SegmentFile::Data.path(&self.dir, base))
            .map_err(|source| self.io("deleting", base, source))?;
        {
            let mut state = lock(&self.state);
            state.closed.remove(&base);
            state.cache.remove(base);
        }
        for kind in [SegmentFile::OffsetIndex, SegmentFile::TimeIndex, SegmentFile::Keys] {
            remove_if_present(self.storage.as_ref(), &kind.path(&self.dir, base))
                .map_err(|source| self.io("deleting", base, source))?;
        }
        self.storage
            .sync_dir(&self.dir)
            .map_err(|source| self.io("syncing directory for", base, source))
    }

    /// Calls `visit` for every record of a closed segment, checking every batch.
    fn for_each_record(
        &self,
        segment: &ClosedSegment,
        mut visit: impl FnMut(&Record<'_>),
    ) -> Result<(), MaintenanceError> {
        let base = segment.base_offset;
        let path = SegmentFile::Data.path(&self.dir, base);
        let data = self
            .storage
            .open(&path, OpenMode::Read)
            .map_err(|source| self.io("reading", base, source))?;
        let mut failure = None;
        let end = scan(
            data.as_ref(),
            0,
            segment.size_bytes,
            base,
            Continuity::Increasing,
            |position, _, bytes| {
                let batch = records(bytes).and_then(|records| {
                    records.into_iter().try_for_each(|record| record.map(|record| visit(&record)))
                });
                if let Err(source) = batch {
                    failure.get_or_insert((position, source));
                }
            },
        )
        .map_err(|source| self.io("reading", base, source))?;
        corrupt_check(&path, end.fault.map(|fault| (end.position, fault)), failure)
    }

    /// Rewrites one closed segment keeping the records `keep` accepts, if it drops any.
    fn compact_segment(
        &self,
        segment: &ClosedSegment,
        keep: &dyn Fn(&Record<'_>) -> bool,
        report: &mut CompactionReport,
    ) -> Result<(), MaintenanceError> {
        let base = segment.base_offset;
        let path = SegmentFile::Data.path(&self.dir, base);
        let data = self
            .storage
            .open(&path, OpenMode::Read)
            .map_err(|source| self.io("reading", base, source))?;
        let mut rewritten = Rewritten::new(base, self.config.index_interval_bytes);
        let mut failure = None;
        let end = scan(
            data.as_ref(),
            0,
            segment.size_bytes,
            base,
            Continuity::Increasing,
            |position, header, bytes| {
                if let Err(source) = rewritten.add_batch(header, bytes, keep) {
                    failure.get_or_insert((position, source));
                }
            },
        )
        .map_err(|source| self.io("reading", base, source))?;
        corrupt_check(&path, end.fault.map(|fault| (end.position, fault)), failure)?;
        if rewritten.removed == 0 {
            return Ok(());
        }
        rewritten.index_builder.time_entry(&mut rewritten.index);
        self.swap_in(segment, &rewritten).map_err(|source| self.io("compacting", base, source))?;
        report.segments_rewritten += 1;
        report.records_removed += rewritten.removed;
        report.bytes_before += segment.size_bytes;
        report.bytes_after += rewritten.data.len() as u64;
        Ok(())
    }

    /// Replaces a closed segment's files with the compacted ones. The directory is synced
    /// between steps so that the order survives a crash (see the module docs).
    fn swap_in(&self, segment: &ClosedSegment, rewritten: &Rewritten) -> io::Result<()> {
        let base = segment.base_offset;
        let storage = self.storage.as_ref();
        let offsets: Vec<u8> =
            rewritten.index.offsets.iter().flat_map(|entry| entry.encode()).collect();
        let times: Vec<u8> =
            rewritten.index.times.iter().flat_map(|entry| entry.encode()).collect();
        let data_bytes = rewritten.data.len() as u64;
        let keys = KeyIndex::build(base, data_bytes, rewritten.keys.clone()).encode();
        let kinds = [
            (SegmentFile::Data, &rewritten.data),
            (SegmentFile::OffsetIndex, &offsets),
            (SegmentFile::TimeIndex, &times),
            (SegmentFile::Keys, &keys),
        ];
        for (kind, bytes) in kinds {
            let file =
                storage.open(&cleaned_path(&self.dir, kind, base), OpenMode::CreateTruncate)?;
            file.write_all_at(bytes, 0)?;
            file.sync_data()?;
        }
        let mut state = lock(&self.state);
        let swapped = self.swap_files(base);
        // Whatever happened, the files on disk decide from here: drop the cached handles and
        // take the data file's size, so a read never uses the old size on the new file.
        let data = storage.open(&SegmentFile::Data.path(&self.dir, base), OpenMode::Read);
        let size = data.and_then(|file| file.len());
        if let Some(known) = state.closed.get_mut(&base) {
            if let Ok(size) = size {
                known.size_bytes = size;
            }
            known.rewrites += 1;
        }
        state.cache.remove(base);
        swapped
    }

    /// Steps 2-4 of the swap (module docs): old indexes out, new data in, new indexes in, with
    /// a directory sync after each step. The key index moves with the other two.
    fn swap_files(&self, base: u64) -> io::Result<()> {
        let storage = self.storage.as_ref();
        let indexes = [SegmentFile::OffsetIndex, SegmentFile::TimeIndex, SegmentFile::Keys];
        for kind in indexes {
            remove_if_present(storage, &kind.path(&self.dir, base))?;
        }
        storage.sync_dir(&self.dir)?;
        let data_path = SegmentFile::Data.path(&self.dir, base);
        storage.rename(&cleaned_path(&self.dir, SegmentFile::Data, base), &data_path)?;
        storage.sync_dir(&self.dir)?;
        for kind in indexes {
            storage.rename(&cleaned_path(&self.dir, kind, base), &kind.path(&self.dir, base))?;
        }
        storage.sync_dir(&self.dir)
    }
}

fn cleaned_path(dir: &Path, kind: SegmentFile, base: u64) -> PathBuf {
    dir.join(format!("{}{CLEANED_SUFFIX}", kind.name(base)))
}

fn remove_if_present(storage: &dyn Storage, path: &Path) -> io::Result<()> {
    match storage.remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Turns a scan fault or a record-level failure into a corruption error.
fn corrupt_check(
    path: &Path,
    fault: Option<(u64, String)>,
    failure: Option<(u64, BatchError)>,
) -> Result<(), MaintenanceError> {
    if let Some((position, source)) = failure {
        return Err(ReadError::Corrupt { path: path.to_owned(), position, source }.into());
    }
    if let Some((position, fault)) = fault {
        tracing::error!(path = %path.display(), position, %fault, "closed segment is damaged; not compacting it");
        return Err(ReadError::Damaged { path: path.to_owned(), position, fault }.into());
    }
    Ok(())
}

/// A segment being rewritten by compaction.
struct Rewritten {
    base: u64,
    data: Vec<u8>,
    index: SegmentIndex,
    index_builder: IndexBuilder,
    /// Key entries of the kept records, for the new `.keys` file.
    keys: Vec<KeyEntry>,
    removed: u64,
}

impl Rewritten {
    fn new(base: u64, interval: u32) -> Self {
        Self {
            base,
            data: Vec::new(),
            index: SegmentIndex::default(),
            index_builder: IndexBuilder::new(interval),
            keys: Vec::new(),
            removed: 0,
        }
    }

    fn add_batch(
        &mut self,
        header: &BatchHeader,
        bytes: &[u8],
        keep: &dyn Fn(&Record<'_>) -> bool,
    ) -> Result<(), BatchError> {
        if header.is_control() {
            self.push(bytes)?;
            return Ok(());
        }
        let mut kept = Vec::new();
        let mut total = 0u64;
        for record in records(bytes)? {
            let record = record?;
            total += 1;
            if keep(&record) {
                kept.push(record);
            }
        }
        self.removed += total - kept.len() as u64;
        if kept.len() as u64 == total {
            return self.push(bytes);
        }
        if kept.is_empty() {
            return Ok(());
        }
        let mut builder = BatchBuilder::new(header.base_offset)
            .producer(header.producer_id, header.producer_epoch, header.base_sequence)
            .partition_leader_epoch(header.partition_leader_epoch)
            .attributes(header.attributes);
        for record in &kept {
            let delta =
                i32::try_from(record.offset - header.base_offset).expect("delta of one batch");
            let new = NewRecord {
                key: record.key,
                value: record.value,
                headers: &record.headers,
                timestamp_ms: record.timestamp_ms,
            };
            builder.push_at(delta, &new);
        }
        builder.last_offset_delta(header.last_offset_delta);
        self.push(&builder.build())
    }

    fn push(&mut self, batch: &[u8]) -> Result<(), BatchError> {
        let header = BatchHeader::parse(batch)?;
        let relative_offset = relative(header.base_offset as u64, self.base);
        let position = self.data.len() as u64;
        self.index_builder.observe(&mut self.index, relative_offset, position, &header);
        for (hash, delta) in batch_keys(batch)? {
            self.keys.push(KeyEntry { hash, relative_offset: relative_offset + delta });
        }
        self.data.extend_from_slice(batch);
        Ok(())
    }
}
