//! The event topic: created with retention off (an event store keeps its events), or checked
//! to be such a topic if it exists.

use sluice_client::{Client, ClientError, TopicDescription, TopicOptions};

/// Why the event topic could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// The server refused, or could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
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
}

/// Whether [`ensure_event_topic`] made the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// It was created now.
    Created,
    /// It existed, as an event topic.
    Existed,
}

/// Creates `topic` with `partitions` partitions and retention forever on `server`; if it
/// exists, checks that it keeps its events.
///
/// # Errors
/// [`TopicError::NotAnEventTopic`] for an existing topic with retention or compaction;
/// [`TopicError::Client`] for a refusal (a bad name, say) or a transport failure.
pub async fn ensure_event_topic(
    server: &str,
    topic: &str,
    partitions: u32,
) -> Result<Ensured, TopicError> {
    let client = Client::new(server);
    let existed = match client.describe_topic(topic).await {
        Ok(description) => Some(description),
        Err(error) if error.code() == Some(UNKNOWN_TOPIC) => None,
        Err(error) => return Err(error.into()),
    };
    let Some(description) = existed else {
        client.create_topic_with(topic, &TopicOptions::event_topic(partitions)).await?;
        return Ok(Ensured::Created);
    };
    if description.retention_age_ms.is_some() || description.compact {
        return Err(TopicError::NotAnEventTopic {
            topic: topic.to_owned(),
            retention_age_ms: description.retention_age_ms,
            compact: description.compact,
        });
    }
    Ok(Ensured::Existed)
}

/// The server's code for an unknown topic.
const UNKNOWN_TOPIC: u16 = 1001;

/// Describes `topic` on `server`: its settings and each partition's high watermark.
///
/// # Errors
/// An unknown topic (code 1001) and transport failures.
pub async fn describe(server: &str, topic: &str) -> Result<TopicDescription, TopicError> {
    Ok(Client::new(server).describe_topic(topic).await?)
}
