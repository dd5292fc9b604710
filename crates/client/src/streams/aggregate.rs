//! Aggregates over streams: an [`Aggregate`] is state folded from its events, which decides
//! what new events a command causes. A [`Repository`] keeps one aggregate per stream of a
//! topic and runs commands with optimistic concurrency:
//!
//! 1. load: the newest snapshot (if snapshots are on), then only the events after it, page by
//!    page, checking that versions follow on without a gap;
//! 2. decide: [`Aggregate::handle`] on the loaded state;
//! 3. append the new events expecting exactly the loaded version (no stream for a new one).
//!
//! If another writer appended in between, the append is refused with a conflict and nothing is
//! written; the repository reads the events it missed, decides again, and appends again, up to
//! [`CONFLICT_RETRIES_DEFAULT`] times (configurable), then returns the conflict. So a command
//! is applied at most once, and exactly once when `execute` returns `Ok`. Every event gets a
//! fresh id, so an append retried after a lost response is recognised by the server instead of
//! being appended twice (see [`Client::append`]).

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::codec::random_u64;
use super::{
    AppenderOptions, EventData, ExpectedVersion, ReadOptions, StreamAppender, VersionConflict,
    STREAM_NOT_FOUND,
};
use crate::http::ClientError;
use crate::Client;

/// How many times [`Repository::execute`] reloads and decides again after a conflict, unless
/// set with [`Repository::conflict_retries`].
pub const CONFLICT_RETRIES_DEFAULT: u32 = 10;
/// The longest pause before a retry after a conflict (each pause is random, up to
/// 1 ms doubling per attempt, to spread writers racing for one stream).
const CONFLICT_PAUSE_MAX: Duration = Duration::from_millis(64);

/// State rebuilt from its events, which decides what a command does.
///
/// Events are stored as the serde JSON of the whole [`Aggregate::Event`] value (so any serde
/// layout round-trips: externally or internally tagged enums, structs), with
/// [`Aggregate::event_type`] as their CloudEvents `type` for consumers to route on.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use sluice_client::Aggregate;
///
/// #[derive(Default, Serialize, Deserialize)]
/// struct Account { balance: u64 }
///
/// #[derive(Serialize, Deserialize)]
/// enum AccountEvent { Deposited { amount: u64 }, Withdrawn { amount: u64 } }
///
/// enum AccountCommand { Deposit(u64), Withdraw(u64) }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("insufficient funds")]
/// struct Insufficient;
///
/// impl Aggregate for Account {
///     type Event = AccountEvent;
///     type Command = AccountCommand;
///     type Error = Insufficient;
///
///     fn event_type(event: &AccountEvent) -> &str {
///         match event {
///             AccountEvent::Deposited { .. } => "Deposited",
///             AccountEvent::Withdrawn { .. } => "Withdrawn",
///         }
///     }
///
///     fn apply(&mut self, event: &AccountEvent) {
///         match event {
///             AccountEvent::Deposited { amount } => self.balance += amount,
///             AccountEvent::Withdrawn { amount } => self.balance -= amount,
///         }
///     }
///
///     fn handle(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, Insufficient> {
///         match *command {
///             AccountCommand::Deposit(amount) => Ok(vec![AccountEvent::Deposited { amount }]),
///             AccountCommand::Withdraw(amount) if amount > self.balance => Err(Insufficient),
///             AccountCommand::Withdraw(amount) => Ok(vec![AccountEvent::Withdrawn { amount }]),
///         }
///     }
/// }
/// ```
pub trait Aggregate: Default + Send + Sync + 'static {
    /// What happened. Stored as JSON.
    type Event: Serialize + DeserializeOwned + Send + Sync;
    /// What is asked of it.
    type Command: Send + Sync;
    /// Why a command is refused.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The event's type (CloudEvents `type`, 1 to 256 bytes), e.g. `Deposited` or
    /// `com.example.account.deposited`.
    fn event_type(event: &Self::Event) -> &str;

    /// Folds one event into the state. Must not fail: the event already happened.
    fn apply(&mut self, event: &Self::Event);

    /// Decides what `command` causes, from the current state: the events to append (none is
    /// fine: nothing is appended), or a refusal. Must be free of side effects, as it may run
    /// again after a conflict.
    ///
    /// # Errors
    /// The command is not allowed in this state.
    fn handle(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;
}

/// An aggregate as loaded from its stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// The version of the last event folded into it (`None`: a new stream, or one soft-deleted
    /// and not begun again).
    pub version: Option<u64>,
    /// The version of the snapshot the load started from, if any.
    pub snapshot_version: Option<u64>,
    /// Events read and folded on top of the snapshot (or from the start).
    pub events_folded: u64,
}

impl<A: Default> Loaded<A> {
    fn empty() -> Self {
        Self { state: A::default(), version: None, snapshot_version: None, events_folded: 0 }
    }
}

/// What [`Repository::execute`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Executed<A: Aggregate> {
    /// The state after the command's events.
    pub state: A,
    /// The stream's version after them (as loaded, if the command caused no events).
    pub version: Option<u64>,
    /// The events appended.
    pub events: Vec<A::Event>,
    /// Decisions made: 1, plus one per conflict.
    pub attempts: u32,
    /// The version of the snapshot saved after the append, if one was (a failed save is not an
    /// error of the command: the events are stored, and the next command tries again).
    pub snapshot: Option<u64>,
}

/// Why a command was not applied (or a load failed).
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError<E> {
    /// [`Aggregate::handle`] refused the command. Nothing was appended.
    #[error("the command was refused: {0}")]
    Rejected(E),
    /// Every attempt met a stream another writer had moved on: nothing was appended.
    #[error("stream {stream} kept changing under the command ({attempts} attempts); the last conflict: {conflict}")]
    Conflict {
        /// The stream.
        stream: String,
        /// Decisions made, each refused.
        attempts: u32,
        /// The last refusal.
        conflict: Box<VersionConflict>,
    },
    /// A stored event or snapshot does not decode as this aggregate's.
    #[error("{what} of stream {stream} does not decode: {source}")]
    Decode {
        /// The stream.
        stream: String,
        /// Which: `event 5` or `the snapshot at version 9`.
        what: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// Events the state needs are not visible (the stream was truncated, or its `max_count` or
    /// `max_age_ms` hides them, past the newest snapshot): the state cannot be rebuilt.
    #[error("stream {stream} does not show event {expected} (found {found:?}): truncated past its newest snapshot?")]
    Gap {
        /// The stream.
        stream: String,
        /// The version the fold needed next.
        expected: u64,
        /// The version found instead (`None`: none visible).
        found: Option<u64>,
    },
    /// A request failed (not a conflict).
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// How a fold from a version ended.
enum Fold {
    Done,
    /// The stream has no events, or is soft-deleted.
    NotFound,
    Gap {
        expected: u64,
        found: Option<u64>,
    },
}

/// Snapshot encoding, set by [`Repository::snapshot_every`] (where `A` is serde).
struct Snapshots<A> {
    every: u64,
    encode: fn(&A) -> Result<Value, serde_json::Error>,
    decode: fn(&[u8]) -> Result<A, serde_json::Error>,
}

impl<A> Clone for Snapshots<A> {
    fn clone(&self) -> Self {
        Self { every: self.every, encode: self.encode, decode: self.decode }
    }
}

/// Aggregates `A` in one topic, one per stream. Cheap to clone.
pub struct Repository<A: Aggregate> {
    client: Client,
    topic: String,
    conflict_retries: u32,
    snapshots: Option<Snapshots<A>>,
    appender: Option<StreamAppender>,
}

impl<A: Aggregate> Clone for Repository<A> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            topic: self.topic.clone(),
            conflict_retries: self.conflict_retries,
            snapshots: self.snapshots.clone(),
            appender: self.appender.clone(),
        }
    }
}

impl<A: Aggregate> std::fmt::Debug for Repository<A> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Repository")
            .field("topic", &self.topic)
            .field("conflict_retries", &self.conflict_retries)
            .field("snapshot_every", &self.snapshots.as_ref().map(|snapshots| snapshots.every))
            .field("gathers_appends", &self.appender.is_some())
            .finish_non_exhaustive()
    }
}

impl<A: Aggregate> Repository<A> {
    /// Aggregates in `topic` of the server `client` talks to; no snapshots, retries
    /// [`CONFLICT_RETRIES_DEFAULT`].
    pub fn new(client: &Client, topic: &str) -> Self {
        Self {
            client: client.clone(),
            topic: topic.to_owned(),
            conflict_retries: CONFLICT_RETRIES_DEFAULT,
            snapshots: None,
            appender: None,
        }
    }

    /// Sends the appends of commands executed at the same time (by tasks sharing clones of
    /// this repository) gathered into shared requests, through one [`StreamAppender`], rather
    /// than one request each. Each command still appends with its own expected version and
    /// gets its own outcome. Call it within a Tokio runtime (it starts the appender's task).
    pub fn gather_appends(mut self, options: AppenderOptions) -> Self {
        self.appender = Some(self.client.stream_appender(&self.topic, options));
        self
    }

    /// How many times a command is decided again after a conflict before the conflict is
    /// returned (0: never).
    pub fn conflict_retries(mut self, retries: u32) -> Self {
        self.conflict_retries = retries;
        self
    }

    /// Uses snapshots: loads start from the newest snapshot, and a command whose append leaves
    /// at least `events` events (at least 1) past the snapshot it loaded saves a new one of the
    /// state as JSON. A snapshot older than a soft delete is ignored.
    pub fn snapshot_every(mut self, events: u64) -> Self
    where
        A: Serialize + DeserializeOwned,
    {
        self.snapshots = Some(Snapshots {
            every: events.max(1),
            encode: |state| serde_json::to_value(state),
            decode: |bytes| serde_json::from_slice(bytes),
        });
        self
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Loads the aggregate of `stream`: the newest snapshot (if snapshots are on) and the
    /// events after it. A stream without events, or soft-deleted, loads as the default state
    /// at no version.
    ///
    /// # Errors
    /// [`RepositoryError::Decode`], [`RepositoryError::Gap`], [`RepositoryError::Client`].
    pub async fn load(&self, stream: &str) -> Result<Loaded<A>, RepositoryError<A::Error>> {
        let snapshot = self.load_snapshot(stream).await?;
        let mut loaded = snapshot.unwrap_or_else(Loaded::empty);
        let next = loaded.version.map_or(0, |version| version + 1);
        match self.fold_from(stream, &mut loaded, next).await? {
            Fold::Done => Ok(loaded),
            Fold::NotFound => Ok(Loaded::empty()),
            Fold::Gap { expected, found } => {
                // A stream soft-deleted and begun again shows only its new life: what was folded
                // (a snapshot) belongs to the old one.
                let metadata = self.client.stream_metadata(&self.topic, stream).await?;
                let gap = RepositoryError::Gap { stream: stream.to_owned(), expected, found };
                let Some(deleted_at) = metadata.deleted_at.filter(|at| expected <= at + 1) else {
                    return Err(gap);
                };
                let mut fresh = Loaded::empty();
                match self.fold_from(stream, &mut fresh, deleted_at + 1).await? {
                    Fold::Done => Ok(fresh),
                    Fold::NotFound => Ok(Loaded::empty()),
                    Fold::Gap { expected, found } => {
                        Err(RepositoryError::Gap { stream: stream.to_owned(), expected, found })
                    }
                }
            }
        }
    }

    /// Runs `command` on the aggregate of `stream`: loads it, decides, and appends the events
    /// expecting the loaded version; after a conflict, reads what it missed and decides again
    /// (see [`Repository::conflict_retries`]). Saves a snapshot if one is due.
    ///
    /// # Errors
    /// [`RepositoryError::Rejected`] (nothing appended), [`RepositoryError::Conflict`] after the
    /// retries (nothing appended), and the errors of [`Repository::load`]. A transport failure
    /// that outlasted [`Client::append`]'s retries leaves the command applied or not: execute
    /// it again only if it is idempotent in your domain.
    pub async fn execute(
        &self,
        stream: &str,
        command: &A::Command,
    ) -> Result<Executed<A>, RepositoryError<A::Error>> {
        let mut loaded = self.load(stream).await?;
        let mut attempts = 1;
        loop {
            let events = loaded.state.handle(command).map_err(RepositoryError::Rejected)?;
            if events.is_empty() {
                let version = loaded.version;
                return Ok(Executed {
                    state: loaded.state,
                    version,
                    events,
                    attempts,
                    snapshot: None,
                });
            }
            let data = events
                .iter()
                .map(|event| EventData::json(A::event_type(event), event))
                .collect::<Result<Vec<_>, _>>()?;
            let expected = ExpectedVersion::from_version(loaded.version);
            let appended = match &self.appender {
                Some(appender) => appender.append(stream, expected, &data).await,
                None => self.client.append(&self.topic, stream, expected, &data).await,
            };
            match appended {
                Ok(appended) => {
                    for event in &events {
                        loaded.state.apply(event);
                    }
                    let snapshot = self.snapshot_if_due(stream, &loaded, appended.version).await;
                    return Ok(Executed {
                        state: loaded.state,
                        version: appended.version,
                        events,
                        attempts,
                        snapshot,
                    });
                }
                Err(ClientError::WrongExpectedVersion(conflict)) => {
                    if attempts > self.conflict_retries {
                        return Err(RepositoryError::Conflict {
                            stream: stream.to_owned(),
                            attempts,
                            conflict,
                        });
                    }
                    let ceiling =
                        Duration::from_millis(1 << attempts.min(16)).min(CONFLICT_PAUSE_MAX);
                    let pause = random_u64() % (ceiling.as_micros() as u64).max(1);
                    tokio::time::sleep(Duration::from_micros(pause)).await;
                    attempts += 1;
                    loaded = self.catch_up(stream, loaded).await?;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// The newest snapshot as a loaded state, if snapshots are on and there is one.
    async fn load_snapshot(
        &self,
        stream: &str,
    ) -> Result<Option<Loaded<A>>, RepositoryError<A::Error>> {
        let Some(snapshots) = &self.snapshots else { return Ok(None) };
        let Some(snapshot) = self.client.load_snapshot(&self.topic, stream).await? else {
            return Ok(None);
        };
        let state =
            (snapshots.decode)(&snapshot.data).map_err(|source| RepositoryError::Decode {
                stream: stream.to_owned(),
                what: format!("the snapshot at version {}", snapshot.version),
                source,
            })?;
        Ok(Some(Loaded {
            state,
            version: Some(snapshot.version),
            snapshot_version: Some(snapshot.version),
            events_folded: 0,
        }))
    }

    /// `loaded` brought up to date: the events after its version, or a full load if those do
    /// not follow on (the stream was deleted meanwhile, say).
    async fn catch_up(
        &self,
        stream: &str,
        mut loaded: Loaded<A>,
    ) -> Result<Loaded<A>, RepositoryError<A::Error>> {
        let Some(version) = loaded.version else { return self.load(stream).await };
        match self.fold_from(stream, &mut loaded, version + 1).await? {
            Fold::Done => Ok(loaded),
            Fold::NotFound | Fold::Gap { .. } => self.load(stream).await,
        }
    }

    /// Reads the events from version `next` on, page by page, and folds them into `loaded`,
    /// checking that each version follows the one before.
    async fn fold_from(
        &self,
        stream: &str,
        loaded: &mut Loaded<A>,
        mut next: u64,
    ) -> Result<Fold, RepositoryError<A::Error>> {
        let mut from = next;
        loop {
            let options = ReadOptions::forward().from(from);
            let slice = match self.client.read_stream(&self.topic, stream, &options).await {
                Err(error) if error.code() == Some(STREAM_NOT_FOUND) => return Ok(Fold::NotFound),
                other => other?,
            };
            for recorded in &slice.events {
                if recorded.version != next {
                    return Ok(Fold::Gap { expected: next, found: Some(recorded.version) });
                }
                let event: A::Event = serde_json::from_slice(&recorded.data).map_err(|source| {
                    RepositoryError::Decode {
                        stream: stream.to_owned(),
                        what: format!("event {}", recorded.version),
                        source,
                    }
                })?;
                loaded.state.apply(&event);
                loaded.version = Some(recorded.version);
                loaded.events_folded += 1;
                next += 1;
            }
            // Events exist from `next` on but none is visible; or the stream is behind what was
            // folded (its events expired and it began again at 0 under a newer snapshot).
            let hidden = slice.version.is_some_and(|version| version >= next);
            let behind = slice.version.map_or(0, |version| version + 1) < next;
            if slice.events.is_empty() && (hidden || behind) {
                return Ok(Fold::Gap { expected: next, found: None });
            }
            match slice.next {
                Some(page) => from = page,
                None => return Ok(Fold::Done),
            }
        }
    }

    /// Saves a snapshot of `loaded` (the state at `version`) if snapshots are on and due.
    async fn snapshot_if_due(
        &self,
        stream: &str,
        loaded: &Loaded<A>,
        version: Option<u64>,
    ) -> Option<u64> {
        let snapshots = self.snapshots.as_ref()?;
        let version = version?;
        let past_snapshot =
            (version + 1).saturating_sub(loaded.snapshot_version.map_or(0, |at| at + 1));
        if past_snapshot < snapshots.every {
            return None;
        }
        let state = (snapshots.encode)(&loaded.state).ok()?;
        self.client.save_snapshot(&self.topic, stream, version, &state).await.ok()?;
        Some(version)
    }
}
