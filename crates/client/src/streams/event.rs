//! What is appended and what is read back: [`ExpectedVersion`], [`EventData`],
//! [`StreamWrite`], [`Appended`], [`RecordedEvent`], and the typed [`VersionConflict`].

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{codec, WRONG_EXPECTED_VERSION};
use crate::http::ClientError;

/// What an append (or a delete) expects of a stream's version before it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ExpectedVersion {
    /// No check (but a soft-deleted stream refuses it: append with `NoStream` to reuse it).
    #[default]
    Any,
    /// The stream has no events: never written, or soft-deleted.
    NoStream,
    /// The stream has at least one event and is not deleted.
    StreamExists,
    /// The stream's last event has exactly this version.
    Exact(u64),
}

impl ExpectedVersion {
    /// The expected version of a stream last seen at `version` (`None`: no events).
    pub fn from_version(version: Option<u64>) -> Self {
        version.map_or(Self::NoStream, Self::Exact)
    }

    pub(crate) fn to_json(self) -> Value {
        match self {
            Self::Exact(version) => json!(version),
            other => json!(other.to_string()),
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => formatter.write_str("any"),
            Self::NoStream => formatter.write_str("no_stream"),
            Self::StreamExists => formatter.write_str("stream_exists"),
            Self::Exact(version) => write!(formatter, "{version}"),
        }
    }
}

impl FromStr for ExpectedVersion {
    type Err = String;

    /// `any`, `no_stream`, `stream_exists` or a version, as the server writes them.
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "any" => Ok(Self::Any),
            "no_stream" => Ok(Self::NoStream),
            "stream_exists" => Ok(Self::StreamExists),
            number => number
                .parse()
                .map(Self::Exact)
                .map_err(|_| format!("'{text}' is not any, no_stream, stream_exists or a version")),
        }
    }
}

/// A refused append or delete: the stream was not at the expected version. Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionConflict {
    /// The stream whose check failed (in a multi-stream append, maybe not the first one).
    pub stream: String,
    /// What the request expected.
    pub expected: ExpectedVersion,
    /// The stream's version (`None`: no events).
    pub actual: Option<u64>,
    /// The version it was soft-deleted at, if it is deleted.
    pub deleted_at: Option<u64>,
    /// The server's message.
    pub message: String,
}

impl VersionConflict {
    /// From the `details` of a 1021 answer; `None` if they are not as documented.
    pub(crate) fn from_details(details: &Value, message: &str) -> Option<Self> {
        let expected = details.get("expected_version")?;
        let expected = match expected {
            Value::Number(number) => ExpectedVersion::Exact(number.as_u64()?),
            Value::String(text) => text.parse().ok()?,
            _ => return None,
        };
        let actual = details.get("actual_version")?.as_i64()?;
        Some(Self {
            stream: details.get("stream")?.as_str()?.to_owned(),
            expected,
            actual: u64::try_from(actual).ok(),
            deleted_at: details.get("deleted_at").and_then(Value::as_u64),
            message: message.to_owned(),
        })
    }
}

impl fmt::Display for VersionConflict {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{} (code {WRONG_EXPECTED_VERSION}, HTTP 409)", self.message)
    }
}

impl std::error::Error for VersionConflict {}

/// The payload of an event to append.
#[derive(Debug, Clone, PartialEq)]
enum Payload {
    Json(Value),
    Bytes(Vec<u8>),
}

/// An event to append: its type, payload, id and optional CloudEvents attributes.
///
/// The id is made when the event is (a UUID v4), so appending the same `EventData` again (after
/// a lost response, say) at the same expected version is recognised by the server as the same
/// append.
#[derive(Debug, Clone, PartialEq)]
pub struct EventData {
    event_type: String,
    payload: Payload,
    id: String,
    content_type: Option<String>,
    source: Option<String>,
    headers: BTreeMap<String, String>,
}

impl EventData {
    /// An event of type `event_type` (CloudEvents `type`, 1 to 256 bytes) whose payload is
    /// `data` as JSON.
    ///
    /// # Errors
    /// `data` does not serialise to JSON.
    pub fn json<T: Serialize + ?Sized>(
        event_type: impl Into<String>,
        data: &T,
    ) -> Result<Self, ClientError> {
        Ok(Self::new(event_type.into(), Payload::Json(serde_json::to_value(data)?)))
    }

    /// An event whose payload is `data` as it is (sent as base64). Its content type is
    /// `application/octet-stream` unless set with [`EventData::with_content_type`].
    pub fn bytes(event_type: impl Into<String>, data: impl Into<Vec<u8>>) -> Self {
        Self::new(event_type.into(), Payload::Bytes(data.into()))
            .with_content_type("application/octet-stream")
    }

    fn new(event_type: String, payload: Payload) -> Self {
        Self {
            event_type,
            payload,
            id: codec::new_event_id(),
            content_type: None,
            source: None,
            headers: BTreeMap::new(),
        }
    }

    /// Replaces the generated id (CloudEvents `id`, 1 to 256 bytes), e.g. with one derived from
    /// the command that caused the event.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Sets the content type (default `application/json`; `application/octet-stream` for
    /// [`EventData::bytes`]).
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// Sets CloudEvents `source` (default `/streams/<topic>`).
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Adds a header (`traceparent`, a correlation id, ...). Names starting `ce_` or `sluice-`
    /// and `content-type` are reserved: the server refuses the append.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Its type.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn to_json(&self) -> Value {
        let mut event = json!({"type": self.event_type, "id": self.id});
        match &self.payload {
            Payload::Json(value) => event["data"] = value.clone(),
            Payload::Bytes(bytes) => event["data_base64"] = json!(BASE64.encode(bytes)),
        }
        if let Some(content_type) = &self.content_type {
            event["content_type"] = json!(content_type);
        }
        if let Some(source) = &self.source {
            event["source"] = json!(source);
        }
        if !self.headers.is_empty() {
            event["headers"] = json!(self.headers);
        }
        event
    }
}

/// The events to append to one stream of a multi-stream append, and its expected version. A
/// write without events is a condition only.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamWrite {
    /// The stream.
    pub stream: String,
    /// What its version must be.
    pub expected: ExpectedVersion,
    /// The events to append to it (may be empty).
    pub events: Vec<EventData>,
}

impl StreamWrite {
    /// A write of `events` to `stream` if it is at `expected`.
    pub fn new(
        stream: impl Into<String>,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Self {
        Self { stream: stream.into(), expected, events }
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "stream": self.stream,
            "expected_version": self.expected.to_json(),
            "events": self.events.iter().map(EventData::to_json).collect::<Vec<_>>(),
        })
    }
}

/// What an append did to one stream.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Appended {
    /// The stream.
    pub stream: String,
    /// Its version after the append (`None`: a condition-only write on a stream without events).
    #[serde(deserialize_with = "version_from_i64")]
    pub version: Option<u64>,
    /// The stream's partition.
    pub partition: u32,
    /// The offsets of the events appended, in order.
    pub offsets: Vec<u64>,
}

/// A stream version on the wire: -1 for "no events".
fn version_from_i64<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    let version = i64::deserialize(deserializer)?;
    Ok(u64::try_from(version).ok())
}

/// `POST /v1/streams/{topic}/{stream}` answer.
#[derive(Deserialize)]
pub(crate) struct AppendJson {
    #[serde(flatten)]
    pub(crate) main: Appended,
    #[serde(default)]
    pub(crate) other_streams: Vec<Appended>,
}

/// An event read back (from a read or a subscription).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// Its stream.
    pub stream: String,
    /// Its version in the stream.
    pub version: u64,
    /// Its type (CloudEvents `type`).
    pub event_type: String,
    /// Its id (CloudEvents `id`).
    pub id: String,
    /// Its partition.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: u64,
    /// When it was appended (ms since the epoch).
    pub timestamp_ms: i64,
    /// Its payload. A JSON payload comes back as compact JSON text (equal as JSON to what was
    /// appended, not necessarily byte for byte); any other payload as its bytes.
    pub data: Vec<u8>,
    /// Every header stored with it: CloudEvents attributes as `ce_*`, `content-type`, its
    /// version as `sluice-stream-version`, and the appender's own (`None`: a null value).
    pub headers: BTreeMap<String, Option<String>>,
}

impl RecordedEvent {
    /// The payload decoded from JSON as `T`.
    ///
    /// # Errors
    /// The payload is not JSON of that shape.
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        Ok(serde_json::from_slice(&self.data)?)
    }

    /// A header's value, if it has one.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(Option::as_deref)
    }

    /// The content type it was appended with.
    pub fn content_type(&self) -> Option<&str> {
        self.header("content-type")
    }
}

/// An event as the API writes it.
#[derive(Deserialize)]
pub(crate) struct EventJson {
    stream: String,
    version: u64,
    #[serde(rename = "type")]
    event_type: String,
    id: String,
    partition: u32,
    offset: u64,
    timestamp: i64,
    data: Option<Value>,
    data_base64: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, Option<String>>,
}

impl EventJson {
    pub(crate) fn into_event(self, url: &str) -> Result<RecordedEvent, ClientError> {
        let data = payload(self.data, self.data_base64, url)?;
        Ok(RecordedEvent {
            stream: self.stream,
            version: self.version,
            event_type: self.event_type,
            id: self.id,
            partition: self.partition,
            offset: self.offset,
            timestamp_ms: self.timestamp,
            data,
            headers: self.headers,
        })
    }
}

/// A payload given as `data` (JSON) or `data_base64`, as bytes.
pub(crate) fn payload(
    data: Option<Value>,
    data_base64: Option<String>,
    url: &str,
) -> Result<Vec<u8>, ClientError> {
    match (data, data_base64) {
        (Some(value), _) => Ok(serde_json::to_vec(&value)?),
        (None, Some(text)) => {
            BASE64.decode(text.as_bytes()).ok().ok_or_else(|| ClientError::Unexpected {
                url: url.to_owned(),
                detail: "data_base64 is not base64".to_owned(),
            })
        }
        (None, None) => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_versions_are_written_as_the_server_reads_them() {
        assert_eq!(ExpectedVersion::Exact(3).to_json(), json!(3));
        assert_eq!(ExpectedVersion::NoStream.to_json(), json!("no_stream"));
        assert_eq!(ExpectedVersion::from_version(None), ExpectedVersion::NoStream);
        assert_eq!(ExpectedVersion::from_version(Some(4)), ExpectedVersion::Exact(4));
        for expected in [
            ExpectedVersion::Any,
            ExpectedVersion::NoStream,
            ExpectedVersion::StreamExists,
            ExpectedVersion::Exact(17),
        ] {
            assert_eq!(expected.to_string().parse(), Ok(expected));
        }
        assert!("soon".parse::<ExpectedVersion>().is_err());
    }

    #[test]
    fn a_conflict_is_read_from_the_details_of_a_1021() {
        let details = json!({"stream": "a", "expected_version": "no_stream", "actual_version": 5, "deleted_at": null});
        let conflict = VersionConflict::from_details(&details, "m").expect("as documented");
        assert_eq!(
            (conflict.expected, conflict.actual, conflict.deleted_at),
            (ExpectedVersion::NoStream, Some(5), None)
        );
        let details = json!({"stream": "a", "expected_version": "2", "actual_version": -1});
        let conflict = VersionConflict::from_details(&details, "m").expect("as documented");
        assert_eq!((conflict.expected, conflict.actual), (ExpectedVersion::Exact(2), None));
        assert!(VersionConflict::from_details(&json!({"stream": "a"}), "m").is_none());
    }

    #[test]
    fn events_are_written_with_their_payload_id_and_attributes() {
        let event = EventData::json("Deposited", &json!({"amount": 5}))
            .expect("JSON")
            .with_header("traceparent", "00-1")
            .with_source("/bank");
        let written = event.to_json();
        assert_eq!(written["type"], "Deposited");
        assert_eq!(written["data"], json!({"amount": 5}));
        assert_eq!(written["id"], event.id());
        assert_eq!(written["headers"]["traceparent"], "00-1");
        assert_eq!(written["source"], "/bank");
        assert!(written.get("content_type").is_none());

        let binary = EventData::bytes("Blob", vec![0, 255]).with_id("blob-1");
        let written = binary.to_json();
        assert_eq!(
            (&written["data_base64"], &written["id"], &written["content_type"]),
            (&json!("AP8="), &json!("blob-1"), &json!("application/octet-stream"))
        );
        assert_ne!(EventData::bytes("A", vec![]).id(), EventData::bytes("A", vec![]).id());
    }
}
