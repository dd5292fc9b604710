//! RabbitMQ quorum queues over AMQP 0-9-1 (lapin): consumers with a prefetch window that ack
//! every message (or every 100th with `multiple`), and publishers that wait for confirms.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use crate::{elapsed_ns, payload, retry, Budget, MeasureArgs, Sample};

const FILL_WINDOW: u64 = 500;
/// How long a consumer waits for a delivery before it checks whether the run is over (and, with
/// `multiple` acks, acks what it holds).
const IDLE: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ack {
    /// `basic.ack` of each delivery on its own.
    Each,
    /// `basic.ack` with `multiple=true` once a worker holds a full batch.
    Multiple,
}

async fn connect(url: &str) -> anyhow::Result<Connection> {
    Ok(Connection::connect(url, ConnectionProperties::default()).await?)
}

pub async fn run(args: &MeasureArgs) -> anyhow::Result<Vec<Sample>> {
    let connection = retry("RabbitMQ", || connect(&args.url)).await?;
    let control = connection.create_channel().await?;
    let payload = Arc::new(payload(args.payload));
    let mut samples = Vec::new();
    for &workers in args.workers.iter().filter(|_| args.runs("queue")) {
        for ack in [Ack::Each, Ack::Multiple] {
            samples.push(queue(&control, args, workers, ack, &payload).await?);
        }
    }
    for &in_flight in args.in_flight.iter().filter(|_| args.runs("publish")) {
        samples.push(publish(&connection, &control, args, in_flight, &payload).await?);
    }
    if args.runs("consume") {
        samples.push(consume(&connection, &control, args, &payload).await?);
    }
    if args.runs("latency") {
        samples.push(latency(&connection, &control, args).await?);
    }
    connection.close(200, "done".into()).await?;
    Ok(samples)
}

async fn declare_quorum(channel: &Channel, name: &str) -> anyhow::Result<()> {
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    let options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    channel.queue_declare(name.into(), options, arguments).await?;
    Ok(())
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

async fn confirm_channel(connection: &Connection) -> anyhow::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(channel)
}

async fn queue(
    control: &Channel,
    args: &MeasureArgs,
    workers: usize,
    ack: Ack,
    payload: &Arc<Vec<u8>>,
) -> anyhow::Result<Sample> {
    let name = format!("queue-w{workers}-{}", if ack == Ack::Each { "each" } else { "multiple" });
    declare_quorum(control, &name).await?;
    // Filled through confirms, 500 publishes in flight at a time.
    let connection = connect(&args.url).await?;
    let channel = confirm_channel(&connection).await?;
    fill(&channel, &name, payload, args.messages).await?;
    connection.close(200, "filled".into()).await?;

    let budget = Budget::new(args.messages, args.deadline());
    let batch = args.batch;
    let start = Instant::now();
    let latencies_ns = crate::run_clients((0..workers).map(|index| {
        let (url, name, budget) = (args.url.clone(), name.clone(), budget.clone());
        async move {
            let connection = connect(&url).await?;
            let channel = connection.create_channel().await?;
            channel.basic_qos(u16::try_from(batch)?, BasicQosOptions::default()).await?;
            let tag = format!("w{index}");
            let options = BasicConsumeOptions::default();
            let mut consumer = channel
                .basic_consume(
                    name.as_str().into(),
                    tag.as_str().into(),
                    options,
                    FieldTable::default(),
                )
                .await?;
            let (mut latencies, mut since) = (Vec::new(), Instant::now());
            let (mut settled, mut held, mut last_tag) = (0, 0, 0);
            while !budget.over() {
                let delivery = match tokio::time::timeout(IDLE, consumer.next()).await {
                    Ok(Some(delivery)) => delivery?,
                    Ok(None) => bail!("the consumer was cancelled"),
                    Err(_idle) => {
                        // The tail of the queue: ack what is held rather than wait for
                        // a full batch that may never come.
                        if held > 0 {
                            let options = BasicAckOptions { multiple: true };
                            channel.basic_ack(last_tag, options).await?;
                            budget.complete(held as u64);
                            held = 0;
                        }
                        continue;
                    }
                };
                match ack {
                    Ack::Each => {
                        channel
                            .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
                            .await?;
                        budget.complete(1);
                        settled += 1;
                    }
                    Ack::Multiple => {
                        held += 1;
                        last_tag = delivery.delivery_tag;
                        if held == batch {
                            let options = BasicAckOptions { multiple: true };
                            channel.basic_ack(delivery.delivery_tag, options).await?;
                            budget.complete(held as u64);
                            settled += held;
                            held = 0;
                        }
                    }
                }
                if settled >= batch {
                    latencies.push(elapsed_ns(since));
                    since = Instant::now();
                    settled = 0;
                }
            }
            connection.close(200, "done".into()).await.ok();
            Ok::<_, anyhow::Error>(latencies)
        }
    }))
    .await?;
    let elapsed = budget.elapsed(start);
    control.queue_delete(name.as_str().into(), QueueDeleteOptions::default()).await?;
    let acks = match ack {
        Ack::Each => "basic.ack each",
        Ack::Multiple => "basic.ack multiple per 100",
    };
    Ok(Sample {
        workload: format!("queue-w{workers}"),
        setting: format!("quorum, prefetch {batch}, {acks}"),
        // AMQP 0-9-1 acks get no answer; a quorum queue writes them to its Raft WAL, fsynced
        // in batches.
        durable: "async",
        messages: budget.done(),
        elapsed,
        latencies_ns,
        latency_of: "one worker receiving 100 deliveries and writing their acks",
    }
    .finish())
}

async fn publish(
    connection: &Connection,
    control: &Channel,
    args: &MeasureArgs,
    in_flight: usize,
    payload: &Arc<Vec<u8>>,
) -> anyhow::Result<Sample> {
    let name = format!("publish-c{in_flight}");
    declare_quorum(control, &name).await?;
    let channel = confirm_channel(connection).await?;
    let budget = Budget::new(args.messages, args.deadline());
    let start = Instant::now();
    let latencies_ns = crate::run_clients((0..in_flight).map(|_| {
        let (channel, name, budget, payload) =
            (channel.clone(), name.clone(), budget.clone(), payload.clone());
        async move {
            let mut latencies = Vec::new();
            while budget.claim() {
                let sent = Instant::now();
                let options = BasicPublishOptions::default();
                let confirm = channel
                    .basic_publish("".into(), name.as_str().into(), options, &payload, persistent())
                    .await?
                    .await?;
                ensure!(confirm.is_ack(), "a publish was nacked");
                latencies.push(elapsed_ns(sent));
                budget.complete(1);
            }
            Ok::<_, anyhow::Error>(latencies)
        }
    }))
    .await?;
    let elapsed = budget.elapsed(start);
    channel.close(200, "done".into()).await?;
    control.queue_delete(name.as_str().into(), QueueDeleteOptions::default()).await?;
    Ok(Sample {
        workload: format!("publish-c{in_flight}"),
        setting: "quorum, persistent, publisher confirms".to_owned(),
        durable: "yes",
        messages: budget.done(),
        elapsed,
        latencies_ns,
        latency_of: "one publish -> confirm",
    }
    .finish())
}

/// Publish->consume latency at 1,000 messages per second: persistent publishes with confirms
/// to a quorum queue (a quorum queue delivers only what its Raft log committed), one consumer
/// (prefetch 100) acking each delivery.
async fn latency(
    connection: &Connection,
    control: &Channel,
    args: &MeasureArgs,
) -> anyhow::Result<Sample> {
    let name = "latency-1000";
    declare_quorum(control, name).await?;
    let consumer_channel = connection.create_channel().await?;
    consumer_channel.basic_qos(100, BasicQosOptions::default()).await?;
    let mut consumer = consumer_channel
        .basic_consume(
            name.into(),
            "latency".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let clocked = crate::Clocked::new(args.latency_messages);
    let receiver = {
        let clocked = clocked.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while (latencies.len() as u64) < clocked.messages() {
                let Some(delivery) = consumer.next().await else { bail!("the consumer ended") };
                let delivery = delivery?;
                let seq = crate::Clocked::seq(&delivery.data).context("no sequence number")?;
                latencies.push(clocked.latency(seq).context("consumed before it was sent")?);
                delivery.ack(BasicAckOptions::default()).await?;
            }
            Ok::<_, anyhow::Error>(latencies)
        })
    };
    let channel = confirm_channel(connection).await?;
    let payload_len = args.payload;
    clocked
        .publish_paced(|seq| {
            let channel = channel.clone();
            let payload = crate::Clocked::payload(seq, payload_len);
            async move {
                let options = BasicPublishOptions::default();
                let confirm = channel
                    .basic_publish("".into(), name.into(), options, &payload, persistent())
                    .await?
                    .await?;
                ensure!(confirm.is_ack(), "a publish was nacked");
                Ok(())
            }
        })
        .await?;
    let latencies_ns = receiver.await??;
    channel.close(200, "done".into()).await?;
    consumer_channel.close(200, "done".into()).await?;
    control.queue_delete(name.into(), QueueDeleteOptions::default()).await?;
    let setting = "quorum, persistent, confirms; basic.consume, ack each".to_owned();
    Ok(crate::latency_sample(setting, "yes", &clocked, latencies_ns))
}

/// Publishes `messages` persistent copies of `payload` to queue `name` on a confirm channel,
/// [`FILL_WINDOW`] in flight at a time, each confirmed (untimed setup of a workload).
async fn fill(channel: &Channel, name: &str, payload: &[u8], messages: u64) -> anyhow::Result<()> {
    let mut filled = 0;
    while filled < messages {
        let count = (messages - filled).min(FILL_WINDOW);
        let mut confirms = Vec::new();
        for _ in 0..count {
            let options = BasicPublishOptions::default();
            confirms.push(
                channel
                    .basic_publish("".into(), name.into(), options, payload, persistent())
                    .await?,
            );
        }
        for confirm in confirms {
            ensure!(confirm.await?.is_ack(), "a fill publish was nacked");
        }
        filled += count;
    }
    Ok(())
}

/// Stream-consumer throughput: a RabbitMQ stream (`x-queue-type: stream`, the non-destructive
/// log RabbitMQ offers next to queues) filled (untimed) through confirms, then read from the
/// first offset over AMQP 0-9-1 (`x-stream-offset: first`, prefetch 1,000, acks as AMQP requires
/// for credit, `multiple` per 500).
async fn consume(
    connection: &Connection,
    control: &Channel,
    args: &MeasureArgs,
    payload: &Arc<Vec<u8>>,
) -> anyhow::Result<Sample> {
    let name = "consume";
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), AMQPValue::LongString("stream".into()));
    let options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    control.queue_declare(name.into(), options, arguments).await?;
    let publisher = confirm_channel(connection).await?;
    fill(&publisher, name, payload, args.messages).await?;
    publisher.close(200, "done".into()).await?;
    let channel = connection.create_channel().await?;
    channel.basic_qos(1000, BasicQosOptions::default()).await?;
    let mut consume_arguments = FieldTable::default();
    consume_arguments.insert("x-stream-offset".into(), AMQPValue::LongString("first".into()));
    let deadline = args.deadline();
    let start = Instant::now();
    let mut consumer = channel
        .basic_consume(
            name.into(),
            "reader".into(),
            BasicConsumeOptions::default(),
            consume_arguments,
        )
        .await?;
    let mut received = 0u64;
    while received < args.messages && Instant::now() < deadline {
        let delivery = tokio::time::timeout(Duration::from_secs(5), consumer.next())
            .await
            .context("no delivery for 5 s")?
            .context("the consumer ended")??;
        received += 1;
        if received.is_multiple_of(500) || received == args.messages {
            delivery.ack(BasicAckOptions { multiple: true }).await?;
        }
    }
    let elapsed = start.elapsed();
    channel.close(200, "done".into()).await?;
    control.queue_delete(name.into(), QueueDeleteOptions::default()).await?;
    Ok(Sample {
        workload: "consume".to_owned(),
        setting: "stream queue, x-stream-offset first, prefetch 1000".to_owned(),
        durable: "-",
        messages: received,
        elapsed,
        latencies_ns: Vec::new(),
        latency_of: "-",
    }
    .finish())
}
