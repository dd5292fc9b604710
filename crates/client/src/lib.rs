//! The Rust SDK for Sluice, over its HTTP API: a batching, idempotent [`Producer`], a
//! consumer-group [`Consumer`], both with serde-typed values (JSON on the wire), a queue-group
//! [`Worker`] with leases, retries and dead letters (and [`dedup`] for an idempotent consumer),
//! and event [`streams`]: appends with an expected version, reads, snapshots, subscriptions,
//! an [`Aggregate`] [`Repository`] that retries conflicts, and [`Projection`]s applied exactly
//! once.
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//! use sluice_client::{Client, ConsumerOptions};
//! use std::time::Duration;
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! struct Order { id: u64, total_cents: u64 }
//!
//! # async fn run() -> Result<(), sluice_client::ClientError> {
//! let client = Client::new("http://127.0.0.1:8080");
//! client.create_topic("orders", 3).await?;
//! let producer = client.producer::<Order>("orders");
//! let position = producer.send(Some("customer-7"), &Order { id: 1, total_cents: 1250 }).await?;
//! println!("stored at {}/{}", position.partition, position.offset);
//!
//! let options = ConsumerOptions { from_earliest: true, ..ConsumerOptions::default() };
//! let mut consumer = client.consumer::<Order>("billing", &["orders"], options).await?;
//! for delivery in consumer.poll(Duration::from_secs(1)).await? {
//!     println!("{:?}", delivery.value);
//! }
//! consumer.commit().await?;
//! consumer.close().await?;
//! # Ok(()) }
//! ```
//!
//! Event sourcing, with `Account` an [`Aggregate`] (see its docs for one written out):
//!
//! ```no_run
//! # use serde::{Deserialize, Serialize};
//! # use sluice_client::{Aggregate, Client};
//! # #[derive(Default, Serialize, Deserialize)] struct Account { balance: u64 }
//! # #[derive(Serialize, Deserialize)] struct Deposited { amount: u64 }
//! # #[derive(Debug, thiserror::Error)] #[error("never")] struct Never;
//! # impl Aggregate for Account {
//! #     type Event = Deposited; type Command = u64; type Error = Never;
//! #     fn event_type(_: &Deposited) -> &str { "Deposited" }
//! #     fn apply(&mut self, event: &Deposited) { self.balance += event.amount }
//! #     fn handle(&self, amount: &u64) -> Result<Vec<Deposited>, Never> {
//! #         Ok(vec![Deposited { amount: *amount }])
//! #     }
//! # }
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::new("http://127.0.0.1:8080");
//! client.create_topic("accounts", 3).await?;
//! let accounts = client.repository::<Account>("accounts").snapshot_every(100);
//! // Load, decide, append at the loaded version; on a conflict, catch up and decide again.
//! let done = accounts.execute("account-17", &250).await?;
//! println!("balance {} at version {:?}", done.state.balance, done.version);
//! # Ok(()) }
//! ```
//!
//! Runnable examples: `examples/orders.rs` (producer and consumer), `examples/worker.rs` (a
//! queue worker), `examples/streams.rs` (an aggregate, a subscription and a projection).

#![warn(missing_docs)]

mod consumer;
mod http;
mod producer;
pub mod streams;
pub mod worker;

use hyper::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

pub use consumer::{Consumer, ConsumerOptions, Delivery};
pub use http::{ClientError, REQUEST_TIMEOUT, RESPONSE_BYTES_MAX};
pub use producer::{Position, Producer, ProducerOptions};
pub use streams::{
    Aggregate, Appended, AppenderOptions, Direction, EventData, Executed, ExpectedVersion, Loaded,
    Projection, ProjectionError, ProjectionReport, ProjectionStore, ReadOptions, RecordedEvent,
    Repository, RepositoryError, Snapshot, StreamAppender, StreamFrom, StreamMetadata, StreamSlice,
    StreamSubscription, StreamWrite, SubscribedEvent, TopicFrom, TopicPosition, TopicSubscription,
    VersionConflict,
};
pub use worker::{
    dedup, Dedup, Guarantee, Handler, HandlerError, MemoryStore, Message, ProcessedStore, Worker,
    WorkerReport,
};

/// The server's code for "topic exists".
const TOPIC_EXISTS: u16 = 1002;

/// How long a topic keeps records, as [`Client::create_topic_with`] asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Retention {
    /// The server's default (7 days).
    #[default]
    Default,
    /// Forever (an event store keeps its events).
    Forever,
    /// Records older than this many milliseconds go, a segment at a time.
    Ms(u64),
}

/// Settings of a new topic; unset ones take the server's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicOptions {
    /// Partitions (default 1).
    pub partitions: u32,
    /// Retention by age.
    pub retention_age_ms: Retention,
    /// Keep only the newest record per key.
    pub compact: bool,
    /// Event topics: maintenance deletes a soft-deleted stream's events for good.
    pub hard_delete_streams: bool,
}

impl Default for TopicOptions {
    fn default() -> Self {
        Self {
            partitions: 1,
            retention_age_ms: Retention::Default,
            compact: false,
            hard_delete_streams: false,
        }
    }
}

impl TopicOptions {
    /// An event-store topic: `partitions` partitions, events kept forever, no compaction.
    pub fn event_topic(partitions: u32) -> Self {
        Self { partitions, retention_age_ms: Retention::Forever, ..Self::default() }
    }
}

/// A topic as the server describes it (`GET /v1/topics/{topic}`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct TopicDescription {
    /// Its name.
    pub name: String,
    /// Its partition count.
    pub partitions: u32,
    /// Its age retention in milliseconds (`None`: forever).
    pub retention_age_ms: Option<u64>,
    /// Whether it is compacted.
    pub compact: bool,
    /// Whether maintenance hard-deletes soft-deleted streams.
    #[serde(default)]
    pub hard_delete_streams: bool,
    /// Each partition's bounds.
    pub partition_offsets: Vec<PartitionOffsets>,
}

/// One partition's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct PartitionOffsets {
    /// The partition.
    pub partition: u32,
    /// The first offset still stored.
    pub log_start_offset: u64,
    /// The offset after its last visible record.
    pub high_watermark: u64,
}

/// A handle to one Sluice server. Cheap to clone; clones share connections.
#[derive(Debug, Clone)]
pub struct Client {
    http: http::Http,
}

impl Client {
    /// A client of the server at `server` (e.g. `http://127.0.0.1:8080`). Connects lazily.
    pub fn new(server: &str) -> Self {
        Self { http: http::Http::new(server) }
    }

    /// Creates `topic` with `partitions` partitions and default settings; succeeds if it exists.
    ///
    /// # Errors
    /// A bad name or partition count, or a transport failure.
    pub async fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), ClientError> {
        let body = json!({"name": topic, "partitions": partitions});
        match self.http.call::<Value>(Method::POST, "/v1/topics", Some(&body)).await {
            Ok(_) => Ok(()),
            Err(error) if error.code() == Some(TOPIC_EXISTS) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Creates `topic` with `options` (retention, compaction, hard delete); succeeds if it
    /// exists (whatever its settings: check them with [`Client::describe_topic`]). For an event
    /// store: [`TopicOptions::event_topic`].
    ///
    /// # Errors
    /// A bad name (code 1003) or setting (1004), transport failures.
    pub async fn create_topic_with(
        &self,
        topic: &str,
        options: &TopicOptions,
    ) -> Result<(), ClientError> {
        let mut body = json!({"name": topic, "partitions": options.partitions});
        match options.retention_age_ms {
            Retention::Default => {}
            Retention::Forever => body["retention_age_ms"] = Value::Null,
            Retention::Ms(ms) => body["retention_age_ms"] = json!(ms),
        }
        body["compact"] = json!(options.compact);
        body["hard_delete_streams"] = json!(options.hard_delete_streams);
        match self.http.call::<Value>(Method::POST, "/v1/topics", Some(&body)).await {
            Ok(_) => Ok(()),
            Err(error) if error.code() == Some(TOPIC_EXISTS) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// `topic`'s settings and each partition's bounds.
    ///
    /// # Errors
    /// An unknown topic (code 1001), transport failures.
    pub async fn describe_topic(&self, topic: &str) -> Result<TopicDescription, ClientError> {
        let path = format!("/v1/topics/{}", worker::percent_encode(topic));
        self.http.call(Method::GET, &path, None::<&()>).await
    }

    /// Creates queue group `group` consuming `topics`, with the server's default settings
    /// (`ack_wait_ms` 30 s, 5 deliveries, then the dead-letter topic `<topic>.dlq`); succeeds if
    /// it exists with those settings. Other settings: `POST /v1/queues` (see the server's
    /// `docs/http-api.md`).
    ///
    /// # Errors
    /// Unknown topics (code 1001), a bad name (1003), a group of that name with other settings
    /// (1018), transport failures.
    pub async fn create_queue(&self, group: &str, topics: &[&str]) -> Result<(), ClientError> {
        let body = json!({"group": group, "topics": topics});
        self.http.call::<Value>(Method::POST, "/v1/queues", Some(&body)).await.map(drop)
    }

    /// A producer of `T` to `topic` with default batching. Must be called within a Tokio runtime
    /// (it starts the batching task).
    pub fn producer<T: Serialize>(&self, topic: &str) -> Producer<T> {
        self.producer_with(topic, ProducerOptions::default())
    }

    /// A producer with explicit batching and retry options.
    pub fn producer_with<T: Serialize>(
        &self,
        topic: &str,
        options: ProducerOptions,
    ) -> Producer<T> {
        Producer::start(self.http.clone(), topic, options)
    }

    /// Joins `group` as a new member consuming `topics`.
    ///
    /// # Errors
    /// Unknown topics, topics that differ from the group's, a bad group name, transport failures.
    pub async fn consumer<T: DeserializeOwned>(
        &self,
        group: &str,
        topics: &[&str],
        options: ConsumerOptions,
    ) -> Result<Consumer<T>, ClientError> {
        Consumer::join(self.http.clone(), group, topics, options).await
    }

    /// A worker of queue group `group`, sharing this client's connections; see [`Worker`].
    pub fn worker(&self, group: &str) -> Worker {
        Worker::with_http(self.http.clone(), group)
    }
}
