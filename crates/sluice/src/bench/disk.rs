//! The hardware baseline: what plain files on the benchmark's filesystem do, measured in the
//! same run as the log so the log's numbers can be read as ratios to them.
//!
//! Three measurements: streaming bandwidth (1 MiB `write_all`s, one `sync_data` at the end),
//! durable-write latency (4 KiB appended, then `sync_data`, repeatedly), and the same over zeros
//! already on disk (no new file length to commit). Also names the
//! filesystem a directory is on. Only `std`; no O_DIRECT, so the page cache is part of the
//! picture exactly as it is for the log.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;

use super::workload::Workload;
use super::{elapsed_ns, pseudo_random_bytes, Measurement, Settings};

/// Bytes per `write_all` of the sequential-write workload.
const SEQUENTIAL_CHUNK_BYTES: usize = 1024 * 1024;
/// Bytes appended before each `sync_data` of the latency workload.
const SYNC_BLOCK_BYTES: usize = 4096;
/// Write-and-sync rounds of the latency workload, at most.
const SYNC_ROUNDS_MAX: u64 = 2000;

/// Writes `total_bytes` to a new file in 1 MiB chunks, then syncs it once; times the whole, and
/// each chunk's write. Records are counted as `total_bytes / record_bytes`, so the records per
/// second compare directly with the log's.
///
/// # Errors
/// Any I/O error.
pub fn sequential_write(
    workload: Workload,
    settings: &Settings,
    dir: &Path,
) -> anyhow::Result<Measurement> {
    let path = dir.join("sequential");
    let mut file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let chunk = pseudo_random_bytes(SEQUENTIAL_CHUNK_BYTES);
    let mut remaining = settings.total_bytes;
    let mut latencies = Vec::new();
    let start = Instant::now();
    while remaining > 0 {
        let length = usize::try_from(remaining).map_or(chunk.len(), |left| left.min(chunk.len()));
        let write_start = Instant::now();
        file.write_all(&chunk[..length]).with_context(|| format!("writing {}", path.display()))?;
        latencies.push(elapsed_ns(write_start));
        remaining -= length as u64;
    }
    file.sync_data().with_context(|| format!("syncing {}", path.display()))?;
    let elapsed = start.elapsed();
    let records = settings.total_bytes / u64::from(settings.record_bytes);
    Ok(Measurement::new(workload, (records, settings.total_bytes), elapsed, latencies))
}

/// Appends 4 KiB to a new file and `sync_data`s it, [`SYNC_ROUNDS_MAX`] times or fewer when
/// `total_bytes` is small; each round is one timed operation and one record.
///
/// # Errors
/// Any I/O error.
pub fn sync_latency(
    workload: Workload,
    settings: &Settings,
    dir: &Path,
) -> anyhow::Result<Measurement> {
    timed_syncs(workload, settings, &dir.join("sync"), false)
}

/// As [`sync_latency`], but the file is first filled with zeros and synced, and each round
/// writes its 4 KiB over them: the file's length never changes while it is timed.
///
/// # Errors
/// Any I/O error.
pub fn overwrite_sync_latency(
    workload: Workload,
    settings: &Settings,
    dir: &Path,
) -> anyhow::Result<Measurement> {
    timed_syncs(workload, settings, &dir.join("overwrite"), true)
}

/// Round `n` writes 4 KiB at `n * 4 KiB` and syncs: past the end of a new file, or over zeros
/// written and synced (untimed) first when `over_zeros`.
fn timed_syncs(
    workload: Workload,
    settings: &Settings,
    path: &Path,
    over_zeros: bool,
) -> anyhow::Result<Measurement> {
    let mut file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let rounds = (settings.total_bytes / SYNC_BLOCK_BYTES as u64).clamp(1, SYNC_ROUNDS_MAX);
    if over_zeros {
        let zeros = vec![0u8; SYNC_BLOCK_BYTES];
        for _ in 0..rounds {
            file.write_all(&zeros).with_context(|| format!("writing {}", path.display()))?;
        }
        file.sync_data().with_context(|| format!("syncing {}", path.display()))?;
    }
    let block = pseudo_random_bytes(SYNC_BLOCK_BYTES);
    let mut latencies = Vec::with_capacity(rounds as usize);
    let start = Instant::now();
    for round in 0..rounds {
        let round_start = Instant::now();
        file.write_all_at(&block, round * SYNC_BLOCK_BYTES as u64)
            .and_then(|()| file.sync_data())
            .with_context(|| format!("writing and syncing {}", path.display()))?;
        latencies.push(elapsed_ns(round_start));
    }
    let elapsed = start.elapsed();
    let volume = (rounds, rounds * SYNC_BLOCK_BYTES as u64);
    Ok(Measurement::new(workload, volume, elapsed, latencies))
}

/// The filesystem `dir` is on, as "type (device on mount point)", from `/proc/mounts`; `None`
/// where that cannot be read (not Linux, or no match).
pub fn filesystem(dir: &Path) -> Option<String> {
    let dir = dir.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    // The longest mount point containing `dir`; of equal ones the last, which shadows the rest.
    let (device, mount_point, kind) = mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            Some((fields.next()?, fields.next()?, fields.next()?))
        })
        .filter(|(_, mount_point, _)| dir.starts_with(mount_point))
        .max_by_key(|(_, mount_point, _)| mount_point.len())?;
    Some(format!("{kind} ({device} on {mount_point})"))
}
