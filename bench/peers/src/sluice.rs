//! Sluice over its HTTP API: queue groups (lease + ack) and one-record produce requests, on a
//! plain pooled HTTP/1.1 client (`crate::http`).

use std::time::Instant;

use anyhow::{ensure, Context};
use hyper::Method;
use serde_json::{json, Value};

use crate::http::Http;
use crate::{elapsed_ns, payload, retry, Budget, MeasureArgs, Sample};

const QUEUE_PARTITIONS: u32 = 4;
const FILL_BATCH: usize = 500;
/// Partitions of the conditional-append topics: a topic's default, one, as the peers append to
/// one stream (NATS) or one write-ahead log (PostgreSQL). Every append to a partition shares its
/// group commits; with 4 partitions each paid its own fdatasync and the gathered `append-c64`
/// measured 74-75k/s against 97-105k/s with one (`docs/benchmarks.md`, session 16).
const APPEND_PARTITIONS: u32 = 1;

pub async fn run(args: &MeasureArgs) -> anyhow::Result<Vec<Sample>> {
    let http = Http::new(&args.url);
    retry("Sluice", || async { http.call(Method::GET, "/v1/topics", None).await }).await?;
    // The value is a JSON string: `"` + hex + `"`, exactly `payload` bytes as stored.
    let value = String::from_utf8(payload(args.payload.saturating_sub(2)))?;
    ensure!(
        args.kafka.is_some() || !args.runs("publish-kafka"),
        "--workloads publish-kafka needs --kafka (Sluice's Kafka listener)"
    );
    let mut samples = Vec::new();
    for &workers in args.workers.iter().filter(|_| args.runs("queue")) {
        samples.push(queue(&http, args, workers, &value, QueueLoop::LeaseThenAck).await?);
        samples.push(queue(&http, args, workers, &value, QueueLoop::AckNext).await?);
    }
    for &in_flight in &args.in_flight {
        if args.runs("publish") {
            samples.push(publish(&http, args, in_flight, &value).await?);
        }
        if let Some(kafka) = args.kafka.as_ref().filter(|_| args.runs_kafka_publish()) {
            samples.push(publish_kafka(&http, kafka, args, in_flight).await?);
        }
    }
    if args.runs("consume") {
        samples.push(consume(&http, args, &value).await?);
    }
    if args.runs("latency") {
        samples.push(latency(&http, args).await?);
        if let Some(kafka) = &args.kafka {
            samples.push(latency_kafka(&http, kafka, args).await?);
        }
    }
    if args.runs("append") {
        for &in_flight in &args.append_in_flight {
            samples.push(append(&http, args, in_flight, 1, &value).await?);
            if in_flight > 1 {
                samples.push(append_gathered(&http, args, in_flight, &value).await?);
            }
        }
        samples.push(append(&http, args, args.batch_writers, 100, &value).await?);
    }
    Ok(samples)
}

/// Conditional appends: `writers` concurrent writers, each owning a share of the streams,
/// append `per_append` events per request at exact expected versions (the first to a stream with
/// `no_stream`) until the budget of events is spent. Every append is answered after an fsync.
async fn append(
    http: &Http,
    args: &MeasureArgs,
    writers: usize,
    per_append: usize,
    value: &str,
) -> anyhow::Result<Sample> {
    let workload = if per_append == 1 {
        format!("append-c{writers}")
    } else {
        format!("append-b{per_append}")
    };
    let topic = workload.clone();
    create_append_topic(http, &topic).await?;
    let event = json!({"type": "Posted", "data": value});
    let budget = Budget::new(args.messages, args.deadline());
    let start = Instant::now();
    let latencies_ns = crate::run_clients((0..writers).map(|index| {
        let (http, budget, event, topic) =
            (http.clone(), budget.clone(), event.clone(), topic.clone());
        let mut plan = crate::append_plan(index, writers, args.append_streams);
        async move {
            let mut latencies = Vec::new();
            while budget.claim_many(per_append as u64) {
                let (stream, first) = plan.next(per_append as u64);
                let expected = match first.checked_sub(1) {
                    Some(version) => json!(version),
                    None => json!("no_stream"),
                };
                let events: Vec<Value> = (0..per_append).map(|_| event.clone()).collect();
                let body = json!({"expected_version": expected, "events": events});
                let sent = Instant::now();
                let path = format!("/v1/streams/{topic}/{stream}");
                let answer = http.call(Method::POST, &path, Some(&body)).await?;
                let version = first + per_append as u64 - 1;
                ensure!(answer["version"] == json!(version), "append answered {answer}");
                latencies.push(elapsed_ns(sent));
                budget.complete(per_append as u64);
            }
            Ok::<_, anyhow::Error>(latencies)
        }
    }))
    .await?;
    let elapsed = budget.elapsed(start);
    http.call(Method::DELETE, &format!("/v1/topics/{topic}"), None).await?;
    let setting = format!("{writers} in flight, {per_append} event(s) per append");
    Ok(append_sample(workload, &setting, &budget, elapsed, latencies_ns))
}

/// Creates an append workload's topic: [`APPEND_PARTITIONS`] partitions, retention off.
async fn create_append_topic(http: &Http, topic: &str) -> anyhow::Result<()> {
    let body = json!({"name": topic, "partitions": APPEND_PARTITIONS, "retention_age_ms": null});
    http.call(Method::POST, "/v1/topics", Some(&body)).await?;
    Ok(())
}

/// The sample of an append workload whose writers spent `budget`.
fn append_sample(
    workload: String,
    setting: &str,
    budget: &Budget,
    elapsed: std::time::Duration,
    latencies_ns: Vec<u64>,
) -> Sample {
    Sample {
        workload,
        setting: format!(
            "{APPEND_PARTITIONS} partition{}, fsync; {setting}",
            if APPEND_PARTITIONS == 1 { "" } else { "s" }
        ),
        durable: "yes",
        messages: budget.done(),
        elapsed,
        latencies_ns,
        latency_of: "one append (expected version checked) -> ack",
    }
    .finish()
}

/// `append-c<N>` with the same `writers` concurrent writers, each awaiting its own append with
/// an exact expected version, but through the Rust client's `StreamAppender`, which gathers
/// them into `POST /v1/streams/{topic}` requests as a Kafka producer gathers records: whatever
/// is waiting goes in the next request (no linger), up to 5 requests in flight.
async fn append_gathered(
    http: &Http,
    args: &MeasureArgs,
    writers: usize,
    value: &str,
) -> anyhow::Result<Sample> {
    let workload = format!("append-c{writers}");
    let topic = format!("{workload}-gathered");
    create_append_topic(http, &topic).await?;
    let client = sluice_client::Client::new(&args.url);
    let options = sluice_client::AppenderOptions::default();
    let appender = client.stream_appender(&topic, options);
    let budget = Budget::new(args.messages, args.deadline());
    let start = Instant::now();
    let latencies_ns = crate::run_clients((0..writers).map(|index| {
        let (appender, budget, value) = (appender.clone(), budget.clone(), value.to_owned());
        let mut plan = crate::append_plan(index, writers, args.append_streams);
        async move {
            let mut latencies = Vec::new();
            while budget.claim_many(1) {
                let (stream, first) = plan.next(1);
                let expected = sluice_client::ExpectedVersion::from_version(first.checked_sub(1));
                let event = sluice_client::EventData::json("Posted", &value)?;
                let sent = Instant::now();
                let appended = appender.append(&stream, expected, &[event]).await?;
                ensure!(appended.version == Some(first), "append answered {appended:?}");
                latencies.push(elapsed_ns(sent));
                budget.complete(1);
            }
            Ok::<_, anyhow::Error>(latencies)
        }
    }))
    .await?;
    let elapsed = budget.elapsed(start);
    drop(appender);
    http.call(Method::DELETE, &format!("/v1/topics/{topic}"), None).await?;
    let setting = format!("{writers} in flight, gathered by the Rust client");
    Ok(append_sample(workload, &setting, &budget, elapsed, latencies_ns))
}

/// How a queue worker takes and settles its messages.
#[derive(Clone, Copy, PartialEq)]
enum QueueLoop {
    /// `GET .../messages?max=` then `POST .../ack` with every id: two round trips per batch.
    LeaseThenAck,
    /// `POST .../ack-next` with the previous batch's ids, answered with the next batch: one
    /// round trip per batch (NATS's "ack next").
    AckNext,
}

async fn queue(
    http: &Http,
    args: &MeasureArgs,
    workers: usize,
    value: &str,
    mode: QueueLoop,
) -> anyhow::Result<Sample> {
    let (topic, group) = (format!("queue-w{workers}"), format!("group-w{workers}"));
    let body = json!({"name": topic, "partitions": QUEUE_PARTITIONS});
    http.call(Method::POST, "/v1/topics", Some(&body)).await?;
    let body = json!({"group": group, "topics": [topic],
        "max_in_flight": 10_000, "member_max_in_flight": 10_000});
    http.call(Method::POST, "/v1/queues", Some(&body)).await?;
    fill(http, &topic, value, args.messages).await?;

    let budget = Budget::new(args.messages, args.deadline());
    let start = Instant::now();
    let latencies_ns = crate::run_clients((0..workers).map(|index| {
        let (http, group, budget, batch) =
            (http.clone(), group.clone(), budget.clone(), args.batch);
        async move {
            if mode == QueueLoop::AckNext {
                return ack_next_worker(&http, &group, index, batch, &budget).await;
            }
            let lease =
                format!("/v1/queues/{group}/messages?max={batch}&wait_ms=50&member=w{index}");
            let ack = format!("/v1/queues/{group}/ack");
            let mut latencies = Vec::new();
            while !budget.over() {
                let round = Instant::now();
                let answer = http.call(Method::GET, &lease, None).await?;
                let ids: Vec<&str> = answer["messages"]
                    .as_array()
                    .context("no messages in a lease answer")?
                    .iter()
                    .filter_map(|message| message["delivery_id"].as_str())
                    .collect();
                if ids.is_empty() {
                    continue;
                }
                let answer = http.call(Method::POST, &ack, Some(&json!({ "ids": ids }))).await?;
                let results = answer["results"].as_array().context("no ack results")?;
                ensure!(results.len() == ids.len(), "{} ids, {} results", ids.len(), results.len());
                ensure!(results.iter().all(|r| r["ok"] == true), "an ack was refused: {answer}");
                latencies.push(elapsed_ns(round));
                budget.complete(ids.len() as u64);
            }
            Ok::<_, anyhow::Error>(latencies)
        }
    }))
    .await?;
    let elapsed = budget.elapsed(start);
    http.call(Method::DELETE, &format!("/v1/queues/{group}"), None).await?;
    for name in [topic.clone(), format!("{topic}.dlq")] {
        http.call(Method::DELETE, &format!("/v1/topics/{name}"), None).await?;
    }
    Ok(Sample {
        workload: format!("queue-w{workers}"),
        setting: match mode {
            QueueLoop::LeaseThenAck => {
                format!("{QUEUE_PARTITIONS} partitions, fsync; lease {}, 1 ack request", args.batch)
            }
            QueueLoop::AckNext => {
                format!(
                    "{QUEUE_PARTITIONS} partitions, fsync; ack-next {} (ack + lease)",
                    args.batch
                )
            }
        },
        durable: "yes",
        messages: budget.done(),
        elapsed,
        latencies_ns,
        latency_of: match mode {
            QueueLoop::LeaseThenAck => "one lease + ack round trip (up to 100 messages)",
            QueueLoop::AckNext => "one ack-next round trip (up to 100 messages)",
        },
    }
    .finish())
}

/// One worker of the ack-next loop: each request acknowledges the previous answer's messages
/// and leases the next ones; messages count once their ack is answered.
async fn ack_next_worker(
    http: &Http,
    group: &str,
    index: usize,
    batch: usize,
    budget: &Budget,
) -> anyhow::Result<Vec<u64>> {
    let path = format!("/v1/queues/{group}/ack-next");
    let mut latencies = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    let ack = format!("/v1/queues/{group}/ack");
    loop {
        let over = budget.over();
        if over && ids.is_empty() {
            return Ok(latencies);
        }
        let round = Instant::now();
        let answer = if over {
            // The run is over: settle what is held without leasing more.
            http.call(Method::POST, &ack, Some(&json!({ "ids": ids }))).await?
        } else {
            // Acks are answered at once; only a worker with nothing to ack waits for messages.
            let wait_ms = if ids.is_empty() { 50 } else { 0 };
            let body = json!({"ids": ids, "max": batch, "wait_ms": wait_ms,
                "member": format!("w{index}")});
            http.call(Method::POST, &path, Some(&body)).await?
        };
        let results = answer["results"].as_array().context("no ack results")?;
        ensure!(results.len() == ids.len(), "{} ids, {} results", ids.len(), results.len());
        ensure!(results.iter().all(|r| r["ok"] == true), "an ack was refused: {answer}");
        if !ids.is_empty() {
            latencies.push(elapsed_ns(round));
            budget.complete(ids.len() as u64);
        }
        if over {
            return Ok(latencies);
        }
        ids = answer["messages"]
            .as_array()
            .context("no messages in an ack-next answer")?
            .iter()
            .filter_map(|message| message["delivery_id"].as_str().map(str::to_owned))
            .collect();
    }
}

async fn publish(
    http: &Http,
    args: &MeasureArgs,
    in_flight: usize,
    value: &str,
) -> anyhow::Result<Sample> {
    let topic = format!("publish-c{in_flight}");
    http.call(Method::POST, "/v1/topics", Some(&json!({"name": topic, "partitions": 1}))).await?;
    let body = json!({"records": [{ "value": value }]});
    let budget = Budget::new(args.messages, args.deadline());
    let start = Instant::now();
    let (client, path) = (http.clone(), format!("/v1/topics/{topic}/records"));
    let latencies_ns = crate::closed_loop(in_flight, &budget, move || {
        let (http, path, body) = (client.clone(), path.clone(), body.clone());
        async move { http.call(Method::POST, &path, Some(&body)).await.map(drop) }
    })
    .await?;
    publish_sample(
        http,
        &topic,
        in_flight,
        "HTTP, 1 record per request",
        &budget,
        start,
        latencies_ns,
    )
    .await
}

/// Deletes a publish workload's topic and reports its run (`door`: how records went in).
async fn publish_sample(
    http: &Http,
    topic: &str,
    in_flight: usize,
    door: &str,
    budget: &Budget,
    start: Instant,
    latencies_ns: Vec<u64>,
) -> anyhow::Result<Sample> {
    let elapsed = budget.elapsed(start);
    http.call(Method::DELETE, &format!("/v1/topics/{topic}"), None).await?;
    Ok(Sample {
        workload: format!("publish-c{in_flight}"),
        setting: format!("1 partition, fsync; {door}"),
        durable: "yes",
        messages: budget.done(),
        elapsed,
        latencies_ns,
        latency_of: "one publish -> ack",
    }
    .finish())
}

/// Durable publishes through the Kafka door: `in_flight` tasks each send one record and await
/// its acknowledgement (after fsync), through one producer connection that batches what is
/// pending, as NATS's and RabbitMQ's publishers share one connection.
async fn publish_kafka(
    http: &Http,
    address: &str,
    args: &MeasureArgs,
    in_flight: usize,
) -> anyhow::Result<Sample> {
    let topic = format!("publish-kafka-c{in_flight}");
    http.call(Method::POST, "/v1/topics", Some(&json!({"name": topic, "partitions": 1}))).await?;
    let producer = crate::kafka::Producer::connect(address, &topic, 0).await?;
    let value = bytes::Bytes::from(payload(args.payload));
    let budget = Budget::new(args.messages, args.deadline());
    let start = Instant::now();
    let latencies_ns = crate::closed_loop(in_flight, &budget, move || {
        let (producer, value) = (producer.clone(), value.clone());
        async move { producer.send(value).await.map(drop) }
    })
    .await?;
    publish_sample(
        http,
        &topic,
        in_flight,
        "Kafka protocol, pending records batched",
        &budget,
        start,
        latencies_ns,
    )
    .await
}

/// Publish->consume latency at 1,000 messages per second through the Kafka door: the batching
/// producer (here one record per request, at this rate) and a consumer long-polling Fetch on
/// its own connection. Records become visible to fetches once synced, so every consumed record
/// was durable.
async fn latency_kafka(http: &Http, address: &str, args: &MeasureArgs) -> anyhow::Result<Sample> {
    let topic = "latency-kafka-1000";
    http.call(Method::POST, "/v1/topics", Some(&json!({"name": topic, "partitions": 1}))).await?;
    let producer = crate::kafka::Producer::connect(address, topic, 0).await?;
    let mut consumer = crate::kafka::Consumer::connect(address, topic, 0).await?;
    let clocked = crate::Clocked::new(args.latency_messages);
    let reader = {
        let clocked = clocked.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut offset = 0i64;
            while (offset as u64) < clocked.messages() {
                for (at, value) in consumer.fetch(offset).await? {
                    let seq = crate::Clocked::seq(&value).context("a value without a sequence")?;
                    latencies.push(clocked.latency(seq).context("consumed before it was sent")?);
                    offset = at + 1;
                }
            }
            Ok::<_, anyhow::Error>(latencies)
        })
    };
    let payload_len = args.payload;
    clocked
        .publish_paced(|seq| {
            let (producer, value) = (producer.clone(), crate::Clocked::payload(seq, payload_len));
            async move { producer.send(bytes::Bytes::from(value)).await.map(drop) }
        })
        .await?;
    let latencies_ns = reader.await??;
    http.call(Method::DELETE, &format!("/v1/topics/{topic}"), None).await?;
    let setting = "1 partition, fsync; Kafka protocol produce, long-poll Fetch".to_owned();
    Ok(crate::latency_sample(setting, "yes", &clocked, latencies_ns))
}

/// Publish->consume latency at 1,000 messages per second: one record per produce request to a
/// topic of 1 partition (`fsync`), and one consumer long-polling the partition
/// (`wait_ms=1000`). A fetch answers as soon as the high watermark moves, which under `fsync`
/// is after the record is synced, so every consumed record was durable.
async fn latency(http: &Http, args: &MeasureArgs) -> anyhow::Result<Sample> {
    let topic = "latency-1000";
    http.call(Method::POST, "/v1/topics", Some(&json!({"name": topic, "partitions": 1}))).await?;
    let clocked = crate::Clocked::new(args.latency_messages);
    let consumer = {
        let (http, clocked) = (http.clone(), clocked.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut offset = 0u64;
            while offset < clocked.messages() {
                let path =
                    format!("/v1/topics/{topic}/partitions/0/records?offset={offset}&wait_ms=1000");
                let answer = http.call(Method::GET, &path, None).await?;
                let records = answer["records"].as_array().context("no records in a fetch")?;
                for record in records {
                    let value = record["value"].as_str().context("a value that is not a string")?;
                    let seq = crate::Clocked::seq(format!("\"{value}\"").as_bytes())
                        .context("a value without a sequence number")?;
                    latencies.push(clocked.latency(seq).context("consumed before it was sent")?);
                    offset = record["offset"].as_u64().context("no offset")? + 1;
                }
            }
            Ok::<_, anyhow::Error>(latencies)
        })
    };
    let payload_len = args.payload;
    clocked
        .publish_paced(|seq| {
            let http = http.clone();
            let value = String::from_utf8_lossy(&crate::Clocked::payload(seq, payload_len))
                .trim_matches('"')
                .to_owned();
            async move {
                let body = json!({"records": [{ "value": value }]});
                http.call(Method::POST, &format!("/v1/topics/{topic}/records"), Some(&body))
                    .await
                    .map(drop)
            }
        })
        .await?;
    let latencies_ns = consumer.await??;
    http.call(Method::DELETE, &format!("/v1/topics/{topic}"), None).await?;
    let setting = "1 partition, fsync; produce 1 record per request, long-poll fetch".to_owned();
    Ok(crate::latency_sample(setting, "yes", &clocked, latencies_ns))
}

/// Produces `messages` records of `value` to `topic`, [`FILL_BATCH`] per request (untimed setup
/// of a workload).
async fn fill(http: &Http, topic: &str, value: &str, messages: u64) -> anyhow::Result<()> {
    let path = format!("/v1/topics/{topic}/records");
    let mut filled = 0;
    while filled < messages {
        let count = (messages - filled).min(FILL_BATCH as u64);
        let records: Vec<Value> = (0..count).map(|_| json!({ "value": value })).collect();
        http.call(Method::POST, &path, Some(&json!({ "records": records }))).await?;
        filled += count;
    }
    Ok(())
}

/// Stream-consumer throughput: a topic of 1 partition filled (untimed) with `--messages`
/// records, then read from offset 0 to the end by one reader with plain partition fetches of up
/// to 1 MiB (non-destructive, like a Kafka consumer; no group, so no commits).
async fn consume(http: &Http, args: &MeasureArgs, value: &str) -> anyhow::Result<Sample> {
    let topic = "consume";
    http.call(Method::POST, "/v1/topics", Some(&json!({"name": topic, "partitions": 1}))).await?;
    fill(http, topic, value, args.messages).await?;
    let deadline = args.deadline();
    let start = Instant::now();
    let (mut offset, mut latencies_ns) = (0u64, Vec::new());
    while offset < args.messages && Instant::now() < deadline {
        let path = format!(
            "/v1/topics/{topic}/partitions/0/records?offset={offset}&max_records=10000&max_bytes=1048576"
        );
        let sent = Instant::now();
        let answer = http.call(Method::GET, &path, None).await?;
        latencies_ns.push(elapsed_ns(sent));
        let records = answer["records"].as_array().context("no records in a fetch")?;
        let last = records.last().context("an empty fetch before the end")?;
        offset = last["offset"].as_u64().context("no offset")? + 1;
    }
    let elapsed = start.elapsed();
    http.call(Method::DELETE, &format!("/v1/topics/{topic}"), None).await?;
    Ok(Sample {
        workload: "consume".to_owned(),
        setting: "1 partition; partition fetches of up to 1 MiB".to_owned(),
        durable: "-",
        messages: offset,
        elapsed,
        latencies_ns,
        latency_of: "one fetch (up to 1 MiB)",
    }
    .finish())
}
