//! Consumer-group endpoints (stream mode):
//! `POST /v1/groups/{group}/members` (join), `GET .../members/{member}/records` (fetch, counts as
//! a heartbeat), `POST .../members/{member}/heartbeat`, `POST .../members/{member}/commit`,
//! `DELETE .../members/{member}` (leave), `GET /v1/groups`, `GET /v1/groups/{group}`,
//! `POST /v1/groups/{group}/reset`.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use sluice_engine::{
    Engine, GroupDescription, GroupError, JoinRequest, Membership, ResetTo, StartFrom,
    TopicPartition,
};

use utoipa::{IntoParams, ToSchema};

use crate::body;
use crate::error::{parse_json, ApiError, ErrorBody};
use crate::records::{fetch_limits, RecordOut};
use sluice_engine::time_text::parse_rfc3339_ms;

impl From<GroupError> for ApiError {
    fn from(error: GroupError) -> Self {
        Self::new(error.code(), error.to_string())
    }
}

/// `POST /v1/groups/{group}/members` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct JoinBody {
    /// Every member consumes the same topics.
    topics: Vec<String>,
    /// Rejoin as this existing member.
    member_id: Option<String>,
    /// 1,000-300,000; default 30,000.
    #[schema(minimum = 1000, maximum = 300000)]
    session_timeout_ms: Option<u64>,
    /// `earliest` or `latest` (default): where to start without a committed offset.
    from: Option<String>,
}

/// A member's view of its group.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MembershipOut {
    member_id: String,
    generation: u64,
    assignment: Vec<PartitionOut>,
}

/// A partition of a topic.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct PartitionOut {
    topic: String,
    partition: u32,
}

impl From<Membership> for MembershipOut {
    fn from(membership: Membership) -> Self {
        Self {
            member_id: membership.member_id,
            generation: membership.generation,
            assignment: membership.assignment.into_iter().map(partition_out).collect(),
        }
    }
}

fn partition_out(partition: TopicPartition) -> PartitionOut {
    PartitionOut { topic: partition.topic, partition: partition.partition }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, GroupError> + Send + 'static,
) -> Result<T, ApiError> {
    Ok(tokio::task::spawn_blocking(work).await.expect("group operations do not panic")?)
}

/// Joins a group (or rejoins with `member_id`) and returns the member's assignment.
#[utoipa::path(post, path = "/v1/groups/{group}/members", operation_id = "join_group", tag = "groups",
    params(("group" = String, Path, description = "Group name")),
    request_body = JoinBody,
    responses(
        (status = 200, description = "The new member's view", body = MembershipOut),
        (status = 400, description = "1003 invalid group name, 1008 malformed body, bad `from` or session timeout, or a full group", body = ErrorBody),
        (status = 404, description = "1001 unknown topic, 1010 unknown member on rejoin", body = ErrorBody),
        (status = 408, description = "1008 the request took too long", body = ErrorBody),
        (status = 409, description = "1014 the group consumes other topics", body = ErrorBody),
        (status = 413, description = "1008 body over 16 MiB", body = ErrorBody),
    ))]
pub(crate) async fn join(
    State(engine): State<Engine>,
    Path(group): Path<String>,
    request: Result<Bytes, BytesRejection>,
) -> Result<Json<MembershipOut>, ApiError> {
    let request: JoinBody = parse_json(&body(request)?)?;
    let start = match request.from.as_deref() {
        None | Some("latest") => StartFrom::Latest,
        Some("earliest") => StartFrom::Earliest,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "from is '{other}'; allowed are earliest and latest"
            )))
        }
    };
    let join = JoinRequest {
        member_id: request.member_id,
        topics: request.topics,
        session_timeout: request.session_timeout_ms.map(Duration::from_millis),
        start,
    };
    let membership = blocking(move || engine.join_group(&group, join)).await?;
    Ok(Json(membership.into()))
}

/// Keeps a member alive and returns its view.
#[utoipa::path(post, path = "/v1/groups/{group}/members/{member}/heartbeat",
    operation_id = "heartbeat", tag = "groups",
    params(
        ("group" = String, Path, description = "Group name"),
        ("member" = String, Path, description = "Member id, from the join"),
    ),
    responses(
        (status = 200, description = "The member's view", body = MembershipOut),
        (status = 404, description = "1009 unknown group, 1010 unknown member: join again", body = ErrorBody),
    ))]
pub(crate) async fn heartbeat(
    State(engine): State<Engine>,
    Path((group, member)): Path<(String, String)>,
) -> Result<Json<MembershipOut>, ApiError> {
    Ok(Json(engine.heartbeat(&group, &member)?.into()))
}

/// Leaves a group; the member's partitions move at once.
#[utoipa::path(delete, path = "/v1/groups/{group}/members/{member}",
    operation_id = "leave_group", tag = "groups",
    params(
        ("group" = String, Path, description = "Group name"),
        ("member" = String, Path, description = "Member id, from the join"),
    ),
    responses(
        (status = 204, description = "Left"),
        (status = 404, description = "1009 unknown group, 1010 unknown member", body = ErrorBody),
    ))]
pub(crate) async fn leave(
    State(engine): State<Engine>,
    Path((group, member)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    engine.leave_group(&group, &member)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct MemberFetchQuery {
    /// Default 500.
    #[param(minimum = 1, maximum = 10000)]
    max_records: Option<u32>,
    /// Default 1 MiB.
    #[param(minimum = 1, maximum = 67108864)]
    max_bytes: Option<u32>,
    /// How long to wait for a record when none is ready; default 0.
    #[serde(default)]
    #[param(maximum = 30000)]
    wait_ms: u64,
}

/// A record with the partition it came from (also each Server-Sent Event's `data`).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MemberRecordOut {
    topic: String,
    partition: u32,
    #[serde(flatten)]
    record: RecordOut,
}

/// A member's records and its current view.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MemberFetchOut {
    records: Vec<MemberRecordOut>,
    generation: u64,
    assignment: Vec<PartitionOut>,
}

/// Delivers records from the member's partitions from the committed offsets; counts as a
/// heartbeat. Positions advance past what is returned.
#[utoipa::path(get, path = "/v1/groups/{group}/members/{member}/records",
    operation_id = "fetch_group", tag = "groups",
    params(
        ("group" = String, Path, description = "Group name"),
        ("member" = String, Path, description = "Member id, from the join"),
        MemberFetchQuery,
    ),
    responses(
        (status = 200, description = "Records, generation and assignment", body = MemberFetchOut),
        (status = 400, description = "1008 bad query or limit out of range", body = ErrorBody),
        (status = 404, description = "1009 unknown group, 1010 unknown member: join again", body = ErrorBody),
        (status = 408, description = "1008 the request took too long", body = ErrorBody),
        (status = 503, description = "1101 storage failure, 1103 stored data failed its checksum", body = ErrorBody),
    ))]
pub(crate) async fn fetch(
    State(engine): State<Engine>,
    Path((group, member)): Path<(String, String)>,
    query: Result<Query<MemberFetchQuery>, QueryRejection>,
) -> Result<Json<MemberFetchOut>, ApiError> {
    let Query(query) =
        query.map_err(|error| ApiError::invalid(format!("bad query: {}", error.body_text())))?;
    let (max_records, max_bytes, wait) =
        fetch_limits(query.max_records, query.max_bytes, query.wait_ms)?;
    let fetched =
        engine.fetch_group(&group, &member, max_records as usize, max_bytes, wait).await?;
    let records = fetched
        .records
        .into_iter()
        .map(|record| MemberRecordOut {
            topic: record.topic,
            partition: record.partition,
            record: record.record.into(),
        })
        .collect();
    let membership = MembershipOut::from(fetched.membership);
    Ok(Json(MemberFetchOut {
        records,
        generation: membership.generation,
        assignment: membership.assignment,
    }))
}

/// `POST .../members/{member}/commit` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CommitBody {
    /// The generation the member last saw; refused if the group has moved on.
    generation: u64,
    /// What to commit; default the positions the member's fetches reached.
    offsets: Option<Vec<CommitOffset>>,
}

/// A committed position.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CommitOffset {
    topic: String,
    partition: u32,
    /// The next offset to read.
    offset: u64,
}

/// The offsets committed.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CommitOut {
    committed: Vec<CommitOffset>,
}

fn commit_out(offsets: Vec<(TopicPartition, u64)>) -> CommitOut {
    let committed = offsets
        .into_iter()
        .map(|(partition, offset)| CommitOffset {
            topic: partition.topic,
            partition: partition.partition,
            offset,
        })
        .collect();
    CommitOut { committed }
}

/// Commits offsets; without `offsets`, the positions the member's fetches reached. Fsynced
/// before the response.
#[utoipa::path(post, path = "/v1/groups/{group}/members/{member}/commit",
    operation_id = "commit", tag = "groups",
    params(
        ("group" = String, Path, description = "Group name"),
        ("member" = String, Path, description = "Member id, from the join"),
    ),
    request_body = CommitBody,
    responses(
        (status = 200, description = "What was committed", body = CommitOut),
        (status = 400, description = "1008 malformed body", body = ErrorBody),
        (status = 404, description = "1009 unknown group, 1010 unknown member: join again", body = ErrorBody),
        (status = 408, description = "1008 the request took too long", body = ErrorBody),
        (status = 409, description = "1011 stale generation, 1012 the member does not own that partition", body = ErrorBody),
        (status = 413, description = "1008 body over 16 MiB", body = ErrorBody),
        (status = 503, description = "1101 storage failure", body = ErrorBody),
    ))]
pub(crate) async fn commit(
    State(engine): State<Engine>,
    Path((group, member)): Path<(String, String)>,
    request: Result<Bytes, BytesRejection>,
) -> Result<Json<CommitOut>, ApiError> {
    let request: CommitBody = parse_json(&body(request)?)?;
    let offsets = request.offsets.map(|offsets| {
        offsets
            .into_iter()
            .map(|offset| {
                (TopicPartition { topic: offset.topic, partition: offset.partition }, offset.offset)
            })
            .collect()
    });
    let generation = request.generation;
    let committed =
        blocking(move || engine.commit_group(&group, &member, generation, offsets)).await?;
    Ok(Json(commit_out(committed)))
}

/// Lists the group names.
#[utoipa::path(get, path = "/v1/groups", operation_id = "list_groups", tag = "groups",
    responses((status = 200, description = "Every group's name", body = Vec<String>)))]
pub(crate) async fn list(State(engine): State<Engine>) -> Json<Vec<String>> {
    Json(engine.list_groups())
}

/// A group: members, assignment, and per partition the committed offset and lag.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GroupOut {
    name: String,
    generation: u64,
    topics: Vec<String>,
    members: Vec<MemberOut>,
    partitions: Vec<LagOut>,
}

/// A member and its partitions.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MemberOut {
    member_id: String,
    assignment: Vec<PartitionOut>,
    idle_ms: u64,
}

/// The group's position on one partition.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LagOut {
    topic: String,
    partition: u32,
    /// The next offset to read; `null` when nothing is committed.
    committed: Option<u64>,
    high_watermark: u64,
    /// High watermark minus committed (or minus the log start when nothing is committed).
    lag: u64,
}

impl From<GroupDescription> for GroupOut {
    fn from(group: GroupDescription) -> Self {
        Self {
            name: group.name,
            generation: group.generation,
            topics: group.topics,
            members: group
                .members
                .into_iter()
                .map(|member| MemberOut {
                    member_id: member.member_id,
                    assignment: member.assignment.into_iter().map(partition_out).collect(),
                    idle_ms: member.idle_ms,
                })
                .collect(),
            partitions: group
                .partitions
                .into_iter()
                .map(|lag| LagOut {
                    topic: lag.topic,
                    partition: lag.partition,
                    committed: lag.committed,
                    high_watermark: lag.high_watermark,
                    lag: lag.lag,
                })
                .collect(),
        }
    }
}

/// Describes a group.
#[utoipa::path(get, path = "/v1/groups/{group}", operation_id = "describe_group", tag = "groups",
    params(("group" = String, Path, description = "Group name")),
    responses(
        (status = 200, description = "The group", body = GroupOut),
        (status = 404, description = "1009 unknown group", body = ErrorBody),
    ))]
pub(crate) async fn describe(
    State(engine): State<Engine>,
    Path(group): Path<String>,
) -> Result<Json<GroupOut>, ApiError> {
    Ok(Json(engine.describe_group(&group)?.into()))
}

/// `POST /v1/groups/{group}/reset` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ResetBody {
    /// Default every topic the group has committed.
    topics: Option<Vec<String>>,
    /// `"earliest"`, `"latest"`, an offset, or `"@<RFC 3339 time>"`.
    #[schema(schema_with = reset_to_schema)]
    to: serde_json::Value,
}

/// `to` is a string or an offset.
fn reset_to_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type};
    Schema::OneOf(
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(SchemaType::Type(Type::String)))
            .item(
                ObjectBuilder::new().schema_type(SchemaType::Type(Type::Integer)).minimum(Some(0)),
            )
            .build(),
    )
}

fn reset_to(value: &serde_json::Value) -> Result<ResetTo, ApiError> {
    let bad = || {
        ApiError::invalid(format!("to is {value}; allowed are \"earliest\", \"latest\", an offset, or \"@<RFC 3339 time>\""))
    };
    match value {
        serde_json::Value::Number(number) => number.as_u64().map(ResetTo::Offset).ok_or_else(bad),
        serde_json::Value::String(text) => match text.as_str() {
            "earliest" => Ok(ResetTo::Earliest),
            "latest" => Ok(ResetTo::Latest),
            other => {
                if let Some(time) = other.strip_prefix('@') {
                    parse_rfc3339_ms(time).map(ResetTo::Timestamp).map_err(ApiError::invalid)
                } else {
                    other.parse().map(ResetTo::Offset).map_err(|_| bad())
                }
            }
        },
        _ => Err(bad()),
    }
}

/// Moves a group's committed offsets; refused while it has members.
#[utoipa::path(post, path = "/v1/groups/{group}/reset", operation_id = "reset_group", tag = "groups",
    params(("group" = String, Path, description = "Group name")),
    request_body = ResetBody,
    responses(
        (status = 200, description = "The offsets now committed", body = CommitOut),
        (status = 400, description = "1003 invalid group name, 1008 malformed body or `to`", body = ErrorBody),
        (status = 404, description = "1001 unknown topic", body = ErrorBody),
        (status = 408, description = "1008 the request took too long", body = ErrorBody),
        (status = 409, description = "1013 the group has members", body = ErrorBody),
        (status = 413, description = "1008 body over 16 MiB", body = ErrorBody),
        (status = 503, description = "1101 storage failure", body = ErrorBody),
    ))]
pub(crate) async fn reset(
    State(engine): State<Engine>,
    Path(group): Path<String>,
    request: Result<Bytes, BytesRejection>,
) -> Result<Json<CommitOut>, ApiError> {
    let request: ResetBody = parse_json(&body(request)?)?;
    let to = reset_to(&request.to)?;
    let topics = request.topics;
    let committed = blocking(move || engine.reset_group(&group, topics, to)).await?;
    Ok(Json(commit_out(committed)))
}
