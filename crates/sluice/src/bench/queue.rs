//! `sluice bench queue`: queue-group deliver+ack throughput and produce→ack latency, with the
//! engine in this process and through a server over HTTP.
//!
//! Workloads, each on a topic and a queue group of its own (4 partitions, `fsync`):
//! - `queue-<target>-w<N>`: the topic is filled (untimed) with `--messages` messages of
//!   `--record-bytes`; then N workers each lease up to `--batch` messages, ack them in one
//!   request, and go on until every message is acked. Latency is per lease+ack round.
//! - `queue-<target>-w<N>-next`: the same, but each worker acks what it holds and leases the
//!   next batch in one request (`ack-next`; `Engine::settle_and_lease` embedded). Latency is
//!   per ack-next round.
//! - `queue-<target>-latency`: one producer sends one message every 2 ms (500/s) for
//!   `--latency-messages` messages while one worker long-polls, and acks each message it gets;
//!   the latency is from just before the produce call to the ack's return.
//!
//! Both steps of a round trip are durable: the lease returns after its deliveries are fsynced in
//! the group's journal, the ack after its ack is. Nothing is asserted; the numbers are reported.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use bytes::Bytes;
use hyper::Method;
use serde_json::{json, Value};
use sluice_engine::queue::{Action, QueueConfig};
use sluice_engine::{DurabilityConfig, Engine, ProduceRecord, TopicConfig};

use super::report::percentile;
use super::server::{HttpClient, ServerProcess};
use super::{bench_root, elapsed_ns, pseudo_random_bytes, ScratchDir};
use crate::cli::{BenchTarget, QueueBenchArgs};

const PARTITIONS: u32 = 4;
const FILL_BATCH: usize = 500;
const LATENCY_INTERVAL: Duration = Duration::from_millis(2);

/// Where the workloads run.
#[derive(Clone)]
enum Target {
    Embedded(Engine),
    Server(HttpClient),
}

impl Target {
    fn name(&self) -> &'static str {
        match self {
            Target::Embedded(_) => "embedded",
            Target::Server(_) => "server",
        }
    }

    async fn setup(&self, topic: &str, group: &str) -> anyhow::Result<()> {
        match self {
            Target::Embedded(engine) => {
                let config = TopicConfig {
                    partitions: PARTITIONS,
                    durability: DurabilityConfig::Fsync,
                    ..TopicConfig::default()
                };
                engine.create_topic(topic, config)?;
                let queue = QueueConfig {
                    topics: vec![topic.to_owned()],
                    max_in_flight: 100_000,
                    member_max_in_flight: 100_000,
                    ..QueueConfig::default()
                };
                engine.create_queue(group, queue)?;
            }
            Target::Server(client) => {
                let body = json!({"name": topic, "partitions": PARTITIONS});
                client.send(Method::POST, "/v1/topics", Bytes::from(body.to_string())).await?;
                let body = json!({"group": group, "topics": [topic],
                    "max_in_flight": 100_000, "member_max_in_flight": 100_000});
                client.send(Method::POST, "/v1/queues", Bytes::from(body.to_string())).await?;
            }
        }
        Ok(())
    }

    async fn teardown(&self, topic: &str, group: &str) -> anyhow::Result<()> {
        match self {
            Target::Embedded(engine) => {
                engine.delete_queue(group)?;
                engine.delete_topic(topic)?;
                engine.delete_topic(&format!("{topic}.dlq"))?;
            }
            Target::Server(client) => {
                client.send(Method::DELETE, &format!("/v1/queues/{group}"), Bytes::new()).await?;
                for name in [topic.to_owned(), format!("{topic}.dlq")] {
                    client
                        .send(Method::DELETE, &format!("/v1/topics/{name}"), Bytes::new())
                        .await?;
                }
            }
        }
        Ok(())
    }

    async fn produce(&self, topic: &str, values: &[String]) -> anyhow::Result<()> {
        match self {
            Target::Embedded(engine) => {
                let records = values
                    .iter()
                    .map(|value| ProduceRecord {
                        value: Some(value.clone().into_bytes()),
                        ..ProduceRecord::default()
                    })
                    .collect();
                engine.produce(topic, records).await?;
            }
            Target::Server(client) => {
                let records: Vec<Value> = values
                    .iter()
                    .map(|value| json!({"value": serde_json::from_str::<Value>(value).unwrap_or(Value::Null)}))
                    .collect();
                let body = json!({ "records": records }).to_string();
                client
                    .send(Method::POST, &format!("/v1/topics/{topic}/records"), Bytes::from(body))
                    .await?;
            }
        }
        Ok(())
    }

    /// Leases up to `max` messages and returns their delivery ids.
    async fn lease(
        &self,
        group: &str,
        member: &str,
        max: u32,
        wait: Duration,
    ) -> anyhow::Result<Vec<String>> {
        match self {
            Target::Embedded(engine) => Ok(engine
                .lease(group, member, max, wait)
                .await?
                .into_iter()
                .map(|delivery| delivery.id)
                .collect()),
            Target::Server(client) => {
                let path = format!(
                    "/v1/queues/{group}/messages?max={max}&wait_ms={}&member={member}",
                    wait.as_millis()
                );
                let answer: Value = client.call(Method::GET, &path, Bytes::new()).await?;
                let messages =
                    answer["messages"].as_array().context("no messages in a lease answer")?;
                Ok(messages
                    .iter()
                    .filter_map(|message| message["delivery_id"].as_str().map(str::to_owned))
                    .collect())
            }
        }
    }

    /// Acks `ids` and leases up to `max` more for `member` (no wait); returns the new ids.
    async fn ack_next(
        &self,
        group: &str,
        member: &str,
        ids: Vec<String>,
        max: u32,
    ) -> anyhow::Result<Vec<String>> {
        let count = ids.len();
        match self {
            Target::Embedded(engine) => {
                let items = ids.into_iter().map(|id| (id, Action::Ack)).collect();
                let (outcomes, next) =
                    engine.settle_and_lease(group, items, member, max, Duration::ZERO).await?;
                for outcome in outcomes {
                    outcome?;
                }
                Ok(next.into_iter().map(|delivery| delivery.id).collect())
            }
            Target::Server(client) => {
                let body = json!({ "ids": ids, "max": max, "member": member }).to_string();
                let path = format!("/v1/queues/{group}/ack-next");
                let answer: Value = client.call(Method::POST, &path, Bytes::from(body)).await?;
                let results =
                    answer["results"].as_array().context("no results in an ack-next answer")?;
                ensure!(
                    results.len() == count && results.iter().all(|result| result["ok"] == true),
                    "an ack was refused: {answer}"
                );
                let messages =
                    answer["messages"].as_array().context("no messages in an ack-next answer")?;
                Ok(messages
                    .iter()
                    .filter_map(|message| message["delivery_id"].as_str().map(str::to_owned))
                    .collect())
            }
        }
    }

    async fn ack(&self, group: &str, ids: Vec<String>) -> anyhow::Result<()> {
        match self {
            Target::Embedded(engine) => {
                let items = ids.into_iter().map(|id| (id, Action::Ack)).collect();
                for outcome in engine.settle(group, items).await? {
                    outcome?;
                }
            }
            Target::Server(client) => {
                let body = json!({ "ids": ids }).to_string();
                let answer: Value = client
                    .call(Method::POST, &format!("/v1/queues/{group}/ack"), Bytes::from(body))
                    .await?;
                let results =
                    answer["results"].as_array().context("no results in an ack answer")?;
                ensure!(
                    results.iter().all(|result| result["ok"] == true),
                    "an ack was refused: {answer}"
                );
            }
        }
        Ok(())
    }
}

/// One workload's numbers.
struct Measured {
    name: String,
    messages: u64,
    elapsed: Duration,
    latencies_ns: Vec<u64>,
}

/// Runs `sluice bench queue`.
///
/// # Errors
/// A server that cannot be started, and any failed call.
pub fn run(args: &QueueBenchArgs, server: Option<&str>) -> anyhow::Result<()> {
    let (root, _owned_root) = bench_root(args.dir.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sluice-bench")
        .build()
        .context("starting the async runtime")?;
    let mut targets = Vec::new();
    let _engine_dir;
    if args.target != BenchTarget::Server {
        let dir = ScratchDir::create(root.join("engine"))?;
        targets.push(Target::Embedded(Engine::open(dir.path())?));
        _engine_dir = Some(dir);
    }
    let mut _process = None;
    let _server_dir;
    if args.target != BenchTarget::Embedded {
        let base = match server {
            Some(base) => {
                _server_dir = None;
                base.to_owned()
            }
            None => {
                let dir = ScratchDir::create(root.join("server"))?;
                let process = ServerProcess::start(dir.path())?;
                let base = process.base().to_owned();
                _process = Some(process);
                _server_dir = Some(dir);
                base
            }
        };
        targets.push(Target::Server(HttpClient::new(&base)));
    }
    let value = format!(
        "\"{}\"",
        hex(&pseudo_random_bytes(args.record_bytes.saturating_sub(2) as usize / 2))
    );
    let mut results: Vec<Measured> = Vec::new();
    let mut sequence = 0u32;
    for round in 0..args.repeat {
        tracing::info!(round = round + 1, of = args.repeat, "round");
        results.push(disk_sync(&root)?);
        for target in &targets {
            for &workers in &args.concurrency {
                for next in [false, true] {
                    sequence += 1;
                    let names = (
                        format!("sluice-bench-{}-q{sequence}", std::process::id()),
                        format!("sluice-bench-{}-g{sequence}", std::process::id()),
                    );
                    let run = throughput(target, &names, workers, next, args, &value);
                    results.push(runtime.block_on(run)?);
                }
            }
            sequence += 1;
            let names = (
                format!("sluice-bench-{}-q{sequence}", std::process::id()),
                format!("sluice-bench-{}-g{sequence}", std::process::id()),
            );
            results.push(runtime.block_on(latency(target, &names, args, &value))?);
        }
    }
    report(&results, args);
    Ok(())
}

/// The raw disk's 4 KiB write+fdatasync, measured next to the workloads of each round: the floor
/// under every durable step (a produce→ack round trip is three of them).
fn disk_sync(root: &std::path::Path) -> anyhow::Result<Measured> {
    let dir = ScratchDir::create(root.join(format!("disk-{}", std::process::id())))?;
    let settings = super::Settings { batch_records: 1, record_bytes: 4096, total_bytes: 4 << 20 };
    let workload = super::workload::Workload {
        name: "disk-4k-fdatasync",
        kind: super::workload::Kind::DiskSyncLatency,
    };
    let measured = super::disk::sync_latency(workload, &settings, dir.path())?;
    Ok(Measured {
        name: "disk-4k-fdatasync".to_owned(),
        messages: measured.records,
        elapsed: measured.elapsed,
        latencies_ns: measured.latencies_ns,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

async fn throughput(
    target: &Target,
    (topic, group): &(String, String),
    workers: u32,
    next: bool,
    args: &QueueBenchArgs,
    value: &str,
) -> anyhow::Result<Measured> {
    target.setup(topic, group).await?;
    let values: Vec<String> = vec![value.to_owned(); FILL_BATCH];
    let mut filled = 0;
    while filled < args.messages {
        let count = (args.messages - filled).min(FILL_BATCH as u64) as usize;
        target.produce(topic, &values[..count]).await?;
        filled += count as u64;
    }
    let acked = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|index| {
            let (target, group, acked) = (target.clone(), group.clone(), Arc::clone(&acked));
            let (total, batch) = (args.messages, args.batch);
            tokio::spawn(async move {
                let member = format!("w{index}");
                let mut latencies = Vec::new();
                let mut held = Vec::new();
                while acked.load(Ordering::Relaxed) < total {
                    let round = Instant::now();
                    if held.is_empty() {
                        held =
                            target.lease(&group, &member, batch, Duration::from_millis(50)).await?;
                        if held.is_empty() {
                            continue;
                        }
                    }
                    let count = held.len() as u64;
                    let ids = std::mem::take(&mut held);
                    if next {
                        held = target.ack_next(&group, &member, ids, batch).await?;
                    } else {
                        target.ack(&group, ids).await?;
                    }
                    latencies.push(elapsed_ns(round));
                    acked.fetch_add(count, Ordering::Relaxed);
                }
                // Every message is acked, so an ack-next found nothing more to lease.
                ensure!(held.is_empty(), "{} messages leased past the total", held.len());
                Ok::<_, anyhow::Error>(latencies)
            })
        })
        .collect();
    let mut latencies_ns = Vec::new();
    for task in tasks {
        latencies_ns.extend(task.await.context("a worker panicked")??);
    }
    let elapsed = start.elapsed();
    target.teardown(topic, group).await?;
    latencies_ns.sort_unstable();
    Ok(Measured {
        name: format!("queue-{}-w{workers}{}", target.name(), if next { "-next" } else { "" }),
        messages: args.messages,
        elapsed,
        latencies_ns,
    })
}

async fn latency(
    target: &Target,
    (topic, group): &(String, String),
    args: &QueueBenchArgs,
    value: &str,
) -> anyhow::Result<Measured> {
    target.setup(topic, group).await?;
    let total = args.latency_messages;
    let sent: Arc<std::sync::Mutex<Vec<Instant>>> = Arc::new(std::sync::Mutex::new(Vec::new()));
    let consumer = {
        let (target, group, sent) = (target.clone(), group.clone(), Arc::clone(&sent));
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while (latencies.len() as u64) < total {
                let ids = target.lease(&group, "latency", 100, Duration::from_secs(1)).await?;
                if ids.is_empty() {
                    continue;
                }
                let count = ids.len();
                target.ack(&group, ids).await?;
                let done = Instant::now();
                let sent = sent.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                // Messages are acked in the order they were sent (one partition-free producer,
                // one consumer): the oldest unacked sends are these.
                for at in sent.iter().skip(latencies.len()).take(count) {
                    latencies.push(
                        u64::try_from(done.duration_since(*at).as_nanos()).unwrap_or(u64::MAX),
                    );
                }
            }
            Ok::<_, anyhow::Error>(latencies)
        })
    };
    let values = [value.to_owned()];
    let start = Instant::now();
    let mut next = Instant::now();
    for _ in 0..total {
        tokio::time::sleep_until(next.into()).await;
        sent.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push(Instant::now());
        target.produce(topic, &values).await?;
        next += LATENCY_INTERVAL;
    }
    let mut latencies_ns = consumer.await.context("the consumer panicked")??;
    let elapsed = start.elapsed();
    target.teardown(topic, group).await?;
    latencies_ns.sort_unstable();
    Ok(Measured {
        name: format!("queue-{}-latency", target.name()),
        messages: total,
        elapsed,
        latencies_ns,
    })
}

fn report(results: &[Measured], args: &QueueBenchArgs) {
    // The median round per workload, by throughput.
    let mut names: Vec<&str> = results.iter().map(|m| m.name.as_str()).collect();
    names.dedup();
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|name| seen.insert(*name));
    if !args.json {
        println!(
            "sluice bench queue: {} messages of {} bytes per throughput workload, lease batch {}, \
             {} rounds (median shown); latency: {} messages at 500/s",
            args.messages, args.record_bytes, args.batch, args.repeat, args.latency_messages
        );
        println!(
            "{:<24} {:>12} {:>10} {:>12} {:>12}",
            "workload", "messages/s", "MB/s", "p50", "p99"
        );
    }
    for name in names {
        let mut rounds: Vec<&Measured> = results.iter().filter(|m| m.name == name).collect();
        rounds.sort_by(|a, b| rate(a).total_cmp(&rate(b)));
        let median = rounds[rounds.len() / 2];
        let p50 = percentile(&median.latencies_ns, 50);
        let p99 = percentile(&median.latencies_ns, 99);
        let megabytes = rate(median) * f64::from(args.record_bytes) / 1e6;
        if args.json {
            let line = json!({"workload": name, "messages": median.messages, "seconds": median.elapsed.as_secs_f64(),
                "messages_per_second": rate(median), "mb_per_second": megabytes, "p50_ns": p50, "p99_ns": p99});
            println!("{line}");
        } else {
            println!(
                "{name:<24} {:>12.0} {megabytes:>10.1} {:>12} {:>12}",
                rate(median),
                format_ns(p50),
                format_ns(p99)
            );
        }
    }
}

fn rate(measured: &Measured) -> f64 {
    measured.messages as f64 / measured.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
}

fn format_ns(ns: u64) -> String {
    if ns >= 1_000_000 {
        format!("{:.2} ms", ns as f64 / 1e6)
    } else {
        format!("{:.0} µs", ns as f64 / 1e3)
    }
}
