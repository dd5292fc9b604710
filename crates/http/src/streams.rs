//! Event streams: `POST/GET/DELETE /v1/streams/{topic}/{stream}` (append, read, soft delete),
//! `GET/PUT .../snapshot`, `GET/PUT .../metadata`, and Server-Sent Events subscriptions:
//! `GET .../{stream}/events` (one stream) and `GET /v1/streams/{topic}` (every stream of the
//! topic). The rules (versions, conflicts, visibility) are the engine's; this file translates.
//!
//! The expected version of an append or delete is `expected_version` in the body (or query),
//! or HTTP preconditions: `If-Match: "3"` (exactly version 3), `If-Match: *` (the stream
//! exists), `If-None-Match: *` (no stream). A read answers with `ETag: "<version>"`, so a
//! read-decide-append cycle is `GET`, then `POST` with `If-Match` set to the ETag.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use futures_util::stream::{self, Stream};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sluice_engine::streams::{
    Direction, ExpectedVersion, NewEvent, ReadStream, StreamAppended, StreamEvent, StreamMetadata,
    StreamWrite, Subscription, SubscriptionFrom, READ_COUNT_MAX,
};
use sluice_engine::time_text::{format_rfc3339_ms, parse_rfc3339_ms};
use sluice_engine::{Engine, ErrorCode};
use utoipa::{IntoParams, ToSchema};

use crate::body;
use crate::error::{parse_json, ApiError, ErrorBody};
use crate::records::{json_bytes, json_or_base64};

// `#[param(maximum = ...)]` takes only literals; this keeps the documented limit true.
const _: () = assert!(READ_COUNT_MAX == 4096, "update the count param");

/// A comment is sent this often on an idle subscription.
const IDLE_WAIT: Duration = Duration::from_secs(15);

/// An expected version as JSON: `"any"`, `"no_stream"`, `"stream_exists"`, or a number.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum ExpectedText {
    /// An exact version.
    Number(u64),
    /// `any`, `no_stream`, `stream_exists` (or a number as text).
    Text(String),
}

impl ExpectedText {
    fn parse(&self) -> Result<ExpectedVersion, ApiError> {
        match self {
            Self::Number(version) => Ok(ExpectedVersion::Exact(*version)),
            Self::Text(text) => text.parse().map_err(ApiError::invalid),
        }
    }
}

/// One event to append.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventIn {
    /// The event type (CloudEvents `type`), 1-256 bytes.
    #[serde(rename = "type")]
    event_type: String,
    /// The payload as JSON (stored as its JSON text as sent). Give this or `data_base64`.
    #[schema(value_type = Option<Value>)]
    data: Option<Box<RawValue>>,
    /// The payload as base64 (any bytes).
    data_base64: Option<String>,
    /// The event id (CloudEvents `id`); generated if absent. Retrying an append with the same
    /// ids and expected version returns the first append's result.
    id: Option<String>,
    /// `content-type`; default `application/json`.
    content_type: Option<String>,
    /// CloudEvents `source`; default `/streams/<topic>`.
    source: Option<String>,
    /// More headers (`traceparent`, correlation ids). Not `ce_*`, `sluice-*` or
    /// `content-type`.
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

impl EventIn {
    fn into_event(self, index: usize) -> Result<NewEvent, ApiError> {
        let data = match (self.data, self.data_base64) {
            (Some(value), None) => json_bytes(value),
            (None, Some(text)) => BASE64.decode(text.as_bytes()).map_err(|error| {
                ApiError::invalid(format!("event {index}: data_base64 is not base64: {error}"))
            })?,
            _ => {
                return Err(ApiError::invalid(format!(
                    "event {index}: give exactly one of data (JSON) and data_base64"
                )))
            }
        };
        Ok(NewEvent {
            event_type: self.event_type,
            data,
            id: self.id,
            content_type: self.content_type,
            source: self.source,
            headers: self
                .headers
                .into_iter()
                .map(|(name, value)| (name, Some(value.into_bytes())))
                .collect(),
        })
    }
}

/// Another stream of the same partition in the same append: checked (and written, if it has
/// events) all or nothing with the main one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct OtherStreamIn {
    stream: String,
    expected_version: ExpectedText,
    #[serde(default)]
    events: Vec<EventIn>,
}

/// `POST /v1/streams/{topic}/{stream}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AppendIn {
    /// `any` (default), `no_stream`, `stream_exists` or a version; or use `If-Match` /
    /// `If-None-Match`.
    expected_version: Option<ExpectedText>,
    /// The events, 1 or more (at most 10,000 in the whole append).
    events: Vec<EventIn>,
    /// Conditions (and writes) on other streams of the same partition.
    #[serde(default)]
    other_streams: Vec<OtherStreamIn>,
}

/// What an append did to a stream.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AppendedOut {
    stream: String,
    /// The stream's version after the append.
    version: i64,
    partition: u32,
    /// The offsets of the events appended, in order.
    offsets: Vec<u64>,
}

impl From<StreamAppended> for AppendedOut {
    fn from(appended: StreamAppended) -> Self {
        Self {
            stream: appended.stream,
            version: appended.version,
            partition: appended.partition,
            offsets: appended.offsets,
        }
    }
}

/// `POST /v1/streams/{topic}/{stream}` answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AppendOut {
    #[serde(flatten)]
    main: AppendedOut,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    other_streams: Vec<AppendedOut>,
}

/// The expected version from `If-Match` / `If-None-Match`, if either is set.
fn precondition(headers: &HeaderMap) -> Result<Option<ExpectedVersion>, ApiError> {
    let text = |name: header::HeaderName| -> Result<Option<String>, ApiError> {
        headers
            .get(&name)
            .map(|value| {
                value
                    .to_str()
                    .map(|text| text.trim().to_owned())
                    .map_err(|_| ApiError::invalid(format!("{name} is not text")))
            })
            .transpose()
    };
    match (text(header::IF_MATCH)?, text(header::IF_NONE_MATCH)?) {
        (Some(_), Some(_)) => Err(ApiError::invalid("send If-Match or If-None-Match, not both")),
        (None, Some(value)) if value == "*" => Ok(Some(ExpectedVersion::NoStream)),
        (None, Some(value)) => Err(ApiError::invalid(format!(
            "If-None-Match is '{value}'; only * (no stream) is allowed"
        ))),
        (Some(value), None) if value == "*" => Ok(Some(ExpectedVersion::StreamExists)),
        (Some(value), None) => {
            let version = value.trim_start_matches("W/").trim_matches('"');
            version.parse().map(|version| Some(ExpectedVersion::Exact(version))).map_err(|_| {
                ApiError::invalid(format!(
                    "If-Match is '{value}'; allowed is * or a stream version as an ETag, like \"3\""
                ))
            })
        }
        (None, None) => Ok(None),
    }
}

/// The expected version from the body or query and the headers; they must agree if both.
fn expected(
    given: Option<&ExpectedText>,
    headers: &HeaderMap,
) -> Result<ExpectedVersion, ApiError> {
    let from_body = given.map(ExpectedText::parse).transpose()?;
    match (from_body, precondition(headers)?) {
        (Some(body), Some(header)) if body != header => Err(ApiError::invalid(format!(
            "expected_version is {body} but the precondition header says {header}; send one"
        ))),
        (Some(version), _) | (None, Some(version)) => Ok(version),
        (None, None) => Ok(ExpectedVersion::Any),
    }
}

fn etag(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits are a header value")
}

/// Appends events to a stream if its version is as expected.
#[utoipa::path(post, path = "/v1/streams/{topic}/{stream}", operation_id = "append_stream", tag = "streams",
    params(("topic" = String, Path, description = "Event topic"), ("stream" = String, Path, description = "Stream name (the records' key)")),
    request_body = AppendIn,
    responses(
        (status = 201, description = "Appended and durable; `ETag` is the new version", body = AppendOut),
        (status = 400, description = "1008 bad body, names, sizes, or streams in different partitions", body = ErrorBody),
        (status = 404, description = "1001 unknown topic", body = ErrorBody),
        (status = 409, description = "1021 wrong expected version: nothing appended; `details` has both versions", body = ErrorBody),
        (status = 503, description = "1101 storage failure", body = ErrorBody),
    ))]
pub(crate) async fn append(
    State(engine): State<Engine>,
    Path((topic, stream)): Path<(String, String)>,
    headers: HeaderMap,
    request: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: AppendIn = parse_json(&body(request)?)?;
    let expected = expected(request.expected_version.as_ref(), &headers)?;
    let events = convert_events(request.events)?;
    let mut writes = vec![StreamWrite { stream, expected, events }];
    for other in request.other_streams {
        writes.push(StreamWrite {
            stream: other.stream,
            expected: other.expected_version.parse()?,
            events: convert_events(other.events)?,
        });
    }
    let mut appended = engine.append_streams(&topic, writes).await?.into_iter();
    let main: AppendedOut = appended.next().expect("one result per write").into();
    let tag = etag(main.version);
    let body = AppendOut { main, other_streams: appended.map(AppendedOut::from).collect() };
    Ok((StatusCode::CREATED, [(header::ETAG, tag)], Json(body)).into_response())
}

/// One append of `POST /v1/streams/{topic}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EachAppendIn {
    /// The stream (the records' key), 1-256 bytes.
    stream: String,
    /// `any` (default), `no_stream`, `stream_exists` or a version.
    expected_version: Option<ExpectedText>,
    /// The events, 1 or more.
    events: Vec<EventIn>,
}

/// `POST /v1/streams/{topic}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AppendEachIn {
    /// 1-1,000 appends (at most 10,000 events in all), each checked and written on its own.
    appends: Vec<EachAppendIn>,
}

/// Why one append was refused: the fields of an error answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EachErrorOut {
    error_code: u16,
    /// The HTTP status this append alone would have been answered with (409 for a conflict).
    status: u16,
    message: String,
    /// A conflict's (1021) `stream`, `expected_version` and `actual_version`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    details: Option<serde_json::Value>,
}

/// One append's outcome.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EachResultOut {
    ok: bool,
    /// What it did (`ok: true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    appended: Option<AppendedOut>,
    /// Why it was refused (`ok: false`); nothing of it was appended.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<EachErrorOut>,
}

/// `POST /v1/streams/{topic}` answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AppendEachOut {
    /// One outcome per append, in request order.
    results: Vec<EachResultOut>,
}

impl From<Result<StreamAppended, ApiError>> for EachResultOut {
    fn from(outcome: Result<StreamAppended, ApiError>) -> Self {
        match outcome {
            Ok(appended) => Self { ok: true, appended: Some(appended.into()), error: None },
            Err(error) => Self {
                ok: false,
                appended: None,
                error: Some(EachErrorOut {
                    error_code: error.code.number(),
                    status: error.status().as_u16(),
                    message: error.message,
                    details: error.details,
                }),
            },
        }
    }
}

/// Several independent appends in one request: each is checked against its own expected
/// version and appended, or refused, on its own (one refused append does not stop the
/// others). Appends to the same stream apply in request order. The answer comes once every
/// appended event is durable. For appends that must hold together, use `other_streams` of
/// `POST /v1/streams/{topic}/{stream}`.
#[utoipa::path(post, path = "/v1/streams/{topic}", operation_id = "append_each", tag = "streams",
    params(("topic" = String, Path, description = "Event topic")),
    request_body = AppendEachIn,
    responses(
        (status = 200, description = "Each append's outcome; the appended ones are durable", body = AppendEachOut),
        (status = 400, description = "1008 malformed body, no appends, over 1,000 appends or 10,000 events", body = ErrorBody),
        (status = 404, description = "1001 unknown topic", body = ErrorBody),
        (status = 413, description = "1008 body over 16 MiB", body = ErrorBody),
    ))]
pub(crate) async fn append_each(
    State(engine): State<Engine>,
    Path(topic): Path<String>,
    request: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: AppendEachIn = parse_json(&body(request)?)?;
    let mut outcomes: Vec<Option<Result<StreamAppended, ApiError>>> = Vec::new();
    let mut writes = Vec::with_capacity(request.appends.len());
    let mut indices = Vec::with_capacity(request.appends.len());
    for (index, append) in request.appends.into_iter().enumerate() {
        let write = append
            .expected_version
            .as_ref()
            .map_or(Ok(ExpectedVersion::Any), ExpectedText::parse)
            .and_then(|expected| {
                let events = convert_events(append.events)?;
                Ok(StreamWrite { stream: append.stream, expected, events })
            });
        match write {
            Ok(write) => {
                outcomes.push(None);
                writes.push(write);
                indices.push(index);
            }
            Err(error) => outcomes.push(Some(Err(error))),
        }
    }
    // When every append was refused before the engine, each is answered; an empty request
    // goes to the engine, which refuses it.
    if !writes.is_empty() || outcomes.is_empty() {
        let done = engine.append_each(&topic, writes).await?;
        for (index, outcome) in indices.into_iter().zip(done) {
            outcomes[index] = Some(outcome.map_err(ApiError::from));
        }
    }
    let results = outcomes
        .into_iter()
        .map(|outcome| outcome.expect("every append answered").into())
        .collect();
    Ok((StatusCode::OK, Json(AppendEachOut { results })).into_response())
}

fn convert_events(events: Vec<EventIn>) -> Result<Vec<NewEvent>, ApiError> {
    events.into_iter().enumerate().map(|(index, event)| event.into_event(index)).collect()
}

/// `GET /v1/streams/{topic}/{stream}` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ReadQuery {
    /// First version to return (forward: default the first; backward: default the newest).
    from: Option<u64>,
    /// `forward` (default) or `backward`.
    direction: Option<String>,
    /// Most events, 1..=4096 (default 4096).
    #[param(minimum = 1, maximum = 4096)]
    count: Option<usize>,
    /// Read the stream as it was at this time: RFC 3339, or milliseconds since the epoch.
    as_of: Option<String>,
}

/// An event as the API returns it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EventOut {
    stream: String,
    version: u64,
    #[serde(rename = "type")]
    event_type: String,
    id: String,
    partition: u32,
    offset: u64,
    /// When it was appended (ms since the epoch).
    timestamp: i64,
    /// The same as RFC 3339.
    time: String,
    /// The payload if it is JSON, as stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    data: Option<Box<RawValue>>,
    /// The payload as base64 if it is not JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
    /// Every header stored with the event (CloudEvents attributes as `ce_*`, its version as
    /// `sluice-stream-version`, the caller's own), as text.
    headers: BTreeMap<String, Option<String>>,
}

impl From<StreamEvent> for EventOut {
    fn from(event: StreamEvent) -> Self {
        let (data, data_base64) = json_or_base64(&event.data);
        Self {
            stream: event.stream,
            version: event.version,
            event_type: event.event_type,
            id: event.id,
            partition: event.partition,
            offset: event.offset,
            timestamp: event.timestamp_ms,
            time: format_rfc3339_ms(event.timestamp_ms),
            data,
            data_base64,
            headers: event
                .headers
                .into_iter()
                .map(|(name, value)| {
                    (name, value.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
                })
                .collect(),
        }
    }
}

/// `GET /v1/streams/{topic}/{stream}` answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SliceOut {
    stream: String,
    /// The stream's version (as of `as_of` if given; -1: no events then).
    version: i64,
    /// The first version reads show (truncation, max count, an earlier soft delete).
    first_visible: u64,
    /// The `from` of the next page, if this one stopped at its count or size.
    next: Option<u64>,
    events: Vec<EventOut>,
}

/// Reads a stream forward or backward.
#[utoipa::path(get, path = "/v1/streams/{topic}/{stream}", operation_id = "read_stream", tag = "streams",
    params(("topic" = String, Path, description = "Event topic"), ("stream" = String, Path, description = "Stream name"), ReadQuery),
    responses(
        (status = 200, description = "The events; `ETag` is the stream's version", body = SliceOut),
        (status = 400, description = "1008 bad query", body = ErrorBody),
        (status = 404, description = "1001 unknown topic, 1022 no such stream (or soft-deleted)", body = ErrorBody),
        (status = 503, description = "1101 storage failure", body = ErrorBody),
    ))]
pub(crate) async fn read(
    State(engine): State<Engine>,
    Path((topic, stream)): Path<(String, String)>,
    query: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let direction = match query.direction.as_deref() {
        None | Some("forward") => Direction::Forward,
        Some("backward") => Direction::Backward,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "direction is '{other}'; allowed is forward or backward"
            )))
        }
    };
    let as_of_ms = query.as_of.as_deref().map(parse_time).transpose().map_err(ApiError::invalid)?;
    let read = ReadStream {
        from: query.from,
        direction,
        count: query.count.unwrap_or(READ_COUNT_MAX),
        as_of_ms,
    };
    let slice = engine.read_stream(&topic, &stream, read).await?;
    let tag = etag(slice.version);
    let body = SliceOut {
        stream,
        version: slice.version,
        first_visible: slice.first_visible,
        next: slice.next,
        events: slice.events.into_iter().map(EventOut::from).collect(),
    };
    Ok(([(header::ETAG, tag)], Json(body)).into_response())
}

/// An `as_of`: RFC 3339, or milliseconds since the epoch.
fn parse_time(text: &str) -> Result<i64, String> {
    match text.parse::<i64>() {
        Ok(ms) => Ok(ms),
        Err(_) => parse_rfc3339_ms(text)
            .map_err(|error| format!("{error}, or milliseconds since the epoch")),
    }
}

fn bad_query(error: QueryRejection) -> ApiError {
    ApiError::invalid(format!("bad query: {}", error.body_text()))
}

/// `DELETE /v1/streams/{topic}/{stream}` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeleteQuery {
    /// `any` (default), `stream_exists` or a version; or use `If-Match`.
    expected_version: Option<String>,
}

/// A soft delete's result.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeletedOut {
    stream: String,
    /// The version the stream was deleted at; an append with `no_stream` continues after it.
    deleted_at: u64,
}

/// Soft-deletes a stream: reads find nothing, the name can be reused with `no_stream`.
#[utoipa::path(delete, path = "/v1/streams/{topic}/{stream}", operation_id = "delete_stream", tag = "streams",
    params(("topic" = String, Path, description = "Event topic"), ("stream" = String, Path, description = "Stream name"), DeleteQuery),
    responses(
        (status = 200, description = "Deleted", body = DeletedOut),
        (status = 404, description = "1001 unknown topic, 1022 no such stream (or deleted already)", body = ErrorBody),
        (status = 409, description = "1021 wrong expected version", body = ErrorBody),
        (status = 503, description = "1101 storage failure", body = ErrorBody),
    ))]
pub(crate) async fn delete(
    State(engine): State<Engine>,
    Path((topic, stream)): Path<(String, String)>,
    headers: HeaderMap,
    query: Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<Json<DeletedOut>, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let given = query.expected_version.map(ExpectedText::Text);
    let expected = expected(given.as_ref(), &headers)?;
    let deleted_at = engine.delete_stream(&topic, &stream, expected).await?;
    Ok(Json(DeletedOut { stream, deleted_at }))
}

/// `PUT .../snapshot` body and `GET .../snapshot` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SnapshotBody {
    /// The stream version the snapshot folds (events up to and including it).
    version: u64,
    /// The state as JSON (stored and returned as sent). Give this or `data_base64`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    data: Option<Box<RawValue>>,
    /// The state as base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
    /// When it was saved (ms since the epoch); ignored on `PUT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timestamp: Option<i64>,
}

/// Loads the newest snapshot of a stream.
#[utoipa::path(get, path = "/v1/streams/{topic}/{stream}/snapshot", operation_id = "load_snapshot", tag = "streams",
    params(("topic" = String, Path, description = "Event topic"), ("stream" = String, Path, description = "Stream name")),
    responses(
        (status = 200, description = "The snapshot", body = SnapshotBody),
        (status = 404, description = "1001 unknown topic, 1023 no snapshot", body = ErrorBody),
        (status = 503, description = "1101 storage failure", body = ErrorBody),
    ))]
pub(crate) async fn load_snapshot(
    State(engine): State<Engine>,
    Path((topic, stream)): Path<(String, String)>,
) -> Result<Json<SnapshotBody>, ApiError> {
    let snapshot = engine.load_snapshot(&topic, &stream).await?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::SnapshotNotFound,
            format!("stream {stream} in topic '{topic}' has no snapshot"),
        )
    })?;
    let (data, data_base64) = json_or_base64(&snapshot.data);
    Ok(Json(SnapshotBody {
        version: snapshot.version,
        data,
        data_base64,
        timestamp: Some(snapshot.timestamp_ms),
    }))
}

/// Stores a snapshot as the stream's newest.
#[utoipa::path(put, path = "/v1/streams/{topic}/{stream}/snapshot", operation_id = "save_snapshot", tag = "streams",
    params(("topic" = String, Path, description = "Event topic"), ("stream" = String, Path, description = "Stream name")),
    request_body = SnapshotBody,
    responses(
        (status = 204, description = "Stored and durable"),
        (status = 400, description = "1008 bad body, a version past the stream's, over 8 MiB", body = ErrorBody),
        (status = 404, description = "1001 unknown topic, 1022 no such stream", body = ErrorBody),
        (status = 503, description = "1101 storage failure", body = ErrorBody),
    ))]
pub(crate) async fn save_snapshot(
    State(engine): State<Engine>,
    Path((topic, stream)): Path<(String, String)>,
    request: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let request: SnapshotBody = parse_json(&body(request)?)?;
    let data = match (request.data, request.data_base64) {
        (Some(value), None) => json_bytes(value),
        (None, Some(text)) => BASE64
            .decode(text.as_bytes())
            .map_err(|error| ApiError::invalid(format!("data_base64 is not base64: {error}")))?,
        _ => return Err(ApiError::invalid("give exactly one of data (JSON) and data_base64")),
    };
    engine.save_snapshot(&topic, &stream, request.version, data).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A stream's metadata as the API shows and takes it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetadataBody {
    /// Reads show at most this many of the newest events.
    #[serde(default)]
    max_count: Option<u64>,
    /// Reads show only events appended at most this long ago (ms).
    #[serde(default)]
    max_age_ms: Option<u64>,
    /// Reads show only events at this version or later.
    #[serde(default)]
    truncate_before: Option<u64>,
    /// Set by a soft delete (read only: ignored on `PUT`).
    #[serde(default)]
    deleted_at: Option<u64>,
}

impl From<StreamMetadata> for MetadataBody {
    fn from(metadata: StreamMetadata) -> Self {
        Self {
            max_count: metadata.max_count,
            max_age_ms: metadata.max_age_ms,
            truncate_before: metadata.truncate_before,
            deleted_at: metadata.deleted_at,
        }
    }
}

/// A stream's metadata.
#[utoipa::path(get, path = "/v1/streams/{topic}/{stream}/metadata", operation_id = "stream_metadata", tag = "streams",
    params(("topic" = String, Path, description = "Event topic"), ("stream" = String, Path, description = "Stream name")),
    responses(
        (status = 200, description = "The metadata (fields absent or null are unset)", body = MetadataBody),
        (status = 404, description = "1001 unknown topic", body = ErrorBody),
    ))]
pub(crate) async fn metadata(
    State(engine): State<Engine>,
    Path((topic, stream)): Path<(String, String)>,
) -> Result<Json<MetadataBody>, ApiError> {
    Ok(Json(engine.stream_metadata(&topic, &stream)?.into()))
}

/// Replaces a stream's metadata.
#[utoipa::path(put, path = "/v1/streams/{topic}/{stream}/metadata", operation_id = "set_stream_metadata", tag = "streams",
    params(("topic" = String, Path, description = "Event topic"), ("stream" = String, Path, description = "Stream name")),
    request_body = MetadataBody,
    responses(
        (status = 200, description = "The metadata now", body = MetadataBody),
        (status = 400, description = "1008 bad body or a value out of range", body = ErrorBody),
        (status = 404, description = "1001 unknown topic", body = ErrorBody),
        (status = 503, description = "1101 storage failure", body = ErrorBody),
    ))]
pub(crate) async fn set_metadata(
    State(engine): State<Engine>,
    Path((topic, stream)): Path<(String, String)>,
    request: Result<Bytes, BytesRejection>,
) -> Result<Json<MetadataBody>, ApiError> {
    let request: MetadataBody = parse_json(&body(request)?)?;
    let metadata = StreamMetadata {
        max_count: request.max_count,
        max_age_ms: request.max_age_ms,
        truncate_before: request.truncate_before,
        deleted_at: None,
    };
    Ok(Json(engine.set_stream_metadata(&topic, &stream, metadata).await?.into()))
}

/// Subscription query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct SubscribeQuery {
    /// `start` (default), `end`, or for one stream a version, for a topic a position
    /// `partition:offset,...` (the `id` of an event received before). A `Last-Event-ID`
    /// header (sent by reconnecting browsers) takes precedence: the stream resumes after it.
    from: Option<String>,
}

/// Subscribes to one stream: its stored events from `from`, then live ones, as Server-Sent
/// Events.
#[utoipa::path(get, path = "/v1/streams/{topic}/{stream}/events", operation_id = "subscribe_stream", tag = "streams",
    params(("topic" = String, Path, description = "Event topic"), ("stream" = String, Path, description = "Stream name"), SubscribeQuery),
    responses(
        (status = 200, content_type = "text/event-stream", body = String,
            description = "One SSE event per stream event: `event: <type>`, `id: <version>`, `data:` an `EventOut` as JSON; a comment every 15 s while idle"),
        (status = 400, description = "1008 bad `from`", body = ErrorBody),
        (status = 404, description = "1001 unknown topic", body = ErrorBody),
    ))]
pub(crate) async fn subscribe_stream(
    State(engine): State<Engine>,
    Path((topic, stream)): Path<(String, String)>,
    headers: HeaderMap,
    query: Result<Query<SubscribeQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let from = match last_event_id(&headers)? {
        Some(id) => {
            let version: u64 = id.parse().map_err(|_| {
                ApiError::invalid(format!(
                    "Last-Event-ID is '{id}'; a stream subscription's ids are versions"
                ))
            })?;
            SubscriptionFrom::Version(version + 1)
        }
        None => match query.from.as_deref() {
            None | Some("start") => SubscriptionFrom::Start,
            Some("end") => SubscriptionFrom::End,
            Some(text) => SubscriptionFrom::Version(text.parse().map_err(|_| {
                ApiError::invalid(format!("from is '{text}'; allowed is start, end or a version"))
            })?),
        },
    };
    let subscription = engine.subscribe_stream(&topic, &stream, from).await?;
    Ok(sse(subscription, |event, _| event.version.to_string()))
}

/// Subscribes to every stream of a topic (each partition in order), as Server-Sent Events.
#[utoipa::path(get, path = "/v1/streams/{topic}", operation_id = "subscribe_topic", tag = "streams",
    params(("topic" = String, Path, description = "Event topic"), SubscribeQuery),
    responses(
        (status = 200, content_type = "text/event-stream", body = String,
            description = "One SSE event per stream event: `event: <type>`, `id:` the position after it \
                (`partition:offset,...`, pass it back as `from`), `data:` an `EventOut` as JSON"),
        (status = 400, description = "1008 bad `from`", body = ErrorBody),
        (status = 404, description = "1001 unknown topic", body = ErrorBody),
    ))]
pub(crate) async fn subscribe_topic(
    State(engine): State<Engine>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    query: Result<Query<SubscribeQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let from = match last_event_id(&headers)?.or(query.from) {
        None => SubscriptionFrom::Start,
        Some(text) if text == "start" => SubscriptionFrom::Start,
        Some(text) if text == "end" => SubscriptionFrom::End,
        Some(text) => SubscriptionFrom::Offsets(parse_position(&text)?),
    };
    let subscription = engine.subscribe_topic(&topic, from)?;
    Ok(sse(subscription, |_, position| format_position(position)))
}

fn last_event_id(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    headers
        .get("last-event-id")
        .map(|value| {
            value
                .to_str()
                .map(str::to_owned)
                .map_err(|_| ApiError::invalid("Last-Event-ID is not text"))
        })
        .transpose()
}

/// `0:15,1:7` into partitions and next offsets.
fn parse_position(text: &str) -> Result<Vec<(u32, u64)>, ApiError> {
    text.split(',')
        .map(|part| {
            let (partition, offset) = part.split_once(':').unwrap_or(("", ""));
            match (partition.parse(), offset.parse()) {
                (Ok(partition), Ok(offset)) => Ok((partition, offset)),
                _ => Err(ApiError::invalid(format!(
                    "position '{text}' is not start, end or partition:offset,... (like 0:15,1:7)"
                ))),
            }
        })
        .collect()
}

fn format_position(position: &[(u32, u64)]) -> String {
    position
        .iter()
        .map(|(partition, offset)| format!("{partition}:{offset}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A subscription as an SSE stream; `id` names each event for `Last-Event-ID`.
fn sse(
    subscription: Subscription,
    id: fn(&StreamEvent, &[(u32, u64)]) -> String,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = stream::unfold(subscription, move |mut subscription| async move {
        match subscription.next().await {
            Ok(event) => {
                let id = id(&event, &subscription.position());
                let kind = event.event_type.clone();
                let body =
                    serde_json::to_string(&EventOut::from(event)).expect("an event serialises");
                let sse = Event::default().event(kind).id(id).data(body);
                Some((Ok(sse), subscription))
            }
            Err(error) => {
                tracing::info!(%error, "subscription ended");
                None
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(IDLE_WAIT))
}
