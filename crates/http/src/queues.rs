//! Queue groups (work queues): `POST/GET /v1/queues`, `GET/DELETE /v1/queues/{group}`,
//! `GET /v1/queues/{group}/messages` (lease), `POST /v1/queues/{group}/ack|nack|reject|extend`
//! (settle, with an outcome per delivery id) and `POST /v1/queues/{group}/release` (a parked
//! key). The rules (leases, retries, backoff, dead letters, key ordering) are the engine's; this
//! file only translates.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sluice_engine::queue::{
    Action, Delivery, Ordering, QueueConfig, QueueDescription, QueueStart, SettleDone,
};
use sluice_engine::{Engine, QueueError, FETCH_WAIT_MAX};
use utoipa::{IntoParams, ToSchema};

use crate::body;
use crate::error::{parse_json, ApiError, ErrorBody};
use crate::records::PayloadOut;

// `#[param(maximum = ...)]` takes only literals; these keep the documented limits true.
const _: () = assert!(sluice_engine::queue::LEASE_MAX == 1000, "update the max param");
const _: () = assert!(FETCH_WAIT_MAX.as_millis() == 30_000, "update the wait_ms param");

/// The member a lease is recorded against when the request names none.
const DEFAULT_MEMBER: &str = "default";

/// Per-key ordering of a queue group.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OrderingText {
    /// Any message may be delivered as soon as a worker asks.
    None,
    /// A message waits while an earlier message of its key in its partition is leased, waiting
    /// for a retry, or parked after going to the dead-letter topic.
    Key,
}

impl From<OrderingText> for Ordering {
    fn from(ordering: OrderingText) -> Self {
        match ordering {
            OrderingText::None => Ordering::None,
            OrderingText::Key => Ordering::Key,
        }
    }
}

impl From<Ordering> for OrderingText {
    fn from(ordering: Ordering) -> Self {
        match ordering {
            Ordering::None => OrderingText::None,
            Ordering::Key => OrderingText::Key,
        }
    }
}

/// Where a new queue group starts reading its topics.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StartText {
    /// Every stored message.
    Earliest,
    /// Only messages produced after the group was created.
    Latest,
}

impl From<StartText> for QueueStart {
    fn from(start: StartText) -> Self {
        match start {
            StartText::Earliest => QueueStart::Earliest,
            StartText::Latest => QueueStart::Latest,
        }
    }
}

impl From<QueueStart> for StartText {
    fn from(start: QueueStart) -> Self {
        match start {
            QueueStart::Earliest => StartText::Earliest,
            QueueStart::Latest => StartText::Latest,
        }
    }
}

/// `POST /v1/queues` body. Unset settings take the defaults of `docs/http-api.md`; unknown
/// fields are refused.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateQueue {
    /// The group's name: the rules of topic names.
    group: String,
    /// The topics it consumes (1-100; they must exist).
    topics: Vec<String>,
    /// How long a delivery is leased (10 ms to 12 h); default 30,000.
    #[schema(minimum = 10, maximum = 43200000)]
    ack_wait_ms: Option<u64>,
    /// Deliveries after which a failing message is dead-lettered (1-1,000); default 5.
    #[schema(minimum = 1, maximum = 1000)]
    deliveries_max: Option<u32>,
    /// Delay before the first redelivery (0 to 1 day); default 1,000.
    #[schema(maximum = 86400000)]
    backoff_initial_ms: Option<u64>,
    /// Growth of the delay per delivery (1.0-10.0); default 2.0.
    #[schema(minimum = 1.0, maximum = 10.0)]
    backoff_multiplier: Option<f64>,
    /// Longest delay (`backoff_initial_ms` to 1 day); default 60,000.
    #[schema(maximum = 86400000)]
    backoff_max_ms: Option<u64>,
    /// Fraction of each delay taken off at random (0.0-1.0); default 0.2.
    #[schema(minimum = 0.0, maximum = 1.0)]
    backoff_jitter: Option<f64>,
    /// Default `none`.
    ordering: Option<OrderingText>,
    /// Most messages of the group leased or waiting for a retry (1-100,000); default 1,000.
    #[schema(minimum = 1, maximum = 100000)]
    max_in_flight: Option<u32>,
    /// Most messages one member holds leased (1-100,000); default 1,000.
    #[schema(minimum = 1, maximum = 100000)]
    member_max_in_flight: Option<u32>,
    /// Where dead letters go; default `<topic>.dlq` per topic.
    dead_letter_topic: Option<String>,
    /// Default `earliest`.
    start: Option<StartText>,
}

impl CreateQueue {
    fn into_config(self) -> (String, QueueConfig) {
        let defaults = QueueConfig::default();
        let config = QueueConfig {
            topics: self.topics,
            ack_wait_ms: self.ack_wait_ms.unwrap_or(defaults.ack_wait_ms),
            deliveries_max: self.deliveries_max.unwrap_or(defaults.deliveries_max),
            backoff_initial_ms: self.backoff_initial_ms.unwrap_or(defaults.backoff_initial_ms),
            backoff_multiplier: self.backoff_multiplier.unwrap_or(defaults.backoff_multiplier),
            backoff_max_ms: self.backoff_max_ms.unwrap_or(defaults.backoff_max_ms),
            backoff_jitter: self.backoff_jitter.unwrap_or(defaults.backoff_jitter),
            ordering: self.ordering.map_or(defaults.ordering, Ordering::from),
            max_in_flight: self.max_in_flight.unwrap_or(defaults.max_in_flight),
            member_max_in_flight: self
                .member_max_in_flight
                .unwrap_or(defaults.member_max_in_flight),
            dead_letter_topic: self.dead_letter_topic,
            start: self.start.map_or(defaults.start, QueueStart::from),
        };
        (self.group, config)
    }
}

/// A queue group's settings.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct QueueConfigOut {
    topics: Vec<String>,
    ack_wait_ms: u64,
    deliveries_max: u32,
    backoff_initial_ms: u64,
    backoff_multiplier: f64,
    backoff_max_ms: u64,
    backoff_jitter: f64,
    ordering: OrderingText,
    max_in_flight: u32,
    member_max_in_flight: u32,
    /// `null`: `<topic>.dlq` for each topic.
    dead_letter_topic: Option<String>,
    start: StartText,
}

impl From<QueueConfig> for QueueConfigOut {
    fn from(config: QueueConfig) -> Self {
        Self {
            topics: config.topics,
            ack_wait_ms: config.ack_wait_ms,
            deliveries_max: config.deliveries_max,
            backoff_initial_ms: config.backoff_initial_ms,
            backoff_multiplier: config.backoff_multiplier,
            backoff_max_ms: config.backoff_max_ms,
            backoff_jitter: config.backoff_jitter,
            ordering: config.ordering.into(),
            max_in_flight: config.max_in_flight,
            member_max_in_flight: config.member_max_in_flight,
            dead_letter_topic: config.dead_letter_topic,
            start: config.start.into(),
        }
    }
}

/// What a queue group's messages are doing now.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CountsOut {
    /// Leased now (delivered, not settled, deadline not passed).
    leased: u64,
    /// Waiting for a retry.
    waiting: u64,
    /// Ready to deliver.
    ready: u64,
    /// In the group's window (loaded or not).
    open: u64,
    /// Delivered at least once and not settled: the `max_in_flight` measure.
    in_flight: u64,
    /// Keys parked after their message was dead-lettered (`ordering: key`).
    parked_keys: u64,
}

/// Counters since the server started.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TotalsOut {
    delivered: u64,
    /// Deliveries after the first of a message.
    redelivered: u64,
    acked: u64,
    dead_lettered: u64,
}

/// A queue group's position on one partition.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct QueuePartitionOut {
    topic: String,
    partition: u32,
    /// Every offset below it is acked or dead-lettered.
    ack_floor: u64,
    /// The next offset the group reads into its window.
    read_position: u64,
    high_watermark: u64,
    /// Messages open in the window.
    open: u64,
    /// Parked keys, as UTF-8 text (lossy).
    parked_keys: Vec<String>,
}

/// A queue group: settings, counts, totals, partitions and members.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct QueueOut {
    group: String,
    config: QueueConfigOut,
    counts: CountsOut,
    totals: TotalsOut,
    partitions: Vec<QueuePartitionOut>,
    /// Messages leased per member name.
    members: BTreeMap<String, u32>,
}

impl From<QueueDescription> for QueueOut {
    fn from(queue: QueueDescription) -> Self {
        let counts = queue.counts;
        let totals = queue.totals;
        Self {
            group: queue.name,
            config: queue.config.into(),
            counts: CountsOut {
                leased: counts.leased,
                waiting: counts.waiting,
                ready: counts.ready,
                open: counts.open,
                in_flight: counts.in_flight,
                parked_keys: counts.parked_keys,
            },
            totals: TotalsOut {
                delivered: totals.delivered,
                redelivered: totals.redelivered,
                acked: totals.acked,
                dead_lettered: totals.dead_lettered,
            },
            partitions: queue
                .partitions
                .into_iter()
                .map(|part| QueuePartitionOut {
                    topic: part.topic,
                    partition: part.partition,
                    ack_floor: part.ack_floor,
                    read_position: part.read_position,
                    high_watermark: part.high_watermark,
                    open: part.open,
                    parked_keys: part
                        .parked_keys
                        .iter()
                        .map(|key| String::from_utf8_lossy(key).into_owned())
                        .collect(),
                })
                .collect(),
            members: queue.members,
        }
    }
}

/// Creates a queue group: 201 when created, 200 when it existed with the same settings.
#[utoipa::path(post, path = "/v1/queues", operation_id = "create_queue", tag = "queues",
    request_body = CreateQueue,
    responses(
        (status = 201, description = "Created", body = QueueOut),
        (status = 200, description = "It existed with these settings", body = QueueOut),
        (status = 400, description = "1003 invalid name, 1004 a setting out of range, 1008 malformed body or unknown field", body = ErrorBody),
        (status = 404, description = "1001 unknown topic", body = ErrorBody),
        (status = 408, description = "1008 the request took too long", body = ErrorBody),
        (status = 409, description = "1018 the group exists with other settings", body = ErrorBody),
        (status = 413, description = "1008 body over 16 MiB", body = ErrorBody),
        (status = 503, description = "1101 storage failure", body = ErrorBody),
    ))]
pub(crate) async fn create(
    State(engine): State<Engine>,
    request: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<QueueOut>), ApiError> {
    let request: CreateQueue = parse_json(&body(request)?)?;
    let (group, config) = request.into_config();
    let existed = engine.describe_queue(&group).is_ok();
    let created = tokio::task::spawn_blocking(move || engine.create_queue(&group, config))
        .await
        .expect("queue creation does not panic")?;
    let status = if existed { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(created.into())))
}

/// Every queue group.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct QueueList {
    queues: Vec<QueueOut>,
}

/// Lists the queue groups, described.
#[utoipa::path(get, path = "/v1/queues", operation_id = "list_queues", tag = "queues",
    responses((status = 200, description = "Every queue group", body = QueueList)))]
pub(crate) async fn list(State(engine): State<Engine>) -> Json<QueueList> {
    Json(QueueList { queues: engine.list_queues().into_iter().map(QueueOut::from).collect() })
}

/// Describes a queue group.
#[utoipa::path(get, path = "/v1/queues/{group}", operation_id = "describe_queue", tag = "queues",
    params(("group" = String, Path, description = "Queue group name")),
    responses(
        (status = 200, description = "The queue group", body = QueueOut),
        (status = 404, description = "1017 unknown queue group", body = ErrorBody),
    ))]
pub(crate) async fn describe(
    State(engine): State<Engine>,
    Path(group): Path<String>,
) -> Result<Json<QueueOut>, ApiError> {
    Ok(Json(engine.describe_queue(&group)?.into()))
}

/// Deletes a queue group and its state; its dead-letter topics stay.
#[utoipa::path(delete, path = "/v1/queues/{group}", operation_id = "delete_queue", tag = "queues",
    params(("group" = String, Path, description = "Queue group name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "1017 unknown queue group", body = ErrorBody),
        (status = 503, description = "1101 storage failure", body = ErrorBody),
    ))]
pub(crate) async fn delete(
    State(engine): State<Engine>,
    Path(group): Path<String>,
) -> Result<StatusCode, ApiError> {
    tokio::task::spawn_blocking(move || engine.delete_queue(&group))
        .await
        .expect("queue deletion does not panic")?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct LeaseQuery {
    /// Most messages to lease; default 1.
    #[param(minimum = 1, maximum = 1000)]
    max: Option<u32>,
    /// How long to wait for a message when none is deliverable; default 0.
    #[serde(default)]
    #[param(maximum = 30000)]
    wait_ms: u64,
    /// Who holds the leases (for `member_max_in_flight` and the description); default
    /// `default`. Up to 256 bytes.
    member: Option<String>,
}

/// A leased message.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MessageOut {
    /// Settle it with this id: `topic/partition/offset/delivery`.
    delivery_id: String,
    topic: String,
    partition: u32,
    offset: u64,
    /// Its delivery count, this one included (1 on the first delivery).
    deliveries: u32,
    /// When the lease ends (ms since the epoch) unless extended.
    deadline_ms: i64,
    /// The record's timestamp (ms since the epoch).
    timestamp_ms: i64,
    #[serde(flatten)]
    payload: PayloadOut,
}

impl From<Delivery> for MessageOut {
    fn from(delivery: Delivery) -> Self {
        let record = delivery.record;
        Self {
            delivery_id: delivery.id,
            topic: delivery.topic,
            partition: delivery.partition,
            offset: record.offset,
            deliveries: delivery.deliveries,
            deadline_ms: delivery.deadline_ms,
            timestamp_ms: record.timestamp_ms,
            payload: PayloadOut::of(&record),
        }
    }
}

/// Leased messages.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LeaseOut {
    messages: Vec<MessageOut>,
}

/// Leases up to `max` messages, waiting up to `wait_ms` for one. Each must be settled (ack,
/// nack, reject) or extended before its `deadline_ms`, or it counts as a failed delivery.
#[utoipa::path(get, path = "/v1/queues/{group}/messages", operation_id = "lease", tag = "queues",
    params(("group" = String, Path, description = "Queue group name"), LeaseQuery),
    responses(
        (status = 200, description = "The leased messages (none when nothing was deliverable in time)", body = LeaseOut),
        (status = 400, description = "1008 bad query, `max` or `member` out of range", body = ErrorBody),
        (status = 404, description = "1017 unknown queue group", body = ErrorBody),
        (status = 408, description = "1008 the request took too long", body = ErrorBody),
        (status = 503, description = "1101 storage failure", body = ErrorBody),
    ))]
pub(crate) async fn lease(
    State(engine): State<Engine>,
    Path(group): Path<String>,
    query: Result<Query<LeaseQuery>, QueryRejection>,
) -> Result<Json<LeaseOut>, ApiError> {
    let Query(query) =
        query.map_err(|error| ApiError::invalid(format!("bad query: {}", error.body_text())))?;
    let wait = lease_wait(query.wait_ms)?;
    let member = query.member.as_deref().unwrap_or(DEFAULT_MEMBER);
    let deliveries = engine.lease(&group, member, query.max.unwrap_or(1), wait).await?;
    Ok(Json(LeaseOut { messages: deliveries.into_iter().map(MessageOut::from).collect() }))
}

/// A lease's `wait_ms`, checked against [`FETCH_WAIT_MAX`].
fn lease_wait(wait_ms: u64) -> Result<Duration, ApiError> {
    let wait_max = u64::try_from(FETCH_WAIT_MAX.as_millis()).unwrap_or(u64::MAX);
    if wait_ms > wait_max {
        return Err(ApiError::invalid(format!("wait_ms is {wait_ms}; allowed is 0..={wait_max}")));
    }
    Ok(Duration::from_millis(wait_ms))
}

/// `POST /v1/queues/{group}/ack` and `.../extend` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct IdsBody {
    /// Delivery ids from leases (1-10,000).
    ids: Vec<String>,
}

/// `POST /v1/queues/{group}/nack` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NackBody {
    /// Delivery ids from leases (1-10,000).
    ids: Vec<String>,
    /// Redeliver after this delay (0 to 1 day) instead of the group's backoff.
    #[schema(maximum = 86400000)]
    delay_ms: Option<u64>,
    /// Why it failed; kept as the dead letter's `last_error` if it gets there.
    error: Option<String>,
}

/// `POST /v1/queues/{group}/reject` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RejectBody {
    /// Delivery ids from leases (1-10,000).
    ids: Vec<String>,
    /// Why; kept as the dead letter's `last_error`.
    error: Option<String>,
}

/// A position in a topic.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PositionOut {
    pub(crate) topic: String,
    pub(crate) partition: u32,
    pub(crate) offset: u64,
}

/// A per-id error.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SettleErrorOut {
    /// 1019 no longer leased (settled already, or its lease expired), 1020 not a delivery id of
    /// this group, 1101 the dead letter could not be written (it is tried again later).
    code: u16,
    message: String,
}

/// What settling one delivery id did.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SettleResultOut {
    id: String,
    ok: bool,
    /// The new deadline (ms since the epoch), after an extend.
    #[serde(skip_serializing_if = "Option::is_none")]
    deadline_ms: Option<i64>,
    /// Where the message went, when it was dead-lettered (a reject, or a nack of its last
    /// allowed delivery).
    #[serde(skip_serializing_if = "Option::is_none")]
    dead_lettered: Option<PositionOut>,
    /// Why this id was refused (`ok: false`).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<SettleErrorOut>,
}

/// Each id's outcome, in request order.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SettleOut {
    results: Vec<SettleResultOut>,
}

fn settle_result(id: String, outcome: Result<SettleDone, QueueError>) -> SettleResultOut {
    match outcome {
        Ok(done) => SettleResultOut {
            id,
            ok: true,
            deadline_ms: done.deadline_ms,
            dead_lettered: done.dead_lettered.map(|(topic, partition, offset)| PositionOut {
                topic,
                partition,
                offset,
            }),
            error: None,
        },
        Err(error) => SettleResultOut {
            id,
            ok: false,
            deadline_ms: None,
            dead_lettered: None,
            error: Some(SettleErrorOut { code: error.code().number(), message: error.to_string() }),
        },
    }
}

async fn settle(
    engine: &Engine,
    group: &str,
    ids: Vec<String>,
    action: Action,
) -> Result<Json<SettleOut>, ApiError> {
    let items = ids.iter().map(|id| (id.clone(), action.clone())).collect();
    let outcomes = engine.settle(group, items).await?;
    let results = ids.into_iter().zip(outcomes).map(|(id, outcome)| settle_result(id, outcome));
    Ok(Json(SettleOut { results: results.collect() }))
}

/// Acknowledges deliveries: done, never delivered again.
#[utoipa::path(post, path = "/v1/queues/{group}/ack", operation_id = "ack", tag = "queues",
    params(("group" = String, Path, description = "Queue group name")),
    request_body = IdsBody,
    responses(
        (status = 200, description = "Each id's outcome", body = SettleOut),
        (status = 400, description = "1008 malformed body, no ids or over 10,000", body = ErrorBody),
        (status = 404, description = "1017 unknown queue group", body = ErrorBody),
        (status = 408, description = "1008 the request took too long", body = ErrorBody),
        (status = 413, description = "1008 body over 16 MiB", body = ErrorBody),
        (status = 503, description = "1101 storage failure", body = ErrorBody),
    ))]
pub(crate) async fn ack(
    State(engine): State<Engine>,
    Path(group): Path<String>,
    request: Result<Bytes, BytesRejection>,
) -> Result<Json<SettleOut>, ApiError> {
    let request: IdsBody = parse_json(&body(request)?)?;
    settle(&engine, &group, request.ids, Action::Ack).await
}

/// Negatively acknowledges deliveries: redelivered after `delay_ms` or the group's backoff, or
/// dead-lettered if this was the last allowed delivery.
#[utoipa::path(post, path = "/v1/queues/{group}/nack", operation_id = "nack", tag = "queues",
    params(("group" = String, Path, description = "Queue group name")),
    request_body = NackBody,
    responses(
        (status = 200, description = "Each id's outcome", body = SettleOut),
        (status = 400, description = "1008 malformed body, no ids or over 10,000, `delay_ms` out of range", body = ErrorBody),
        (status = 404, description = "1017 unknown queue group", body = ErrorBody),
        (status = 408, description = "1008 the request took too long", body = ErrorBody),
        (status = 413, description = "1008 body over 16 MiB", body = ErrorBody),
        (status = 503, description = "1101 storage failure", body = ErrorBody),
    ))]
pub(crate) async fn nack(
    State(engine): State<Engine>,
    Path(group): Path<String>,
    request: Result<Bytes, BytesRejection>,
) -> Result<Json<SettleOut>, ApiError> {
    let request: NackBody = parse_json(&body(request)?)?;
    let action = Action::Nack { delay_ms: request.delay_ms, error: request.error };
    settle(&engine, &group, request.ids, action).await
}

/// `POST /v1/queues/{group}/ack-next` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AckNextBody {
    /// Delivery ids to acknowledge first (0-10,000).
    #[serde(default)]
    ids: Vec<String>,
    /// Most messages to lease next; default 1.
    #[schema(minimum = 1, maximum = 1000)]
    max: Option<u32>,
    /// How long to wait for a message when none is deliverable; default 0.
    #[serde(default)]
    #[schema(maximum = 30000)]
    wait_ms: u64,
    /// Who holds the new leases; default `default`. Up to 256 bytes.
    member: Option<String>,
}

/// What acknowledging did, and the next leased messages.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AckNextOut {
    /// Each acknowledged id's outcome, in request order.
    results: Vec<SettleResultOut>,
    /// The leased messages (none when nothing was deliverable within `wait_ms`).
    messages: Vec<MessageOut>,
}

/// Acknowledges deliveries and leases the next messages in one round trip (NATS's "ack
/// next"): the acks and the new leases are journaled together and usually share one fsync;
/// every ack is fsynced before the answer. An id that cannot be acknowledged is reported in
/// `results` and does not stop the lease.
#[utoipa::path(post, path = "/v1/queues/{group}/ack-next", operation_id = "ack_next", tag = "queues",
    params(("group" = String, Path, description = "Queue group name")),
    request_body = AckNextBody,
    responses(
        (status = 200, description = "Each id's outcome and the leased messages", body = AckNextOut),
        (status = 400, description = "1008 malformed body, over 10,000 ids, `max`, `wait_ms` or `member` out of range", body = ErrorBody),
        (status = 404, description = "1017 unknown queue group", body = ErrorBody),
        (status = 408, description = "1008 the request took too long", body = ErrorBody),
        (status = 413, description = "1008 body over 16 MiB", body = ErrorBody),
        (status = 503, description = "1101 storage failure", body = ErrorBody),
    ))]
pub(crate) async fn ack_next(
    State(engine): State<Engine>,
    Path(group): Path<String>,
    request: Result<Bytes, BytesRejection>,
) -> Result<Json<AckNextOut>, ApiError> {
    let request: AckNextBody = parse_json(&body(request)?)?;
    let wait = lease_wait(request.wait_ms)?;
    let member = request.member.as_deref().unwrap_or(DEFAULT_MEMBER);
    let max = request.max.unwrap_or(1);
    let (outcomes, deliveries) = if request.ids.is_empty() {
        (Vec::new(), engine.lease(&group, member, max, wait).await?)
    } else {
        let items = request.ids.iter().map(|id| (id.clone(), Action::Ack)).collect();
        engine.settle_and_lease(&group, items, member, max, wait).await?
    };
    let results =
        request.ids.into_iter().zip(outcomes).map(|(id, outcome)| settle_result(id, outcome));
    Ok(Json(AckNextOut {
        results: results.collect(),
        messages: deliveries.into_iter().map(MessageOut::from).collect(),
    }))
}

/// Rejects deliveries: straight to the dead-letter topic.
#[utoipa::path(post, path = "/v1/queues/{group}/reject", operation_id = "reject", tag = "queues",
    params(("group" = String, Path, description = "Queue group name")),
    request_body = RejectBody,
    responses(
        (status = 200, description = "Each id's outcome", body = SettleOut),
        (status = 400, description = "1008 malformed body, no ids or over 10,000", body = ErrorBody),
        (status = 404, description = "1017 unknown queue group", body = ErrorBody),
        (status = 408, description = "1008 the request took too long", body = ErrorBody),
        (status = 413, description = "1008 body over 16 MiB", body = ErrorBody),
        (status = 503, description = "1101 storage failure", body = ErrorBody),
    ))]
pub(crate) async fn reject(
    State(engine): State<Engine>,
    Path(group): Path<String>,
    request: Result<Bytes, BytesRejection>,
) -> Result<Json<SettleOut>, ApiError> {
    let request: RejectBody = parse_json(&body(request)?)?;
    settle(&engine, &group, request.ids, Action::Reject { error: request.error }).await
}

/// Extends leases: each deadline moves to now plus the group's `ack_wait_ms`.
#[utoipa::path(post, path = "/v1/queues/{group}/extend", operation_id = "extend", tag = "queues",
    params(("group" = String, Path, description = "Queue group name")),
    request_body = IdsBody,
    responses(
        (status = 200, description = "Each id's outcome, with its new `deadline_ms`", body = SettleOut),
        (status = 400, description = "1008 malformed body, no ids or over 10,000", body = ErrorBody),
        (status = 404, description = "1017 unknown queue group", body = ErrorBody),
        (status = 408, description = "1008 the request took too long", body = ErrorBody),
        (status = 413, description = "1008 body over 16 MiB", body = ErrorBody),
        (status = 503, description = "1101 storage failure", body = ErrorBody),
    ))]
pub(crate) async fn extend(
    State(engine): State<Engine>,
    Path(group): Path<String>,
    request: Result<Bytes, BytesRejection>,
) -> Result<Json<SettleOut>, ApiError> {
    let request: IdsBody = parse_json(&body(request)?)?;
    settle(&engine, &group, request.ids, Action::Extend).await
}

/// `POST /v1/queues/{group}/release` body. Send one of `key` and `key_base64`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReleaseBody {
    topic: String,
    partition: u32,
    /// The parked key as UTF-8 text.
    key: Option<String>,
    /// The parked key as base64 bytes.
    key_base64: Option<String>,
}

/// Whether the key was parked.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReleaseOut {
    released: bool,
}

/// Releases a key parked after its message was dead-lettered (`ordering: key`): its waiting
/// messages become deliverable.
#[utoipa::path(post, path = "/v1/queues/{group}/release", operation_id = "release_key", tag = "queues",
    params(("group" = String, Path, description = "Queue group name")),
    request_body = ReleaseBody,
    responses(
        (status = 200, description = "`released: false` when the key was not parked", body = ReleaseOut),
        (status = 400, description = "1008 malformed body, neither or both of `key` and `key_base64`", body = ErrorBody),
        (status = 404, description = "1017 unknown queue group", body = ErrorBody),
        (status = 408, description = "1008 the request took too long", body = ErrorBody),
        (status = 413, description = "1008 body over 16 MiB", body = ErrorBody),
        (status = 503, description = "1101 storage failure", body = ErrorBody),
    ))]
pub(crate) async fn release(
    State(engine): State<Engine>,
    Path(group): Path<String>,
    request: Result<Bytes, BytesRejection>,
) -> Result<Json<ReleaseOut>, ApiError> {
    let request: ReleaseBody = parse_json(&body(request)?)?;
    let key = match (request.key, request.key_base64) {
        (Some(key), None) => key.into_bytes(),
        (None, Some(encoded)) => BASE64.decode(encoded).map_err(|error| {
            ApiError::invalid(format!("key_base64 is not valid base64: {error}"))
        })?,
        _ => return Err(ApiError::invalid("send one of key and key_base64")),
    };
    let released = engine.release_key(&group, &request.topic, request.partition, &key).await?;
    Ok(Json(ReleaseOut { released }))
}
