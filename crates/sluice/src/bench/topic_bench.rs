//! `sluice bench produce` and `sluice bench consume`: the engine in this process and a server
//! over HTTP, measured with the same workloads, so the difference is what the server adds.
//!
//! A run opens its targets once (the engine on a fresh directory; the server either started
//! here on another fresh directory, or given by URL), then runs `--repeat` rounds, each after
//! the untimed disk warm-up of `sluice bench log`, and reports per workload the round with the
//! median throughput. Every workload works on a topic of its own, created before and deleted
//! after it, named `sluice-bench-<pid>-r<round>-<workload>` (groups likewise), so nothing is
//! left on a given server but the groups' committed offsets. Workloads:
//! - `produce-<target>-c<N>-b<B>`: N producers, B records per request, until `--total-bytes`.
//! - `consume-<target>-c<N>`: N members of a group read a topic filled (untimed) with
//!   `--total-bytes`, committing after every fetch.
//! - `consume-<target>-fetch`: one reader reads every partition of that topic with plain fetches.
//!
//! Runs on a multi-threaded tokio runtime with one worker per CPU. A started server shares
//! those CPUs with the benchmark's own client.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context};
use sluice_engine::TopicConfig;

use super::consume::{self, Filled};
use super::produce;
use super::report;
use super::target::{Batch, Target, Targets, FETCH_RECORDS_MAX, TOPIC_PARTITIONS};
use super::{bench_root, bounded, median_rounds, scoped_name, warm_up, Settings};
use crate::cli::TopicBenchArgs;

/// Producers of the untimed fill that precedes the consume workloads.
const FILL_CONCURRENCY: u32 = 8;

/// Which of the two benchmarks to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bench {
    Produce,
    Consume,
}

/// Sizes shared by every workload of a run.
#[derive(Debug, Clone, Copy)]
pub struct TopicSettings {
    /// Bytes of each record's value as stored: a JSON string, quotes included.
    pub record_bytes: u32,
    /// Records per produce request or call.
    pub batch_records: u32,
    /// Value bytes each produce workload writes, and the fill before the consume workloads.
    pub total_bytes: u64,
}

/// What one produce or consume workload measured.
#[derive(Debug)]
pub struct TopicMeasurement {
    pub name: String,
    pub records: u64,
    /// Value bytes moved.
    pub bytes: u64,
    pub elapsed: Duration,
    /// One entry per timed request or call, in nanoseconds, sorted.
    pub latencies_ns: Vec<u64>,
}

impl TopicMeasurement {
    /// A measurement of the workload `name`, sorting `latencies_ns`.
    ///
    /// # Panics
    /// If no request was timed: every workload makes at least one.
    pub fn new(
        name: String,
        (records, bytes): (u64, u64),
        elapsed: Duration,
        mut latencies_ns: Vec<u64>,
    ) -> TopicMeasurement {
        assert!(!latencies_ns.is_empty(), "{name} timed no request");
        latencies_ns.sort_unstable();
        TopicMeasurement { name, records, bytes, elapsed, latencies_ns }
    }

    fn bytes_per_second(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// Runs `bench` as `args` say; `server` is a server given on the command line, measured instead
/// of one started here.
///
/// # Errors
/// Invalid settings, a server that cannot be started or reached, and any failed request.
pub fn run(bench: Bench, args: &TopicBenchArgs, server: Option<&str>) -> anyhow::Result<()> {
    let settings = TopicSettings {
        record_bytes: args.record_bytes,
        batch_records: args.batch_records,
        total_bytes: args.total_bytes,
    };
    check_settings(&settings)?;
    let batch = Arc::new(produce::build_batch(&settings)?);
    let concurrencies = distinct(&args.concurrency);
    let (root, _owned_root) = bench_root(args.dir.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sluice-bench")
        .build()
        .context("starting the async runtime")?;
    let targets = Targets::open(args.target, server, &root)?;
    if !args.json {
        print_facts(bench, &root, &settings, &targets, args.repeat);
    }
    let plan = Plan { bench, settings, batch, concurrencies };
    let mut rounds = Vec::new();
    for round in 0..args.repeat {
        tracing::info!(round = round + 1, of = args.repeat, "round");
        warm_up(&settings.as_log_settings(), &root)?;
        rounds.push(runtime.block_on(plan.run_round(round, &targets.list))?);
    }
    runtime.block_on(targets.close())?;
    let rows: Vec<report::Row> = median_rounds(rounds, TopicMeasurement::bytes_per_second)
        .iter()
        .map(|measured| {
            let volume = (measured.records, measured.bytes);
            report::plain_row(&measured.name, volume, measured.elapsed, &measured.latencies_ns)
        })
        .collect();
    if args.json {
        report::print_json(&rows);
    } else {
        report::print_latency_table(&rows);
    }
    Ok(())
}

fn check_settings(settings: &TopicSettings) -> anyhow::Result<()> {
    ensure!(
        settings.total_bytes >= u64::from(settings.record_bytes),
        "--total-bytes ({}) must be at least --record-bytes ({})",
        settings.total_bytes,
        settings.record_bytes
    );
    let limit = TopicConfig::default().record_bytes_max;
    ensure!(
        settings.record_bytes <= limit,
        "--record-bytes ({}) is more than a topic accepts by default ({limit})",
        settings.record_bytes
    );
    Ok(())
}

/// `values` without repeats, in their first order.
fn distinct(values: &[u32]) -> Vec<u32> {
    let mut seen = Vec::with_capacity(values.len());
    for &value in values {
        if !seen.contains(&value) {
            seen.push(value);
        }
    }
    seen
}

impl TopicSettings {
    /// The settings of the disk warm-up, which writes `total_bytes`.
    fn as_log_settings(&self) -> Settings {
        Settings {
            batch_records: self.batch_records,
            record_bytes: self.record_bytes,
            total_bytes: self.total_bytes,
        }
    }
}

/// What every round runs.
struct Plan {
    bench: Bench,
    settings: TopicSettings,
    batch: Arc<Batch>,
    concurrencies: Vec<u32>,
}

impl Plan {
    /// One round: every workload once, on every target, in a fixed order.
    async fn run_round(
        &self,
        round: u32,
        targets: &[Target],
    ) -> anyhow::Result<Vec<TopicMeasurement>> {
        let mut measurements = Vec::new();
        for target in targets {
            match self.bench {
                Bench::Produce => self.produce_round(round, target, &mut measurements).await?,
                Bench::Consume => self.consume_round(round, target, &mut measurements).await?,
            }
        }
        Ok(measurements)
    }

    async fn produce_round(
        &self,
        round: u32,
        target: &Target,
        measurements: &mut Vec<TopicMeasurement>,
    ) -> anyhow::Result<()> {
        for &concurrency in &self.concurrencies {
            let name = format!(
                "produce-{}-c{concurrency}-b{}",
                target.name(),
                self.settings.batch_records
            );
            let topic = scoped_name(round, &name);
            target.create_topic(&topic).await.with_context(|| format!("creating {topic}"))?;
            let producing =
                produce::produce(name, target, &topic, &self.batch, &self.settings, concurrency);
            let measured = bounded(&topic, producing).await?;
            target.delete_topic(&topic).await.with_context(|| format!("deleting {topic}"))?;
            log_progress(&measured);
            measurements.push(measured);
        }
        Ok(())
    }

    /// Fills one topic, runs every group workload and then the plain read on it.
    async fn consume_round(
        &self,
        round: u32,
        target: &Target,
        measurements: &mut Vec<TopicMeasurement>,
    ) -> anyhow::Result<()> {
        let topic = scoped_name(round, &format!("consume-{}", target.name()));
        target.create_topic(&topic).await.with_context(|| format!("creating {topic}"))?;
        tracing::info!(%topic, "filling (untimed)");
        let filling = produce::produce(
            "fill".to_owned(),
            target,
            &topic,
            &self.batch,
            &self.settings,
            FILL_CONCURRENCY,
        );
        let filled = Filled { topic: &topic, records: bounded(&topic, filling).await?.records };
        for &concurrency in &self.concurrencies {
            let name = format!("consume-{}-c{concurrency}", target.name());
            let group = scoped_name(round, &name);
            let consuming =
                consume::group(name, target, filled, &group, concurrency, &self.settings);
            let measured = bounded(&group, consuming).await?;
            log_progress(&measured);
            measurements.push(measured);
        }
        let name = format!("consume-{}-fetch", target.name());
        let what = name.clone();
        let measured =
            bounded(&what, consume::partitions(name, target, filled, &self.settings)).await?;
        log_progress(&measured);
        measurements.push(measured);
        target.delete_topic(&topic).await.with_context(|| format!("deleting {topic}"))
    }
}

fn log_progress(measured: &TopicMeasurement) {
    tracing::info!(
        workload = %measured.name,
        seconds = format_args!("{:.3}", measured.elapsed.as_secs_f64()),
        records = measured.records,
        "finished"
    );
}

fn print_facts(bench: Bench, dir: &Path, settings: &TopicSettings, targets: &Targets, repeat: u32) {
    let cpus = std::thread::available_parallelism().map_or(0, |count| count.get());
    let filesystem = super::disk::filesystem(dir).unwrap_or_else(|| "unknown".to_owned());
    let total_mib = settings.total_bytes as f64 / f64::from(1 << 20);
    let target_names: Vec<&str> = targets.list.iter().map(Target::name).collect();
    println!("nproc        {cpus}");
    println!("filesystem   {filesystem}");
    println!("directory    {}", display(dir));
    println!("targets      {}", target_names.join(", "));
    if let Some(server) = &targets.server {
        println!("server       {server}");
    }
    println!(
        "topic        {TOPIC_PARTITIONS} partitions, durability fsync: durable acks (a produce \
         is answered after fdatasync)"
    );
    println!(
        "records      {} bytes each (a JSON string), {} per produce request",
        settings.record_bytes, settings.batch_records
    );
    match bench {
        Bench::Produce => {
            println!("total bytes  {} ({total_mib:.1} MiB) per workload", settings.total_bytes);
        }
        Bench::Consume => {
            println!(
                "total bytes  {} ({total_mib:.1} MiB) filled untimed, then read by each workload",
                settings.total_bytes
            );
            println!(
                "fetch        up to {FETCH_RECORDS_MAX} records; group members commit after each"
            );
        }
    }
    println!("rounds       {repeat} (the median round is reported)");
    println!("latency      per request (server) or call (embedded)");
    println!();
}

fn display(dir: &Path) -> String {
    dir.canonicalize().unwrap_or_else(|_| PathBuf::from(dir)).display().to_string()
}
