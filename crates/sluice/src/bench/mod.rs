//! `sluice bench`: measurements of Sluice and of the hardware under it, taken in the same run so
//! that results can be stated as ratios to the hardware.
//!
//! This file runs `sluice bench log`: it picks the workloads, gives each a fresh directory,
//! collects what they measured and hands it to `report.rs`. The workloads themselves live in
//! `log.rs` (the partition log) and `disk.rs` (plain files); the catalogue in `workload.rs`.
//! `sluice bench produce` and `sluice bench consume` (the engine in-process and a server over
//! HTTP) are run by `topic_bench.rs`, with their workloads in `produce.rs` and `consume.rs`;
//! `sluice bench queue` by `queue.rs`, and `sluice bench streams` (the event store) by
//! `streams.rs`.
//!
//! It does not assert anything about speed: a benchmark reports, a person judges.

mod consume;
mod disk;
mod log;
mod produce;
mod queue;
mod report;
mod server;
mod streams;
mod target;
mod topic_bench;
pub mod workload;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};

use crate::cli::{BenchCommand, LogBenchArgs};
use workload::{Kind, Workload, READ_SOURCE};

/// Runs one `sluice bench` subcommand. `server` is a server given on the command line, which
/// `produce` and `consume` measure instead of starting their own.
///
/// # Errors
/// Invalid settings, and any I/O, log, engine or HTTP error a workload hits.
pub fn run(command: BenchCommand, server: Option<&str>) -> anyhow::Result<()> {
    match command {
        BenchCommand::Log(args) => run_log(&args),
        BenchCommand::Produce(args) => topic_bench::run(topic_bench::Bench::Produce, &args, server),
        BenchCommand::Consume(args) => topic_bench::run(topic_bench::Bench::Consume, &args, server),
        BenchCommand::Queue(args) => queue::run(&args, server),
        BenchCommand::Streams(args) => streams::run(&args, server),
    }
}

/// Sizes shared by every workload of a run.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub batch_records: u32,
    pub record_bytes: u32,
    /// Payload bytes each throughput workload writes.
    pub total_bytes: u64,
}

/// What one workload measured.
#[derive(Debug)]
pub struct Measurement {
    pub workload: Workload,
    pub records: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// One entry per timed operation (append, read or write), in nanoseconds, sorted.
    pub latencies_ns: Vec<u64>,
}

impl Measurement {
    /// A measurement of `workload`, sorting `latencies_ns`.
    ///
    /// # Panics
    /// If no operation was timed: every workload does at least one.
    pub fn new(
        workload: Workload,
        (records, bytes): (u64, u64),
        elapsed: Duration,
        mut latencies_ns: Vec<u64>,
    ) -> Measurement {
        assert!(!latencies_ns.is_empty(), "{} timed no operation", workload.name);
        latencies_ns.sort_unstable();
        Measurement { workload, records, bytes, elapsed, latencies_ns }
    }

    /// Bytes moved per second of wall time.
    pub fn bytes_per_second(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

fn run_log(args: &LogBenchArgs) -> anyhow::Result<()> {
    let settings = Settings {
        batch_records: args.batch_records,
        record_bytes: args.record_bytes,
        total_bytes: args.total_bytes,
    };
    ensure!(
        settings.total_bytes >= u64::from(settings.record_bytes),
        "--total-bytes ({}) must be at least --record-bytes ({})",
        settings.total_bytes,
        settings.record_bytes
    );
    log::check_batch_fits(&settings)?;
    let (root, _owned_root) = bench_root(args.dir.as_deref())?;
    if !args.json {
        report::print_facts(&root, &settings);
    }
    let selected = Workload::selection(&args.workloads);
    let mut rounds = Vec::new();
    for round in 0..args.repeat {
        tracing::info!(round = round + 1, of = args.repeat, "round");
        warm_up(&settings, &root)?;
        rounds.push(run_workloads(&selected, &settings, &root)?);
    }
    let measurements = median_rounds(rounds, Measurement::bytes_per_second);
    let rows = report::rows(&measurements);
    if args.json {
        report::print_json(&rows);
    } else {
        report::print_table(&rows);
    }
    Ok(())
}

/// The directory the run works in, and the guard that removes it if the run created it.
fn bench_root(dir: Option<&Path>) -> anyhow::Result<(PathBuf, Option<ScratchDir>)> {
    match dir {
        Some(dir) => {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            Ok((dir.to_owned(), None))
        }
        None => {
            let scratch = ScratchDir::create(format!("sluice-bench-{}", std::process::id()))?;
            Ok((scratch.path().to_owned(), Some(scratch)))
        }
    }
}

fn run_workloads(
    selected: &[Workload],
    settings: &Settings,
    root: &Path,
) -> anyhow::Result<Vec<Measurement>> {
    let mut measurements = Vec::with_capacity(selected.len());
    // The read workload reads the partition the `READ_SOURCE` append workload wrote.
    let mut read_source: Option<ScratchDir> = None;
    for &workload in selected {
        tracing::info!(workload = workload.name, "starting");
        let dir = ScratchDir::create(root.join(workload.name))?;
        let measurement = match workload.kind {
            Kind::DiskSequentialWrite => disk::sequential_write(workload, settings, dir.path())?,
            Kind::DiskSyncLatency => disk::sync_latency(workload, settings, dir.path())?,
            Kind::DiskOverwriteSyncLatency => {
                disk::overwrite_sync_latency(workload, settings, dir.path())?
            }
            Kind::Append(plan) => {
                let measurement = log::append(workload, plan, settings, dir.path())?;
                if plan == READ_SOURCE && selected.iter().any(|w| w.kind == Kind::Read) {
                    read_source = Some(dir);
                }
                measurement
            }
            Kind::Read => {
                let source = match read_source.take() {
                    Some(source) => source,
                    None => write_read_source(settings, dir)?,
                };
                log::read(workload, source.path())?
            }
        };
        log_progress(&measurement);
        measurements.push(measurement);
    }
    Ok(measurements)
}

/// Writes and deletes `total_bytes` once, untimed, before a round. On a virtual machine the
/// first touch of memory the guest has not used lately is several times slower than reuse
/// (seen here: ~2.8 ms against ~0.2 ms per 1 MiB write into the page cache), which would
/// otherwise fall on whichever workload runs first, usually the disk baseline.
fn warm_up(settings: &Settings, root: &Path) -> anyhow::Result<()> {
    let dir = ScratchDir::create(root.join("warm-up"))?;
    let workload = Workload { name: "warm-up", kind: Kind::DiskSequentialWrite };
    disk::sequential_write(workload, settings, dir.path()).map(drop)
}

/// For each workload, the round whose `throughput` is the median of all rounds (the lower middle
/// for an even count). Every round holds the same workloads in the same order.
fn median_rounds<T>(rounds: Vec<Vec<T>>, throughput: impl Fn(&T) -> f64) -> Vec<T> {
    let workloads = rounds.first().map_or(0, Vec::len);
    let mut per_workload: Vec<Vec<T>> = (0..workloads).map(|_| Vec::new()).collect();
    for round in rounds {
        for (index, measurement) in round.into_iter().enumerate() {
            per_workload[index].push(measurement);
        }
    }
    per_workload
        .into_iter()
        .map(|mut runs| {
            runs.sort_by(|a, b| throughput(a).total_cmp(&throughput(b)));
            let middle = (runs.len() - 1) / 2;
            runs.swap_remove(middle)
        })
        .collect()
}

/// Fills `dir` the way [`READ_SOURCE`] would, when that workload was not selected.
fn write_read_source(settings: &Settings, dir: ScratchDir) -> anyhow::Result<ScratchDir> {
    let source =
        Workload { name: "read (writing its data first)", kind: Kind::Append(READ_SOURCE) };
    log::append(source, READ_SOURCE, settings, dir.path())?;
    Ok(dir)
}

fn log_progress(measurement: &Measurement) {
    let seconds = measurement.elapsed.as_secs_f64();
    tracing::info!(
        workload = measurement.workload.name,
        seconds = format_args!("{seconds:.3}"),
        records = measurement.records,
        bytes = measurement.bytes,
        "finished"
    );
}

/// A directory the benchmark creates (refusing to reuse one) and removes when dropped.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates `path`, which must not exist yet: measuring on top of old data would be wrong,
    /// and removing it afterwards would delete someone's files.
    ///
    /// # Errors
    /// If `path` exists or cannot be created.
    pub fn create(path: impl Into<PathBuf>) -> anyhow::Result<ScratchDir> {
        let path = path.into();
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(ScratchDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(error) = fs::remove_dir_all(&self.path) {
            tracing::warn!(dir = %self.path.display(), %error, "could not remove benchmark directory");
        }
    }
}

/// `len` bytes that neither repeat nor compress, so no layer below can shortcut zeros or
/// patterns. An xorshift generator with a fixed seed: every run writes the same bytes.
pub fn pseudo_random_bytes(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// How long since `start`, in nanoseconds.
pub fn elapsed_ns(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Longest one workload may take before the benchmark gives up, so a run always ends.
const WORKLOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// The name of a topic or group of this run: unique per process, round and workload, so a
/// group never finds offsets committed by an earlier round on a topic of the same name.
fn scoped_name(round: u32, workload: &str) -> String {
    format!("sluice-bench-{}-r{round}-{workload}", std::process::id())
}

/// Awaits `work`, at most [`WORKLOAD_TIMEOUT`].
async fn bounded<T>(
    what: &str,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(WORKLOAD_TIMEOUT, work)
        .await
        .map_err(|_| anyhow::anyhow!("{what} did not finish within {WORKLOAD_TIMEOUT:?}"))?
        .with_context(|| format!("running {what}"))
}

/// Runs a blocking engine call on the blocking pool, as an async embedder must.
async fn blocking<T, E>(call: impl FnOnce() -> Result<T, E> + Send + 'static) -> anyhow::Result<T>
where
    T: Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    Ok(tokio::task::spawn_blocking(call).await.context("an engine call panicked")??)
}
