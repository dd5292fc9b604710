//! `GET /v1/topics/{topic}/events`: records as Server-Sent Events, live.
//!
//! Query: `from` = `earliest` | `latest` (default) | an offset (every partition) |
//! `@<RFC 3339 time>`; `partition` to follow one partition; or `group` to consume as a member of
//! a stream-mode group (joins with `from` as the start for uncommitted partitions, commits after
//! each delivery: at-most-once for the stream, since a browser cannot acknowledge).
//!
//! Each record is one event: `event: record`, `id: <partition>:<offset>`, `data:` the record as
//! JSON (as a fetch returns it, plus `topic` and `partition`). A comment is sent every 15 s to keep
//! proxies from closing an idle stream.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use sluice_engine::{Engine, JoinRequest, StartFrom, StoredRecord};
use tokio::sync::watch;
use utoipa::IntoParams;

use crate::error::{ApiError, ErrorBody};
use crate::records::RecordOut;
use sluice_engine::time_text::parse_rfc3339_ms;

/// Most records read from one partition per step of the stream.
const STEP_RECORDS_MAX: usize = 500;
const STEP_BYTES: u32 = 1024 * 1024;
/// How long an idle stream waits for new records before looking again.
const IDLE_WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventsQuery {
    /// `earliest`, `latest` (default), an offset, or `@<RFC 3339 time>`; with `group`, only
    /// `earliest` or `latest` (the start for partitions the group has not committed).
    from: Option<String>,
    /// Follow only this partition; default every partition.
    partition: Option<u32>,
    /// Consume as a member of this group: its share of the partitions, committed after each
    /// delivery (at-most-once).
    group: Option<String>,
}

/// Where the stream reads next.
enum Source {
    Partitions(Vec<(u32, u64)>),
    Member { group: String, member: String },
}

struct StreamState {
    engine: Engine,
    topic: String,
    source: Source,
    ready: VecDeque<Event>,
    appends: watch::Receiver<u64>,
}

/// Streams a topic's records as Server-Sent Events: history from `from`, then live records.
#[utoipa::path(get, path = "/v1/topics/{topic}/events", operation_id = "events", tag = "records",
    params(("topic" = String, Path, description = "Topic name"), EventsQuery),
    responses(
        (status = 200, content_type = "text/event-stream", body = String,
            description = "One event per record: `event: record`, `id: <partition>:<offset>`, \
                `data:` a `MemberRecordOut` as JSON; a comment every 15 s while idle"),
        (status = 400, description = "1003 invalid group name, 1008 bad query or `from`", body = ErrorBody),
        (status = 404, description = "1001 unknown topic, 1005 unknown partition", body = ErrorBody),
        (status = 409, description = "1014 the group consumes other topics", body = ErrorBody),
        (status = 503, description = "1101 storage failure, 1103 stored data failed its checksum", body = ErrorBody),
    ))]
pub(crate) async fn events(
    State(engine): State<Engine>,
    Path(topic): Path<String>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(query) =
        query.map_err(|error| ApiError::invalid(format!("bad query: {}", error.body_text())))?;
    let description = engine.describe_topic(&topic)?;
    let source = match &query.group {
        Some(group) => join(&engine, &topic, group, query.from.as_deref()).await?,
        None => {
            let partitions: Vec<u32> = match query.partition {
                Some(partition) if partition < description.config.partitions => vec![partition],
                Some(partition) => {
                    let count = description.config.partitions;
                    return Err(ApiError::new(sluice_engine::ErrorCode::UnknownPartition, format!("topic '{topic}' has partitions 0..{count}; {partition} is not one of them")));
                }
                None => (0..description.config.partitions).collect(),
            };
            let mut positions = Vec::new();
            for partition in partitions {
                let bounds = description.partitions[partition as usize];
                positions.push((partition, start(&engine, &topic, bounds, query.from.as_deref())?));
            }
            Source::Partitions(positions)
        }
    };
    let appends = engine.subscribe_appends();
    let state = StreamState { engine, topic, source, ready: VecDeque::new(), appends };
    let stream = stream::unfold(state, |mut state| async move {
        loop {
            if let Some(event) = state.ready.pop_front() {
                return Some((Ok(event), state));
            }
            state.appends.borrow_and_update();
            if !state.fill().await {
                return None; // the topic or the membership is gone: end the stream
            }
            if state.ready.is_empty() {
                let _ = tokio::time::timeout(IDLE_WAIT, state.appends.changed()).await;
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(IDLE_WAIT)))
}

async fn join(
    engine: &Engine,
    topic: &str,
    group: &str,
    from: Option<&str>,
) -> Result<Source, ApiError> {
    let start = match from {
        None | Some("latest") => StartFrom::Latest,
        Some("earliest") => StartFrom::Earliest,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "with a group, from is earliest or latest, not '{other}'"
            )))
        }
    };
    let request = JoinRequest { topics: vec![topic.to_owned()], start, ..JoinRequest::default() };
    let (engine, group_name) = (engine.clone(), group.to_owned());
    let membership = tokio::task::spawn_blocking(move || engine.join_group(&group_name, request))
        .await
        .expect("joining does not panic")?;
    Ok(Source::Member { group: group.to_owned(), member: membership.member_id })
}

/// The first offset to stream from a partition, as `from` says.
fn start(
    engine: &Engine,
    topic: &str,
    bounds: sluice_engine::PartitionDescription,
    from: Option<&str>,
) -> Result<u64, ApiError> {
    match from {
        None | Some("latest") => Ok(bounds.high_watermark),
        Some("earliest") => Ok(bounds.log_start_offset),
        Some(text) => {
            if let Some(time) = text.strip_prefix('@') {
                let timestamp = parse_rfc3339_ms(time).map_err(ApiError::invalid)?;
                let found = engine
                    .offset_for_timestamp(topic, bounds.partition, timestamp)
                    .map_err(ApiError::from)?;
                return Ok(found.unwrap_or(bounds.high_watermark));
            }
            let offset: u64 = text.parse().map_err(|_| {
                ApiError::invalid(format!("from is '{text}'; allowed are earliest, latest, an offset, or @<RFC 3339 time>"))
            })?;
            Ok(offset.clamp(bounds.log_start_offset, bounds.high_watermark))
        }
    }
}

fn event(topic: &str, partition: u32, record: StoredRecord) -> Event {
    let id = format!("{partition}:{}", record.offset);
    let mut data = serde_json::to_value(RecordOut::from(record)).expect("a record serialises");
    if let Some(object) = data.as_object_mut() {
        object.insert("topic".to_owned(), topic.into());
        object.insert("partition".to_owned(), partition.into());
    }
    Event::default().event("record").id(id).data(data.to_string())
}

impl StreamState {
    /// Reads what is available into `ready`; false when the stream should end.
    async fn fill(&mut self) -> bool {
        match &mut self.source {
            Source::Partitions(positions) => {
                for (partition, position) in positions.iter_mut() {
                    let fetched = self
                        .engine
                        .fetch(&self.topic, *partition, *position, STEP_BYTES, Duration::ZERO)
                        .await;
                    let Ok(fetched) = fetched else { return false };
                    let Ok(records) = fetched.records_from(*position) else { return false };
                    for record in records.into_iter().take(STEP_RECORDS_MAX) {
                        *position = record.offset + 1;
                        self.ready.push_back(event(&self.topic, *partition, record));
                    }
                }
                true
            }
            Source::Member { group, member } => {
                let fetched = self
                    .engine
                    .fetch_group(group, member, STEP_RECORDS_MAX, STEP_BYTES, Duration::ZERO)
                    .await;
                let Ok(fetched) = fetched else { return false };
                let generation = fetched.membership.generation;
                for record in fetched.records {
                    self.ready.push_back(event(&record.topic, record.partition, record.record));
                }
                if !self.ready.is_empty() {
                    let (engine, group, member) =
                        (self.engine.clone(), group.clone(), member.clone());
                    let committed = tokio::task::spawn_blocking(move || {
                        engine.commit_group(&group, &member, generation, None)
                    })
                    .await;
                    if !matches!(committed, Ok(Ok(_))) {
                        tracing::debug!(
                            "an SSE member's commit was refused; it will rejoin on the next step"
                        );
                    }
                }
                true
            }
        }
    }
}
