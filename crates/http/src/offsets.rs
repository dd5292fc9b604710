//! `GET /v1/topics/{topic}/partitions/{partition}/offset?at=<RFC 3339 time>`: the first offset
//! whose record is at or after a time, so a reader can start there (Kafka's ListOffsets by
//! timestamp).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use sluice_engine::Engine;
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorBody};
use sluice_engine::time_text::parse_rfc3339_ms;

/// Query of the offset-for-time lookup.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct OffsetQuery {
    /// An RFC 3339 time, e.g. `2026-11-23T18:30:00Z`.
    at: String,
}

/// Where a time falls in a partition.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OffsetResponse {
    /// The first offset whose record's timestamp is at or after `at`; the high watermark if no
    /// record is that recent (reading from there waits for new records).
    offset: u64,
    /// Whether a stored record is at or after `at`.
    found: bool,
    /// The partition's high watermark.
    high_watermark: u64,
}

/// The first offset at or after a time.
#[utoipa::path(get, path = "/v1/topics/{topic}/partitions/{partition}/offset",
    operation_id = "offset_for_time", tag = "records",
    params(
        ("topic" = String, Path, description = "Topic name"),
        ("partition" = u32, Path, description = "Partition number"),
        OffsetQuery,
    ),
    responses(
        (status = 200, description = "The offset", body = OffsetResponse),
        (status = 400, description = "1008 `at` is not an RFC 3339 time", body = ErrorBody),
        (status = 404, description = "1001 unknown topic, 1005 unknown partition", body = ErrorBody),
        (status = 503, description = "1101 storage failure, 1103 stored data failed its checksum", body = ErrorBody),
    ))]
pub(crate) async fn offset_for_time(
    State(engine): State<Engine>,
    Path((topic, partition)): Path<(String, u32)>,
    query: Result<Query<OffsetQuery>, QueryRejection>,
) -> Result<Json<OffsetResponse>, ApiError> {
    let Query(query) =
        query.map_err(|error| ApiError::invalid(format!("bad query: {}", error.body_text())))?;
    let timestamp = parse_rfc3339_ms(&query.at).map_err(ApiError::invalid)?;
    let high_watermark = engine
        .describe_topic(&topic)?
        .partitions
        .get(partition as usize)
        .map_or(0, |p| p.high_watermark);
    let found = tokio::task::spawn_blocking(move || {
        engine.offset_for_timestamp(&topic, partition, timestamp)
    })
    .await
    .expect("the lookup does not panic")?;
    Ok(Json(OffsetResponse {
        offset: found.unwrap_or(high_watermark),
        found: found.is_some(),
        high_watermark,
    }))
}
