//! NATS JetStream (async-nats): file-storage streams, a durable pull consumer with explicit acks
//! acknowledged by the server ("double ack"), and publishes that wait for their PubAck.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::stream::{self, StorageType};
use async_nats::jetstream::{self, Context as JetStream};
use bytes::Bytes;
use futures_util::future::join_all;
use futures_util::StreamExt;
use hyper::Method;

use crate::http::Http;
use crate::{elapsed_ns, payload, retry, Budget, MeasureArgs, Sample};

const FILL_WINDOW: u64 = 500;
const CONSUMER: &str = "workers";

async fn connect(url: &str) -> anyhow::Result<JetStream> {
    Ok(jetstream::new(async_nats::connect(url).await?))
}

pub async fn run(args: &MeasureArgs) -> anyhow::Result<Vec<Sample>> {
    let sync_always = match args.nats_sync.as_str() {
        "always" => true,
        "default" => false,
        other => bail!("--nats-sync is `default` or `always`, not `{other}`"),
    };
    let js = retry("NATS", || connect(&args.url)).await?;
    // What the server says it runs with, so a label can never claim a setting it does not have.
    if let Some(monitor) = &args.monitor {
        let varz = Http::new(monitor).call(Method::GET, "/varz", None).await?;
        let reported = varz["jetstream"]["config"]["sync_always"].as_bool().unwrap_or(false);
        ensure!(
            reported == sync_always,
            "the server reports sync_always={reported}, but --nats-sync is {}",
            args.nats_sync
        );
    }
    let sync = if sync_always { "sync_interval always" } else { "default sync (2 min)" };
    let payload = Bytes::from(payload(args.payload));
    let mut samples = Vec::new();
    for &workers in args.workers.iter().filter(|_| args.runs("queue")) {
        samples.push(queue(&js, args, workers, &payload, sync).await?);
    }
    for &in_flight in args.in_flight.iter().filter(|_| args.runs("publish")) {
        samples.push(publish(&js, args, in_flight, &payload, sync, sync_always).await?);
    }
    if args.runs("consume") {
        samples.push(consume(&js, args, &payload, sync).await?);
    }
    if args.runs("latency") {
        samples.push(latency(&js, args, sync, sync_always).await?);
    }
    for &in_flight in args.append_in_flight.iter().filter(|_| args.runs("append")) {
        samples.push(append(&js, args, in_flight, &payload, sync, sync_always).await?);
    }
    Ok(samples)
}

/// Conditional appends: one subject per stream (`<name>.stream-N`) in one file stream, each
/// publish carrying `Nats-Expected-Last-Subject-Sequence` (0 for a subject's first message),
/// which the server checks before storing. `in_flight` writers own shares of the streams and
/// track each subject's last sequence from the PubAcks, so no publish conflicts. NATS has no
/// atomic multi-message publish on this path, so there is no `append-b100` row for it.
async fn append(
    js: &JetStream,
    args: &MeasureArgs,
    in_flight: usize,
    payload: &Bytes,
    sync: &str,
    durable: bool,
) -> anyhow::Result<Sample> {
    let name = format!("append-c{in_flight}");
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![format!("{name}.>")],
        storage: StorageType::File,
        ..stream::Config::default()
    })
    .await?;
    let budget = Budget::new(args.messages, args.deadline());
    let start = Instant::now();
    let latencies_ns = crate::run_clients((0..in_flight).map(|index| {
        let (js, name, budget, payload) =
            (js.clone(), name.clone(), budget.clone(), payload.clone());
        let mut plan = crate::append_plan(index, in_flight, args.append_streams);
        let mut last_sequence = std::collections::HashMap::<String, u64>::new();
        async move {
            let mut latencies = Vec::new();
            while budget.claim() {
                let (stream, _) = plan.next(1);
                let expected = last_sequence.get(&stream).copied().unwrap_or(0);
                let message = async_nats::jetstream::message::PublishMessage::build()
                    .payload(payload.clone())
                    .expected_last_subject_sequence(expected);
                let sent = Instant::now();
                let ack = js.send_publish(format!("{name}.{stream}"), message).await?.await?;
                latencies.push(elapsed_ns(sent));
                last_sequence.insert(stream, ack.sequence);
                budget.complete(1);
            }
            Ok::<_, anyhow::Error>(latencies)
        }
    }))
    .await?;
    let elapsed = budget.elapsed(start);
    js.delete_stream(&name).await?;
    Ok(Sample {
        workload: format!("append-c{in_flight}"),
        setting: format!("file, {sync}; expected last subject sequence"),
        durable: if durable { "yes" } else { "no" },
        messages: budget.done(),
        elapsed,
        latencies_ns,
        latency_of: "one conditional publish -> PubAck",
    }
    .finish())
}

/// Publishes `messages` copies of `payload` to `name`, `FILL_WINDOW` PubAcks in flight at a time.
async fn fill(js: &JetStream, name: &str, messages: u64, payload: &Bytes) -> anyhow::Result<()> {
    let mut filled = 0;
    while filled < messages {
        let count = (messages - filled).min(FILL_WINDOW);
        let mut acks = Vec::new();
        for _ in 0..count {
            acks.push(js.publish(name.to_owned(), payload.clone()).await?);
        }
        for ack in acks {
            ack.await?;
        }
        filled += count;
    }
    Ok(())
}

async fn create_stream(js: &JetStream, name: &str) -> anyhow::Result<()> {
    js.create_stream(stream::Config {
        name: name.to_owned(),
        subjects: vec![name.to_owned()],
        storage: StorageType::File,
        ..stream::Config::default()
    })
    .await?;
    Ok(())
}

async fn queue(
    js: &JetStream,
    args: &MeasureArgs,
    workers: usize,
    payload: &Bytes,
    sync: &str,
) -> anyhow::Result<Sample> {
    let name = format!("queue-w{workers}");
    create_stream(js, &name).await?;
    fill(js, &name, args.messages, payload).await?;
    js.get_stream(&name)
        .await?
        .create_consumer(pull::Config {
            durable_name: Some(CONSUMER.to_owned()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 10_000,
            ..pull::Config::default()
        })
        .await?;

    let budget = Budget::new(args.messages, args.deadline());
    let batch = args.batch;
    let start = Instant::now();
    let latencies_ns = crate::run_clients((0..workers).map(|_| {
        let (url, name, budget) = (args.url.clone(), name.clone(), budget.clone());
        async move {
            // One connection per worker, as each Sluice worker has its own HTTP connection.
            let js = connect(&url).await?;
            let consumer: PullConsumer = js
                .get_stream(&name)
                .await?
                .get_consumer(CONSUMER)
                .await
                .map_err(|e| anyhow::anyhow!("get_consumer: {e}"))?;
            let mut latencies = Vec::new();
            while !budget.over() {
                let round = Instant::now();
                // `fetch` answers at once with what is there (up to `batch`).
                let mut fetched = consumer.fetch().max_messages(batch).messages().await?;
                let mut messages = Vec::new();
                while let Some(message) = fetched.next().await {
                    messages.push(message.map_err(|e| anyhow::anyhow!("fetch: {e}"))?);
                }
                if messages.is_empty() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                // Every ack awaited (the server answers each), all of a batch at once.
                for acked in join_all(messages.iter().map(|m| m.double_ack())).await {
                    acked.map_err(|e| anyhow::anyhow!("double_ack: {e}"))?;
                }
                latencies.push(elapsed_ns(round));
                budget.complete(messages.len() as u64);
            }
            Ok::<_, anyhow::Error>(latencies)
        }
    }))
    .await?;
    let elapsed = budget.elapsed(start);
    js.delete_stream(&name).await?;
    Ok(Sample {
        workload: format!("queue-w{workers}"),
        setting: format!("file, {sync}; pull {batch}, double_ack each"),
        // The server answers a double ack before the consumer's state reaches the disk, even
        // under `sync_interval: always`, which syncs stream writes only (README.md: strace
        // counted no fsync of the consumer's files for 2,000 acks on nats-server 2.15.1).
        durable: "no",
        messages: budget.done(),
        elapsed,
        latencies_ns,
        latency_of: "one fetch + acks round trip (up to 100 messages)",
    }
    .finish())
}

async fn publish(
    js: &JetStream,
    args: &MeasureArgs,
    in_flight: usize,
    payload: &Bytes,
    sync: &str,
    durable: bool,
) -> anyhow::Result<Sample> {
    let name = format!("publish-c{in_flight}");
    create_stream(js, &name).await?;
    let budget = Budget::new(args.messages, args.deadline());
    let start = Instant::now();
    let (client, subject, body) = (js.clone(), name.clone(), payload.clone());
    let latencies_ns = crate::closed_loop(in_flight, &budget, move || {
        let (js, subject, body) = (client.clone(), subject.clone(), body.clone());
        async move {
            js.publish(subject, body).await?.await?;
            Ok(())
        }
    })
    .await?;
    let elapsed = budget.elapsed(start);
    js.delete_stream(&name).await?;
    Ok(Sample {
        workload: format!("publish-c{in_flight}"),
        setting: format!("file, {sync}; publish, await PubAck"),
        durable: if durable { "yes" } else { "no" },
        messages: budget.done(),
        elapsed,
        latencies_ns,
        latency_of: "one publish -> PubAck",
    }
    .finish())
}

/// Publish->consume latency at 1,000 messages per second: publishes (each awaiting its PubAck)
/// to a file stream, consumed by an ordered push consumer (no acks), the lowest-latency way
/// JetStream delivers.
async fn latency(
    js: &JetStream,
    args: &MeasureArgs,
    sync: &str,
    durable: bool,
) -> anyhow::Result<Sample> {
    let name = "latency-1000".to_owned();
    create_stream(js, &name).await?;
    let stream = js.get_stream(&name).await?;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::push::OrderedConfig {
            deliver_subject: format!("_deliver.{name}"),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let clocked = crate::Clocked::new(args.latency_messages);
    let receiver = {
        let clocked = clocked.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while (latencies.len() as u64) < clocked.messages() {
                let message = messages.next().await.context("the consumer ended")??;
                let seq = crate::Clocked::seq(&message.payload).context("no sequence number")?;
                latencies.push(clocked.latency(seq).context("consumed before it was sent")?);
            }
            Ok::<_, anyhow::Error>(latencies)
        })
    };
    let payload_len = args.payload;
    clocked
        .publish_paced(|seq| {
            let (js, name) = (js.clone(), name.clone());
            let payload = Bytes::from(crate::Clocked::payload(seq, payload_len));
            async move {
                js.publish(name, payload).await?.await?;
                Ok(())
            }
        })
        .await?;
    let latencies_ns = receiver.await.context("the consumer panicked")??;
    js.delete_stream(&name).await?;
    let setting = format!("file, {sync}; publish + PubAck, ordered push consumer");
    Ok(crate::latency_sample(setting, if durable { "yes" } else { "no" }, &clocked, latencies_ns))
}

/// Stream-consumer throughput: a file stream filled (untimed) with `--messages` messages, then
/// read from the start by an ordered push consumer (no acks), JetStream's way to replay a
/// stream.
async fn consume(
    js: &JetStream,
    args: &MeasureArgs,
    payload: &Bytes,
    sync: &str,
) -> anyhow::Result<Sample> {
    let name = "consume".to_owned();
    create_stream(js, &name).await?;
    fill(js, &name, args.messages, payload).await?;
    let stream = js.get_stream(&name).await?;
    let deadline = args.deadline();
    let start = Instant::now();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::push::OrderedConfig {
            deliver_subject: format!("_deliver.{name}"),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut received = 0u64;
    while received < args.messages && Instant::now() < deadline {
        let message = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .context("no message for 5 s")?
            .context("the consumer ended")??;
        ensure!(message.payload.len() == payload.len(), "a message of another size");
        received += 1;
    }
    let elapsed = start.elapsed();
    drop(messages);
    js.delete_stream(&name).await?;
    Ok(Sample {
        workload: "consume".to_owned(),
        setting: format!("file, {sync}; ordered push consumer from the start"),
        durable: "-",
        messages: received,
        elapsed,
        latencies_ns: Vec::new(),
        latency_of: "-",
    }
    .finish())
}
