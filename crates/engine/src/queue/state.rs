//! The queue group's state machine, without I/O: which messages are open, leased, waiting for a
//! retry or parked, and what each operation changes.
//!
//! Every change goes through [`QueueState::apply`] with an [`Event`]; the deciding functions
//! ([`QueueState::deliver`], [`QueueState::settle`], [`QueueState::expire`]) only return
//! events. The journal stores the same events, so replaying it after a restart runs the very code
//! that made the decisions. Time is always passed in (ms since the epoch): a test drives it by
//! hand.
//!
//! Per partition, offsets below `below` are either open (in `open`) or settled; offsets at or
//! above it are unknown to the group, except those the journal named (open entries and
//! `settled_above`). The group reads records from `cursor` into its window; an entry is
//! *loaded* (has its record) exactly when its offset is below `cursor`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::config::{Ordering, QueueConfig, WINDOW_BYTES_MAX, WINDOW_RECORDS_MAX};
use crate::group::assignment::TopicPartition;
use crate::records::StoredRecord;

/// The failure history of a message, carried into its dead letter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// How many times it was delivered.
    pub deliveries: u32,
    /// When its first delivery failed (ms since the epoch).
    pub first_failure_ms: Option<i64>,
    /// When its last delivery failed.
    pub last_failure_ms: Option<i64>,
    /// The last failure's error text.
    pub last_error: Option<String>,
}

/// Where a message is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum Phase {
    /// Deliverable (when its key allows): never delivered, or its retry time has come.
    Ready,
    /// Waiting for its retry time.
    Waiting {
        /// Not before this time.
        not_before_ms: i64,
    },
    /// Leased to a member until a deadline.
    Leased {
        /// The ack deadline.
        deadline_ms: i64,
        /// The member that holds it.
        member: String,
    },
    /// Being appended to the dead-letter topic (in memory only; never journaled).
    DeadLettering,
}

/// A journaled change of a queue group's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum Event {
    /// The group reads a partition from `offset` (at creation, or after its topic was recreated).
    Started {
        /// The partition.
        tp: TopicPartition,
        /// The first offset the group will deliver.
        offset: u64,
    },
    /// A delivery: the message's delivery count goes up by one and it is leased.
    Delivered {
        /// The partition.
        tp: TopicPartition,
        /// The message.
        offset: u64,
        /// The member it was leased to.
        member: String,
        /// The ack deadline.
        deadline_ms: i64,
    },
    /// A delivery failed (nack or expired lease): the message waits until `not_before_ms`.
    Failed {
        /// The partition.
        tp: TopicPartition,
        /// The message.
        offset: u64,
        /// When it failed.
        at_ms: i64,
        /// When it may be delivered again.
        not_before_ms: i64,
        /// Why.
        error: String,
    },
    /// The lease was extended.
    Extended {
        /// The partition.
        tp: TopicPartition,
        /// The message.
        offset: u64,
        /// The new deadline.
        deadline_ms: i64,
    },
    /// The message was acknowledged: settled.
    Acked {
        /// The partition.
        tp: TopicPartition,
        /// The message.
        offset: u64,
    },
    /// The message is in the dead-letter topic: settled; under key ordering its key is parked.
    DeadLettered {
        /// The partition.
        tp: TopicPartition,
        /// The message.
        offset: u64,
        /// The key to park, under key ordering.
        park: Option<Vec<u8>>,
    },
    /// An operator released a parked key.
    Released {
        /// The partition.
        tp: TopicPartition,
        /// The key.
        key: Vec<u8>,
    },
}

/// One open message.
#[derive(Debug, Clone)]
struct Entry {
    history: History,
    phase: Phase,
    /// The record, once read from the log (exactly when the offset is below the cursor).
    record: Option<Arc<StoredRecord>>,
}

/// One partition's part of the group.
#[derive(Debug, Clone, Default)]
struct Part {
    below: u64,
    cursor: u64,
    open: BTreeMap<u64, Entry>,
    settled_above: BTreeSet<u64>,
    /// Loaded open entries by key (keyed messages only, under key ordering).
    keys: HashMap<Vec<u8>, BTreeSet<u64>>,
    parked: BTreeSet<Vec<u8>>,
    /// Loaded, `Ready` and allowed by ordering.
    ready: BTreeSet<u64>,
}

impl Part {
    fn starting_at(offset: u64) -> Self {
        Self { below: offset, cursor: offset, ..Self::default() }
    }

    /// The lowest offset not settled: the first open one, or the first at or above `below`
    /// that the journal did not name as settled (after a restart, the group may know offsets
    /// settled above `below` before it has read them again).
    fn floor(&self) -> u64 {
        let mut unknown = self.below;
        for offset in self.settled_above.range(self.below..) {
            if *offset != unknown {
                break;
            }
            unknown += 1;
        }
        self.open.keys().next().copied().unwrap_or(unknown).min(unknown)
    }
}

/// A message chosen for delivery.
#[derive(Debug, Clone)]
pub struct Chosen {
    /// Its partition.
    pub tp: TopicPartition,
    /// The record.
    pub record: Arc<StoredRecord>,
    /// Its delivery count, this delivery included.
    pub deliveries: u32,
    /// The ack deadline.
    pub deadline_ms: i64,
}

/// A message that must go to the dead-letter topic before it is settled.
#[derive(Debug, Clone)]
pub struct DeadLetterJob {
    /// Its partition.
    pub tp: TopicPartition,
    /// The record.
    pub record: Arc<StoredRecord>,
    /// Its history, the failure that sent it here included.
    pub history: History,
}

/// How a delivery is settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Done: settle it.
    Ack,
    /// Failed: retry after `delay_ms`, or after the backoff if `None`.
    Nack {
        /// An explicit delay.
        delay_ms: Option<u64>,
        /// Why it failed.
        error: Option<String>,
    },
    /// Failed for good: straight to the dead-letter topic.
    Reject {
        /// Why.
        error: Option<String>,
    },
    /// Still working: push the deadline out by `ack_wait_ms`.
    Extend,
}

/// Why a settle was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettleRefused {
    /// The id is not one this group handed out.
    #[error("'{0}' is not a delivery id of this group (topic/partition/offset/delivery)")]
    Unknown(String),
    /// The message was settled already (acked or dead-lettered).
    #[error("delivery '{0}' is settled already (acked or dead-lettered)")]
    Settled(String),
    /// The lease expired and the message was delivered again (or is being dead-lettered).
    #[error("delivery '{id}' is no longer leased: its lease expired and the message is now {now}")]
    Expired {
        /// The delivery id.
        id: String,
        /// Where the message is now.
        now: String,
    },
}

/// What a settle decided.
#[derive(Debug, Clone, Default)]
pub struct Settled {
    /// Events to journal and apply.
    pub events: Vec<Event>,
    /// A message to dead-letter (already marked, not yet settled).
    pub dead_letter: Option<DeadLetterJob>,
    /// The new deadline, for an extend.
    pub deadline_ms: Option<i64>,
}

/// Counts for describing a group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Messages leased now.
    pub leased: u64,
    /// Messages waiting for a retry.
    pub waiting: u64,
    /// Messages ready to deliver.
    pub ready: u64,
    /// Messages in the window (open, loaded or not).
    pub open: u64,
    /// Messages delivered at least once and not settled (the `max_in_flight` measure).
    pub in_flight: u64,
    /// Parked keys.
    pub parked_keys: u64,
}

/// Counters since the engine opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Deliveries.
    pub delivered: u64,
    /// Deliveries after the first of a message.
    pub redelivered: u64,
    /// Messages acked.
    pub acked: u64,
    /// Messages dead-lettered.
    pub dead_lettered: u64,
}

/// One partition as described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartView {
    /// The partition.
    pub tp: TopicPartition,
    /// Every offset below it is settled.
    pub ack_floor: u64,
    /// The next offset the group reads from the log.
    pub read_position: u64,
    /// Open messages of the partition.
    pub open: u64,
    /// Parked keys.
    pub parked_keys: Vec<Vec<u8>>,
}

/// A delivery id: `topic/partition/offset/delivery`.
pub fn delivery_id(tp: &TopicPartition, offset: u64, deliveries: u32) -> String {
    format!("{}/{}/{offset}/{deliveries}", tp.topic, tp.partition)
}

/// Parses a delivery id.
pub fn parse_delivery_id(id: &str) -> Option<(TopicPartition, u64, u32)> {
    let mut parts = id.rsplitn(4, '/');
    let deliveries = parts.next()?.parse().ok()?;
    let offset = parts.next()?.parse().ok()?;
    let partition = parts.next()?.parse().ok()?;
    let topic = parts.next()?.to_owned();
    Some((TopicPartition { topic, partition }, offset, deliveries))
}

/// The state of one queue group.
#[derive(Debug, Clone)]
pub struct QueueState {
    config: QueueConfig,
    parts: BTreeMap<TopicPartition, Part>,
    leases: BTreeSet<(i64, TopicPartition, u64)>,
    retries: BTreeSet<(i64, TopicPartition, u64)>,
    member_leases: HashMap<String, u32>,
    in_flight: u64,
    window_bytes: u64,
    window_records: usize,
    totals: Totals,
    rotation: usize,
}

impl QueueState {
    /// An empty group with `config`.
    pub fn new(config: QueueConfig) -> Self {
        Self {
            config,
            parts: BTreeMap::new(),
            leases: BTreeSet::new(),
            retries: BTreeSet::new(),
            member_leases: HashMap::new(),
            in_flight: 0,
            window_bytes: 0,
            window_records: 0,
            totals: Totals::default(),
            rotation: 0,
        }
    }

    /// The group's configuration.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// Whether the group reads `tp`.
    pub fn has_partition(&self, tp: &TopicPartition) -> bool {
        self.parts.contains_key(tp)
    }

    /// Partitions whose window should be filled, with the offset to read from, while the window
    /// has room; with `catch_up_only`, only those with messages the journal named still to load.
    pub fn wants_load(&self, catch_up_only: bool) -> Vec<(TopicPartition, u64)> {
        self.parts
            .iter()
            .filter(|(_, part)| {
                // Open entries at or above the cursor are not loaded: the journal named them
                // (after a replay without a checkpoint `below` stays where the group started).
                let catching_up =
                    part.cursor < part.below || part.open.range(part.cursor..).next().is_some();
                catching_up || (!catch_up_only && !self.window_full())
            })
            .map(|(tp, part)| (tp.clone(), part.cursor))
            .collect()
    }

    fn window_full(&self) -> bool {
        self.window_records >= WINDOW_RECORDS_MAX || self.window_bytes >= WINDOW_BYTES_MAX
    }

    /// Takes records read from `tp`'s log at the cursor into the window. Records below the cursor
    /// are ignored (a read returns whole batches). New messages stop coming in when the window is
    /// full; messages the journal already knows are always loaded.
    pub fn load(&mut self, tp: &TopicPartition, records: Vec<StoredRecord>) {
        let key_ordering = self.config.ordering == Ordering::Key;
        for record in records {
            let offset = record.offset;
            let Some(part) = self.parts.get(tp) else { return };
            if offset < part.cursor {
                continue;
            }
            // Open messages the log skipped (compaction removed them) are gone: settle them.
            let skipped: Vec<u64> = part
                .open
                .range(part.cursor..offset)
                .filter(|(_, entry)| entry.record.is_none())
                .map(|(offset, _)| *offset)
                .collect();
            for skipped in skipped {
                self.settle_entry(tp, skipped);
            }
            let full = self.window_full();
            let part = self.parts.get_mut(tp).expect("checked above");
            let known = part.open.contains_key(&offset);
            // Only new messages wait for room: records up to the last message the journal named
            // are read whatever the window holds (settled ones are skipped below), or the cursor
            // would never reach the named ones.
            if !known && full && offset >= part.below && part.open.range(offset..).next().is_none()
            {
                return;
            }
            part.cursor = offset + 1;
            let settled = if offset < part.below {
                !known
            } else {
                part.below = offset + 1;
                let settled = part.settled_above.remove(&offset);
                part.settled_above = part.settled_above.split_off(&part.below);
                settled && !known
            };
            if settled {
                continue;
            }
            if !known {
                part.open.insert(
                    offset,
                    Entry { history: History::default(), phase: Phase::Ready, record: None },
                );
                self.window_records += 1;
            }
            self.window_bytes += record_bytes(&record);
            if key_ordering {
                if let Some(key) = &record.key {
                    part.keys.entry(key.clone()).or_default().insert(offset);
                }
            }
            part.open.get_mut(&offset).expect("inserted above").record = Some(Arc::new(record));
            refresh(part, key_ordering, offset);
        }
    }

    /// Drops open messages of `tp` below `offset`: the log no longer has them (retention
    /// deleted them before they were settled). Returns how many were dropped.
    pub fn skip_to(&mut self, tp: &TopicPartition, offset: u64) -> u64 {
        let Some(part) = self.parts.get(tp) else { return 0 };
        if part.cursor >= offset {
            return 0;
        }
        let lost: Vec<u64> = part.open.range(..offset).map(|(offset, _)| *offset).collect();
        for lost_offset in &lost {
            self.settle_entry(tp, *lost_offset);
        }
        let part = self.parts.get_mut(tp).expect("checked above");
        part.cursor = offset;
        part.below = part.below.max(offset);
        part.settled_above = part.settled_above.split_off(&offset);
        lost.len() as u64
    }

    /// Turns leases whose deadline passed into failures, and due retries into ready messages.
    /// Returns the failure events (to journal and apply) and the messages that used their last
    /// delivery (already marked as dead-lettering).
    pub fn expire(
        &mut self,
        now_ms: i64,
        random: &mut dyn FnMut() -> f64,
    ) -> (Vec<Event>, Vec<DeadLetterJob>) {
        let due: Vec<(i64, TopicPartition, u64)> =
            self.retries.range(..(now_ms + 1, min_tp(), 0)).cloned().collect();
        for (at, tp, offset) in due {
            self.retries.remove(&(at, tp.clone(), offset));
            self.set_phase(&tp, offset, Phase::Ready);
        }
        let expired: Vec<(i64, TopicPartition, u64)> =
            self.leases.range(..(now_ms + 1, min_tp(), 0)).cloned().collect();
        let mut events = Vec::new();
        let mut jobs = Vec::new();
        for (deadline, tp, offset) in expired {
            let error = format!("ack deadline passed ({} ms)", self.config.ack_wait_ms);
            match self.fail(&tp, offset, deadline, None, error, random) {
                Failure::Retry(event) => {
                    self.apply(&event);
                    events.push(event);
                }
                Failure::DeadLetter(job) => jobs.push(job),
            }
        }
        (events, jobs)
    }

    /// The earliest time a lease expires or a retry comes due.
    pub fn next_timer_ms(&self) -> Option<i64> {
        let lease = self.leases.first().map(|(at, _, _)| *at);
        let retry = self.retries.first().map(|(at, _, _)| *at);
        match (lease, retry) {
            (Some(lease), Some(retry)) => Some(lease.min(retry)),
            (lease, retry) => lease.or(retry),
        }
    }

    /// Chooses up to `max` ready messages for `member` within the in-flight limits, leases them,
    /// and returns them with their `Delivered` events (applied; to journal).
    pub fn deliver(&mut self, now_ms: i64, member: &str, max: usize) -> (Vec<Event>, Vec<Chosen>) {
        let member_held = self.member_leases.get(member).copied().unwrap_or(0);
        let mut member_room = self.config.member_max_in_flight.saturating_sub(member_held) as usize;
        let mut group_room = u64::from(self.config.max_in_flight).saturating_sub(self.in_flight);
        let deadline_ms =
            now_ms.saturating_add(i64::try_from(self.config.ack_wait_ms).unwrap_or(0));
        let mut events = Vec::new();
        let mut chosen = Vec::new();
        let partitions: Vec<TopicPartition> = self.parts.keys().cloned().collect();
        if partitions.is_empty() {
            return (events, chosen);
        }
        self.rotation = self.rotation.wrapping_add(1);
        let start = self.rotation % partitions.len();
        for step in 0..partitions.len() {
            let tp = &partitions[(start + step) % partitions.len()];
            let part = &self.parts[tp];
            for offset in &part.ready {
                if chosen.len() >= max || member_room == 0 {
                    break;
                }
                let entry = &part.open[offset];
                let first = entry.history.deliveries == 0;
                if first && group_room == 0 {
                    continue;
                }
                let record = Arc::clone(entry.record.as_ref().expect("ready entries are loaded"));
                if first {
                    group_room -= 1;
                }
                member_room -= 1;
                chosen.push(Chosen {
                    tp: tp.clone(),
                    record,
                    deliveries: entry.history.deliveries + 1,
                    deadline_ms,
                });
                events.push(Event::Delivered {
                    tp: tp.clone(),
                    offset: *offset,
                    member: member.to_owned(),
                    deadline_ms,
                });
            }
        }
        for event in &events {
            self.apply(event);
        }
        (events, chosen)
    }

    /// Settles delivery `id` with `action`: applies the outcome and returns its events (to
    /// journal) or the dead-letter job to run.
    ///
    /// # Errors
    /// [`SettleRefused`] when the id is unknown, settled, or no longer leased.
    pub fn settle(
        &mut self,
        now_ms: i64,
        id: &str,
        action: &Action,
        random: &mut dyn FnMut() -> f64,
    ) -> Result<Settled, SettleRefused> {
        let (tp, offset, deliveries) =
            parse_delivery_id(id).ok_or_else(|| SettleRefused::Unknown(id.to_owned()))?;
        let part = self.parts.get(&tp).ok_or_else(|| SettleRefused::Unknown(id.to_owned()))?;
        let Some(entry) = part.open.get(&offset) else {
            // Settled above `below`: named by the journal (after a replay without a checkpoint
            // `below` stays where the group started).
            if offset < part.below.max(part.cursor) || part.settled_above.contains(&offset) {
                return Err(SettleRefused::Settled(id.to_owned()));
            }
            return Err(SettleRefused::Unknown(id.to_owned()));
        };
        if deliveries == 0 || deliveries > entry.history.deliveries {
            return Err(SettleRefused::Unknown(id.to_owned()));
        }
        let leased_now = matches!(entry.phase, Phase::Leased { .. });
        let current = deliveries == entry.history.deliveries;
        let late_ack = current
            && *action == Action::Ack
            && matches!(entry.phase, Phase::Ready | Phase::Waiting { .. });
        if !(late_ack || current && leased_now) {
            let now = match &entry.phase {
                _ if !current => format!("on delivery {}", entry.history.deliveries),
                Phase::DeadLettering => "going to the dead-letter topic".to_owned(),
                Phase::Ready | Phase::Waiting { .. } => "waiting to be redelivered".to_owned(),
                Phase::Leased { .. } => "leased again".to_owned(),
            };
            return Err(SettleRefused::Expired { id: id.to_owned(), now });
        }
        let mut settled = Settled::default();
        match action {
            Action::Ack => settled.events.push(Event::Acked { tp, offset }),
            Action::Extend => {
                let deadline_ms = now_ms
                    .saturating_add(i64::try_from(self.config.ack_wait_ms).unwrap_or(i64::MAX));
                settled.deadline_ms = Some(deadline_ms);
                settled.events.push(Event::Extended { tp, offset, deadline_ms });
            }
            Action::Nack { delay_ms, error } => {
                let error = error.clone().unwrap_or_else(|| "nacked".to_owned());
                match self.fail(&tp, offset, now_ms, *delay_ms, error, random) {
                    Failure::Retry(event) => settled.events.push(event),
                    Failure::DeadLetter(job) => settled.dead_letter = Some(job),
                }
            }
            Action::Reject { error } => {
                let error = error.clone().unwrap_or_else(|| "rejected".to_owned());
                let loaded = self.parts[&tp].open[&offset].record.is_some();
                if loaded {
                    settled.dead_letter = Some(self.begin_dead_letter(&tp, offset, now_ms, error));
                } else {
                    // Its record could not be read back (its topic is gone or unreadable): there
                    // is nothing to write to the dead-letter topic. It waits like a failure.
                    let not_before_ms = now_ms.saturating_add(
                        i64::try_from(self.config.backoff_max_ms).unwrap_or(i64::MAX),
                    );
                    settled.events.push(Event::Failed {
                        tp,
                        offset,
                        at_ms: now_ms,
                        not_before_ms,
                        error,
                    });
                }
            }
        }
        for event in &settled.events {
            self.apply(event);
        }
        Ok(settled)
    }

    /// A failed delivery: a retry event, or (the last delivery used) a dead-letter job.
    fn fail(
        &mut self,
        tp: &TopicPartition,
        offset: u64,
        at_ms: i64,
        delay_ms: Option<u64>,
        error: String,
        random: &mut dyn FnMut() -> f64,
    ) -> Failure {
        let entry = &self.parts[tp].open[&offset];
        let deliveries = entry.history.deliveries;
        if deliveries >= self.config.deliveries_max && entry.record.is_some() {
            return Failure::DeadLetter(self.begin_dead_letter(tp, offset, at_ms, error));
        }
        let delay = delay_ms
            .unwrap_or_else(|| self.config.jittered_backoff_ms(deliveries, random()))
            .min(super::config::BACKOFF_MS_MAX);
        let not_before_ms = at_ms.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX));
        Failure::Retry(Event::Failed { tp: tp.clone(), offset, at_ms, not_before_ms, error })
    }

    /// Marks a message as going to the dead-letter topic and returns what to write there.
    fn begin_dead_letter(
        &mut self,
        tp: &TopicPartition,
        offset: u64,
        at_ms: i64,
        error: String,
    ) -> DeadLetterJob {
        self.set_phase(tp, offset, Phase::DeadLettering);
        let entry = self
            .parts
            .get_mut(tp)
            .and_then(|part| part.open.get_mut(&offset))
            .expect("a message being dead-lettered is open");
        record_failure(&mut entry.history, at_ms, error);
        DeadLetterJob {
            tp: tp.clone(),
            record: Arc::clone(entry.record.as_ref().expect("a delivered message is loaded")),
            history: entry.history.clone(),
        }
    }

    /// The dead-letter append failed: the message waits `delay_ms` and is tried again (its
    /// next failure sends it to the dead-letter topic again).
    pub fn dead_letter_failed(&self, job: &DeadLetterJob, now_ms: i64, error: String) -> Event {
        let delay = i64::try_from(self.config.backoff_max_ms).unwrap_or(i64::MAX);
        Event::Failed {
            tp: job.tp.clone(),
            offset: job.record.offset,
            at_ms: now_ms,
            not_before_ms: now_ms.saturating_add(delay),
            error,
        }
    }

    /// The event that settles a dead-lettered message (parking its key under key ordering).
    pub fn dead_lettered(&self, job: &DeadLetterJob) -> Event {
        let park = match self.config.ordering {
            Ordering::Key => job.record.key.clone(),
            Ordering::None => None,
        };
        Event::DeadLettered { tp: job.tp.clone(), offset: job.record.offset, park }
    }

    /// Applies one event. Events about partitions or messages the group does not know are
    /// ignored, so a journal replays whatever happened to the topics since.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::Started { tp, offset } => {
                if let Some(old) = self.parts.remove(tp) {
                    self.forget_part(tp, &old);
                }
                self.parts.insert(tp.clone(), Part::starting_at(*offset));
            }
            Event::Delivered { tp, offset, member, deadline_ms } => {
                self.ensure_open(tp, *offset);
                let Some(entry) = self.entry_mut(tp, *offset) else { return };
                entry.history.deliveries += 1;
                let deliveries = entry.history.deliveries;
                self.totals.delivered += 1;
                if deliveries == 1 {
                    self.in_flight += 1;
                } else {
                    self.totals.redelivered += 1;
                }
                self.set_phase(
                    tp,
                    *offset,
                    Phase::Leased { deadline_ms: *deadline_ms, member: member.clone() },
                );
            }
            Event::Failed { tp, offset, at_ms, not_before_ms, error } => {
                self.ensure_open(tp, *offset);
                let Some(entry) = self.entry_mut(tp, *offset) else { return };
                record_failure(&mut entry.history, *at_ms, error.clone());
                self.set_phase(tp, *offset, Phase::Waiting { not_before_ms: *not_before_ms });
            }
            Event::Extended { tp, offset, deadline_ms } => {
                let Some(Phase::Leased { member, .. }) =
                    self.entry_mut(tp, *offset).map(|entry| entry.phase.clone())
                else {
                    return;
                };
                self.set_phase(tp, *offset, Phase::Leased { deadline_ms: *deadline_ms, member });
            }
            Event::Acked { tp, offset } => {
                self.settle_entry(tp, *offset);
                self.totals.acked += 1;
            }
            Event::DeadLettered { tp, offset, park } => {
                self.settle_entry(tp, *offset);
                self.totals.dead_lettered += 1;
                if let (Some(key), Some(part)) = (park, self.parts.get_mut(tp)) {
                    part.parked.insert(key.clone());
                    refresh_key(part, key);
                }
            }
            Event::Released { tp, key } => {
                if let Some(part) = self.parts.get_mut(tp) {
                    part.parked.remove(key);
                    refresh_key(part, key);
                }
            }
        }
    }

    /// Makes sure a message the journal names is open: at or above `below` it may not be yet.
    fn ensure_open(&mut self, tp: &TopicPartition, offset: u64) {
        let Some(part) = self.parts.get_mut(tp) else { return };
        if offset >= part.below && !part.open.contains_key(&offset) {
            part.settled_above.remove(&offset);
            part.open.insert(
                offset,
                Entry { history: History::default(), phase: Phase::Ready, record: None },
            );
            self.window_records += 1;
        }
    }

    fn entry_mut(&mut self, tp: &TopicPartition, offset: u64) -> Option<&mut Entry> {
        self.parts.get_mut(tp).and_then(|part| part.open.get_mut(&offset))
    }

    /// Removes an open message: acked, dead-lettered, or lost to retention.
    fn settle_entry(&mut self, tp: &TopicPartition, offset: u64) {
        self.set_phase(tp, offset, Phase::Ready);
        let key_ordering = self.config.ordering == Ordering::Key;
        let Some(part) = self.parts.get_mut(tp) else { return };
        let Some(entry) = part.open.remove(&offset) else { return };
        part.ready.remove(&offset);
        if offset >= part.below {
            part.settled_above.insert(offset);
        }
        self.window_records -= 1;
        if entry.history.deliveries > 0 {
            self.in_flight -= 1;
        }
        if let Some(record) = &entry.record {
            self.window_bytes -= record_bytes(record);
            if let (true, Some(key)) = (key_ordering, &record.key) {
                if let Some(offsets) = part.keys.get_mut(key) {
                    offsets.remove(&offset);
                    if offsets.is_empty() {
                        part.keys.remove(key);
                    } else {
                        refresh_key(part, key);
                    }
                }
            }
        }
    }

    /// Moves an open message to `phase`, keeping the timer sets, lease counts and the ready set
    /// in step.
    fn set_phase(&mut self, tp: &TopicPartition, offset: u64, phase: Phase) {
        let key_ordering = self.config.ordering == Ordering::Key;
        let Some(part) = self.parts.get_mut(tp) else { return };
        let Some(entry) = part.open.get_mut(&offset) else { return };
        match &entry.phase {
            Phase::Leased { deadline_ms, member } => {
                self.leases.remove(&(*deadline_ms, tp.clone(), offset));
                if let Some(count) = self.member_leases.get_mut(member) {
                    *count -= 1;
                    if *count == 0 {
                        self.member_leases.remove(member);
                    }
                }
            }
            Phase::Waiting { not_before_ms } => {
                self.retries.remove(&(*not_before_ms, tp.clone(), offset));
            }
            Phase::Ready | Phase::DeadLettering => {}
        }
        match &phase {
            Phase::Leased { deadline_ms, member } => {
                self.leases.insert((*deadline_ms, tp.clone(), offset));
                *self.member_leases.entry(member.clone()).or_default() += 1;
            }
            Phase::Waiting { not_before_ms } => {
                self.retries.insert((*not_before_ms, tp.clone(), offset));
            }
            Phase::Ready | Phase::DeadLettering => {}
        }
        entry.phase = phase;
        refresh(part, key_ordering, offset);
    }

    fn forget_part(&mut self, tp: &TopicPartition, part: &Part) {
        for (offset, entry) in &part.open {
            match &entry.phase {
                Phase::Leased { deadline_ms, member } => {
                    self.leases.remove(&(*deadline_ms, tp.clone(), *offset));
                    if let Some(count) = self.member_leases.get_mut(member) {
                        *count = count.saturating_sub(1);
                    }
                }
                Phase::Waiting { not_before_ms } => {
                    self.retries.remove(&(*not_before_ms, tp.clone(), *offset));
                }
                Phase::Ready | Phase::DeadLettering => {}
            }
            self.window_records -= 1;
            if entry.history.deliveries > 0 {
                self.in_flight -= 1;
            }
            if let Some(record) = &entry.record {
                self.window_bytes -= record_bytes(record);
            }
        }
    }

    /// Counts for describing the group.
    pub fn counts(&self) -> Counts {
        let mut counts = Counts {
            leased: self.leases.len() as u64,
            waiting: self.retries.len() as u64,
            in_flight: self.in_flight,
            ..Counts::default()
        };
        for part in self.parts.values() {
            counts.ready += part.ready.len() as u64;
            counts.open += part.open.len() as u64;
            counts.parked_keys += part.parked.len() as u64;
        }
        counts
    }

    /// Counters since the engine opened (or since the journal's checkpoint, for replayed ones).
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// Each partition's floor, read position and parked keys.
    pub fn parts(&self) -> Vec<PartView> {
        self.parts
            .iter()
            .map(|(tp, part)| PartView {
                tp: tp.clone(),
                ack_floor: part.floor(),
                read_position: part.cursor,
                open: part.open.len() as u64,
                parked_keys: part.parked.iter().cloned().collect(),
            })
            .collect()
    }

    /// Messages leased per member.
    pub fn member_leases(&self) -> BTreeMap<String, u32> {
        self.member_leases.iter().map(|(member, count)| (member.clone(), *count)).collect()
    }

    /// Whether `key` is parked in `tp`.
    pub fn is_parked(&self, tp: &TopicPartition, key: &[u8]) -> bool {
        self.parts.get(tp).is_some_and(|part| part.parked.contains(key))
    }

    /// The whole durable state, for a journal checkpoint.
    pub fn checkpoint(&self) -> Checkpoint {
        let parts = self
            .parts
            .iter()
            .map(|(tp, part)| {
                let below = part.below.max(part.cursor);
                let mut settled_above: Vec<u64> =
                    part.settled_above.range(below..).copied().collect();
                settled_above.sort_unstable();
                PartCheckpoint {
                    tp: tp.clone(),
                    below,
                    open: part
                        .open
                        .iter()
                        .map(|(offset, entry)| {
                            let phase = match &entry.phase {
                                Phase::DeadLettering => Phase::Ready,
                                other => other.clone(),
                            };
                            (*offset, entry.history.clone(), phase)
                        })
                        .collect(),
                    settled_above,
                    parked: part.parked.iter().cloned().collect(),
                }
            })
            .collect();
        Checkpoint { parts }
    }

    /// A state restored from a checkpoint: nothing loaded yet; each partition's cursor is its
    /// floor, so the window is read again from the log.
    pub fn restore(config: QueueConfig, checkpoint: &Checkpoint) -> Self {
        let mut state = Self::new(config);
        for saved in &checkpoint.parts {
            let mut part = Part::starting_at(saved.below);
            part.settled_above = saved.settled_above.iter().copied().collect();
            part.parked = saved.parked.iter().cloned().collect();
            let mut pending = Vec::new();
            for (offset, history, phase) in &saved.open {
                if history.deliveries > 0 {
                    state.in_flight += 1;
                }
                part.open.insert(
                    *offset,
                    Entry { history: history.clone(), phase: Phase::Ready, record: None },
                );
                pending.push((*offset, phase.clone()));
                state.window_records += 1;
            }
            part.cursor = part.open.keys().next().copied().unwrap_or(part.below).min(part.below);
            state.parts.insert(saved.tp.clone(), part);
            for (offset, phase) in pending {
                state.set_phase(&saved.tp, offset, phase);
            }
        }
        state
    }
}

enum Failure {
    Retry(Event),
    DeadLetter(DeadLetterJob),
}

/// A queue group's whole state at one point of its journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Every partition.
    pub parts: Vec<PartCheckpoint>,
}

/// One partition in a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartCheckpoint {
    /// The partition.
    pub tp: TopicPartition,
    /// Offsets below it are open (listed) or settled.
    pub below: u64,
    /// Open messages: offset, history, phase.
    pub open: Vec<(u64, History, Phase)>,
    /// Settled offsets at or above `below`.
    pub settled_above: Vec<u64>,
    /// Parked keys.
    pub parked: Vec<Vec<u8>>,
}

fn record_failure(history: &mut History, at_ms: i64, error: String) {
    history.first_failure_ms.get_or_insert(at_ms);
    history.last_failure_ms = Some(at_ms);
    history.last_error = Some(error);
}

/// A record's weight in the window: its bytes plus a fixed overhead for the entry holding it.
fn record_bytes(record: &StoredRecord) -> u64 {
    (record.size_bytes() + 64) as u64
}

fn min_tp() -> TopicPartition {
    TopicPartition { topic: String::new(), partition: 0 }
}

/// Puts `offset` in or out of the ready set: in when loaded, `Ready`, and (under key ordering)
/// the first open message of its key with the key not parked.
fn refresh(part: &mut Part, key_ordering: bool, offset: u64) {
    let Some(entry) = part.open.get(&offset) else {
        part.ready.remove(&offset);
        return;
    };
    let Some(record) = &entry.record else {
        part.ready.remove(&offset);
        return;
    };
    let mut eligible = entry.phase == Phase::Ready;
    if eligible && key_ordering {
        if let Some(key) = &record.key {
            let first = part.keys.get(key).and_then(|offsets| offsets.first().copied());
            eligible = first == Some(offset) && !part.parked.contains(key);
        }
    }
    if eligible {
        part.ready.insert(offset);
    } else {
        part.ready.remove(&offset);
    }
}

/// Re-checks the first open message of `key` (after the key's head settled or its park changed).
fn refresh_key(part: &mut Part, key: &[u8]) {
    if let Some(first) = part.keys.get(key).and_then(|offsets| offsets.first().copied()) {
        refresh(part, true, first);
    }
}
