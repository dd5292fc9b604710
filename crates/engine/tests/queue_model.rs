//! Property test: a queue group's state machine ([`QueueState`]) against a simple model, driven
//! with a fake clock through random produces, window loads, clock moves, expiries, deliveries,
//! settles (ack, nack with and without a delay, reject, extend; with current, stale and bogus
//! delivery ids), dead-letter outcomes (written or failed), key releases, journal checkpoints and
//! restarts: a restore from the journal (its checkpoint and the events after it) or a replay of
//! every event from a fresh state, each followed by the catch-up reads the engine does.
//!
//! The model keeps every produced message of each partition in a `Vec` (index = offset) with its
//! fate (acked, dead-lettered), delivery count, phase (ready, waiting until, leased until and by
//! whom, being dead-lettered) and whether the state has it open (loaded or named by its journal).
//! After every step the state's counts, checkpoint, partition views, member leases and next timer
//! are compared with the model; every delivery, settle outcome, expiry event and dead-letter job
//! is predicted by the model and compared exactly. Properties checked on the way: no message is
//! leased twice at once; settled messages are never delivered again; no delivery before a retry
//! time; backoff delays lie in `[d * (1 - jitter), d]` of `backoff_ms`; under key ordering no
//! delivery behind an unsettled message of the key or of a parked key; a delivery returns every
//! eligible message the limits allow; `max_in_flight` and `member_max_in_flight` hold; a failure
//! dead-letters exactly when the delivery was the `deliveries_max`-th (or a reject).
//!
//! Deliberate tolerances, from the design (dead-lettering is in memory only, never journaled):
//! a message may be delivered past `deliveries_max` once per dead letter that failed to be
//! written, per dead letter in progress at a crash that a checkpoint restores as ready, and per
//! expiry of a lease whose record was not loaded yet (see `Model::fails_for_good`); a lease a
//! replay revives that way may put its member over `member_max_in_flight` until it ends.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use sluice_engine::queue::config::{BACKOFF_MS_MAX, WINDOW_RECORDS_MAX};
use sluice_engine::queue::state::{
    delivery_id, Action, Checkpoint, Counts, DeadLetterJob, Event, Phase, QueueState, SettleRefused,
};
use sluice_engine::queue::{Ordering, QueueConfig};
use sluice_engine::{StoredRecord, TopicPartition};

const TOPIC: &str = "jobs";
const MEMBERS: [&str; 3] = ["m0", "m1", "m2"];
const START_MS: i64 = 1_000_000;
const DEAD_LETTER_ERROR: &str = "dead-letter topic unavailable";

fn tp(partition: usize) -> TopicPartition {
    TopicPartition { topic: TOPIC.to_owned(), partition: u32::try_from(partition).unwrap() }
}

fn key_bytes(key: u8) -> Vec<u8> {
    vec![b'a' + key]
}

/// The jitter source: xorshift, with the extremes of `[0, 1)` mixed in.
fn next_unit(state: &mut u64) -> f64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    match *state % 8 {
        0 => 0.0,
        1 => 1.0 - f64::EPSILON,
        _ => (*state >> 11) as f64 / (1u64 << 53) as f64,
    }
}

// ---------------------------------------------------------------------------------------------
// Operations.

#[derive(Debug, Clone)]
enum ActionSpec {
    Ack,
    Nack { delay_ms: Option<u64>, error: bool },
    Reject { error: bool },
    Extend,
}

impl ActionSpec {
    fn action(&self) -> Action {
        match self {
            Self::Ack => Action::Ack,
            Self::Nack { delay_ms, error } => {
                Action::Nack { delay_ms: *delay_ms, error: error.then(|| "boom".to_owned()) }
            }
            Self::Reject { error } => Action::Reject { error: error.then(|| "bad".to_owned()) },
            Self::Extend => Action::Extend,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Restart {
    /// Checkpoint now, then restore from it.
    RestoreNow,
    /// Restore from the journal: its last checkpoint (if any) and the events after it.
    Journal,
    /// Replay every event ever applied on a fresh state.
    Replay,
}

#[derive(Debug, Clone)]
enum Op {
    Produce {
        part: usize,
        keys: Vec<Option<u8>>,
    },
    Fill {
        part: usize,
        count: usize,
        back: u64,
    },
    Advance {
        ms: i64,
    },
    /// To the next lease deadline or retry time, give or take a millisecond.
    AdvanceToTimer {
        plus: i64,
    },
    Expire,
    Deliver {
        member: usize,
        max: usize,
    },
    Settle {
        pick: usize,
        tweak: u8,
        action: ActionSpec,
    },
    Complete {
        pick: usize,
        ok: bool,
    },
    Release {
        part: usize,
        key: u8,
    },
    Checkpoint,
    Restart {
        how: Restart,
        drain: bool,
        expire_first: bool,
    },
}

fn action() -> impl Strategy<Value = ActionSpec> {
    let delay = prop_oneof![9 => 0u64..200, 1 => Just(BACKOFF_MS_MAX + 5)];
    prop_oneof![
        4 => Just(ActionSpec::Ack),
        2 => any::<bool>().prop_map(|error| ActionSpec::Nack { delay_ms: None, error }),
        2 => (delay, any::<bool>())
            .prop_map(|(delay, error)| ActionSpec::Nack { delay_ms: Some(delay), error }),
        2 => any::<bool>().prop_map(|error| ActionSpec::Reject { error }),
        2 => Just(ActionSpec::Extend),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let restart =
        prop_oneof![Just(Restart::RestoreNow), Just(Restart::Journal), Just(Restart::Replay)];
    prop_oneof![
        4 => (0usize..4, prop::collection::vec(prop::option::weighted(0.8, 0u8..3), 1..4))
            .prop_map(|(part, keys)| Op::Produce { part, keys }),
        3 => (0usize..4, 1usize..6, 0u64..3)
            .prop_map(|(part, count, back)| Op::Fill { part, count, back }),
        2 => prop_oneof![0i64..20, 0i64..300].prop_map(|ms| Op::Advance { ms }),
        2 => (-1i64..=1).prop_map(|plus| Op::AdvanceToTimer { plus }),
        3 => Just(Op::Expire),
        5 => (0usize..MEMBERS.len(), 1usize..6).prop_map(|(member, max)| Op::Deliver { member, max }),
        6 => (any::<usize>(), 0u8..10, action())
            .prop_map(|(pick, tweak, action)| Op::Settle { pick, tweak, action }),
        3 => (any::<usize>(), prop::bool::weighted(0.7)).prop_map(|(pick, ok)| Op::Complete { pick, ok }),
        1 => (0usize..4, 0u8..3).prop_map(|(part, key)| Op::Release { part, key }),
        1 => Just(Op::Checkpoint),
        1 => (restart, any::<bool>(), any::<bool>())
            .prop_map(|(how, drain, expire_first)| Op::Restart { how, drain, expire_first }),
    ]
}

fn config() -> impl Strategy<Value = (QueueConfig, usize)> {
    (
        (
            10u64..120,
            prop_oneof![1u32..3, 1u32..5],
            0u64..60,
            prop_oneof![Just(1.0), 1.0f64..4.0],
            0u64..200,
        ),
        (prop_oneof![Just(0.0), Just(1.0), 0.0f64..=1.0], any::<bool>()),
        (prop_oneof![1u32..6, Just(1000)], prop_oneof![1u32..4, Just(1000)], 1usize..3),
    )
        .prop_map(
            |(
                (ack_wait_ms, deliveries_max, backoff_initial_ms, backoff_multiplier, extra),
                (backoff_jitter, key_ordering),
                (max_in_flight, member_max_in_flight, partitions),
            )| {
                let config = QueueConfig {
                    topics: vec![TOPIC.to_owned()],
                    ack_wait_ms,
                    deliveries_max,
                    backoff_initial_ms,
                    backoff_multiplier,
                    backoff_max_ms: backoff_initial_ms + extra,
                    backoff_jitter,
                    ordering: if key_ordering { Ordering::Key } else { Ordering::None },
                    max_in_flight,
                    member_max_in_flight,
                    ..QueueConfig::default()
                };
                config.validate().unwrap();
                (config, partitions)
            },
        )
}

// ---------------------------------------------------------------------------------------------
// The model.

#[derive(Debug, Clone, PartialEq)]
enum MPhase {
    Ready,
    Waiting(i64),
    Leased { until: i64, member: String },
    DeadLettering,
}

impl MPhase {
    /// The phase a checkpoint stores (being dead-lettered is in memory only).
    fn journaled(&self) -> Self {
        match self {
            Self::DeadLettering => Self::Ready,
            other => other.clone(),
        }
    }

    fn phase(&self) -> Phase {
        match self.journaled() {
            Self::Ready | Self::DeadLettering => Phase::Ready,
            Self::Waiting(not_before_ms) => Phase::Waiting { not_before_ms },
            Self::Leased { until, member } => Phase::Leased { deadline_ms: until, member },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Acked,
    DeadLettered,
}

#[derive(Debug, Clone)]
struct Msg {
    record: StoredRecord,
    fate: Option<Fate>,
    deliveries: u32,
    /// The live phase.
    phase: MPhase,
    /// The phase a restart from the journal (checkpoint plus events) gives.
    journal_phase: MPhase,
    /// The phase a replay of every event from the start gives.
    event_phase: MPhase,
    /// Open in the state (loaded, or named by its journal); never for settled messages.
    known: bool,
    known_at_checkpoint: bool,
    named_since_checkpoint: bool,
    /// The last retry time set by a failure.
    not_before: i64,
    /// Deliveries allowed past `deliveries_max`: one per dead letter that could not be written
    /// (or was in progress at a crash and came back ready).
    extra_deliveries: u32,
    /// Leased again by a restart while its dead letter was being written (the journal's last
    /// word on it was its lease): its member may hold more than `member_max_in_flight` until
    /// that lease ends.
    revived_lease: bool,
}

impl Msg {
    fn open(&self) -> bool {
        self.fate.is_none() && self.known
    }

    fn set_all(&mut self, phase: MPhase) {
        self.revived_lease = false;
        self.journal_phase = phase.clone();
        self.event_phase = phase.clone();
        self.phase = phase;
    }
}

#[derive(Debug, Clone, Default)]
struct MPart {
    log: Vec<Msg>,
    cursor: u64,
    below: u64,
    checkpoint_below: u64,
    parked: BTreeSet<Vec<u8>>,
}

impl MPart {
    fn msg(&self, offset: u64) -> &Msg {
        &self.log[usize::try_from(offset).unwrap()]
    }

    fn first_open(&self) -> Option<u64> {
        self.log.iter().position(Msg::open).map(|offset| offset as u64)
    }

    /// The lowest offset not settled: the first open one, or the first at or above `below`
    /// not settled (the state may know settled offsets above `below` from its journal).
    fn floor(&self) -> u64 {
        let mut unknown = self.below;
        while self.log.get(usize::try_from(unknown).unwrap()).is_some_and(|msg| msg.fate.is_some())
        {
            unknown += 1;
        }
        self.first_open().unwrap_or(unknown).min(unknown)
    }
}

struct Model {
    config: QueueConfig,
    parts: Vec<MPart>,
    has_checkpoint: bool,
}

impl Model {
    fn msg(&self, tp: &TopicPartition, offset: u64) -> &Msg {
        self.parts[tp.partition as usize].msg(offset)
    }

    fn msg_mut(&mut self, tp: &TopicPartition, offset: u64) -> &mut Msg {
        &mut self.parts[tp.partition as usize].log[usize::try_from(offset).unwrap()]
    }

    fn loaded(&self, partition: usize, offset: u64) -> bool {
        let part = &self.parts[partition];
        part.msg(offset).open() && offset < part.cursor
    }

    /// Whether ordering lets the message go: no earlier unsettled message of its key in its
    /// partition, and its key not parked.
    fn key_free(&self, partition: usize, offset: u64) -> bool {
        if self.config.ordering != Ordering::Key {
            return true;
        }
        let part = &self.parts[partition];
        let Some(key) = &part.msg(offset).record.key else { return true };
        !part.parked.contains(key)
            && part.log[..usize::try_from(offset).unwrap()]
                .iter()
                .all(|earlier| earlier.fate.is_some() || earlier.record.key.as_ref() != Some(key))
    }

    fn eligible(&self, partition: usize, offset: u64) -> bool {
        self.loaded(partition, offset)
            && self.parts[partition].msg(offset).phase == MPhase::Ready
            && self.key_free(partition, offset)
    }

    fn all_eligible(&self) -> BTreeSet<(usize, u64)> {
        let mut eligible = BTreeSet::new();
        for (partition, part) in self.parts.iter().enumerate() {
            for offset in 0..part.log.len() as u64 {
                if self.eligible(partition, offset) {
                    eligible.insert((partition, offset));
                }
            }
        }
        eligible
    }

    fn open_msgs(&self) -> impl Iterator<Item = (usize, u64, &Msg)> {
        self.parts.iter().enumerate().flat_map(|(partition, part)| {
            part.log
                .iter()
                .enumerate()
                .filter(|(_, msg)| msg.open())
                .map(move |(offset, msg)| (partition, offset as u64, msg))
        })
    }

    fn in_flight(&self) -> u64 {
        self.open_msgs().filter(|(_, _, msg)| msg.deliveries > 0).count() as u64
    }

    fn member_leases(&self) -> BTreeMap<String, u32> {
        let mut leases = BTreeMap::new();
        for (_, _, msg) in self.open_msgs() {
            if let MPhase::Leased { member, .. } = &msg.phase {
                *leases.entry(member.clone()).or_default() += 1;
            }
        }
        leases
    }

    fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for (_, _, msg) in self.open_msgs() {
            counts.open += 1;
            match msg.phase {
                MPhase::Leased { .. } => counts.leased += 1,
                MPhase::Waiting(_) => counts.waiting += 1,
                MPhase::Ready | MPhase::DeadLettering => {}
            }
            if msg.deliveries > 0 {
                counts.in_flight += 1;
            }
        }
        counts.ready = self.all_eligible().len() as u64;
        counts.parked_keys = self.parts.iter().map(|part| part.parked.len() as u64).sum();
        counts
    }

    fn next_timer(&self) -> Option<i64> {
        self.open_msgs()
            .filter_map(|(_, _, msg)| match msg.phase {
                MPhase::Leased { until, .. } => Some(until),
                MPhase::Waiting(not_before) => Some(not_before),
                MPhase::Ready | MPhase::DeadLettering => None,
            })
            .min()
    }

    /// Partitions a catch-up read must fill: those with messages the journal named not loaded.
    fn catch_up_wanted(&self) -> Vec<(TopicPartition, u64)> {
        self.parts
            .iter()
            .enumerate()
            .filter(|(_, part)| {
                part.cursor < part.below
                    || part.log[usize::try_from(part.cursor).unwrap()..].iter().any(Msg::open)
            })
            .map(|(partition, part)| (tp(partition), part.cursor))
            .collect()
    }

    /// A journaled change, as the model sees it.
    fn apply(&mut self, event: &Event) {
        match event {
            Event::Started { .. } => {}
            Event::Delivered { tp, offset, member, deadline_ms } => {
                let msg = self.msg_mut(tp, *offset);
                msg.deliveries += 1;
                msg.known = true;
                msg.named_since_checkpoint = true;
                msg.set_all(MPhase::Leased { until: *deadline_ms, member: member.clone() });
            }
            Event::Failed { tp, offset, not_before_ms, .. } => {
                let msg = self.msg_mut(tp, *offset);
                msg.named_since_checkpoint = true;
                msg.not_before = *not_before_ms;
                msg.set_all(MPhase::Waiting(*not_before_ms));
            }
            Event::Extended { tp, offset, deadline_ms } => {
                let msg = self.msg_mut(tp, *offset);
                let MPhase::Leased { member, .. } = msg.phase.clone() else {
                    panic!("extended a message that is not leased: {msg:?}")
                };
                let revived = msg.revived_lease;
                msg.set_all(MPhase::Leased { until: *deadline_ms, member });
                msg.revived_lease = revived;
            }
            Event::Acked { tp, offset } => {
                let msg = self.msg_mut(tp, *offset);
                msg.fate = Some(Fate::Acked);
                msg.known = false;
            }
            Event::DeadLettered { tp, offset, park } => {
                let msg = self.msg_mut(tp, *offset);
                msg.fate = Some(Fate::DeadLettered);
                msg.known = false;
                if let Some(key) = park {
                    self.parts[tp.partition as usize].parked.insert(key.clone());
                }
            }
            Event::Released { tp, key } => {
                self.parts[tp.partition as usize].parked.remove(key);
            }
        }
    }

    fn load(&mut self, partition: usize, count: u64) {
        let part = &mut self.parts[partition];
        for offset in part.cursor..part.cursor + count {
            let msg = &mut part.log[usize::try_from(offset).unwrap()];
            if msg.fate.is_none() {
                msg.known = true;
            }
        }
        part.cursor += count;
        part.below = part.below.max(part.cursor);
    }

    fn checkpoint(&mut self) {
        self.has_checkpoint = true;
        for part in &mut self.parts {
            part.checkpoint_below = part.below.max(part.cursor);
            for msg in &mut part.log {
                msg.journal_phase = msg.phase.journaled();
                msg.known_at_checkpoint = msg.open();
                msg.named_since_checkpoint = false;
            }
        }
    }

    fn restart(&mut self, from_journal: bool) {
        let from_checkpoint = from_journal && self.has_checkpoint;
        for part in &mut self.parts {
            part.below = if from_checkpoint { part.checkpoint_below } else { 0 };
            for msg in part.log.iter_mut().filter(|msg| msg.fate.is_none()) {
                let before = msg.phase.clone();
                if !from_journal {
                    msg.journal_phase = msg.event_phase.clone();
                }
                msg.phase = msg.journal_phase.clone();
                if before == MPhase::DeadLettering && msg.phase == MPhase::Ready {
                    msg.extra_deliveries += 1;
                }
                // A lease the message no longer had (it ended in memory only: a dead letter in
                // progress) comes back from the journal.
                msg.revived_lease = matches!(msg.phase, MPhase::Leased { .. })
                    && (msg.phase != before || msg.revived_lease);
                msg.known = if from_checkpoint {
                    msg.known_at_checkpoint || msg.named_since_checkpoint
                } else {
                    msg.deliveries > 0
                };
            }
            // The restored cursor is the checkpoint's floor (messages settled since are read
            // again and skipped).
            let floor = if from_checkpoint {
                part.log.iter().position(|msg| msg.known_at_checkpoint).map(|offset| offset as u64)
            } else {
                None
            };
            part.cursor = floor.unwrap_or(part.below).min(part.below);
        }
        if !from_journal {
            self.has_checkpoint = false;
        }
    }

    /// The delivery is being dead-lettered: checks the job and marks the message.
    fn begin_dead_letter(&mut self, job: &DeadLetterJob, offset: u64, at_ms: i64, error: &str) {
        let msg = self.msg_mut(&job.tp, offset);
        assert_eq!(job.record.as_ref(), &msg.record, "dead-letter job carries the message");
        assert_eq!(job.history.deliveries, msg.deliveries, "dead-letter history: deliveries");
        assert_eq!(job.history.last_error.as_deref(), Some(error), "dead-letter history: error");
        assert_eq!(job.history.last_failure_ms, Some(at_ms), "dead-letter history: time");
        assert!(matches!(msg.phase, MPhase::Leased { .. }), "only a leased message fails: {msg:?}");
        msg.phase = MPhase::DeadLettering;
        msg.revived_lease = false;
    }

    /// Whether a failure of this (leased) message's delivery sends it to the dead-letter topic:
    /// it used its last delivery. Its record must be loaded to be written there: the state
    /// retries a message whose record is not loaded yet (a lease the journal named, expired
    /// before the catch-up read), which may deliver it once past `deliveries_max`.
    fn fails_for_good(&self, partition: usize, offset: u64) -> bool {
        self.parts[partition].msg(offset).deliveries >= self.config.deliveries_max
            && self.loaded(partition, offset)
    }

    /// The delay of a retry without an explicit delay, checked against the backoff range.
    fn backoff(&self, deliveries: u32, unit: f64) -> u64 {
        let config = &self.config;
        let delay = config.jittered_backoff_ms(deliveries, unit).min(BACKOFF_MS_MAX);
        let full = config.backoff_ms(deliveries);
        let least = (full as f64 * (1.0 - config.backoff_jitter)).floor() as u64;
        assert!(
            (least..=full).contains(&delay),
            "backoff {delay} of delivery {deliveries} (unit {unit}) outside [{least}, {full}]"
        );
        delay
    }
}

// ---------------------------------------------------------------------------------------------
// The harness: the state, the model, a fake clock, the journal.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Unknown,
    Settled,
    Expired,
}

struct Harness {
    config: QueueConfig,
    state: QueueState,
    model: Model,
    now: i64,
    rng: u64,
    journal_checkpoint: Option<Checkpoint>,
    journal_events: Vec<Event>,
    all_events: Vec<Event>,
    jobs: Vec<DeadLetterJob>,
    /// Every delivery handed out: (partition, offset, delivery number).
    ids: Vec<(usize, u64, u32)>,
}

impl Harness {
    fn new(config: QueueConfig, partitions: usize, seed: u64) -> Self {
        let model = Model {
            config: config.clone(),
            parts: vec![MPart::default(); partitions],
            has_checkpoint: false,
        };
        let mut harness = Self {
            state: QueueState::new(config.clone()),
            config,
            model,
            now: START_MS,
            rng: seed | 1,
            journal_checkpoint: None,
            journal_events: Vec::new(),
            all_events: Vec::new(),
            jobs: Vec::new(),
            ids: Vec::new(),
        };
        for partition in 0..partitions {
            let event = Event::Started { tp: tp(partition), offset: 0 };
            harness.state.apply(&event);
            harness.record(std::slice::from_ref(&event));
        }
        harness.check();
        harness
    }

    fn record(&mut self, events: &[Event]) {
        self.journal_events.extend_from_slice(events);
        self.all_events.extend_from_slice(events);
    }

    fn small(&mut self, below: u64) -> u64 {
        (next_unit(&mut self.rng) * below as f64) as u64
    }

    fn run(&mut self, op: &Op) {
        let parts = self.model.parts.len();
        match op {
            Op::Produce { part, keys } => {
                let log = &mut self.model.parts[part % parts].log;
                for key in keys {
                    let offset = log.len() as u64;
                    let record = StoredRecord {
                        offset,
                        timestamp_ms: self.now,
                        key: key.map(key_bytes),
                        value: Some(format!("{part}/{offset}").into_bytes()),
                        headers: Vec::new(),
                    };
                    log.push(Msg {
                        record,
                        fate: None,
                        deliveries: 0,
                        phase: MPhase::Ready,
                        journal_phase: MPhase::Ready,
                        event_phase: MPhase::Ready,
                        known: false,
                        known_at_checkpoint: false,
                        named_since_checkpoint: false,
                        not_before: 0,
                        extra_deliveries: 0,
                        revived_lease: false,
                    });
                }
            }
            Op::Fill { part, count, back } => {
                let wanted: Vec<(TopicPartition, u64)> = self
                    .model
                    .parts
                    .iter()
                    .enumerate()
                    .map(|(partition, part)| (tp(partition), part.cursor))
                    .collect();
                assert_eq!(self.state.wants_load(false), wanted, "partitions to read");
                let part = part % parts;
                self.load(part, *count as u64, *back);
            }
            Op::Advance { ms } => self.now += ms,
            Op::AdvanceToTimer { plus } => {
                if let Some(at) = self.model.next_timer() {
                    self.now = self.now.max(at + plus);
                }
            }
            Op::Expire => self.expire(),
            Op::Deliver { member, max } => self.deliver(MEMBERS[*member], *max),
            Op::Settle { pick, tweak, action } => self.settle(*pick, *tweak, action),
            Op::Complete { pick, ok } => {
                if !self.jobs.is_empty() {
                    let job = self.jobs.remove(pick % self.jobs.len());
                    self.complete(&job, *ok);
                }
            }
            Op::Release { part, key } => {
                let partition = part % parts;
                let key = key_bytes(*key);
                let parked = self.model.parts[partition].parked.contains(&key);
                assert_eq!(self.state.is_parked(&tp(partition), &key), parked, "parked key");
                if parked {
                    let event = Event::Released { tp: tp(partition), key };
                    self.state.apply(&event);
                    self.model.apply(&event);
                    self.record(std::slice::from_ref(&event));
                }
            }
            Op::Checkpoint => self.checkpoint(),
            Op::Restart { how, drain, expire_first } => self.restart(*how, *drain, *expire_first),
        }
        self.check();
    }

    /// Loads up to `count` records from a partition's cursor, the read starting up to `back`
    /// records before it (a read returns whole batches).
    fn load(&mut self, partition: usize, count: u64, back: u64) {
        let part = &self.model.parts[partition];
        let cursor = part.cursor;
        let end = (cursor + count).min(part.log.len() as u64);
        let from = cursor.saturating_sub(back);
        let records: Vec<StoredRecord> = part.log
            [usize::try_from(from).unwrap()..usize::try_from(end).unwrap()]
            .iter()
            .map(|msg| msg.record.clone())
            .collect();
        self.state.load(&tp(partition), records);
        self.model.load(partition, end - cursor);
    }

    /// What the engine does before settling: reads every message the journal named.
    fn catch_up(&mut self) {
        for _ in 0..1000 {
            let wanted = self.state.wants_load(true);
            assert_eq!(wanted, self.model.catch_up_wanted(), "partitions to catch up");
            if wanted.is_empty() {
                return;
            }
            for (tp, cursor) in wanted {
                let partition = tp.partition as usize;
                let left = self.model.parts[partition].log.len() as u64 - cursor;
                assert!(left > 0, "catching up {tp:?} past the end of its log");
                let count = 1 + self.small(left.min(3));
                let back = self.small(2);
                self.load(partition, count, back);
            }
        }
        panic!("catch-up does not end");
    }

    fn expire(&mut self) {
        let mut units = Vec::new();
        let (events, jobs) = {
            let rng = &mut self.rng;
            let mut random = || {
                let unit = next_unit(rng);
                units.push(unit);
                unit
            };
            self.state.expire(self.now, &mut random)
        };
        let now = self.now;
        let model = &mut self.model;
        for part in &mut model.parts {
            for msg in part.log.iter_mut().filter(|msg| msg.open()) {
                if matches!(msg.phase, MPhase::Waiting(not_before) if not_before <= now) {
                    msg.phase = MPhase::Ready;
                }
            }
        }
        let mut expired: Vec<(i64, usize, u64)> = model
            .open_msgs()
            .filter_map(|(partition, offset, msg)| match msg.phase {
                MPhase::Leased { until, .. } if until <= now => Some((until, partition, offset)),
                _ => None,
            })
            .collect();
        expired.sort_unstable();
        let error = format!("ack deadline passed ({} ms)", self.config.ack_wait_ms);
        let mut expected_events = Vec::new();
        let mut expected_jobs = Vec::new();
        let mut used = 0;
        for (until, partition, offset) in expired {
            if model.fails_for_good(partition, offset) {
                expected_jobs.push((until, partition, offset));
            } else {
                let deliveries = model.parts[partition].msg(offset).deliveries;
                if deliveries >= self.config.deliveries_max {
                    // Not loaded (see `fails_for_good`).
                    model.parts[partition].log[usize::try_from(offset).unwrap()]
                        .extra_deliveries += 1;
                }
                let unit = *units.get(used).expect("a retry draws a random number");
                used += 1;
                let delay = model.backoff(deliveries, unit);
                expected_events.push(Event::Failed {
                    tp: tp(partition),
                    offset,
                    at_ms: until,
                    not_before_ms: until + i64::try_from(delay).unwrap(),
                    error: error.clone(),
                });
            }
        }
        assert_eq!(used, units.len(), "one random number per retry");
        assert_eq!(events, expected_events, "expiry events");
        for event in &events {
            model.apply(event);
        }
        let got: Vec<(usize, u64)> =
            jobs.iter().map(|job| (job.tp.partition as usize, job.record.offset)).collect();
        let wanted: Vec<(usize, u64)> =
            expected_jobs.iter().map(|(_, partition, offset)| (*partition, *offset)).collect();
        assert_eq!(got, wanted, "expired leases dead-lettered after deliveries_max");
        for ((until, _, offset), job) in expected_jobs.iter().zip(&jobs) {
            model.begin_dead_letter(job, *offset, *until, &error);
        }
        self.record(&events);
        self.jobs.extend(jobs);
    }

    fn deliver(&mut self, member: &str, max: usize) {
        let model = &self.model;
        let eligible = model.all_eligible();
        let held = model.member_leases().get(member).copied().unwrap_or(0);
        let member_room = self.config.member_max_in_flight.saturating_sub(held) as usize;
        let group_room =
            usize::try_from(u64::from(self.config.max_in_flight).saturating_sub(model.in_flight()))
                .unwrap();
        let again = eligible
            .iter()
            .filter(|(partition, offset)| model.parts[*partition].msg(*offset).deliveries > 0)
            .count();
        let first = eligible.len() - again;
        let expected = max.min(member_room).min(again + group_room.min(first));

        let (events, chosen) = self.state.deliver(self.now, member, max);
        assert_eq!(
            chosen.len(),
            expected,
            "deliver(max {max}) to {member} holding {held}: eligible {eligible:?} \
             ({again} redeliveries), group room {group_room}"
        );
        assert_eq!(events.len(), chosen.len());
        let deadline_ms = self.now + i64::try_from(self.config.ack_wait_ms).unwrap();
        let mut seen = BTreeSet::new();
        for (event, chosen) in events.iter().zip(&chosen) {
            let partition = chosen.tp.partition as usize;
            let offset = chosen.record.offset;
            assert!(seen.insert((partition, offset)), "delivered twice in one call");
            let msg = self.model.parts[partition].msg(offset);
            assert!(msg.fate.is_none(), "settled message delivered again: {msg:?}");
            assert!(
                !matches!(msg.phase, MPhase::Leased { .. } | MPhase::DeadLettering),
                "message leased twice at once: {msg:?}"
            );
            assert!(self.now >= msg.not_before, "delivered before its retry time: {msg:?}");
            assert!(
                self.model.key_free(partition, offset),
                "delivered behind an unsettled message of its key or with its key parked: {msg:?}"
            );
            assert!(eligible.contains(&(partition, offset)), "not eligible: {msg:?}");
            assert_eq!(chosen.deliveries, msg.deliveries + 1, "delivery count");
            assert!(
                chosen.deliveries <= self.config.deliveries_max + msg.extra_deliveries,
                "delivered past deliveries_max: {msg:?}"
            );
            assert_eq!(chosen.deadline_ms, deadline_ms);
            assert_eq!(chosen.record.as_ref(), &msg.record);
            assert_eq!(
                event,
                &Event::Delivered {
                    tp: tp(partition),
                    offset,
                    member: member.to_owned(),
                    deadline_ms
                }
            );
            self.ids.push((partition, offset, chosen.deliveries));
        }
        for event in &events {
            self.model.apply(event);
        }
        self.record(&events);
    }

    fn settle(&mut self, pick: usize, tweak: u8, spec: &ActionSpec) {
        self.catch_up();
        // Mostly a lease held now; else any delivery handed out (stale ones included).
        let leased: Vec<(usize, u64, u32)> = self
            .model
            .open_msgs()
            .filter(|(_, _, msg)| matches!(msg.phase, MPhase::Leased { .. }))
            .map(|(partition, offset, msg)| (partition, offset, msg.deliveries))
            .collect();
        let ids = if tweak < 5 && !leased.is_empty() { &leased } else { &self.ids };
        let (mut partition, mut offset, mut number) =
            ids.get(pick % ids.len().max(1)).copied().unwrap_or((0, 0, 1));
        match tweak {
            6 => number += 1,
            7 => number = number.saturating_sub(1),
            8 => offset += 1000,
            9 => partition = usize::MAX,
            _ => {}
        }
        let id = if partition == usize::MAX {
            format!("{TOPIC}/0/x/1")
        } else {
            delivery_id(&tp(partition), offset, number)
        };
        let action = spec.action();
        let expected = self.expect_settle(partition, offset, number, &action);
        let mut units = Vec::new();
        let result = {
            let rng = &mut self.rng;
            let mut random = || {
                let unit = next_unit(rng);
                units.push(unit);
                unit
            };
            self.state.settle(self.now, &id, &action, &mut random)
        };
        let settled = match (expected, result) {
            (Ok(()), Ok(settled)) => settled,
            (Err(Refusal::Unknown), Err(SettleRefused::Unknown(_)))
            | (Err(Refusal::Settled), Err(SettleRefused::Settled(_)))
            | (Err(Refusal::Expired), Err(SettleRefused::Expired { .. })) => {
                assert!(units.is_empty());
                return;
            }
            (expected, result) => {
                let msg =
                    self.model.parts.get(partition).and_then(|part| {
                        part.log.get(usize::try_from(offset).unwrap_or(usize::MAX))
                    });
                panic!("settle {id} {action:?}: expected {expected:?}, got {result:?}; {msg:?}")
            }
        };
        let now = self.now;
        let tp = tp(partition);
        let (events, job) = match &action {
            Action::Ack => (vec![Event::Acked { tp, offset }], false),
            Action::Extend => {
                let deadline_ms = now + i64::try_from(self.config.ack_wait_ms).unwrap();
                assert_eq!(settled.deadline_ms, Some(deadline_ms));
                (vec![Event::Extended { tp, offset, deadline_ms }], false)
            }
            Action::Reject { .. } => (Vec::new(), true),
            Action::Nack { delay_ms, error } => {
                if self.model.fails_for_good(partition, offset) {
                    (Vec::new(), true)
                } else {
                    let delay = match delay_ms {
                        Some(delay) => (*delay).min(BACKOFF_MS_MAX),
                        None => {
                            assert_eq!(units.len(), 1, "one random number per retry");
                            let deliveries = self.model.parts[partition].msg(offset).deliveries;
                            self.model.backoff(deliveries, units[0])
                        }
                    };
                    let error = error.clone().unwrap_or_else(|| "nacked".to_owned());
                    let not_before_ms = now + i64::try_from(delay).unwrap();
                    (vec![Event::Failed { tp, offset, at_ms: now, not_before_ms, error }], false)
                }
            }
        };
        if !matches!(action, Action::Nack { delay_ms: None, .. }) || job {
            assert!(units.is_empty(), "no random number without a backoff");
        }
        assert_eq!(settled.events, events, "settle events of {id} {action:?}");
        for event in &events {
            self.model.apply(event);
        }
        self.record(&events);
        match (job, settled.dead_letter) {
            (false, None) => {}
            (true, Some(dead_letter)) => {
                let error = match &action {
                    Action::Reject { error } => error.clone().unwrap_or_else(|| "rejected".into()),
                    Action::Nack { error, .. } => error.clone().unwrap_or_else(|| "nacked".into()),
                    _ => unreachable!(),
                };
                assert_eq!(dead_letter.tp.partition as usize, partition);
                assert_eq!(dead_letter.record.offset, offset);
                self.model.begin_dead_letter(&dead_letter, offset, now, &error);
                self.jobs.push(dead_letter);
            }
            (expected, got) => {
                panic!("settle {id} {action:?}: dead letter expected {expected}, got {got:?}")
            }
        }
    }

    fn expect_settle(
        &self,
        partition: usize,
        offset: u64,
        number: u32,
        action: &Action,
    ) -> Result<(), Refusal> {
        let Some(part) = self.model.parts.get(partition) else { return Err(Refusal::Unknown) };
        let Some(msg) = part.log.get(usize::try_from(offset).unwrap()) else {
            return Err(Refusal::Unknown);
        };
        if msg.fate.is_some() {
            return Err(Refusal::Settled);
        }
        if !msg.known || number == 0 || number > msg.deliveries {
            return Err(Refusal::Unknown);
        }
        let current = number == msg.deliveries;
        let leased = matches!(msg.phase, MPhase::Leased { .. });
        let late_ack = current
            && *action == Action::Ack
            && matches!(msg.phase, MPhase::Ready | MPhase::Waiting(_));
        if (current && leased) || late_ack {
            Ok(())
        } else {
            Err(Refusal::Expired)
        }
    }

    fn complete(&mut self, job: &DeadLetterJob, written: bool) {
        let offset = job.record.offset;
        let msg = self.model.msg(&job.tp, offset);
        assert_eq!(msg.phase, MPhase::DeadLettering, "a dead-letter job's message: {msg:?}");
        let event = if written {
            let event = self.state.dead_lettered(job);
            let park = match self.config.ordering {
                Ordering::Key => msg.record.key.clone(),
                Ordering::None => None,
            };
            assert_eq!(event, Event::DeadLettered { tp: job.tp.clone(), offset, park });
            event
        } else {
            let event = self.state.dead_letter_failed(job, self.now, DEAD_LETTER_ERROR.to_owned());
            let delay = i64::try_from(self.config.backoff_max_ms).unwrap();
            assert_eq!(
                event,
                Event::Failed {
                    tp: job.tp.clone(),
                    offset,
                    at_ms: self.now,
                    not_before_ms: self.now + delay,
                    error: DEAD_LETTER_ERROR.to_owned(),
                }
            );
            self.model.msg_mut(&job.tp, offset).extra_deliveries += 1;
            event
        };
        self.state.apply(&event);
        self.model.apply(&event);
        self.record(std::slice::from_ref(&event));
    }

    fn checkpoint(&mut self) {
        self.journal_checkpoint = Some(self.state.checkpoint());
        self.journal_events.clear();
        self.model.checkpoint();
    }

    fn restart(&mut self, how: Restart, drain: bool, expire_first: bool) {
        if drain {
            for job in std::mem::take(&mut self.jobs) {
                self.complete(&job, true);
            }
        }
        if matches!(how, Restart::RestoreNow) {
            self.checkpoint();
        }
        // A crash: dead letters in progress are lost.
        self.jobs.clear();
        let replay = matches!(how, Restart::Replay);
        let mut state = match (&self.journal_checkpoint, replay) {
            (Some(checkpoint), false) => QueueState::restore(self.config.clone(), checkpoint),
            _ => QueueState::new(self.config.clone()),
        };
        let events = if replay { &self.all_events } else { &self.journal_events };
        for event in events {
            state.apply(event);
        }
        if replay {
            self.journal_checkpoint = None;
            self.journal_events = self.all_events.clone();
        }
        self.state = state;
        self.model.restart(!replay);
        self.check();
        if expire_first {
            // The engine's lease step expires before it fills the window.
            self.expire();
            self.check();
        }
    }

    fn check(&self) {
        let model = &self.model;
        assert_eq!(self.state.counts(), model.counts(), "counts");
        assert!(model.in_flight() <= u64::from(self.config.max_in_flight), "max_in_flight");
        let leases = self.state.member_leases();
        assert_eq!(leases, model.member_leases(), "member leases");
        let mut granted = BTreeMap::<&str, u32>::new();
        for (_, _, msg) in model.open_msgs() {
            if let (MPhase::Leased { member, .. }, false) = (&msg.phase, msg.revived_lease) {
                *granted.entry(member).or_default() += 1;
            }
        }
        assert!(
            granted.values().all(|held| *held <= self.config.member_max_in_flight),
            "member_max_in_flight: {leases:?}"
        );
        assert_eq!(self.state.next_timer_ms(), model.next_timer(), "next timer");
        let views = self.state.parts();
        assert_eq!(views.len(), model.parts.len());
        for (partition, (view, part)) in views.iter().zip(&model.parts).enumerate() {
            assert_eq!(view.tp, tp(partition));
            assert_eq!(view.read_position, part.cursor, "read position of {partition}");
            assert_eq!(view.ack_floor, part.floor(), "ack floor of {partition}");
            assert_eq!(view.parked_keys, part.parked.iter().cloned().collect::<Vec<_>>());
        }
        let checkpoint = self.state.checkpoint();
        assert_eq!(checkpoint.parts.len(), model.parts.len());
        for (partition, (saved, part)) in checkpoint.parts.iter().zip(&model.parts).enumerate() {
            assert_eq!(saved.tp, tp(partition));
            let below = part.below.max(part.cursor);
            assert_eq!(saved.below, below, "checkpoint below of {partition}");
            let open: Vec<(u64, u32, Phase)> = saved
                .open
                .iter()
                .map(|(offset, history, phase)| (*offset, history.deliveries, phase.clone()))
                .collect();
            let expected: Vec<(u64, u32, Phase)> = part
                .log
                .iter()
                .enumerate()
                .filter(|(_, msg)| msg.open())
                .map(|(offset, msg)| (offset as u64, msg.deliveries, msg.phase.phase()))
                .collect();
            assert_eq!(open, expected, "open messages of {partition}");
            let settled: Vec<u64> = (below..part.log.len() as u64)
                .filter(|offset| part.msg(*offset).fate.is_some())
                .collect();
            assert_eq!(saved.settled_above, settled, "settled above below of {partition}");
            assert_eq!(saved.parked, part.parked.iter().cloned().collect::<Vec<_>>());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn queue_state_matches_the_model(
        (config, partitions) in config(),
        seed in any::<u64>(),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let mut harness = Harness::new(config, partitions, seed);
        for op in &ops {
            harness.run(op);
        }
    }
}

fn small_config(deliveries_max: u32) -> QueueConfig {
    QueueConfig {
        topics: vec![TOPIC.to_owned()],
        ack_wait_ms: 10,
        deliveries_max,
        backoff_initial_ms: 0,
        backoff_max_ms: 0,
        ..QueueConfig::default()
    }
}

fn run(config: QueueConfig, ops: &[Op]) {
    let mut harness = Harness::new(config, 1, 0);
    for op in ops {
        harness.run(op);
    }
}

/// Found by the property test: after a restart that replays a journal without a checkpoint,
/// `below` is where the group started, so the catch-up read did not load the leases the journal
/// named; rejecting one then panicked ("a delivered message is loaded").
#[test]
fn a_replayed_lease_is_loaded_by_the_catch_up_read() {
    run(
        small_config(5),
        &[
            Op::Produce { part: 0, keys: vec![None] },
            Op::Fill { part: 0, count: 1, back: 0 },
            Op::Deliver { member: 0, max: 1 },
            Op::Restart { how: Restart::Journal, drain: false, expire_first: false },
            Op::Settle { pick: 0, tweak: 0, action: ActionSpec::Reject { error: false } },
        ],
    );
}

/// Found by the property test: after the same replay, settling an acked delivery again said
/// the id was unknown instead of settled.
#[test]
fn a_replayed_ack_stays_settled() {
    run(
        small_config(5),
        &[
            Op::Produce { part: 0, keys: vec![None] },
            Op::Fill { part: 0, count: 1, back: 0 },
            Op::Deliver { member: 0, max: 1 },
            Op::Settle { pick: 0, tweak: 0, action: ActionSpec::Ack },
            Op::Restart { how: Restart::Journal, drain: false, expire_first: false },
            Op::Settle { pick: 0, tweak: 5, action: ActionSpec::Ack },
        ],
    );
}

fn plain_record(offset: u64) -> StoredRecord {
    StoredRecord { offset, timestamp_ms: 0, key: None, value: None, headers: Vec::new() }
}

/// A restart with a full window (as many open messages as the window holds) must still read
/// past messages settled before the checkpoint to reach the open ones after them; otherwise the
/// engine's fill loop (which counts any non-empty read as progress) spins forever.
#[test]
fn a_full_window_catches_up_past_settled_messages() {
    let config = QueueConfig { topics: vec![TOPIC.to_owned()], ..QueueConfig::default() };
    let mut state = QueueState::new(config.clone());
    state.apply(&Event::Started { tp: tp(0), offset: 0 });
    let total = WINDOW_RECORDS_MAX as u64 + 1;
    state.load(&tp(0), (0..total).map(plain_record).collect());
    assert_eq!(state.wants_load(false), Vec::new(), "the window is full");
    let (_, chosen) = state.deliver(START_MS, "m0", 2);
    let second = delivery_id(&tp(0), chosen[1].record.offset, 1);
    state.settle(START_MS, &second, &Action::Ack, &mut || 0.5).unwrap();
    // Room for one: the last record comes in and fills the window again.
    let (_, cursor) = state.wants_load(false)[0].clone();
    state.load(&tp(0), (cursor..total).map(plain_record).collect());
    assert_eq!(state.counts().open, WINDOW_RECORDS_MAX as u64);

    let mut restored = QueueState::restore(config, &state.checkpoint());
    for _ in 0..10 {
        let wanted = restored.wants_load(true);
        let Some((_, cursor)) = wanted.first().cloned() else { break };
        restored.load(&tp(0), (cursor..total).map(plain_record).collect());
    }
    assert_eq!(restored.wants_load(true), Vec::new(), "caught up");
    assert_eq!(restored.parts()[0].read_position, total);
    assert_eq!(restored.counts(), state.counts());
}
