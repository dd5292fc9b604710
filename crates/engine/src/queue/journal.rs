//! A queue group's journal: the only durable record of its state.
//!
//! `<data>/queues/<group>/journal-<generation>/` is a partition log of JSON records, one
//! [`Record`] each. A generation starts with the group's configuration and, after the first,
//! a checkpoint of the whole state, in one batch; every later record is an [`Event`]. Every
//! [`CHECKPOINT_EVENTS`] events the group writes its state into a new generation and removes
//! the old one, so replay at start-up reads at most one checkpoint and that many events.
//!
//! Crash safety of the switch: the new generation is complete once its first batch is fsynced;
//! until then, the old one is the group's truth and the new directory is removed at open. The
//! highest non-empty generation wins; lower ones are leftovers of a switch and are removed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sluice_format::{BatchBuilder, NewRecord};
use sluice_log::{AppendError, LogConfig, Partition};

use super::config::QueueConfig;
use super::state::{Checkpoint, Event, QueueState};
use crate::error::EngineOpenError;
use crate::group::assignment::TopicPartition;
use crate::metadata::now_ms;
use crate::records::replay_log;
use crate::sync_watch::SyncWatch;

/// Events after which a group starts a new journal generation with a checkpoint.
pub const CHECKPOINT_EVENTS: u64 = 50_000;
/// Directory under the data directory that holds every queue group.
pub const QUEUES_DIR: &str = "queues";
const GENERATION_PREFIX: &str = "journal-";

/// One journal record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "record")]
pub enum Record {
    /// The group's configuration: the first record of every generation.
    Config {
        /// The configuration.
        config: QueueConfig,
    },
    /// The whole state: the second record of every generation after the first.
    Checkpoint {
        /// The state.
        checkpoint: Checkpoint,
    },
    /// A change.
    Event {
        /// The change.
        event: Event,
    },
    /// [`Event::Delivered`] of consecutive events with one partition, member and deadline, in
    /// their order: how a lease's deliveries are written.
    Delivered {
        /// The partition.
        tp: TopicPartition,
        /// The messages, in the order delivered.
        offsets: Vec<u64>,
        /// The member they were leased to.
        member: String,
        /// The ack deadline.
        deadline_ms: i64,
    },
    /// [`Event::Acked`] of consecutive events with one partition, in their order: how a
    /// request's acks are written.
    Acked {
        /// The partition.
        tp: TopicPartition,
        /// The messages, in the order acked.
        offsets: Vec<u64>,
    },
}

impl Record {
    /// Applies a change record to `state`; the events applied (0 for a configuration or a
    /// checkpoint, which the caller handles).
    fn apply_to(&self, state: &mut QueueState) -> u64 {
        match self {
            Self::Config { .. } | Self::Checkpoint { .. } => 0,
            Self::Event { event } => {
                state.apply(event);
                1
            }
            Self::Delivered { tp, offsets, member, deadline_ms } => {
                for offset in offsets {
                    state.apply(&Event::Delivered {
                        tp: tp.clone(),
                        offset: *offset,
                        member: member.clone(),
                        deadline_ms: *deadline_ms,
                    });
                }
                offsets.len() as u64
            }
            Self::Acked { tp, offsets } => {
                for offset in offsets {
                    state.apply(&Event::Acked { tp: tp.clone(), offset: *offset });
                }
                offsets.len() as u64
            }
        }
    }
}

/// [`Record`]'s change records over borrowed parts: serialise to the same bytes, without a
/// clone.
#[derive(Serialize)]
#[serde(rename_all = "snake_case", tag = "record")]
enum EventRecord<'a> {
    Event { event: &'a Event },
    Delivered { tp: &'a TopicPartition, offsets: &'a [u64], member: &'a str, deadline_ms: i64 },
    Acked { tp: &'a TopicPartition, offsets: &'a [u64] },
}

/// Most offsets one [`Record::Delivered`] or [`Record::Acked`] names; a longer run goes into
/// several records. Keeps a record far below the log's record size limit.
const RUN_OFFSETS_MAX: usize = 4096;

/// Splits `events` into journal records, in order: a run of consecutive `delivered` events of
/// one partition, member and deadline becomes one [`Record::Delivered`], a run of `acked`
/// events of one partition one [`Record::Acked`], any other event a [`Record::Event`]. A lease
/// of 100 messages from 4 partitions is 4 records instead of 100; replay applies the same
/// events in the same order.
fn for_each_record(
    events: &[Event],
    offsets: &mut Vec<u64>,
    mut write: impl FnMut(&EventRecord<'_>) -> Result<(), AppendError>,
) -> Result<(), AppendError> {
    let mut at = 0;
    while at < events.len() {
        offsets.clear();
        match &events[at] {
            Event::Delivered { tp, member, deadline_ms, .. } => {
                while let Some(Event::Delivered { tp: t, offset, member: m, deadline_ms: d }) =
                    events.get(at)
                {
                    if t != tp
                        || m != member
                        || d != deadline_ms
                        || offsets.len() == RUN_OFFSETS_MAX
                    {
                        break;
                    }
                    offsets.push(*offset);
                    at += 1;
                }
                write(&EventRecord::Delivered { tp, offsets, member, deadline_ms: *deadline_ms })?;
            }
            Event::Acked { tp, .. } => {
                while let Some(Event::Acked { tp: t, offset }) = events.get(at) {
                    if t != tp || offsets.len() == RUN_OFFSETS_MAX {
                        break;
                    }
                    offsets.push(*offset);
                    at += 1;
                }
                write(&EventRecord::Acked { tp, offsets })?;
            }
            event => {
                write(&EventRecord::Event { event })?;
                at += 1;
            }
        }
    }
    Ok(())
}

/// The open journal of one group.
#[derive(Debug)]
pub struct Journal {
    group_dir: PathBuf,
    generation: u64,
    log: Arc<Partition>,
    /// The log's synced offset as its sync listener last reported it, for
    /// [`Durable::wait_async`].
    synced: SyncWatch,
    events: u64,
}

/// A generation's log with a listener that publishes its synced offset.
fn watched(log: Partition) -> (Arc<Partition>, SyncWatch) {
    let synced = SyncWatch::attach(&log);
    (Arc::new(log), synced)
}

/// Encoded bytes of events appended as one batch; a request's events beyond it go into further
/// batches (each fits: an event carries at most one key, at most `RECORD_BYTES_LIMIT` bytes).
const CHUNK_BYTES: usize = 32 * 1024 * 1024;

fn log_config() -> LogConfig {
    LogConfig {
        retention_age: None,
        batch_bytes_max: sluice_log::BATCH_BYTES_LIMIT,
        ..LogConfig::default()
    }
}

fn generation_dir(group_dir: &Path, generation: u64) -> PathBuf {
    group_dir.join(format!("{GENERATION_PREFIX}{generation:020}"))
}

fn encode(records: &[Record]) -> Vec<u8> {
    let values: Vec<Vec<u8>> = records
        .iter()
        .map(|record| serde_json::to_vec(record).expect("a journal record serialises"))
        .collect();
    encode_values(&values)
}

fn encode_values(values: &[Vec<u8>]) -> Vec<u8> {
    let timestamp_ms = now_ms();
    let mut builder = BatchBuilder::new(0);
    for value in values {
        builder.push(&NewRecord { key: None, value: Some(value), headers: &[], timestamp_ms });
    }
    builder.build()
}

impl Journal {
    /// Creates the first generation of a new group's journal, holding `config` (fsynced).
    ///
    /// # Errors
    /// Storage failures.
    pub fn create(group_dir: &Path, config: &QueueConfig) -> Result<Self, String> {
        std::fs::create_dir_all(group_dir)
            .map_err(|error| format!("creating {}: {error}", group_dir.display()))?;
        sync_dir(group_dir.parent().unwrap_or(group_dir))?;
        let journal = Self::start(group_dir, 0, &[Record::Config { config: config.clone() }])?;
        Ok(journal)
    }

    fn start(group_dir: &Path, generation: u64, first: &[Record]) -> Result<Self, String> {
        let dir = generation_dir(group_dir, generation);
        let started = Partition::open(&dir, log_config())
            .map_err(|error| format!("opening {}: {error}", dir.display()))
            .and_then(|log| {
                sync_dir(group_dir)?;
                log.append(&mut encode(first))
                    .map_err(|error| format!("writing {}: {error}", dir.display()))?;
                Ok(log)
            });
        match started {
            Ok(log) => {
                let (log, synced) = watched(log);
                Ok(Self { group_dir: group_dir.to_owned(), generation, log, synced, events: 0 })
            }
            Err(error) => {
                // A generation whose first batch was written but not synced must not win at the
                // next open over the one still in use.
                if let Err(removal) = std::fs::remove_dir_all(&dir) {
                    tracing::error!(dir = %dir.display(), %removal, "removing a failed journal generation");
                }
                Err(error)
            }
        }
    }

    /// Opens a group's journal and replays it.
    ///
    /// # Errors
    /// Storage failures and records that do not decode. `Ok(None)` if the group has no
    /// complete generation (a crash during its creation): the directory is removed.
    pub fn open(group_dir: &Path) -> Result<Option<(Self, QueueState)>, EngineOpenError> {
        let io_error = |source| EngineOpenError::Io { path: group_dir.to_owned(), source };
        let mut generations = Vec::new();
        for entry in std::fs::read_dir(group_dir).map_err(io_error)? {
            let entry = entry.map_err(io_error)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(generation) =
                name.strip_prefix(GENERATION_PREFIX).and_then(|text| text.parse::<u64>().ok())
            {
                generations.push(generation);
            }
        }
        generations.sort_unstable_by(|a, b| b.cmp(a));
        let mut found = None;
        for generation in generations {
            let dir = generation_dir(group_dir, generation);
            if found.is_some() {
                std::fs::remove_dir_all(&dir).map_err(io_error)?;
                continue;
            }
            let log = Partition::open(&dir, log_config()).map_err(|source| {
                EngineOpenError::Partition {
                    topic: dir.display().to_string(),
                    partition: 0,
                    source,
                }
            })?;
            if log.high_watermark() == 0 {
                drop(log);
                std::fs::remove_dir_all(&dir).map_err(io_error)?;
                continue;
            }
            let (state, events) = replay(&log, &dir)?;
            let (log, synced) = watched(log);
            let journal = Self { group_dir: group_dir.to_owned(), generation, log, synced, events };
            found = Some((journal, state));
        }
        if found.is_none() {
            tracing::warn!(dir = %group_dir.display(), "removing a queue group whose creation did not complete");
            std::fs::remove_dir_all(group_dir).map_err(io_error)?;
        }
        Ok(found)
    }

    /// Appends `events` without waiting for them to be durable; returns what to wait on.
    ///
    /// Runs under the group's lock, so it encodes each event into one reused buffer and pushes
    /// it straight into the batch: no clone of the event, no allocation per record.
    ///
    /// # Errors
    /// The log's append error.
    pub fn append(&mut self, events: &[Event]) -> Result<Option<Durable>, AppendError> {
        if events.is_empty() {
            return Ok(None);
        }
        let timestamp_ms = now_ms();
        let mut builder = BatchBuilder::new(0);
        let mut value = Vec::with_capacity(256);
        let mut offsets = Vec::new();
        let log = &self.log;
        for_each_record(events, &mut offsets, |record| {
            value.clear();
            serde_json::to_writer(&mut value, record).expect("a journal record serialises");
            if builder.record_count() > 0 && builder.bytes_len() + value.len() > CHUNK_BYTES {
                let full = std::mem::replace(&mut builder, BatchBuilder::new(0));
                log.append_unsynced(&mut full.build())?;
            }
            builder.push(&NewRecord { key: None, value: Some(&value), headers: &[], timestamp_ms });
            Ok(())
        })?;
        let last_offset = self.log.append_unsynced(&mut builder.build())?.last_offset;
        self.events += events.len() as u64;
        Ok(Some(self.durable(last_offset)))
    }

    /// What to wait on for everything appended so far to be durable (`None` if nothing was).
    pub fn durable_end(&self) -> Option<Durable> {
        let end = self.log.log_end_offset();
        (end > 0).then(|| self.durable(end - 1))
    }

    fn durable(&self, last_offset: u64) -> Durable {
        Durable { log: Arc::clone(&self.log), synced: self.synced.clone(), last_offset }
    }

    /// Whether the journal has grown enough for a new generation.
    pub fn wants_checkpoint(&self) -> bool {
        self.events >= CHECKPOINT_EVENTS
    }

    /// Starts a new generation holding `state`, then removes the old one. The caller holds the
    /// group's lock, so no event is appended between the checkpoint and the switch.
    ///
    /// # Errors
    /// Storage failures; the old generation stays in use.
    pub fn checkpoint(&mut self, state: &QueueState) -> Result<(), String> {
        let records = [
            Record::Config { config: state.config().clone() },
            Record::Checkpoint { checkpoint: state.checkpoint() },
        ];
        let next = Self::start(&self.group_dir, self.generation + 1, &records)?;
        let old = std::mem::replace(self, next);
        let old_dir = generation_dir(&old.group_dir, old.generation);
        // Appends still waiting on the old log hold it open; their fsync works on the removed
        // file, and the checkpoint already holds what they wrote.
        if let Err(error) = old.log.shutdown() {
            tracing::warn!(%error, "syncing the old journal generation");
        }
        drop(old);
        std::fs::remove_dir_all(&old_dir)
            .map_err(|error| format!("removing {}: {error}", old_dir.display()))?;
        tracing::debug!(dir = %self.group_dir.display(), generation = self.generation, "queue journal checkpointed");
        Ok(())
    }

    /// Syncs the journal.
    ///
    /// # Errors
    /// Storage failures.
    pub fn shutdown(&self) -> Result<(), sluice_log::MaintenanceError> {
        self.log.shutdown()
    }
}

/// Appended events to wait for.
#[derive(Debug)]
pub struct Durable {
    log: Arc<Partition>,
    synced: SyncWatch,
    last_offset: u64,
}

impl Durable {
    /// Blocks until the events are fsynced.
    ///
    /// # Errors
    /// The log's sync error.
    pub fn wait(self) -> Result<(), AppendError> {
        self.log.wait_durable(self.last_offset)
    }

    /// Returns once the events are fsynced, without holding a thread: the log's background
    /// syncer leads the group commit (shared by every request of the group waiting meanwhile)
    /// and its listener wakes this task.
    ///
    /// # Errors
    /// The log's sync error.
    pub async fn wait_async(self) -> Result<(), AppendError> {
        self.synced.wait(&self.log, self.last_offset).await
    }
}

fn replay(log: &Partition, dir: &Path) -> Result<(QueueState, u64), EngineOpenError> {
    let mut state: Option<QueueState> = None;
    let mut events = 0;
    let name = format!("queue journal {}", dir.display());
    replay_log(log, &name, |stored| {
        let value = stored.value.unwrap_or_default();
        let record: Record = serde_json::from_slice(&value).map_err(|error| error.to_string())?;
        match (record, state.as_mut()) {
            (Record::Config { config }, _) => state = Some(QueueState::new(config)),
            (Record::Checkpoint { checkpoint }, Some(current)) => {
                *current = QueueState::restore(current.config().clone(), &checkpoint);
            }
            (record, Some(current)) => events += record.apply_to(current),
            (_, None) => return Err("no configuration before it".to_owned()),
        }
        Ok(())
    })?;
    let state = state.ok_or_else(|| EngineOpenError::Metadata {
        offset: 0,
        reason: format!("{name}: no configuration record"),
    })?;
    Ok((state, events))
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    std::fs::File::open(dir)
        .and_then(|file| file.sync_all())
        .map_err(|error| format!("syncing directory {}: {error}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::assignment::TopicPartition;

    /// The borrowed encoding `append` uses writes exactly what `Record::Event` does, so
    /// journals written before and after it replay the same.
    #[test]
    fn borrowed_event_records_encode_as_owned_ones() {
        let tp = TopicPartition { topic: "orders \"eu\"".to_owned(), partition: 3 };
        let events = [
            Event::Started { tp: tp.clone(), offset: 7 },
            Event::Delivered {
                tp: tp.clone(),
                offset: 8,
                member: "w-1".to_owned(),
                deadline_ms: 9,
            },
            Event::Failed {
                tp: tp.clone(),
                offset: 8,
                at_ms: 10,
                not_before_ms: 11,
                error: "exit 1: \u{7}line\nbreak".to_owned(),
            },
            Event::Extended { tp: tp.clone(), offset: 8, deadline_ms: 12 },
            Event::Acked { tp: tp.clone(), offset: 8 },
            Event::DeadLettered { tp: tp.clone(), offset: 9, park: Some(b"k\xff".to_vec()) },
            Event::DeadLettered { tp: tp.clone(), offset: 10, park: None },
            Event::Released { tp, key: b"k".to_vec() },
        ];
        for event in events {
            let borrowed = serde_json::to_vec(&EventRecord::Event { event: &event }).unwrap();
            let owned = serde_json::to_vec(&Record::Event { event: event.clone() }).unwrap();
            assert_eq!(borrowed, owned, "{event:?}");
            let back: Record = serde_json::from_slice(&borrowed).unwrap();
            assert_eq!(back, Record::Event { event });
        }
        let tp = TopicPartition { topic: "orders \"eu\"".to_owned(), partition: 3 };
        let offsets = [8, 9, 12];
        let runs = [
            (
                EventRecord::Delivered {
                    tp: &tp,
                    offsets: &offsets,
                    member: "w-1",
                    deadline_ms: 9,
                },
                Record::Delivered {
                    tp: tp.clone(),
                    offsets: offsets.to_vec(),
                    member: "w-1".to_owned(),
                    deadline_ms: 9,
                },
            ),
            (
                EventRecord::Acked { tp: &tp, offsets: &offsets },
                Record::Acked { tp: tp.clone(), offsets: offsets.to_vec() },
            ),
        ];
        for (borrowed, owned) in runs {
            let bytes = serde_json::to_vec(&borrowed).unwrap();
            assert_eq!(bytes, serde_json::to_vec(&owned).unwrap());
            assert_eq!(serde_json::from_slice::<Record>(&bytes).unwrap(), owned);
        }
    }

    /// Runs of `delivered` and `acked` events are written as one record each, in order, and
    /// the journal replays to the state the events made one by one.
    #[test]
    fn runs_of_deliveries_and_acks_are_one_record_each_and_replay_every_event() {
        let dir = tempfile::tempdir().unwrap();
        let group_dir = dir.path().join("workers");
        let config = QueueConfig { topics: vec!["jobs".to_owned()], ..QueueConfig::default() };
        let mut journal = Journal::create(&group_dir, &config).unwrap();
        let tp = |partition| TopicPartition { topic: "jobs".to_owned(), partition };
        let delivered = |partition, offset, member: &str, deadline_ms| Event::Delivered {
            tp: tp(partition),
            offset,
            member: member.to_owned(),
            deadline_ms,
        };
        let acked = |partition, offset| Event::Acked { tp: tp(partition), offset };
        let events = vec![
            Event::Started { tp: tp(0), offset: 0 },
            Event::Started { tp: tp(1), offset: 0 },
            delivered(0, 0, "a", 50),
            delivered(0, 1, "a", 50),
            delivered(0, 2, "a", 50),
            delivered(1, 0, "a", 50),
            delivered(1, 1, "a", 50),
            delivered(1, 2, "b", 50),
            delivered(1, 3, "b", 60),
            acked(0, 1),
            acked(0, 0),
            Event::Failed { tp: tp(0), offset: 2, at_ms: 70, not_before_ms: 80, error: "e".into() },
            acked(1, 0),
            acked(0, 2),
            acked(1, 2),
        ];
        journal.append(&events).unwrap().expect("something to wait on").wait().unwrap();
        // The config record, 2 `started`, deliveries (0: a 50), (1: a 50), (1: b 50), (1: b 60),
        // acks (0), `failed`, acks (1), (0), (1).
        assert_eq!(journal.log.log_end_offset(), 1 + 2 + 4 + 1 + 1 + 3);
        let mut expected = QueueState::new(config.clone());
        for event in &events {
            expected.apply(event);
        }
        drop(journal);
        let (reopened, state) = Journal::open(&group_dir).unwrap().expect("a complete generation");
        assert_eq!(reopened.events, events.len() as u64, "every event counted");
        assert_eq!(state.checkpoint(), expected.checkpoint());
    }

    /// A run longer than `RUN_OFFSETS_MAX` is split, and every offset replays.
    #[test]
    fn a_run_past_the_offsets_limit_is_split() {
        let tp = TopicPartition { topic: "jobs".to_owned(), partition: 0 };
        let count = RUN_OFFSETS_MAX + 5;
        let events: Vec<Event> =
            (0..count as u64).map(|offset| Event::Acked { tp: tp.clone(), offset }).collect();
        let mut runs = Vec::new();
        for_each_record(&events, &mut Vec::new(), |record| {
            let EventRecord::Acked { offsets, .. } = record else { panic!("not a run of acks") };
            runs.push(offsets.to_vec());
            Ok(())
        })
        .unwrap();
        assert_eq!(runs.iter().map(Vec::len).collect::<Vec<_>>(), [RUN_OFFSETS_MAX, 5]);
        assert_eq!(runs.concat(), (0..count as u64).collect::<Vec<_>>());
    }

    /// A request's events beyond `CHUNK_BYTES` go into a further batch, and the journal
    /// replays them all.
    #[test]
    fn events_past_one_chunk_are_appended_in_several_batches() {
        let dir = tempfile::tempdir().unwrap();
        let group_dir = dir.path().join("workers");
        let config = QueueConfig { topics: vec!["jobs".to_owned()], ..QueueConfig::default() };
        let mut journal = Journal::create(&group_dir, &config).unwrap();
        let tp = TopicPartition { topic: "jobs".to_owned(), partition: 0 };
        // 9,000 failures with a 4 KiB error each: about 37 MiB encoded.
        let error = "x".repeat(4096);
        let events: Vec<Event> = (0..9000)
            .map(|offset| Event::Failed {
                tp: tp.clone(),
                offset,
                at_ms: 1,
                not_before_ms: 2,
                error: error.clone(),
            })
            .collect();
        journal.append(&events).unwrap().expect("something to wait on").wait().unwrap();
        assert_eq!(journal.log.log_end_offset(), 1 + 9000, "the config record and each event");
        // Offset 0 is the config record's batch; walk the batches after it.
        let read = journal.log.read(1, u32::MAX).unwrap();
        let (mut batches, mut at) = (Vec::new(), 0);
        while at < read.batches.len() {
            let header = &read.batches[at..];
            let length = u32::from_be_bytes(header[8..12].try_into().unwrap()) as usize;
            assert!(12 + length <= CHUNK_BYTES + 64 * 1024, "a batch of {length} bytes");
            batches.push(length);
            at += 12 + length;
        }
        assert_eq!(batches.len(), 2, "{batches:?}");
        drop(journal);
        let (reopened, _) = Journal::open(&group_dir).unwrap().expect("a complete generation");
        assert_eq!(reopened.events, 9000, "every event replayed");
    }
}
