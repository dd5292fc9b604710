//! The catalogue of `sluice bench log` workloads: their names, what each one does, and the
//! order they run in.
//!
//! The raw disk workloads come first because every other row is reported as a ratio to them.
//! The catalogue is data, so adding a workload is one line here plus, for a new kind, one arm
//! where the kinds are dispatched.

use std::time::Duration;

use sluice_log::Durability;

/// One named workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    /// The name on the command line and in the output.
    pub name: &'static str,
    pub kind: Kind,
}

/// What a workload measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Plain file, 1 MiB writes, one `sync_data` at the end: the disk's streaming bandwidth.
    DiskSequentialWrite,
    /// Plain file, 4 KiB appended then `sync_data`, repeatedly: the disk's durable-write latency.
    DiskSyncLatency,
    /// Plain file filled with zeros and synced first, then 4 KiB written over them and
    /// `sync_data`, repeatedly: the durable-write latency without a new file length to commit,
    /// which is what the log's zeros written ahead give it (`docs/format.md` section 14).
    DiskOverwriteSyncLatency,
    /// Appends to a partition log.
    Append(AppendPlan),
    /// Sequential reads of a partition written by [`READ_SOURCE`].
    Read,
}

/// How an append workload drives the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendPlan {
    pub durability: Durability,
    /// Threads appending to the one partition at once.
    pub writers: u32,
    /// Batches of one record each, for a bounded number of appends: the durable-latency case.
    pub single_record: bool,
}

/// The append plan whose partition the read workload reads.
pub const READ_SOURCE: AppendPlan = append(Durability::None, 1);

/// The `Durability::Interval` period the interval workloads use.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(10);

const fn append(durability: Durability, writers: u32) -> AppendPlan {
    AppendPlan { durability, writers, single_record: false }
}

const fn single_record(writers: u32) -> AppendPlan {
    AppendPlan { durability: Durability::Fsync, writers, single_record: true }
}

const INTERVAL: Durability = Durability::Interval(SYNC_INTERVAL);

/// Every workload, in the order they run.
pub const ALL: [Workload; 12] = [
    Workload { name: "disk-seq-write", kind: Kind::DiskSequentialWrite },
    Workload { name: "disk-4k-fdatasync", kind: Kind::DiskSyncLatency },
    Workload { name: "disk-4k-overwrite-fdatasync", kind: Kind::DiskOverwriteSyncLatency },
    Workload { name: "append-none-1w", kind: Kind::Append(append(Durability::None, 1)) },
    // `read` reads what `append-none-1w` wrote and runs right after it, so that data is gone
    // before the next workload: each workload then writes into memory the previous one freed.
    Workload { name: "read", kind: Kind::Read },
    Workload { name: "append-none-8w", kind: Kind::Append(append(Durability::None, 8)) },
    Workload { name: "append-interval-1w", kind: Kind::Append(append(INTERVAL, 1)) },
    Workload { name: "append-interval-8w", kind: Kind::Append(append(INTERVAL, 8)) },
    Workload { name: "append-fsync-1w", kind: Kind::Append(append(Durability::Fsync, 1)) },
    Workload { name: "append-fsync-8w", kind: Kind::Append(append(Durability::Fsync, 8)) },
    Workload { name: "append-fsync-1w-1rec", kind: Kind::Append(single_record(1)) },
    Workload { name: "append-fsync-8w-1rec", kind: Kind::Append(single_record(8)) },
];

impl Workload {
    /// The workload called `name`.
    ///
    /// # Errors
    /// A message naming every valid workload when `name` is none of them.
    pub fn from_name(name: &str) -> Result<Workload, String> {
        ALL.iter().find(|workload| workload.name == name).copied().ok_or_else(|| {
            let valid: Vec<&str> = ALL.iter().map(|workload| workload.name).collect();
            format!("unknown workload `{name}`; valid workloads are: {}", valid.join(", "))
        })
    }

    /// The workloads in `chosen`, deduplicated and in run order; every workload if it is empty.
    pub fn selection(chosen: &[Workload]) -> Vec<Workload> {
        ALL.into_iter().filter(|workload| chosen.is_empty() || chosen.contains(workload)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{Workload, ALL};

    #[test]
    fn names_are_unique_and_round_trip() {
        for workload in ALL {
            assert_eq!(Workload::from_name(workload.name), Ok(workload));
        }
        let error = Workload::from_name("nope").unwrap_err();
        assert!(ALL.iter().all(|workload| error.contains(workload.name)), "{error}");
    }

    #[test]
    fn selection_keeps_run_order_and_drops_duplicates() {
        let read = ALL[10];
        let disk = ALL[0];
        assert_eq!(Workload::selection(&[read, disk, read]), vec![disk, read]);
        assert_eq!(Workload::selection(&[]), ALL.to_vec());
    }
}
