//! What `sluice bench produce|consume` measures against: the engine in this process, or a server
//! over HTTP. One set of operations with the two behind it, so every workload is written once
//! and runs the same steps on both.
//!
//! Each operation is what an application would do with that door: the engine's async calls
//! (and its blocking ones, join and commit, on the blocking pool, as an async embedder must),
//! or one HTTP request. Answers are decoded only as far as the workloads need (counts, offsets,
//! the generation); the records themselves are parsed but not kept.

use std::time::Duration;

use anyhow::{ensure, Context};
use bytes::Bytes;
use hyper::Method;
use serde::de::IgnoredAny;
use serde::Deserialize;
use sluice_engine::{DurabilityConfig, Engine, JoinRequest, ProduceRecord, StartFrom, TopicConfig};

use std::path::Path;

use super::server::{HttpClient, ServerProcess};
use super::{blocking, ScratchDir};
use crate::cli::BenchTarget;

/// Partitions of every topic the benchmark creates.
pub const TOPIC_PARTITIONS: u32 = 8;
/// Most records one fetch returns, as a member or from a partition: the server's default.
pub const FETCH_RECORDS_MAX: usize = 500;
/// The byte budget of one fetch: the server's default, 1 MiB.
pub const FETCH_BYTES_MAX: u32 = 1024 * 1024;

/// Where a benchmark runs.
#[derive(Debug, Clone)]
pub enum Target {
    /// The engine, called in this process.
    Embedded(Engine),
    /// A server, over HTTP.
    Server(HttpClient),
}

/// One batch of records to produce, as each door takes it: built once, sent again and again.
#[derive(Debug)]
pub struct Batch {
    /// For the engine.
    pub records: Vec<ProduceRecord>,
    /// For the server: `{"records":[...]}`, storing the same bytes as `records`.
    pub body: Bytes,
}

/// What a member's fetch returned.
#[derive(Debug, Clone, Copy)]
pub struct GroupFetched {
    pub records: u64,
    /// The group's generation, which the commit must carry.
    pub generation: u64,
}

/// What a partition fetch returned.
#[derive(Debug, Clone, Copy)]
pub struct PartitionFetched {
    pub records: u64,
    /// The offset to fetch next.
    pub next_offset: u64,
    pub high_watermark: u64,
}

impl Target {
    /// `embedded` or `server`, as in workload names.
    pub fn name(&self) -> &'static str {
        match self {
            Target::Embedded(_) => "embedded",
            Target::Server(_) => "server",
        }
    }

    /// Creates `topic` with [`TOPIC_PARTITIONS`] partitions and `fsync` durability.
    pub async fn create_topic(&self, topic: &str) -> anyhow::Result<()> {
        match self {
            Target::Embedded(engine) => {
                let (engine, topic) = (engine.clone(), topic.to_owned());
                let config = TopicConfig {
                    partitions: TOPIC_PARTITIONS,
                    durability: DurabilityConfig::Fsync,
                    ..TopicConfig::default()
                };
                blocking(move || engine.create_topic(&topic, config).map(drop)).await
            }
            Target::Server(http) => {
                let body = serde_json::json!({
                    "name": topic, "partitions": TOPIC_PARTITIONS, "durability": "fsync"
                });
                let body = Bytes::from(body.to_string());
                http.send(Method::POST, "/v1/topics", body).await.map(drop)
            }
        }
    }

    /// Deletes `topic` and its records.
    pub async fn delete_topic(&self, topic: &str) -> anyhow::Result<()> {
        match self {
            Target::Embedded(engine) => {
                let (engine, topic) = (engine.clone(), topic.to_owned());
                blocking(move || engine.delete_topic(&topic)).await
            }
            Target::Server(http) => {
                let path = format!("/v1/topics/{topic}");
                http.send(Method::DELETE, &path, Bytes::new()).await.map(drop)
            }
        }
    }

    /// A cheap request that needs a connection: run before the timed part so that opening
    /// connections is not timed.
    pub async fn touch(&self, topic: &str) -> anyhow::Result<()> {
        match self {
            Target::Embedded(engine) => engine.describe_topic(topic).map(drop).map_err(Into::into),
            Target::Server(http) => {
                let path = format!("/v1/topics/{topic}");
                http.send(Method::GET, &path, Bytes::new()).await.map(drop)
            }
        }
    }

    /// Produces `batch` to `topic`; returns once the server or engine acknowledged every
    /// record (after fdatasync, under the topic's `fsync` durability).
    pub async fn produce(&self, topic: &str, batch: &Batch) -> anyhow::Result<()> {
        let acknowledged = match self {
            Target::Embedded(engine) => engine.produce(topic, batch.records.clone()).await?.len(),
            Target::Server(http) => {
                #[derive(Deserialize)]
                struct Produced {
                    offsets: Vec<IgnoredAny>,
                }
                let path = format!("/v1/topics/{topic}/records");
                let produced: Produced = http.call(Method::POST, &path, batch.body.clone()).await?;
                produced.offsets.len()
            }
        };
        ensure!(
            acknowledged == batch.records.len(),
            "{} of {} records acknowledged",
            acknowledged,
            batch.records.len()
        );
        Ok(())
    }

    /// Joins `group` as a new member consuming `topic` from the earliest offset; returns the
    /// member id.
    pub async fn join(&self, group: &str, topic: &str) -> anyhow::Result<String> {
        match self {
            Target::Embedded(engine) => {
                let (engine, group) = (engine.clone(), group.to_owned());
                let request = JoinRequest {
                    topics: vec![topic.to_owned()],
                    start: StartFrom::Earliest,
                    ..JoinRequest::default()
                };
                blocking(move || engine.join_group(&group, request)).await.map(|m| m.member_id)
            }
            Target::Server(http) => {
                #[derive(Deserialize)]
                struct Joined {
                    member_id: String,
                }
                let body = serde_json::json!({"topics": [topic], "from": "earliest"});
                let path = format!("/v1/groups/{group}/members");
                let joined: Joined =
                    http.call(Method::POST, &path, Bytes::from(body.to_string())).await?;
                Ok(joined.member_id)
            }
        }
    }

    /// Fetches up to [`FETCH_RECORDS_MAX`] records as `member`, waiting up to `wait` if none
    /// is ready.
    pub async fn fetch_group(
        &self,
        group: &str,
        member: &str,
        wait: Duration,
    ) -> anyhow::Result<GroupFetched> {
        match self {
            Target::Embedded(engine) => {
                let fetched = engine
                    .fetch_group(group, member, FETCH_RECORDS_MAX, FETCH_BYTES_MAX, wait)
                    .await?;
                let generation = fetched.membership.generation;
                Ok(GroupFetched { records: fetched.records.len() as u64, generation })
            }
            Target::Server(http) => {
                #[derive(Deserialize)]
                struct Fetched {
                    records: Vec<IgnoredAny>,
                    generation: u64,
                }
                let path = format!(
                    "/v1/groups/{group}/members/{member}/records?max_records={FETCH_RECORDS_MAX}\
                     &max_bytes={FETCH_BYTES_MAX}&wait_ms={}",
                    wait.as_millis()
                );
                let fetched: Fetched = http.call(Method::GET, &path, Bytes::new()).await?;
                let generation = fetched.generation;
                Ok(GroupFetched { records: fetched.records.len() as u64, generation })
            }
        }
    }

    /// Commits the positions `member`'s fetches reached; returns after they are fsynced.
    pub async fn commit(&self, group: &str, member: &str, generation: u64) -> anyhow::Result<()> {
        match self {
            Target::Embedded(engine) => {
                let engine = engine.clone();
                let (group, member) = (group.to_owned(), member.to_owned());
                blocking(move || engine.commit_group(&group, &member, generation, None).map(drop))
                    .await
            }
            Target::Server(http) => {
                let body = Bytes::from(format!("{{\"generation\":{generation}}}"));
                let path = format!("/v1/groups/{group}/members/{member}/commit");
                http.send(Method::POST, &path, body).await.map(drop)
            }
        }
    }

    /// Leaves `group`.
    pub async fn leave(&self, group: &str, member: &str) -> anyhow::Result<()> {
        match self {
            Target::Embedded(engine) => {
                let engine = engine.clone();
                let (group, member) = (group.to_owned(), member.to_owned());
                blocking(move || engine.leave_group(&group, &member)).await
            }
            Target::Server(http) => {
                let path = format!("/v1/groups/{group}/members/{member}");
                http.send(Method::DELETE, &path, Bytes::new()).await.map(drop)
            }
        }
    }

    /// Fetches up to [`FETCH_RECORDS_MAX`] records of `topic`/`partition` from `offset`,
    /// without waiting. The engine returns whole batches; like the server, this decodes them
    /// and keeps the records from `offset` on, at most [`FETCH_RECORDS_MAX`].
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> anyhow::Result<PartitionFetched> {
        match self {
            Target::Embedded(engine) => {
                let fetched =
                    engine.fetch(topic, partition, offset, FETCH_BYTES_MAX, Duration::ZERO).await?;
                let mut records = fetched.records_from(offset).context("decoding a fetch")?;
                records.truncate(FETCH_RECORDS_MAX);
                let next_offset = records.last().map_or(offset, |record| record.offset + 1);
                let high_watermark = fetched.high_watermark;
                Ok(PartitionFetched { records: records.len() as u64, next_offset, high_watermark })
            }
            Target::Server(http) => {
                #[derive(Deserialize)]
                struct Fetched {
                    records: Vec<IgnoredAny>,
                    next_offset: u64,
                    high_watermark: u64,
                }
                let path = format!(
                    "/v1/topics/{topic}/partitions/{partition}/records?offset={offset}\
                     &max_records={FETCH_RECORDS_MAX}&max_bytes={FETCH_BYTES_MAX}"
                );
                let fetched: Fetched = http.call(Method::GET, &path, Bytes::new()).await?;
                let records = fetched.records.len() as u64;
                let (next_offset, high_watermark) = (fetched.next_offset, fetched.high_watermark);
                Ok(PartitionFetched { records, next_offset, high_watermark })
            }
        }
    }
}

/// The targets of a run and what they need kept alive until the end.
pub struct Targets {
    pub list: Vec<Target>,
    /// How the server was found, for the facts printed before the table.
    pub server: Option<String>,
    pub engine: Option<Engine>,
    /// Dropped (killed) before `directories`, which holds its data.
    pub process: Option<ServerProcess>,
    pub directories: Vec<ScratchDir>,
}

impl Targets {
    /// Opens the engine on `<root>/embedded` and reaches the server: `server` if given, else a
    /// new one on `<root>/server`.
    pub fn open(choice: BenchTarget, server: Option<&str>, root: &Path) -> anyhow::Result<Targets> {
        let mut targets = Targets {
            list: Vec::new(),
            server: None,
            engine: None,
            process: None,
            directories: Vec::new(),
        };
        if matches!(choice, BenchTarget::Embedded | BenchTarget::Both) {
            let dir = ScratchDir::create(root.join("embedded"))?;
            let engine = Engine::open(dir.path())
                .with_context(|| format!("opening the engine in {}", dir.path().display()))?;
            targets.directories.push(dir);
            targets.list.push(Target::Embedded(engine.clone()));
            targets.engine = Some(engine);
        }
        if matches!(choice, BenchTarget::Server | BenchTarget::Both) {
            let base = match server {
                Some(url) => {
                    targets.server = Some(format!("{url} (given)"));
                    url.to_owned()
                }
                None => {
                    let dir = ScratchDir::create(root.join("server"))?;
                    let process = ServerProcess::start(dir.path())?;
                    let base = process.base().to_owned();
                    targets.server = Some(format!("{base} (started by the bench: sluice serve)"));
                    targets.directories.push(dir);
                    targets.process = Some(process);
                    base
                }
            };
            targets.list.push(Target::Server(HttpClient::new(&base)));
        }
        Ok(targets)
    }

    /// Syncs and closes the engine, then stops the started server and removes the directories.
    pub async fn close(mut self) -> anyhow::Result<()> {
        self.list.clear();
        if let Some(engine) = self.engine.take() {
            tokio::task::spawn_blocking(move || engine.shutdown())
                .await
                .context("closing the engine")?
                .context("syncing the engine at the end")?;
        }
        drop(self.process.take());
        Ok(())
    }
}
