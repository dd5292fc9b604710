//! Catch-up subscriptions: to one stream, or to every stream of a topic, from a position.
//!
//! A subscription is a cursor of offsets, one per partition it follows. Each step reads what
//! lies between its cursor and the high watermark (the stream's candidates from the key index,
//! or the partition's batches) and moves the cursor to where it read up to. History and live
//! events are the same loop, so there is no switch-over to get wrong: every offset below the
//! cursor has been looked at exactly once, and nothing at or past it has. At the high
//! watermark it waits for the engine's append signal (which is bumped only after an append is
//! visible) and reads again.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::read::{to_event, version_of, ReadStream};
use super::{StreamEvent, DELETED_HEADER};
use crate::engine::Engine;
use crate::error::StreamError;
use crate::partitioner::partition_for_key;
use crate::records::decode_batches;
use crate::topic::Topic;

/// Bytes read from one partition per step of a topic subscription.
const STEP_BYTES: u32 = 1024 * 1024;
/// Candidate records of a stream looked at per step.
const STEP_CANDIDATES: usize = 1024;
/// How often a waiting subscription checks that its topic still exists.
const TOPIC_CHECK: Duration = Duration::from_secs(1);

/// Where a subscription starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionFrom {
    /// The first event still stored.
    Start,
    /// Only events appended after the subscription is made.
    End,
    /// A stream subscription: this version and later.
    Version(u64),
    /// A topic subscription: per partition, the next offset to read (as
    /// [`Subscription::position`] returned it); partitions not named start at 0.
    Offsets(Vec<(u32, u64)>),
}

/// A catch-up subscription. [`Subscription::next`] returns events in order per partition
/// (and, for a stream, in version order), first the stored ones, then live ones as they are
/// appended.
#[derive(Debug)]
pub struct Subscription {
    engine: Engine,
    topic: Arc<Topic>,
    stream: Option<String>,
    /// Per followed partition: the next offset to look at.
    cursors: Vec<(u32, u64)>,
    /// A stream subscription skips events below this version.
    min_version: u64,
    buffer: VecDeque<StreamEvent>,
    appended: watch::Receiver<u64>,
}

impl Engine {
    /// Subscribes to one stream from `from` ([`SubscriptionFrom::Start`], `End` or
    /// `Version`).
    ///
    /// # Errors
    /// [`StreamError::UnknownTopic`], [`StreamError::Invalid`].
    pub async fn subscribe_stream(
        &self,
        topic_name: &str,
        stream: &str,
        from: SubscriptionFrom,
    ) -> Result<Subscription, StreamError> {
        let topic = self
            .topic(topic_name)
            .ok_or_else(|| StreamError::UnknownTopic(topic_name.to_owned()))?;
        super::check_stream_name(stream)?;
        let partition = partition_for_key(stream.as_bytes(), topic.partition_count());
        let log = &topic.partitions[partition as usize].log;
        let appended = self.subscribe_appends();
        let (cursor, min_version) = match from {
            SubscriptionFrom::Start => (0, 0),
            SubscriptionFrom::End => (log.high_watermark(), 0),
            SubscriptionFrom::Version(version) => {
                let read = ReadStream { from: Some(version), count: 1, ..ReadStream::default() };
                let engine = self.clone();
                let (task_topic, task_stream) = (Arc::clone(&topic), stream.to_owned());
                let found = tokio::task::spawn_blocking(move || {
                    engine.read_stream_in(&task_topic, partition, &task_stream, &read, true)
                })
                .await
                .expect("a read task does not panic");
                match found {
                    Ok(slice) => (slice.events.first().map_or(0, |event| event.offset), version),
                    Err(StreamError::StreamNotFound { .. }) => (0, version),
                    Err(error) => return Err(error),
                }
            }
            SubscriptionFrom::Offsets(_) => {
                return Err(StreamError::Invalid(
                    "a stream subscription starts at the start, the end or a version; offsets are for topic subscriptions".to_owned(),
                ))
            }
        };
        Ok(Subscription {
            engine: self.clone(),
            topic,
            stream: Some(stream.to_owned()),
            cursors: vec![(partition, cursor)],
            min_version,
            buffer: VecDeque::new(),
            appended,
        })
    }

    /// Subscribes to every stream of a topic: the events of all its partitions.
    ///
    /// # Errors
    /// [`StreamError::UnknownTopic`], [`StreamError::Invalid`] (a version, or an unknown
    /// partition).
    pub fn subscribe_topic(
        &self,
        topic_name: &str,
        from: SubscriptionFrom,
    ) -> Result<Subscription, StreamError> {
        let topic = self
            .topic(topic_name)
            .ok_or_else(|| StreamError::UnknownTopic(topic_name.to_owned()))?;
        let appended = self.subscribe_appends();
        let partitions = topic.partition_count();
        let mut cursors: Vec<(u32, u64)> =
            (0..partitions).map(|partition| (partition, 0)).collect();
        match from {
            SubscriptionFrom::Start => {}
            SubscriptionFrom::End => {
                for (partition, cursor) in &mut cursors {
                    *cursor = topic.partitions[*partition as usize].log.high_watermark();
                }
            }
            SubscriptionFrom::Offsets(offsets) => {
                for (partition, offset) in offsets {
                    let Some(cursor) = cursors.get_mut(partition as usize) else {
                        return Err(StreamError::Invalid(format!(
                            "position names partition {partition}; topic {topic_name} has partitions 0..{partitions}"
                        )));
                    };
                    cursor.1 = offset;
                }
            }
            SubscriptionFrom::Version(_) => {
                return Err(StreamError::Invalid(
                    "a topic subscription starts at the start, the end or per-partition offsets; a version is for stream subscriptions".to_owned(),
                ))
            }
        }
        Ok(Subscription {
            engine: self.clone(),
            topic,
            stream: None,
            cursors,
            min_version: 0,
            buffer: VecDeque::new(),
            appended,
        })
    }
}

impl Subscription {
    /// The next event, waiting for one to be appended if the subscription has caught up.
    ///
    /// # Errors
    /// [`StreamError::UnknownTopic`] once the topic is deleted; [`StreamError::Storage`].
    pub async fn next(&mut self) -> Result<StreamEvent, StreamError> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                return Ok(event);
            }
            self.appended.borrow_and_update();
            self.step().await?;
            if !self.buffer.is_empty() {
                continue;
            }
            let _ = tokio::time::timeout(TOPIC_CHECK, self.appended.changed()).await;
            let current = self.engine.topic(&self.topic.name);
            if !current.is_some_and(|current| Arc::ptr_eq(&current, &self.topic)) {
                return Err(StreamError::UnknownTopic(self.topic.name.clone()));
            }
        }
    }

    /// The event if one is ready or arrives within `wait`; `None` otherwise.
    ///
    /// # Errors
    /// As [`Subscription::next`].
    pub async fn next_within(
        &mut self,
        wait: Duration,
    ) -> Result<Option<StreamEvent>, StreamError> {
        match tokio::time::timeout(wait, self.next()).await {
            Ok(event) => event.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Where to resume to get every event not yet returned by [`Subscription::next`]: per
    /// partition, the next offset. Pass it back as [`SubscriptionFrom::Offsets`] (a topic
    /// subscription).
    pub fn position(&self) -> Vec<(u32, u64)> {
        self.cursors
            .iter()
            .map(|&(partition, cursor)| {
                let pending = self.buffer.iter().find(|event| event.partition == partition);
                (partition, pending.map_or(cursor, |event| event.offset))
            })
            .collect()
    }

    /// Reads what lies between the cursors and the high watermarks (a bounded step).
    async fn step(&mut self) -> Result<(), StreamError> {
        let topic = Arc::clone(&self.topic);
        let stream = self.stream.clone();
        let cursors = self.cursors.clone();
        let min_version = self.min_version;
        let (events, cursors) = tokio::task::spawn_blocking(move || match stream {
            Some(stream) => step_stream(&topic, &stream, cursors[0], min_version),
            None => step_topic(&topic, cursors),
        })
        .await
        .expect("a subscription step does not panic")?;
        self.buffer.extend(events);
        self.cursors = cursors;
        Ok(())
    }
}

type Step = (Vec<StreamEvent>, Vec<(u32, u64)>);

fn is_event(record: &crate::StoredRecord) -> bool {
    version_of(record).is_some() && !record.headers.iter().any(|(name, _)| name == DELETED_HEADER)
}

fn storage(topic: &Topic, partition: u32, error: &dyn std::fmt::Display) -> StreamError {
    StreamError::Storage(format!("reading {}/{partition}: {error}", topic.name))
}

fn step_stream(
    topic: &Topic,
    stream: &str,
    (partition, cursor): (u32, u64),
    min_version: u64,
) -> Result<Step, StreamError> {
    let log = &topic.partitions[partition as usize].log;
    let high_watermark = log.high_watermark();
    let candidates = log
        .key_candidates(stream.as_bytes(), cursor, high_watermark)
        .map_err(|error| storage(topic, partition, &error))?;
    let taken = candidates.len().min(STEP_CANDIDATES);
    let next =
        if taken < candidates.len() { candidates[taken] } else { high_watermark.max(cursor) };
    let mut events = Vec::new();
    let mut batch: Vec<crate::StoredRecord> = Vec::new();
    for &offset in &candidates[..taken] {
        let cached = batch.first().is_some_and(|first| first.offset <= offset)
            && batch.last().is_some_and(|last| last.offset >= offset);
        if !cached {
            let read = match log.read(offset, 0) {
                Ok(read) => read,
                Err(sluice_log::ReadError::OffsetOutOfRange { .. }) => continue,
                Err(error) => return Err(storage(topic, partition, &error)),
            };
            batch = decode_batches(&read.batches, 0)
                .map_err(|error| storage(topic, partition, &error))?;
        }
        let Some(record) = batch.iter().find(|record| record.offset == offset) else { continue };
        if record.key.as_deref() == Some(stream.as_bytes())
            && is_event(record)
            && version_of(record).is_some_and(|version| version >= min_version)
        {
            events.push(to_event(stream, partition, record));
        }
    }
    Ok((events, vec![(partition, next)]))
}

fn step_topic(topic: &Topic, mut cursors: Vec<(u32, u64)>) -> Result<Step, StreamError> {
    let mut events = Vec::new();
    for (partition, cursor) in &mut cursors {
        let log = &topic.partitions[*partition as usize].log;
        let start = (*cursor).max(log.log_start_offset());
        let read = match log.read(start, STEP_BYTES) {
            Ok(read) => read,
            Err(sluice_log::ReadError::OffsetOutOfRange { high_watermark, .. }) => {
                // Past the end (the topic was re-created): carry on from its end.
                *cursor = high_watermark;
                continue;
            }
            Err(error) => return Err(storage(topic, *partition, &error)),
        };
        let records = decode_batches(&read.batches, start)
            .map_err(|error| storage(topic, *partition, &error))?;
        *cursor = records.last().map_or(start, |last| last.offset + 1);
        for record in &records {
            if !is_event(record) {
                continue;
            }
            let Some(stream) = record.key.as_deref().and_then(|key| std::str::from_utf8(key).ok())
            else {
                continue;
            };
            events.push(to_event(stream, *partition, record));
        }
    }
    Ok((events, cursors))
}
