//! Consumer groups in queue mode: any member may receive any message of the group's topics.
//! Each delivery is leased until an ack deadline; `ack`, `nack` (optionally delayed), `reject`
//! and `extend` settle or prolong it; an expired lease counts as a failed delivery. Failed
//! deliveries are retried with exponential backoff and jitter, and after `deliveries_max`
//! deliveries the message goes to the dead-letter topic with its history as headers.
//!
//! Durable state is a per-group journal log (`<data>/queues/<group>/journal-<generation>/`):
//! every transition (delivered, failed, extended, acked, dead-lettered, released) is appended
//! before the caller hears of it, and a checkpoint of the whole state starts a new journal
//! generation every [`journal::CHECKPOINT_EVENTS`] events, so start-up replays at most one
//! checkpoint and the events after it. Messages themselves are never copied: the group reads
//! them from the topic's partitions into a bounded window.
//!
//! See `docs/queues.md` for the decisions.

pub mod config;
pub mod dlq;
pub(crate) mod journal;
pub mod state;

pub use config::{Ordering, QueueConfig, QueueStart};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::engine::Engine;
use crate::error::{EngineOpenError, QueueError};
use crate::fetch::FETCH_WAIT_MAX;
use crate::group::assignment::TopicPartition;
use crate::group::lock;
use crate::metadata::now_ms;
use crate::names::{validate_group_name, validate_topic_name};
use crate::records::{decode_batches, StoredRecord};
use journal::{Durable, Journal, QUEUES_DIR};
use state::{Event, QueueState, SettleRefused};

pub use state::{Action, Counts, DeadLetterJob, History, Totals};

/// What one pass of a lease produced: deliveries, dead-letter jobs, and the next timer.
type LeaseStep = (Vec<Delivery>, Vec<DeadLetterJob>, Option<i64>, Option<Durable>);

/// Where a lease or settle step runs. Inline, on the request's task, when all it does is in
/// memory plus a write into the journal's page cache (no thread hop per request: measured
/// 5-10% more deliver+ack at 4 and 16 workers over HTTP, `docs/benchmarks.md`). On the blocking pool when it
/// must read a topic's log to fill the window or write a checkpoint of the journal, or when
/// the group's lock is held (possibly by such a step: an async worker must not wait for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Inline,
    Blocking,
}

/// Longest member name a lease may give (bytes): member names key the per-member lease counts.
pub const MEMBER_NAME_BYTES_MAX: usize = 256;
/// Most messages one lease request may return.
pub const LEASE_MAX: u32 = 1_000;
/// Most delivery ids one settle request may carry.
pub const SETTLE_MAX: usize = 10_000;
/// Bytes read from a partition per window fill.
const FILL_READ_BYTES: u32 = 1024 * 1024;

/// A leased message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The id to settle it with: `topic/partition/offset/delivery`.
    pub id: String,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// Its delivery count, this one included (1 on the first delivery).
    pub deliveries: u32,
    /// When the lease ends (ms since the epoch) unless extended.
    pub deadline_ms: i64,
    /// The record, shared with the group's window.
    pub record: Arc<StoredRecord>,
}

/// What settling one delivery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettleDone {
    /// The delivery id.
    pub id: String,
    /// The new deadline, after an extend.
    pub deadline_ms: Option<i64>,
    /// Where the message went, if it was dead-lettered: (topic, partition, offset).
    pub dead_lettered: Option<(String, u32, u64)>,
}

/// One partition of a queue group, as described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuePartition {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// Every offset below it is acked or dead-lettered.
    pub ack_floor: u64,
    /// The next offset the group reads into its window.
    pub read_position: u64,
    /// The partition's high watermark.
    pub high_watermark: u64,
    /// Messages open in the window (loaded, leased, waiting).
    pub open: u64,
    /// Keys parked after their message went to the dead-letter topic.
    pub parked_keys: Vec<Vec<u8>>,
}

/// A queue group as described.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDescription {
    /// The group's name.
    pub name: String,
    /// Its settings.
    pub config: QueueConfig,
    /// What its messages are doing now.
    pub counts: Counts,
    /// Counters since the engine opened.
    pub totals: Totals,
    /// Per partition.
    pub partitions: Vec<QueuePartition>,
    /// Messages held per member, by member name.
    pub members: BTreeMap<String, u32>,
}

pub(crate) struct QueueGroup {
    name: String,
    inner: Mutex<GroupInner>,
    /// Woken when messages may have become deliverable (a nack, an ack freeing room).
    changed: Notify,
}

struct GroupInner {
    state: QueueState,
    journal: Journal,
    random: u64,
    broken: Option<String>,
    /// Set (to the group's name) when the group is deleted: requests still holding it get
    /// "unknown queue group".
    deleted: Option<String>,
}

/// A uniform number in `[0, 1)` from an xorshift64* generator: jitter needs spread, not
/// cryptographic quality.
fn next_unit(random: &mut u64) -> f64 {
    *random ^= *random >> 12;
    *random ^= *random << 25;
    *random ^= *random >> 27;
    (random.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
}

impl GroupInner {
    /// Journals events appended by the caller's decisions; returns what to wait on.
    fn journal(&mut self, events: &[Event]) -> Result<Option<Durable>, QueueError> {
        if let Some(name) = &self.deleted {
            return Err(QueueError::UnknownQueue(name.clone()));
        }
        if let Some(reason) = &self.broken {
            return Err(QueueError::Storage(reason.clone()));
        }
        self.journal.append(events).map_err(|error| {
            let reason = format!("queue journal: {error}");
            self.broken = Some(reason.clone());
            QueueError::Storage(reason)
        })
    }

    fn maybe_checkpoint(&mut self) {
        if self.journal.wants_checkpoint() && self.broken.is_none() {
            if let Err(error) = self.journal.checkpoint(&self.state) {
                tracing::error!(%error, "queue journal checkpoint failed; the old generation stays in use");
            }
        }
    }
}

/// The group's state for a step: an inline step takes the lock only if it is free (`None`
/// otherwise, and the step goes to the blocking pool); a blocking step waits for it.
fn lock_for(group: &QueueGroup, step: Step) -> Option<std::sync::MutexGuard<'_, GroupInner>> {
    match step {
        Step::Blocking => Some(lock(&group.inner)),
        Step::Inline => match group.inner.try_lock() {
            Ok(guard) => Some(guard),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        },
    }
}

/// Waits for journaled events without holding a thread (see [`Durable::wait_async`]); a failed
/// fsync breaks the group (its journal is poisoned until restart), so no later request is told
/// something the disk may not hold.
async fn durable_async(group: &QueueGroup, durable: Durable) -> Result<(), QueueError> {
    durable.wait_async().await.map_err(|error| {
        let reason = format!("queue journal: {error}");
        lock(&group.inner).broken.get_or_insert_with(|| reason.clone());
        QueueError::Storage(reason)
    })
}

/// Checks a settle request's size and nack delays, and cuts error texts to
/// [`dlq::ERROR_BYTES_MAX`].
fn checked_settle_items(items: Vec<(String, Action)>) -> Result<Vec<(String, Action)>, QueueError> {
    if items.is_empty() || items.len() > SETTLE_MAX {
        return Err(QueueError::Invalid(format!(
            "a settle request carries {} ids; allowed is 1..={SETTLE_MAX}",
            items.len()
        )));
    }
    for (_, action) in &items {
        if let Action::Nack { delay_ms: Some(delay), .. } = action {
            if *delay > config::BACKOFF_MS_MAX {
                return Err(QueueError::Invalid(format!(
                    "delay_ms is {delay}; allowed is 0..={}",
                    config::BACKOFF_MS_MAX
                )));
            }
        }
    }
    Ok(items
        .into_iter()
        .map(|(id, action)| {
            let cut = |error: Option<String>| {
                error.map(|text| dlq::tail(&text, dlq::ERROR_BYTES_MAX).to_owned())
            };
            let action = match action {
                Action::Nack { delay_ms, error } => Action::Nack { delay_ms, error: cut(error) },
                Action::Reject { error } => Action::Reject { error: cut(error) },
                other => other,
            };
            (id, action)
        })
        .collect())
}

/// Checks a lease's `max` and member name.
fn check_lease_args(member: &str, max: u32) -> Result<(), QueueError> {
    if !(1..=LEASE_MAX).contains(&max) {
        return Err(QueueError::Invalid(format!("max is {max}; allowed is 1..={LEASE_MAX}")));
    }
    if member.len() > MEMBER_NAME_BYTES_MAX {
        return Err(QueueError::Invalid(format!(
            "member name is {} bytes; allowed is up to {MEMBER_NAME_BYTES_MAX}",
            member.len()
        )));
    }
    Ok(())
}

fn seed(name: &str) -> u64 {
    let mut seed = u64::try_from(now_ms()).unwrap_or(1) | 1;
    for byte in name.bytes() {
        seed = seed.rotate_left(5) ^ u64::from(byte);
    }
    seed | 1
}

/// Every queue group.
pub(crate) struct Queues {
    dir: PathBuf,
    groups: Mutex<BTreeMap<String, Arc<QueueGroup>>>,
    /// Held for the whole of a create (dead-letter topics, journal fsync), so the map itself is
    /// only ever locked briefly.
    creating: Mutex<()>,
    pub marks: dlq::Marks,
}

impl std::fmt::Debug for Queues {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Queues").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl Queues {
    /// Opens every queue group under `data_dir/queues` and the dead-letter marks.
    pub fn open(data_dir: &Path) -> Result<Self, EngineOpenError> {
        let dir = data_dir.join(QUEUES_DIR);
        let io_error = |source| EngineOpenError::Io { path: dir.clone(), source };
        std::fs::create_dir_all(&dir).map_err(io_error)?;
        let mut groups = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).map_err(io_error)? {
            let entry = entry.map_err(io_error)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".deleted-") {
                std::fs::remove_dir_all(entry.path()).map_err(io_error)?;
                continue;
            }
            let Some((journal, state)) = Journal::open(&entry.path())? else { continue };
            let inner =
                GroupInner { state, journal, random: seed(&name), broken: None, deleted: None };
            let group =
                QueueGroup { name: name.clone(), inner: Mutex::new(inner), changed: Notify::new() };
            groups.insert(name, Arc::new(group));
        }
        let marks = dlq::Marks::open(data_dir)?;
        Ok(Self { dir, groups: Mutex::new(groups), creating: Mutex::new(()), marks })
    }

    fn get(&self, name: &str) -> Result<Arc<QueueGroup>, QueueError> {
        lock(&self.groups)
            .get(name)
            .cloned()
            .ok_or_else(|| QueueError::UnknownQueue(name.to_owned()))
    }

    /// Syncs every journal.
    pub fn shutdown(&self) -> Result<(), sluice_log::MaintenanceError> {
        let groups: Vec<Arc<QueueGroup>> = lock(&self.groups).values().cloned().collect();
        let mut first = Ok(());
        for group in groups {
            let inner = lock(&group.inner);
            if let Err(error) = inner.journal.shutdown() {
                if first.is_ok() {
                    first = Err(error);
                }
            }
        }
        first.and(self.marks.shutdown())
    }
}

impl Engine {
    /// Creates a queue group. Creating one that exists with the same settings returns it;
    /// with other settings it is refused. Each topic's dead-letter topic is created if missing
    /// (one partition, no dedup window, so two groups' dead letters of one message both land).
    /// Blocks until the group's journal is fsynced.
    ///
    /// # Errors
    /// [`QueueError::Name`], [`QueueError::Config`], [`QueueError::UnknownTopic`],
    /// [`QueueError::Exists`], [`QueueError::Storage`].
    pub fn create_queue(
        &self,
        name: &str,
        mut config: QueueConfig,
    ) -> Result<QueueDescription, QueueError> {
        validate_group_name(name)?;
        if name.starts_with('.') {
            return Err(QueueError::Config(format!(
                "queue group name '{name}' starts with '.'; queue group names must start with a letter, digit, '_' or '-'"
            )));
        }
        config.validate().map_err(QueueError::Config)?;
        config.topics.sort();
        config.topics.dedup();
        let mut starts = Vec::new();
        for topic_name in &config.topics {
            let topic = self
                .topic(topic_name)
                .ok_or_else(|| QueueError::UnknownTopic(topic_name.clone()))?;
            let dead_letter_topic = config.dead_letter_topic_for(topic_name);
            validate_topic_name(&dead_letter_topic).map_err(|error| {
                QueueError::Config(format!("dead-letter topic of '{topic_name}': {error}"))
            })?;
            if dead_letter_topic == *topic_name {
                return Err(QueueError::Config(format!(
                    "topic '{topic_name}' cannot be its own dead-letter topic"
                )));
            }
            for (partition, handle) in topic.partitions.iter().enumerate() {
                let offset = match config.start {
                    QueueStart::Earliest => handle.log.log_start_offset(),
                    QueueStart::Latest => handle.log.high_watermark(),
                };
                let partition = u32::try_from(partition).expect("at most PARTITIONS_MAX");
                starts.push(Event::Started {
                    tp: TopicPartition { topic: topic_name.clone(), partition },
                    offset,
                });
            }
        }
        let _creating = lock(&self.inner.queues.creating);
        let existing = lock(&self.inner.queues.groups).get(name).cloned();
        if let Some(existing) = existing {
            let differing = differing_settings(lock(&existing.inner).state.config(), &config);
            return if differing.is_empty() {
                self.describe_queue(name)
            } else {
                Err(QueueError::Exists { group: name.to_owned(), differing: differing.join(", ") })
            };
        }
        for topic_name in &config.topics {
            self.ensure_dead_letter_topic(&config.dead_letter_topic_for(topic_name))?;
        }
        let group_dir = self.inner.queues.dir.join(name);
        let created = Journal::create(&group_dir, &config).and_then(|mut journal| {
            let durable = journal.append(&starts).map_err(|error| error.to_string())?;
            if let Some(durable) = durable {
                durable.wait().map_err(|error| error.to_string())?;
            }
            Ok(journal)
        });
        let journal = match created {
            Ok(journal) => journal,
            Err(error) => {
                // Leave no half-made group to be found at the next open.
                let _ = std::fs::remove_dir_all(&group_dir);
                return Err(QueueError::Storage(error));
            }
        };
        let mut state = QueueState::new(config);
        for event in &starts {
            state.apply(event);
        }
        let inner = GroupInner { state, journal, random: seed(name), broken: None, deleted: None };
        let group =
            QueueGroup { name: name.to_owned(), inner: Mutex::new(inner), changed: Notify::new() };
        lock(&self.inner.queues.groups).insert(name.to_owned(), Arc::new(group));
        tracing::info!(group = name, "queue group created");
        self.describe_queue(name)
    }

    pub(crate) fn ensure_dead_letter_topic(&self, name: &str) -> Result<(), QueueError> {
        if self.topic(name).is_some() {
            return Ok(());
        }
        // The largest record any topic may hold, so a message of any topic fits with its
        // history headers (up to the last ~5 KiB below the limit).
        let config = crate::TopicConfig {
            partitions: 1,
            dedup_window_ms: 0,
            record_bytes_max: crate::RECORD_BYTES_LIMIT,
            ..crate::TopicConfig::default()
        };
        match self.create_topic(name, config) {
            Ok(_) | Err(crate::TopicError::Exists(_)) => Ok(()),
            Err(error) => {
                Err(QueueError::Storage(format!("creating dead-letter topic '{name}': {error}")))
            }
        }
    }

    /// Deletes a queue group and its journal. Its dead-letter topics stay.
    ///
    /// # Errors
    /// [`QueueError::UnknownQueue`], [`QueueError::Storage`].
    pub fn delete_queue(&self, name: &str) -> Result<(), QueueError> {
        let _creating = lock(&self.inner.queues.creating);
        let group = lock(&self.inner.queues.groups)
            .remove(name)
            .ok_or_else(|| QueueError::UnknownQueue(name.to_owned()))?;
        let mut inner = lock(&group.inner);
        inner.deleted = Some(name.to_owned());
        let _ = inner.journal.shutdown();
        let dir = self.inner.queues.dir.join(name);
        let aside = self.inner.queues.dir.join(format!(".deleted-{name}-{}", std::process::id()));
        std::fs::rename(&dir, &aside)
            .and_then(|()| std::fs::remove_dir_all(&aside))
            .map_err(|error| QueueError::Storage(format!("removing {}: {error}", dir.display())))?;
        group.changed.notify_waiters();
        tracing::info!(group = name, "queue group deleted");
        Ok(())
    }

    /// Every queue group.
    pub fn list_queues(&self) -> Vec<QueueDescription> {
        let names: Vec<String> = lock(&self.inner.queues.groups).keys().cloned().collect();
        names.iter().filter_map(|name| self.describe_queue(name).ok()).collect()
    }

    /// One queue group: settings, counts, per-partition floors and parked keys.
    ///
    /// # Errors
    /// [`QueueError::UnknownQueue`].
    pub fn describe_queue(&self, name: &str) -> Result<QueueDescription, QueueError> {
        let group = self.inner.queues.get(name)?;
        let inner = lock(&group.inner);
        let partitions = inner
            .state
            .parts()
            .into_iter()
            .map(|part| QueuePartition {
                high_watermark: self
                    .topic(&part.tp.topic)
                    .and_then(|topic| {
                        topic
                            .partitions
                            .get(part.tp.partition as usize)
                            .map(|handle| handle.log.high_watermark())
                    })
                    .unwrap_or(0),
                topic: part.tp.topic,
                partition: part.tp.partition,
                ack_floor: part.ack_floor,
                read_position: part.read_position,
                open: part.open,
                parked_keys: part.parked_keys,
            })
            .collect();
        Ok(QueueDescription {
            name: name.to_owned(),
            config: inner.state.config().clone(),
            counts: inner.state.counts(),
            totals: inner.state.totals(),
            partitions,
            members: inner.state.member_leases(),
        })
    }

    /// Leases up to `max` messages of queue group `name` to `member`, waiting up to `wait` (at
    /// most 30 s) for one to become deliverable. Returns once the deliveries are journaled
    /// (fsynced). Leases that expired are turned into retries or dead letters first.
    ///
    /// # Errors
    /// [`QueueError::UnknownQueue`], [`QueueError::Invalid`] (max out of range),
    /// [`QueueError::Storage`].
    pub async fn lease(
        &self,
        name: &str,
        member: &str,
        max: u32,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        check_lease_args(member, max)?;
        let group = self.inner.queues.get(name)?;
        self.lease_in(&group, member, max, wait, None).await
    }

    /// The lease loop. `earlier`: journal records of this caller (a settle) still to be
    /// durable before anything is answered.
    async fn lease_in(
        &self,
        group: &Arc<QueueGroup>,
        member: &str,
        max: u32,
        wait: Duration,
        mut earlier: Option<Durable>,
    ) -> Result<Vec<Delivery>, QueueError> {
        let until = Instant::now() + wait.min(FETCH_WAIT_MAX);
        let mut appended = self.subscribe_appends();
        loop {
            let changed = group.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            appended.borrow_and_update();
            let engine = self.clone();
            let member_name = member.to_owned();
            // Most steps find the messages in the group's window and run here; one that must
            // read the topic's log or write a checkpoint runs on the blocking pool.
            let step_group = Arc::clone(group);
            let step = match engine.lease_step(group, member, max as usize, Step::Inline)? {
                Some(step) => step,
                None => tokio::task::spawn_blocking(move || {
                    engine.lease_step(&step_group, &member_name, max as usize, Step::Blocking)
                })
                .await
                .expect("a lease step does not panic")?
                .expect("a blocking step always runs"),
            };
            let (deliveries, jobs, next_timer, durable) = step;
            // The step's records follow the earlier ones in the journal, so one group commit
            // usually covers both and the second wait finds it done.
            let settled_earlier = earlier.is_some();
            for durable in [durable, earlier.take()].into_iter().flatten() {
                durable_async(group, durable).await?;
            }
            if settled_earlier {
                // As `settle` does once its records are durable: waiting leases may now find
                // room (`max_in_flight`) or a key no longer held back.
                group.changed.notify_waiters();
            }
            let jobs = jobs.into_iter().map(|job| (None, job)).collect();
            self.run_dead_letters(group, jobs).await;
            let now = Instant::now();
            if !deliveries.is_empty() || now >= until {
                return Ok(deliveries);
            }
            let mut sleep_until = until;
            if let Some(at_ms) = next_timer {
                let in_ms = u64::try_from(at_ms.saturating_sub(now_ms())).unwrap_or(0);
                sleep_until = sleep_until.min(now + Duration::from_millis(in_ms + 1));
            }
            tokio::select! {
                () = tokio::time::sleep_until(sleep_until.into()) => {}
                _ = appended.changed() => {}
                () = &mut changed => {}
            }
        }
    }

    /// One pass of a lease, under the group's lock: expire, fill the window, choose, journal.
    /// The caller waits for the journal (outside the lock, without a thread) before it hands
    /// the deliveries out. `Ok(None)`: an inline step that would block (see [`Step`]); nothing
    /// was changed.
    fn lease_step(
        &self,
        group: &QueueGroup,
        member: &str,
        max: usize,
        step: Step,
    ) -> Result<Option<LeaseStep>, QueueError> {
        let (chosen, next_timer, durable) = {
            let Some(mut guard) = lock_for(group, step) else { return Ok(None) };
            let inner = &mut *guard;
            if step == Step::Inline && self.step_would_block(inner, Some(max)) {
                return Ok(None);
            }
            let now = now_ms();
            // After a restart, messages the journal named are read back first, so an expired
            // lease on its last delivery has its record and can go to the dead-letter topic.
            let mut events = self.fill_window(&mut inner.state, None, step);
            let jobs = {
                let GroupInner { state, random, .. } = inner;
                let mut unit = || next_unit(random);
                let (expired, jobs) = state.expire(now, &mut unit);
                events.extend(expired);
                jobs
            };
            events.extend(self.fill_window(&mut inner.state, Some(max), step));
            let (delivered, chosen) = inner.state.deliver(now, member, max);
            events.extend(delivered);
            let next_timer = inner.state.next_timer_ms();
            let durable = inner.journal(&events)?;
            if step == Step::Blocking {
                inner.maybe_checkpoint();
            }
            ((chosen, jobs), next_timer, durable)
        };
        let (chosen, jobs) = chosen;
        let deliveries = chosen
            .into_iter()
            .map(|chosen| Delivery {
                id: state::delivery_id(&chosen.tp, chosen.record.offset, chosen.deliveries),
                topic: chosen.tp.topic,
                partition: chosen.tp.partition,
                deliveries: chosen.deliveries,
                deadline_ms: chosen.deadline_ms,
                record: chosen.record,
            })
            .collect();
        Ok(Some((deliveries, jobs, next_timer, durable)))
    }

    /// Whether a step would block the thread it runs on: read a topic's log to fill the
    /// window (`wanted` ready messages; `None`: only messages the journal named after a
    /// restart), or write a checkpoint of the journal.
    fn step_would_block(&self, inner: &GroupInner, wanted: Option<usize>) -> bool {
        let state = &inner.state;
        let readable = |catch_up_only: bool| {
            state.wants_load(catch_up_only).into_iter().any(|(tp, cursor)| {
                self.topic(&tp.topic)
                    .and_then(|topic| {
                        let handle = topic.partitions.get(tp.partition as usize)?;
                        Some(cursor != handle.log.high_watermark())
                    })
                    .unwrap_or(false)
            })
        };
        // A partition the group has not seen yet is read from its start.
        let unseen = state.config().topics.iter().any(|name| {
            self.topic(name).is_some_and(|topic| {
                (0..topic.partitions.len()).any(|partition| {
                    let partition = u32::try_from(partition).expect("at most PARTITIONS_MAX");
                    !state.has_partition(&TopicPartition { topic: name.clone(), partition })
                })
            })
        });
        inner.journal.wants_checkpoint()
            || unseen
            || readable(true)
            || wanted.is_some_and(|wanted| state.counts().ready < wanted as u64 && readable(false))
    }

    /// Reads records into the group's window until `wanted` messages are ready or the logs are
    /// caught up; with `None`, only reloads messages the journal named (after a restart).
    /// Returns `Started` events for partitions the group had not seen or whose topic was
    /// recreated.
    fn fill_window(&self, state: &mut QueueState, wanted: Option<usize>, step: Step) -> Vec<Event> {
        let mut events = Vec::new();
        for topic_name in state.config().topics.clone() {
            let Some(topic) = self.topic(&topic_name) else { continue };
            for (partition, handle) in topic.partitions.iter().enumerate() {
                let tp = TopicPartition {
                    topic: topic_name.clone(),
                    partition: u32::try_from(partition).expect("at most PARTITIONS_MAX"),
                };
                if !state.has_partition(&tp) {
                    // A partition the group has not seen (its topic was created after the group,
                    // or recreated with more partitions): read it from its start.
                    let event = Event::Started { tp, offset: handle.log.log_start_offset() };
                    state.apply(&event);
                    events.push(event);
                }
            }
        }
        loop {
            if wanted.is_some_and(|wanted| state.counts().ready >= wanted as u64) {
                break;
            }
            let mut progressed = false;
            for (tp, cursor) in state.wants_load(wanted.is_none()) {
                let Some(topic) = self.topic(&tp.topic) else { continue };
                let Some(handle) = topic.partitions.get(tp.partition as usize) else { continue };
                let high_watermark = handle.log.high_watermark();
                if cursor > high_watermark {
                    // The topic was deleted and created again: its offsets restarted.
                    tracing::warn!(topic = %tp.topic, partition = tp.partition, cursor, high_watermark, "queue group restarts a partition whose offsets went back");
                    let event = Event::Started { tp, offset: handle.log.log_start_offset() };
                    state.apply(&event);
                    events.push(event);
                    progressed = true;
                    continue;
                }
                // An inline step never reads: records committed after its check wait for the
                // next step, which reads them on the blocking pool.
                if cursor == high_watermark || step == Step::Inline {
                    continue;
                }
                match handle.log.read(cursor, FILL_READ_BYTES) {
                    Ok(read) => match decode_batches(&read.batches, cursor) {
                        Ok(records) if !records.is_empty() => {
                            state.load(&tp, records);
                            progressed = true;
                        }
                        Ok(_) => {}
                        Err(error) => {
                            tracing::error!(topic = %tp.topic, partition = tp.partition, %error, "queue window: undecodable batch")
                        }
                    },
                    Err(sluice_log::ReadError::OffsetOutOfRange { log_start_offset, .. })
                        if cursor < log_start_offset =>
                    {
                        let lost = state.skip_to(&tp, log_start_offset);
                        tracing::warn!(topic = %tp.topic, partition = tp.partition, lost, log_start_offset, "retention removed messages the queue group had not settled");
                        progressed = true;
                    }
                    Err(error) => {
                        tracing::error!(topic = %tp.topic, partition = tp.partition, %error, "queue window: read failed")
                    }
                }
            }
            if !progressed {
                break;
            }
        }
        events
    }

    /// Settles deliveries of queue group `name`. Each id gets its own outcome; the batch is
    /// journaled (fsynced) before this returns. A nack past `deliveries_max` and a reject go to
    /// the dead-letter topic before their outcome is returned.
    ///
    /// # Errors
    /// [`QueueError::UnknownQueue`], [`QueueError::Invalid`] (too many ids),
    /// [`QueueError::Storage`]; per id, [`QueueError::UnknownDelivery`] and
    /// [`QueueError::NotLeased`].
    pub async fn settle(
        &self,
        name: &str,
        items: Vec<(String, Action)>,
    ) -> Result<Vec<Result<SettleDone, QueueError>>, QueueError> {
        let items = checked_settle_items(items)?;
        let group = self.inner.queues.get(name)?;
        let (outcomes, jobs, durable) = self.settle_pass(&group, items).await?;
        if let Some(durable) = durable {
            durable_async(&group, durable).await?;
        }
        Ok(self.finish_settle(&group, outcomes, jobs).await)
    }

    /// Settles `items` (acks) and then leases up to `max` messages for `member`, in one call:
    /// NATS's "ack next". The acks and the deliveries are journaled one after the other and
    /// their fsync is awaited together, so a worker that settles and asks for more usually pays
    /// one round trip and one journal sync instead of two. When the settle has dead-letter work
    /// (a reject, or another member's expired last delivery found on the way), it is finished
    /// first, as [`Engine::settle`] does, and the lease follows with its own sync. Nothing is
    /// settled if the lease arguments are out of range; a delivery id that cannot be settled is
    /// reported in its outcome and does not stop the lease. An error from the lease (the group
    /// deleted or broken meanwhile) is returned although the acks may have been applied.
    ///
    /// # Errors
    /// As [`Engine::settle`] and [`Engine::lease`].
    pub async fn settle_and_lease(
        &self,
        name: &str,
        items: Vec<(String, Action)>,
        member: &str,
        max: u32,
        wait: Duration,
    ) -> Result<(Vec<Result<SettleDone, QueueError>>, Vec<Delivery>), QueueError> {
        check_lease_args(member, max)?;
        let items = checked_settle_items(items)?;
        let group = self.inner.queues.get(name)?;
        let (outcomes, jobs, durable) = self.settle_pass(&group, items).await?;
        if !jobs.is_empty() {
            // A reject (or an expired last delivery) goes to its dead-letter topic before its
            // answer; keep the plain order: settle durably, then lease.
            if let Some(durable) = durable {
                durable_async(&group, durable).await?;
            }
            let outcomes = self.finish_settle(&group, outcomes, jobs).await;
            let deliveries = self.lease_in(&group, member, max, wait, None).await?;
            return Ok((outcomes, deliveries));
        }
        let deliveries = self.lease_in(&group, member, max, wait, durable).await?;
        Ok((outcomes, deliveries))
    }

    /// The settle step, on this task if it can run without blocking, else on the blocking pool.
    async fn settle_pass(
        &self,
        group: &Arc<QueueGroup>,
        items: Vec<(String, Action)>,
    ) -> Result<SettleStep, QueueError> {
        let engine = self.clone();
        let step_group = Arc::clone(group);
        Ok(match engine.settle_step(group, items, Step::Inline)? {
            Ok(step) => step,
            Err(items) => tokio::task::spawn_blocking(move || {
                engine.settle_step(&step_group, items, Step::Blocking)
            })
            .await
            .expect("a settle step does not panic")?
            .unwrap_or_else(|_| unreachable!("a blocking step always runs")),
        })
    }

    /// After a settle's journal records are durable: runs its dead-letter jobs, puts where each
    /// landed into the outcomes, and wakes waiting leases.
    async fn finish_settle(
        &self,
        group: &Arc<QueueGroup>,
        mut outcomes: Vec<Result<SettleDone, QueueError>>,
        jobs: Jobs,
    ) -> Vec<Result<SettleDone, QueueError>> {
        let placed = self.run_dead_letters(group, jobs).await;
        for (index, result) in placed {
            let Some(index) = index else { continue };
            if let Some(Ok(done)) = outcomes.get_mut(index) {
                match result {
                    Ok(position) => done.dead_lettered = Some(position),
                    Err(error) => outcomes[index] = Err(error),
                }
            }
        }
        group.changed.notify_waiters();
        outcomes
    }

    /// One pass of a settle under the group's lock. `Ok(Err(items))`: an inline step that
    /// would block (see [`Step`]); nothing was changed, and the items are handed back.
    fn settle_step(
        &self,
        group: &QueueGroup,
        items: Vec<(String, Action)>,
        step: Step,
    ) -> Result<Result<SettleStep, Vec<(String, Action)>>, QueueError> {
        let Some(mut guard) = lock_for(group, step) else { return Ok(Err(items)) };
        let inner = &mut *guard;
        if step == Step::Inline && self.step_would_block(inner, None) {
            return Ok(Err(items));
        }
        let now = now_ms();
        // Messages named after a restart may not be loaded yet; leases past their deadline are
        // failures before anything is settled, so a late nack or extend is refused.
        let mut events = self.fill_window(&mut inner.state, None, step);
        let mut jobs: Vec<(Option<usize>, DeadLetterJob)> = {
            let GroupInner { state, random, .. } = &mut *inner;
            let mut unit = || next_unit(random);
            let (expired, jobs) = state.expire(now, &mut unit);
            events.extend(expired);
            jobs.into_iter().map(|job| (None, job)).collect()
        };
        let mut outcomes = Vec::with_capacity(items.len());
        let mut refused_settled = false;
        for (index, (id, action)) in items.into_iter().enumerate() {
            let GroupInner { state, random, .. } = &mut *inner;
            let mut unit = || next_unit(random);
            match state.settle(now, &id, &action, &mut unit) {
                Ok(settled) => {
                    events.extend(settled.events);
                    if let Some(job) = settled.dead_letter {
                        jobs.push((Some(index), job));
                    }
                    outcomes.push(Ok(SettleDone {
                        id,
                        deadline_ms: settled.deadline_ms,
                        dead_lettered: None,
                    }));
                }
                Err(refused) => outcomes.push(Err(match refused {
                    SettleRefused::Unknown(_) => QueueError::UnknownDelivery(refused.to_string()),
                    SettleRefused::Settled(_) | SettleRefused::Expired { .. } => {
                        refused_settled = true;
                        QueueError::NotLeased(refused.to_string())
                    }
                })),
            }
        }
        let mut durable = inner.journal(&events)?;
        if durable.is_none() && refused_settled {
            // "Settled already" may rest on another request's ack that is appended but not yet
            // fsynced: answer only once what the journal holds is durable.
            durable = inner.journal.durable_end();
        }
        if step == Step::Blocking {
            inner.maybe_checkpoint();
        }
        drop(guard);
        Ok(Ok((outcomes, jobs, durable)))
    }
}

/// Dead-letter jobs, each with the index of the settle item that caused it (`None` for an
/// expired lease).
type Jobs = Vec<(Option<usize>, DeadLetterJob)>;
/// Each job's outcome: where its dead letter landed.
type JobResults = Vec<(Option<usize>, Result<(String, u32, u64), QueueError>)>;
/// What one settle pass produced: per-item outcomes, the dead-letter jobs to run, and the
/// journal records to wait for before answering.
type SettleStep = (Vec<Result<SettleDone, QueueError>>, Jobs, Option<Durable>);

impl Engine {
    /// Runs dead-letter jobs in a task of their own, so a caller that goes away (a timed-out or
    /// closed request) cannot leave a message half-way to the dead-letter topic.
    async fn run_dead_letters(&self, group: &Arc<QueueGroup>, jobs: Jobs) -> JobResults {
        if jobs.is_empty() {
            return Vec::new();
        }
        let (engine, group) = (self.clone(), Arc::clone(group));
        tokio::spawn(async move { engine.dead_letter_jobs(&group, jobs).await })
            .await
            .expect("dead-letter jobs do not panic")
    }

    /// Writes each job's message to its dead-letter topic, then settles it in the group (or, if
    /// the write failed, schedules it to be tried again).
    async fn dead_letter_jobs(&self, group: &Arc<QueueGroup>, jobs: Jobs) -> JobResults {
        let mut results = Vec::new();
        for (index, job) in jobs {
            let config = lock(&group.inner).state.config().clone();
            let dead_letter_topic = config.dead_letter_topic_for(&job.tp.topic);
            let record = dlq::dead_letter_record(&group.name, &job);
            let engine = self.clone();
            let topic = dead_letter_topic.clone();
            let ensured =
                tokio::task::spawn_blocking(move || engine.ensure_dead_letter_topic(&topic))
                    .await
                    .expect("creating a topic does not panic");
            let written = match ensured {
                Ok(()) => self
                    .produce_internal(&dead_letter_topic, vec![record])
                    .await
                    .map_err(|error| error.to_string()),
                Err(error) => Err(error.to_string()),
            };
            let (event, result) = {
                let inner = lock(&group.inner);
                match written {
                    Ok(produced) => {
                        let event = inner.state.dead_lettered(&job);
                        (event, Ok((dead_letter_topic, produced[0].partition, produced[0].offset)))
                    }
                    Err(error) => {
                        let reason =
                            format!("writing to dead-letter topic '{dead_letter_topic}': {error}");
                        tracing::error!(group = %group.name, %reason, "dead letter not written; retrying later");
                        (
                            inner.state.dead_letter_failed(&job, now_ms(), reason.clone()),
                            Err(QueueError::Storage(reason)),
                        )
                    }
                }
            };
            let journaled = {
                let mut inner = lock(&group.inner);
                inner.state.apply(&event);
                inner.journal(std::slice::from_ref(&event))
            };
            let result = match journaled {
                Ok(Some(durable)) => match durable_async(group, durable).await {
                    Ok(()) => result,
                    Err(error) => Err(error),
                },
                Ok(None) => result,
                Err(error) => Err(error),
            };
            results.push((index, result));
        }
        results
    }
}

impl Engine {
    /// The dead-letter topic of `topic`: the one a queue group consuming it names, else
    /// `<topic>.dlq`. A topic that is itself a dead-letter topic of some group is its own answer,
    /// so doors may be given either name.
    pub fn dead_letter_topic_of(&self, topic: &str) -> String {
        let groups: Vec<Arc<QueueGroup>> =
            lock(&self.inner.queues.groups).values().cloned().collect();
        for group in groups {
            let inner = lock(&group.inner);
            let config = inner.state.config();
            if config.topics.iter().any(|name| name == topic) {
                return config.dead_letter_topic_for(topic);
            }
            if config.topics.iter().any(|name| config.dead_letter_topic_for(name) == topic) {
                return topic.to_owned();
            }
        }
        if topic.ends_with(".dlq") && self.topic(topic).is_some() {
            return topic.to_owned();
        }
        format!("{topic}.dlq")
    }
}

/// The settings in which two configurations differ, by name.
fn differing_settings(existing: &QueueConfig, wanted: &QueueConfig) -> Vec<String> {
    let as_map = |config: &QueueConfig| match serde_json::to_value(config) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let (existing, wanted) = (as_map(existing), as_map(wanted));
    existing
        .iter()
        .filter(|(name, value)| wanted.get(*name) != Some(value))
        .map(|(name, value)| {
            let wanted = wanted.get(name).map(ToString::to_string).unwrap_or_default();
            format!("{name} is {value}, asked {wanted}")
        })
        .collect()
}
