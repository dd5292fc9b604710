//! `sluice bench streams`: the event store of issue 5, with the engine in this process and
//! through a server over HTTP, next to the raw disk measured in the same run.
//!
//! Every workload runs on a topic of its own, created before and deleted after it: 4 partitions,
//! `fsync` durability (an append is answered only after its fdatasync) and retention off, as an
//! event topic is meant to be created. Each event is a `BenchEvent` whose payload is a JSON
//! object `{"payload":"<hex>"}` of exactly `--event-bytes` (1 KiB), stored as the same bytes by
//! both doors. Workloads, per target:
//! - `streams-<target>-c<N>`: N writers share `--streams` streams (writer w owns the streams
//!   whose index is w modulo N) and append one event at a time with the exact expected version,
//!   which each writer tracks for its own streams, so no append conflicts. The streams are first
//!   created untimed (their first event, expected `no_stream`, 64 appends in flight); then
//!   `--appends` appends are timed, each writer cycling through its streams. Latency per append.
//! - `streams-<target>-batch100`: the same with `--batch-writers` writers and 100 events per
//!   append, for `--batch-appends` appends.
//! - `streams-<target>-load-full` and `streams-<target>-load-snapshot`: a stream of
//!   `--load-events` events is written so that 1 record in 100 of its partition is its own (each
//!   of its events is followed by an append of 99 events to neighbouring streams of the same
//!   partition), and a snapshot is saved at version `--load-events` - 10. The stream is then
//!   loaded `--loads` times each way, alternately: every event from version 0, following `next`;
//!   and the snapshot, then the events after it. Latency per load; loads/s is one over the mean.
//!
//! Each round starts with the untimed warm-up write of `sluice bench log`, then measures the
//! disk: `disk-seq-write` (`--disk-bytes`, 256 MiB as `bench log`'s default, in 1 MiB writes,
//! one fdatasync) and `disk-4k-fdatasync` (4 KiB write + fdatasync, 2000 times). Append rows
//! are also shown as ratios to those. The round with the median throughput is reported per
//! workload. Nothing is asserted about speed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use bytes::Bytes;
use hyper::Method;
use serde::Deserialize;
use serde_json::json;
use sluice_engine::partitioner::partition_for_key;
use sluice_engine::streams::{ExpectedVersion, NewEvent, ReadStream};
use sluice_engine::{DurabilityConfig, TopicConfig};

use super::report::percentile;
use super::target::{Target, Targets};
use super::workload::{Kind, Workload};
use super::{
    bench_root, blocking, bounded, disk, elapsed_ns, median_rounds, pseudo_random_bytes,
    scoped_name, warm_up, ScratchDir, Settings,
};
use crate::cli::StreamsBenchArgs;

/// Partitions of every topic the benchmark creates: as many as `bench queue` uses, enough for
/// group commits to be shared by the writers of one partition and for 64 writers to spread.
const PARTITIONS: u32 = 4;
/// Events per append of the batch workload.
const BATCH_EVENTS: usize = 100;
/// Appends in flight while the streams are created (untimed).
const SEED_CONCURRENCY: u64 = 64;
/// Events of neighbouring streams appended after each event of the loaded stream.
const NEIGHBOUR_EVENTS: usize = 99;
/// Neighbouring streams of the loaded stream, all in its partition.
const NEIGHBOURS: usize = 16;
/// The loaded stream's snapshot is this many versions below its last event.
const SNAPSHOT_TAIL: u64 = 10;
/// The type of every event.
const EVENT_TYPE: &str = "BenchEvent";
/// The stream the load workload loads.
const LOAD_STREAM: &str = "aggregate";

/// What a row measured, which decides its columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowKind {
    /// 1 MiB writes to a plain file, one fdatasync at the end.
    DiskSequential,
    /// 4 KiB write + fdatasync pairs.
    DiskSync,
    /// Stream appends: one operation is one append.
    Append,
    /// Stream loads: one operation is one load of the whole stream.
    Load,
}

/// What one workload measured in one round.
#[derive(Debug)]
struct Measured {
    name: String,
    kind: RowKind,
    /// Timed operations: appends, loads, disk writes.
    ops: u64,
    /// Events appended or read (0 for the disk rows).
    events: u64,
    /// Payload bytes appended or read; bytes written for the disk rows.
    bytes: u64,
    elapsed: Duration,
    /// One entry per operation, in nanoseconds, sorted.
    latencies_ns: Vec<u64>,
}

impl Measured {
    fn new(
        name: String,
        kind: RowKind,
        (ops, events, bytes): (u64, u64, u64),
        elapsed: Duration,
        mut latencies_ns: Vec<u64>,
    ) -> anyhow::Result<Measured> {
        ensure!(!latencies_ns.is_empty(), "{name} timed no operation");
        latencies_ns.sort_unstable();
        Ok(Measured { name, kind, ops, events, bytes, elapsed, latencies_ns })
    }

    fn per_second(&self, count: u64) -> f64 {
        count as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    fn ops_per_second(&self) -> f64 {
        self.per_second(self.ops)
    }

    fn megabytes_per_second(&self) -> f64 {
        self.per_second(self.bytes) / 1e6
    }
}

/// A number of events as each door takes them: built once per workload, sent again and again.
#[derive(Debug)]
struct Events {
    /// For the engine; cloned for every append, as an embedder builds its events.
    list: Vec<NewEvent>,
    /// For the server: the members of an append's `events` array, joined by commas.
    json: String,
    /// Payload bytes of all of them.
    payload_bytes: u64,
}

impl Events {
    fn new(payload: &str, count: usize) -> Events {
        let event = NewEvent {
            event_type: EVENT_TYPE.to_owned(),
            data: payload.as_bytes().to_vec(),
            ..NewEvent::default()
        };
        let member = format!(r#"{{"type":"{EVENT_TYPE}","data":{payload}}}"#);
        Events {
            list: vec![event; count],
            json: vec![member; count].join(","),
            payload_bytes: (payload.len() * count) as u64,
        }
    }

    fn count(&self) -> u64 {
        self.list.len() as u64
    }
}

/// The payload of every event: a JSON object of exactly `bytes` bytes (at least 16), one
/// string of hex digits that neither repeats nor compresses.
fn payload(bytes: u32) -> String {
    const FRAME: &str = r#"{"payload":""}"#;
    let digits = bytes as usize - FRAME.len();
    let hex: String =
        pseudo_random_bytes(digits / 2 + 1).iter().map(|byte| format!("{byte:02x}")).collect();
    format!(r#"{{"payload":"{}"}}"#, &hex[..digits])
}

/// Runs `sluice bench streams`; `server` is a server given on the command line, measured
/// instead of one started here.
///
/// # Errors
/// Invalid settings, a server that cannot be started or reached, and any failed call (a
/// conflict included: the workloads are built to have none).
pub fn run(args: &StreamsBenchArgs, server: Option<&str>) -> anyhow::Result<()> {
    let mut concurrencies: Vec<u64> = Vec::new();
    for &writers in &args.concurrency {
        if !concurrencies.contains(&u64::from(writers)) {
            concurrencies.push(u64::from(writers));
        }
    }
    let most = concurrencies.iter().copied().max().unwrap_or(1).max(u64::from(args.batch_writers));
    ensure!(
        args.streams >= most,
        "--streams ({}) must be at least the most writers of a workload ({most}): each writer \
         owns streams of its own",
        args.streams
    );
    ensure!(args.disk_bytes >= 4096, "--disk-bytes ({}) must be at least 4K", args.disk_bytes);
    let (root, _owned_root) = bench_root(args.dir.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sluice-bench")
        .build()
        .context("starting the async runtime")?;
    let targets = Targets::open(args.target, server, &root)?;
    if !args.json {
        print_facts(args, &root, &targets);
    }
    let payload = payload(args.event_bytes);
    let plan = Plan {
        one: Arc::new(Events::new(&payload, 1)),
        batch: Arc::new(Events::new(&payload, BATCH_EVENTS)),
        neighbours: Events::new(&payload, NEIGHBOUR_EVENTS),
        payload,
        concurrencies,
    };
    let disk_settings =
        Settings { batch_records: 1, record_bytes: 4096, total_bytes: args.disk_bytes };
    let mut rounds = Vec::new();
    for round in 0..args.repeat {
        tracing::info!(round = round + 1, of = args.repeat, "round");
        warm_up(&disk_settings, &root)?;
        let mut measured = Vec::from(disk_rows(&disk_settings, &root)?);
        for target in &targets.list {
            measured.extend(runtime.block_on(plan.run_round(round, target, args))?);
        }
        rounds.push(measured);
    }
    runtime.block_on(targets.close())?;
    report(&median_rounds(rounds, Measured::ops_per_second), args);
    Ok(())
}

/// The raw disk, measured at the start of each round: `disk-seq-write`, then
/// `disk-4k-fdatasync`.
fn disk_rows(settings: &Settings, root: &Path) -> anyhow::Result<[Measured; 2]> {
    let dir = ScratchDir::create(root.join("disk"))?;
    let workload = Workload { name: "disk-seq-write", kind: Kind::DiskSequentialWrite };
    let sequential = disk::sequential_write(workload, settings, dir.path())?;
    let workload = Workload { name: "disk-4k-fdatasync", kind: Kind::DiskSyncLatency };
    let sync = disk::sync_latency(workload, settings, dir.path())?;
    let row = |measurement: super::Measurement, kind| {
        let ops = measurement.latencies_ns.len() as u64;
        Measured::new(
            measurement.workload.name.to_owned(),
            kind,
            (ops, 0, measurement.bytes),
            measurement.elapsed,
            measurement.latencies_ns,
        )
    };
    Ok([row(sequential, RowKind::DiskSequential)?, row(sync, RowKind::DiskSync)?])
}

/// What every round runs on every target.
struct Plan {
    /// One event per append.
    one: Arc<Events>,
    /// [`BATCH_EVENTS`] per append.
    batch: Arc<Events>,
    /// The neighbours' appends of the load workload.
    neighbours: Events,
    /// One event's payload, also the snapshot's.
    payload: String,
    /// The writers of the one-event workloads, without repeats.
    concurrencies: Vec<u64>,
}

impl Plan {
    /// Every workload once on `target`, in a fixed order.
    async fn run_round(
        &self,
        round: u32,
        target: &Target,
        args: &StreamsBenchArgs,
    ) -> anyhow::Result<Vec<Measured>> {
        let mut measured = Vec::new();
        for &writers in &self.concurrencies {
            let name = format!("streams-{}-c{writers}", target.name());
            let topic = scoped_name(round, &name);
            let appends = Appends { writers, appends: args.appends, events: Arc::clone(&self.one) };
            let timed =
                bounded(&name, appends.run(target, &topic, args.streams, &self.one)).await?;
            measured.push(timed.named(name)?);
        }
        let name = format!("streams-{}-batch{BATCH_EVENTS}", target.name());
        let topic = scoped_name(round, &name);
        let appends = Appends {
            writers: u64::from(args.batch_writers),
            appends: args.batch_appends,
            events: Arc::clone(&self.batch),
        };
        let timed = bounded(&name, appends.run(target, &topic, args.streams, &self.one)).await?;
        measured.push(timed.named(name)?);
        let name = format!("streams-{}-load", target.name());
        let topic = scoped_name(round, &name);
        let [full, snapshot] = bounded(&name, self.load(target, &topic, args)).await?;
        measured.push(full.named(format!("{name}-full"))?);
        measured.push(snapshot.named(format!("{name}-snapshot"))?);
        measured.iter().for_each(log_progress);
        Ok(measured)
    }

    /// Writes the loaded stream among its neighbours, saves its snapshot, then times the
    /// loads: every event; the snapshot and the events after it.
    async fn load(
        &self,
        target: &Target,
        topic: &str,
        args: &StreamsBenchArgs,
    ) -> anyhow::Result<[Timed; 2]> {
        create_topic(target, topic).await?;
        let partition = partition_for_key(LOAD_STREAM.as_bytes(), PARTITIONS);
        let neighbours: Vec<String> = (0..)
            .map(|index| format!("neighbour-{index}"))
            .filter(|name| partition_for_key(name.as_bytes(), PARTITIONS) == partition)
            .take(NEIGHBOURS)
            .collect();
        let mut version = -1;
        for index in 0..args.load_events {
            version = append_after(target, topic, LOAD_STREAM, version, &self.one).await?;
            let neighbour = &neighbours[index as usize % NEIGHBOURS];
            append(target, topic, neighbour, ExpectedVersion::Any, &self.neighbours).await?;
        }
        let snapshot_at = args.load_events - SNAPSHOT_TAIL;
        save_snapshot(target, topic, LOAD_STREAM, snapshot_at, &self.payload).await?;
        let count = args.read_count as usize;
        let (mut full, mut from_snapshot) = (Vec::new(), Vec::new());
        for _ in 0..args.loads {
            let start = Instant::now();
            let events = read_from(target, topic, LOAD_STREAM, 0, count).await?;
            full.push(elapsed_ns(start));
            ensure!(events == args.load_events, "loaded {events} of {} events", args.load_events);
            let start = Instant::now();
            let version = load_snapshot(target, topic, LOAD_STREAM).await?;
            let events = read_from(target, topic, LOAD_STREAM, version + 1, count).await?;
            from_snapshot.push(elapsed_ns(start));
            ensure!(
                version == snapshot_at && version + 1 + events == args.load_events,
                "loaded the snapshot at version {version} and {events} events after it, of a \
                 snapshot at {snapshot_at} and {} events",
                args.load_events
            );
        }
        delete_topic(target, topic).await?;
        let event_bytes = self.one.payload_bytes;
        let tail = args.load_events - 1 - snapshot_at;
        Ok([
            Timed::loads((args.load_events, args.load_events * event_bytes), full),
            // The snapshot is read too, and its payload has the size of one event's.
            Timed::loads((tail, (tail + 1) * event_bytes), from_snapshot),
        ])
    }
}

/// A measurement not yet named.
struct Timed {
    kind: RowKind,
    ops: u64,
    events: u64,
    bytes: u64,
    elapsed: Duration,
    latencies_ns: Vec<u64>,
}

impl Timed {
    /// Loads of `events` events and `bytes` payload bytes each, one per latency, timed one
    /// after the other: the elapsed time is the sum of their latencies.
    fn loads((events, bytes): (u64, u64), latencies_ns: Vec<u64>) -> Timed {
        let elapsed = Duration::from_nanos(latencies_ns.iter().sum());
        let loads = latencies_ns.len() as u64;
        let (events, bytes) = (loads * events, loads * bytes);
        Timed { kind: RowKind::Load, ops: loads, events, bytes, elapsed, latencies_ns }
    }

    fn named(self, name: String) -> anyhow::Result<Measured> {
        let volume = (self.ops, self.events, self.bytes);
        Measured::new(name, self.kind, volume, self.elapsed, self.latencies_ns)
    }
}

/// One append workload: `writers` writers share the streams and `appends` timed appends of
/// `events` each.
struct Appends {
    writers: u64,
    appends: u64,
    events: Arc<Events>,
}

impl Appends {
    /// Creates `topic` and its `streams` streams (each's first event, `seed`), then times the
    /// appends, then deletes the topic.
    async fn run(
        self,
        target: &Target,
        topic: &str,
        streams: u64,
        seed: &Arc<Events>,
    ) -> anyhow::Result<Timed> {
        create_topic(target, topic).await?;
        let seeders = SEED_CONCURRENCY.min(streams);
        let created = Instant::now();
        let tasks: Vec<_> = (0..seeders)
            .map(|first| {
                let (target, topic, seed) = (target.clone(), topic.to_owned(), Arc::clone(seed));
                tokio::spawn(async move {
                    for index in (first..streams).step_by(seeders as usize) {
                        append_after(&target, &topic, &stream_name(index), -1, &seed).await?;
                    }
                    Ok::<_, anyhow::Error>(())
                })
            })
            .collect();
        for task in tasks {
            task.await.context("a task creating streams panicked")??;
        }
        let seconds = created.elapsed().as_secs_f64();
        tracing::info!(
            topic,
            streams,
            seconds = format_args!("{seconds:.3}"),
            per_second = format_args!("{:.0}", streams as f64 / seconds.max(f64::MIN_POSITIVE)),
            "streams created (untimed: one no_stream append each, {seeders} in flight)"
        );
        let writers = self.writers;
        let start = Instant::now();
        let tasks: Vec<_> = (0..writers)
            .map(|writer| {
                let owned: Vec<String> =
                    (writer..streams).step_by(writers as usize).map(stream_name).collect();
                let count = self.appends / writers + u64::from(writer < self.appends % writers);
                let (target, topic) = (target.clone(), topic.to_owned());
                let events = Arc::clone(&self.events);
                tokio::spawn(async move {
                    // Every stream is at version 0, its first event.
                    let mut versions = vec![0; owned.len()];
                    let mut latencies = Vec::with_capacity(count as usize);
                    for slot in (0..owned.len()).cycle().take(count as usize) {
                        let append_start = Instant::now();
                        versions[slot] =
                            append_after(&target, &topic, &owned[slot], versions[slot], &events)
                                .await?;
                        latencies.push(elapsed_ns(append_start));
                    }
                    Ok::<_, anyhow::Error>(latencies)
                })
            })
            .collect();
        let mut latencies_ns = Vec::new();
        for task in tasks {
            latencies_ns.extend(task.await.context("a writer panicked")??);
        }
        let elapsed = start.elapsed();
        delete_topic(target, topic).await?;
        let volume = (self.appends, self.appends * self.events.count());
        Ok(Timed {
            kind: RowKind::Append,
            ops: volume.0,
            events: volume.1,
            bytes: self.appends * self.events.payload_bytes,
            elapsed,
            latencies_ns,
        })
    }
}

fn stream_name(index: u64) -> String {
    format!("stream-{index}")
}

fn log_progress(measured: &Measured) {
    tracing::info!(
        workload = %measured.name,
        seconds = format_args!("{:.3}", measured.elapsed.as_secs_f64()),
        ops = measured.ops,
        events = measured.events,
        "finished"
    );
}

/// Creates `topic` with [`PARTITIONS`] partitions, `fsync` durability and retention off.
async fn create_topic(target: &Target, topic: &str) -> anyhow::Result<()> {
    match target {
        Target::Embedded(engine) => {
            let (engine, topic) = (engine.clone(), topic.to_owned());
            let config = TopicConfig {
                partitions: PARTITIONS,
                durability: DurabilityConfig::Fsync,
                retention_age_ms: None,
                ..TopicConfig::default()
            };
            blocking(move || engine.create_topic(&topic, config).map(drop)).await
        }
        Target::Server(http) => {
            let body = json!({"name": topic, "partitions": PARTITIONS, "durability": "fsync",
                "retention_age_ms": null});
            http.send(Method::POST, "/v1/topics", Bytes::from(body.to_string())).await.map(drop)
        }
    }
    .with_context(|| format!("creating topic {topic}"))
}

/// Deletes `topic`, its events, and its streams' metadata and snapshots.
async fn delete_topic(target: &Target, topic: &str) -> anyhow::Result<()> {
    match target {
        Target::Embedded(engine) => {
            let (engine, topic) = (engine.clone(), topic.to_owned());
            blocking(move || engine.delete_topic(&topic)).await
        }
        Target::Server(http) => {
            let path = format!("/v1/topics/{topic}");
            http.send(Method::DELETE, &path, Bytes::new()).await.map(drop)
        }
    }
    .with_context(|| format!("deleting topic {topic}"))
}

/// The answer to an append, as far as the bench reads it.
#[derive(Deserialize)]
struct AppendAnswer {
    version: i64,
}

/// Appends `events` to `stream` if its version is as `expected`; returns its new version.
async fn append(
    target: &Target,
    topic: &str,
    stream: &str,
    expected: ExpectedVersion,
    events: &Events,
) -> anyhow::Result<i64> {
    match target {
        Target::Embedded(engine) => {
            let appended =
                engine.append_stream(topic, stream, expected, events.list.clone()).await?;
            Ok(appended.version)
        }
        Target::Server(http) => {
            let expected = match expected {
                ExpectedVersion::Exact(version) => version.to_string(),
                other => format!("\"{other}\""),
            };
            let body = format!(r#"{{"expected_version":{expected},"events":[{}]}}"#, events.json);
            let path = format!("/v1/streams/{topic}/{stream}");
            let answer: AppendAnswer = http.call(Method::POST, &path, Bytes::from(body)).await?;
            Ok(answer.version)
        }
    }
}

/// Appends `events` to `stream`, expecting it at `version` exactly (-1: no stream), and checks
/// the new version; returns it.
async fn append_after(
    target: &Target,
    topic: &str,
    stream: &str,
    version: i64,
    events: &Events,
) -> anyhow::Result<i64> {
    let expected = u64::try_from(version).map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
    let now = append(target, topic, stream, expected, events).await?;
    let want = version + events.count() as i64;
    ensure!(now == want, "stream {stream} is at version {now} after an append, not {want}");
    Ok(now)
}

/// The answer to a read, as far as the bench reads it.
#[derive(Deserialize)]
struct SliceAnswer {
    next: Option<u64>,
    events: Vec<EventAnswer>,
}

#[derive(Deserialize)]
struct EventAnswer {
    version: u64,
}

/// Reads `stream` forward from version `from` to its end, `count` events per read at most,
/// following `next`; checks that the versions follow each other and returns how many were read.
async fn read_from(
    target: &Target,
    topic: &str,
    stream: &str,
    from: u64,
    count: usize,
) -> anyhow::Result<u64> {
    let mut expected = from;
    let mut next = Some(from);
    while let Some(page) = next {
        let versions: Vec<u64>;
        (versions, next) = match target {
            Target::Embedded(engine) => {
                let read = ReadStream { from: Some(page), count, ..ReadStream::default() };
                let slice = engine.read_stream(topic, stream, read).await?;
                (slice.events.iter().map(|event| event.version).collect(), slice.next)
            }
            Target::Server(http) => {
                let path = format!("/v1/streams/{topic}/{stream}?from={page}&count={count}");
                let answer: SliceAnswer = http.call(Method::GET, &path, Bytes::new()).await?;
                (answer.events.iter().map(|event| event.version).collect(), answer.next)
            }
        };
        for version in versions {
            ensure!(version == expected, "read version {version} where {expected} was next");
            expected += 1;
        }
    }
    Ok(expected - from)
}

/// Stores `data` (JSON) as the snapshot of `stream` at `version`.
async fn save_snapshot(
    target: &Target,
    topic: &str,
    stream: &str,
    version: u64,
    data: &str,
) -> anyhow::Result<()> {
    match target {
        Target::Embedded(engine) => {
            engine.save_snapshot(topic, stream, version, data.as_bytes().to_vec()).await?;
        }
        Target::Server(http) => {
            let body = format!(r#"{{"version":{version},"data":{data}}}"#);
            let path = format!("/v1/streams/{topic}/{stream}/snapshot");
            http.send(Method::PUT, &path, Bytes::from(body)).await?;
        }
    }
    Ok(())
}

/// The answer to a snapshot load, as far as the bench reads it.
#[derive(Deserialize)]
struct SnapshotAnswer {
    version: u64,
}

/// Loads the newest snapshot of `stream`; returns the version it folds.
async fn load_snapshot(target: &Target, topic: &str, stream: &str) -> anyhow::Result<u64> {
    match target {
        Target::Embedded(engine) => {
            let snapshot = engine.load_snapshot(topic, stream).await?;
            Ok(snapshot.with_context(|| format!("stream {stream} has no snapshot"))?.version)
        }
        Target::Server(http) => {
            let path = format!("/v1/streams/{topic}/{stream}/snapshot");
            let answer: SnapshotAnswer = http.call(Method::GET, &path, Bytes::new()).await?;
            Ok(answer.version)
        }
    }
}

fn print_facts(args: &StreamsBenchArgs, dir: &Path, targets: &Targets) {
    let cpus = std::thread::available_parallelism().map_or(0, |count| count.get());
    let filesystem = disk::filesystem(dir).unwrap_or_else(|| "unknown".to_owned());
    let directory = dir.canonicalize().unwrap_or_else(|_| PathBuf::from(dir));
    let names: Vec<&str> = targets.list.iter().map(Target::name).collect();
    let writers: Vec<String> = args.concurrency.iter().map(u32::to_string).collect();
    println!("nproc        {cpus}");
    println!("filesystem   {filesystem}");
    println!("directory    {}", directory.display());
    println!("targets      {}", names.join(", "));
    if let Some(server) = &targets.server {
        println!("server       {server}");
    }
    println!(
        "topics       {PARTITIONS} partitions, durability fsync (an append is answered after \
         fdatasync), retention off; one per workload"
    );
    println!("events       {} bytes of JSON payload each", args.event_bytes);
    println!(
        "appends      exact expected versions over {} streams (created untimed first); {} \
         one-event appends per workload, by {} writers; {} appends of {BATCH_EVENTS} events by {}",
        args.streams,
        args.appends,
        writers.join(" or "),
        args.batch_appends,
        match args.batch_writers {
            1 => "1 writer".to_owned(),
            many => format!("{many} writers"),
        }
    );
    println!(
        "loads        {} of a {}-event stream (1 record in {} of its partition), each way; \
         snapshot at version {}; up to {} events per read",
        args.loads,
        args.load_events,
        NEIGHBOUR_EVENTS + 1,
        args.load_events - SNAPSHOT_TAIL,
        args.read_count
    );
    println!("rounds       {} (the median round is reported per workload)", args.repeat);
    println!();
}

/// Prints the median rounds: a table, or one JSON object per line. Append rows get two ratios
/// to the disk: payload MB/s over `disk-seq-write`'s, and p50 over `disk-4k-fdatasync`'s.
fn report(rows: &[Measured], args: &StreamsBenchArgs) {
    let find = |kind| rows.iter().find(|row| row.kind == kind);
    let sequential = find(RowKind::DiskSequential).map(Measured::megabytes_per_second);
    let sync_p50 = find(RowKind::DiskSync).map(|row| percentile(&row.latencies_ns, 50) as f64);
    if !args.json {
        println!(
            "{:<32} {:>9} {:>10} {:>9} {:>10} {:>10} {:>9} {:>10}",
            "workload", "ops/s", "events/s", "MB/s", "p50", "p99", "seq_ratio", "sync_ratio"
        );
    }
    for row in rows {
        let (p50, p99) = (percentile(&row.latencies_ns, 50), percentile(&row.latencies_ns, 99));
        let appends = row.kind == RowKind::Append;
        let seq_ratio =
            sequential.filter(|_| appends).map(|disk| row.megabytes_per_second() / disk);
        let sync_ratio = sync_p50.filter(|_| appends).map(|disk| p50 as f64 / disk);
        let events_per_second =
            matches!(row.kind, RowKind::Append | RowKind::Load).then(|| row.per_second(row.events));
        if args.json {
            let line = json!({"workload": row.name, "ops": row.ops, "events": row.events,
                "seconds": row.elapsed.as_secs_f64(), "ops_per_sec": row.ops_per_second(),
                "events_per_sec": events_per_second, "mb_per_sec": row.megabytes_per_second(),
                "p50_us": p50 as f64 / 1e3, "p99_us": p99 as f64 / 1e3,
                "seq_ratio": seq_ratio, "sync_ratio": sync_ratio});
            println!("{line}");
        } else {
            let optional = |value: Option<f64>, decimals: usize| {
                value.map_or_else(|| "-".to_owned(), |value| format!("{value:.decimals$}"))
            };
            println!(
                "{:<32} {:>9.0} {:>10} {:>9.1} {:>10} {:>10} {:>9} {:>10}",
                row.name,
                row.ops_per_second(),
                optional(events_per_second, 0),
                row.megabytes_per_second(),
                format_ns(p50),
                format_ns(p99),
                optional(seq_ratio, 3),
                optional(sync_ratio, 2),
            );
        }
    }
}

fn format_ns(ns: u64) -> String {
    if ns >= 1_000_000 {
        format!("{:.2} ms", ns as f64 / 1e6)
    } else {
        format!("{:.0} µs", ns as f64 / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::{payload, Events};

    #[test]
    fn payload_is_json_of_exactly_the_size_asked() {
        for bytes in [16, 17, 1024, 1025, 8192] {
            let text = payload(bytes);
            assert_eq!(text.len(), bytes as usize);
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            // Stored as the server stores a JSON payload: serialised again, the same bytes.
            assert_eq!(serde_json::to_string(&value).unwrap(), text);
        }
    }

    #[test]
    fn events_are_the_same_for_both_doors() {
        let events = Events::new(&payload(64), 3);
        assert_eq!(events.count(), 3);
        assert_eq!(events.payload_bytes, 192);
        let body: serde_json::Value = serde_json::from_str(&format!("[{}]", events.json)).unwrap();
        for (member, event) in body.as_array().unwrap().iter().zip(&events.list) {
            assert_eq!(member["type"], event.event_type.as_str());
            assert_eq!(serde_json::to_vec(&member["data"]).unwrap(), event.data);
        }
    }
}
