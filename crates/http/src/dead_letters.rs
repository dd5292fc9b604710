//! Dead letters: `GET /v1/topics/{topic}/dlq`, `POST /v1/topics/{topic}/dlq/replay` and
//! `POST /v1/topics/{topic}/dlq/purge`. `{topic}` is a topic a queue group consumes or its
//! dead-letter topic; the engine resolves it (`dead_letter_topic_of`).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use sluice_engine::queue::dlq::{DeadLetter, Mark, ReplaySelection, Replayed, LIST_MAX};
use sluice_engine::Engine;
use utoipa::{IntoParams, ToSchema};

use crate::body;
use crate::error::{parse_json, ApiError, ErrorBody};
use crate::queues::PositionOut;
use crate::records::PayloadOut;

// `#[param(maximum = ...)]` takes only literals; this keeps the documented limit true.
const _: () = assert!(LIST_MAX == 10_000, "update the max param");

/// Dead letters listed when the request does not say.
const LIST_DEFAULT: usize = 100;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// The first offset to list (per partition of the dead-letter topic); default 0.
    #[serde(default)]
    from: u64,
    /// Most dead letters to list; default 100.
    #[param(minimum = 1, maximum = 10000)]
    max: Option<usize>,
    /// List dead letters replayed already too; default false.
    #[serde(default)]
    include_replayed: bool,
}

/// Where a dead letter was replayed to.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MarkOut {
    replayed_at_ms: i64,
    topic: String,
    partition: u32,
    offset: u64,
}

impl From<Mark> for MarkOut {
    fn from(mark: Mark) -> Self {
        Self {
            replayed_at_ms: mark.replayed_at_ms,
            topic: mark.topic,
            partition: mark.partition,
            offset: mark.offset,
        }
    }
}

/// A dead letter: the original record (with the `sluice-dlq-*` history headers added) and its
/// history, read back from those headers.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeadLetterOut {
    /// Its partition in the dead-letter topic.
    partition: u32,
    /// Its offset in the dead-letter topic.
    offset: u64,
    timestamp_ms: i64,
    #[serde(flatten)]
    payload: PayloadOut,
    /// Where it came from; `null` for a record that is not a dead letter.
    origin: Option<PositionOut>,
    /// The queue group that gave up on it.
    group: Option<String>,
    /// How many times it was delivered.
    deliveries: u32,
    last_error: Option<String>,
    first_failure_ms: Option<i64>,
    last_failure_ms: Option<i64>,
    /// Where it was replayed to; `null` if it was not.
    replayed: Option<MarkOut>,
}

impl From<DeadLetter> for DeadLetterOut {
    fn from(letter: DeadLetter) -> Self {
        let origin = letter.origin.zip(letter.origin_offset).map(|(origin, offset)| PositionOut {
            topic: origin.topic,
            partition: origin.partition,
            offset,
        });
        let record = letter.record;
        Self {
            partition: letter.partition,
            offset: record.offset,
            timestamp_ms: record.timestamp_ms,
            payload: PayloadOut::of(&record),
            origin,
            group: letter.group,
            deliveries: letter.history.deliveries,
            last_error: letter.history.last_error,
            first_failure_ms: letter.history.first_failure_ms,
            last_failure_ms: letter.history.last_failure_ms,
            replayed: letter.replayed.map(MarkOut::from),
        }
    }
}

/// A topic's dead letters.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeadLetterList {
    /// The dead-letter topic `{topic}` resolved to.
    dead_letter_topic: String,
    dead_letters: Vec<DeadLetterOut>,
}

/// Lists a topic's dead letters (not replayed ones only, unless `include_replayed`).
#[utoipa::path(get, path = "/v1/topics/{topic}/dlq", operation_id = "list_dead_letters",
    tag = "dead-letters",
    params(
        ("topic" = String, Path, description = "A topic a queue group consumes, or its dead-letter topic"),
        ListQuery,
    ),
    responses(
        (status = 200, description = "The dead letters, oldest first per partition", body = DeadLetterList),
        (status = 400, description = "1008 bad query or `max` out of range", body = ErrorBody),
        (status = 404, description = "1001 the dead-letter topic does not exist", body = ErrorBody),
        (status = 408, description = "1008 the request took too long", body = ErrorBody),
        (status = 503, description = "1101 storage failure", body = ErrorBody),
    ))]
pub(crate) async fn list(
    State(engine): State<Engine>,
    Path(topic): Path<String>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<DeadLetterList>, ApiError> {
    let Query(query) =
        query.map_err(|error| ApiError::invalid(format!("bad query: {}", error.body_text())))?;
    let dead_letter_topic = engine.dead_letter_topic_of(&topic);
    let name = dead_letter_topic.clone();
    let max = query.max.unwrap_or(LIST_DEFAULT);
    let letters = tokio::task::spawn_blocking(move || {
        engine.dead_letters(&name, query.from, max, query.include_replayed)
    })
    .await
    .expect("listing dead letters does not panic")?;
    Ok(Json(DeadLetterList {
        dead_letter_topic,
        dead_letters: letters.into_iter().map(DeadLetterOut::from).collect(),
    }))
}

/// A dead letter named by its partition and offset in the dead-letter topic.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeadLetterAt {
    partition: u32,
    offset: u64,
}

/// An offset of partition 0 of the dead-letter topic, or a partition and offset.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum OffsetIn {
    /// An offset of partition 0.
    Offset(u64),
    /// A partition and offset.
    At(DeadLetterAt),
}

/// `POST /v1/topics/{topic}/dlq/replay` body: `{}` replays every dead letter not replayed yet;
/// `offsets` those; `key` those with that key. Send at most one of `offsets` and `key`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplayBody {
    offsets: Option<Vec<OffsetIn>>,
    /// The key as UTF-8 text.
    key: Option<String>,
}

/// One replayed dead letter.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReplayedOut {
    dead_letter_partition: u32,
    dead_letter_offset: u64,
    /// Where it was produced again: its original topic and partition.
    topic: String,
    partition: u32,
    offset: u64,
}

impl From<Replayed> for ReplayedOut {
    fn from(replayed: Replayed) -> Self {
        Self {
            dead_letter_partition: replayed.dead_letter_partition,
            dead_letter_offset: replayed.dead_letter_offset,
            topic: replayed.to.topic,
            partition: replayed.to.partition,
            offset: replayed.to.offset,
        }
    }
}

/// The dead letters replayed.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReplayOut {
    replayed: Vec<ReplayedOut>,
}

/// Replays dead letters to their original topics and partitions and releases the keys they
/// parked. Dead letters replayed before are skipped.
#[utoipa::path(post, path = "/v1/topics/{topic}/dlq/replay", operation_id = "replay_dead_letters",
    tag = "dead-letters",
    params(("topic" = String, Path, description = "A topic a queue group consumes, or its dead-letter topic")),
    request_body = ReplayBody,
    responses(
        (status = 200, description = "What was replayed, and where to", body = ReplayOut),
        (status = 400, description = "1008 malformed body, both `offsets` and `key`, an offset with no dead letter, a record that is not a dead letter", body = ErrorBody),
        (status = 404, description = "1001 the dead-letter topic or an original topic does not exist", body = ErrorBody),
        (status = 408, description = "1008 the request took too long", body = ErrorBody),
        (status = 413, description = "1008 body over 16 MiB", body = ErrorBody),
        (status = 503, description = "1101 storage failure", body = ErrorBody),
    ))]
pub(crate) async fn replay(
    State(engine): State<Engine>,
    Path(topic): Path<String>,
    request: Result<Bytes, BytesRejection>,
) -> Result<Json<ReplayOut>, ApiError> {
    let request: ReplayBody = parse_json(&body(request)?)?;
    let selection = match (request.offsets, request.key) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("send one of offsets and key")),
        (Some(offsets), None) => ReplaySelection::Offsets(
            offsets
                .into_iter()
                .map(|offset| match offset {
                    OffsetIn::Offset(offset) => (0, offset),
                    OffsetIn::At(at) => (at.partition, at.offset),
                })
                .collect(),
        ),
        (None, Some(key)) => ReplaySelection::Key(key.into_bytes()),
        (None, None) => ReplaySelection::All,
    };
    let dead_letter_topic = engine.dead_letter_topic_of(&topic);
    let replayed = engine.replay_dead_letters(&dead_letter_topic, selection).await?;
    Ok(Json(ReplayOut { replayed: replayed.into_iter().map(ReplayedOut::from).collect() }))
}

/// How many dead letters were removed.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PurgeOut {
    purged: u64,
}

/// Removes every record of the dead-letter topic and releases the keys they parked. Any body
/// is ignored.
#[utoipa::path(post, path = "/v1/topics/{topic}/dlq/purge", operation_id = "purge_dead_letters",
    tag = "dead-letters",
    params(("topic" = String, Path, description = "A topic a queue group consumes, or its dead-letter topic")),
    responses(
        (status = 200, description = "How many records were removed", body = PurgeOut),
        (status = 404, description = "1001 the dead-letter topic does not exist", body = ErrorBody),
        (status = 408, description = "1008 the request took too long", body = ErrorBody),
        (status = 503, description = "1101 storage failure", body = ErrorBody),
    ))]
pub(crate) async fn purge(
    State(engine): State<Engine>,
    Path(topic): Path<String>,
) -> Result<Json<PurgeOut>, ApiError> {
    let dead_letter_topic = engine.dead_letter_topic_of(&topic);
    let purged = engine.purge_dead_letters(&dead_letter_topic).await?;
    Ok(Json(PurgeOut { purged }))
}
