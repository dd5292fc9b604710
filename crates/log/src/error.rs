//! Errors of the partition log, one enum per operation family.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use sluice_format::BatchError;

use crate::config::ConfigError;

/// An I/O error shared by everyone it affects (a failed group commit fails every waiter).
pub type SharedIoError = Arc<io::Error>;

/// Opening (and recovering) a partition failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The configuration is out of range.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The storage failed.
    #[error("opening partition at {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A file name in the partition directory claims to be a segment but does not parse.
    #[error(
        "partition directory {dir} holds {name}, which is not a segment, index or checkpoint file"
    )]
    UnexpectedFile {
        /// The partition directory.
        dir: PathBuf,
        /// The offending file name.
        name: String,
    },
}

/// An append was refused or failed. Nothing was acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The batch is malformed (length, magic, CRC, compression, record framing).
    #[error("batch refused: {0}")]
    Batch(#[from] BatchError),
    /// The batch is larger than the partition accepts.
    #[error("batch refused: it is {bytes} bytes and the limit (batch_bytes_max) is {limit} bytes")]
    BatchTooLarge {
        /// The batch's size.
        bytes: u64,
        /// `batch_bytes_max`.
        limit: u32,
    },
    /// The disk is full. The partial write was removed; the partition keeps serving and later
    /// appends may succeed once space is freed.
    #[error("disk full appending to {path}; nothing was appended: {source}")]
    DiskFull {
        /// The segment file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An earlier write or fsync failed, so the partition refuses appends until it is reopened
    /// (recovery then starts from what is durable).
    #[error("partition is poisoned by an earlier storage failure and must be reopened: {source}")]
    Poisoned {
        /// The failure that poisoned the partition.
        #[source]
        source: SharedIoError,
    },
    /// The partition has been closed.
    #[error("partition is closed")]
    Closed,
}

/// A read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The offset is before the log start or past the high watermark.
    #[error(
        "offset {offset} is out of range: the partition holds offsets {log_start_offset} up to \
         (not including) {high_watermark}"
    )]
    OffsetOutOfRange {
        /// The offset asked for.
        offset: u64,
        /// The first offset still stored.
        log_start_offset: u64,
        /// The next offset to be written and made visible.
        high_watermark: u64,
    },
    /// Stored bytes do not check out; they are not served.
    #[error("corrupt batch in {path} at byte {position}: {source}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// The byte position of the batch.
        position: u64,
        /// What is wrong.
        #[source]
        source: BatchError,
    },
    /// A closed segment's data file does not check out from `position` on (damage after it was
    /// synced); nothing past it is served.
    #[error("segment {path} is damaged at byte {position}: {fault}")]
    Damaged {
        /// The segment file.
        path: PathBuf,
        /// The byte position where the damage starts.
        position: u64,
        /// What is wrong.
        fault: String,
    },
    /// The storage failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Retention, compaction, flush or close failed. Acknowledged records are untouched.
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    /// The storage failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What the log was doing.
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Stored bytes did not check out while compacting.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The partition is poisoned; see [`AppendError::Poisoned`].
    #[error("partition is poisoned by an earlier storage failure and must be reopened: {source}")]
    Poisoned {
        /// The failure that poisoned the partition.
        #[source]
        source: SharedIoError,
    },
}
