//! Appending a batch, and rolling to a new segment.
//!
//! An append is checked (size, then every byte of the batch's framing and its CRC) before the
//! state lock is taken, so a bad batch costs other writers nothing. Under the lock it is given
//! its offsets by rewriting only `baseOffset`, written at the end of the active segment, and
//! indexed. Under [`Durability::Fsync`] the caller then waits for a group commit.
//!
//! Failure rules:
//! - a full disk removes the partial write and returns [`AppendError::DiskFull`]; the partition
//!   keeps serving;
//! - any other write failure, and any failure that leaves a file in doubt, poisons the partition.

use std::io;
use std::mem;
use std::path::Path;
use std::sync::Arc;

use sluice_format::{set_base_offset, validate_records, BatchHeader};

use crate::checkpoint::{Checkpoint, CHECKPOINT_TEMP_FILE};
use crate::config::Durability;
use crate::error::AppendError;
use crate::index::{SegmentIndex, OFFSET_ENTRY_BYTES, TIME_ENTRY_BYTES};
use crate::keys::{batch_keys, write_key_file, ActiveKeys, KeyIndex};
use crate::partition::{lock, ActiveSegment, AppendInfo, Inner, LogState, Mark, Partition};
use crate::segment::{relative, ClosedSegment, IndexBuilder, LoadedSegment, SegmentFile};
use crate::storage::{OpenMode, Storage};

impl Partition {
    /// Appends one RecordBatch v2, assigning it the next offsets, and returns them. Under
    /// [`Durability::Fsync`] it returns only once the batch is fdatasynced (sharing the sync
    /// with concurrent appends). The batch's `baseOffset` field is rewritten in place.
    ///
    /// # Errors
    /// - [`AppendError::BatchTooLarge`] past `batch_bytes_max`;
    /// - [`AppendError::Batch`] for a malformed batch (length, magic, CRC, compression, framing);
    /// - [`AppendError::DiskFull`] when the disk is full (nothing appended, partition usable);
    /// - [`AppendError::Poisoned`] when this or an earlier write or fsync failed;
    /// - [`AppendError::Closed`] after [`Partition::close`].
    pub fn append(&self, batch: &mut [u8]) -> Result<AppendInfo, AppendError> {
        let info = self.append_unsynced(batch)?;
        self.wait_durable(info.last_offset)?;
        Ok(info)
    }

    /// The first half of [`Partition::append`]: checks and writes the batch and returns its
    /// offsets without waiting for the sync. Nothing is acknowledged until
    /// [`Partition::wait_durable`] returns for its last offset; a caller that must order appends
    /// (a producer's sequence check, say) can hold its own lock across this call only, and wait
    /// for durability outside it.
    ///
    /// # Errors
    /// As [`Partition::append`], but never a sync failure.
    pub fn append_unsynced(&self, batch: &mut [u8]) -> Result<AppendInfo, AppendError> {
        let limit = self.inner.config.batch_bytes_max;
        if batch.len() as u64 > u64::from(limit) {
            return Err(AppendError::BatchTooLarge { bytes: batch.len() as u64, limit });
        }
        let header = validate_records(batch, true)?;
        // Hashed before the lock, so the key index costs other writers nothing.
        let keys = batch_keys(batch)?;
        let info = {
            let mut state = lock(&self.inner.state);
            self.inner.check_writable()?;
            self.inner.roll_if_due(&mut state, batch.len() as u64, &header)?;
            self.inner.write_batch(&mut state, batch, header, &keys)?
        };
        Ok(info)
    }

    /// Returns once the record at `last_offset` is durable as the partition's durability policy
    /// promises: under [`Durability::Fsync`] fdatasynced (leading or joining a group commit),
    /// under the other policies at once.
    ///
    /// # Errors
    /// [`AppendError::Poisoned`] if a sync failed.
    pub fn wait_durable(&self, last_offset: u64) -> Result<(), AppendError> {
        if self.inner.config.durability == Durability::Fsync {
            self.inner.wait_synced(last_offset + 1)?;
        }
        Ok(())
    }
}

impl Inner {
    fn roll_if_due(
        &self,
        state: &mut LogState,
        batch_bytes: u64,
        header: &BatchHeader,
    ) -> Result<(), AppendError> {
        let active = &state.active;
        if active.size_bytes == 0 {
            return Ok(());
        }
        let full = active.size_bytes + batch_bytes > self.config.segment_bytes_max;
        let age_ms = self.clock.now_ms().saturating_sub(active.created_at_ms);
        let aged = self.config.segment_age_max.is_some_and(|age| age_ms as u128 >= age.as_millis());
        let span = active.next_offset - active.base_offset + header.last_offset_delta as u64 + 1;
        let offsets_exhausted = span >= u64::from(u32::MAX);
        if full || aged || offsets_exhausted {
            self.roll(state)?;
        }
        Ok(())
    }

    fn write_batch(
        &self,
        state: &mut LogState,
        batch: &mut [u8],
        mut header: BatchHeader,
        keys: &[(u64, u32)],
    ) -> Result<AppendInfo, AppendError> {
        let active = &mut state.active;
        let base_offset = active.next_offset;
        let base = i64::try_from(base_offset).expect("offsets stay below i64::MAX");
        set_base_offset(batch, base);
        header.base_offset = base;
        let position = active.size_bytes;
        let builder_before = active.builder.clone();
        let entries_before = (active.index.offsets.len(), active.index.times.len());
        let relative_offset = relative(base_offset, active.base_offset);
        let added = active.builder.observe(&mut active.index, relative_offset, position, &header);
        let written = active.data.write_all_at(batch, position).and_then(|()| {
            if let Some(entry) = added.0 {
                let at = (entries_before.0 * OFFSET_ENTRY_BYTES) as u64;
                active.offset_index_file.write_all_at(&entry.encode(), at)?;
            }
            if let Some(entry) = added.1 {
                let at = (entries_before.1 * TIME_ENTRY_BYTES) as u64;
                active.time_index_file.write_all_at(&entry.encode(), at)?;
            }
            Ok(())
        });
        if let Err(error) = written {
            active.builder = builder_before;
            active.index.offsets.truncate(entries_before.0);
            active.index.times.truncate(entries_before.1);
            let undone = self.undo_write(active, position, entries_before, error);
            if matches!(undone, AppendError::DiskFull { .. }) {
                active.allocated_bytes = position;
            }
            return Err(undone);
        }
        active.size_bytes += batch.len() as u64;
        active.allocated_bytes = active.allocated_bytes.max(active.size_bytes);
        active.next_offset = base_offset + header.last_offset_delta as u64 + 1;
        for (hash, delta) in keys {
            active.keys.add(*hash, relative_offset + delta);
        }
        let mark = Mark {
            segment_base: active.base_offset,
            position: active.size_bytes,
            next_offset: active.next_offset,
            max_timestamp: active.builder.max_timestamp,
            file: Arc::clone(&active.data),
        };
        lock(&self.durable).written = mark;
        Ok(AppendInfo { base_offset, last_offset: active.next_offset - 1 })
    }

    /// Removes a failed write's partial bytes. A full disk whose partial write could be removed
    /// leaves the partition usable; anything else poisons it.
    fn undo_write(
        &self,
        active: &ActiveSegment,
        position: u64,
        entries: (usize, usize),
        error: io::Error,
    ) -> AppendError {
        let path = SegmentFile::Data.path(&self.dir, active.base_offset);
        if error.kind() != io::ErrorKind::StorageFull {
            return AppendError::Poisoned { source: self.poison(error) };
        }
        let undone = active
            .data
            .set_len(position)
            .and_then(|()| {
                active.offset_index_file.set_len((entries.0 * OFFSET_ENTRY_BYTES) as u64)
            })
            .and_then(|()| active.time_index_file.set_len((entries.1 * TIME_ENTRY_BYTES) as u64));
        match undone {
            Ok(()) => AppendError::DiskFull { path, source: error },
            Err(undo_error) => {
                tracing::error!(%undo_error, "could not remove a partial write after a full disk");
                AppendError::Poisoned { source: self.poison(error) }
            }
        }
    }

    /// Closes the active segment and starts the next one. Everything in the old segment is
    /// synced (data, then indexes) before the new segment's files are created and their
    /// directory entries synced, so recovery never has to look past the last segment.
    ///
    /// The roll holds the group-commit token throughout: no other fdatasync of the data file
    /// runs at the same time, so a write-back error cannot be reported to one sync and hidden
    /// from the other (Linux reports it once), and `synced` moves only if no sync failed.
    pub(crate) fn roll(&self, state: &mut LogState) -> Result<(), AppendError> {
        self.take_sync_token()?;
        let outcome = self.roll_holding_token(state);
        self.release_sync_token(outcome.map(|mark| Some((mark.clone(), mark))))
    }

    fn roll_holding_token(&self, state: &mut LogState) -> io::Result<Mark> {
        self.seal_active(state)?;
        let keys = self.write_closing_keys(&state.active);
        let next_offset = state.active.next_offset;
        let now_ms = self.clock.now_ms();
        let interval = self.config.index_interval_bytes;
        let fresh =
            create_segment(self.storage.as_ref(), &self.dir, interval, now_ms, next_offset)?;
        let old = mem::replace(&mut state.active, fresh);
        state.closed.insert(
            old.base_offset,
            ClosedSegment {
                base_offset: old.base_offset,
                next_offset: old.next_offset,
                size_bytes: old.size_bytes,
                max_timestamp: old.index.max_timestamp(),
                rewrites: 0,
            },
        );
        let loaded = LoadedSegment::new(old.data, old.index, false);
        *lock(&loaded.keys) = keys;
        state.cache.insert(old.base_offset, Arc::new(loaded));
        state.checkpoint_position = 0;
        let checkpoint = Checkpoint {
            segment_base_offset: next_offset,
            position: 0,
            next_offset,
            max_timestamp: i64::MIN,
            offset_index_entries: 0,
            time_index_entries: 0,
        };
        if let Err(error) =
            checkpoint.write_as(self.storage.as_ref(), &self.dir, CHECKPOINT_TEMP_FILE)
        {
            tracing::error!(dir = %self.dir.display(), %error, "could not write recovery checkpoint");
        }
        Ok(Mark {
            segment_base: next_offset,
            position: 0,
            next_offset,
            max_timestamp: i64::MIN,
            file: Arc::clone(&state.active.data),
        })
    }

    /// Writes and syncs the key index of the active segment being closed (its name becomes
    /// durable with the next directory sync, the new segment's). Best effort: the index is
    /// derived, so a failure is logged and the file is rebuilt when a lookup needs it. Returns
    /// the index, or `None` if the segment's keys are not all in memory (after a reopen, until
    /// a lookup scanned its start) or the write failed.
    fn write_closing_keys(&self, active: &ActiveSegment) -> Option<Arc<KeyIndex>> {
        let index = active.keys.to_index(active.base_offset, active.size_bytes)?;
        match write_key_file(self.storage.as_ref(), &self.dir, &index) {
            Ok(()) => Some(Arc::new(index)),
            Err(error) => {
                tracing::warn!(dir = %self.dir.display(), base = active.base_offset, %error, "could not write a key index; it will be rebuilt when needed");
                None
            }
        }
    }

    /// Cuts the zeros written ahead off the active segment, syncs its data, adds its final
    /// time-index entry, and syncs its indexes.
    pub(crate) fn seal_active(&self, state: &mut LogState) -> io::Result<()> {
        let active = &mut state.active;
        if active.allocated_bytes > active.size_bytes {
            active.data.set_len(active.size_bytes)?;
            active.allocated_bytes = active.size_bytes;
        }
        active.data.sync_data()?;
        let times_before = active.index.times.len();
        if let Some(entry) = active.builder.time_entry(&mut active.index) {
            let at = (times_before * TIME_ENTRY_BYTES) as u64;
            active.time_index_file.write_all_at(&entry.encode(), at)?;
        }
        active.offset_index_file.sync_data()?;
        active.time_index_file.sync_data()
    }
}

/// Creates the files of a new, empty segment at `base_offset` and makes their names durable.
pub(crate) fn create_segment(
    storage: &dyn Storage,
    dir: &Path,
    index_interval_bytes: u32,
    now_ms: i64,
    base_offset: u64,
) -> io::Result<ActiveSegment> {
    let open =
        |kind: SegmentFile| storage.open(&kind.path(dir, base_offset), OpenMode::CreateTruncate);
    let data = open(SegmentFile::Data)?;
    let offset_index_file = open(SegmentFile::OffsetIndex)?;
    let time_index_file = open(SegmentFile::TimeIndex)?;
    storage.sync_dir(dir)?;
    Ok(ActiveSegment {
        base_offset,
        next_offset: base_offset,
        size_bytes: 0,
        allocated_bytes: 0,
        preallocation_failed: false,
        data,
        offset_index_file,
        time_index_file,
        index: SegmentIndex::default(),
        builder: IndexBuilder::new(index_interval_bytes),
        keys: ActiveKeys::default(),
        created_at_ms: now_ms,
    })
}
