//! CloudEvents 1.0 on `POST /v1/topics/{topic}/records`: structured mode
//! (`application/cloudevents+json`, one event), batch mode (`application/cloudevents-batch+json`,
//! an array), and binary mode (`ce-*` HTTP headers, the body is the data).
//!
//! Each event becomes one record as in CloudEvents' Kafka protocol binding (binary content mode):
//! every attribute becomes a `ce_<name>` header, `datacontenttype` becomes `content-type`, the
//! data is the value, and the `partitionkey` extension is the key. The event `id` is the record's
//! id, so a re-sent event is deduplicated within the topic's window.

use axum::http::HeaderMap;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::Value;
use sluice_engine::ProduceRecord;

use crate::error::ApiError;

/// Content type of one structured event.
pub const STRUCTURED: &str = "application/cloudevents+json";
/// Content type of a batch of structured events.
pub const BATCH: &str = "application/cloudevents-batch+json";
const REQUIRED: [&str; 4] = ["specversion", "id", "source", "type"];
/// Most attributes (including extensions) one event may carry.
pub const ATTRIBUTES_MAX: usize = 64;

/// Which CloudEvents mode a request uses, from its headers; `None` for Sluice's own format.
pub fn mode(headers: &HeaderMap) -> Option<&'static str> {
    let content_type =
        headers.get("content-type").and_then(|value| value.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case(STRUCTURED) {
        Some(STRUCTURED)
    } else if essence.eq_ignore_ascii_case(BATCH) {
        Some(BATCH)
    } else if headers.contains_key("ce-specversion") {
        Some("binary")
    } else {
        None
    }
}

/// Parses a CloudEvents request body (in the mode [`mode`] found) into records.
///
/// # Errors
/// Malformed JSON, a missing required attribute, an unsupported spec version, bad base64.
pub fn records(
    mode: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<ProduceRecord>, ApiError> {
    match mode {
        STRUCTURED => Ok(vec![structured(0, parse(body)?)?]),
        BATCH => match parse(body)? {
            Value::Array(events) => events
                .into_iter()
                .enumerate()
                .map(|(index, event)| structured(index, event))
                .collect(),
            _ => Err(ApiError::invalid("a CloudEvents batch must be a JSON array of events")),
        },
        _ => Ok(vec![binary(headers, body)?]),
    }
}

fn parse(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|error| ApiError::invalid(format!("malformed CloudEvents JSON: {error}")))
}

fn structured(index: usize, event: Value) -> Result<ProduceRecord, ApiError> {
    let Value::Object(mut event) = event else {
        return Err(ApiError::invalid(format!("event {index} is not a JSON object")));
    };
    let data = event.remove("data");
    let data_base64 = event.remove("data_base64");
    let value = match (data, data_base64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(format!("event {index} has both data and data_base64")))
        }
        (Some(Value::Null), None) | (None, None) => None,
        (Some(data), None) => Some(serde_json::to_vec(&data).expect("JSON serialises")),
        (None, Some(Value::String(encoded))) => {
            Some(BASE64.decode(encoded).map_err(|error| {
                ApiError::invalid(format!("event {index}: data_base64: {error}"))
            })?)
        }
        (None, Some(_)) => {
            return Err(ApiError::invalid(format!("event {index}: data_base64 must be a string")))
        }
    };
    let attributes = event
        .into_iter()
        .map(|(name, value)| match value {
            Value::String(text) => Ok((name, text)),
            Value::Null => Ok((name, String::new())),
            other => Ok((name, other.to_string())),
        })
        .collect::<Result<Vec<(String, String)>, ApiError>>()?;
    to_record(index, attributes, value)
}

fn binary(headers: &HeaderMap, body: &[u8]) -> Result<ProduceRecord, ApiError> {
    let mut attributes = Vec::new();
    for (name, value) in headers {
        if let Some(attribute) = name.as_str().strip_prefix("ce-") {
            let text = value
                .to_str()
                .map_err(|_| ApiError::invalid(format!("header {name} is not visible ASCII")))?;
            attributes.push((attribute.to_owned(), text.to_owned()));
        }
    }
    if let Some(content_type) = headers.get("content-type").and_then(|value| value.to_str().ok()) {
        attributes.push(("datacontenttype".to_owned(), content_type.to_owned()));
    }
    let value = (!body.is_empty()).then(|| body.to_vec());
    to_record(0, attributes, value)
}

fn to_record(
    index: usize,
    attributes: Vec<(String, String)>,
    value: Option<Vec<u8>>,
) -> Result<ProduceRecord, ApiError> {
    if attributes.len() > ATTRIBUTES_MAX {
        return Err(ApiError::invalid(format!(
            "event {index} has {} attributes; at most {ATTRIBUTES_MAX} are accepted",
            attributes.len()
        )));
    }
    let find = |name: &str| {
        attributes.iter().find(|(attribute, _)| attribute == name).map(|(_, value)| value.clone())
    };
    for name in REQUIRED {
        if find(name).is_none_or(|value| value.is_empty()) {
            return Err(ApiError::invalid(format!("event {index} lacks the required attribute '{name}' (required: specversion, id, source, type)")));
        }
    }
    if find("specversion").as_deref() != Some("1.0") {
        return Err(ApiError::invalid(format!("event {index}: specversion must be \"1.0\"")));
    }
    let key = find("partitionkey").map(String::into_bytes);
    let id = find("id");
    let headers = attributes
        .into_iter()
        .filter(|(name, _)| name != "partitionkey")
        .map(|(name, value)| {
            let header = if name == "datacontenttype" {
                "content-type".to_owned()
            } else {
                format!("ce_{name}")
            };
            (header, Some(value.into_bytes()))
        })
        .collect();
    Ok(ProduceRecord { key, value, headers, id, ..ProduceRecord::default() })
}
