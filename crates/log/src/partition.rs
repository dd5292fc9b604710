//! A partition: an append-only log of record batches stored as a directory of segments.
//!
//! This file holds the partition's shared state and its public surface; the work is split by
//! concern: `append.rs` (appends and segment rolls), `durable.rs` (group commit, the interval
//! flusher, checkpoints), `read.rs` (reads by offset and time), `keys.rs` (the key index and
//! lookups by key), `recovery.rs` (opening) and `maintenance.rs` (retention and compaction).
//!
//! Concurrency: one mutex (`state`) guards the segment list and the active segment and is held
//! only for in-memory work and the write of one batch; fdatasync happens outside it, so
//! appends keep flowing while a group commit is in progress. A second mutex (`durable`) holds
//! the written and synced marks. Lock order is always `state` then `durable`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::cache::SegmentCache;
use crate::clock::{Clock, SystemClock};
use crate::config::{Durability, LogConfig};
use crate::error::{AppendError, MaintenanceError, OpenError, SharedIoError};
use crate::index::SegmentIndex;
use crate::keys::{ActiveKeys, KeyLookupCounters};
use crate::segment::{ClosedSegment, IndexBuilder};
use crate::storage::{FileHandle, FsStorage, Storage};

/// The segment being appended to.
#[derive(Debug)]
pub(crate) struct ActiveSegment {
    pub base_offset: u64,
    pub next_offset: u64,
    pub size_bytes: u64,
    /// The data file's length: `size_bytes` plus the zeros written ahead of it (see
    /// `Inner::preallocate_if_due`).
    pub allocated_bytes: u64,
    /// Writing zeros ahead failed (a full disk, say); not tried again in this segment.
    pub preallocation_failed: bool,
    pub data: FileHandle,
    pub offset_index_file: FileHandle,
    pub time_index_file: FileHandle,
    pub index: SegmentIndex,
    pub builder: IndexBuilder,
    /// Key hash → offsets of the records written to the segment (see `keys.rs`).
    pub keys: ActiveKeys,
    /// When the segment was created, or when the partition was reopened: the age roll counts
    /// from here rather than from producer timestamps, which a client could set to anything.
    pub created_at_ms: i64,
}

impl ActiveSegment {
    /// A checkpoint covering the whole segment as it is now; valid once data and indexes are
    /// synced.
    pub fn end_checkpoint(&self) -> crate::checkpoint::Checkpoint {
        let count = |entries: usize| u32::try_from(entries).expect("fewer than 2^32 index entries");
        crate::checkpoint::Checkpoint {
            segment_base_offset: self.base_offset,
            position: self.size_bytes,
            next_offset: self.next_offset,
            max_timestamp: self.builder.max_timestamp,
            offset_index_entries: count(self.index.offsets.len()),
            time_index_entries: count(self.index.times.len()),
        }
    }
}

/// Everything guarded by the state mutex.
#[derive(Debug)]
pub(crate) struct LogState {
    pub closed: BTreeMap<u64, ClosedSegment>,
    pub active: ActiveSegment,
    pub cache: SegmentCache,
    /// Position in the active segment covered by the newest recovery checkpoint.
    pub checkpoint_position: u64,
}

/// A point in the log: the end of a batch.
#[derive(Debug, Clone)]
pub(crate) struct Mark {
    pub segment_base: u64,
    pub position: u64,
    pub next_offset: u64,
    pub max_timestamp: i64,
    /// The data file the mark is in, so a group-commit leader can sync it without the state lock.
    pub file: FileHandle,
}

/// What has been written and what is durable.
#[derive(Debug)]
pub(crate) struct DurableState {
    pub written: Mark,
    pub synced: Mark,
    /// A group-commit leader is in fdatasync; others wait for it instead of syncing again.
    pub syncing: bool,
    /// Set by the first failed write or fsync; never cleared while the partition is open.
    pub error: Option<SharedIoError>,
    pub closed: bool,
}

/// What `Partition::open` found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Bytes of the active segment scanned and checked.
    pub bytes_scanned: u64,
    /// Bytes cut off the end of the active segment because they did not check out.
    pub bytes_dropped: u64,
    /// Why the scan stopped early, if it did.
    pub fault: Option<String>,
    /// Whether a valid recovery checkpoint for the active segment was used.
    pub used_checkpoint: bool,
}

pub(crate) struct Inner {
    pub dir: PathBuf,
    pub config: LogConfig,
    pub storage: Arc<dyn Storage>,
    pub clock: Arc<dyn Clock>,
    pub state: Mutex<LogState>,
    pub durable: Mutex<DurableState>,
    pub durable_changed: Condvar,
    /// Serialises retention and compaction with each other.
    pub maintenance: Mutex<()>,
    /// Held while the sync path writes a checkpoint, so only one does at a time.
    pub checkpoint_writer: Mutex<()>,
    pub recovery: RecoveryReport,
    /// What key lookups did (see [`Partition::key_lookup_stats`]).
    pub key_counters: KeyLookupCounters,
    /// Syncs asked for by [`Partition::request_sync`], served by a background thread.
    pub sync_requests: Mutex<SyncRequests>,
    pub sync_wanted: Condvar,
    /// Told the synced offset after every sync (see [`Partition::set_sync_listener`]).
    pub sync_listener: std::sync::OnceLock<SyncListener>,
    /// The size of the last sync larger than `PREALLOCATE_SYNC_BYTES_MAX`, which left the zeros
    /// ahead to the background syncer (see `Inner::zeros_when_idle`); 0 when none is due.
    pub large_sync_bytes: std::sync::atomic::AtomicU64,
}

/// A callback told the partition's synced next offset.
pub type SyncListener = Box<dyn Fn(u64) + Send + Sync>;

/// What the background syncer is asked to do.
#[derive(Debug, Default)]
pub(crate) struct SyncRequests {
    /// Sync every offset below this.
    pub target: u64,
    /// Whether the syncer thread is running.
    pub running: bool,
}

/// Locks `mutex`, carrying on past a panic in another holder: every critical section leaves
/// the state consistent before it can panic (assertions come before mutations).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// The offset given to the batch's first record.
    pub base_offset: u64,
    /// The offset given to the batch's last record.
    pub last_offset: u64,
}

/// One partition log. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Partition {
    pub(crate) inner: Arc<Inner>,
    flusher: Option<(Sender<()>, JoinHandle<()>)>,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Partition").field("dir", &self.inner.dir).finish_non_exhaustive()
    }
}

impl Partition {
    /// Opens (creating if needed) the partition in `dir` on the real file system.
    ///
    /// # Errors
    /// See [`Partition::open_with`].
    pub fn open(dir: &Path, config: LogConfig) -> Result<Self, OpenError> {
        Self::open_with(dir, config, Arc::new(FsStorage), Arc::new(SystemClock))
    }

    /// Opens (creating if needed) the partition in `dir` on `storage`, recovering the active
    /// segment's tail past the last checkpoint: a torn or corrupt tail is cut off and logged.
    ///
    /// # Errors
    /// [`OpenError::Config`] for an out-of-range configuration, [`OpenError::Io`] for storage
    /// failures, [`OpenError::UnexpectedFile`] for a foreign file in the directory.
    pub fn open_with(
        dir: &Path,
        config: LogConfig,
        storage: Arc<dyn Storage>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, OpenError> {
        let inner = Arc::new(crate::recovery::open(dir, config, storage, clock)?);
        let flusher = match inner.config.durability {
            Durability::Interval(period) => {
                let (stop, stopped) = mpsc::channel::<()>();
                let weak = Arc::downgrade(&inner);
                let handle = std::thread::Builder::new()
                    .name("sluice-log-flusher".to_owned())
                    .spawn(move || crate::durable::run_flusher(&weak, period, &stopped))
                    .map_err(|source| OpenError::Io { path: dir.to_owned(), source })?;
                Some((stop, handle))
            }
            Durability::Fsync | Durability::None => None,
        };
        Ok(Self { inner, flusher })
    }

    /// The partition's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The partition's configuration.
    pub fn config(&self) -> &LogConfig {
        &self.inner.config
    }

    /// What opening the partition found and repaired.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.recovery
    }

    /// The offset after the last record readers can see: under [`Durability::Fsync`] the last
    /// synced record, otherwise the last written one.
    pub fn high_watermark(&self) -> u64 {
        let durable = lock(&self.inner.durable);
        self.inner.visible(&durable).next_offset
    }

    /// The offset after the last record written, synced or not.
    pub fn log_end_offset(&self) -> u64 {
        lock(&self.inner.durable).written.next_offset
    }

    /// The first offset still stored.
    pub fn log_start_offset(&self) -> u64 {
        let state = lock(&self.inner.state);
        state.closed.keys().next().copied().unwrap_or(state.active.base_offset)
    }

    /// How many segments the partition has, the active one included.
    pub fn segment_count(&self) -> usize {
        lock(&self.inner.state).closed.len() + 1
    }

    /// How many closed segments are open for reading (at most `open_segments_max`).
    pub fn open_segment_count(&self) -> usize {
        lock(&self.inner.state).cache.len()
    }

    /// Bytes stored in all segments' data files.
    pub fn size_bytes(&self) -> u64 {
        let state = lock(&self.inner.state);
        state.closed.values().map(|segment| segment.size_bytes).sum::<u64>()
            + state.active.size_bytes
    }

    /// Syncs everything written so far, whatever the durability policy.
    ///
    /// # Errors
    /// [`AppendError::Poisoned`] if this or an earlier sync or write failed.
    pub fn flush(&self) -> Result<(), AppendError> {
        let target = lock(&self.inner.durable).written.next_offset;
        self.inner.wait_synced(target)
    }

    /// Syncs everything, writes a final checkpoint so the next open scans nothing, and stops
    /// taking appends.
    ///
    /// # Errors
    /// Storage failures; acknowledged records are durable regardless under `Fsync`.
    pub fn close(mut self) -> Result<(), MaintenanceError> {
        self.stop_flusher();
        self.inner.close()
    }

    /// Like [`Partition::close`], for a partition shared behind an `Arc`: syncs everything,
    /// writes the final checkpoint and refuses appends from then on. The interval flusher, if
    /// any, stops when the partition is dropped.
    ///
    /// # Errors
    /// As [`Partition::close`].
    pub fn shutdown(&self) -> Result<(), MaintenanceError> {
        self.inner.close()
    }

    fn stop_flusher(&mut self) {
        if let Some((stop, handle)) = self.flusher.take() {
            drop(stop);
            if handle.join().is_err() {
                tracing::error!(dir = %self.inner.dir.display(), "flusher thread panicked");
            }
        }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.stop_flusher();
    }
}

impl Inner {
    /// The mark readers may see up to.
    pub fn visible<'a>(&self, durable: &'a DurableState) -> &'a Mark {
        match self.config.durability {
            Durability::Fsync => &durable.synced,
            Durability::Interval(_) | Durability::None => &durable.written,
        }
    }

    /// Fails if the partition is poisoned or closed.
    pub fn check_writable(&self) -> Result<(), AppendError> {
        let durable = lock(&self.durable);
        if let Some(error) = &durable.error {
            return Err(AppendError::Poisoned { source: Arc::clone(error) });
        }
        if durable.closed {
            return Err(AppendError::Closed);
        }
        Ok(())
    }

    /// Records a storage failure that leaves the partition's files in doubt.
    pub fn poison(&self, error: std::io::Error) -> SharedIoError {
        let mut durable = lock(&self.durable);
        let shared = durable.error.get_or_insert_with(|| Arc::new(error)).clone();
        tracing::error!(dir = %self.dir.display(), error = %shared, "partition poisoned");
        self.durable_changed.notify_all();
        shared
    }
}
