//! Sluice's partition log: an append-only sequence of Kafka RecordBatch v2 batches, stored as a
//! directory of segments (data file, sparse offset index, sparse time index), the layout Kafka
//! proved, plus a derived per-segment key index for reading one key's records
//! ([`Partition::key_offsets`]).
//!
//! What it guarantees:
//! - under the default [`Durability::Fsync`], an append returns only once its bytes are
//!   fdatasynced, and concurrent appends share one fdatasync (group commit);
//! - after a crash, opening the partition cuts the active segment at the first batch whose
//!   length, CRC or offset does not check out, and logs how many bytes it dropped; nothing torn
//!   or corrupt is ever returned by a read;
//! - a failed write or fsync poisons the partition until it is reopened;
//! - opening costs the same whatever the amount stored: only the tail past the last recovery
//!   checkpoint is scanned.
//!
//! What it does not do: assign partitions, track producers, or know about consumers; those live
//! in the engine. Every byte layout and the crash analysis are drawn in `docs/format.md`.
//!
//! ```
//! use sluice_format::{BatchBuilder, NewRecord};
//! use sluice_log::{LogConfig, Partition};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let log = Partition::open(dir.path(), LogConfig::default()).unwrap();
//! let mut builder = BatchBuilder::new(0);
//! builder.push(&NewRecord { key: Some(b"k"), value: Some(b"v"), headers: &[], timestamp_ms: 1 });
//! let mut batch = builder.build();
//! let appended = log.append(&mut batch).unwrap();
//! assert_eq!(appended.base_offset, 0);
//! assert_eq!(log.read(0, 1024).unwrap().batches, batch);
//! ```

#![warn(missing_docs)]

mod append;
mod cache;
mod checkpoint;
pub mod clock;
pub mod config;
mod durable;
pub mod error;
pub mod index;
pub mod keys;
mod maintenance;
mod partition;
mod read;
mod recovery;
pub mod segment;
pub mod sim;
pub mod storage;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Durability, LogConfig, BATCH_BYTES_LIMIT, SEGMENT_BYTES_LIMIT};
pub use error::{AppendError, MaintenanceError, OpenError, ReadError};
pub use keys::KeyLookupStats;
pub use maintenance::{CompactionReport, RetentionReport, COMPACTION_KEYS_MAX};
pub use partition::{AppendInfo, Partition, RecoveryReport};
pub use read::ReadResult;
pub use storage::{FsStorage, OpenMode, Storage, StorageFile};
