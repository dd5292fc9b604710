//! The produce workload: `concurrency` tasks share a fixed number of produce requests (engine
//! calls or HTTP requests) of one pre-built batch each, and every request's latency is kept.
//!
//! Each record's value is a JSON string of printable characters, `record_bytes` long with its
//! quotes: the server stores a JSON value as its text, so both doors store exactly the same
//! bytes. Keys are absent, so each request lands in one partition and the next request in the
//! next one (the sticky partitioner). Tasks take requests from a shared counter rather than
//! fixed shares, so they finish together.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use bytes::Bytes;
use sluice_engine::ProduceRecord;
use tokio::sync::Barrier;

use super::elapsed_ns;
use super::pseudo_random_bytes;
use super::target::{Batch, Target};
use super::topic_bench::{TopicMeasurement, TopicSettings};

/// Characters of the values: no quote or backslash, so the JSON needs no escaping.
const VALUE_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
/// Values are windows into a random pool this much longer than a value, so the records of a
/// batch differ from each other.
const VALUE_POOL_SLACK_BYTES: usize = 4096;
/// Stride between the windows of consecutive records; odd, so windows rarely coincide.
const VALUE_WINDOW_STRIDE_BYTES: usize = 61;

/// Builds the batch every produce request sends: `batch_records` keyless records whose values
/// are `record_bytes` long, JSON quotes included.
///
/// # Errors
/// A body larger than the server accepts.
pub fn build_batch(settings: &TopicSettings) -> anyhow::Result<Batch> {
    assert!(settings.record_bytes >= 2, "a JSON string value has two quotes");
    let characters = settings.record_bytes as usize - 2;
    let pool: Vec<u8> = pseudo_random_bytes(characters + VALUE_POOL_SLACK_BYTES)
        .into_iter()
        .map(|byte| VALUE_ALPHABET[usize::from(byte) % VALUE_ALPHABET.len()])
        .collect();
    let mut records = Vec::with_capacity(settings.batch_records as usize);
    let mut body = Vec::with_capacity(settings.batch_records as usize * (characters + 16) + 16);
    body.extend_from_slice(b"{\"records\":[");
    for index in 0..settings.batch_records as usize {
        let start = index * VALUE_WINDOW_STRIDE_BYTES % VALUE_POOL_SLACK_BYTES;
        let mut value = Vec::with_capacity(settings.record_bytes as usize);
        value.push(b'"');
        value.extend_from_slice(&pool[start..start + characters]);
        value.push(b'"');
        if index > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"{\"value\":");
        body.extend_from_slice(&value);
        body.push(b'}');
        records.push(ProduceRecord { value: Some(value), ..ProduceRecord::default() });
    }
    body.extend_from_slice(b"]}");
    ensure!(
        body.len() <= sluice_http::REQUEST_BYTES_MAX,
        "a request of {} records of {} bytes is {} bytes, more than the server accepts ({}); \
         lower --batch-records or --record-bytes",
        settings.batch_records,
        settings.record_bytes,
        body.len(),
        sluice_http::REQUEST_BYTES_MAX
    );
    Ok(Batch { records, body: Bytes::from(body) })
}

/// Produce requests per run: enough whole batches to carry `total_bytes` of values.
pub fn request_count(settings: &TopicSettings) -> u64 {
    let batch_bytes = u64::from(settings.batch_records) * u64::from(settings.record_bytes);
    settings.total_bytes.div_ceil(batch_bytes).max(1)
}

/// Produces [`request_count`] batches to `topic` (which must exist) from `concurrency` tasks
/// and measures it as `name`.
///
/// # Errors
/// The first request that failed.
pub async fn produce(
    name: String,
    target: &Target,
    topic: &str,
    batch: &Arc<Batch>,
    settings: &TopicSettings,
    concurrency: u32,
) -> anyhow::Result<TopicMeasurement> {
    let requests = request_count(settings);
    let (elapsed, latencies) = run_producers(target, topic, batch, concurrency, requests).await?;
    let records = requests * batch.records.len() as u64;
    let bytes = records * u64::from(settings.record_bytes);
    Ok(TopicMeasurement::new(name, (records, bytes), elapsed, latencies))
}

/// Runs `concurrency` producers that share `requests` requests and start together. Returns the
/// wall time from the start until the last one finished, and every request's latency.
async fn run_producers(
    target: &Target,
    topic: &str,
    batch: &Arc<Batch>,
    concurrency: u32,
    requests: u64,
) -> anyhow::Result<(Duration, Vec<u64>)> {
    let next_request = Arc::new(AtomicU64::new(0));
    let start_line = Arc::new(Barrier::new(concurrency as usize + 1));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let producer = Producer {
                target: target.clone(),
                topic: topic.to_owned(),
                batch: Arc::clone(batch),
                next_request: Arc::clone(&next_request),
                requests,
            };
            tokio::spawn(producer.run(Arc::clone(&start_line)))
        })
        .collect();
    start_line.wait().await;
    let start = Instant::now();
    let mut latencies = Vec::with_capacity(usize::try_from(requests).unwrap_or(0));
    let mut first_error = None;
    for task in tasks {
        match task.await.context("a producer panicked")? {
            Ok(task_latencies) => latencies.extend(task_latencies),
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    let elapsed = start.elapsed();
    first_error.map_or(Ok((elapsed, latencies)), Err)
}

/// One producer task.
struct Producer {
    target: Target,
    topic: String,
    batch: Arc<Batch>,
    /// The index of the next request to send, shared by all producers of a run.
    next_request: Arc<AtomicU64>,
    requests: u64,
}

impl Producer {
    /// Opens its connection, waits for the start, then sends requests until none is left.
    /// Even on failure it passes the start line, so the others are not left waiting.
    async fn run(self, start_line: Arc<Barrier>) -> anyhow::Result<Vec<u64>> {
        let touched = self.target.touch(&self.topic).await;
        start_line.wait().await;
        touched.context("before producing")?;
        let mut latencies = Vec::new();
        while self.next_request.fetch_add(1, Ordering::Relaxed) < self.requests {
            let start = Instant::now();
            self.target
                .produce(&self.topic, &self.batch)
                .await
                .with_context(|| format!("producing to {}", self.topic))?;
            latencies.push(elapsed_ns(start));
        }
        Ok(latencies)
    }
}
