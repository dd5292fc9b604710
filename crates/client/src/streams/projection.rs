//! Projections: a topic's events folded into a read model, each exactly once.
//!
//! A [`Projection`] subscribes to every stream of a topic from the checkpoint its
//! [`ProjectionStore`] holds (the start if none) and hands the store each event, in order, with
//! the position just after it. Exactly-once comes from the store, not the runner: its
//! [`ProjectionStore::apply`] must change the read model and record the position in one
//! transaction, and [`ProjectionStore::checkpoint`] must return the last recorded position.
//! Then an event is applied if and only if its position is recorded, and since a run resumes
//! from the recorded position, a crash or stop at any point neither applies an event twice nor
//! skips one. A store that writes the model and the checkpoint separately gets at-least-once
//! (checkpoint after) or at-most-once (checkpoint before) instead.
//!
//! Run one runner per store at a time: two runners on one store would both apply each event
//! (unless the store's `apply` refuses a position at or behind the one it holds).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use serde::Deserialize;

use super::subscription::{TopicFrom, TopicPosition};
use super::RecordedEvent;
use crate::http::ClientError;
use crate::worker::percent_encode;
use crate::worker::BoxError;
use crate::Client;

/// How long [`Projection::catch_up`] waits for another event, when its position has not yet
/// reached the topic's end, before it looks at the records in between: a partition may end in
/// records that are not events (soft-delete tombstones, plain records), which move no position.
pub const CATCH_UP_QUIET: Duration = Duration::from_millis(250);
/// Records asked for per page when [`Projection::catch_up`] looks for events past its position.
const CHECK_PAGE_RECORDS: u32 = 10_000;
/// The server's code for an offset before the log start or past the end.
const OFFSET_OUT_OF_RANGE: u16 = 1007;
/// Headers that mark a record as a stream event (and not a soft delete's tombstone).
const VERSION_HEADER: &str = "sluice-stream-version";
const DELETED_HEADER: &str = "sluice-stream-deleted";

/// Where a projection keeps its read model and its checkpoint. Implement it over your
/// database, with `apply` as one transaction (see the module docs of
/// [`crate::streams`] and [`Projection`]).
pub trait ProjectionStore: Send + Sync {
    /// The position recorded by the last successful [`ProjectionStore::apply`], or `None` if
    /// nothing was applied yet.
    ///
    /// # Errors
    /// The store could not answer; the run stops before subscribing.
    fn checkpoint(&self) -> impl Future<Output = Result<Option<TopicPosition>, BoxError>> + Send;

    /// Applies `event` to the read model and records `position` (just after the event) as the
    /// checkpoint, in one transaction: both or neither.
    ///
    /// # Errors
    /// The transaction failed and recorded nothing; the run stops with the error, and the next
    /// run starts again at this event.
    fn apply(
        &self,
        event: &RecordedEvent,
        position: &TopicPosition,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// One store shared by a projection and, say, the code that queries the read model.
impl<S: ProjectionStore> ProjectionStore for Arc<S> {
    fn checkpoint(&self) -> impl Future<Output = Result<Option<TopicPosition>, BoxError>> + Send {
        S::checkpoint(self)
    }

    fn apply(
        &self,
        event: &RecordedEvent,
        position: &TopicPosition,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        S::apply(self, event, position)
    }
}

/// What one run of a projection did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProjectionReport {
    /// Events applied in this run.
    pub applied: u64,
    /// The checkpoint when the run stopped (`None`: nothing applied ever).
    pub position: Option<TopicPosition>,
    /// [`Projection::catch_up`] only: whether it stopped because it had caught up.
    pub caught_up: bool,
}

/// Why a projection run stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The store failed; the event it was given was not applied.
    #[error("the projection store failed: {0}")]
    Store(#[source] BoxError),
    /// The subscription failed (the connection ended, the topic is gone, ...).
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// A runner folding topic `topic` into a [`ProjectionStore`]. Each run subscribes from the
/// store's checkpoint; stop it with [`Projection::run_until`], [`Projection::run_events`],
/// [`Projection::catch_up`], or by dropping the run's future (between two applies, or during
/// one if the store's transaction is itself cancel-safe).
///
/// ```no_run
/// use std::sync::Mutex;
/// use sluice_client::streams::{ProjectionStore, RecordedEvent, TopicPosition};
/// use sluice_client::worker::BoxError;
///
/// #[derive(Default)]
/// struct Counts {
///     // The read model and its checkpoint, under one lock: one "transaction".
///     inner: Mutex<(u64, Option<TopicPosition>)>,
/// }
///
/// impl ProjectionStore for Counts {
///     async fn checkpoint(&self) -> Result<Option<TopicPosition>, BoxError> {
///         Ok(self.inner.lock().map_err(|_| "poisoned")?.1.clone())
///     }
///
///     async fn apply(&self, _event: &RecordedEvent, position: &TopicPosition) -> Result<(), BoxError> {
///         let mut inner = self.inner.lock().map_err(|_| "poisoned")?;
///         inner.0 += 1;
///         inner.1 = Some(position.clone());
///         Ok(())
///     }
/// }
///
/// # async fn run() -> Result<(), sluice_client::streams::ProjectionError> {
/// let client = sluice_client::Client::new("http://127.0.0.1:8080");
/// let projection = client.projection("accounts", Counts::default());
/// let report = projection.catch_up().await?;
/// println!("applied {}, now at {:?}", report.applied, report.position);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Projection<S> {
    client: Client,
    topic: String,
    store: S,
}

#[derive(Deserialize)]
struct FetchJson {
    records: Vec<FetchedRecord>,
    next_offset: u64,
}

#[derive(Deserialize)]
struct FetchedRecord {
    offset: u64,
    /// Present if the key is UTF-8 (a topic subscription skips events with other keys).
    key: Option<String>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, Option<String>>,
}

impl FetchedRecord {
    fn is_event(&self) -> bool {
        self.key.is_some()
            && self.headers.contains_key(VERSION_HEADER)
            && !self.headers.contains_key(DELETED_HEADER)
    }
}

impl<S: ProjectionStore> Projection<S> {
    /// A projection of `topic` into `store`.
    pub fn new(client: &Client, topic: &str, store: S) -> Self {
        Self { client: client.clone(), topic: topic.to_owned(), store }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store, taking the projection apart.
    pub fn into_store(self) -> S {
        self.store
    }

    /// Applies events as they come, until `stop` completes (an apply in progress finishes
    /// first) or something fails.
    ///
    /// # Errors
    /// [`ProjectionError::Store`], or [`ProjectionError::Client`] when the subscription cannot
    /// be made or ends (the server went away, the topic was deleted).
    pub async fn run_until(
        &self,
        stop: impl Future<Output = ()>,
    ) -> Result<ProjectionReport, ProjectionError> {
        self.run(std::pin::pin!(stop), None, false).await
    }

    /// Applies the next `count` events (waiting for them to be appended if need be), then
    /// stops.
    ///
    /// # Errors
    /// As [`Projection::run_until`].
    pub async fn run_events(&self, count: u64) -> Result<ProjectionReport, ProjectionError> {
        self.run(std::pin::pin!(std::future::pending()), Some(count), false).await
    }

    /// Applies events until it has caught up with the topic as it was when the run began: every
    /// event below each partition's end then is applied. That is when the position reaches the
    /// ends; or, where a partition ends in records that are not events (its position stops
    /// short), when no event came for [`CATCH_UP_QUIET`] and the records between the position
    /// and the end hold no event. Events appended meanwhile may or may not be applied.
    ///
    /// # Errors
    /// As [`Projection::run_until`].
    pub async fn catch_up(&self) -> Result<ProjectionReport, ProjectionError> {
        self.run(std::pin::pin!(std::future::pending()), None, true).await
    }

    async fn run(
        &self,
        mut stop: std::pin::Pin<&mut impl Future<Output = ()>>,
        events_max: Option<u64>,
        catch_up: bool,
    ) -> Result<ProjectionReport, ProjectionError> {
        let checkpoint = self.store.checkpoint().await.map_err(ProjectionError::Store)?;
        let mut report =
            ProjectionReport { applied: 0, position: checkpoint.clone(), caught_up: false };
        let target = if catch_up { Some(self.ends().await?.1) } else { None };
        let done = |report: &ProjectionReport| {
            let at = report.position.clone().unwrap_or_default();
            events_max.is_some_and(|max| report.applied >= max)
                || target.as_ref().is_some_and(|target| at.covers(target))
        };
        if done(&report) {
            report.caught_up = catch_up;
            return Ok(report);
        }
        let from = checkpoint.map_or(TopicFrom::Start, TopicFrom::Position);
        let mut subscription = tokio::select! {
            biased;
            () = stop.as_mut() => return Ok(report),
            subscription = self.client.subscribe_topic(&self.topic, from) => subscription?,
        };
        loop {
            let received = tokio::select! {
                biased;
                () = stop.as_mut() => return Ok(report),
                received = subscription.next() => received?,
                () = tokio::time::sleep(CATCH_UP_QUIET), if catch_up => {
                    let at = report.position.clone().unwrap_or_default();
                    if let Some(target) = &target {
                        if self.no_events_between(&at, target).await? {
                            report.caught_up = true;
                            return Ok(report);
                        }
                    }
                    continue;
                }
            };
            self.store
                .apply(&received.event, &received.position)
                .await
                .map_err(ProjectionError::Store)?;
            report.applied += 1;
            report.position = Some(received.position);
            if done(&report) {
                report.caught_up = catch_up;
                return Ok(report);
            }
        }
    }

    /// Every partition's start (log start offset) and end (high watermark) now.
    async fn ends(&self) -> Result<(TopicPosition, TopicPosition), ClientError> {
        let topic = self.client.describe_topic(&self.topic).await?;
        let partitions = &topic.partition_offsets;
        Ok((
            TopicPosition::new(partitions.iter().map(|p| (p.partition, p.log_start_offset))),
            TopicPosition::new(partitions.iter().map(|p| (p.partition, p.high_watermark))),
        ))
    }

    /// Whether no stream event lies between `at` and `target` in any partition (reading the
    /// records in between, which are few unless the topic mixes plain records with events).
    async fn no_events_between(
        &self,
        at: &TopicPosition,
        target: &TopicPosition,
    ) -> Result<bool, ClientError> {
        for &(partition, end) in target.offsets() {
            let mut offset = at.offset(partition);
            while offset < end {
                let path = format!(
                    "/v1/topics/{}/partitions/{partition}/records?offset={offset}&max_records={CHECK_PAGE_RECORDS}",
                    percent_encode(&self.topic)
                );
                let page =
                    match self.client.http.call::<FetchJson>(Method::GET, &path, None::<&()>).await
                    {
                        Ok(page) => page,
                        // Retention removed the start of the range: look from the log start.
                        Err(error) if error.code() == Some(OFFSET_OUT_OF_RANGE) => {
                            let start = self.ends().await?.0.offset(partition);
                            if start <= offset {
                                return Err(error);
                            }
                            offset = start;
                            continue;
                        }
                        Err(error) => return Err(error),
                    };
                if page.records.iter().any(|record| record.offset < end && record.is_event()) {
                    return Ok(false);
                }
                if page.next_offset <= offset {
                    break;
                }
                offset = page.next_offset;
            }
        }
        Ok(true)
    }
}
