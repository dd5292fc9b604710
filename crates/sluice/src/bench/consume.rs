//! The consume workloads, on a topic already filled:
//! - a group: `concurrency` members of one new group, all joined before the clock starts, each
//!   fetching (up to 500 records) and committing after every fetch, until the group has
//!   consumed every record. Latency is per fetch that returned records; the commits are in the
//!   throughput but not in the latency.
//! - a plain read: one reader fetching each partition from offset 0 to its high watermark, in
//!   turn, with the plain fetch (no group, no commit).
//!
//! A member whose partitions are drained waits in a short long-poll until the others finish;
//! the clock stops when the last record is consumed, not when the last waiter notices.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use tokio::sync::Barrier;

use super::elapsed_ns;
use super::target::{Target, TOPIC_PARTITIONS};
use super::topic_bench::{TopicMeasurement, TopicSettings};

/// How long a member's fetch waits when its partitions have nothing: short, so drained members
/// notice the end soon; it is not in the measured time.
const GROUP_FETCH_WAIT: Duration = Duration::from_millis(100);

/// A topic, filled with `records` records, to consume.
#[derive(Debug, Clone, Copy)]
pub struct Filled<'a> {
    pub topic: &'a str,
    pub records: u64,
}

/// Consumes all of `filled` with `concurrency` members of the new group `group`, measured as
/// `name`.
///
/// # Errors
/// The first join, fetch, commit or leave that failed.
pub async fn group(
    name: String,
    target: &Target,
    filled: Filled<'_>,
    group: &str,
    concurrency: u32,
    settings: &TopicSettings,
) -> anyhow::Result<TopicMeasurement> {
    let mut members = Vec::with_capacity(concurrency as usize);
    for _ in 0..concurrency {
        members.push(target.join(group, filled.topic).await.context("joining")?);
    }
    let progress = Arc::new(Progress::new(filled.records));
    let start_line = Arc::new(Barrier::new(concurrency as usize + 1));
    let tasks: Vec<_> = members
        .iter()
        .map(|member| {
            let consumer = Consumer {
                target: target.clone(),
                group: group.to_owned(),
                member: member.clone(),
                progress: Arc::clone(&progress),
            };
            tokio::spawn(consumer.run(Arc::clone(&start_line)))
        })
        .collect();
    // The clock starts before the barrier lets the members go: taken after it, a member that
    // consumed everything before this task ran again would finish before the start.
    let start = Instant::now();
    start_line.wait().await;
    let mut latencies = Vec::new();
    let mut first_error = None;
    for task in tasks {
        match task.await.context("a consumer panicked")? {
            Ok(task_latencies) => latencies.extend(task_latencies),
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    if let Some(error) = first_error {
        return Err(error);
    }
    let elapsed = progress.finished_at().context("no consumer finished")? - start;
    for member in &members {
        target.leave(group, member).await.context("leaving")?;
    }
    let records = progress.consumed();
    let bytes = records * u64::from(settings.record_bytes);
    Ok(TopicMeasurement::new(name, (records, bytes), elapsed, latencies))
}

/// How much of the topic a group has consumed, shared by its members.
#[derive(Debug)]
struct Progress {
    consumed: AtomicU64,
    total: u64,
    /// When the consumed count first reached the total.
    finished_at: Mutex<Option<Instant>>,
    /// Set by a member that failed: the others stop too instead of waiting for its records.
    abandoned: AtomicBool,
}

impl Progress {
    fn new(total: u64) -> Progress {
        Progress {
            consumed: AtomicU64::new(0),
            total,
            finished_at: Mutex::new(None),
            abandoned: AtomicBool::new(false),
        }
    }

    fn add(&self, records: u64) {
        let before = self.consumed.fetch_add(records, Ordering::AcqRel);
        if before < self.total && before + records >= self.total {
            *self.finished_at.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) =
                Some(Instant::now());
        }
    }

    fn consumed(&self) -> u64 {
        self.consumed.load(Ordering::Acquire)
    }

    fn is_done(&self) -> bool {
        self.consumed() >= self.total || self.abandoned.load(Ordering::Acquire)
    }

    fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
    }

    fn finished_at(&self) -> Option<Instant> {
        *self.finished_at.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One member of the group.
struct Consumer {
    target: Target,
    group: String,
    member: String,
    progress: Arc<Progress>,
}

impl Consumer {
    /// Waits for the start, then fetches and commits until the group has consumed everything.
    /// Returns the latency of every fetch that returned records.
    async fn run(self, start_line: Arc<Barrier>) -> anyhow::Result<Vec<u64>> {
        start_line.wait().await;
        let consumed = self.consume().await;
        if consumed.is_err() {
            self.progress.abandon();
        }
        consumed
    }

    async fn consume(&self) -> anyhow::Result<Vec<u64>> {
        let mut latencies = Vec::new();
        while !self.progress.is_done() {
            let start = Instant::now();
            let fetched = self
                .target
                .fetch_group(&self.group, &self.member, GROUP_FETCH_WAIT)
                .await
                .with_context(|| format!("fetching as {}", self.member))?;
            if fetched.records == 0 {
                continue;
            }
            latencies.push(elapsed_ns(start));
            self.target
                .commit(&self.group, &self.member, fetched.generation)
                .await
                .with_context(|| format!("committing as {}", self.member))?;
            self.progress.add(fetched.records);
        }
        Ok(latencies)
    }
}

/// Reads every partition of `filled` from offset 0 to its high watermark, one partition after
/// the other, with plain fetches; measured as `name`.
///
/// # Errors
/// A failed fetch, one that makes no progress, or a record count other than `filled.records`.
pub async fn partitions(
    name: String,
    target: &Target,
    filled: Filled<'_>,
    settings: &TopicSettings,
) -> anyhow::Result<TopicMeasurement> {
    target.touch(filled.topic).await?;
    let mut latencies = Vec::new();
    let mut records = 0;
    let start = Instant::now();
    for partition in 0..TOPIC_PARTITIONS {
        let mut offset = 0;
        loop {
            let fetch_start = Instant::now();
            let fetched = target
                .fetch(filled.topic, partition, offset)
                .await
                .with_context(|| format!("fetching partition {partition} at {offset}"))?;
            latencies.push(elapsed_ns(fetch_start));
            records += fetched.records;
            if fetched.next_offset >= fetched.high_watermark {
                break;
            }
            ensure!(fetched.next_offset > offset, "a fetch at {offset} made no progress");
            offset = fetched.next_offset;
        }
    }
    let elapsed = start.elapsed();
    ensure!(records == filled.records, "read {records} records of {}", filled.records);
    let bytes = records * u64::from(settings.record_bytes);
    Ok(TopicMeasurement::new(name, (records, bytes), elapsed, latencies))
}
