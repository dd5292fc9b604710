//! Several independent appends in one call ([`Engine::append_each`]): each write has its own
//! expected version and succeeds or fails alone, where [`Engine::append_streams`] is all or
//! nothing. What they share is the work around them: each partition's lock is taken once, the
//! writes that hold are appended together (one batch, or a few when they are large), and each
//! partition syncs once for all of them. A client that gathers the appends of many concurrent
//! writers into one request (as a Kafka producer gathers records) pays one request and one
//! sync per partition for all of them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use sluice_format::BatchBuilder;

use super::{
    check_expected, check_writes, EventDefaults, ExpectedVersion, Head, Lookup, StreamAppended,
    StreamWrite, APPEND_EVENTS_MAX,
};
use crate::engine::Engine;
use crate::error::StreamError;
use crate::metadata::now_ms;
use crate::topic::Topic;

/// Most writes in one [`Engine::append_each`] call.
pub const APPEND_EACH_WRITES_MAX: usize = 1000;

/// Each write's outcome (by its index in the call), and the last offset written, if any.
type EachWritten = (Vec<(usize, Result<StreamAppended, StreamError>)>, Option<u64>);

impl Engine {
    /// Appends each of `writes` on its own: every write is checked against its own expected
    /// version, and only the writes that hold are appended; one that does not gets its
    /// [`StreamError::WrongExpectedVersion`] and appends nothing. Writes to the same stream
    /// apply in their order, each checked against the stream as the writes before it left
    /// it. Each write's events are appended together (in one batch, so a reader never sees
    /// part of them). Returns once every appended event is durable, with one outcome per
    /// write in the order given. Unlike [`Engine::append_streams`], a write must carry events.
    ///
    /// # Errors
    /// The whole call: [`StreamError::UnknownTopic`], and [`StreamError::Invalid`] for no
    /// writes, more than [`APPEND_EACH_WRITES_MAX`], or more than [`APPEND_EVENTS_MAX`] events
    /// in all. Each write: those of [`Engine::append_stream`].
    pub async fn append_each(
        &self,
        topic: &str,
        writes: Vec<StreamWrite>,
    ) -> Result<Vec<Result<StreamAppended, StreamError>>, StreamError> {
        let topic = self.topic(topic).ok_or_else(|| StreamError::UnknownTopic(topic.to_owned()))?;
        if writes.is_empty() || writes.len() > APPEND_EACH_WRITES_MAX {
            return Err(StreamError::Invalid(format!(
                "the request carries {} appends; allowed is 1..={APPEND_EACH_WRITES_MAX}",
                writes.len()
            )));
        }
        let events: usize = writes.iter().map(|write| write.events.len()).sum();
        if events > APPEND_EVENTS_MAX {
            return Err(StreamError::Invalid(format!(
                "the request's appends carry {events} events in all; allowed is at most {APPEND_EVENTS_MAX}"
            )));
        }
        let mut outcomes: Vec<Option<Result<StreamAppended, StreamError>>> =
            (0..writes.len()).map(|_| None).collect();
        let mut partitions: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (index, write) in writes.iter().enumerate() {
            match check_writes(&topic, std::slice::from_ref(write)) {
                Ok(partition) => partitions.entry(partition).or_default().push(index),
                Err(error) => outcomes[index] = Some(Err(error)),
            }
        }
        let writes = Arc::new(writes);
        let mut syncs = Vec::new();
        for (partition, indices) in partitions {
            // As in `append_streams`: on this task when every head is in memory, else on a
            // blocking thread that may read the log.
            let written =
                match self.append_each_in(&topic, partition, &writes, &indices, Lookup::Cached) {
                    Ok(Some(done)) => Ok(done),
                    Ok(None) => {
                        let (engine, task_topic) = (self.clone(), Arc::clone(&topic));
                        let (task_writes, task_indices) = (Arc::clone(&writes), indices.clone());
                        tokio::task::spawn_blocking(move || {
                            engine
                                .append_each_in(
                                    &task_topic,
                                    partition,
                                    &task_writes,
                                    &task_indices,
                                    Lookup::Log,
                                )
                                .map(|done| done.expect("a lookup in the log always finds a head"))
                        })
                        .await
                        .expect("an append task does not panic")
                    }
                    Err(error) => Err(error),
                };
            match written {
                Ok((done, last_offset)) => {
                    let mut appended = Vec::new();
                    for (index, outcome) in done {
                        if outcome.is_ok() {
                            appended.push(index);
                        }
                        outcomes[index] = Some(outcome);
                    }
                    if let Some(last_offset) = last_offset {
                        // Every partition's sync is asked for before any is awaited.
                        topic.partitions[partition as usize].log.request_sync(last_offset);
                        syncs.push((partition, last_offset, appended));
                    }
                }
                Err(error) => {
                    for index in indices {
                        outcomes[index] = Some(Err(copy_error(&error)));
                    }
                }
            }
        }
        self.answer_retries(&topic, &writes, &mut outcomes).await;
        for (partition, last_offset, appended) in syncs {
            let handle = &topic.partitions[partition as usize];
            let synced = handle.durable(last_offset).await;
            handle.publish_high_watermark();
            if let Err(error) = synced {
                let error = format!("{}/{partition}: {error}", topic.name);
                for index in appended {
                    outcomes[index] = Some(Err(StreamError::Storage(error.clone())));
                }
            }
        }
        self.inner.appended.send_modify(|count| *count = count.wrapping_add(1));
        Ok(outcomes
            .into_iter()
            .map(|outcome| outcome.expect("every write has an outcome"))
            .collect())
    }

    /// A conflicting write that carries ids and an exact or `no_stream` expectation may be a
    /// retry of one that landed: it is answered with what that one did (as `append_stream`
    /// does). The check reads the log, on a blocking thread.
    async fn answer_retries(
        &self,
        topic: &Arc<Topic>,
        writes: &Arc<Vec<StreamWrite>>,
        outcomes: &mut [Option<Result<StreamAppended, StreamError>>],
    ) {
        for (index, outcome) in outcomes.iter_mut().enumerate() {
            let write = &writes[index];
            let retryable = matches!(outcome, Some(Err(StreamError::WrongExpectedVersion { .. })))
                && matches!(write.expected, ExpectedVersion::Exact(_) | ExpectedVersion::NoStream)
                && write.events.iter().all(|event| event.id.is_some());
            if !retryable {
                continue;
            }
            let Some(Err(conflict)) = outcome.take() else { unreachable!("checked above") };
            let (engine, task_topic, task_writes) =
                (self.clone(), Arc::clone(topic), Arc::clone(writes));
            let partition =
                super::partition_for_key(write.stream.as_bytes(), topic.partition_count());
            let answered = tokio::task::spawn_blocking(move || {
                let write = std::slice::from_ref(&task_writes[index]);
                engine.retried(&task_topic, partition, write, conflict)
            })
            .await
            .expect("a retry check does not panic");
            *outcome = Some(answered.map(|(mut appended, _)| appended.remove(0)));
        }
    }

    /// Checks and writes `indices` of `writes`, all in `partition`, under its lock once.
    /// `Ok(None)`: a head is not in memory and `lookup` is [`Lookup::Cached`]; nothing was
    /// written.
    fn append_each_in(
        &self,
        topic: &Topic,
        partition: u32,
        writes: &[StreamWrite],
        indices: &[usize],
        lookup: Lookup,
    ) -> Result<Option<EachWritten>, StreamError> {
        let handle = &topic.partitions[partition as usize];
        let mut heads = handle.streams.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut outcomes = Vec::with_capacity(indices.len());
        let limit = handle.log.config().batch_bytes_max as usize;
        let defaults = EventDefaults::new(&topic.name, now_ms());
        // Heads as the writes accepted so far leave them.
        let mut ahead: HashMap<&str, Head> = HashMap::new();
        let mut accepted: Vec<(usize, Head)> = Vec::new();
        for &index in indices {
            let write = &writes[index];
            let head = match ahead.get(write.stream.as_str()) {
                Some(head) => *head,
                None => match lookup.head(&mut heads, &handle.log, &write.stream)? {
                    Some(head) => head,
                    None => return Ok(None),
                },
            };
            let deleted = self.deleted_at(&topic.name, &write.stream, head);
            let checked = check_expected(&topic.name, write, head, deleted)
                .and_then(|()| check_size(&defaults, write, head, limit));
            match checked {
                Ok(()) => {
                    let version = head.version + write.events.len() as i64;
                    ahead.insert(&write.stream, Head { version, last_offset: None });
                    accepted.push((index, head));
                }
                Err(error) => outcomes.push((index, Err(error))),
            }
        }
        let mut last_offset = None;
        // Writes grouped into batches by their size hint; a group whose batch is still too
        // large is tried again one write per batch.
        let mut chunks: VecDeque<Vec<(usize, Head)>> = VecDeque::new();
        let mut hint = 0;
        for (index, head) in accepted {
            let bytes = writes[index].record_bytes_hint();
            match chunks.back_mut() {
                Some(chunk) if hint + bytes <= limit / 2 => chunk.push((index, head)),
                _ => {
                    chunks.push_back(vec![(index, head)]);
                    hint = 0;
                }
            }
            hint += bytes;
        }
        // Streams whose write was refused here: the writes after it to the same stream were
        // checked as if it had landed, so they are refused too.
        let mut refused: HashMap<&str, String> = HashMap::new();
        while let Some(chunk) = chunks.pop_front() {
            let mut kept = Vec::with_capacity(chunk.len());
            for (index, head) in chunk {
                let stream = writes[index].stream.as_str();
                match refused.get(stream) {
                    Some(reason) => outcomes.push((index, Err(StreamError::Invalid(format!(
                        "not appended: an earlier append to stream {stream} in this request was refused ({reason})"
                    ))))),
                    None => kept.push((index, head)),
                }
            }
            if kept.is_empty() {
                continue;
            }
            let mut builder = BatchBuilder::new(0);
            builder.reserve(kept.iter().map(|(index, _)| writes[*index].record_bytes_hint()).sum());
            let mut records = 0;
            for (index, head) in &kept {
                records += defaults.push_write(&mut builder, &writes[*index], *head);
            }
            let mut batch = builder.build();
            if batch.len() > limit {
                if kept.len() > 1 {
                    for single in kept.into_iter().rev() {
                        chunks.push_front(vec![single]);
                    }
                    continue;
                }
                let (index, _) = kept[0];
                let message = format!(
                    "the append's {records} events take {} bytes as one batch; an append is one batch (so it is atomic) of at most {limit} bytes: append fewer events at a time",
                    batch.len()
                );
                refused.insert(&writes[index].stream, message.clone());
                outcomes.push((index, Err(StreamError::Invalid(message))));
                continue;
            }
            let info = match handle.log.append_unsynced(&mut batch) {
                Ok(info) => info,
                Err(error) => {
                    let message = format!("{}/{partition}: {error}", topic.name);
                    let unwritten = kept.iter().chain(chunks.iter().flatten());
                    for (index, _) in unwritten {
                        outcomes.push((*index, Err(StreamError::Storage(message.clone()))));
                    }
                    break;
                }
            };
            let mut offset = info.base_offset;
            for (index, head) in kept {
                let write = &writes[index];
                let count = write.events.len() as u64;
                let offsets: Vec<u64> = (offset..offset + count).collect();
                offset += count;
                let version = head.version + count as i64;
                heads.set(&write.stream, Head { version, last_offset: Some(offset - 1) });
                let appended =
                    StreamAppended { stream: write.stream.clone(), version, partition, offsets };
                outcomes.push((index, Ok(appended)));
            }
            topic.counters.produced_records.fetch_add(records, Ordering::Relaxed);
            topic.counters.produced_bytes.fetch_add(batch.len() as u64, Ordering::Relaxed);
            last_offset = Some(info.last_offset);
        }
        heads.trim(handle.log.high_watermark());
        Ok(Some((outcomes, last_offset)))
    }
}

/// Refuses a write whose events would not fit one batch. Only a write whose size hint comes
/// near the limit is encoded to be measured; the rest fit.
fn check_size(
    defaults: &EventDefaults,
    write: &StreamWrite,
    head: Head,
    limit: usize,
) -> Result<(), StreamError> {
    if write.record_bytes_hint() <= limit / 2 {
        return Ok(());
    }
    let mut builder = BatchBuilder::new(0);
    defaults.push_write(&mut builder, write, head);
    let bytes = builder.build().len();
    if bytes > limit {
        return Err(StreamError::Invalid(format!(
            "the append's {} events take {bytes} bytes as one batch; an append is one batch (so it is atomic) of at most {limit} bytes: append fewer events at a time",
            write.events.len()
        )));
    }
    Ok(())
}

/// The same error again, for every write a partition-wide failure stopped.
fn copy_error(error: &StreamError) -> StreamError {
    match error {
        StreamError::UnknownTopic(topic) => StreamError::UnknownTopic(topic.clone()),
        StreamError::WrongExpectedVersion { topic, stream, expected, actual, deleted_at } => {
            StreamError::WrongExpectedVersion {
                topic: topic.clone(),
                stream: stream.clone(),
                expected: *expected,
                actual: *actual,
                deleted_at: *deleted_at,
            }
        }
        StreamError::StreamNotFound { topic, stream, deleted_at } => StreamError::StreamNotFound {
            topic: topic.clone(),
            stream: stream.clone(),
            deleted_at: *deleted_at,
        },
        StreamError::Invalid(message) => StreamError::Invalid(message.clone()),
        StreamError::Storage(message) => StreamError::Storage(message.clone()),
    }
}
