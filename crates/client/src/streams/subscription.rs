//! Subscriptions over Server-Sent Events: to one stream ([`StreamSubscription`]) or to every
//! stream of a topic ([`TopicSubscription`]). The server sends the stored events from the
//! starting point, then live ones as they are appended; each SSE `data:` is one event as JSON.
//!
//! There is no reconnect: when the connection ends, or stays silent past
//! [`SUBSCRIPTION_IDLE_MAX`] (the server sends a keep-alive comment every 15 s), `next` returns
//! an error. Resume by subscribing again from the last position received.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use super::sse::{SseEvent, SseParser};
use super::{stream_path, EventJson, RecordedEvent};
use crate::http::{ClientError, Http, RESPONSE_BYTES_MAX};
use crate::worker::percent_encode;
use crate::Client;

/// Longest a subscription waits for any bytes (an event or the server's 15-second keep-alive)
/// before it declares the connection dead.
pub const SUBSCRIPTION_IDLE_MAX: Duration = Duration::from_secs(45);

/// Where a stream subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StreamFrom {
    /// The first event still stored.
    #[default]
    Start,
    /// Only events appended after the subscription is made.
    End,
    /// This version and later.
    Version(u64),
}

/// Where a topic subscription starts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TopicFrom {
    /// The first event still stored, in every partition.
    #[default]
    Start,
    /// Only events appended after the subscription is made.
    End,
    /// Just after the event this position was received with (see [`SubscribedEvent`]).
    Position(TopicPosition),
}

/// A place in a topic: per partition, the next offset to read. Written `0:15,1:7`, which is how
/// the server names it (the SSE `id`) and takes it back (`from=`). Partitions not named start
/// at offset 0.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct TopicPosition {
    offsets: Vec<(u32, u64)>,
}

impl TopicPosition {
    /// A position from `(partition, next offset)` pairs.
    pub fn new(offsets: impl IntoIterator<Item = (u32, u64)>) -> Self {
        let mut offsets: Vec<(u32, u64)> = offsets.into_iter().collect();
        offsets.sort_unstable();
        offsets.dedup_by_key(|(partition, _)| *partition);
        Self { offsets }
    }

    /// The `(partition, next offset)` pairs, by partition.
    pub fn offsets(&self) -> &[(u32, u64)] {
        &self.offsets
    }

    /// The next offset to read in `partition` (0 if it is not named).
    pub fn offset(&self, partition: u32) -> u64 {
        self.offsets.iter().find(|(named, _)| *named == partition).map_or(0, |(_, offset)| *offset)
    }

    /// Whether this position is at or past `other` in every partition `other` names.
    pub fn covers(&self, other: &TopicPosition) -> bool {
        other.offsets.iter().all(|(partition, offset)| self.offset(*partition) >= *offset)
    }
}

impl fmt::Display for TopicPosition {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, (partition, offset)) in self.offsets.iter().enumerate() {
            if index > 0 {
                formatter.write_str(",")?;
            }
            write!(formatter, "{partition}:{offset}")?;
        }
        Ok(())
    }
}

impl FromStr for TopicPosition {
    type Err = String;

    /// `partition:offset,...`, like `0:15,1:7` (empty: no partition named).
    fn from_str(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Ok(Self::default());
        }
        let pairs = text.split(',').map(|part| {
            let (partition, offset) = part.split_once(':')?;
            Some((partition.trim().parse().ok()?, offset.trim().parse().ok()?))
        });
        pairs
            .collect::<Option<Vec<(u32, u64)>>>()
            .map(Self::new)
            .ok_or_else(|| format!("'{text}' is not a position like 0:15,1:7"))
    }
}

/// Stored as its text, `0:15,1:7`.
impl Serialize for TopicPosition {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TopicPosition {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// An event of a topic subscription, and where to resume to get the events after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribedEvent {
    /// The event.
    pub event: RecordedEvent,
    /// The position just after it: subscribe from here ([`TopicFrom::Position`]) to receive
    /// every later event and not this one.
    pub position: TopicPosition,
}

/// An open `text/event-stream` response, read as it arrives.
struct EventSource {
    url: String,
    body: Incoming,
    parser: SseParser,
}

impl fmt::Debug for EventSource {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("EventSource").field("url", &self.url).finish_non_exhaustive()
    }
}

impl EventSource {
    async fn open(http: &Http, path: &str) -> Result<Self, ClientError> {
        let response = http.open(path, "text/event-stream").await?;
        Ok(Self {
            url: format!("{}{path}", http.base()),
            body: response.into_body(),
            parser: SseParser::new(RESPONSE_BYTES_MAX),
        })
    }

    /// The next SSE event; an error when the connection ends or goes silent.
    async fn next(&mut self) -> Result<SseEvent, ClientError> {
        loop {
            if let Some(event) = self.parser.next_event() {
                return Ok(event);
            }
            let frame = tokio::time::timeout(SUBSCRIPTION_IDLE_MAX, self.body.frame())
                .await
                .map_err(|_| self.broken(std::io::ErrorKind::TimedOut, "went silent"))?;
            match frame {
                None => return Err(self.broken(std::io::ErrorKind::UnexpectedEof, "ended")),
                Some(Err(error)) => {
                    return Err(ClientError::Transport {
                        url: self.url.clone(),
                        source: Box::new(error),
                    })
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.parser.push(&data).map_err(|too_large| ClientError::Unexpected {
                            url: self.url.clone(),
                            detail: format!(
                                "an event stream line or event over {} bytes",
                                too_large.limit
                            ),
                        })?;
                    }
                }
            }
        }
    }

    /// The next event decoded, with the SSE id it came with.
    async fn next_event(&mut self) -> Result<(RecordedEvent, Option<String>), ClientError> {
        let sse = self.next().await?;
        let event: EventJson =
            serde_json::from_str(&sse.data).map_err(|error| ClientError::Unexpected {
                url: self.url.clone(),
                detail: format!("an event that is not an event's JSON: {error}"),
            })?;
        Ok((event.into_event(&self.url)?, sse.id))
    }

    fn broken(&self, kind: std::io::ErrorKind, what: &str) -> ClientError {
        let detail = match kind {
            std::io::ErrorKind::TimedOut => format!(
                "the subscription {what}: nothing for {} s, not even a keep-alive",
                SUBSCRIPTION_IDLE_MAX.as_secs()
            ),
            _ => format!("the server {what} the subscription"),
        };
        ClientError::Transport {
            url: self.url.clone(),
            source: Box::new(std::io::Error::new(kind, detail)),
        }
    }
}

/// A subscription to one stream: its events in version order, stored then live.
#[derive(Debug)]
pub struct StreamSubscription {
    source: EventSource,
}

impl StreamSubscription {
    /// The next event, waiting for one to be appended if the subscription has caught up.
    /// Resume after it with [`StreamFrom::Version`] of its version + 1.
    ///
    /// # Errors
    /// The connection ended (the server stopped, the topic was deleted) or went silent for
    /// [`SUBSCRIPTION_IDLE_MAX`] (a transient [`ClientError::Transport`]), or the server sent
    /// something that is not an event. After an error, subscribe again.
    pub async fn next(&mut self) -> Result<RecordedEvent, ClientError> {
        self.source.next_event().await.map(|(event, _)| event)
    }
}

/// A subscription to every stream of a topic: each partition's events in order (partitions
/// interleaved), stored then live.
#[derive(Debug)]
pub struct TopicSubscription {
    source: EventSource,
}

impl TopicSubscription {
    /// The next event and the position after it, waiting for one to be appended if the
    /// subscription has caught up.
    ///
    /// # Errors
    /// As [`StreamSubscription::next`]; also an event without a position.
    pub async fn next(&mut self) -> Result<SubscribedEvent, ClientError> {
        let (event, id) = self.source.next_event().await?;
        let position = id.as_deref().map(str::parse::<TopicPosition>).transpose();
        match position {
            Ok(Some(position)) => Ok(SubscribedEvent { event, position }),
            Ok(None) | Err(_) => Err(ClientError::Unexpected {
                url: self.source.url.clone(),
                detail: format!("event id {id:?} is not a position like 0:15,1:7"),
            }),
        }
    }
}

impl Client {
    /// Subscribes to `stream` of `topic` from `from`. Returns once the server has set the
    /// subscription up, so with [`StreamFrom::End`] every event appended after this returns is
    /// received.
    ///
    /// # Errors
    /// 1001 unknown topic; 1008 bad stream name; transport failures.
    pub async fn subscribe_stream(
        &self,
        topic: &str,
        stream: &str,
        from: StreamFrom,
    ) -> Result<StreamSubscription, ClientError> {
        let from = match from {
            StreamFrom::Start => "start".to_owned(),
            StreamFrom::End => "end".to_owned(),
            StreamFrom::Version(version) => version.to_string(),
        };
        let path = format!("{}/events?from={from}", stream_path(topic, stream));
        Ok(StreamSubscription { source: EventSource::open(&self.http, &path).await? })
    }

    /// Subscribes to every stream of `topic` from `from`. Returns once the server has set the
    /// subscription up (see [`Client::subscribe_stream`]).
    ///
    /// # Errors
    /// 1001 unknown topic; 1008 a position naming a partition the topic does not have;
    /// transport failures.
    pub async fn subscribe_topic(
        &self,
        topic: &str,
        from: TopicFrom,
    ) -> Result<TopicSubscription, ClientError> {
        let from = match from {
            TopicFrom::Start => "start".to_owned(),
            TopicFrom::Position(position) if position.offsets.is_empty() => "start".to_owned(),
            TopicFrom::End => "end".to_owned(),
            TopicFrom::Position(position) => percent_encode(&position.to_string()),
        };
        let path = format!("/v1/streams/{}?from={from}", percent_encode(topic));
        Ok(TopicSubscription { source: EventSource::open(&self.http, &path).await? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_read_and_write_as_the_server_names_them() {
        let position: TopicPosition = "1:7,0:15".parse().expect("a position");
        assert_eq!(position.offsets(), &[(0, 15), (1, 7)]);
        assert_eq!(position.to_string(), "0:15,1:7");
        assert_eq!((position.offset(1), position.offset(2)), (7, 0));
        assert_eq!("".parse::<TopicPosition>(), Ok(TopicPosition::default()));
        for bad in ["0", "0:x", "a:1", "0:1,", "-1:3"] {
            assert!(bad.parse::<TopicPosition>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&position).expect("serialises");
        assert_eq!(json, "\"0:15,1:7\"");
        assert_eq!(serde_json::from_str::<TopicPosition>(&json).expect("parses"), position);
    }

    #[test]
    fn a_position_covers_another_when_it_is_as_far_in_each_partition() {
        let later = TopicPosition::new([(0, 15), (1, 7)]);
        assert!(later.covers(&TopicPosition::new([(0, 15), (1, 7)])));
        assert!(later.covers(&TopicPosition::new([(0, 3)])));
        assert!(!later.covers(&TopicPosition::new([(0, 3), (2, 1)])));
        assert!(later.covers(&TopicPosition::new([(2, 0)])));
        assert!(TopicPosition::default().covers(&TopicPosition::default()));
    }
}
