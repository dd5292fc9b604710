//! A partition's configuration: its durability policy and every limit it enforces.
//!
//! Each limit has a default, a documented range, and a check in [`LogConfig::validate`] that
//! names the rule when a value is out of range. `docs/format.md` lists them in one table.

use std::time::Duration;

use sluice_format::BATCH_HEADER_BYTES;

/// When an append is acknowledged relative to `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// An append returns only after its bytes are fdatasynced; concurrent appends share one
    /// fdatasync (group commit). Readers see only synced records. The default.
    #[default]
    Fsync,
    /// Appends return once written to the OS; a background thread fdatasyncs every interval. A
    /// crash loses at most the last interval of acknowledged appends.
    Interval(Duration),
    /// Appends return once written to the OS; the log fdatasyncs only when it rolls a segment or
    /// closes. A crash may lose everything in the active segment that the OS had not written back.
    None,
}

/// Smallest allowed `segment_bytes_max`: one header-only batch must fit.
pub const SEGMENT_BYTES_MIN: u64 = 1024;
/// Largest allowed `segment_bytes_max`: index entries store positions as `u32`.
pub const SEGMENT_BYTES_LIMIT: u64 = u32::MAX as u64;
/// Largest allowed `batch_bytes_max` (64 MiB): a batch is held in memory whole.
pub const BATCH_BYTES_LIMIT: u32 = 64 * 1024 * 1024;
/// Smallest allowed `index_interval_bytes`.
pub const INDEX_INTERVAL_BYTES_MIN: u32 = 64;
/// Largest allowed `open_segments_max`.
pub const OPEN_SEGMENTS_LIMIT: u32 = 65_536;
/// Smallest allowed `Durability::Interval` period.
pub const SYNC_INTERVAL_MIN: Duration = Duration::from_millis(1);

const _: () = assert!(SEGMENT_BYTES_MIN > BATCH_HEADER_BYTES as u64);
const _: () = assert!((BATCH_BYTES_LIMIT as u64) < SEGMENT_BYTES_LIMIT);

/// The configuration of one partition log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// When appends are acknowledged. Default [`Durability::Fsync`].
    pub durability: Durability,
    /// A segment rolls before an append would take it past this size. Default 1 GiB; range
    /// [`SEGMENT_BYTES_MIN`]..=[`SEGMENT_BYTES_LIMIT`].
    pub segment_bytes_max: u64,
    /// A segment rolls at the first append after it is this old (measured from its creation, or
    /// from the partition's reopen for the active segment). Default 7 days; `None` never rolls by age.
    pub segment_age_max: Option<Duration>,
    /// An append of a larger batch is refused. Default 1 MiB (Kafka's `message.max.bytes`);
    /// at most [`BATCH_BYTES_LIMIT`] and at most `segment_bytes_max`.
    pub batch_bytes_max: u32,
    /// Bytes appended between two offset-index entries. Default 4096; at least
    /// [`INDEX_INTERVAL_BYTES_MIN`].
    pub index_interval_bytes: u32,
    /// Closed segments are deleted, oldest first, while the log would still hold at least this
    /// many bytes without them. Default `None` (no limit by size).
    pub retention_bytes: Option<u64>,
    /// Closed segments whose newest record is older than this are deleted. Default 7 days;
    /// `None` keeps records forever.
    pub retention_age: Option<Duration>,
    /// Whether [`crate::Partition::run_maintenance`] compacts closed segments (keep the newest
    /// record per key). Default `false`.
    pub compact: bool,
    /// Whether [`crate::Partition::run_maintenance`] purges closed segments instead: every
    /// record of a key older than that key's newest tombstone goes, the tombstone and every
    /// other record stay. How an event store hard-deletes a soft-deleted stream while keeping
    /// every other stream's history. Default `false`; not together with `compact`.
    pub purge_before_tombstones: bool,
    /// How long compaction keeps a tombstone (a record with a key and a null value) after its
    /// timestamp, so consumers can see the delete. Default 1 day (Kafka's `delete.retention.ms`).
    pub tombstone_retention: Duration,
    /// Closed segments whose data file and indexes are held open at once; the least recently
    /// read is closed past this. Default 64; range 1..=[`OPEN_SEGMENTS_LIMIT`].
    pub open_segments_max: u32,
    /// Synced bytes of the active segment between two recovery checkpoints; recovery rescans at
    /// most about this much plus the unsynced tail. Default 64 MiB; at least `index_interval_bytes`.
    pub recovery_checkpoint_interval_bytes: u64,
    /// Under [`Durability::Fsync`], how far ahead of its end the active segment's data file is
    /// filled with zeros, at most: an fdatasync of bytes written over zeros that are already on
    /// disk does not change the file's size, so it skips a journal commit (see `durable.rs`).
    /// The zeroed space grows with the segment, from [`PREALLOCATE_BYTES_MIN`] up to this, and a
    /// segment is cut back to its data when it rolls or closes. Default 1 MiB; 0 turns it off;
    /// at most [`PREALLOCATE_BYTES_LIMIT`].
    pub preallocate_bytes_max: u64,
}

/// The zeroed space ahead of a small active segment (see `LogConfig::preallocate_bytes_max`).
pub const PREALLOCATE_BYTES_MIN: u64 = 64 * 1024;
/// Largest allowed `preallocate_bytes_max` (64 MiB).
pub const PREALLOCATE_BYTES_LIMIT: u64 = 64 * 1024 * 1024;

impl Default for LogConfig {
    fn default() -> Self {
        const DAY: Duration = Duration::from_secs(24 * 60 * 60);
        Self {
            durability: Durability::Fsync,
            segment_bytes_max: 1024 * 1024 * 1024,
            segment_age_max: Some(7 * DAY),
            batch_bytes_max: 1024 * 1024,
            index_interval_bytes: 4096,
            retention_bytes: None,
            retention_age: Some(7 * DAY),
            compact: false,
            purge_before_tombstones: false,
            tombstone_retention: DAY,
            open_segments_max: 64,
            recovery_checkpoint_interval_bytes: 64 * 1024 * 1024,
            preallocate_bytes_max: 1024 * 1024,
        }
    }
}

/// A configuration value outside its allowed range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid log configuration: {field} is {value}; {rule}")]
pub struct ConfigError {
    /// The field that is out of range.
    pub field: &'static str,
    /// The value given, as text.
    pub value: String,
    /// What is allowed.
    pub rule: String,
}

fn check(
    ok: bool,
    field: &'static str,
    value: impl ToString,
    rule: String,
) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError { field, value: value.to_string(), rule })
    }
}

impl LogConfig {
    /// Checks every limit against its allowed range.
    ///
    /// # Errors
    /// The first field out of range, with the rule it breaks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let segment = self.segment_bytes_max;
        check(
            (SEGMENT_BYTES_MIN..=SEGMENT_BYTES_LIMIT).contains(&segment),
            "segment_bytes_max",
            segment,
            format!("allowed is {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_LIMIT} bytes"),
        )?;
        let batch = self.batch_bytes_max;
        check(
            batch as usize >= BATCH_HEADER_BYTES
                && batch <= BATCH_BYTES_LIMIT
                && u64::from(batch) <= segment,
            "batch_bytes_max",
            batch,
            format!(
                "allowed is {BATCH_HEADER_BYTES}..={BATCH_BYTES_LIMIT} bytes and at most \
                 segment_bytes_max ({segment})"
            ),
        )?;
        check(
            self.index_interval_bytes >= INDEX_INTERVAL_BYTES_MIN,
            "index_interval_bytes",
            self.index_interval_bytes,
            format!("must be at least {INDEX_INTERVAL_BYTES_MIN}"),
        )?;
        check(
            (1..=OPEN_SEGMENTS_LIMIT).contains(&self.open_segments_max),
            "open_segments_max",
            self.open_segments_max,
            format!("allowed is 1..={OPEN_SEGMENTS_LIMIT}"),
        )?;
        check(
            self.recovery_checkpoint_interval_bytes >= u64::from(self.index_interval_bytes),
            "recovery_checkpoint_interval_bytes",
            self.recovery_checkpoint_interval_bytes,
            "must be at least index_interval_bytes".to_owned(),
        )?;
        check(
            self.preallocate_bytes_max <= PREALLOCATE_BYTES_LIMIT,
            "preallocate_bytes_max",
            self.preallocate_bytes_max,
            format!("allowed is 0..={PREALLOCATE_BYTES_LIMIT} bytes (0 turns preallocation off)"),
        )?;
        check(
            !(self.compact && self.purge_before_tombstones),
            "purge_before_tombstones",
            true,
            "compaction already removes what a tombstone deletes; set one of compact and purge_before_tombstones".to_owned(),
        )?;
        if let Durability::Interval(period) = self.durability {
            check(
                period >= SYNC_INTERVAL_MIN,
                "durability",
                format!("interval:{}ms", period.as_millis()),
                "the sync interval must be at least 1 ms".to_owned(),
            )?;
        }
        Ok(())
    }
}
