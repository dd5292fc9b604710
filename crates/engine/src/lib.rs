//! Sluice's engine: topics over partition logs, Kafka-compatible partitioning, producing with
//! id deduplication, and fetching with long-poll. It is the one place business rules live; the
//! front doors (HTTP, Kafka, in-process) translate requests into calls on [`Engine`].
//!
//! Durable state is only ever in logs: partition logs for records, and the internal
//! `__topics` log for which topics exist. Everything else (the dedup window, the published high
//! watermarks) is derived from them at open.
//!
//! Consumer groups in stream mode live in [`group`]. Not here yet: queues, event streams, sagas,
//! schemas, metrics.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use sluice_engine::{ProduceRecord, Sluice, TopicConfig};
//! use std::time::Duration;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let engine = Sluice::open(dir.path()).unwrap();
//! engine.create_topic("orders", TopicConfig { partitions: 3, ..TopicConfig::default() }).unwrap();
//! let record = ProduceRecord { key: Some(b"order-1".to_vec()), value: Some(b"{}".to_vec()), ..Default::default() };
//! let produced = engine.produce("orders", vec![record]).await.unwrap();
//! let fetched = engine.fetch("orders", produced[0].partition, 0, 1 << 20, Duration::ZERO).await.unwrap();
//! assert_eq!(fetched.records_from(0).unwrap()[0].key.as_deref(), Some(&b"order-1"[..]));
//! # });
//! ```

#![warn(missing_docs)]

mod batch_append;
mod config;
mod dedup;
mod engine;
mod error;
mod fetch;
pub mod group;
mod metadata;
mod metrics;
pub mod names;
pub mod partitioner;
mod produce;
pub mod producer;
pub mod queue;
mod records;
pub mod streams;
mod sync_watch;
pub mod time_text;
mod topic;

pub use batch_append::{BatchAppended, WrittenBatch};
pub use config::{
    DurabilityConfig, TopicConfig, TopicConfigError, PARTITIONS_MAX, RECORD_BYTES_LIMIT,
};
pub use dedup::DEDUP_IDS_MAX;
pub use engine::{Engine, PartitionDescription, TopicDescription};

/// The engine under the name ARCHITECTURE.md gives the in-process entry point:
/// `Sluice::open(dir)`.
pub type Sluice = Engine;
pub use error::{
    CloseError, EngineOpenError, ErrorCode, FetchError, GroupError, ProduceError, QueueError,
    StreamError, TopicError,
};
pub use fetch::{FetchResult, FETCH_BYTES_MAX, FETCH_WAIT_MAX};
pub use group::assignment::TopicPartition;
pub use group::{
    GroupDescription, GroupFetch, GroupRecord, JoinRequest, MemberDescription, Membership,
    PartitionLag, ResetTo, StartFrom,
};
pub use metrics::{GroupLagMetrics, MetricsSnapshot, PartitionMetrics, TopicMetrics};
pub use produce::{Produced, PRODUCE_RECORDS_MAX};
pub use records::{decode_batches, ProduceRecord, StoredRecord, ID_BYTES_MAX, ID_HEADER};
