//! A queue-group [`Worker`]: leases messages, runs a [`Handler`] on each (up to `concurrency` at
//! once), and settles them: ack on success, nack on a transient failure or a panic (redelivered
//! after a delay or the group's backoff), reject on a permanent failure (dead-lettered at once).
//!
//! Invariants:
//! - A message is reported done (counted in the [`WorkerReport`], its handler slot freed) only
//!   after the server answered its ack, nack or reject. Settles are gathered into shared requests
//!   (see `settle.rs`), never delayed by a timer.
//! - The worker leases only as many messages as it has free handler slots, so no message waits
//!   leased inside the worker, held from the other workers, while its lease runs down. Acks of
//!   finished handlers ask for the next messages in the same request (`ack-next`), at most one
//!   per ack, for the slots they free; the lease loop asks for the slots that are free.
//! - While a handler runs, its lease is extended every half `ack_wait_ms` of the group.
//! - Nothing is dropped silently: a transport failure is retried with a capped backoff; a
//!   settle that cannot be delivered before the lease ends is abandoned, and the server
//!   redelivers the message. On shutdown, leasing stops, in-flight handlers finish and their
//!   settles are sent before [`Worker::run_until`] returns; messages an ack leased before the
//!   shutdown are handled too.
//!
//! Not done here: prefetching beyond `concurrency`, per-key parallelism limits (use the group's
//! `ordering: key`), and cancelling a running handler (its lease is extended until it returns).

mod dedup;
mod message;
mod settle;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;

use crate::http::{ClientError, Http};
use settle::{Action, Refill, Settled, Settler, RETRY_BACKOFF_INITIAL, RETRY_BACKOFF_MAX};

pub use dedup::{dedup, Dedup, MemoryStore, ProcessedStore, MEMORY_STORE_IDS_DEFAULT};
pub use message::{
    BoxError, Handler, HandlerError, Message, ERROR_TEXT_BYTES_MAX, NACK_DELAY_MAX,
    RECORD_ID_HEADER,
};
pub use settle::SETTLE_IDS_MAX;

use message::{panic_text, verdict, Leased, Verdict};

/// Most messages one lease request may ask for (the server's limit).
pub const BATCH_MAX: u32 = 1000;
/// Most handlers a worker runs at once.
pub const CONCURRENCY_MAX: usize = 10_000;
/// How long one lease request waits on the server for a message (a long poll).
pub const LEASE_WAIT: Duration = Duration::from_secs(5);
/// Shortest interval between extensions of one lease.
const EXTEND_INTERVAL_MIN: Duration = Duration::from_millis(5);

/// When a message counts as processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Guarantee {
    /// Ack after the handler returns `Ok`: a crash or failure before that redelivers the message,
    /// so a handler may see a message more than once (make it idempotent, or see
    /// [`dedup`]).
    #[default]
    AtLeastOnce,
    /// Ack on receipt, before the handler runs: a message is never handled twice, but one whose
    /// handler fails, panics or is interrupted by a crash is lost.
    AtMostOnce,
}

/// What a worker did, returned when it stops. Every count is of server-confirmed settles,
/// except `handled`, `panicked` and `failed_after_ack`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Messages the handler ran on.
    pub handled: u64,
    /// Messages acked.
    pub acked: u64,
    /// Messages nacked after a transient failure or a panic (redelivered, or dead-lettered by the
    /// group's `deliveries_max`).
    pub nacked: u64,
    /// Messages rejected after a permanent failure (dead-lettered).
    pub rejected: u64,
    /// Handlers that panicked.
    pub panicked: u64,
    /// Messages whose settle the server refused (the lease had expired: the message was
    /// redelivered or will be) or that could not reach it before the lease ended. Under
    /// at-most-once these messages were not handled.
    pub unsettled: u64,
    /// At-most-once only: handlers that failed or panicked after their message was acked; the
    /// message is not retried.
    pub failed_after_ack: u64,
}

impl WorkerReport {
    fn add(&mut self, other: &Self) {
        self.handled += other.handled;
        self.acked += other.acked;
        self.nacked += other.nacked;
        self.rejected += other.rejected;
        self.panicked += other.panicked;
        self.unsettled += other.unsettled;
        self.failed_after_ack += other.failed_after_ack;
    }
}

/// A worker of one queue group. Build it, then [`Worker::run`] or [`Worker::run_until`]:
///
/// ```no_run
/// use sluice_client::{HandlerError, Message, Worker};
///
/// # async fn run() -> Result<(), sluice_client::ClientError> {
/// let report = Worker::new("http://127.0.0.1:8080", "emails")
///     .concurrency(8)
///     .run_until(
///         |message: Message| async move {
///             let address: String = message.value_as()?;
///             send_email(&address).await.map_err(HandlerError::transient)
///         },
///         tokio::time::sleep(std::time::Duration::from_secs(3600)),
///     )
///     .await?;
/// println!("acked {}", report.acked);
/// # Ok(()) }
/// # async fn send_email(_: &str) -> Result<(), std::io::Error> { Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Worker {
    http: Http,
    group: String,
    member: String,
    concurrency: usize,
    batch: u32,
    guarantee: Guarantee,
}

#[derive(Deserialize)]
struct QueueJson {
    config: QueueConfigJson,
}

#[derive(Deserialize)]
struct QueueConfigJson {
    ack_wait_ms: u64,
}

impl Worker {
    /// A worker of queue group `group` on the server at `server` (e.g. `http://127.0.0.1:8080`).
    /// Connects when it runs.
    pub fn new(server: &str, group: &str) -> Self {
        Self::with_http(Http::new(server), group)
    }

    pub(crate) fn with_http(http: Http, group: &str) -> Self {
        Self {
            http,
            group: group.to_owned(),
            member: default_member(),
            concurrency: 1,
            batch: 100,
            guarantee: Guarantee::default(),
        }
    }

    /// The member name its leases are recorded under (the group's `member_max_in_flight` counts
    /// per name; up to 256 bytes). Default: `worker-<process id>-<start time>`, unique per worker.
    pub fn member(mut self, name: impl Into<String>) -> Self {
        self.member = name.into();
        self
    }

    /// Handlers run at once (1 to [`CONCURRENCY_MAX`]; default 1).
    pub fn concurrency(mut self, handlers: usize) -> Self {
        self.concurrency = handlers.clamp(1, CONCURRENCY_MAX);
        self
    }

    /// Most messages one lease request asks for (1 to [`BATCH_MAX`]; default 100). A request
    /// never asks for more than the free handler slots.
    pub fn batch(mut self, messages: u32) -> Self {
        self.batch = messages.clamp(1, BATCH_MAX);
        self
    }

    /// When messages are acked (default [`Guarantee::AtLeastOnce`]).
    pub fn guarantee(mut self, guarantee: Guarantee) -> Self {
        self.guarantee = guarantee;
        self
    }

    /// Runs `handler` on the group's messages until a non-transient error stops it. See
    /// [`Worker::run_until`].
    ///
    /// # Errors
    /// As [`Worker::run_until`].
    pub async fn run<H: Handler>(self, handler: H) -> Result<WorkerReport, ClientError> {
        self.run_until(handler, std::future::pending()).await
    }

    /// Runs `handler` on the group's messages until `shutdown` completes; then stops leasing,
    /// lets the running handlers finish, sends their settles, and returns what it did. A lease
    /// request still waiting on the server is dropped; any message the server leased to it is
    /// redelivered once its lease ends, as are the messages in hand if the returned future is
    /// dropped instead of shut down.
    ///
    /// # Errors
    /// The server refused a lease with a non-transient error (code 1017: the group does not
    /// exist; 1008: a bad member name), after the running handlers finished. Transport failures
    /// and 503s are retried with a backoff of up to 5 s, never returned.
    pub async fn run_until<H: Handler>(
        self,
        handler: H,
        shutdown: impl Future<Output = ()>,
    ) -> Result<WorkerReport, ClientError> {
        let mut shutdown = std::pin::pin!(shutdown);
        let Some(ack_wait) = self.ack_wait(shutdown.as_mut()).await? else {
            return Ok(WorkerReport::default());
        };
        let leasing = Arc::new(AtomicBool::new(true));
        let (refill, receiver) = mpsc::unbounded_channel();
        let waiting = Arc::new(AtomicUsize::new(0));
        let mut refills = Refills { receiver, waiting: Arc::clone(&waiting) };
        let refill = Refill {
            member: self.member.clone(),
            batch: self.batch,
            on: Arc::clone(&leasing),
            messages: refill,
            waiting,
        };
        let (settler, settler_task) =
            Settler::start(self.http.clone(), self.group.clone(), Some(refill));
        let context = Arc::new(Context { handler, settler, ack_wait, guarantee: self.guarantee });
        let mut running = JoinSet::new();
        let mut report = WorkerReport::default();
        let stopped =
            self.lease_loop(&context, &mut running, &mut report, &mut refills, shutdown).await;
        leasing.store(false, Ordering::Release);
        // Handlers finish; an ack sent before `leasing` was cleared may still bring messages,
        // which are ours to handle. The settler hands them over before it answers the ack, so
        // once no handler runs, none is on its way.
        loop {
            tokio::select! {
                Some(messages) = refills.recv() => start(&context, &mut running, messages),
                done = running.join_next() => match done {
                    Some(done) => report.add(&done.unwrap_or_else(|_| WorkerReport::default())),
                    None => match refills.try_recv() {
                        Some(messages) => start(&context, &mut running, messages),
                        None => break,
                    },
                },
            }
        }
        drop(context);
        let _ = settler_task.await;
        stopped.map(|()| report)
    }

    /// Leases and starts messages until shutdown (`Ok`) or a non-transient error, and starts
    /// those the settler leased with acks (`refills`) as they come.
    async fn lease_loop<H: Handler>(
        &self,
        context: &Arc<Context<H>>,
        running: &mut JoinSet<WorkerReport>,
        report: &mut WorkerReport,
        refills: &mut Refills,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), ClientError> {
        let mut backoff = RETRY_BACKOFF_INITIAL;
        let mut retry_at: Option<Instant> = None;
        let mut leasing: Option<Pin<Box<Lease<'_>>>> = None;
        loop {
            while let Some(done) = running.try_join_next() {
                report.add(&done.unwrap_or_else(|_| WorkerReport::default()));
            }
            // Read after the handlers that finished: the messages their acks brought are
            // counted by then. They may briefly outnumber the slots, until the handlers whose
            // acks brought them have returned.
            let held = running.len() + refills.waiting();
            let free = self.concurrency.saturating_sub(held);
            if leasing.is_none() && retry_at.is_none() && free > 0 {
                let max = self.batch.min(u32::try_from(free).unwrap_or(BATCH_MAX));
                leasing = Some(Box::pin(self.lease(max)));
            }
            tokio::select! {
                biased;
                () = shutdown.as_mut() => return Ok(()),
                Some(messages) = refills.recv() => start(context, running, messages),
                leased = async { leasing.as_mut().expect("checked").await }, if leasing.is_some() => {
                    leasing = None;
                    match leased {
                        Ok(messages) => {
                            backoff = RETRY_BACKOFF_INITIAL;
                            start(context, running, messages);
                        }
                        Err(error) if error.is_transient() => {
                            retry_at = Some(Instant::now() + backoff);
                            backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                        }
                        Err(error) => return Err(error),
                    }
                }
                () = tokio::time::sleep_until(retry_at.unwrap_or_else(far_future)), if retry_at.is_some() => {
                    retry_at = None;
                }
                Some(done) = running.join_next(), if leasing.is_none() => {
                    report.add(&done.unwrap_or_else(|_| WorkerReport::default()));
                }
            }
        }
    }

    async fn lease(&self, max: u32) -> Result<Vec<Message>, ClientError> {
        let path = format!(
            "/v1/queues/{}/messages?max={max}&wait_ms={}&member={}",
            self.group,
            LEASE_WAIT.as_millis(),
            percent_encode(&self.member)
        );
        let leased: Leased = self.http.call(Method::GET, &path, None::<&()>).await?;
        Ok(leased.messages.into_iter().map(Message::from).collect())
    }

    /// The group's `ack_wait_ms`, retrying transient failures; `None` if shut down first.
    async fn ack_wait(
        &self,
        mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<Option<Duration>, ClientError> {
        let path = format!("/v1/queues/{}", self.group);
        let mut backoff = RETRY_BACKOFF_INITIAL;
        loop {
            let described = tokio::select! {
                biased;
                () = shutdown.as_mut() => return Ok(None),
                described = self.http.call::<QueueJson>(Method::GET, &path, None::<&()>) => described,
            };
            match described {
                Ok(queue) => return Ok(Some(Duration::from_millis(queue.config.ack_wait_ms))),
                Err(error) if error.is_transient() => {
                    tokio::select! {
                        () = shutdown.as_mut() => return Ok(None),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                }
                Err(error) => return Err(error),
            }
        }
    }
}

/// The worker's end of the settler's [`Refill`].
struct Refills {
    receiver: mpsc::UnboundedReceiver<Vec<Message>>,
    waiting: Arc<AtomicUsize>,
}

impl Refills {
    async fn recv(&mut self) -> Option<Vec<Message>> {
        let messages = self.receiver.recv().await?;
        self.waiting.fetch_sub(messages.len(), Ordering::AcqRel);
        Some(messages)
    }

    fn try_recv(&mut self) -> Option<Vec<Message>> {
        let messages = self.receiver.try_recv().ok()?;
        self.waiting.fetch_sub(messages.len(), Ordering::AcqRel);
        Some(messages)
    }

    fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

/// A lease request in flight.
type Lease<'a> = dyn Future<Output = Result<Vec<Message>, ClientError>> + Send + 'a;

/// Starts a handler task per message.
fn start<H: Handler>(
    context: &Arc<Context<H>>,
    running: &mut JoinSet<WorkerReport>,
    messages: Vec<Message>,
) {
    let received = Instant::now();
    for message in messages {
        running.spawn(process(Arc::clone(context), message, received));
    }
}

/// What every message's task shares.
struct Context<H> {
    handler: H,
    settler: Settler,
    ack_wait: Duration,
    guarantee: Guarantee,
}

/// Handles and settles one message; its report counts only it.
async fn process<H: Handler>(
    context: Arc<Context<H>>,
    message: Message,
    received: Instant,
) -> WorkerReport {
    match context.guarantee {
        Guarantee::AtLeastOnce => process_at_least_once(context, message, received).await,
        Guarantee::AtMostOnce => process_at_most_once(context, message, received).await,
    }
}

async fn process_at_least_once<H: Handler>(
    context: Arc<Context<H>>,
    message: Message,
    received: Instant,
) -> WorkerReport {
    let id = message.delivery_id.clone();
    let mut report = WorkerReport { handled: 1, ..WorkerReport::default() };
    let mut lease_end = received + context.ack_wait;
    let outcome = {
        let mut handler = spawn_handler(&context, message);
        let interval = (context.ack_wait / 2).max(EXTEND_INTERVAL_MIN);
        let mut next_extend = Some(received + interval);
        loop {
            let extend_at = next_extend.unwrap_or_else(far_future);
            tokio::select! {
                joined = &mut handler => break joined,
                () = tokio::time::sleep_until(extend_at), if next_extend.is_some() => {
                    let sent = Instant::now();
                    next_extend = match context.settler.settle(&id, Action::Extend, lease_end).await {
                        Settled::Done => {
                            lease_end = sent + context.ack_wait;
                            Some(sent + interval)
                        }
                        // The lease is gone: the message is (or will be) redelivered, and this
                        // handler's settle will be refused. Let it finish anyway.
                        Settled::Refused { .. } | Settled::Unconfirmed => None,
                    };
                }
            }
        }
    };
    let outcome = outcome.map_err(|error| {
        report.panicked = 1;
        join_error_text(error)
    });
    let (action, count): (Action, fn(&mut WorkerReport)) = match verdict(outcome) {
        Verdict::Ack => (Action::Ack, |report| report.acked += 1),
        Verdict::Nack { delay_ms, error } => {
            (Action::Nack { delay_ms, error: Some(error) }, |report| report.nacked += 1)
        }
        Verdict::Reject { error } => {
            (Action::Reject { error: Some(error) }, |report| report.rejected += 1)
        }
    };
    match context.settler.finish(&id, action, lease_end).await {
        Settled::Done => count(&mut report),
        Settled::Refused { .. } | Settled::Unconfirmed => report.unsettled += 1,
    }
    report
}

async fn process_at_most_once<H: Handler>(
    context: Arc<Context<H>>,
    message: Message,
    received: Instant,
) -> WorkerReport {
    let id = message.delivery_id.clone();
    let mut report = WorkerReport::default();
    match context.settler.settle(&id, Action::Ack, received + context.ack_wait).await {
        Settled::Done => report.acked = 1,
        // Not acked: the message is not ours to handle; it is redelivered.
        Settled::Refused { .. } | Settled::Unconfirmed => {
            report.unsettled = 1;
            return report;
        }
    }
    report.handled = 1;
    match spawn_handler(&context, message).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => report.failed_after_ack = 1,
        Err(_) => {
            report.failed_after_ack = 1;
            report.panicked = 1;
        }
    }
    report
}

/// Runs the handler as its own task, so a panic is caught and reported rather than lost.
fn spawn_handler<H: Handler>(
    context: &Arc<Context<H>>,
    message: Message,
) -> tokio::task::JoinHandle<Result<(), HandlerError>> {
    let context = Arc::clone(context);
    tokio::spawn(async move { context.handler.handle(message).await })
}

fn join_error_text(error: JoinError) -> String {
    match error.try_into_panic() {
        Ok(payload) => panic_text(payload.as_ref()),
        Err(error) => error.to_string(),
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 24 * 60 * 60)
}

fn default_member() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static WORKERS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let index = WORKERS.fetch_add(1, Ordering::Relaxed);
    format!("worker-{}-{nanos:x}-{index}", std::process::id())
}

/// Percent-encodes a path segment or query value: everything but RFC 3986's unreserved
/// characters.
pub(crate) fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_are_percent_encoded_in_the_query() {
        assert_eq!(percent_encode("worker-1_a.b~"), "worker-1_a.b~");
        assert_eq!(percent_encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }

    #[test]
    fn options_are_clamped_to_their_limits() {
        let worker = Worker::new("127.0.0.1:1", "jobs").concurrency(0).batch(5000);
        assert_eq!((worker.concurrency, worker.batch), (1, BATCH_MAX));
        let worker = worker.concurrency(usize::MAX).batch(0);
        assert_eq!((worker.concurrency, worker.batch), (CONCURRENCY_MAX, 1));
        assert_ne!(default_member(), default_member(), "each worker has its own name");
    }

    #[tokio::test]
    async fn a_worker_shut_down_before_it_reached_the_server_returns_nothing_done() {
        let worker = Worker::new("127.0.0.1:9", "jobs");
        let report = worker
            .run_until(|_message: Message| async { Ok(()) }, std::future::ready(()))
            .await
            .unwrap();
        assert_eq!(report, WorkerReport::default());
    }
}
