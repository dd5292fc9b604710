//! `GET/POST /v1/topics`, `GET/DELETE /v1/topics/{topic}`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use sluice_engine::{DurabilityConfig, Engine, TopicConfig, TopicDescription};
use utoipa::ToSchema;

use crate::body;
use crate::error::{parse_json, ApiError, ErrorBody};

/// `POST /v1/topics` body. Unset settings take the defaults of `docs/http-api.md`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateTopic {
    /// 1-249 bytes of ASCII letters, digits, `.`, `_`, `-`; not `.` or `..`; not starting `__`.
    name: String,
    /// Default 1.
    #[serde(default = "one")]
    partitions: u32,
    /// `fsync` (the default: acknowledged after fdatasync), `interval:MS` or `none`.
    durability: Option<String>,
    /// Default 7 days; `null` keeps records forever (what an event-store topic wants).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>, nullable)]
    retention_age_ms: Option<Option<u64>>,
    /// Default none.
    retention_bytes: Option<u64>,
    #[serde(default)]
    compact: bool,
    /// Event topics: maintenance deletes a soft-deleted stream's events for good. Not with
    /// `compact`. Default false.
    #[serde(default)]
    hard_delete_streams: bool,
    /// Default 1 MiB.
    record_bytes_max: Option<u32>,
    /// Default 2 minutes.
    dedup_window_ms: Option<u64>,
    /// Segment size in bytes (Kafka's `segment.bytes`); default 1 GiB.
    segment_bytes: Option<u64>,
}

fn one() -> u32 {
    1
}

/// Tells a field given as `null` (`Some(None)`) from one left out (`None`, by `default`).
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<u64>>, D::Error> {
    Option::<u64>::deserialize(deserializer).map(Some)
}

/// A topic as returned by the API.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TopicBody {
    name: String,
    partitions: u32,
    durability: String,
    retention_age_ms: Option<u64>,
    retention_bytes: Option<u64>,
    compact: bool,
    hard_delete_streams: bool,
    record_bytes_max: u32,
    dedup_window_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    segment_bytes: Option<u64>,
    partition_offsets: Vec<PartitionBody>,
}

/// One partition's bounds and size.
#[derive(Debug, Serialize, ToSchema)]
struct PartitionBody {
    partition: u32,
    log_start_offset: u64,
    high_watermark: u64,
    size_bytes: u64,
}

fn durability_text(durability: DurabilityConfig) -> String {
    match durability {
        DurabilityConfig::Fsync => "fsync".to_owned(),
        DurabilityConfig::Interval { interval_ms } => format!("interval:{interval_ms}"),
        DurabilityConfig::None => "none".to_owned(),
    }
}

impl From<TopicDescription> for TopicBody {
    fn from(topic: TopicDescription) -> Self {
        let config = topic.config;
        Self {
            name: topic.name,
            partitions: config.partitions,
            durability: durability_text(config.durability),
            retention_age_ms: config.retention_age_ms,
            retention_bytes: config.retention_bytes,
            compact: config.compact,
            hard_delete_streams: config.hard_delete_streams,
            record_bytes_max: config.record_bytes_max,
            dedup_window_ms: config.dedup_window_ms,
            segment_bytes: config.segment_bytes,
            partition_offsets: topic
                .partitions
                .into_iter()
                .map(|partition| PartitionBody {
                    partition: partition.partition,
                    log_start_offset: partition.log_start_offset,
                    high_watermark: partition.high_watermark,
                    size_bytes: partition.size_bytes,
                })
                .collect(),
        }
    }
}

/// Lists the topics.
#[utoipa::path(get, path = "/v1/topics", operation_id = "list_topics", tag = "topics",
    responses((status = 200, description = "Every topic", body = Vec<TopicBody>)))]
pub async fn list(State(engine): State<Engine>) -> Json<Vec<TopicBody>> {
    Json(engine.list_topics().into_iter().map(TopicBody::from).collect())
}

/// Creates a topic.
#[utoipa::path(post, path = "/v1/topics", operation_id = "create_topic", tag = "topics",
    request_body = CreateTopic,
    responses(
        (status = 201, description = "Created", body = TopicBody),
        (status = 400, description = "1003 invalid name, 1004 invalid setting, 1008 malformed body", body = ErrorBody),
        (status = 408, description = "1008 the request took too long", body = ErrorBody),
        (status = 409, description = "1002 the topic exists", body = ErrorBody),
        (status = 413, description = "1008 body over 16 MiB", body = ErrorBody),
        (status = 503, description = "1101 storage failure", body = ErrorBody),
    ))]
pub async fn create(
    State(engine): State<Engine>,
    request: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<TopicBody>), ApiError> {
    let request: CreateTopic = parse_json(&body(request)?)?;
    let defaults = TopicConfig::default();
    let durability = match request.durability.as_deref() {
        Some(text) => DurabilityConfig::parse(text).map_err(ApiError::invalid)?,
        None => defaults.durability,
    };
    let config = TopicConfig {
        partitions: request.partitions,
        durability,
        retention_age_ms: request.retention_age_ms.unwrap_or(defaults.retention_age_ms),
        retention_bytes: request.retention_bytes,
        compact: request.compact,
        hard_delete_streams: request.hard_delete_streams,
        record_bytes_max: request.record_bytes_max.unwrap_or(defaults.record_bytes_max),
        dedup_window_ms: request.dedup_window_ms.unwrap_or(defaults.dedup_window_ms),
        segment_bytes: request.segment_bytes,
    };
    let name = request.name;
    let created = tokio::task::spawn_blocking(move || engine.create_topic(&name, config))
        .await
        .expect("topic creation does not panic")?;
    Ok((StatusCode::CREATED, Json(created.into())))
}

/// Describes a topic, with each partition's offsets and size.
#[utoipa::path(get, path = "/v1/topics/{topic}", operation_id = "describe_topic", tag = "topics",
    params(("topic" = String, Path, description = "Topic name")),
    responses(
        (status = 200, description = "The topic", body = TopicBody),
        (status = 404, description = "1001 unknown topic", body = ErrorBody),
    ))]
pub async fn describe(
    State(engine): State<Engine>,
    Path(topic): Path<String>,
) -> Result<Json<TopicBody>, ApiError> {
    Ok(Json(engine.describe_topic(&topic)?.into()))
}

/// Deletes a topic and its records.
#[utoipa::path(delete, path = "/v1/topics/{topic}", operation_id = "delete_topic", tag = "topics",
    params(("topic" = String, Path, description = "Topic name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "1001 unknown topic", body = ErrorBody),
        (status = 503, description = "1101 storage failure", body = ErrorBody),
    ))]
pub async fn delete(
    State(engine): State<Engine>,
    Path(topic): Path<String>,
) -> Result<StatusCode, ApiError> {
    tokio::task::spawn_blocking(move || engine.delete_topic(&topic))
        .await
        .expect("deletion does not panic")?;
    Ok(StatusCode::NO_CONTENT)
}
