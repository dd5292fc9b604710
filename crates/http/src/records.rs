//! `POST /v1/topics/{topic}/records` (produce) and
//! `GET /v1/topics/{topic}/partitions/{p}/records` (fetch).
//!
//! Values are JSON, as in Confluent's REST proxy "json" format: a record's `value` is stored as
//! its JSON text (a JSON string is stored with its quotes). Bytes that are not JSON travel as
//! `value_base64`. Keys are UTF-8 strings (`key`) or bytes (`key_base64`); header values are
//! UTF-8 strings. On fetch, a value that parses as JSON is returned as `value`, anything else
//! as `value_base64`; a key that is UTF-8 as `key`, anything else as `key_base64`.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_engine::{Engine, ProduceRecord, StoredRecord, FETCH_BYTES_MAX, FETCH_WAIT_MAX};

use crate::error::{parse_json, ApiError};
use crate::{body, cloudevents};

/// Most records one fetch returns.
pub const FETCH_RECORDS_MAX: u32 = 10_000;
const FETCH_RECORDS_DEFAULT: u32 = 500;
const FETCH_BYTES_DEFAULT: u32 = 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProduceBody {
    records: Vec<RecordIn>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordIn {
    key: Option<String>,
    key_base64: Option<String>,
    value: Option<Value>,
    value_base64: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    partition: Option<u32>,
    id: Option<String>,
    timestamp: Option<i64>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ProduceResponse {
    offsets: Vec<OffsetOut>,
}

#[derive(Debug, Serialize)]
pub(crate) struct OffsetOut {
    partition: u32,
    offset: u64,
    duplicate: bool,
}

fn decode_base64(index: usize, field: &str, text: &str) -> Result<Vec<u8>, ApiError> {
    BASE64.decode(text).map_err(|error| {
        ApiError::invalid(format!("record {index}: {field} is not valid base64: {error}"))
    })
}

impl RecordIn {
    fn into_record(self, index: usize) -> Result<ProduceRecord, ApiError> {
        let both = |field: &str| {
            ApiError::invalid(format!(
                "record {index} has both {field} and {field}_base64; send one"
            ))
        };
        let key = match (self.key, self.key_base64) {
            (Some(_), Some(_)) => return Err(both("key")),
            (Some(key), None) => Some(key.into_bytes()),
            (None, Some(encoded)) => Some(decode_base64(index, "key_base64", &encoded)?),
            (None, None) => None,
        };
        let value = match (self.value, self.value_base64) {
            (Some(_), Some(_)) => return Err(both("value")),
            (Some(Value::Null), None) | (None, None) => None,
            (Some(value), None) => {
                Some(serde_json::to_vec(&value).expect("a JSON value serialises"))
            }
            (None, Some(encoded)) => Some(decode_base64(index, "value_base64", &encoded)?),
        };
        let headers = self
            .headers
            .into_iter()
            .map(|(name, value)| (name, Some(value.into_bytes())))
            .collect();
        Ok(ProduceRecord {
            key,
            value,
            headers,
            partition: self.partition,
            id: self.id,
            timestamp_ms: self.timestamp,
        })
    }
}

/// `POST /v1/topics/{topic}/records`: Sluice's JSON format, or CloudEvents (see
/// `cloudevents.rs`) by content type or `ce-specversion` header.
pub async fn produce(
    State(engine): State<Engine>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    request: Result<Bytes, BytesRejection>,
) -> Result<Json<ProduceResponse>, ApiError> {
    let body = body(request)?;
    let records = match cloudevents::mode(&headers) {
        Some(mode) => cloudevents::records(mode, &headers, &body)?,
        None => {
            let request: ProduceBody = parse_json(&body)?;
            request
                .records
                .into_iter()
                .enumerate()
                .map(|(index, record)| record.into_record(index))
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    let produced = engine.produce(&topic, records).await?;
    let offsets = produced
        .into_iter()
        .map(|produced| OffsetOut {
            partition: produced.partition,
            offset: produced.offset,
            duplicate: produced.duplicate,
        })
        .collect();
    Ok(Json(ProduceResponse { offsets }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FetchQuery {
    #[serde(default)]
    offset: u64,
    max_records: Option<u32>,
    max_bytes: Option<u32>,
    #[serde(default)]
    wait_ms: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct FetchResponse {
    records: Vec<RecordOut>,
    /// The offset to ask for next.
    next_offset: u64,
    high_watermark: u64,
    log_start_offset: u64,
}

/// A record as returned by a fetch.
#[derive(Debug, Serialize)]
pub(crate) struct RecordOut {
    offset: u64,
    timestamp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
    headers: BTreeMap<String, Value>,
}

impl From<StoredRecord> for RecordOut {
    fn from(record: StoredRecord) -> Self {
        let (key, key_base64) = match record.key {
            None => (None, None),
            Some(bytes) => match String::from_utf8(bytes) {
                Ok(text) => (Some(text), None),
                Err(error) => (None, Some(BASE64.encode(error.into_bytes()))),
            },
        };
        let (value, value_base64) = match record.value {
            None => (Some(Value::Null), None),
            Some(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                Ok(value) => (Some(value), None),
                Err(_) => (None, Some(BASE64.encode(bytes))),
            },
        };
        let headers = record
            .headers
            .into_iter()
            .map(|(name, value)| {
                let value = match value {
                    None => Value::Null,
                    Some(bytes) => Value::String(String::from_utf8_lossy(&bytes).into_owned()),
                };
                (name, value)
            })
            .collect();
        Self {
            offset: record.offset,
            timestamp: record.timestamp_ms,
            key,
            key_base64,
            value,
            value_base64,
            headers,
        }
    }
}

/// Checks a fetch's limits, filling in defaults: (max records, max bytes, wait).
///
/// # Errors
/// A limit out of its range, named with the range.
pub(crate) fn fetch_limits(
    max_records: Option<u32>,
    max_bytes: Option<u32>,
    wait_ms: u64,
) -> Result<(u32, u32, Duration), ApiError> {
    let max_records = max_records.unwrap_or(FETCH_RECORDS_DEFAULT);
    if !(1..=FETCH_RECORDS_MAX).contains(&max_records) {
        return Err(ApiError::invalid(format!(
            "max_records is {max_records}; allowed is 1..={FETCH_RECORDS_MAX}"
        )));
    }
    let max_bytes = max_bytes.unwrap_or(FETCH_BYTES_DEFAULT);
    if !(1..=FETCH_BYTES_MAX).contains(&max_bytes) {
        return Err(ApiError::invalid(format!(
            "max_bytes is {max_bytes}; allowed is 1..={FETCH_BYTES_MAX}"
        )));
    }
    let wait_max = u64::try_from(FETCH_WAIT_MAX.as_millis()).expect("30 s fits");
    if wait_ms > wait_max {
        return Err(ApiError::invalid(format!("wait_ms is {wait_ms}; allowed is 0..={wait_max}")));
    }
    Ok((max_records, max_bytes, Duration::from_millis(wait_ms)))
}

/// `GET /v1/topics/{topic}/partitions/{partition}/records`.
pub async fn fetch(
    State(engine): State<Engine>,
    Path((topic, partition)): Path<(String, u32)>,
    query: Result<Query<FetchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<FetchResponse>, ApiError> {
    let Query(query) =
        query.map_err(|error| ApiError::invalid(format!("bad query: {}", error.body_text())))?;
    let (max_records, max_bytes, wait) =
        fetch_limits(query.max_records, query.max_bytes, query.wait_ms)?;
    let fetched = engine.fetch(&topic, partition, query.offset, max_bytes, wait).await?;
    let records = fetched
        .records_from(query.offset)
        .map_err(|error| ApiError::new(sluice_engine::ErrorCode::Corrupt, error.to_string()))?;
    let records: Vec<RecordOut> =
        records.into_iter().take(max_records as usize).map(RecordOut::from).collect();
    let next_offset = records.last().map_or(query.offset, |record| record.offset + 1);
    Ok(Json(FetchResponse {
        records,
        next_offset,
        high_watermark: fetched.high_watermark,
        log_start_offset: fetched.log_start_offset,
    }))
}
