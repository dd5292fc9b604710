//! Opening a partition: find its segments, clear what an interrupted operation left behind, and
//! recover the active segment's tail.
//!
//! Cost: one directory listing, one `open` and small reads per closed segment (its size and its
//! last time-index entry), and a scan of the active segment from the recovery checkpoint to its
//! end. Closed segments are never scanned at open: each was fully synced before the next one
//! was created. So opening costs the same whether the partition holds 10 MB or 10 GB; what it
//! depends on is `recovery_checkpoint_interval_bytes` and, under `Durability::None`, the size
//! of the active segment.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use crate::append::create_segment;
use crate::cache::SegmentCache;
use crate::checkpoint::{
    Checkpoint, CHECKPOINT_FILE, CHECKPOINT_SYNC_TEMP_FILE, CHECKPOINT_TEMP_FILE,
};
use crate::clock::Clock;
use crate::config::LogConfig;
use crate::error::OpenError;
use crate::index::{
    decode_offset_entries, decode_time_entries, SegmentIndex, TimeEntry, OFFSET_ENTRY_BYTES,
    TIME_ENTRY_BYTES,
};
use crate::keys::{batch_keys, ActiveKeys, KeyLookupCounters};
use crate::partition::{ActiveSegment, DurableState, Inner, LogState, Mark, RecoveryReport};
use crate::segment::{
    relative, scan, ClosedSegment, Continuity, IndexBuilder, SegmentFile, CLEANED_SUFFIX,
    REBUILT_SUFFIX,
};
use crate::storage::{FileHandle, OpenMode, Storage, StorageFile};

/// The segment files found in the directory.
#[derive(Debug, Default)]
struct Found {
    data: BTreeSet<u64>,
    indexes: Vec<(u64, SegmentFile)>,
    leftovers: Vec<String>,
}

pub(crate) fn open(
    dir: &Path,
    config: LogConfig,
    storage: Arc<dyn Storage>,
    clock: Arc<dyn Clock>,
) -> Result<Inner, OpenError> {
    config.validate()?;
    let io_error = |source| OpenError::Io { path: dir.to_owned(), source };
    storage.create_dir_all(dir).map_err(io_error)?;
    let found = find_files(storage.as_ref(), dir)?;
    clear_leftovers(storage.as_ref(), dir, &found).map_err(io_error)?;
    let now_ms = clock.now_ms();
    let interval = config.index_interval_bytes;
    let (closed, active, recovery) = match found.data.last().copied() {
        None => {
            let active =
                create_segment(storage.as_ref(), dir, interval, now_ms, 0).map_err(io_error)?;
            (BTreeMap::new(), active, RecoveryReport::default())
        }
        Some(last) => {
            let closed =
                load_closed_segments(storage.as_ref(), dir, &found.data, last).map_err(io_error)?;
            let checkpoint = Checkpoint::read(storage.as_ref(), dir).map_err(io_error)?;
            let (active, report) =
                recover_active(storage.as_ref(), dir, last, checkpoint, interval, now_ms)
                    .map_err(io_error)?;
            (closed, active, report)
        }
    };
    write_open_checkpoint(storage.as_ref(), dir, &active).map_err(io_error)?;
    let mark = Mark {
        segment_base: active.base_offset,
        position: active.size_bytes,
        next_offset: active.next_offset,
        max_timestamp: active.builder.max_timestamp,
        file: Arc::clone(&active.data),
    };
    let checkpoint_position = active.size_bytes;
    let cache = SegmentCache::new(config.open_segments_max);
    Ok(Inner {
        dir: dir.to_owned(),
        config,
        storage,
        clock,
        state: Mutex::new(LogState { closed, active, cache, checkpoint_position }),
        durable: Mutex::new(DurableState {
            written: mark.clone(),
            synced: mark,
            syncing: false,
            error: None,
            closed: false,
        }),
        durable_changed: Condvar::new(),
        maintenance: Mutex::new(()),
        checkpoint_writer: Mutex::new(()),
        recovery,
        key_counters: KeyLookupCounters::default(),
        sync_requests: Mutex::new(crate::partition::SyncRequests::default()),
        sync_wanted: Condvar::new(),
        sync_listener: std::sync::OnceLock::new(),
        large_sync_bytes: std::sync::atomic::AtomicU64::new(0),
    })
}

fn find_files(storage: &dyn Storage, dir: &Path) -> Result<Found, OpenError> {
    let names =
        storage.list_files(dir).map_err(|source| OpenError::Io { path: dir.to_owned(), source })?;
    let mut found = Found::default();
    for name in names {
        match SegmentFile::parse(&name) {
            Some((base, SegmentFile::Data)) => {
                found.data.insert(base);
            }
            Some((base, kind)) => found.indexes.push((base, kind)),
            None if name == CHECKPOINT_FILE => {}
            None if name == CHECKPOINT_TEMP_FILE
                || name == CHECKPOINT_SYNC_TEMP_FILE
                || name.ends_with(CLEANED_SUFFIX)
                || name.ends_with(REBUILT_SUFFIX) =>
            {
                found.leftovers.push(name);
            }
            None => return Err(OpenError::UnexpectedFile { dir: dir.to_owned(), name }),
        }
    }
    Ok(found)
}

/// Removes temporary files of interrupted checkpoints and compactions, and index files whose
/// data file is gone (an interrupted retention delete).
fn clear_leftovers(storage: &dyn Storage, dir: &Path, found: &Found) -> io::Result<()> {
    let orphans = found.indexes.iter().filter(|(base, _)| !found.data.contains(base));
    let mut removed = 0;
    for name in found.leftovers.iter().cloned().chain(orphans.map(|(base, kind)| kind.name(*base)))
    {
        tracing::info!(dir = %dir.display(), file = %name, "removing leftover file");
        storage.remove_file(&dir.join(name))?;
        removed += 1;
    }
    if removed > 0 {
        storage.sync_dir(dir)?;
    }
    Ok(())
}

/// Everything but the last segment: its size and newest timestamp, without scanning it.
fn load_closed_segments(
    storage: &dyn Storage,
    dir: &Path,
    bases: &BTreeSet<u64>,
    last: u64,
) -> io::Result<BTreeMap<u64, ClosedSegment>> {
    let mut closed = BTreeMap::new();
    let bases: Vec<u64> = bases.iter().copied().collect();
    for pair in bases.windows(2) {
        let (base_offset, next_offset) = (pair[0], pair[1]);
        let size_bytes =
            storage.open(&SegmentFile::Data.path(dir, base_offset), OpenMode::Read)?.len()?;
        let max_timestamp = last_time_entry(storage, dir, base_offset)?;
        closed.insert(
            base_offset,
            ClosedSegment { base_offset, next_offset, size_bytes, max_timestamp, rewrites: 0 },
        );
    }
    debug_assert!(bases.last() == Some(&last));
    Ok(closed)
}

fn last_time_entry(storage: &dyn Storage, dir: &Path, base: u64) -> io::Result<Option<i64>> {
    let file = match storage.open(&SegmentFile::TimeIndex.path(dir, base), OpenMode::Read) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let len = file.len()?;
    if len == 0 || len % TIME_ENTRY_BYTES as u64 != 0 {
        return Ok(None);
    }
    let mut bytes = [0u8; TIME_ENTRY_BYTES];
    file.read_exact_at(&mut bytes, len - TIME_ENTRY_BYTES as u64)?;
    Ok(Some(TimeEntry::decode(&bytes).timestamp_ms))
}

fn open_or_create(storage: &dyn Storage, path: &Path) -> io::Result<FileHandle> {
    match storage.open(path, OpenMode::ReadWrite) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            storage.open(path, OpenMode::CreateNew)
        }
        other => other,
    }
}

/// Where the tail scan starts, from a checkpoint that fits the segment.
struct Resume {
    position: u64,
    next_offset: u64,
    index: SegmentIndex,
    max_timestamp: i64,
}

fn resume_point(
    storage: &dyn Storage,
    dir: &Path,
    base: u64,
    data_bytes: u64,
    checkpoint: Option<Checkpoint>,
) -> io::Result<Option<Resume>> {
    let Some(checkpoint) = checkpoint.filter(|checkpoint| {
        checkpoint.segment_base_offset == base
            && checkpoint.position <= data_bytes
            && checkpoint.next_offset >= base
    }) else {
        return Ok(None);
    };
    let span = checkpoint.next_offset - base;
    let read_prefix = |kind: SegmentFile, bytes: u64| -> io::Result<Option<Vec<u8>>> {
        let file = storage.open(&kind.path(dir, base), OpenMode::Read)?;
        if file.len()? < bytes {
            return Ok(None);
        }
        let mut buffer = vec![0u8; usize::try_from(bytes).expect("index fits in memory")];
        file.read_exact_at(&mut buffer, 0)?;
        Ok(Some(buffer))
    };
    let offsets_bytes = u64::from(checkpoint.offset_index_entries) * OFFSET_ENTRY_BYTES as u64;
    let times_bytes = u64::from(checkpoint.time_index_entries) * TIME_ENTRY_BYTES as u64;
    let offsets = read_prefix(SegmentFile::OffsetIndex, offsets_bytes)?.and_then(|bytes| {
        decode_offset_entries(&bytes, checkpoint.position.max(1), span.max(1)).ok()
    });
    let times = read_prefix(SegmentFile::TimeIndex, times_bytes)?
        .and_then(|bytes| decode_time_entries(&bytes, span.max(1)).ok());
    let (Some(offsets), Some(times)) = (offsets, times) else {
        return Ok(None); // the index does not match the checkpoint: rescan the whole segment
    };
    Ok(Some(Resume {
        position: checkpoint.position,
        next_offset: checkpoint.next_offset,
        index: SegmentIndex { offsets, times },
        max_timestamp: checkpoint.max_timestamp,
    }))
}

/// Scans the active segment from its checkpoint (or from its start), cuts off whatever does not
/// check out, rewrites its indexes to match, and syncs all of it.
fn recover_active(
    storage: &dyn Storage,
    dir: &Path,
    base: u64,
    checkpoint: Option<Checkpoint>,
    interval: u32,
    now_ms: i64,
) -> io::Result<(ActiveSegment, RecoveryReport)> {
    let data = storage.open(&SegmentFile::Data.path(dir, base), OpenMode::ReadWrite)?;
    let offset_index_file = open_or_create(storage, &SegmentFile::OffsetIndex.path(dir, base))?;
    let time_index_file = open_or_create(storage, &SegmentFile::TimeIndex.path(dir, base))?;
    let data_bytes = data.len()?;
    let resume = resume_point(storage, dir, base, data_bytes, checkpoint)?;
    let used_checkpoint = resume.is_some();
    let resume = resume.unwrap_or(Resume {
        position: 0,
        next_offset: base,
        index: SegmentIndex::default(),
        max_timestamp: i64::MIN,
    });
    let mut index = resume.index;
    let mut builder = IndexBuilder::resume(interval, &index, resume.position, resume.max_timestamp);
    let (trusted_offsets, trusted_times) = (index.offsets.len(), index.times.len());
    // The key map covers what this scan visits; the bytes before the checkpoint are scanned
    // for keys by the first lookup that needs them, so opening reads no more than before.
    let mut keys = ActiveKeys::default();
    if resume.position > 0 {
        keys.unindexed_prefix = Some((resume.position, resume.next_offset));
    }
    let end = scan(
        data.as_ref(),
        resume.position,
        data_bytes,
        resume.next_offset,
        Continuity::Contiguous,
        |position, header, bytes| {
            let relative_offset = relative(header.base_offset as u64, base);
            builder.observe(&mut index, relative_offset, position, header);
            match batch_keys(bytes) {
                Ok(batch) => {
                    for (hash, delta) in batch {
                        keys.add(hash, relative_offset + delta);
                    }
                }
                Err(error) => {
                    tracing::error!(dir = %dir.display(), segment = base, position, %error, "batch passed its CRC but its records do not parse; not key-indexed");
                }
            }
        },
    )?;
    // Zeros after the last batch are space written ahead for appends (`preallocate_bytes_max`)
    // that no append reached: cut off, but nothing was lost and nothing is wrong.
    let preallocated = end.fault.is_some() && all_zero(data.as_ref(), end.position, data_bytes)?;
    let report = RecoveryReport {
        bytes_scanned: end.position - resume.position,
        bytes_dropped: if preallocated { 0 } else { data_bytes - end.position },
        fault: if preallocated { None } else { end.fault.clone() },
        used_checkpoint,
    };
    if let Some(fault) = &report.fault {
        tracing::warn!(
            dir = %dir.display(), segment = base, position = end.position,
            bytes_dropped = report.bytes_dropped, %fault,
            "truncating partition at the first batch that does not check out"
        );
    }
    if data_bytes > end.position {
        data.set_len(end.position)?;
    }
    data.sync_data()?;
    rewrite_tail(
        &offset_index_file,
        trusted_offsets,
        &index.offsets,
        |entry| entry.encode().to_vec(),
        OFFSET_ENTRY_BYTES,
    )?;
    rewrite_tail(
        &time_index_file,
        trusted_times,
        &index.times,
        |entry| entry.encode().to_vec(),
        TIME_ENTRY_BYTES,
    )?;
    let active = ActiveSegment {
        base_offset: base,
        next_offset: end.next_offset,
        size_bytes: end.position,
        allocated_bytes: end.position,
        preallocation_failed: false,
        data,
        offset_index_file,
        time_index_file,
        index,
        builder,
        keys,
        created_at_ms: now_ms,
    };
    Ok((active, report))
}

/// Whether every byte of `file` in `start..end` is zero.
fn all_zero(file: &dyn StorageFile, start: u64, end: u64) -> io::Result<bool> {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut position = start;
    while position < end {
        let want = usize::try_from((end - position).min(buffer.len() as u64)).expect("fits");
        let read = file.read_at(&mut buffer[..want], position)?;
        if read == 0 {
            break;
        }
        if buffer[..read].iter().any(|&byte| byte != 0) {
            return Ok(false);
        }
        position += read as u64;
    }
    Ok(true)
}

/// Cuts an index file back to its trusted entries and writes the rebuilt ones after them.
fn rewrite_tail<T>(
    file: &FileHandle,
    trusted: usize,
    entries: &[T],
    encode: impl Fn(&T) -> Vec<u8>,
    entry_bytes: usize,
) -> io::Result<()> {
    file.set_len((trusted * entry_bytes) as u64)?;
    let tail: Vec<u8> = entries[trusted..].iter().flat_map(encode).collect();
    file.write_all_at(&tail, (trusted * entry_bytes) as u64)?;
    file.sync_data()
}

/// After recovery everything in the active segment is synced: checkpoint its very end.
fn write_open_checkpoint(
    storage: &dyn Storage,
    dir: &Path,
    active: &ActiveSegment,
) -> io::Result<()> {
    active.end_checkpoint().write_as(storage, dir, CHECKPOINT_TEMP_FILE)
}
