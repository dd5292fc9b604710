//! Event streams: event sourcing over Sluice's HTTP API.
//!
//! A stream is the events of one key in a topic, each with a version (0, 1, 2, ...). The
//! operations are methods of [`Client`]:
//!
//! - [`Client::append`] appends events if the stream's version is what the caller expects
//!   ([`ExpectedVersion`]); otherwise nothing is written and the error is
//!   [`ClientError::WrongExpectedVersion`] with both versions. [`Client::append_streams`] checks
//!   (and writes) several streams of one partition all or nothing.
//! - [`Client::read_stream`] reads forward or backward, in pages, optionally as of a time.
//! - [`Client::load_snapshot`] / [`Client::save_snapshot`], [`Client::stream_metadata`] /
//!   [`Client::set_stream_metadata`], [`Client::delete_stream`] (soft).
//! - [`Client::subscribe_stream`] and [`Client::subscribe_topic`] follow a stream, or every stream
//!   of a topic, over Server-Sent Events: history first, then live events.
//!
//! - [`Client::stream_appender`] gathers the appends of many concurrent callers into shared
//!   requests ([`StreamAppender`]), each still checked and answered on its own.
//!
//! On top of those, [`Repository`] runs [`Aggregate`] commands (load, decide, append with the
//! loaded version, retry on conflicts), and [`Projection`] folds a topic into a read model with
//! exactly-once application through the store's own transaction.
//!
//! Create event topics with retention off (`sluice topic create <topic> --retention-age
//! forever`): under the default retention a stream's old events go with their segments, and an
//! aggregate whose events are gone (past its newest snapshot) cannot be rebuilt; the
//! [`Repository`] then says so ([`RepositoryError::Gap`]) rather than fold a partial history.
//!
//! Every [`EventData`] gets an id when it is made. An append retried with the same events (same
//! ids) and the same exact expected version is answered with the first append's result, so
//! [`Client::append`] retries transient failures by itself when that holds (see there).

mod aggregate;
mod codec;
mod event;
mod gather;
mod projection;
mod read;
mod sse;
mod subscription;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use std::time::Duration;

use hyper::Method;
use serde::Serialize;
use serde_json::{json, Value};

use crate::http::ClientError;
use crate::worker::percent_encode;
use crate::Client;

use event::{payload, AppendJson};
use read::{DeletedJson, SliceJson, SnapshotJson};

pub use aggregate::{
    Aggregate, Executed, Loaded, Repository, RepositoryError, CONFLICT_RETRIES_DEFAULT,
};
pub(crate) use event::EventJson;
pub use event::{
    Appended, EventData, ExpectedVersion, RecordedEvent, StreamWrite, VersionConflict,
};
pub use gather::{
    AppenderOptions, StreamAppender, GATHERED_APPENDS_MAX, GATHERED_BODY_BYTES_MAX,
    GATHERED_EVENTS_MAX,
};
pub use projection::{
    Projection, ProjectionError, ProjectionReport, ProjectionStore, CATCH_UP_QUIET,
};
pub use read::{Direction, ReadOptions, Snapshot, StreamMetadata, StreamSlice};
pub use subscription::{
    StreamFrom, StreamSubscription, SubscribedEvent, TopicFrom, TopicPosition, TopicSubscription,
    SUBSCRIPTION_IDLE_MAX,
};

/// The server's code for a wrong expected version (HTTP 409).
pub const WRONG_EXPECTED_VERSION: u16 = 1021;
/// The server's code for a stream without events, or soft-deleted (HTTP 404).
pub const STREAM_NOT_FOUND: u16 = 1022;
/// The server's code for a stream without a snapshot (HTTP 404).
pub const SNAPSHOT_NOT_FOUND: u16 = 1023;
/// Most events one read returns (the server's limit).
pub const READ_COUNT_MAX: u32 = 4096;
/// Attempts of one append on transient failures, when retrying is safe (see
/// [`Client::append`]); backing off from 50 ms.
pub const APPEND_ATTEMPTS_MAX: u32 = 4;

/// `/v1/streams/{topic}/{stream}` with both names percent-encoded.
fn stream_path(topic: &str, stream: &str) -> String {
    format!("/v1/streams/{}/{}", percent_encode(topic), percent_encode(stream))
}

impl Client {
    /// Appends `events` to `stream` of `topic` if the stream's version is `expected`; returns
    /// its new version and the events' offsets. Returns once the events are durable (under the
    /// topic's durability).
    ///
    /// Transient failures (connection, timeout, 503) are retried up to
    /// [`APPEND_ATTEMPTS_MAX`] times with the same ids when `expected` is
    /// [`ExpectedVersion::Exact`] or [`ExpectedVersion::NoStream`]: the server answers a repeat
    /// of an append that landed with its first result. With `Any` or `StreamExists` a repeat
    /// could append twice, so the failure is returned (retry yourself if your events tolerate
    /// it).
    ///
    /// # Errors
    /// [`ClientError::WrongExpectedVersion`] (nothing appended); code 1008 for bad names, types,
    /// reserved headers or sizes; 1001 unknown topic; transport failures.
    pub async fn append(
        &self,
        topic: &str,
        stream: &str,
        expected: ExpectedVersion,
        events: &[EventData],
    ) -> Result<Appended, ClientError> {
        Ok(self.post_append(topic, stream, expected, events, &[]).await?.main)
    }

    /// Appends to several streams of one partition of `topic` at once, all or nothing: every
    /// write's expected version is checked, and only if all hold are all events appended, as
    /// one batch. Streams in different partitions are refused (code 1008). Returns one
    /// [`Appended`] per write, in order. Retries as [`Client::append`] does, when every write
    /// carries events and expects `Exact` or `NoStream`.
    ///
    /// # Errors
    /// As [`Client::append`]; the conflict names the stream whose check failed.
    pub async fn append_streams(
        &self,
        topic: &str,
        writes: &[StreamWrite],
    ) -> Result<Vec<Appended>, ClientError> {
        let Some((main, others)) = writes.split_first() else {
            return Err(ClientError::Unexpected {
                url: format!("{}/v1/streams/{topic}", self.http.base()),
                detail: "an append needs at least one stream".to_owned(),
            });
        };
        let answer =
            self.post_append(topic, &main.stream, main.expected, &main.events, others).await?;
        let mut appended = vec![answer.main];
        appended.extend(answer.other_streams);
        Ok(appended)
    }

    /// `POST /v1/streams/{topic}/{stream}`, retried on transient failures when a repeat is
    /// recognised by the server (every write has events and an exact or no-stream check).
    async fn post_append(
        &self,
        topic: &str,
        stream: &str,
        expected: ExpectedVersion,
        events: &[EventData],
        others: &[StreamWrite],
    ) -> Result<AppendJson, ClientError> {
        let mut body = json!({
            "expected_version": expected.to_json(),
            "events": events.iter().map(EventData::to_json).collect::<Vec<_>>(),
        });
        if !others.is_empty() {
            body["other_streams"] = others.iter().map(StreamWrite::to_json).collect();
        }
        let path = stream_path(topic, stream);
        let repeatable = |expected: ExpectedVersion, events: &[EventData]| {
            !events.is_empty()
                && matches!(expected, ExpectedVersion::Exact(_) | ExpectedVersion::NoStream)
        };
        let attempts = if repeatable(expected, events)
            && others.iter().all(|other| repeatable(other.expected, &other.events))
        {
            APPEND_ATTEMPTS_MAX
        } else {
            1
        };
        let mut backoff = Duration::from_millis(50);
        let mut attempt = 1;
        loop {
            match self.http.call::<AppendJson>(Method::POST, &path, Some(&body)).await {
                Err(error) if error.is_transient() && attempt < attempts => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// An appender to the streams of `topic` that gathers concurrent callers' appends into
    /// shared requests (`POST /v1/streams/{topic}`), as a Kafka producer gathers records: each
    /// append keeps its own expected version and outcome, and the server syncs each partition
    /// once per request. Worth it when many tasks append at once; a lone caller gets the same
    /// latency as [`Client::append`]. Call it within a Tokio runtime (it starts a task).
    pub fn stream_appender(&self, topic: &str, options: AppenderOptions) -> StreamAppender {
        StreamAppender::start(self.http.clone(), topic, options)
    }

    /// Reads `stream` of `topic` (see [`ReadOptions`]). Follow [`StreamSlice::next`] for the
    /// next page.
    ///
    /// # Errors
    /// [`STREAM_NOT_FOUND`] (1022) for a stream without events or soft-deleted; 1008 for a
    /// count out of range; 1001 unknown topic; transport failures.
    pub async fn read_stream(
        &self,
        topic: &str,
        stream: &str,
        options: &ReadOptions,
    ) -> Result<StreamSlice, ClientError> {
        let path = format!("{}{}", stream_path(topic, stream), options.query());
        let slice: SliceJson = self.http.call(Method::GET, &path, None::<&()>).await?;
        let url = format!("{}{path}", self.http.base());
        Ok(StreamSlice {
            stream: slice.stream,
            version: u64::try_from(slice.version).ok(),
            first_visible: slice.first_visible,
            next: slice.next,
            events: slice
                .events
                .into_iter()
                .map(|event| event.into_event(&url))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The newest snapshot of `stream`, if one was saved.
    ///
    /// # Errors
    /// 1001 unknown topic; transport failures.
    pub async fn load_snapshot(
        &self,
        topic: &str,
        stream: &str,
    ) -> Result<Option<Snapshot>, ClientError> {
        let path = format!("{}/snapshot", stream_path(topic, stream));
        match self.http.call::<SnapshotJson>(Method::GET, &path, None::<&()>).await {
            Ok(snapshot) => {
                let url = format!("{}{path}", self.http.base());
                Ok(Some(Snapshot {
                    version: snapshot.version,
                    data: payload(snapshot.data, snapshot.data_base64, &url)?,
                    timestamp_ms: snapshot.timestamp,
                }))
            }
            Err(error) if error.code() == Some(SNAPSHOT_NOT_FOUND) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Saves `state` (as JSON) as the newest snapshot of `stream`, folding its events up to and
    /// including `version`.
    ///
    /// # Errors
    /// 1022 for a stream without events; 1008 for a version past the stream's or a snapshot
    /// over the server's limit (8 MiB); transport failures.
    pub async fn save_snapshot<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        stream: &str,
        version: u64,
        state: &T,
    ) -> Result<(), ClientError> {
        let body = json!({"version": version, "data": serde_json::to_value(state)?});
        self.put_snapshot(topic, stream, &body).await
    }

    /// As [`Client::save_snapshot`], with the state as bytes.
    ///
    /// # Errors
    /// As [`Client::save_snapshot`].
    pub async fn save_snapshot_bytes(
        &self,
        topic: &str,
        stream: &str,
        version: u64,
        state: &[u8],
    ) -> Result<(), ClientError> {
        let body = json!({"version": version, "data_base64": BASE64.encode(state)});
        self.put_snapshot(topic, stream, &body).await
    }

    async fn put_snapshot(
        &self,
        topic: &str,
        stream: &str,
        body: &Value,
    ) -> Result<(), ClientError> {
        let path = format!("{}/snapshot", stream_path(topic, stream));
        self.http.call_raw(Method::PUT, &path, Some(body)).await.map(drop)
    }

    /// The metadata of `stream`.
    ///
    /// # Errors
    /// 1001 unknown topic; transport failures.
    pub async fn stream_metadata(
        &self,
        topic: &str,
        stream: &str,
    ) -> Result<StreamMetadata, ClientError> {
        let path = format!("{}/metadata", stream_path(topic, stream));
        self.http.call(Method::GET, &path, None::<&()>).await
    }

    /// Replaces the metadata of `stream` (`deleted_at` is ignored); returns it as stored.
    ///
    /// # Errors
    /// 1008 for a value out of range (`max_count` 0); 1001 unknown topic; transport failures.
    pub async fn set_stream_metadata(
        &self,
        topic: &str,
        stream: &str,
        metadata: &StreamMetadata,
    ) -> Result<StreamMetadata, ClientError> {
        let path = format!("{}/metadata", stream_path(topic, stream));
        let body = StreamMetadata { deleted_at: None, ..*metadata };
        self.http.call(Method::PUT, &path, Some(&body)).await
    }

    /// Soft-deletes `stream` if its version is `expected` (`Any`, `StreamExists` or `Exact`):
    /// reads then find no stream, and an append with [`ExpectedVersion::NoStream`] brings the
    /// name back from the next version. Returns the version it was deleted at.
    ///
    /// # Errors
    /// [`ClientError::WrongExpectedVersion`]; 1022 for a stream without events or deleted
    /// already; transport failures.
    pub async fn delete_stream(
        &self,
        topic: &str,
        stream: &str,
        expected: ExpectedVersion,
    ) -> Result<u64, ClientError> {
        let path = format!("{}?expected_version={expected}", stream_path(topic, stream));
        let deleted: DeletedJson = self.http.call(Method::DELETE, &path, None::<&()>).await?;
        Ok(deleted.deleted_at)
    }

    /// A [`Repository`] of aggregates `A` in `topic`, one stream per aggregate.
    pub fn repository<A: Aggregate>(&self, topic: &str) -> Repository<A> {
        Repository::new(self, topic)
    }

    /// A [`Projection`] of every stream of `topic` into `store`.
    pub fn projection<S: ProjectionStore>(&self, topic: &str, store: S) -> Projection<S> {
        Projection::new(self, topic, store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_are_escaped_in_paths() {
        assert_eq!(stream_path("t", "order/1 a"), "/v1/streams/t/order%2F1%20a");
    }
}
