//! The storage contract the log is written against, and its implementation on real files.
//!
//! Every byte the log keeps goes through [`Storage`] and [`StorageFile`], so tests can swap in
//! [`crate::sim::SimStorage`], which keeps what was synced apart from what was only written and can
//! drop, tear or fail I/O on purpose. The contract is deliberately small: positional reads and
//! writes, `fdatasync`, length changes, and the few directory operations the log needs.
//!
//! What the log assumes of an implementation (drawn in `docs/format.md`):
//! - after `sync_data` returns `Ok`, the file's bytes and length up to that moment survive a crash;
//! - a new name, rename or removal survives a crash only once `sync_dir` of its directory returned;
//! - bytes written but not synced may survive in part, in any state, or not at all;
//! - after `sync_data` fails, nothing about the unsynced bytes can be trusted (the log poisons).

use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How [`Storage::open`] treats a missing or existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Open an existing file for reading only.
    Read,
    /// Open an existing file for reading and writing.
    ReadWrite,
    /// Create the file, failing if it already exists; open for reading and writing.
    CreateNew,
    /// Create the file or truncate it to zero bytes; open for reading and writing.
    CreateTruncate,
}

/// A file the log reads and writes by position.
pub trait StorageFile: Send + Sync + Debug {
    /// Reads up to `buf.len()` bytes at `position`; returns how many were read (0 at the end).
    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `position`, extending the file if needed.
    fn write_all_at(&self, buf: &[u8], position: u64) -> io::Result<()>;
    /// Makes every byte written so far, and the file length, durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// The file's current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Truncates or extends the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// Whether the file holds no bytes.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Reads exactly `buf.len()` bytes at `position`, or fails with `UnexpectedEof`.
    fn read_exact_at(&self, mut buf: &mut [u8], mut position: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, position) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("file ends before position {}", position + buf.len() as u64),
                    ))
                }
                Ok(read) => {
                    buf = &mut buf[read..];
                    position += read as u64;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
}

/// A shared handle to an open file.
pub type FileHandle = Arc<dyn StorageFile>;

/// The directory operations the log needs, and the way to open files.
pub trait Storage: Send + Sync + Debug {
    /// Creates `path` and its parents, durably: when it returns, the new directories survive a
    /// crash.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// The names of the regular files directly in `path`.
    fn list_files(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Opens `path` as `mode` says.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<FileHandle>;
    /// Removes the file at `path` (durable after `sync_dir`).
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Renames `from` to `to`, replacing `to` atomically (durable after `sync_dir`).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
}

/// [`Storage`] on the machine's real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct FsStorage;

#[derive(Debug)]
struct FsFile {
    file: File,
    path: PathBuf,
}

impl StorageFile for FsFile {
    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<usize> {
        self.file.read_at(buf, position)
    }

    fn write_all_at(&self, buf: &[u8], position: u64) -> io::Result<()> {
        self.file.write_all_at(buf, position)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len).map_err(|error| {
            io::Error::new(error.kind(), format!("resizing {}: {error}", self.path.display()))
        })
    }
}

impl Storage for FsStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let missing: Vec<&Path> =
            path.ancestors().take_while(|ancestor| !ancestor.exists()).collect();
        std::fs::create_dir_all(path)?;
        // A new directory's name lives in its parent: sync each parent, outermost first, so the
        // directory (and every segment later synced into it) survives a crash.
        for created in missing.iter().rev() {
            if let Some(parent) = created.parent().filter(|parent| !parent.as_os_str().is_empty()) {
                self.sync_dir(parent)?;
            }
        }
        Ok(())
    }

    fn list_files(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                if let Some(name) = entry.file_name().to_str() {
                    names.push(name.to_owned());
                }
            }
        }
        Ok(names)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<FileHandle> {
        let mut options = OpenOptions::new();
        match mode {
            OpenMode::Read => options.read(true),
            OpenMode::ReadWrite => options.read(true).write(true),
            OpenMode::CreateNew => options.read(true).write(true).create_new(true),
            OpenMode::CreateTruncate => options.read(true).write(true).create(true).truncate(true),
        };
        let file = options.open(path)?;
        Ok(Arc::new(FsFile { file, path: path.to_owned() }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
}
