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

use crate::body;
use crate::error::{parse_json, ApiError};
use crate::records::{fetch_limits, RecordOut};
use crate::time_text::parse_rfc3339_ms;

impl From<GroupError> for ApiError {
    fn from(error: GroupError) -> Self {
        Self::new(error.code(), error.to_string())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinBody {
    topics: Vec<String>,
    member_id: Option<String>,
    session_timeout_ms: Option<u64>,
    /// `earliest` or `latest` (default): where to start without a committed offset.
    from: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct MembershipOut {
    member_id: String,
    generation: u64,
    assignment: Vec<PartitionOut>,
}

#[derive(Debug, Serialize, Deserialize)]
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

/// `POST /v1/groups/{group}/members`.
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

/// `POST /v1/groups/{group}/members/{member}/heartbeat`.
pub(crate) async fn heartbeat(
    State(engine): State<Engine>,
    Path((group, member)): Path<(String, String)>,
) -> Result<Json<MembershipOut>, ApiError> {
    Ok(Json(engine.heartbeat(&group, &member)?.into()))
}

/// `DELETE /v1/groups/{group}/members/{member}`.
pub(crate) async fn leave(
    State(engine): State<Engine>,
    Path((group, member)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    engine.leave_group(&group, &member)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MemberFetchQuery {
    max_records: Option<u32>,
    max_bytes: Option<u32>,
    #[serde(default)]
    wait_ms: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct MemberRecordOut {
    topic: String,
    partition: u32,
    #[serde(flatten)]
    record: RecordOut,
}

#[derive(Debug, Serialize)]
pub(crate) struct MemberFetchOut {
    records: Vec<MemberRecordOut>,
    generation: u64,
    assignment: Vec<PartitionOut>,
}

/// `GET /v1/groups/{group}/members/{member}/records`.
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommitBody {
    generation: u64,
    offsets: Option<Vec<CommitOffset>>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CommitOffset {
    topic: String,
    partition: u32,
    /// The next offset to read.
    offset: u64,
}

#[derive(Debug, Serialize)]
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

/// `POST /v1/groups/{group}/members/{member}/commit`. Without `offsets`, commits the positions
/// the member's fetches reached.
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

/// `GET /v1/groups`.
pub(crate) async fn list(State(engine): State<Engine>) -> Json<Vec<String>> {
    Json(engine.list_groups())
}

#[derive(Debug, Serialize)]
pub(crate) struct GroupOut {
    name: String,
    generation: u64,
    topics: Vec<String>,
    members: Vec<MemberOut>,
    partitions: Vec<LagOut>,
}

#[derive(Debug, Serialize)]
pub(crate) struct MemberOut {
    member_id: String,
    assignment: Vec<PartitionOut>,
    idle_ms: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct LagOut {
    topic: String,
    partition: u32,
    committed: Option<u64>,
    high_watermark: u64,
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

/// `GET /v1/groups/{group}`.
pub(crate) async fn describe(
    State(engine): State<Engine>,
    Path(group): Path<String>,
) -> Result<Json<GroupOut>, ApiError> {
    Ok(Json(engine.describe_group(&group)?.into()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetBody {
    topics: Option<Vec<String>>,
    /// `earliest`, `latest`, an offset, or `@<RFC 3339 time>`.
    to: serde_json::Value,
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

/// `POST /v1/groups/{group}/reset`.
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
