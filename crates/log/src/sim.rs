//! An in-memory [`Storage`] that remembers what was synced apart from what was only written, and
//! can lose, tear or fail I/O on purpose. The crash tests drive the log through it.
//!
//! The model of the disk (the same one `docs/format.md` says the log assumes):
//! - a file's bytes are durable up to its last successful `sync_data`;
//! - a directory entry (creation, rename, removal) is durable once its directory was synced;
//!   directories themselves are durable at once;
//! - at a crash every file falls back to its synced bytes, plus, in [`CrashMode::Torn`], a random
//!   prefix of what was written after, whose last page may be garbage.
//!
//! After [`SimStorage::crash`] every handle opened before it fails, as if its process had died, so
//! a partition left over from before the crash cannot write into the "rebooted" disk.
//!
//! One seed drives every random choice, so a failing run can be replayed.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::storage::{FileHandle, OpenMode, Storage, StorageFile};

/// How much of the unsynced bytes a crash leaves behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Every file falls back to exactly what was synced.
    DropUnsynced,
    /// Every file keeps a random prefix of its unsynced bytes, and that prefix's last 512-byte
    /// sector may be zeros or random bytes (a torn write).
    Torn,
}

/// A small deterministic generator (xorshift64*), so the simulator needs no dependency.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator started from `seed` (0 is replaced by a fixed non-zero value).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..bound` (`bound` must not be 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "SimRng::below needs a non-zero bound");
        self.next_u64() % bound
    }
}

#[derive(Debug, Default)]
struct Inode {
    data: Vec<u8>,
    synced: Vec<u8>,
    /// Bytes from here on were in a write-back that failed. Linux marks such pages clean, so a
    /// later fdatasync reports success without writing them: they never become durable.
    lost_from: Option<usize>,
}

#[derive(Debug)]
struct SimState {
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    inodes: BTreeMap<u64, Inode>,
    inode_next: u64,
    generation: u64,
    rng: SimRng,
    syncs_until_failure: Option<u64>,
    dir_ops_until_crash: Option<(u64, CrashMode)>,
    writes_fail: bool,
    capacity_bytes: Option<u64>,
    bytes_read: u64,
    syncs: u64,
}

/// The in-memory, fault-injecting storage. Cloning shares the same simulated disk.
#[derive(Debug, Clone)]
pub struct SimStorage {
    state: Arc<Mutex<SimState>>,
    /// Set by [`SimStorage::incarnation`]: this handle belongs to one "process" and fails after
    /// the next crash, like the file handles it opened.
    generation: Option<u64>,
}

impl SimStorage {
    /// An empty disk whose random choices follow `seed`.
    pub fn new(seed: u64) -> Self {
        let state = SimState {
            names: BTreeMap::new(),
            durable_names: BTreeMap::new(),
            dirs: BTreeSet::new(),
            inodes: BTreeMap::new(),
            inode_next: 1,
            generation: 0,
            rng: SimRng::new(seed),
            syncs_until_failure: None,
            dir_ops_until_crash: None,
            writes_fail: false,
            capacity_bytes: None,
            bytes_read: 0,
            syncs: 0,
        };
        Self { state: Arc::new(Mutex::new(state)), generation: None }
    }

    /// A handle to the same disk for one "process": every operation through it fails once the
    /// disk has crashed since, so a partition left over from before a crash cannot touch the
    /// rebooted disk. Give each opened partition its own incarnation.
    pub fn incarnation(&self) -> SimStorage {
        let generation = self.lock().generation;
        SimStorage { state: Arc::clone(&self.state), generation: Some(generation) }
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Locks the disk for a storage operation, failing if this incarnation has died.
    fn lock_live(&self) -> io::Result<MutexGuard<'_, SimState>> {
        let state = self.lock();
        match self.generation {
            Some(generation) if generation != state.generation => Err(dead()),
            _ => Ok(state),
        }
    }

    /// Counts a directory operation toward [`SimStorage::crash_after_dir_ops`]; crashes the disk
    /// and fails the operation when the count runs out.
    fn directory_operation(&self, state: &mut SimState) -> io::Result<()> {
        match state.dir_ops_until_crash {
            Some((0, mode)) => {
                state.dir_ops_until_crash = None;
                crash_locked(state, mode);
                Err(dead())
            }
            Some((count, mode)) => {
                state.dir_ops_until_crash = Some((count - 1, mode));
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Crashes the disk (as [`SimStorage::crash`] with `mode`) at the `count`-th rename, removal
    /// or directory sync from now (0 = the next one), instead of performing it.
    pub fn crash_after_dir_ops(&self, count: u64, mode: CrashMode) {
        self.lock().dir_ops_until_crash = Some((count, mode));
    }

    /// Simulates a power loss: every open handle dies and every file falls back as `mode` says.
    pub fn crash(&self, mode: CrashMode) {
        crash_locked(&mut self.lock(), mode);
    }

    /// Makes the `count`-th `sync_data` from now (0 = the next one) fail with an I/O error.
    pub fn fail_sync_after(&self, count: u64) {
        self.lock().syncs_until_failure = Some(count);
    }

    /// Makes every write fail with an I/O error while `fail` is set.
    pub fn set_writes_fail(&self, fail: bool) {
        self.lock().writes_fail = fail;
    }

    /// Limits the bytes all files may hold together; a write past it fails as a full disk does,
    /// after writing what fits.
    pub fn set_capacity_bytes(&self, capacity_bytes: Option<u64>) {
        self.lock().capacity_bytes = capacity_bytes;
    }

    /// Bytes read through every handle since the disk was made.
    pub fn bytes_read(&self) -> u64 {
        self.lock().bytes_read
    }

    /// Successful and failed `sync_data` calls since the disk was made.
    pub fn sync_count(&self) -> u64 {
        self.lock().syncs
    }

    /// The current (not necessarily durable) contents of the file at `path`, if it exists.
    pub fn file_contents(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.lock();
        let inode = state.names.get(path)?;
        state.inodes.get(inode).map(|inode| inode.data.clone())
    }

    /// How many bytes of the file at `path` a crash would leave (its synced length), if it exists.
    pub fn synced_len(&self, path: &Path) -> Option<usize> {
        let state = self.lock();
        let inode = state.names.get(path)?;
        state.inodes.get(inode).map(|inode| inode.synced.len())
    }

    /// Overwrites bytes of the file at `path` directly and durably, as bit rot would.
    ///
    /// # Panics
    /// If the file does not exist or the range is past its end: a test asked for the impossible.
    pub fn corrupt(&self, path: &Path, position: usize, bytes: &[u8]) {
        let mut state = self.lock();
        let inode = *state.names.get(path).expect("corrupt: no such file");
        let inode = state.inodes.get_mut(&inode).expect("corrupt: named inode exists");
        inode.data[position..position + bytes.len()].copy_from_slice(bytes);
        inode.synced = inode.data.clone();
    }

    fn total_bytes(state: &SimState) -> u64 {
        state.inodes.values().map(|inode| inode.data.len() as u64).sum()
    }
}

fn crash_locked(state: &mut SimState, mode: CrashMode) {
    state.generation += 1;
    state.names = state.durable_names.clone();
    let live: BTreeSet<u64> = state.names.values().copied().collect();
    state.inodes.retain(|inode, _| live.contains(inode));
    let SimState { inodes, rng, .. } = state;
    for inode in inodes.values_mut() {
        let kept = match mode {
            CrashMode::DropUnsynced => inode.synced.clone(),
            CrashMode::Torn => torn_copy(inode, rng),
        };
        inode.data = kept.clone();
        inode.synced = kept;
        inode.lost_from = None;
    }
    state.syncs_until_failure = None;
    state.dir_ops_until_crash = None;
    state.writes_fail = false;
}

fn dead() -> io::Error {
    io::Error::other("simulated crash: this handle belongs to a dead process")
}

fn torn_copy(inode: &Inode, rng: &mut SimRng) -> Vec<u8> {
    // Only a pure extension of the synced bytes is torn; a file that was also truncated or
    // rewritten below its synced length falls back to what was synced.
    let synced_len = inode.synced.len();
    let extended = inode.data.len() > synced_len && inode.data[..synced_len] == inode.synced[..];
    let lost = inode.lost_from.is_some();
    if !extended || lost {
        return inode.synced.clone();
    }
    let unsynced = inode.data.len() - synced_len;
    let mut kept = inode.synced.clone();
    let keep = rng.below(unsynced as u64 + 1) as usize;
    kept.extend_from_slice(&inode.data[synced_len..synced_len + keep]);
    if keep > 0 && rng.below(2) == 0 {
        let sector_start = synced_len + (keep - 1) / 512 * 512;
        let sector_start = sector_start.max(synced_len);
        let garbage_zero = rng.below(2) == 0;
        for byte in &mut kept[sector_start..] {
            *byte = if garbage_zero { 0 } else { rng.next_u64() as u8 };
        }
    }
    kept
}

#[derive(Debug)]
struct SimFile {
    state: Arc<Mutex<SimState>>,
    inode: u64,
    generation: u64,
    writable: bool,
}

impl SimFile {
    fn lock(&self) -> io::Result<MutexGuard<'_, SimState>> {
        let state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.generation != self.generation {
            return Err(io::Error::other("simulated crash: this handle belongs to a dead process"));
        }
        Ok(state)
    }
}

impl StorageFile for SimFile {
    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<usize> {
        let mut state = self.lock()?;
        let data = &state.inodes.get(&self.inode).ok_or_else(removed)?.data;
        let start = usize::try_from(position).unwrap_or(usize::MAX).min(data.len());
        let count = buf.len().min(data.len() - start);
        buf[..count].copy_from_slice(&data[start..start + count]);
        state.bytes_read += count as u64;
        Ok(count)
    }

    fn write_all_at(&self, buf: &[u8], position: u64) -> io::Result<()> {
        let mut state = self.lock()?;
        if !self.writable {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "opened read-only"));
        }
        if state.writes_fail {
            return Err(io::Error::other("simulated write failure"));
        }
        let position = usize::try_from(position).expect("simulated files fit in memory");
        let total = SimStorage::total_bytes(&state);
        let inode = state.inodes.get_mut(&self.inode).ok_or_else(removed)?;
        let growth = (position + buf.len()).saturating_sub(inode.data.len()) as u64;
        let room = state.capacity_bytes.map(|capacity| capacity.saturating_sub(total));
        let (count, full) = match room {
            Some(room) if growth > room => {
                let fits = buf.len() as u64 - (growth - room);
                (usize::try_from(fits).expect("fits in buf"), true)
            }
            _ => (buf.len(), false),
        };
        let inode = state.inodes.get_mut(&self.inode).ok_or_else(removed)?;
        if inode.data.len() < position + count {
            inode.data.resize(position + count, 0);
        }
        inode.data[position..position + count].copy_from_slice(&buf[..count]);
        if full {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "simulated disk full"));
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut state = self.lock()?;
        state.syncs += 1;
        let fail = state.syncs_until_failure == Some(0);
        state.syncs_until_failure =
            state.syncs_until_failure.and_then(|count| count.checked_sub(1));
        let inode = state.inodes.get_mut(&self.inode).ok_or_else(removed)?;
        if fail {
            // The failed write-back's pages are dropped from the disk's future for good.
            let from = inode.synced.len().min(inode.data.len());
            inode.lost_from = Some(inode.lost_from.map_or(from, |lost| lost.min(from)));
            return Err(io::Error::other("simulated fsync failure"));
        }
        let mut synced = inode.data.clone();
        if let Some(lost) = inode.lost_from {
            let previous = inode.synced.clone();
            for (position, byte) in synced.iter_mut().enumerate().skip(lost) {
                *byte = previous.get(position).copied().unwrap_or(0);
            }
        }
        inode.synced = synced;
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let state = self.lock()?;
        Ok(state.inodes.get(&self.inode).ok_or_else(removed)?.data.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.lock()?;
        let inode = state.inodes.get_mut(&self.inode).ok_or_else(removed)?;
        inode.data.resize(usize::try_from(len).expect("simulated files fit in memory"), 0);
        Ok(())
    }
}

fn removed() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "simulated file was removed")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}: no such file", path.display()))
}

impl Storage for SimStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock_live()?;
        for ancestor in path.ancestors() {
            state.dirs.insert(ancestor.to_owned());
        }
        Ok(())
    }

    fn list_files(&self, path: &Path) -> io::Result<Vec<String>> {
        let state = self.lock_live()?;
        if !state.dirs.contains(path) {
            return Err(not_found(path));
        }
        let names = state
            .names
            .keys()
            .filter(|name| name.parent() == Some(path))
            .filter_map(|name| name.file_name()?.to_str().map(str::to_owned))
            .collect();
        Ok(names)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<FileHandle> {
        let mut state = self.lock_live()?;
        let parent = path.parent().unwrap_or(Path::new(""));
        if !state.dirs.contains(parent) {
            return Err(not_found(parent));
        }
        let existing = state.names.get(path).copied();
        let inode = match (mode, existing) {
            (OpenMode::Read | OpenMode::ReadWrite, None) => return Err(not_found(path)),
            (OpenMode::Read | OpenMode::ReadWrite, Some(inode)) => inode,
            (OpenMode::CreateNew, Some(_)) => {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, "file exists"))
            }
            (OpenMode::CreateTruncate, Some(inode)) => {
                state.inodes.get_mut(&inode).ok_or_else(removed)?.data.clear();
                inode
            }
            (OpenMode::CreateNew | OpenMode::CreateTruncate, None) => {
                let inode = state.inode_next;
                state.inode_next += 1;
                state.inodes.insert(inode, Inode::default());
                state.names.insert(path.to_owned(), inode);
                inode
            }
        };
        Ok(Arc::new(SimFile {
            state: Arc::clone(&self.state),
            inode,
            generation: state.generation,
            writable: mode != OpenMode::Read,
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock_live()?;
        self.directory_operation(&mut state)?;
        state.names.remove(path).ok_or_else(|| not_found(path))?;
        // The inode stays while the durable name may still point at it; `crash` prunes the rest.
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock_live()?;
        self.directory_operation(&mut state)?;
        let inode = state.names.remove(from).ok_or_else(|| not_found(from))?;
        state.names.insert(to.to_owned(), inode);
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock_live()?;
        self.directory_operation(&mut state)?;
        let SimState { names, durable_names, .. } = &mut *state;
        durable_names.retain(|name, _| name.parent() != Some(path));
        for (name, inode) in names.iter() {
            if name.parent() == Some(path) {
                durable_names.insert(name.clone(), *inode);
            }
        }
        Ok(())
    }
}
