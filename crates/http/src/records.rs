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
use serde_json::value::RawValue;
use sluice_engine::{Engine, ProduceRecord, StoredRecord, FETCH_BYTES_MAX, FETCH_WAIT_MAX};
use utoipa::{IntoParams, ToSchema};

use crate::error::{parse_json, ApiError, ErrorBody};
use crate::{body, cloudevents};

/// Most records one fetch returns.
pub const FETCH_RECORDS_MAX: u32 = 10_000;
const FETCH_RECORDS_DEFAULT: u32 = 500;
const FETCH_BYTES_DEFAULT: u32 = 1024 * 1024;

// `#[param(maximum = ...)]` takes only literals; these keep the documented limits true.
const _: () = assert!(FETCH_RECORDS_MAX == 10_000, "update the max_records params");
const _: () = assert!(FETCH_BYTES_MAX == 64 * 1024 * 1024, "update the max_bytes params");
const _: () = assert!(FETCH_WAIT_MAX.as_millis() == 30_000, "update the wait_ms params");

/// `POST /v1/topics/{topic}/records` body in Sluice's own format.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ProduceBody {
    /// At most 10,000.
    records: Vec<RecordIn>,
}

/// A record to append. Send at most one of `key`/`key_base64` and of `value`/`value_base64`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RecordIn {
    /// Stored as its UTF-8 bytes; placement hashes it (murmur2, as Kafka).
    key: Option<String>,
    key_base64: Option<String>,
    /// Any JSON, stored as its JSON text as sent (checked, not rewritten); absent or `null`
    /// is a null value.
    #[schema(value_type = Option<Value>)]
    value: Option<Box<RawValue>>,
    /// Raw bytes.
    value_base64: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Overrides placement by key.
    partition: Option<u32>,
    /// Deduplicates within the topic's window; stored as the `ce_id` header.
    id: Option<String>,
    /// Milliseconds since the epoch; default the time of the request.
    timestamp: Option<i64>,
}

/// Where each record of a produce request landed, in request order.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ProduceResponse {
    offsets: Vec<OffsetOut>,
}

/// Where one record landed.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OffsetOut {
    partition: u32,
    offset: u64,
    /// True when the id was already in the dedup window: this is where the first one landed.
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
            (None, None) => None,
            (Some(value), None) => Some(json_bytes(value)),
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

/// Appends records: Sluice's JSON format, or CloudEvents 1.0 (see `cloudevents.rs`) chosen by
/// content type or a `ce-specversion` header. Under `fsync` durability the response waits for
/// fdatasync.
#[utoipa::path(post, path = "/v1/topics/{topic}/records", operation_id = "produce", tag = "records",
    params(
        ("topic" = String, Path, description = "Topic name"),
        ("ce-specversion" = Option<String>, Header, description = "`1.0` selects CloudEvents \
            binary mode: `ce-id`, `ce-source`, `ce-type` and any other `ce-*` headers are the \
            attributes, the body is the data"),
    ),
    request_body(
        description = "Sluice's format as `application/json`; or CloudEvents 1.0: one event as \
            `application/cloudevents+json`, an array as `application/cloudevents-batch+json`, or \
            binary mode (`ce-specversion`, `ce-id`, `ce-source`, `ce-type` headers, the body is \
            the data, any content type). Each event becomes one record (Kafka binding).",
        content(
            (ProduceBody = "application/json"),
            (Object = "application/cloudevents+json"),
            (Vec<Object> = "application/cloudevents-batch+json"),
        )
    ),
    responses(
        (status = 200, description = "Where each record landed", body = ProduceResponse),
        (status = 400, description = "1008 malformed body or record", body = ErrorBody),
        (status = 404, description = "1001 unknown topic, 1005 unknown partition", body = ErrorBody),
        (status = 408, description = "1008 the request took too long", body = ErrorBody),
        (status = 413, description = "1006 record over `record_bytes_max`, 1008 body over 16 MiB", body = ErrorBody),
        (status = 503, description = "1101 storage failure, 1104 shutting down", body = ErrorBody),
        (status = 507, description = "1102 disk full; nothing was written", body = ErrorBody),
    ))]
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

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct FetchQuery {
    /// The first offset to return; default 0.
    #[serde(default)]
    offset: u64,
    /// Default 500.
    #[param(minimum = 1, maximum = 10000)]
    max_records: Option<u32>,
    /// Default 1 MiB.
    #[param(minimum = 1, maximum = 67108864)]
    max_bytes: Option<u32>,
    /// How long to wait at the end of the partition for a record; default 0.
    #[serde(default)]
    #[param(maximum = 30000)]
    wait_ms: u64,
}

/// A page of one partition's records.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct FetchResponse {
    records: Vec<RecordOut>,
    /// The offset to ask for next.
    next_offset: u64,
    high_watermark: u64,
    log_start_offset: u64,
}

/// A record as returned by a fetch: `key` if UTF-8 else `key_base64`, `value` if JSON else
/// `value_base64`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RecordOut {
    offset: u64,
    timestamp: i64,
    #[serde(flatten)]
    payload: PayloadOut,
}

/// A record's key, value and headers as every endpoint returns them: `key` if UTF-8 else
/// `key_base64`, `value` if JSON else `value_base64`, header values as UTF-8 text (lossy) or
/// `null`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PayloadOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_base64: Option<String>,
    /// The stored JSON as it was stored: checked, not parsed into a tree and written again.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    value: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
    /// Header values as UTF-8 text, or `null`.
    headers: BTreeMap<String, Option<String>>,
}

/// The bytes of a JSON value as the request held it. `null` arrives as `None` (serde maps it
/// to an absent `Option`), so every value here is stored as sent.
pub(crate) fn json_bytes(value: Box<RawValue>) -> Vec<u8> {
    Box::<str>::from(value).into_boxed_bytes().into_vec()
}

/// A stored payload for an answer: its JSON text verbatim if it is JSON (checked, not parsed
/// into a tree and written again), else its bytes in base64. Line breaks in JSON text can only
/// be whitespace between tokens (strings cannot hold them raw), so they are answered as spaces:
/// an answer stays one line, an SSE `data:` field or a line of NDJSON whole, and nothing else
/// about the value changes.
pub(crate) fn json_or_base64(bytes: &[u8]) -> (Option<Box<RawValue>>, Option<String>) {
    // Searched for as bytes (`memchr`, a word at a time), not as `char`s: the `char` search
    // walked every value byte by byte and was most of this function's time when leases
    // answered 1 KiB values. The raw value's text excludes whitespace around it, so a trailing
    // line break alone does not count. The value is checked in place and copied once.
    let has_line_breaks =
        |text: &str| text.as_bytes().contains(&b'\n') || text.as_bytes().contains(&b'\r');
    match serde_json::from_slice::<&RawValue>(bytes) {
        Ok(value) if has_line_breaks(value.get()) => {
            match RawValue::from_string(value.get().replace(['\n', '\r'], " ")) {
                Ok(one_line) => (Some(one_line), None),
                Err(_) => (None, Some(BASE64.encode(bytes))),
            }
        }
        Ok(value) => (Some(value.to_owned()), None),
        Err(_) => (None, Some(BASE64.encode(bytes))),
    }
}

impl PayloadOut {
    /// Encodes a record's key, value and headers; the record stays where it is (a queue's
    /// window shares it), only the answer's text is made.
    pub(crate) fn of(record: &StoredRecord) -> Self {
        let (key, key_base64) = match record.key.as_deref() {
            None => (None, None),
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => (Some(text.to_owned()), None),
                Err(_) => (None, Some(BASE64.encode(bytes))),
            },
        };
        let (value, value_base64) = match record.value.as_deref() {
            None => (RawValue::from_string("null".to_owned()).ok(), None),
            Some(bytes) => json_or_base64(bytes),
        };
        let headers = record
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.clone(),
                    value.as_deref().map(|bytes| String::from_utf8_lossy(bytes).into_owned()),
                )
            })
            .collect();
        Self { key, key_base64, value, value_base64, headers }
    }
}

impl From<StoredRecord> for RecordOut {
    fn from(record: StoredRecord) -> Self {
        Self {
            offset: record.offset,
            timestamp: record.timestamp_ms,
            payload: PayloadOut::of(&record),
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

/// Reads one partition's records from an offset, waiting up to `wait_ms` at its end.
#[utoipa::path(get, path = "/v1/topics/{topic}/partitions/{partition}/records",
    operation_id = "fetch", tag = "records",
    params(
        ("topic" = String, Path, description = "Topic name"),
        ("partition" = u32, Path, description = "Partition number"),
        FetchQuery,
    ),
    responses(
        (status = 200, description = "Records from `offset`", body = FetchResponse),
        (status = 400, description = "1008 bad query or limit out of range", body = ErrorBody),
        (status = 404, description = "1001 unknown topic, 1005 unknown partition", body = ErrorBody),
        (status = 408, description = "1008 the request took too long", body = ErrorBody),
        (status = 416, description = "1007 offset before the log start or past the high watermark", body = ErrorBody),
        (status = 503, description = "1101 storage failure, 1103 stored data failed its checksum", body = ErrorBody),
    ))]
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
