//! Sluice's Kafka door, driven as a Kafka producer drives it: one connection, records handed
//! to a sender that puts whatever is pending into one RecordBatch per Produce request (v8,
//! `acks=-1`), up to 5 requests in flight (Kafka's `max.in.flight.requests.per.connection`
//! default), answers read in order. This is what librdkafka and the Java client do with
//! `linger.ms=0`; it is written here so the bench needs no C library.

use std::sync::Arc;

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use sluice_format::{BatchBuilder, NewRecord};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Requests sent and not yet answered, at most.
const REQUESTS_IN_FLIGHT: usize = 5;
/// Most record bytes put into one request.
const REQUEST_RECORD_BYTES: usize = 1024 * 1024;

type Ack = oneshot::Sender<anyhow::Result<i64>>;

/// A producer to one partition of one topic.
#[derive(Clone)]
pub struct Producer {
    records: mpsc::UnboundedSender<(Bytes, Ack)>,
}

impl Producer {
    pub async fn connect(address: &str, topic: &str, partition: i32) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(address)
            .await
            .with_context(|| format!("connecting to Sluice's Kafka door at {address}"))?;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        let (records, queue) = mpsc::unbounded_channel();
        let slots = Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT));
        let (sent, to_read) = mpsc::unbounded_channel();
        tokio::spawn(send(write, queue, topic.to_owned(), partition, Arc::clone(&slots), sent));
        tokio::spawn(receive(read, to_read, slots));
        Ok(Producer { records })
    }

    /// Sends one record; resolves with its offset once the server acknowledged it.
    pub async fn send(&self, value: Bytes) -> anyhow::Result<i64> {
        let (ack, acked) = oneshot::channel();
        self.records.send((value, ack)).map_err(|_| anyhow::anyhow!("the producer stopped"))?;
        acked.await.context("the producer stopped before an answer")?
    }
}

/// What the reader needs to settle one request's records.
struct Sent {
    correlation_id: i32,
    acks: Vec<Ack>,
}

async fn send(
    mut write: tokio::net::tcp::OwnedWriteHalf,
    mut queue: mpsc::UnboundedReceiver<(Bytes, Ack)>,
    topic: String,
    partition: i32,
    slots: Arc<Semaphore>,
    sent: mpsc::UnboundedSender<Sent>,
) {
    let mut correlation_id = 0;
    while let Some(first) = queue.recv().await {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { return };
        // Given back by the reader when the answer arrives.
        slot.forget();
        // A slot frees when an answer settles its records, and their callers are about to
        // send again. Letting them run first puts their records in this request: without it
        // the first of them went alone, and the median request at 64 in flight carried one
        // record (`docs/benchmarks.md`, session 18). The Java client does the same by running
        // an answer's callbacks before it drains the next batch.
        tokio::task::yield_now().await;
        let mut records = vec![first];
        let mut bytes = records[0].0.len();
        while bytes < REQUEST_RECORD_BYTES {
            match queue.try_recv() {
                Ok(record) => {
                    bytes += record.0.len();
                    records.push(record);
                }
                Err(_) => break,
            }
        }
        let mut builder = BatchBuilder::new(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        for (value, _) in &records {
            builder.push(&NewRecord {
                key: None,
                value: Some(value),
                headers: &[],
                timestamp_ms: now,
            });
        }
        let batch = builder.build();
        correlation_id += 1;
        let request = produce_request(correlation_id, &topic, partition, &batch);
        let acks = records.into_iter().map(|(_, ack)| ack).collect();
        if sent.send(Sent { correlation_id, acks }).is_err()
            || write.write_all(&request).await.is_err()
        {
            return;
        }
    }
}

/// A Produce v8 request (header v1, client id "peers-bench"), acks -1, one partition.
fn produce_request(correlation_id: i32, topic: &str, partition: i32, batch: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(batch.len() + 64);
    body.extend_from_slice(&0i16.to_be_bytes()); // Produce
    body.extend_from_slice(&8i16.to_be_bytes());
    body.extend_from_slice(&correlation_id.to_be_bytes());
    put_string(&mut body, "peers-bench");
    body.extend_from_slice(&(-1i16).to_be_bytes()); // transactional_id: null
    body.extend_from_slice(&(-1i16).to_be_bytes()); // acks: all
    body.extend_from_slice(&30_000i32.to_be_bytes());
    body.extend_from_slice(&1i32.to_be_bytes());
    put_string(&mut body, topic);
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&partition.to_be_bytes());
    body.extend_from_slice(&(batch.len() as i32).to_be_bytes());
    body.extend_from_slice(batch);
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&(body.len() as i32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

fn put_string(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as i16).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

async fn receive(
    mut read: tokio::net::tcp::OwnedReadHalf,
    mut sent: mpsc::UnboundedReceiver<Sent>,
    slots: Arc<Semaphore>,
) {
    while let Some(Sent { correlation_id, acks }) = sent.recv().await {
        let answer = read_answer(&mut read, correlation_id).await;
        let failed = answer.is_err();
        for (index, ack) in acks.into_iter().enumerate() {
            let _ = ack.send(match &answer {
                Ok(base_offset) => Ok(base_offset + index as i64),
                Err(error) => Err(anyhow::anyhow!("{error:#}")),
            });
        }
        slots.add_permits(1);
        if failed {
            return;
        }
    }
}

/// Reads one Produce v8 answer; the base offset of its one partition.
async fn read_answer(
    read: &mut tokio::net::tcp::OwnedReadHalf,
    correlation_id: i32,
) -> anyhow::Result<i64> {
    let size = read.read_i32().await.context("reading an answer's size")?;
    let mut frame = vec![0; usize::try_from(size).context("a negative answer size")?];
    read.read_exact(&mut frame).await.context("reading an answer")?;
    let field = |at: usize, len: usize| frame.get(at..at + len).context("a short answer");
    let got = i32::from_be_bytes(field(0, 4)?.try_into()?);
    ensure!(got == correlation_id, "answer {got} arrived for request {correlation_id}");
    // correlation id, responses count, topic name, partitions count, index, error, offset
    let name_len = i16::from_be_bytes(field(8, 2)?.try_into()?) as usize;
    let at = 10 + name_len + 4 + 4;
    let error = i16::from_be_bytes(field(at, 2)?.try_into()?);
    let base_offset = i64::from_be_bytes(field(at + 2, 8)?.try_into()?);
    if error != 0 {
        bail!("the produce was refused with Kafka error code {error}");
    }
    Ok(base_offset)
}

/// A consumer of one partition: Fetch v11 long-polls (`max_wait_ms` 500, `min_bytes` 1) on
/// its own connection, as a Kafka consumer that `assign()`s the partition.
pub struct Consumer {
    stream: TcpStream,
    topic: String,
    partition: i32,
    correlation_id: i32,
}

impl Consumer {
    pub async fn connect(address: &str, topic: &str, partition: i32) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(address)
            .await
            .with_context(|| format!("connecting to Sluice's Kafka door at {address}"))?;
        stream.set_nodelay(true)?;
        Ok(Consumer { stream, topic: topic.to_owned(), partition, correlation_id: 0 })
    }

    /// The record values at or after `offset` (waiting up to 500 ms for one), with their
    /// offsets.
    pub async fn fetch(&mut self, offset: i64) -> anyhow::Result<Vec<(i64, Vec<u8>)>> {
        self.correlation_id += 1;
        let mut body = Vec::with_capacity(128);
        body.extend_from_slice(&1i16.to_be_bytes()); // Fetch
        body.extend_from_slice(&11i16.to_be_bytes());
        body.extend_from_slice(&self.correlation_id.to_be_bytes());
        put_string(&mut body, "peers-bench");
        for value in [-1i32, 500, 1, 1024 * 1024] {
            body.extend_from_slice(&value.to_be_bytes()); // replica, max wait, min and max bytes
        }
        body.push(0); // isolation level
        body.extend_from_slice(&0i32.to_be_bytes()); // session id
        body.extend_from_slice(&(-1i32).to_be_bytes()); // session epoch: no session
        body.extend_from_slice(&1i32.to_be_bytes());
        put_string(&mut body, &self.topic);
        body.extend_from_slice(&1i32.to_be_bytes());
        body.extend_from_slice(&self.partition.to_be_bytes());
        body.extend_from_slice(&(-1i32).to_be_bytes()); // current leader epoch
        body.extend_from_slice(&offset.to_be_bytes());
        body.extend_from_slice(&(-1i64).to_be_bytes()); // log start offset
        body.extend_from_slice(&(1024 * 1024i32).to_be_bytes());
        body.extend_from_slice(&0i32.to_be_bytes()); // forgotten topics
        put_string(&mut body, ""); // rack
        self.stream.write_all(&(body.len() as i32).to_be_bytes()).await?;
        self.stream.write_all(&body).await?;

        let size = self.stream.read_i32().await.context("reading a fetch answer's size")?;
        let mut frame = vec![0; usize::try_from(size).context("a negative answer size")?];
        self.stream.read_exact(&mut frame).await.context("reading a fetch answer")?;
        // correlation id, throttle, error, session id, topics (1), name, partitions (1),
        // index, error, high watermark, last stable, log start, aborted (null), replica, records
        let name_len = usize::try_from(i16::from_be_bytes(frame[18..20].try_into()?))?;
        let at = 20 + name_len + 4 + 4;
        let error = i16::from_be_bytes(frame[at..at + 2].try_into()?);
        ensure!(error == 0, "the fetch was refused with Kafka error code {error}");
        let at = at + 2 + 8 + 8 + 8 + 4 + 4;
        let length = i32::from_be_bytes(frame[at..at + 4].try_into()?);
        let records =
            frame.get(at + 4..at + 4 + usize::try_from(length.max(0))?).context("short")?;
        let mut values = Vec::new();
        for batch in sluice_format::split_batches(records) {
            let (_, bytes) = batch?;
            for record in sluice_format::records(bytes)? {
                let record = record?;
                if record.offset >= offset {
                    values.push((record.offset, record.value.unwrap_or_default().to_vec()));
                }
            }
        }
        Ok(values)
    }
}
