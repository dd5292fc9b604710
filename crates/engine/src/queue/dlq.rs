//! Dead letters: the records a queue group gave up on, in a normal topic (`<topic>.dlq` by
//! default), with their history as headers; and the operator's tools: list, replay, purge.
//!
//! A dead letter keeps the original key, value and headers and adds the `sluice-dlq-*` headers
//! below. Replaying one republishes it to its original topic and partition with a new id
//! (`replay:<dlq topic>/<partition>/<offset>`, so a replay retried after a crash is a
//! duplicate within the topic's dedup window) and a `replayed-from` header, releases the key
//! it parked, and records the replay in the internal compacted log `__dead_letters`, so a
//! second "replay all" skips it. Purging removes every record of the dead-letter topic (the
//! topic is deleted and created again with the same settings), forgets its replay marks and
//! releases the keys its records parked.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sluice_format::{BatchBuilder, NewRecord};
use sluice_log::{LogConfig, Partition};

use super::state::{DeadLetterJob, Event, History};
use crate::engine::Engine;
use crate::error::{EngineOpenError, QueueError};
use crate::group::assignment::TopicPartition;
use crate::group::lock;
use crate::metadata::now_ms;
use crate::records::{decode_batches, replay_log, ProduceRecord, StoredRecord, ID_HEADER};

/// Header: the topic the message came from.
pub const HEADER_TOPIC: &str = "sluice-dlq-topic";
/// Header: its partition.
pub const HEADER_PARTITION: &str = "sluice-dlq-partition";
/// Header: its offset.
pub const HEADER_OFFSET: &str = "sluice-dlq-offset";
/// Header: the queue group that gave up on it.
pub const HEADER_GROUP: &str = "sluice-dlq-group";
/// Header: how many times it was delivered.
pub const HEADER_DELIVERIES: &str = "sluice-dlq-deliveries";
/// Header: the last failure's error text.
pub const HEADER_ERROR: &str = "sluice-dlq-error";
/// Header: when its first delivery failed (ms since the epoch).
pub const HEADER_FIRST_FAILURE: &str = "sluice-dlq-first-failure-ms";
/// Header: when its last delivery failed (ms since the epoch).
pub const HEADER_LAST_FAILURE: &str = "sluice-dlq-last-failure-ms";
/// Header on a replayed record: the dead letter it came from, `<topic>/<partition>/<offset>`.
pub const HEADER_REPLAYED_FROM: &str = "replayed-from";
/// Longest error text kept in a dead letter (bytes); longer ones keep their tail.
pub const ERROR_BYTES_MAX: usize = 4096;
/// Most dead letters one list returns.
pub const LIST_MAX: usize = 10_000;
/// Bytes of dead letters one list returns at most (past the first letter).
pub const LIST_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Dead letters read per step by replay and purge.
const PAGE_RECORDS: usize = 1000;

const MARKS_LOG: &str = "__dead_letters";
const READ_BYTES: u32 = 1024 * 1024;

/// Builds the dead-letter record of a job.
pub fn dead_letter_record(group: &str, job: &DeadLetterJob) -> ProduceRecord {
    let record = &job.record;
    let mut headers: Vec<(String, Option<Vec<u8>>)> = record
        .headers
        .iter()
        .filter(|(name, _)| !name.starts_with("sluice-dlq-"))
        .cloned()
        .collect();
    let mut add =
        |name: &str, value: String| headers.push((name.to_owned(), Some(value.into_bytes())));
    add(HEADER_TOPIC, job.tp.topic.clone());
    add(HEADER_PARTITION, job.tp.partition.to_string());
    add(HEADER_OFFSET, record.offset.to_string());
    add(HEADER_GROUP, group.to_owned());
    add(HEADER_DELIVERIES, job.history.deliveries.to_string());
    if let Some(error) = &job.history.last_error {
        add(HEADER_ERROR, tail(error, ERROR_BYTES_MAX).to_owned());
    }
    if let Some(at) = job.history.first_failure_ms {
        add(HEADER_FIRST_FAILURE, at.to_string());
    }
    if let Some(at) = job.history.last_failure_ms {
        add(HEADER_LAST_FAILURE, at.to_string());
    }
    ProduceRecord {
        key: record.key.clone(),
        value: record.value.clone(),
        headers,
        partition: None,
        id: None,
        timestamp_ms: None,
    }
}

/// The last `max` bytes of `text`, cut at a character boundary.
pub fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// A dead letter as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its partition in the dead-letter topic.
    pub partition: u32,
    /// The record in the dead-letter topic (original key, value and headers, plus history).
    pub record: StoredRecord,
    /// Where it came from.
    pub origin: Option<TopicPartition>,
    /// Its offset there.
    pub origin_offset: Option<u64>,
    /// The group that gave up on it.
    pub group: Option<String>,
    /// Its history.
    pub history: History,
    /// Where it was replayed to, if it was.
    pub replayed: Option<Mark>,
}

/// What to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplaySelection {
    /// Every dead letter not replayed yet.
    All,
    /// These offsets of partition 0 (or of the partition given).
    Offsets(Vec<(u32, u64)>),
    /// Every dead letter with this key not replayed yet.
    Key(Vec<u8>),
}

/// A dead letter replayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// When.
    pub replayed_at_ms: i64,
    /// The topic it went back to.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// Its new offset.
    pub offset: u64,
}

/// One replayed dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Its partition in the dead-letter topic.
    pub dead_letter_partition: u32,
    /// Its offset in the dead-letter topic.
    pub dead_letter_offset: u64,
    /// Where it went.
    pub to: Mark,
}

type MarkMap = BTreeMap<(String, u32), BTreeMap<u64, Mark>>;

/// The `__dead_letters` log of replay marks, and its contents in memory.
pub(crate) struct Marks {
    log: Partition,
    marks: Mutex<MarkMap>,
}

fn mark_key(topic: &str, partition: u32, offset: u64) -> Vec<u8> {
    format!("{topic}\0{partition}\0{offset}").into_bytes()
}

impl Marks {
    pub fn open(data_dir: &Path) -> Result<Self, EngineOpenError> {
        let config = LogConfig { compact: true, retention_age: None, ..LogConfig::default() };
        let log = Partition::open(&data_dir.join(MARKS_LOG), config).map_err(|source| {
            EngineOpenError::Partition { topic: MARKS_LOG.to_owned(), partition: 0, source }
        })?;
        let mut marks = MarkMap::new();
        replay_log(&log, MARKS_LOG, |record| {
            let key = String::from_utf8(record.key.unwrap_or_default())
                .map_err(|_| "key is not UTF-8".to_owned())?;
            let mut parts = key.split('\0');
            let parsed = (
                parts.next(),
                parts.next().and_then(|p| p.parse().ok()),
                parts.next().and_then(|o| o.parse().ok()),
            );
            let (Some(topic), Some(partition), Some(offset)) = parsed else {
                return Err(format!("key {key:?} is not topic/partition/offset"));
            };
            let slot = marks.entry((topic.to_owned(), partition)).or_default();
            match record.value {
                Some(value) => {
                    let mark: Mark =
                        serde_json::from_slice(&value).map_err(|error| error.to_string())?;
                    slot.insert(offset, mark);
                }
                None => {
                    slot.remove(&offset);
                }
            }
            Ok(())
        })?;
        Ok(Self { log, marks: Mutex::new(marks) })
    }

    fn get(&self, topic: &str, partition: u32, offset: u64) -> Option<Mark> {
        lock(&self.marks)
            .get(&(topic.to_owned(), partition))
            .and_then(|slot| slot.get(&offset))
            .cloned()
    }

    /// Durably records marks (`None` removes one).
    fn put(&self, entries: &[(String, u32, u64, Option<Mark>)]) -> Result<(), QueueError> {
        if entries.is_empty() {
            return Ok(());
        }
        let encoded: Vec<(Vec<u8>, Option<Vec<u8>>)> = entries
            .iter()
            .map(|(topic, partition, offset, mark)| {
                let value =
                    mark.as_ref().map(|mark| serde_json::to_vec(mark).expect("a mark serialises"));
                (mark_key(topic, *partition, *offset), value)
            })
            .collect();
        let mut builder = BatchBuilder::new(0);
        let timestamp_ms = now_ms();
        for (key, value) in &encoded {
            builder.push(&NewRecord {
                key: Some(key),
                value: value.as_deref(),
                headers: &[],
                timestamp_ms,
            });
        }
        self.log
            .append(&mut builder.build())
            .map_err(|error| QueueError::Storage(format!("{MARKS_LOG}: {error}")))?;
        let mut marks = lock(&self.marks);
        for (topic, partition, offset, mark) in entries {
            let slot = marks.entry((topic.clone(), *partition)).or_default();
            match mark {
                Some(mark) => slot.insert(*offset, mark.clone()),
                None => slot.remove(offset),
            };
        }
        Ok(())
    }

    fn of_topic(&self, topic: &str) -> Vec<(u32, u64)> {
        lock(&self.marks)
            .iter()
            .filter(|((name, _), _)| name == topic)
            .flat_map(|((_, partition), slot)| slot.keys().map(move |offset| (*partition, *offset)))
            .collect()
    }

    pub fn shutdown(&self) -> Result<(), sluice_log::MaintenanceError> {
        self.log.shutdown()
    }
}

fn header<'a>(record: &'a StoredRecord, name: &str) -> Option<&'a str> {
    record
        .headers
        .iter()
        .rev()
        .find(|(header, _)| header == name)
        .and_then(|(_, value)| value.as_deref())
        .and_then(|value| std::str::from_utf8(value).ok())
}

fn describe(engine: &Engine, topic: &str, partition: u32, record: StoredRecord) -> DeadLetter {
    let number = |name| header(&record, name).and_then(|text| text.parse::<i64>().ok());
    let origin =
        header(&record, HEADER_TOPIC).zip(number(HEADER_PARTITION)).map(|(topic, partition)| {
            TopicPartition {
                topic: topic.to_owned(),
                partition: u32::try_from(partition).unwrap_or(0),
            }
        });
    let history = History {
        deliveries: number(HEADER_DELIVERIES).and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
        first_failure_ms: number(HEADER_FIRST_FAILURE),
        last_failure_ms: number(HEADER_LAST_FAILURE),
        last_error: header(&record, HEADER_ERROR).map(str::to_owned),
    };
    DeadLetter {
        partition,
        origin,
        origin_offset: number(HEADER_OFFSET).and_then(|offset| u64::try_from(offset).ok()),
        group: header(&record, HEADER_GROUP).map(str::to_owned),
        history,
        replayed: engine.inner.queues.marks.get(topic, partition, record.offset),
        record,
    }
}

impl Engine {
    /// Dead letters of `topic` (a dead-letter topic) from `from` (per partition), up to `max`
    /// and about [`LIST_BYTES_MAX`] bytes (at least one); replayed ones only if
    /// `include_replayed`.
    ///
    /// # Errors
    /// [`QueueError::UnknownTopic`], [`QueueError::Invalid`], [`QueueError::Storage`].
    pub fn dead_letters(
        &self,
        topic: &str,
        from: u64,
        max: usize,
        include_replayed: bool,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        if !(1..=LIST_MAX).contains(&max) {
            return Err(QueueError::Invalid(format!("max is {max}; allowed is 1..={LIST_MAX}")));
        }
        let partitions = self.dead_letter_partitions(topic)?;
        let mut listed = Vec::new();
        let mut bytes = 0;
        for partition in 0..partitions {
            let mut next = from;
            while listed.len() < max && bytes < LIST_BYTES_MAX {
                let page = self.letters_page(topic, partition, next, max - listed.len())?;
                for letter in page.letters {
                    if include_replayed || letter.replayed.is_none() {
                        bytes += letter.record.size_bytes();
                        listed.push(letter);
                    }
                }
                if page.next >= page.end {
                    break;
                }
                next = page.next;
            }
        }
        Ok(listed)
    }

    fn dead_letter_partitions(&self, topic: &str) -> Result<u32, QueueError> {
        self.topic(topic)
            .map(|handle| handle.partition_count())
            .ok_or_else(|| QueueError::UnknownTopic(topic.to_owned()))
    }

    /// Up to `max` records of one partition of a dead-letter topic from `from`, described.
    fn letters_page(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max: usize,
    ) -> Result<Page, QueueError> {
        let handle = self.topic(topic).ok_or_else(|| QueueError::UnknownTopic(topic.to_owned()))?;
        let log = &handle
            .partitions
            .get(partition as usize)
            .ok_or_else(|| {
                QueueError::Invalid(format!(
                    "dead-letter topic '{topic}' has no partition {partition}"
                ))
            })?
            .log;
        let from = from.max(log.log_start_offset());
        let end = log.high_watermark();
        if from >= end {
            return Ok(Page { letters: Vec::new(), next: end, end });
        }
        let read =
            log.read(from, READ_BYTES).map_err(|error| QueueError::Storage(error.to_string()))?;
        let mut records = decode_batches(&read.batches, from)
            .map_err(|error| QueueError::Storage(error.to_string()))?;
        records.truncate(max);
        let next = records.last().map_or(end, |last| last.offset + 1);
        let letters =
            records.into_iter().map(|record| describe(self, topic, partition, record)).collect();
        Ok(Page { letters, next, end })
    }

    /// Replays dead letters of `topic` to their original topics and partitions, releasing the
    /// keys they parked. Dead letters replayed before are skipped. All and by-key replays walk
    /// the whole dead-letter topic a page at a time; by offsets reads each offset named (at most
    /// [`LIST_MAX`] of them).
    ///
    /// # Errors
    /// [`QueueError::UnknownTopic`] (the dead-letter topic, or an original topic that no longer
    /// exists), [`QueueError::Invalid`] (an offset with no dead letter), [`QueueError::Storage`].
    pub async fn replay_dead_letters(
        &self,
        topic: &str,
        selection: ReplaySelection,
    ) -> Result<Vec<Replayed>, QueueError> {
        let mut replayed = Vec::new();
        match selection {
            ReplaySelection::Offsets(wanted) => {
                if wanted.len() > LIST_MAX {
                    return Err(QueueError::Invalid(format!(
                        "a replay names {} offsets; allowed is up to {LIST_MAX}",
                        wanted.len()
                    )));
                }
                for (partition, offset) in wanted {
                    let page = self
                        .blocking(topic, move |engine, topic| {
                            engine.letters_page(topic, partition, offset, 1)
                        })
                        .await?;
                    let letter = page
                        .letters
                        .into_iter()
                        .find(|letter| letter.record.offset == offset)
                        .ok_or_else(|| {
                            QueueError::Invalid(format!(
                                "dead-letter topic '{topic}' has no record at partition {partition} offset {offset}"
                            ))
                        })?;
                    if letter.replayed.is_none() {
                        replayed.push(self.replay_one(topic, letter).await?);
                    }
                }
            }
            ReplaySelection::All | ReplaySelection::Key(_) => {
                let partitions = self.dead_letter_partitions(topic)?;
                for partition in 0..partitions {
                    let mut from = 0;
                    loop {
                        let page = self
                            .blocking(topic, move |engine, topic| {
                                engine.letters_page(topic, partition, from, PAGE_RECORDS)
                            })
                            .await?;
                        for letter in page.letters {
                            let key_matches = match &selection {
                                ReplaySelection::Key(key) => {
                                    letter.record.key.as_deref() == Some(key.as_slice())
                                }
                                _ => true,
                            };
                            if key_matches && letter.replayed.is_none() {
                                replayed.push(self.replay_one(topic, letter).await?);
                            }
                        }
                        if page.next >= page.end {
                            break;
                        }
                        from = page.next;
                    }
                }
            }
        }
        Ok(replayed)
    }

    async fn replay_one(&self, topic: &str, letter: DeadLetter) -> Result<Replayed, QueueError> {
        let Some(origin) = letter.origin.clone() else {
            return Err(QueueError::Invalid(format!(
                "record {}/{} of '{topic}' has no {HEADER_TOPIC} header: it is not a dead letter",
                letter.partition, letter.record.offset
            )));
        };
        let source = format!("{topic}/{}/{}", letter.partition, letter.record.offset);
        let mut headers: Vec<(String, Option<Vec<u8>>)> = letter
            .record
            .headers
            .iter()
            .filter(|(name, _)| {
                // A replayed event is a message again, not a stream event: its old version
                // would claim a place in the stream it no longer has.
                !name.starts_with("sluice-dlq-")
                    && !name.starts_with("sluice-stream-")
                    && name != ID_HEADER
                    && name != HEADER_REPLAYED_FROM
            })
            .cloned()
            .collect();
        headers.push((HEADER_REPLAYED_FROM.to_owned(), Some(source.clone().into_bytes())));
        let record = ProduceRecord {
            key: letter.record.key.clone(),
            value: letter.record.value.clone(),
            headers,
            partition: Some(origin.partition),
            id: Some(format!("replay:{source}")),
            timestamp_ms: None,
        };
        let produced =
            self.produce(&origin.topic, vec![record]).await.map_err(|error| match error {
                crate::ProduceError::UnknownTopic(name) => QueueError::UnknownTopic(name),
                other => QueueError::Storage(other.to_string()),
            })?;
        let mark = Mark {
            replayed_at_ms: now_ms(),
            topic: origin.topic.clone(),
            partition: produced[0].partition,
            offset: produced[0].offset,
        };
        let entry = (topic.to_owned(), letter.partition, letter.record.offset, Some(mark.clone()));
        self.blocking(topic, move |engine, _| engine.inner.queues.marks.put(&[entry])).await?;
        self.release_parked(&letter).await?;
        Ok(Replayed {
            dead_letter_partition: letter.partition,
            dead_letter_offset: letter.record.offset,
            to: mark,
        })
    }

    /// Removes every record of dead-letter topic `topic` and releases the keys they parked.
    /// Returns how many records were removed.
    ///
    /// # Errors
    /// [`QueueError::UnknownTopic`], [`QueueError::Storage`].
    pub async fn purge_dead_letters(&self, topic: &str) -> Result<u64, QueueError> {
        let description =
            self.describe_topic(topic).map_err(|_| QueueError::UnknownTopic(topic.to_owned()))?;
        let stored: u64 =
            description.partitions.iter().map(|p| p.high_watermark - p.log_start_offset).sum();
        for partition in 0..self.dead_letter_partitions(topic)? {
            let mut from = 0;
            loop {
                let page = self
                    .blocking(topic, move |engine, topic| {
                        engine.letters_page(topic, partition, from, PAGE_RECORDS)
                    })
                    .await?;
                for letter in page.letters.iter().filter(|letter| letter.replayed.is_none()) {
                    self.release_parked(letter).await?;
                }
                if page.next >= page.end {
                    break;
                }
                from = page.next;
            }
        }
        self.blocking(topic, move |engine, topic| {
            engine.forget_marks(topic)?;
            let storage = |error: crate::TopicError| {
                QueueError::Storage(format!("purging '{topic}': {error}"))
            };
            engine.delete_topic(topic).map_err(storage)?;
            match engine.create_topic(topic, description.config) {
                // A group dead-lettering at this moment created it again: it is empty too.
                Ok(_) | Err(crate::TopicError::Exists(_)) => Ok(()),
                Err(error) => Err(storage(error)),
            }
        })
        .await?;
        tracing::info!(topic, records = stored, "dead letters purged");
        Ok(stored)
    }

    /// Forgets the replay marks of `topic` (its records are gone: purged or the topic deleted).
    pub(crate) fn forget_marks(&self, topic: &str) -> Result<(), QueueError> {
        let marks = &self.inner.queues.marks;
        let forget: Vec<(String, u32, u64, Option<Mark>)> = marks
            .of_topic(topic)
            .into_iter()
            .map(|(partition, offset)| (topic.to_owned(), partition, offset, None))
            .collect();
        marks.put(&forget)
    }

    /// Runs blocking work (log reads, fsynced appends, topic changes) off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        topic: &str,
        work: impl FnOnce(&Engine, &str) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let (engine, topic) = (self.clone(), topic.to_owned());
        tokio::task::spawn_blocking(move || work(&engine, &topic))
            .await
            .expect("blocking dead-letter work does not panic")
    }

    /// Releases the key a dead letter parked in its group, if it parked one.
    async fn release_parked(&self, letter: &DeadLetter) -> Result<(), QueueError> {
        let (Some(group), Some(origin), Some(key)) =
            (&letter.group, &letter.origin, &letter.record.key)
        else {
            return Ok(());
        };
        match self.release_key(group, &origin.topic, origin.partition, key).await {
            Ok(_) | Err(QueueError::UnknownQueue(_)) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Releases a parked key of queue group `group` in `topic`/`partition`: its waiting
    /// messages become deliverable. Returns whether the key was parked.
    ///
    /// # Errors
    /// [`QueueError::UnknownQueue`], [`QueueError::Storage`].
    pub async fn release_key(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        key: &[u8],
    ) -> Result<bool, QueueError> {
        let queue = self.inner.queues.get(group)?;
        let tp = TopicPartition { topic: topic.to_owned(), partition };
        let durable = {
            let mut inner = lock(&queue.inner);
            if !inner.state.is_parked(&tp, key) {
                return Ok(false);
            }
            let event = Event::Released { tp, key: key.to_vec() };
            inner.state.apply(&event);
            inner.journal(std::slice::from_ref(&event))?
        };
        if let Some(durable) = durable {
            durable
                .wait_async()
                .await
                .map_err(|error| QueueError::Storage(format!("queue journal: {error}")))?;
        }
        queue.changed.notify_waiters();
        Ok(true)
    }
}

/// Dead letters of one partition read in one step.
struct Page {
    letters: Vec<DeadLetter>,
    /// The offset after the last one read.
    next: u64,
    /// The partition's high watermark when read.
    end: u64,
}
