//! The settler: one task per worker that sends acks, nacks, rejects and extends. Requests made
//! while one is in flight are gathered into the next one (acks with acks, extends with extends,
//! nacks and rejects with those carrying the same delay and error), so a busy worker settles many
//! messages per round trip without waiting for a timer. Each caller hears its own outcome only
//! once the server has answered for its id.
//!
//! Transport failures and 503s are retried with a capped backoff, with the same ids, until the
//! item's give-up time: its lease's end, after which the server redelivers the message anyway. A
//! retry of a request that did reach the server is answered "no longer leased" for ids it
//! settled; that is reported as [`Settled::Refused`] like any other lost lease.
//!
//! Acks of handlers that finished (each frees a handler slot once answered) ask for the next
//! messages in the same request (`ack-next`, `wait_ms` 0), at most one per such ack, while the
//! worker is leasing ([`Refill`]). The leased messages go to the worker before the acks are
//! answered, so they take the slots the acks free. Only the first attempt asks: a retry, or a
//! request the server refused for its lease arguments, acks alone.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::message::{Message, MessageJson};
use crate::http::{ClientError, Http};

/// Most ids in one settle request (the server takes up to 10,000).
pub const SETTLE_IDS_MAX: usize = 1000;
/// First wait before retrying a failed request; doubles per attempt.
pub(crate) const RETRY_BACKOFF_INITIAL: Duration = Duration::from_millis(50);
/// Longest wait between retries.
pub(crate) const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The server's per-id code when writing a dead letter failed: it tries again by itself, so the
/// message is out of the worker's hands.
const DEAD_LETTER_RETRYING: u16 = 1101;

/// What to do with a delivery.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Action {
    Ack,
    Nack { delay_ms: Option<u64>, error: Option<String> },
    Reject { error: Option<String> },
    Extend,
}

impl Action {
    fn path(&self, group: &str) -> String {
        let verb = match self {
            Self::Ack => "ack",
            Self::Nack { .. } => "nack",
            Self::Reject { .. } => "reject",
            Self::Extend => "extend",
        };
        format!("/v1/queues/{group}/{verb}")
    }

    fn body(&self, ids: &[&str]) -> Value {
        match self {
            Self::Ack | Self::Extend => json!({ "ids": ids }),
            Self::Nack { delay_ms, error } => {
                let mut body = json!({ "ids": ids });
                if let Some(delay_ms) = delay_ms {
                    body["delay_ms"] = json!(delay_ms);
                }
                if let Some(error) = error {
                    body["error"] = json!(error);
                }
                body
            }
            Self::Reject { error } => match error {
                Some(error) => json!({ "ids": ids, "error": error }),
                None => json!({ "ids": ids }),
            },
        }
    }
}

/// How settling one delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Settled {
    /// The server did it.
    Done,
    /// The server refused it: the lease expired or the message was settled already (code 1019),
    /// the id is unknown (1020), or the whole request was refused.
    Refused { code: Option<u16>, message: String },
    /// The server could not be reached before the lease ran out.
    Unconfirmed,
}

struct Item {
    id: String,
    action: Action,
    give_up_at: Instant,
    /// Its handler finished: once answered, its slot is free for a new message.
    frees_slot: bool,
    reply: oneshot::Sender<Settled>,
}

/// Where and how the settler leases the next messages with the acks it sends.
pub(crate) struct Refill {
    /// The member the new leases are recorded under.
    pub(crate) member: String,
    /// Most messages one request asks for.
    pub(crate) batch: u32,
    /// Whether the worker still takes messages (cleared when it shuts down).
    pub(crate) on: Arc<AtomicBool>,
    /// The worker's end, which starts a handler per message.
    pub(crate) messages: mpsc::UnboundedSender<Vec<Message>>,
    /// Messages sent to `messages` and not started yet: counted before the acks that brought
    /// them are answered, so a worker that sees an ack's handler finished also sees them.
    pub(crate) waiting: Arc<AtomicUsize>,
}

/// A handle to a worker's settler task. The task ends when every handle is dropped.
#[derive(Clone)]
pub(crate) struct Settler {
    queue: mpsc::Sender<Item>,
}

impl Settler {
    /// Starts the task for `group`; with `refill`, acks of finished handlers lease the next
    /// messages.
    pub(crate) fn start(
        http: Http,
        group: String,
        refill: Option<Refill>,
    ) -> (Self, JoinHandle<()>) {
        let (queue, receiver) = mpsc::channel(SETTLE_IDS_MAX);
        let task = tokio::spawn(run(http, group, refill, receiver));
        (Self { queue }, task)
    }

    /// Settles delivery `id` and waits for the server's answer, retrying until `give_up_at`.
    pub(crate) async fn settle(&self, id: &str, action: Action, give_up_at: Instant) -> Settled {
        self.send(id, action, give_up_at, false).await
    }

    /// As [`Settler::settle`], for the last settle of a message whose handler finished: an ack
    /// may bring the next message for the slot it frees.
    pub(crate) async fn finish(&self, id: &str, action: Action, give_up_at: Instant) -> Settled {
        self.send(id, action, give_up_at, true).await
    }

    async fn send(&self, id: &str, action: Action, give_up_at: Instant, frees: bool) -> Settled {
        let (reply, answer) = oneshot::channel();
        let item = Item { id: id.to_owned(), action, give_up_at, frees_slot: frees, reply };
        if self.queue.send(item).await.is_err() {
            return Settled::Unconfirmed;
        }
        answer.await.unwrap_or(Settled::Unconfirmed)
    }
}

async fn run(http: Http, group: String, refill: Option<Refill>, mut queue: mpsc::Receiver<Item>) {
    while let Some(first) = queue.recv().await {
        let mut items = vec![first];
        while items.len() < SETTLE_IDS_MAX {
            match queue.try_recv() {
                Ok(item) => items.push(item),
                Err(_) => break,
            }
        }
        for (action, items) in gather(items) {
            let next = match &refill {
                Some(refill) if action == Action::Ack && refill.on.load(Ordering::Acquire) => {
                    let freed = items.iter().filter(|item| item.frees_slot).count();
                    let max = refill.batch.min(u32::try_from(freed).unwrap_or(u32::MAX));
                    (max > 0).then_some((refill, max))
                }
                _ => None,
            };
            send(&http, &group, &action, items, next).await;
        }
    }
}

/// Items grouped by action (same verb, delay and error), in a stable order.
fn gather(items: Vec<Item>) -> BTreeMap<Action, Vec<Item>> {
    let mut groups: BTreeMap<Action, Vec<Item>> = BTreeMap::new();
    for item in items {
        groups.entry(item.action.clone()).or_default().push(item);
    }
    groups
}

#[derive(Deserialize)]
struct SettleResponse {
    results: Vec<SettleResult>,
}

/// `POST /v1/queues/{group}/ack-next` answer.
#[derive(Deserialize)]
struct AckNextResponse {
    results: Vec<SettleResult>,
    messages: Vec<MessageJson>,
}

#[derive(Deserialize)]
struct SettleResult {
    id: String,
    ok: bool,
    #[serde(default)]
    error: Option<SettleErrorJson>,
}

#[derive(Deserialize)]
struct SettleErrorJson {
    code: u16,
    message: String,
}

/// Sends one request for `items` (all with `action`), retrying transient failures. With
/// `next`, the first attempt also leases up to that many messages for the refill.
async fn send(
    http: &Http,
    group: &str,
    action: &Action,
    mut items: Vec<Item>,
    mut next: Option<(&Refill, u32)>,
) {
    let path = action.path(group);
    let mut backoff = RETRY_BACKOFF_INITIAL;
    loop {
        let now = Instant::now();
        let (live, expired): (Vec<Item>, Vec<Item>) =
            items.into_iter().partition(|item| item.give_up_at > now);
        for item in expired {
            let _ = item.reply.send(Settled::Unconfirmed);
        }
        items = live;
        let Some(give_up_at) = items.iter().map(|item| item.give_up_at).max() else { return };
        let ids: Vec<&str> = items.iter().map(|item| item.id.as_str()).collect();
        if let Some((refill, max)) = next.take() {
            let body = json!({ "ids": ids, "max": max, "wait_ms": 0, "member": refill.member });
            let path = format!("/v1/queues/{group}/ack-next");
            let call = http.call::<AckNextResponse>(Method::POST, &path, Some(&body));
            match tokio::time::timeout_at(give_up_at, call).await {
                Ok(Ok(response)) => {
                    let messages: Vec<Message> =
                        response.messages.into_iter().map(Message::from).collect();
                    if !messages.is_empty() {
                        // Before the acks are answered, so the messages take the slots the
                        // acks free. A worker that stopped meanwhile leaves them leased: they
                        // are redelivered when their leases end.
                        refill.waiting.fetch_add(messages.len(), Ordering::AcqRel);
                        let _ = refill.messages.send(messages);
                    }
                    let response = SettleResponse { results: response.results };
                    return answer(action, items, response);
                }
                Ok(Err(error)) if error.is_transient() => {
                    tokio::time::sleep_until(give_up_at.min(Instant::now() + backoff)).await;
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                }
                // Refused (for its lease arguments, say) or out of time: the plain ack decides.
                Ok(Err(_)) | Err(_) => {}
            }
            continue;
        }
        let body = action.body(&ids);
        let call = http.call::<SettleResponse>(Method::POST, &path, Some(&body));
        match tokio::time::timeout_at(give_up_at, call).await {
            Ok(Ok(response)) => return answer(action, items, response),
            Ok(Err(error)) if error.is_transient() => {
                tokio::time::sleep_until(give_up_at.min(Instant::now() + backoff)).await;
                backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
            }
            Ok(Err(error)) => return refuse_all(items, &error),
            // Every item's lease has run out: the next pass answers them all.
            Err(_) => {}
        }
    }
}

fn answer(action: &Action, items: Vec<Item>, response: SettleResponse) {
    let mut results: HashMap<String, SettleResult> =
        response.results.into_iter().map(|result| (result.id.clone(), result)).collect();
    let dead_letters = matches!(action, Action::Nack { .. } | Action::Reject { .. });
    for item in items {
        let settled = match results.remove(&item.id) {
            Some(SettleResult { ok: true, .. }) => Settled::Done,
            Some(SettleResult { error: Some(error), .. })
                if dead_letters && error.code == DEAD_LETTER_RETRYING =>
            {
                Settled::Done
            }
            Some(SettleResult { error, .. }) => match error {
                Some(error) => Settled::Refused { code: Some(error.code), message: error.message },
                None => Settled::Refused { code: None, message: "refused without a reason".into() },
            },
            None => Settled::Refused { code: None, message: "the server gave no result".into() },
        };
        let _ = item.reply.send(settled);
    }
}

fn refuse_all(items: Vec<Item>, error: &ClientError) {
    for item in items {
        let _ =
            item.reply.send(Settled::Refused { code: error.code(), message: error.to_string() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, action: Action) -> (Item, oneshot::Receiver<Settled>) {
        let (reply, answer) = oneshot::channel();
        let give_up_at = Instant::now() + Duration::from_secs(60);
        (Item { id: id.to_owned(), action, give_up_at, frees_slot: false, reply }, answer)
    }

    #[test]
    fn bodies_carry_only_what_the_action_needs() {
        assert_eq!(Action::Ack.body(&["a", "b"]), json!({"ids": ["a", "b"]}));
        assert_eq!(Action::Extend.path("jobs"), "/v1/queues/jobs/extend");
        let nack = Action::Nack { delay_ms: Some(250), error: Some("db down".into()) };
        assert_eq!(nack.path("jobs"), "/v1/queues/jobs/nack");
        assert_eq!(nack.body(&["a"]), json!({"ids": ["a"], "delay_ms": 250, "error": "db down"}));
        assert_eq!(
            Action::Nack { delay_ms: None, error: None }.body(&["a"]),
            json!({"ids": ["a"]})
        );
        assert_eq!(
            Action::Reject { error: Some("bad".into()) }.body(&["a"]),
            json!({"ids": ["a"], "error": "bad"})
        );
    }

    #[test]
    fn requests_gather_ids_with_the_same_action() {
        let nack = |error: &str| Action::Nack { delay_ms: None, error: Some(error.into()) };
        let items = vec![
            item("a", Action::Ack).0,
            item("b", nack("x")).0,
            item("c", Action::Ack).0,
            item("d", nack("y")).0,
            item("e", nack("x")).0,
            item("f", Action::Extend).0,
        ];
        let groups: Vec<(Action, Vec<String>)> = gather(items)
            .into_iter()
            .map(|(action, items)| (action, items.into_iter().map(|item| item.id).collect()))
            .collect();
        assert_eq!(
            groups,
            vec![
                (Action::Ack, vec!["a".into(), "c".into()]),
                (nack("x"), vec!["b".into(), "e".into()]),
                (nack("y"), vec!["d".into()]),
                (Action::Extend, vec!["f".into()]),
            ]
        );
    }

    #[tokio::test]
    async fn each_id_hears_its_own_result() {
        let (a, a_answer) = item("a", Action::Reject { error: None });
        let (b, b_answer) = item("b", Action::Reject { error: None });
        let (c, c_answer) = item("c", Action::Reject { error: None });
        let (d, d_answer) = item("d", Action::Reject { error: None });
        let response: SettleResponse = serde_json::from_value(json!({"results": [
            {"id": "b", "ok": false, "error": {"code": 1019, "message": "not leased"}},
            {"id": "a", "ok": true, "dead_lettered": {"topic": "t.dlq", "partition": 0, "offset": 3}},
            {"id": "c", "ok": false, "error": {"code": 1101, "message": "dead letter not written"}},
        ]}))
        .unwrap();
        answer(&Action::Reject { error: None }, vec![a, b, c, d], response);
        assert_eq!(a_answer.await.unwrap(), Settled::Done);
        assert_eq!(
            b_answer.await.unwrap(),
            Settled::Refused { code: Some(1019), message: "not leased".into() }
        );
        assert_eq!(c_answer.await.unwrap(), Settled::Done, "the server retries the dead letter");
        assert!(matches!(d_answer.await.unwrap(), Settled::Refused { code: None, .. }));
    }

    #[tokio::test]
    async fn an_unreachable_server_is_retried_until_the_lease_runs_out() {
        let http = Http::new("127.0.0.1:9");
        let (settler, task) = Settler::start(http, "jobs".into(), None);
        let started = Instant::now();
        let give_up_at = started + Duration::from_millis(300);
        assert_eq!(settler.settle("a", Action::Ack, give_up_at).await, Settled::Unconfirmed);
        assert!(Instant::now() >= give_up_at, "it kept trying until the lease's end");
        drop(settler);
        task.await.unwrap();
    }
}
