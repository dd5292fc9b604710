//! [`StreamAppender`]: the appends of many concurrent callers gathered into
//! `POST /v1/streams/{topic}` requests, as a Kafka producer gathers records.
//!
//! Each caller awaits its own append, with its own expected version, and gets the same answer
//! [`crate::Client::append`] would give it. A background task puts whatever appends are
//! waiting into the next request, up to [`AppenderOptions::requests_in_flight`] requests at
//! once. The server checks and appends each on its own and syncs each partition once per
//! request, so under many concurrent writers one request and one sync per partition carry
//! many appends.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::{Appended, EventData, ExpectedVersion, StreamWrite, APPEND_ATTEMPTS_MAX};
use crate::http::{api_error, ClientError, Http};
use crate::worker::percent_encode;

/// Most appends in one request (the server's `APPEND_EACH_WRITES_MAX`).
pub const GATHERED_APPENDS_MAX: usize = 1000;
/// Most events in one request, over all its appends (the server's limit).
pub const GATHERED_EVENTS_MAX: usize = 10_000;
/// Most bytes of one request's body (the server's `REQUEST_BYTES_MAX`, 16 MiB). An append that
/// is larger alone is sent alone, and refused as it would be by [`crate::Client::append`].
pub const GATHERED_BODY_BYTES_MAX: usize = 16 * 1024 * 1024;
/// The body's bytes around its appends: `{"appends":[` and `]}`.
const BODY_OPEN: &[u8] = br#"{"appends":["#;
const BODY_CLOSE: &[u8] = b"]}";

/// How a [`StreamAppender`] gathers appends into requests.
#[derive(Debug, Clone, Copy)]
pub struct AppenderOptions {
    /// Requests sent and not yet answered, at most (0 counts as 1). Appends made meanwhile
    /// wait and go together in the next request (as Kafka's
    /// `max.in.flight.requests.per.connection`, 5).
    pub requests_in_flight: usize,
    /// Most appends in one request, clamped to 1 to [`GATHERED_APPENDS_MAX`].
    pub appends_per_request_max: usize,
    /// How long the first waiting append waits for others before its request is sent when a
    /// request slot is free. Zero (the default) sends at once: appends are gathered only while
    /// every slot is busy, so a lone caller pays no delay.
    pub linger: Duration,
    /// Appends that may wait for a request (0 counts as 1); `append` waits for room beyond it.
    pub queue_appends_max: usize,
}

impl Default for AppenderOptions {
    fn default() -> Self {
        Self {
            requests_in_flight: 5,
            appends_per_request_max: GATHERED_APPENDS_MAX,
            linger: Duration::ZERO,
            queue_appends_max: 10_000,
        }
    }
}

/// One caller's append, waiting for its request.
struct Waiting {
    /// The append as JSON (`{"stream", "expected_version", "events"}`), encoded once.
    body: Vec<u8>,
    events: usize,
    /// A repeat with the same ids is recognised by the server (events, exact or no-stream
    /// check), so it may be sent again after a transport failure.
    repeatable: bool,
    reply: oneshot::Sender<Result<Appended, ClientError>>,
}

/// Appends to the streams of one topic, gathered into requests (see the module's text). Clone
/// it to share it between tasks; the background task ends when every clone is dropped, after
/// answering what was sent.
#[derive(Debug, Clone)]
pub struct StreamAppender {
    queue: mpsc::Sender<Waiting>,
}

impl StreamAppender {
    pub(crate) fn start(http: Http, topic: &str, options: AppenderOptions) -> Self {
        let (queue, waiting) = mpsc::channel(options.queue_appends_max.max(1));
        let path = format!("/v1/streams/{}", percent_encode(topic));
        tokio::spawn(gather(http, path, options, waiting));
        Self { queue }
    }

    /// Appends `events` to `stream` if its version is `expected`, as [`crate::Client::append`]
    /// does, in a request shared with other callers' appends. Appends of one caller, each
    /// awaited before the next, keep their order; appends to one stream that are in flight at
    /// once may be sent in different requests, so give them exact expected versions if their
    /// order matters.
    ///
    /// A request that fails in transport is sent again, up to [`APPEND_ATTEMPTS_MAX`] times,
    /// with only its appends a repeat cannot duplicate (events and an exact or no-stream
    /// check); the others get the failure.
    ///
    /// # Errors
    /// As [`crate::Client::append`]: [`ClientError::WrongExpectedVersion`] (nothing appended),
    /// code 1008 for bad names, types, sizes or an append without events, transport failures;
    /// [`ClientError::Closed`] if the background task is gone.
    pub async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: &[EventData],
    ) -> Result<Appended, ClientError> {
        let body = json!({
            "stream": stream,
            "expected_version": expected.to_json(),
            "events": events.iter().map(EventData::to_json).collect::<Vec<_>>(),
        });
        self.send(&body, expected, events.len()).await
    }

    /// [`StreamAppender::append`] of one [`StreamWrite`].
    ///
    /// # Errors
    /// As [`StreamAppender::append`].
    pub async fn write(&self, write: &StreamWrite) -> Result<Appended, ClientError> {
        self.send(&write.to_json(), write.expected, write.events.len()).await
    }

    async fn send(
        &self,
        body: &Value,
        expected: ExpectedVersion,
        events: usize,
    ) -> Result<Appended, ClientError> {
        let body = serde_json::to_vec(body)?;
        let repeatable =
            events > 0 && matches!(expected, ExpectedVersion::Exact(_) | ExpectedVersion::NoStream);
        let (reply, answered) = oneshot::channel();
        let waiting = Waiting { body, events, repeatable, reply };
        self.queue.send(waiting).await.map_err(|_| ClientError::Closed)?;
        answered.await.map_err(|_| ClientError::Closed)?
    }
}

/// The background task: takes a request slot, gathers what is waiting, sends it.
async fn gather(
    http: Http,
    path: String,
    options: AppenderOptions,
    mut waiting: mpsc::Receiver<Waiting>,
) {
    let slots = Arc::new(Semaphore::new(options.requests_in_flight.max(1)));
    let appends_max = options.appends_per_request_max.clamp(1, GATHERED_APPENDS_MAX);
    let mut carried = None;
    loop {
        let first = match carried.take() {
            Some(first) => first,
            None => match waiting.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { return };
        // A slot frees when a request is answered, and the callers it answered are about to
        // append again. Without letting them run first, the first of them took the free slot
        // alone: with 64 writers, 73% of requests carried one append while others carried
        // 33-64 (`docs/benchmarks.md`, session 15).
        tokio::task::yield_now().await;
        let deadline = tokio::time::Instant::now() + options.linger;
        let (mut events, mut bytes) = (first.events, first.body.len());
        let mut batch = vec![first];
        while batch.len() < appends_max {
            let next = if options.linger.is_zero() {
                waiting.try_recv().ok()
            } else {
                tokio::time::timeout_at(deadline, waiting.recv()).await.ok().flatten()
            };
            let Some(next) = next else { break };
            let more_bytes = bytes + 1 + next.body.len();
            if events + next.events > GATHERED_EVENTS_MAX
                || BODY_OPEN.len() + more_bytes + BODY_CLOSE.len() > GATHERED_BODY_BYTES_MAX
            {
                carried = Some(next);
                break;
            }
            (events, bytes) = (events + next.events, more_bytes);
            batch.push(next);
        }
        tokio::spawn(send(http.clone(), path.clone(), batch, slot));
    }
}

/// `{"appends":[...]}` of the batch's encoded appends.
fn body(batch: &[Waiting]) -> Bytes {
    let length: usize = batch.iter().map(|waiting| waiting.body.len() + 1).sum();
    let mut body = Vec::with_capacity(BODY_OPEN.len() + length + BODY_CLOSE.len());
    body.extend_from_slice(BODY_OPEN);
    for (index, waiting) in batch.iter().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&waiting.body);
    }
    body.extend_from_slice(BODY_CLOSE);
    Bytes::from(body)
}

#[derive(Deserialize)]
struct EachJson {
    results: Vec<ResultJson>,
}

#[derive(Deserialize)]
struct ResultJson {
    appended: Option<Appended>,
    error: Option<ErrorJson>,
}

#[derive(Deserialize)]
struct ErrorJson {
    error_code: u16,
    status: u16,
    message: String,
    #[serde(default)]
    details: Option<Value>,
}

/// Sends one request, retrying transport failures with its repeatable appends, and answers
/// every caller. The slot is given back once the request is answered.
async fn send(http: Http, path: String, mut batch: Vec<Waiting>, slot: OwnedSemaphorePermit) {
    let mut backoff = Duration::from_millis(50);
    let mut attempt = 1;
    let answer = loop {
        match http.call_encoded::<EachJson>(Method::POST, &path, body(&batch)).await {
            Err(error) if error.is_transient() && attempt < APPEND_ATTEMPTS_MAX => {
                let (again, failed): (Vec<_>, Vec<_>) =
                    batch.into_iter().partition(|waiting| waiting.repeatable);
                for waiting in failed {
                    let _ = waiting.reply.send(Err(error.shared()));
                }
                if again.is_empty() {
                    return;
                }
                batch = again;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                attempt += 1;
            }
            other => break other,
        }
    };
    drop(slot);
    let results = match answer {
        Ok(answer) if answer.results.len() == batch.len() => answer.results,
        Ok(answer) => {
            let detail = format!("{} results for {} appends", answer.results.len(), batch.len());
            for waiting in batch {
                let unexpected =
                    ClientError::Unexpected { url: path.clone(), detail: detail.clone() };
                let _ = waiting.reply.send(Err(unexpected));
            }
            return;
        }
        Err(error) => {
            for waiting in batch {
                let _ = waiting.reply.send(Err(error.shared()));
            }
            return;
        }
    };
    for (waiting, result) in batch.into_iter().zip(results) {
        let outcome = match result {
            ResultJson { appended: Some(appended), error: None } => Ok(appended),
            ResultJson { appended: None, error: Some(error) } => Err(api_error(
                error.error_code,
                error.message,
                error.details.as_ref(),
                error.status,
            )),
            _ => Err(ClientError::Unexpected {
                url: path.clone(),
                detail: "a result with neither or both of `appended` and `error`".to_owned(),
            }),
        };
        let _ = waiting.reply.send(outcome);
    }
}
