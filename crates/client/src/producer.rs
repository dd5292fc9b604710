//! A batching, idempotent producer. `send` queues a record and resolves when the server has
//! acknowledged it (under the topic's default durability: fsynced). A background task gathers
//! queued records into one request until the batch is full or `linger` passes. Every record gets
//! an id (`<producer id>-<sequence>`), so a request retried after a lost response is not
//! appended twice: the server's dedup window answers with the first position.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use crate::http::{ClientError, Http};

/// How a producer batches and retries.
#[derive(Debug, Clone, Copy)]
pub struct ProducerOptions {
    /// Most records in one request (the server takes up to 10,000).
    pub batch_records_max: usize,
    /// How long the first queued record waits for others to join its request.
    pub linger: Duration,
    /// Records that may wait in the queue; `send` waits for room beyond it.
    pub queue_records_max: usize,
    /// Attempts of one request on transient failures (with the same ids), backing off
    /// exponentially from 50 ms.
    pub attempts_max: u32,
}

impl Default for ProducerOptions {
    fn default() -> Self {
        Self {
            batch_records_max: 500,
            linger: Duration::from_millis(5),
            queue_records_max: 10_000,
            attempts_max: 5,
        }
    }
}

/// Where the server put a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Position {
    /// The partition.
    pub partition: u32,
    /// The offset.
    pub offset: u64,
    /// Whether it was a duplicate of a record already appended (this is the first one's place).
    pub duplicate: bool,
}

struct Queued {
    record: Value,
    reply: oneshot::Sender<Result<Position, ClientError>>,
}

/// A producer of `T` values to one topic.
#[derive(Debug)]
pub struct Producer<T> {
    queue: mpsc::Sender<Queued>,
    id_prefix: String,
    sequence: AtomicU64,
    values: PhantomData<fn(&T)>,
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Queued").field("record", &self.record).finish_non_exhaustive()
    }
}

impl<T: Serialize> Producer<T> {
    pub(crate) fn start(http: Http, topic: &str, options: ProducerOptions) -> Self {
        let (queue, receiver) = mpsc::channel(options.queue_records_max.max(1));
        tokio::spawn(run(http, topic.to_owned(), options, receiver));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let id_prefix = format!("p{}-{nanos:x}", std::process::id());
        Self { queue, id_prefix, sequence: AtomicU64::new(0), values: PhantomData }
    }

    /// Sends `value` with an optional `key` (records with the same key keep their order) and
    /// waits for the server's acknowledgement.
    ///
    /// # Errors
    /// The server's refusal (e.g. record too large), a transport failure that outlasted the
    /// retries, or a value that does not serialise.
    pub async fn send(&self, key: Option<&str>, value: &T) -> Result<Position, ClientError> {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        let record = json!({"key": key, "value": serde_json::to_value(value)?, "id": format!("{}-{sequence}", self.id_prefix)});
        let (reply, acknowledged) = oneshot::channel();
        self.queue.send(Queued { record, reply }).await.map_err(|_| ClientError::Closed)?;
        acknowledged.await.map_err(|_| ClientError::Closed)?
    }
}

#[derive(Deserialize)]
struct ProduceResponse {
    offsets: Vec<Position>,
}

/// The background task: batch, send, retry, answer.
async fn run(
    http: Http,
    topic: String,
    options: ProducerOptions,
    mut queue: mpsc::Receiver<Queued>,
) {
    let path = format!("/v1/topics/{topic}/records");
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + options.linger;
        while batch.len() < options.batch_records_max {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(queued)) => batch.push(queued),
                Ok(None) | Err(_) => break,
            }
        }
        let records: Vec<&Value> = batch.iter().map(|queued| &queued.record).collect();
        let body = json!({"records": records});
        let outcome = send_with_retries(&http, &path, &body, options.attempts_max).await;
        match outcome {
            Ok(response) if response.offsets.len() == batch.len() => {
                for (queued, position) in batch.into_iter().zip(response.offsets) {
                    let _ = queued.reply.send(Ok(position));
                }
            }
            Ok(response) => {
                let detail =
                    format!("{} positions for {} records", response.offsets.len(), batch.len());
                for queued in batch {
                    let _ = queued.reply.send(Err(ClientError::Unexpected {
                        url: path.clone(),
                        detail: detail.clone(),
                    }));
                }
            }
            Err(error) => {
                for queued in batch {
                    let _ = queued.reply.send(Err(error.shared()));
                }
            }
        }
    }
}

async fn send_with_retries(
    http: &Http,
    path: &str,
    body: &Value,
    attempts_max: u32,
) -> Result<ProduceResponse, ClientError> {
    let mut backoff = Duration::from_millis(50);
    let mut attempt = 1;
    loop {
        match http.call::<ProduceResponse>(Method::POST, path, Some(body)).await {
            Err(error) if error.is_transient() && attempt < attempts_max => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                attempt += 1;
            }
            other => return other,
        }
    }
}
