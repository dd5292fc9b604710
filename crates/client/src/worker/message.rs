//! What a worker's handler receives and returns: the leased [`Message`], the [`Handler`]
//! contract, and [`HandlerError`], which says whether a failure is worth retrying. Also the
//! mapping from a handler's outcome to what the worker tells the server ([`Verdict`]).

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::consumer::RecordJson;

/// The header holding a record's id (the CloudEvents `id`, set by producers; see
/// [`crate::Producer`]).
pub const RECORD_ID_HEADER: &str = "ce_id";

/// Longest failure text sent with a nack or reject (the rest is cut off): it ends up in the dead
/// letter's history, not in a log.
pub const ERROR_TEXT_BYTES_MAX: usize = 4096;

/// Longest delay a nack may ask for (the server's limit: one day).
pub const NACK_DELAY_MAX: Duration = Duration::from_secs(24 * 60 * 60);

/// An error with its source chain kept, as handlers and stores report them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A message leased from a queue group.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The id the worker settles it with (`topic/partition/offset/delivery`); new on every
    /// delivery.
    pub delivery_id: String,
    /// Its topic.
    pub topic: String,
    /// Its partition.
    pub partition: u32,
    /// Its offset.
    pub offset: u64,
    /// Its delivery count, this one included: 1 on the first delivery.
    pub deliveries: u32,
    /// The record's timestamp (ms since the epoch).
    pub timestamp_ms: i64,
    /// Its key, if it has a UTF-8 one.
    pub key: Option<String>,
    /// Its key as base64, if it is not UTF-8.
    pub key_base64: Option<String>,
    /// Its value (`null` for a null value, or when the value is not JSON).
    pub value: Value,
    /// Its value as base64, if it is not JSON.
    pub value_base64: Option<String>,
    /// Its headers (text, or `null` for a header without a value).
    pub headers: BTreeMap<String, Value>,
    /// The id its producer gave it (the `ce_id` header), if any.
    pub record_id: Option<String>,
}

impl Message {
    /// The value decoded as `T`.
    ///
    /// # Errors
    /// [`HandlerError::Permanent`] if the value does not decode: it would not decode on the next
    /// delivery either, so `message.value_as::<T>()?` sends it to the dead-letter topic.
    pub fn value_as<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        T::deserialize(&self.value).map_err(HandlerError::permanent)
    }

    /// The text of header `name`, if it is present and has a value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(Value::as_str)
    }

    /// What identifies this message across deliveries and duplicate appends: its record id, or,
    /// for records produced without one, `topic/partition/offset`. The key [`crate::dedup`]
    /// stores.
    pub fn idempotency_key(&self) -> String {
        match &self.record_id {
            Some(id) => id.clone(),
            None => format!("{}/{}/{}", self.topic, self.partition, self.offset),
        }
    }
}

/// A message as the lease endpoint encodes it.
#[derive(Deserialize)]
pub(crate) struct MessageJson {
    delivery_id: String,
    deliveries: u32,
    #[serde(default, alias = "timestamp")]
    timestamp_ms: i64,
    #[serde(flatten)]
    record: RecordJson,
}

/// `GET /v1/queues/{group}/messages` answer.
#[derive(Deserialize)]
pub(crate) struct Leased {
    pub(crate) messages: Vec<MessageJson>,
}

impl From<MessageJson> for Message {
    fn from(message: MessageJson) -> Self {
        let record = message.record;
        let record_id =
            record.headers.get(RECORD_ID_HEADER).and_then(Value::as_str).map(str::to_owned);
        Self {
            delivery_id: message.delivery_id,
            topic: record.topic,
            partition: record.partition,
            offset: record.offset,
            deliveries: message.deliveries,
            timestamp_ms: message.timestamp_ms,
            key: record.key,
            key_base64: record.key_base64,
            value: record.value.unwrap_or(Value::Null),
            value_base64: record.value_base64,
            headers: record.headers,
            record_id,
        }
    }
}

/// Why a handler did not finish a message.
#[derive(Debug)]
pub enum HandlerError {
    /// It may succeed later (a dependency was down, a lock was taken): the message is nacked and
    /// redelivered after `delay`, or after the group's backoff if `None`, until the group's
    /// `deliveries_max` sends it to the dead-letter topic.
    Transient {
        /// What went wrong.
        error: BoxError,
        /// When to try again, instead of the group's backoff (at most [`NACK_DELAY_MAX`]).
        delay: Option<Duration>,
    },
    /// It will never succeed (a malformed message, a business rule refused it): the message is
    /// rejected and goes to the dead-letter topic at once.
    Permanent(BoxError),
}

impl HandlerError {
    /// A transient failure retried after the group's backoff.
    pub fn transient(error: impl Into<BoxError>) -> Self {
        Self::Transient { error: error.into(), delay: None }
    }

    /// A transient failure retried after `delay`.
    pub fn retry_after(error: impl Into<BoxError>, delay: Duration) -> Self {
        Self::Transient { error: error.into(), delay: Some(delay) }
    }

    /// A permanent failure: dead-letter the message.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        Self::Permanent(error.into())
    }

    fn error(&self) -> &BoxError {
        match self {
            Self::Transient { error, .. } | Self::Permanent(error) => error,
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Transient { .. } => write!(formatter, "transient failure: {}", self.error()),
            Self::Permanent(_) => write!(formatter, "permanent failure: {}", self.error()),
        }
    }
}

impl std::error::Error for HandlerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.error().as_ref())
    }
}

/// A value that does not decode never will: permanent.
impl From<serde_json::Error> for HandlerError {
    fn from(error: serde_json::Error) -> Self {
        Self::permanent(error)
    }
}

/// What a worker runs for each message. Implemented by every
/// `Fn(Message) -> impl Future<Output = Result<(), HandlerError>>` that is `Send + Sync`, so a
/// closure works (name the argument's type: `|message: Message| async move { ... }`), and by
/// [`crate::Dedup`].
pub trait Handler: Send + Sync + 'static {
    /// Handles one message. `Ok` settles it (an ack under at-least-once); see [`HandlerError`]
    /// for failures. A panic counts as a transient failure.
    fn handle(&self, message: Message) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

impl<F, Fut> Handler for F
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    fn handle(&self, message: Message) -> impl Future<Output = Result<(), HandlerError>> + Send {
        self(message)
    }
}

/// What the worker tells the server about a message whose handler finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Done.
    Ack,
    /// Failed; try again (after `delay_ms`, or the group's backoff).
    Nack { delay_ms: Option<u64>, error: String },
    /// Failed for good; dead-letter it.
    Reject { error: String },
}

/// The verdict on a handler's outcome; `Err(panic text)` if it panicked.
pub(crate) fn verdict(outcome: Result<Result<(), HandlerError>, String>) -> Verdict {
    match outcome {
        Ok(Ok(())) => Verdict::Ack,
        Ok(Err(HandlerError::Transient { error, delay })) => Verdict::Nack {
            delay_ms: delay.map(|delay| {
                u64::try_from(delay.min(NACK_DELAY_MAX).as_millis()).unwrap_or(u64::MAX)
            }),
            error: error_text(error.as_ref()),
        },
        Ok(Err(HandlerError::Permanent(error))) => {
            Verdict::Reject { error: error_text(error.as_ref()) }
        }
        Err(panic) => {
            Verdict::Nack { delay_ms: None, error: truncate(format!("handler panicked: {panic}")) }
        }
    }
}

/// An error and its sources, `outer: inner: innermost`, cut to [`ERROR_TEXT_BYTES_MAX`].
pub(crate) fn error_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        if text.len() > ERROR_TEXT_BYTES_MAX {
            break;
        }
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    truncate(text)
}

fn truncate(mut text: String) -> String {
    if text.len() > ERROR_TEXT_BYTES_MAX {
        let mut end = ERROR_TEXT_BYTES_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// The text of a panic's payload (`panic!` gives a `&str` or a `String`).
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a non-text panic payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(json: Value) -> Message {
        let leased: Leased = serde_json::from_value(json!({ "messages": [json] })).unwrap();
        leased.messages.into_iter().map(Message::from).next().unwrap()
    }

    #[test]
    fn a_leased_message_decodes_as_the_records_endpoint_encodes_it() {
        let message = decode(json!({
            "delivery_id": "orders/2/41/3", "topic": "orders", "partition": 2, "offset": 41,
            "deliveries": 3, "deadline_ms": 1_700_000_030_000_i64, "timestamp_ms": 1_700_000_000_000_i64,
            "key": "customer-7", "value": {"id": 41, "total_cents": 1250},
            "headers": {"ce_id": "p1-abc-41", "trace": "t", "empty": null}
        }));
        assert_eq!(message.delivery_id, "orders/2/41/3");
        assert_eq!((message.topic.as_str(), message.partition, message.offset), ("orders", 2, 41));
        assert_eq!(message.deliveries, 3);
        assert_eq!(message.timestamp_ms, 1_700_000_000_000);
        assert_eq!(message.key.as_deref(), Some("customer-7"));
        assert_eq!(message.value, json!({"id": 41, "total_cents": 1250}));
        assert_eq!(message.record_id.as_deref(), Some("p1-abc-41"));
        assert_eq!(message.idempotency_key(), "p1-abc-41");
        assert_eq!(message.header("trace"), Some("t"));
        assert_eq!(message.header("empty"), None);
        assert_eq!(message.headers.get("empty"), Some(&Value::Null));
        assert_eq!((message.key_base64, message.value_base64), (None, None));
    }

    #[test]
    fn bytes_that_are_not_text_or_json_stay_base64_and_no_id_means_the_position() {
        let message = decode(json!({
            "delivery_id": "raw/0/7/1", "topic": "raw", "partition": 0, "offset": 7,
            "deliveries": 1, "deadline_ms": 0, "timestamp_ms": 5,
            "key_base64": "/w==", "value_base64": "AAE=", "headers": {}
        }));
        assert_eq!(message.key, None);
        assert_eq!(message.key_base64.as_deref(), Some("/w=="));
        assert_eq!(message.value, Value::Null);
        assert_eq!(message.value_base64.as_deref(), Some("AAE="));
        assert_eq!(message.record_id, None);
        assert_eq!(message.idempotency_key(), "raw/0/7");
    }

    #[test]
    fn a_value_that_does_not_decode_is_a_permanent_failure() {
        #[derive(Debug, serde::Deserialize)]
        struct Order {
            #[allow(dead_code)]
            id: u64,
        }
        let message = decode(json!({
            "delivery_id": "o/0/0/1", "topic": "o", "partition": 0, "offset": 0,
            "deliveries": 1, "deadline_ms": 0, "timestamp_ms": 0, "value": {"id": "seven"},
            "headers": {}
        }));
        let error = message.value_as::<Order>().unwrap_err();
        assert!(matches!(error, HandlerError::Permanent(_)), "{error}");
        assert!(matches!(verdict(Ok(Err(error))), Verdict::Reject { .. }));
    }

    #[test]
    fn outcomes_map_to_ack_nack_and_reject() {
        assert_eq!(verdict(Ok(Ok(()))), Verdict::Ack);
        assert_eq!(
            verdict(Ok(Err(HandlerError::transient("db down")))),
            Verdict::Nack { delay_ms: None, error: "db down".to_owned() }
        );
        assert_eq!(
            verdict(Ok(Err(HandlerError::retry_after("busy", Duration::from_millis(1500))))),
            Verdict::Nack { delay_ms: Some(1500), error: "busy".to_owned() }
        );
        assert_eq!(
            verdict(Ok(Err(HandlerError::retry_after("later", Duration::from_secs(10 * 86_400))))),
            Verdict::Nack { delay_ms: Some(86_400_000), error: "later".to_owned() },
            "the delay is capped at the server's limit"
        );
        assert_eq!(
            verdict(Ok(Err(HandlerError::permanent("no such customer")))),
            Verdict::Reject { error: "no such customer".to_owned() }
        );
        assert_eq!(
            verdict(Err("boom".to_owned())),
            Verdict::Nack { delay_ms: None, error: "handler panicked: boom".to_owned() }
        );
    }

    #[test]
    fn failure_text_keeps_the_sources_and_is_bounded() {
        #[derive(Debug)]
        struct Saving(std::io::Error);
        impl fmt::Display for Saving {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("saving the order")
            }
        }
        impl std::error::Error for Saving {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let error = HandlerError::transient(Saving(std::io::Error::other("connection reset")));
        assert_eq!(
            verdict(Ok(Err(error))),
            Verdict::Nack {
                delay_ms: None,
                error: "saving the order: connection reset".to_owned()
            }
        );
        let long = "é".repeat(ERROR_TEXT_BYTES_MAX);
        let Verdict::Reject { error } = verdict(Ok(Err(HandlerError::permanent(long)))) else {
            panic!("a permanent failure rejects");
        };
        assert!(error.len() <= ERROR_TEXT_BYTES_MAX && error.len() > ERROR_TEXT_BYTES_MAX - 2);
    }

    #[test]
    fn panic_payloads_become_text() {
        assert_eq!(panic_text(&"static"), "static");
        assert_eq!(panic_text(&"owned".to_owned()), "owned");
        assert_eq!(panic_text(&7_u8), "a non-text panic payload");
    }
}
