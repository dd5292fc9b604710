//! The event topic: created with retention off (an event store keeps its events), or checked
//! to be such a topic if it exists.
//!
//! The SDK's `Client::create_topic` takes only a name and a partition count, so the topic gets
//! the server's default retention (7 days), which would delete old events and leave accounts
//! that cannot be rebuilt. This module calls `POST /v1/topics` itself with
//! `"retention_age_ms": null`, over `ureq` (blocking, run on Tokio's blocking pool).

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

/// Longest one topic request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The server's code for "topic exists".
const TOPIC_EXISTS: u64 = 1002;

/// Why the event topic could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// The request failed in transport.
    #[error("request to {url} failed: {source}")]
    Transport {
        /// The URL.
        url: String,
        /// The failure.
        #[source]
        source: Box<ureq::Error>,
    },
    /// The server refused the request.
    #[error("{url} answered HTTP {status}: {body}")]
    Refused {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The answer.
        body: String,
    },
    /// The topic exists but deletes or compacts events, so accounts could not be rebuilt.
    #[error(
        "topic {topic} exists with retention_age_ms {retention_age_ms:?} and compact {compact}: \
         an event topic keeps every event (retention forever, no compaction); use another topic"
    )]
    NotAnEventTopic {
        /// The topic.
        topic: String,
        /// Its age retention (`None`: forever).
        retention_age_ms: Option<u64>,
        /// Whether it is compacted.
        compact: bool,
    },
    /// The blocking task panicked or was cancelled.
    #[error("the topic request did not finish: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A topic as `GET /v1/topics/{topic}` describes it (the fields used here).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TopicDescription {
    /// Its name.
    pub name: String,
    /// Its partition count.
    pub partitions: u32,
    /// Its age retention (`None`: forever).
    pub retention_age_ms: Option<u64>,
    /// Whether it is compacted.
    pub compact: bool,
    /// Each partition's bounds.
    pub partition_offsets: Vec<PartitionOffsets>,
}

/// One partition's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct PartitionOffsets {
    /// The partition.
    pub partition: u32,
    /// The offset after its last record.
    pub high_watermark: u64,
}

/// Whether [`ensure_event_topic`] made the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// It was created now.
    Created,
    /// It existed, as an event topic.
    Existed,
}

/// The server's base URL with a scheme (`127.0.0.1:8080` becomes `http://127.0.0.1:8080`).
fn base_url(server: &str) -> String {
    let base = if server.contains("://") { server.to_owned() } else { format!("http://{server}") };
    base.trim_end_matches('/').to_owned()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(REQUEST_TIMEOUT))
        .build()
        .new_agent()
}

/// Creates `topic` with `partitions` partitions and retention forever on `server`; if it
/// exists, checks that it keeps its events.
///
/// # Errors
/// [`TopicError::NotAnEventTopic`] for an existing topic with retention or compaction;
/// [`TopicError::Refused`] (a bad name, say) and [`TopicError::Transport`].
pub async fn ensure_event_topic(
    server: &str,
    topic: &str,
    partitions: u32,
) -> Result<Ensured, TopicError> {
    let base = base_url(server);
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || ensure_blocking(&base, &topic, partitions)).await?
}

fn ensure_blocking(base: &str, topic: &str, partitions: u32) -> Result<Ensured, TopicError> {
    let url = format!("{base}/v1/topics");
    let body = json!({"name": topic, "partitions": partitions, "retention_age_ms": null});
    let (status, answer) = send(&url, agent().post(&url).send_json(&body))?;
    if status == 201 {
        return Ok(Ensured::Created);
    }
    let exists = serde_json::from_str::<Value>(&answer)
        .ok()
        .and_then(|error| error.get("error_code").and_then(Value::as_u64))
        == Some(TOPIC_EXISTS);
    if !exists {
        return Err(TopicError::Refused { url, status, body: answer });
    }
    let description = describe_blocking(base, topic)?;
    if description.retention_age_ms.is_some() || description.compact {
        return Err(TopicError::NotAnEventTopic {
            topic: topic.to_owned(),
            retention_age_ms: description.retention_age_ms,
            compact: description.compact,
        });
    }
    Ok(Ensured::Existed)
}

/// Describes `topic` on `server`: its settings and each partition's high watermark.
///
/// # Errors
/// [`TopicError::Refused`] (an unknown topic: HTTP 404) and [`TopicError::Transport`].
pub async fn describe(server: &str, topic: &str) -> Result<TopicDescription, TopicError> {
    let base = base_url(server);
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || describe_blocking(&base, &topic)).await?
}

fn describe_blocking(base: &str, topic: &str) -> Result<TopicDescription, TopicError> {
    let url = format!("{base}/v1/topics/{topic}");
    let (status, answer) = send(&url, agent().get(&url).call())?;
    let refused = || TopicError::Refused { url: url.clone(), status, body: answer.clone() };
    if status != 200 {
        return Err(refused());
    }
    serde_json::from_str(&answer).map_err(|_| refused())
}

/// The status and body of an answer.
fn send(
    url: &str,
    response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<(u16, String), TopicError> {
    let transport = |source: ureq::Error| TopicError::Transport {
        url: url.to_owned(),
        source: Box::new(source),
    };
    let response = response.map_err(transport)?;
    let status = response.status().as_u16();
    let body = response.into_body().read_to_string().map_err(transport)?;
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_named_with_or_without_a_scheme() {
        assert_eq!(base_url("127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(base_url("http://host:1/"), "http://host:1");
    }
}
