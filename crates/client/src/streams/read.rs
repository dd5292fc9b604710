//! Reads and what they return: [`ReadOptions`], [`StreamSlice`], [`Snapshot`],
//! [`StreamMetadata`].

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::event::{EventJson, RecordedEvent};
use crate::http::ClientError;

/// Which way a read walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// Oldest first.
    #[default]
    Forward,
    /// Newest first.
    Backward,
}

/// A read of one stream. The default reads forward from the first visible event, up to
/// [`READ_COUNT_MAX`](super::READ_COUNT_MAX) events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadOptions {
    /// The first version to return (forward: default the first visible; backward: default the
    /// newest).
    pub from: Option<u64>,
    /// Which way.
    pub direction: Direction,
    /// Most events, 1 to [`READ_COUNT_MAX`](super::READ_COUNT_MAX) (default the maximum).
    pub count: Option<u32>,
    /// Read the stream as it was at this time (ms since the epoch, as
    /// [`RecordedEvent::timestamp_ms`]): only events appended at or before it.
    pub as_of_ms: Option<i64>,
}

impl ReadOptions {
    /// Forward from the first visible event.
    pub fn forward() -> Self {
        Self::default()
    }

    /// Backward from the newest event.
    pub fn backward() -> Self {
        Self { direction: Direction::Backward, ..Self::default() }
    }

    /// Starting at `version`.
    pub fn from(mut self, version: u64) -> Self {
        self.from = Some(version);
        self
    }

    /// At most `count` events.
    pub fn count(mut self, count: u32) -> Self {
        self.count = Some(count);
        self
    }

    /// As of `ms` since the epoch.
    pub fn as_of_ms(mut self, ms: i64) -> Self {
        self.as_of_ms = Some(ms);
        self
    }

    pub(crate) fn query(&self) -> String {
        let mut query = Vec::new();
        if let Some(from) = self.from {
            query.push(format!("from={from}"));
        }
        if self.direction == Direction::Backward {
            query.push("direction=backward".to_owned());
        }
        if let Some(count) = self.count {
            query.push(format!("count={count}"));
        }
        if let Some(as_of) = self.as_of_ms {
            query.push(format!("as_of={as_of}"));
        }
        if query.is_empty() {
            String::new()
        } else {
            format!("?{}", query.join("&"))
        }
    }
}

/// What a read returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSlice {
    /// The stream.
    pub stream: String,
    /// Its version (as of the read's time if given; `None`: no events then).
    pub version: Option<u64>,
    /// The first version reads show (after truncation, `max_count`, an earlier soft delete).
    pub first_visible: u64,
    /// The `from` of the next page, if this one stopped at its count or size limit.
    pub next: Option<u64>,
    /// The events, in the read's direction.
    pub events: Vec<RecordedEvent>,
}

/// `GET /v1/streams/{topic}/{stream}` answer.
#[derive(Deserialize)]
pub(crate) struct SliceJson {
    pub(crate) stream: String,
    pub(crate) version: i64,
    pub(crate) first_visible: u64,
    pub(crate) next: Option<u64>,
    pub(crate) events: Vec<EventJson>,
}

/// A stored snapshot of a stream's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The stream version it folds (events up to and including it).
    pub version: u64,
    /// The state as saved (JSON comes back as compact JSON text).
    pub data: Vec<u8>,
    /// When it was saved (ms since the epoch).
    pub timestamp_ms: Option<i64>,
}

impl Snapshot {
    /// The state decoded from JSON as `T`.
    ///
    /// # Errors
    /// The snapshot is not JSON of that shape.
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        Ok(serde_json::from_slice(&self.data)?)
    }
}

/// `GET .../snapshot` answer.
#[derive(Deserialize)]
pub(crate) struct SnapshotJson {
    pub(crate) version: u64,
    pub(crate) data: Option<Value>,
    pub(crate) data_base64: Option<String>,
    pub(crate) timestamp: Option<i64>,
}

/// A stream's metadata: what reads show. Unset fields are no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StreamMetadata {
    /// Reads show at most this many of the newest events (1 or more).
    #[serde(default)]
    pub max_count: Option<u64>,
    /// Reads show only events appended at most this long ago (ms).
    #[serde(default)]
    pub max_age_ms: Option<u64>,
    /// Reads show only events at this version or later.
    #[serde(default)]
    pub truncate_before: Option<u64>,
    /// The version the stream was soft-deleted at (set only by [`Client::delete_stream`](crate::Client::delete_stream);
    /// ignored by [`Client::set_stream_metadata`](crate::Client::set_stream_metadata)).
    #[serde(default)]
    pub deleted_at: Option<u64>,
}

/// `DELETE /v1/streams/{topic}/{stream}` answer.
#[derive(Deserialize)]
pub(crate) struct DeletedJson {
    pub(crate) deleted_at: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_options_become_the_query() {
        assert_eq!(ReadOptions::forward().query(), "");
        assert_eq!(
            ReadOptions::backward().from(7).count(2).as_of_ms(0).query(),
            "?from=7&direction=backward&count=2&as_of=0"
        );
    }
}
