//! The idempotent consumer: [`dedup`] wraps a handler so that a message whose
//! [`Message::idempotency_key`] is already in a [`ProcessedStore`] is acked without running the
//! handler again, and the key is stored once the handler succeeds.
//!
//! [`dedup`]'s docs say when that is enough, and how to do better: the mark must commit in the
//! same transaction as the handler's side effects.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use super::message::{BoxError, Handler, HandlerError, Message};

/// Ids a [`MemoryStore`] keeps by default.
pub const MEMORY_STORE_IDS_DEFAULT: usize = 100_000;

/// Where an idempotent consumer records the messages it has processed. Implement it over your
/// own database; [`MemoryStore`] is for tests. Keys are [`Message::idempotency_key`]s.
///
/// A mark written apart from the handler's side effects leaves a window for duplicates; see
/// [`dedup`] for writing it in the same transaction instead.
pub trait ProcessedStore: Send + Sync {
    /// Whether `id` was marked processed.
    ///
    /// # Errors
    /// The store could not answer; the message is nacked and retried.
    fn seen(&self, id: &str) -> impl Future<Output = Result<bool, BoxError>> + Send;

    /// Records `id` as processed.
    ///
    /// # Errors
    /// The store could not write; the message is nacked and retried, so the handler runs again.
    fn mark(&self, id: &str) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// One store shared by several workers.
impl<S: ProcessedStore> ProcessedStore for Arc<S> {
    fn seen(&self, id: &str) -> impl Future<Output = Result<bool, BoxError>> + Send {
        S::seen(self, id)
    }

    fn mark(&self, id: &str) -> impl Future<Output = Result<(), BoxError>> + Send {
        S::mark(self, id)
    }
}

/// A [`ProcessedStore`] in memory, for tests and single-process experiments: it forgets
/// everything when the process ends, and keeps only the newest `capacity` ids.
#[derive(Debug)]
pub struct MemoryStore {
    capacity: usize,
    inner: Mutex<MemoryIds>,
}

#[derive(Debug, Default)]
struct MemoryIds {
    ids: HashSet<String>,
    /// Marking order, to forget the oldest first.
    order: VecDeque<String>,
}

impl MemoryStore {
    /// A store keeping up to [`MEMORY_STORE_IDS_DEFAULT`] ids.
    pub fn new() -> Self {
        Self::with_capacity(MEMORY_STORE_IDS_DEFAULT)
    }

    /// A store keeping the newest `capacity` ids (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), inner: Mutex::new(MemoryIds::default()) }
    }

    /// Ids marked and still kept.
    pub fn len(&self) -> usize {
        self.lock().ids.len()
    }

    /// Whether no id is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryIds> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessedStore for MemoryStore {
    async fn seen(&self, id: &str) -> Result<bool, BoxError> {
        Ok(self.lock().ids.contains(id))
    }

    async fn mark(&self, id: &str) -> Result<(), BoxError> {
        let mut inner = self.lock();
        if inner.ids.insert(id.to_owned()) {
            inner.order.push_back(id.to_owned());
            while inner.order.len() > self.capacity {
                if let Some(oldest) = inner.order.pop_front() {
                    inner.ids.remove(&oldest);
                }
            }
        }
        Ok(())
    }
}

/// A handler that skips messages already processed; see [`dedup`].
#[derive(Debug, Clone)]
pub struct Dedup<S, H> {
    store: S,
    handler: H,
}

/// Wraps `handler` into an idempotent consumer over `store`: a message whose
/// [`Message::idempotency_key`] (its record id) is in the store is acked without running
/// `handler`; otherwise `handler` runs and, if it succeeds, the key is marked. A store failure is
/// a transient failure (the message is retried).
///
/// Queues are at-least-once: a worker that crashes after its side effects but before its ack,
/// or whose ack is lost, gets the message again; a producer that retried outside the topic's
/// dedup window appended it twice. An idempotent producer (record ids, which
/// [`crate::Producer`] always sends) plus an idempotent consumer keyed by the record id make the
/// effect happen once: "effectively once". But read on before relying on `dedup` for effects
/// that must not happen twice.
///
/// # Effectively once: the store must commit with the side effects
///
/// [`dedup`] checks, runs the handler, then marks: three steps. A crash between the handler's
/// side effects and the mark leaves the id unmarked, and the redelivered message is processed
/// again. That window is small but real. For effects that must happen exactly once, write the
/// mark **in the same transaction** as the side effects, so both commit or neither does. With a
/// SQL database the handler becomes:
///
/// ```text
/// BEGIN;
/// INSERT INTO processed_messages (id) VALUES ($record_id) ON CONFLICT DO NOTHING;
/// -- 0 rows inserted: processed before. ROLLBACK and return Ok(()) (the worker acks).
/// UPDATE accounts SET balance_cents = balance_cents + $amount WHERE id = $account;
/// INSERT INTO ledger (message_id, account, amount) VALUES ($record_id, $account, $amount);
/// COMMIT;  -- the mark and the effects, atomically; then return Ok(()) and the worker acks
/// ```
///
/// In Rust, with your database's client:
///
/// ```ignore
/// worker.run(move |message: Message| {
///     let pool = pool.clone();
///     async move {
///         let deposit: Deposit = message.value_as()?;
///         let mut tx = pool.begin().await.map_err(HandlerError::transient)?;
///         let claimed = tx
///             .execute("INSERT INTO processed_messages (id) VALUES ($1) ON CONFLICT DO NOTHING",
///                      &[&message.idempotency_key()])
///             .await
///             .map_err(HandlerError::transient)?;
///         if claimed == 0 {
///             return Ok(()); // done before: ack, do nothing (the transaction rolls back)
///         }
///         tx.execute("UPDATE accounts SET balance_cents = balance_cents + $1 WHERE id = $2",
///                    &[&deposit.cents, &deposit.account])
///             .await
///             .map_err(HandlerError::transient)?;
///         tx.commit().await.map_err(HandlerError::transient)
///     }
/// })
/// .await?;
/// ```
///
/// Concurrent deliveries of one message (a lease that expired while its handler was still
/// running) then serialise on the `processed_messages` row: one commits, the other finds it
/// taken. Use [`dedup`] when the side effects are themselves idempotent or cannot share a
/// transaction with the store (a call to another service), accepting the window above.
pub fn dedup<S: ProcessedStore + 'static, H: Handler>(store: S, handler: H) -> Dedup<S, H> {
    Dedup { store, handler }
}

impl<S: ProcessedStore + 'static, H: Handler> Handler for Dedup<S, H> {
    async fn handle(&self, message: Message) -> Result<(), HandlerError> {
        let key = message.idempotency_key();
        if self.store.seen(&key).await.map_err(store_failed)? {
            return Ok(());
        }
        self.handler.handle(message).await?;
        self.store.mark(&key).await.map_err(store_failed)
    }
}

fn store_failed(error: BoxError) -> HandlerError {
    HandlerError::transient(StoreFailed(error))
}

/// A [`ProcessedStore`] failure, as the handler's error.
#[derive(Debug, thiserror::Error)]
#[error("processed-message store failed")]
struct StoreFailed(#[source] BoxError);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn message(record_id: Option<&str>, offset: u64) -> Message {
        Message {
            delivery_id: format!("t/0/{offset}/1"),
            topic: "t".into(),
            partition: 0,
            offset,
            deliveries: 1,
            timestamp_ms: 0,
            key: None,
            key_base64: None,
            value: serde_json::Value::Null,
            value_base64: None,
            headers: BTreeMap::new(),
            record_id: record_id.map(str::to_owned),
        }
    }

    /// A handler that counts its runs and fails while `failing` is set.
    fn counting(runs: &Arc<AtomicU32>, fail_first: u32) -> impl Handler {
        let runs = Arc::clone(runs);
        move |_message: Message| {
            let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if run <= fail_first {
                    Err(HandlerError::transient("not yet"))
                } else {
                    Ok(())
                }
            }
        }
    }

    #[tokio::test]
    async fn a_processed_id_is_acked_without_running_the_handler() {
        let runs = Arc::new(AtomicU32::new(0));
        let store = Arc::new(MemoryStore::new());
        let handler = dedup(Arc::clone(&store), counting(&runs, 0));
        handler.handle(message(Some("order-1"), 0)).await.unwrap();
        // The same record appended twice (another offset), and the first one redelivered.
        handler.handle(message(Some("order-1"), 5)).await.unwrap();
        handler.handle(message(Some("order-1"), 0)).await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        handler.handle(message(Some("order-2"), 1)).await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(store.len(), 2);
    }

    #[tokio::test]
    async fn a_failed_handler_leaves_the_id_unmarked_so_the_retry_runs_it() {
        let runs = Arc::new(AtomicU32::new(0));
        let store = Arc::new(MemoryStore::new());
        let handler = dedup(Arc::clone(&store), counting(&runs, 1));
        let error = handler.handle(message(Some("order-1"), 0)).await.unwrap_err();
        assert!(matches!(error, HandlerError::Transient { delay: None, .. }), "{error}");
        assert!(store.is_empty());
        handler.handle(message(Some("order-1"), 0)).await.unwrap();
        handler.handle(message(Some("order-1"), 0)).await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn records_without_an_id_are_keyed_by_position() {
        let runs = Arc::new(AtomicU32::new(0));
        let handler = dedup(MemoryStore::new(), counting(&runs, 0));
        handler.handle(message(None, 3)).await.unwrap();
        handler.handle(message(None, 3)).await.unwrap();
        handler.handle(message(None, 4)).await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    struct Broken;

    impl ProcessedStore for Broken {
        async fn seen(&self, _id: &str) -> Result<bool, BoxError> {
            Err("database unreachable".into())
        }

        async fn mark(&self, _id: &str) -> Result<(), BoxError> {
            Err("database unreachable".into())
        }
    }

    #[tokio::test]
    async fn a_store_failure_is_transient_and_keeps_its_cause() {
        let runs = Arc::new(AtomicU32::new(0));
        let handler = dedup(Broken, counting(&runs, 0));
        let error = handler.handle(message(Some("x"), 0)).await.unwrap_err();
        assert!(matches!(error, HandlerError::Transient { .. }));
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        let text = crate::worker::message::error_text(&error);
        assert!(text.contains("store failed") && text.contains("database unreachable"), "{text}");
    }

    #[tokio::test]
    async fn the_memory_store_forgets_the_oldest_beyond_its_capacity() {
        let store = MemoryStore::with_capacity(2);
        for id in ["a", "b", "a", "c"] {
            store.mark(id).await.unwrap();
        }
        assert_eq!(store.len(), 2);
        assert!(!store.seen("a").await.unwrap());
        assert!(store.seen("b").await.unwrap() && store.seen("c").await.unwrap());
    }
}
