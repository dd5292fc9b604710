//! Sluice side by side with RabbitMQ and NATS JetStream, each started by `run.sh` on this
//! machine. `measure` runs one system's workloads once (one round) and appends one JSON line per
//! workload to a rounds file; `disk` does the same for the raw disk (through `sluice bench log`);
//! `report` takes the median round of every row, prints the table and writes the results JSON.
//! What each workload does is in `README.md`.

mod http;
mod kafka;
mod nats;
mod postgres;
mod rabbitmq;
mod report;
mod sluice;

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "Sluice side by side with RabbitMQ and NATS JetStream")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one system's workloads once and append the rows to `--out`.
    Measure(Box<MeasureArgs>),
    /// Measure the raw disk with `sluice bench log` and append the rows to `--out`.
    Disk {
        /// The `sluice` binary.
        #[arg(long)]
        sluice: PathBuf,
        /// Scratch directory for the disk files (created and removed by `sluice bench log`).
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        round: u32,
        #[arg(long)]
        out: PathBuf,
    },
    /// Median round per row, the table on stdout, and the results JSON.
    Report {
        /// The rounds file `measure` and `disk` appended to.
        #[arg(long = "in")]
        input: PathBuf,
        #[arg(long, default_value = "bench/peers/results.json")]
        out: PathBuf,
        /// `KEY=VALUE` recorded in the JSON's `meta` (versions, machine, command); repeatable.
        #[arg(long)]
        meta: Vec<String>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum System {
    Sluice,
    Rabbitmq,
    Nats,
    Postgres,
}

#[derive(clap::Args, Clone)]
pub struct MeasureArgs {
    #[arg(long, value_enum)]
    system: System,
    /// `http://127.0.0.1:PORT` (Sluice), `amqp://127.0.0.1:PORT/%2f` (RabbitMQ),
    /// `nats://127.0.0.1:PORT` (NATS), `host=127.0.0.1 port=PORT user=postgres` (PostgreSQL).
    #[arg(long)]
    url: String,
    /// Sluice only: its Kafka listener (`127.0.0.1:PORT`); publish workloads then also run
    /// through it.
    #[arg(long)]
    kafka: Option<String>,
    /// NATS only: the server's monitoring URL, to record what it reports of its sync setting.
    #[arg(long)]
    monitor: Option<String>,
    /// NATS only: the server's `sync_interval` as run.sh configured it (`default` or `always`).
    #[arg(long, default_value = "default")]
    nats_sync: String,
    #[arg(long)]
    round: u32,
    /// The rounds file to append to (JSON lines).
    #[arg(long)]
    out: PathBuf,
    /// Messages per workload run (queue workloads: pre-filled then consumed; publish workloads:
    /// published).
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 1024)]
    payload: usize,
    /// Worker counts of the queue workloads.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    workers: Vec<usize>,
    /// Publishes in flight of the publish workloads.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    in_flight: Vec<usize>,
    /// Messages a queue worker takes (and settles) per round trip, and RabbitMQ's prefetch.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Longest timed phase of one workload run; a run that hits it counts what it completed.
    #[arg(long, default_value_t = 20.0)]
    max_seconds: f64,
    /// Which workload families to run: `queue`, `publish`, `consume`, `append`, `latency` (all
    /// by default); `publish-kafka` runs only Sluice's Kafka-door publishes.
    #[arg(long, value_delimiter = ',', default_value = "queue,publish,consume,append,latency")]
    workloads: Vec<String>,
    /// Streams the conditional-append workloads spread over.
    #[arg(long, default_value_t = 10_000)]
    append_streams: usize,
    /// Sluice (and NATS): appends in flight of `append-c64`... and `append-c1`.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    append_in_flight: Vec<usize>,
    /// PostgreSQL: connections of `append-c64` (the issue compares with 8).
    #[arg(long, value_delimiter = ',', default_value = "8,64")]
    pg_clients: Vec<usize>,
    /// Writers of `append-b100` (100 events per append / transaction), every system.
    #[arg(long, default_value_t = 1)]
    batch_writers: usize,
    /// Messages of the `latency-1000` run (published at 1,000 per second).
    #[arg(long, default_value_t = 5_000)]
    latency_messages: u64,
}

impl MeasureArgs {
    /// Whether the workload family `name` was asked for.
    fn runs(&self, name: &str) -> bool {
        self.workloads.iter().any(|workload| workload == name)
    }

    /// Sluice's Kafka-door publishes run with `publish`, or alone with `publish-kafka`.
    fn runs_kafka_publish(&self) -> bool {
        self.runs("publish") || self.runs("publish-kafka")
    }

    fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_secs_f64(self.max_seconds)
    }
}

/// One workload run of one system.
pub struct Sample {
    workload: String,
    setting: String,
    /// Whether what the system acknowledged had been fsynced: `yes`, `no`, or `async` (acks that
    /// get no answer, fsynced later). See README.md.
    durable: &'static str,
    messages: u64,
    elapsed: Duration,
    /// Sorted by `finish`.
    latencies_ns: Vec<u64>,
    /// What the latency is of.
    latency_of: &'static str,
}

impl Sample {
    fn finish(mut self) -> Self {
        self.latencies_ns.sort_unstable();
        self
    }

    fn row(&self, system: &str, round: u32) -> Value {
        let rate = self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9);
        json!({
            "round": round, "workload": self.workload, "system": system,
            "setting": self.setting, "durable": self.durable, "messages": self.messages,
            "seconds": self.elapsed.as_secs_f64(), "messages_per_second": rate,
            "p50_ns": percentile(&self.latencies_ns, 50.0),
            "p99_ns": percentile(&self.latencies_ns, 99.0),
            "latency_samples": self.latencies_ns.len(), "latency_of": self.latency_of,
        })
    }
}

pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

pub fn elapsed_ns(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// `len` bytes of printable hex: the same bytes for every system (Sluice stores a JSON string
/// of it, quotes included, so `payload_json` is exactly `len` bytes).
pub fn payload(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            b"0123456789abcdef"[(state & 15) as usize]
        })
        .collect()
}

/// A shared budget of messages that concurrent tasks claim one (or a batch) at a time, with a
/// deadline: a run ends when the budget is used up or the time is over.
pub struct Budget {
    claimed: AtomicU64,
    done: AtomicU64,
    total: u64,
    deadline: Instant,
    /// When the last message of the budget completed.
    finished: OnceLock<Instant>,
}

impl Budget {
    pub fn new(total: u64, deadline: Instant) -> Arc<Budget> {
        let (claimed, done, finished) = (AtomicU64::new(0), AtomicU64::new(0), OnceLock::new());
        Arc::new(Budget { claimed, done, total, deadline, finished })
    }

    /// Claims one message to send; false once the budget or the time is used up.
    pub fn claim(&self) -> bool {
        self.claim_many(1)
    }

    /// Claims `count` messages sent together (an append of several events).
    pub fn claim_many(&self, count: u64) -> bool {
        Instant::now() < self.deadline
            && self.claimed.fetch_add(count, Ordering::Relaxed) + count <= self.total
    }

    pub fn complete(&self, count: u64) {
        if self.done.fetch_add(count, Ordering::Relaxed) + count >= self.total {
            self.finished.get_or_init(Instant::now);
        }
    }

    /// The time from `start` to the completion of the last message, or to now if the run was
    /// cut by the deadline: workers still waiting for more (a long poll, an idle timeout) when
    /// the last message completed do not count.
    pub fn elapsed(&self, start: Instant) -> Duration {
        self.finished.get().map_or_else(|| start.elapsed(), |end| end.duration_since(start))
    }

    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Whether consumers should stop: everything settled, or the time is over.
    pub fn over(&self) -> bool {
        self.done() >= self.total || Instant::now() >= self.deadline
    }
}

/// The send times of a publish->consume latency run: publishes go out at a steady 1,000 per
/// second, each carrying its sequence number (16 hex digits after a `"`, so the payload is also
/// a JSON string), and the consumer looks up when its message was sent.
pub struct Clocked {
    start: Instant,
    /// Nanoseconds after `start` each message was sent, plus one (0: not sent yet).
    sent: Vec<AtomicU64>,
}

/// The interval between two publishes of a latency run.
pub const LATENCY_INTERVAL: Duration = Duration::from_millis(1);

impl Clocked {
    pub fn new(messages: u64) -> Arc<Clocked> {
        let sent = (0..messages).map(|_| AtomicU64::new(0)).collect();
        Arc::new(Clocked { start: Instant::now(), sent })
    }

    pub fn messages(&self) -> u64 {
        self.sent.len() as u64
    }

    /// The payload of message `seq`: `"`, 16 hex digits, filler, `"`; `len` bytes in all.
    pub fn payload(seq: u64, len: usize) -> Vec<u8> {
        let mut bytes = format!("\"{seq:016x}").into_bytes();
        bytes.resize(len.max(19) - 1, b'.');
        bytes.push(b'"');
        bytes
    }

    /// The sequence number in a payload made by [`Clocked::payload`].
    pub fn seq(payload: &[u8]) -> Option<u64> {
        let digits = std::str::from_utf8(payload.get(1..17)?).ok()?;
        u64::from_str_radix(digits, 16).ok()
    }

    /// Records that message `seq` is being sent now.
    pub fn mark_sent(&self, seq: u64) {
        let at = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        self.sent[seq as usize].store(at + 1, Ordering::Release);
    }

    /// The time since message `seq` was sent, if it was.
    pub fn latency(&self, seq: u64) -> Option<u64> {
        let sent = self.sent.get(seq as usize)?.load(Ordering::Acquire);
        let now = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        (sent > 0).then(|| now.saturating_sub(sent - 1))
    }

    /// Calls `publish(seq)` once per millisecond for every message, each in a task of its own
    /// so a slow acknowledgement does not hold back the schedule. Returns when all were sent
    /// and acknowledged; the first publish error ends the run.
    pub async fn publish_paced<F, Fut>(self: &Arc<Self>, publish: F) -> anyhow::Result<()>
    where
        F: Fn(u64) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let mut ticks = tokio::time::interval(LATENCY_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut tasks = Vec::with_capacity(self.sent.len());
        for seq in 0..self.messages() {
            ticks.tick().await;
            self.mark_sent(seq);
            tasks.push(tokio::spawn(publish(seq)));
        }
        for task in tasks {
            task.await.context("a publish task panicked")??;
        }
        Ok(())
    }
}

/// The sample of a latency run from what the consumer measured.
pub fn latency_sample(
    setting: String,
    durable: &'static str,
    clocked: &Clocked,
    latencies_ns: Vec<u64>,
) -> Sample {
    Sample {
        workload: "latency-1000".to_owned(),
        setting,
        durable,
        messages: latencies_ns.len() as u64,
        elapsed: clocked.start.elapsed(),
        latencies_ns,
        latency_of: "publish call -> consumer has the message",
    }
    .finish()
}

/// One writer's streams of a conditional-append workload: writer `index` of `writers` owns the
/// streams `s` with `s % writers == index` of `streams`, takes them in turn, and knows each one's
/// next version, so its appends never conflict (the workloads measure the check, not retries).
pub struct AppendPlan {
    streams: Vec<(String, u64)>,
    turn: usize,
}

pub fn append_plan(index: usize, writers: usize, streams: usize) -> AppendPlan {
    let owned = (index..streams.max(writers)).step_by(writers.max(1));
    AppendPlan { streams: owned.map(|stream| (format!("stream-{stream}"), 0)).collect(), turn: 0 }
}

impl AppendPlan {
    /// The next stream and the version its next `count` events start at.
    pub fn next(&mut self, count: u64) -> (String, u64) {
        let count_streams = self.streams.len();
        let slot = &mut self.streams[self.turn % count_streams];
        self.turn += 1;
        let first = slot.1;
        slot.1 += count;
        (slot.0.clone(), first)
    }
}

/// Runs each client future on a task of its own, at once, and gathers their latencies (the
/// first failure is the run's).
pub async fn run_clients<Fut>(clients: impl Iterator<Item = Fut>) -> anyhow::Result<Vec<u64>>
where
    Fut: std::future::Future<Output = anyhow::Result<Vec<u64>>> + Send + 'static,
{
    let tasks: Vec<_> = clients.map(tokio::spawn).collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.context("a client task panicked")??);
    }
    Ok(latencies)
}

/// `clients` tasks that each send one message at a time with `send` (which returns once the
/// message is acknowledged) until the budget is spent; the latency of every send.
pub async fn closed_loop<S, Fut>(
    clients: usize,
    budget: &Arc<Budget>,
    send: S,
) -> anyhow::Result<Vec<u64>>
where
    S: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    run_clients((0..clients).map(|_| {
        let (send, budget) = (send.clone(), Arc::clone(budget));
        async move {
            let mut latencies = Vec::new();
            while budget.claim() {
                let sent = Instant::now();
                send().await?;
                latencies.push(elapsed_ns(sent));
                budget.complete(1);
            }
            Ok(latencies)
        }
    }))
    .await
}

/// Retries `connect` for up to a minute: a server may accept connections a little before it is
/// ready for them.
pub async fn retry<T, F, Fut>(what: &str, mut connect: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        match connect().await {
            Ok(value) => return Ok(value),
            Err(error) if Instant::now() < give_up => {
                eprintln!("waiting for {what}: {error:#}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(error.context(format!("connecting to {what}"))),
        }
    }
}

fn append(out: &PathBuf, rows: &[Value]) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .with_context(|| format!("opening {}", out.display()))?;
    for row in rows {
        writeln!(file, "{row}")?;
    }
    Ok(())
}

fn measure(args: MeasureArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (system, samples) = runtime.block_on(async {
        match args.system {
            System::Sluice => Ok::<_, anyhow::Error>(("sluice", sluice::run(&args).await?)),
            System::Rabbitmq => Ok(("rabbitmq", rabbitmq::run(&args).await?)),
            System::Nats => Ok(("nats", nats::run(&args).await?)),
            System::Postgres => Ok(("postgres", postgres::run(&args).await?)),
        }
    })?;
    let rows: Vec<Value> = samples.iter().map(|sample| sample.row(system, args.round)).collect();
    for row in &rows {
        eprintln!(
            "round {} {} {} [{}]: {:.0} msg/s",
            args.round,
            row["workload"].as_str().unwrap_or("?"),
            system,
            row["setting"].as_str().unwrap_or("?"),
            row["messages_per_second"].as_f64().unwrap_or(0.0)
        );
    }
    append(&args.out, &rows)
}

/// The raw disk, as `sluice bench log` measures it: `disk-seq-write` (256 MiB in 1 MiB writes,
/// one fdatasync; rate in 1 KiB blocks/s), `disk-4k-fdatasync` (4 KiB appended + fdatasync,
/// 2,000 times; rate in pairs/s) and `disk-4k-overwrite-fdatasync` (the same written over zeros
/// already on disk, as the log does with its zeros written ahead).
fn disk(sluice: &PathBuf, dir: &PathBuf, round: u32, out: &PathBuf) -> anyhow::Result<()> {
    let output = Command::new(sluice)
        .args([
            "bench",
            "log",
            "--workloads",
            "disk-seq-write,disk-4k-fdatasync,disk-4k-overwrite-fdatasync",
        ])
        .args(["--json", "--repeat", "1", "--dir"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .output()
        .with_context(|| format!("running {} bench log", sluice.display()))?;
    if !output.status.success() {
        bail!("sluice bench log failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let mut rows = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let measured: Value = serde_json::from_str(line).context("parsing sluice bench log")?;
        let workload = measured["workload"].as_str().context("no workload")?.to_owned();
        let setting = match workload.as_str() {
            "disk-seq-write" => "256 MiB in 1 MiB writes, 1 fdatasync; 1 KiB blocks/s",
            "disk-4k-overwrite-fdatasync" => {
                "4 KiB written over synced zeros + fdatasync, 2000 times; pairs/s"
            }
            _ => "4 KiB appended + fdatasync, 2000 times; pairs/s",
        };
        let ns = |key: &str| measured[key].as_f64().map(|us| (us * 1000.0) as u64);
        rows.push(json!({
            "round": round, "workload": workload, "system": "disk", "setting": setting,
            "durable": "-", "messages_per_second": measured["records_per_sec"],
            "mb_per_second": measured["bytes_per_sec"].as_f64().map(|b| b / 1e6),
            "p50_ns": ns("p50_us"), "p99_ns": ns("p99_us"), "latency_of": "one write call",
        }));
    }
    append(out, &rows)
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Measure(args) => measure(*args),
        Cmd::Disk { sluice, dir, round, out } => disk(&sluice, &dir, round, &out),
        Cmd::Report { input, out, meta } => report::run(&input, &out, &meta),
    }
}
