//! Making appends durable: group commit, the interval flusher, recovery checkpoints, and close.
//!
//! Group commit: an appender that needs its offsets synced becomes the leader if no sync is in
//! progress; it takes the newest written mark, releases every lock, and fdatasyncs the data file
//! that mark is in. Appenders arriving meanwhile wait on a condition variable; when the leader
//! finishes, every waiter whose offsets the sync covered returns, and one of the rest leads the
//! next sync. Under load, one fdatasync acknowledges every batch written while the previous one
//! ran. Rolls sync the old segment themselves, so a mark's file always holds every unsynced byte.
//!
//! A failed fdatasync poisons the partition: the error is kept, waiters and later appends get
//! it, and nothing retries, because after a failed fsync the page cache's state is unknown.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::config::{Durability, PREALLOCATE_BYTES_MIN};
use crate::partition::Partition;

/// Zeros are written ahead of the active segment, to become durable with the next sync, only
/// after syncs of at most this many bytes (see `Inner::preallocate_if_due`). At about 2 GB/s of
/// sequential writes and about 50 µs per journal commit (this project's machines), zeros in an
/// append's sync cost more than they save past ~100 KB; after larger syncs they are written and
/// synced only when the partition is idle (`Inner::zeros_when_idle`).
const PREALLOCATE_SYNC_BYTES_MAX: u64 = 64 * 1024;

/// How long the background syncer waits for a new request before its thread ends.
const SYNCER_IDLE: Duration = Duration::from_secs(1);

use crate::checkpoint::{Checkpoint, CHECKPOINT_SYNC_TEMP_FILE, CHECKPOINT_TEMP_FILE};
use crate::error::{AppendError, MaintenanceError};
use crate::partition::{lock, Inner, Mark};
use crate::segment::relative;

impl Inner {
    /// Waits until no group commit is in flight and takes the token, so the caller's syncs run
    /// alone. Fails if the partition is poisoned.
    pub(crate) fn take_sync_token(&self) -> Result<(), AppendError> {
        let mut durable = lock(&self.durable);
        loop {
            if let Some(error) = &durable.error {
                return Err(AppendError::Poisoned { source: Arc::clone(error) });
            }
            if !durable.syncing {
                durable.syncing = true;
                return Ok(());
            }
            durable = self.durable_changed.wait(durable).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Gives the token back. On success with new `(written, synced)` marks, publishes them; on
    /// failure poisons the partition. Wakes every waiter either way.
    pub(crate) fn release_sync_token(
        &self,
        outcome: std::io::Result<Option<(Mark, Mark)>>,
    ) -> Result<(), AppendError> {
        let mut durable = lock(&self.durable);
        durable.syncing = false;
        let result = match outcome {
            Ok(marks) => {
                if let Some((written, synced)) = marks {
                    durable.written = written;
                    durable.synced = synced;
                }
                Ok(())
            }
            Err(error) => {
                tracing::error!(dir = %self.dir.display(), %error, "storage failure while syncing; partition poisoned");
                let shared = durable.error.get_or_insert_with(|| Arc::new(error));
                Err(AppendError::Poisoned { source: Arc::clone(shared) })
            }
        };
        self.durable_changed.notify_all();
        let synced = durable.synced.next_offset;
        drop(durable);
        self.tell_listener(synced);
        result
    }

    /// Tells the sync listener, if one is set, where the synced offsets end now.
    fn tell_listener(&self, synced: u64) {
        if let Some(listener) = self.sync_listener.get() {
            listener(synced);
        }
    }

    /// Returns once every offset below `target` is synced, leading a group commit if needed.
    pub(crate) fn wait_synced(&self, target: u64) -> Result<(), AppendError> {
        let mut durable = lock(&self.durable);
        loop {
            if let Some(error) = &durable.error {
                return Err(AppendError::Poisoned { source: Arc::clone(error) });
            }
            if durable.synced.next_offset >= target {
                return Ok(());
            }
            if durable.syncing {
                durable = self.durable_changed.wait(durable).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            durable.syncing = true;
            let mark = durable.written.clone();
            drop(durable);
            if let Some(synced_bytes) = self.lead_sync(&mark) {
                self.checkpoint_if_due(&mark);
                if synced_bytes <= PREALLOCATE_SYNC_BYTES_MAX {
                    self.preallocate_if_due(u64::MAX);
                } else {
                    // The background syncer may write and sync zeros when idle (`run_syncer`).
                    self.large_sync_bytes.store(synced_bytes, Ordering::Relaxed);
                }
            }
            durable = lock(&self.durable);
        }
    }

    /// Syncs `mark`'s file as the group-commit leader (the caller took the token) and publishes
    /// the outcome: the new synced mark, or the poisoning error. Wakes every waiter and gives
    /// the token back. Returns how many bytes the sync made durable, if it succeeded.
    fn lead_sync(&self, mark: &Mark) -> Option<u64> {
        let result = mark.file.sync_data();
        let mut durable = lock(&self.durable);
        durable.syncing = false;
        let synced_bytes = if durable.synced.segment_base == mark.segment_base {
            mark.position.saturating_sub(durable.synced.position)
        } else {
            mark.position
        };
        let succeeded = match result {
            Ok(()) if mark.next_offset > durable.synced.next_offset => {
                durable.synced = mark.clone();
                true
            }
            Ok(()) => true,
            Err(error) => {
                tracing::error!(dir = %self.dir.display(), %error, "fdatasync failed; partition poisoned");
                durable.error.get_or_insert_with(|| Arc::new(error));
                false
            }
        };
        self.durable_changed.notify_all();
        let synced = durable.synced.next_offset;
        let healthy = durable.error.is_none();
        drop(durable);
        self.tell_listener(synced);
        (succeeded && healthy).then_some(synced_bytes)
    }

    /// After a large sync, while the partition is idle (everything written is synced and no
    /// background request waits): writes zeros ahead and syncs them at once, so the next large
    /// append's sync writes over blocks already on disk instead of extending the file (see
    /// [`Inner::preallocate_if_due`]). Called by the background syncer only, so no appender
    /// waits for it.
    fn zeros_when_idle(&self) {
        let synced_bytes = self.large_sync_bytes.swap(0, Ordering::Relaxed);
        if synced_bytes == 0 {
            return;
        }
        // At most one sync's worth at a time, so an append arriving meanwhile waits little.
        if self.idle() && self.preallocate_if_due(synced_bytes.max(PREALLOCATE_BYTES_MIN)) {
            self.sync_zeros_if_idle();
        }
    }

    /// Whether everything written is synced and no background request waits. Blocking
    /// appenders are not seen until they have written; they lead their own syncs.
    fn idle(&self) -> bool {
        let (written, synced) = {
            let durable = lock(&self.durable);
            (durable.written.next_offset, durable.synced.next_offset)
        };
        written == synced && lock(&self.sync_requests).target <= synced
    }

    /// Syncs zeros just written ahead, as an ordinary group commit, if nothing was written
    /// since and no other leader is syncing; otherwise the next append's sync carries them.
    fn sync_zeros_if_idle(&self) {
        let mut durable = lock(&self.durable);
        if durable.syncing || durable.error.is_some() || durable.closed {
            return;
        }
        if durable.written.next_offset != durable.synced.next_offset {
            return;
        }
        durable.syncing = true;
        let mark = durable.written.clone();
        drop(durable);
        self.lead_sync(&mark);
    }

    /// Keeps zeros written ahead of the active segment's end, so the next appends overwrite
    /// blocks the file already has. An fdatasync of an append past the file's end must also
    /// commit the new size to the file system's journal; one of bytes written over zeros
    /// already on disk need not. On this project's machines (ext4 on a virtual disk) that took
    /// a 4 KiB write + fdatasync from about 150 µs to about 100 µs.
    ///
    /// While syncs are small, the leader calls this after each sync and the zeros become
    /// durable with the next one. Past [`PREALLOCATE_SYNC_BYTES_MAX`] that next sync would
    /// spend more on the zeros than the size commit saves, so after a large sync only the
    /// background syncer writes zeros, and only while the partition is idle; it then syncs them
    /// at once (`Inner::zeros_when_idle`), in time the disk would otherwise be idle. Under a steady
    /// stream of large appends there is no such time, and they extend the file as before.
    ///
    /// Run by the group-commit leader after a sync. The zeros are written in pieces, each under
    /// the state lock, so appends (which write at `size_bytes`, never past `allocated_bytes`
    /// unless it is behind) and the zeros never overlap, and a writer waits at most one piece.
    /// The zeros become durable with the next sync, which then also commits the new size: one
    /// slower sync per extension. Ahead of a segment of `n` bytes, up to
    /// `clamp(n, PREALLOCATE_BYTES_MIN, preallocate_bytes_max)` bytes are kept zeroed, and more
    /// are added when less than half of that is left. A failed write (a full disk) is logged
    /// and not tried again in this segment: the zeros are only an optimisation, appends past
    /// them extend the file as before, and recovery cuts any zeros after the last batch.
    /// Writes at most `at_most` bytes per call; returns whether it wrote any.
    fn preallocate_if_due(&self, at_most: u64) -> bool {
        const PIECE: usize = 64 * 1024;
        static ZEROS: [u8; PIECE] = [0; PIECE];
        let max = self.config.preallocate_bytes_max;
        if max == 0 || self.config.durability != Durability::Fsync {
            return false;
        }
        let limit = self.config.segment_bytes_max;
        let mut due = true;
        let mut wrote = 0;
        while due && wrote < at_most {
            let mut state = lock(&self.state);
            // A close may come between two pieces (the leader gave the sync token back before
            // writing them). It holds the state lock until it has cut the zeros and marked the
            // partition closed, so checking here means no zeros follow a closed segment's data.
            if lock(&self.durable).closed {
                return wrote > 0;
            }
            let active = &mut state.active;
            if active.preallocation_failed {
                return wrote > 0;
            }
            let ahead = active.size_bytes.clamp(PREALLOCATE_BYTES_MIN.min(max), max);
            let target = (active.size_bytes + ahead).min(limit);
            if active.allocated_bytes >= (active.size_bytes + ahead / 2).min(target) {
                return wrote > 0;
            }
            let start = active.allocated_bytes;
            let bytes = (target - start).min(PIECE as u64).min(at_most - wrote);
            let piece = &ZEROS[..usize::try_from(bytes).expect("a piece fits in memory")];
            if let Err(error) = active.data.write_all_at(piece, start) {
                tracing::warn!(dir = %self.dir.display(), %error, "could not write zeros ahead of the active segment; not trying again before the next segment");
                active.preallocation_failed = true;
                // Part of the piece may be in the file: cut it, or count it so a roll cuts it.
                if active.data.set_len(start).is_err() {
                    active.allocated_bytes = start + bytes;
                }
                return wrote > 0;
            }
            active.allocated_bytes = start + bytes;
            wrote += bytes;
            due = active.allocated_bytes < target;
        }
        wrote > 0
    }

    /// Writes a recovery checkpoint at `mark` (already synced) once enough synced bytes passed
    /// the previous one. Indexes are synced first, and only entries below the mark are counted.
    fn checkpoint_if_due(&self, mark: &Mark) {
        let Ok(_writer) = self.checkpoint_writer.try_lock() else {
            return; // another thread is writing one; the next sync will try again
        };
        let files = {
            let state = lock(&self.state);
            let due = state.active.base_offset == mark.segment_base
                && mark.position
                    >= state.checkpoint_position + self.config.recovery_checkpoint_interval_bytes;
            // Entries present now are the only ones the index sync below can cover.
            let entries = (state.active.index.offsets.len(), state.active.index.times.len());
            due.then(|| {
                let offset_index = Arc::clone(&state.active.offset_index_file);
                (offset_index, Arc::clone(&state.active.time_index_file), entries)
            })
        };
        let Some((offset_index, time_index, synced_entries)) = files else { return };
        if let Err(error) = offset_index.sync_data().and_then(|()| time_index.sync_data()) {
            tracing::error!(dir = %self.dir.display(), %error, "could not sync indexes for a checkpoint");
            return;
        }
        let checkpoint = {
            let state = lock(&self.state);
            if state.active.base_offset != mark.segment_base {
                return;
            }
            let index = &state.active.index;
            let relative_end = u64::from(relative(mark.next_offset, mark.segment_base));
            let times = index
                .times
                .partition_point(|entry| u64::from(entry.relative_offset) < relative_end);
            Checkpoint {
                segment_base_offset: mark.segment_base,
                position: mark.position,
                next_offset: mark.next_offset,
                max_timestamp: mark.max_timestamp,
                offset_index_entries: count(
                    index.offset_entries_below(mark.position).min(synced_entries.0),
                ),
                time_index_entries: count(times.min(synced_entries.1)),
            }
        };
        match checkpoint.write_as(self.storage.as_ref(), &self.dir, CHECKPOINT_SYNC_TEMP_FILE) {
            Ok(()) => {
                let mut state = lock(&self.state);
                if state.active.base_offset == mark.segment_base {
                    state.checkpoint_position = state.checkpoint_position.max(mark.position);
                }
            }
            Err(error) => {
                tracing::error!(dir = %self.dir.display(), %error, "could not write recovery checkpoint");
            }
        }
    }

    /// Syncs everything and writes a checkpoint at the very end, then refuses further appends.
    /// Holds the group-commit token like a roll does (see `Inner::roll`).
    pub(crate) fn close(&self) -> Result<(), MaintenanceError> {
        let mut state = lock(&self.state);
        self.take_sync_token().map_err(poisoned)?;
        let sealed = self.seal_active(&mut state).map(|()| {
            let written = lock(&self.durable).written.clone();
            Some((written.clone(), written))
        });
        self.release_sync_token(sealed).map_err(poisoned)?;
        let active = &state.active;
        let checkpoint = active.end_checkpoint();
        let io_error =
            |source| MaintenanceError::Io { action: "closing", path: self.dir.clone(), source };
        checkpoint
            .write_as(self.storage.as_ref(), &self.dir, CHECKPOINT_TEMP_FILE)
            .map_err(io_error)?;
        let mut durable = lock(&self.durable);
        durable.closed = true;
        self.durable_changed.notify_all();
        Ok(())
    }
}

fn poisoned(error: AppendError) -> MaintenanceError {
    match error {
        AppendError::Poisoned { source } => MaintenanceError::Poisoned { source },
        other => unreachable!("the sync token fails only when poisoned, not with {other}"),
    }
}

fn count(entries: usize) -> u32 {
    u32::try_from(entries).expect("a segment holds fewer than 2^32 index entries")
}

impl Partition {
    /// Asks for every offset up to `last_offset` to be made durable in the background, and
    /// returns at once: for callers that wait without a thread (an async task awaiting
    /// [`Partition::set_sync_listener`]'s news) rather than in [`Partition::wait_durable`].
    /// A background thread leads group commits while requests come, and ends after a second
    /// without any. Nothing to do under durability policies other than `Fsync`.
    pub fn request_sync(&self, last_offset: u64) {
        if self.inner.config.durability != Durability::Fsync {
            return;
        }
        let mut requests = lock(&self.inner.sync_requests);
        requests.target = requests.target.max(last_offset + 1);
        if requests.running {
            self.inner.sync_wanted.notify_one();
            return;
        }
        requests.running = true;
        let weak = Arc::downgrade(&self.inner);
        let spawned = std::thread::Builder::new()
            .name("sluice-log-syncer".to_owned())
            .spawn(move || run_syncer(&weak));
        if let Err(error) = spawned {
            // No thread: sync here instead, so the request is still served.
            requests.running = false;
            drop(requests);
            tracing::warn!(%error, "could not start a syncer thread; syncing in the caller");
            let _ = self.inner.wait_synced(last_offset + 1);
        }
    }

    /// Sets the callback told the synced next offset after every sync, and after a failed one
    /// (then [`Partition::synced_offset`] says why). Set once; later calls are ignored.
    pub fn set_sync_listener(&self, listener: impl Fn(u64) + Send + Sync + 'static) {
        let _ = self.inner.sync_listener.set(Box::new(listener));
    }

    /// The offset below which every record is durable (under `Fsync`: fdatasynced), or the
    /// error that poisoned the partition.
    ///
    /// # Errors
    /// [`AppendError::Poisoned`].
    pub fn synced_offset(&self) -> Result<u64, AppendError> {
        let durable = lock(&self.inner.durable);
        if let Some(error) = &durable.error {
            return Err(AppendError::Poisoned { source: Arc::clone(error) });
        }
        if self.inner.config.durability == Durability::Fsync {
            Ok(durable.synced.next_offset)
        } else {
            Ok(durable.written.next_offset)
        }
    }
}

/// The background syncer: syncs up to the newest requested offset, again and again, and ends
/// after [`SYNCER_IDLE`] without a request (or when the partition is gone or failed).
fn run_syncer(inner: &Weak<Inner>) {
    let mut done = 0;
    loop {
        let Some(strong) = inner.upgrade() else { return };
        let target = {
            let mut requests = lock(&strong.sync_requests);
            loop {
                if requests.target > done {
                    break requests.target;
                }
                let (guard, timeout) = strong
                    .sync_wanted
                    .wait_timeout(requests, SYNCER_IDLE)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                requests = guard;
                if timeout.timed_out() && requests.target <= done {
                    requests.running = false;
                    return;
                }
            }
        };
        let result = strong.wait_synced(target);
        if result.is_ok() {
            strong.zeros_when_idle();
        }
        done = target;
        if let Err(error) = result {
            tracing::error!(dir = %strong.dir.display(), %error, "background sync failed");
            let synced = lock(&strong.durable).synced.next_offset;
            strong.tell_listener(synced);
            lock(&strong.sync_requests).running = false;
            return;
        }
    }
}

/// The body of the `Durability::Interval` flusher thread: syncs every `period` until the
/// partition is dropped or closed (its sender hangs up).
pub(crate) fn run_flusher(inner: &Weak<Inner>, period: Duration, stop: &Receiver<()>) {
    loop {
        match stop.recv_timeout(period) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let Some(inner) = inner.upgrade() else { return };
        let target = lock(&inner.durable).written.next_offset;
        if let Err(error) = inner.wait_synced(target) {
            tracing::error!(dir = %inner.dir.display(), %error, "interval flush failed");
            return;
        }
    }
}
