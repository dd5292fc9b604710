//! Waiting for a partition log's group commit without holding a thread.

use std::sync::Arc;

use sluice_log::{AppendError, Partition};
use tokio::sync::watch;

/// A log's synced offset, published by its sync listener to async waiters. Topics' partitions
/// and queue journals both wait through it.
#[derive(Debug, Clone)]
pub(crate) struct SyncWatch(Arc<watch::Sender<u64>>);

impl SyncWatch {
    /// Sets `log`'s sync listener to publish here (a log takes one listener: call once).
    pub(crate) fn attach(log: &Partition) -> Self {
        let synced = Arc::new(watch::channel(0).0);
        let listener = Arc::clone(&synced);
        // Always wakes the waiters: a failed sync reports the same offset, and they must look
        // and find the log poisoned.
        log.set_sync_listener(move |offset| listener.send_modify(|known| *known = offset));
        Self(synced)
    }

    /// Returns once the record at `last_offset` of `log` is durable as the log's durability
    /// promises (what [`Partition::wait_durable`] does), without holding a thread: the log's
    /// background syncer leads the group commit and its listener wakes this task.
    ///
    /// # Errors
    /// The log's poisoning error.
    pub(crate) async fn wait(&self, log: &Partition, last_offset: u64) -> Result<(), AppendError> {
        let mut synced = self.0.subscribe();
        log.request_sync(last_offset);
        loop {
            if log.synced_offset()? > last_offset {
                return Ok(());
            }
            // This holds the sender, so `changed` cannot fail; if it did, block instead.
            if synced.changed().await.is_err() {
                return log.wait_durable(last_offset);
            }
        }
    }
}
