//! The transfer processor: the second half of every transfer, as a subscriber of the account
//! topic with its own checkpoint.
//!
//! For each `TransferDebited` it runs `CreditTransfer` on the destination; if the destination
//! refuses (it does not exist, is closed, or would pass its balance limit), it runs
//! `RefundTransfer` on the source: the compensation. Every other event only moves the
//! checkpoint.
//!
//! The effects (appends to Sluice) and the checkpoint (a row in SQLite) cannot share a
//! transaction, so the checkpoint is written after the effects: a crash in between delivers
//! the event again (at least once). Handling it again is harmless because the accounts refuse
//! to repeat themselves (see [`crate::account`]):
//!
//! 1. If the source shows the transfer refunded, it is settled: stop.
//! 2. Credit the destination. A destination that was credited already appends nothing.
//! 3. Only if the destination refused: refund the source. A source refunded already appends
//!    nothing.
//!
//! Step 1 matters when a destination refused, the refund landed, and the destination was
//! opened before the re-delivery: without it the transfer would be credited and refunded. So
//! each `TransferDebited` ends in exactly one `TransferCredited` or `TransferRefunded`, with one
//! processor running at a time (two would race between steps 1 and 2).
//!
//! It is a [`ProjectionStore`] only to reuse the SDK's runner ([`sluice_client::Projection`]),
//! which subscribes from the checkpoint and hands each event over in order.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rusqlite::Connection;
use sluice_client::worker::BoxError;
use sluice_client::{ProjectionStore, RecordedEvent, TopicPosition};

use crate::account::{AccountCommand, AccountEvent};
use crate::bank::{decode, Bank, BankError};
use crate::database::{self, DatabaseError, PROCESSOR_CHECKPOINT};

/// Why the processor stopped. The event it was handling is delivered again on the next run.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// A command or read failed for another reason than a refusal.
    #[error("transfer {transfer_id} from {from}: {source}")]
    Bank {
        /// The source account.
        from: String,
        /// The transfer.
        transfer_id: String,
        /// What failed.
        #[source]
        source: BankError,
    },
    /// The event does not decode.
    #[error(transparent)]
    Decode(BankError),
    /// The source's stream has the `TransferDebited` but its state does not know the
    /// transfer: the aggregate and its events disagree.
    #[error("{from} debited transfer {transfer_id} but its state does not show it")]
    UnknownTransfer {
        /// The source account.
        from: String,
        /// The transfer.
        transfer_id: String,
    },
    /// The checkpoint could not be read or written.
    #[error(transparent)]
    Database(#[from] DatabaseError),
}

/// How one `TransferDebited` was handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// `TransferCredited` was appended to the destination.
    Credited,
    /// The destination refused; `TransferRefunded` was appended to the source.
    Refunded {
        /// The destination's refusal.
        reason: String,
    },
    /// It was settled before (a re-delivery): nothing appended.
    AlreadySettled,
}

/// Counts of what the processor did, since it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcessorStats {
    /// Events received (of any type).
    pub events: u64,
    /// Transfers credited.
    pub credited: u64,
    /// Transfers refunded.
    pub refunded: u64,
    /// `TransferDebited` events found settled already.
    pub already_settled: u64,
}

/// The transfer processor; run it with `client.projection(topic, processor)`.
#[derive(Debug)]
pub struct TransferProcessor {
    bank: Bank,
    /// Its own connection to the bank database, for its checkpoint row.
    connection: Mutex<Connection>,
    checkpoint_name: String,
    events: AtomicU64,
    credited: AtomicU64,
    refunded: AtomicU64,
    already_settled: AtomicU64,
}

impl TransferProcessor {
    /// A processor for `bank` keeping its checkpoint in the database at `path`, under
    /// [`PROCESSOR_CHECKPOINT`].
    ///
    /// # Errors
    /// [`DatabaseError`]: the database cannot be opened.
    pub fn open(bank: Bank, path: &Path) -> Result<Self, DatabaseError> {
        Ok(Self {
            bank,
            connection: Mutex::new(database::open(path)?),
            checkpoint_name: PROCESSOR_CHECKPOINT.to_owned(),
            events: AtomicU64::new(0),
            credited: AtomicU64::new(0),
            refunded: AtomicU64::new(0),
            already_settled: AtomicU64::new(0),
        })
    }

    /// Keeps the checkpoint under `name` instead (a second processor that replays the topic,
    /// say).
    pub fn with_checkpoint_name(mut self, name: &str) -> Self {
        name.clone_into(&mut self.checkpoint_name);
        self
    }

    /// What it did so far.
    pub fn stats(&self) -> ProcessorStats {
        ProcessorStats {
            events: self.events.load(Ordering::Relaxed),
            credited: self.credited.load(Ordering::Relaxed),
            refunded: self.refunded.load(Ordering::Relaxed),
            already_settled: self.already_settled.load(Ordering::Relaxed),
        }
    }

    /// Settles transfer `transfer_id` of `amount` cents that `from` debited for `to` (see the
    /// module docs for the steps and why a repeat is harmless).
    ///
    /// # Errors
    /// [`ProcessError::Bank`] when a command fails for another reason than the destination's
    /// refusal; [`ProcessError::UnknownTransfer`].
    pub async fn settle(
        &self,
        from: &str,
        to: &str,
        transfer_id: &str,
        amount: u64,
    ) -> Result<Settlement, ProcessError> {
        let failed = |source: BankError| ProcessError::Bank {
            from: from.to_owned(),
            transfer_id: transfer_id.to_owned(),
            source,
        };
        let source = self.bank.load(from).await.map_err(failed)?.state;
        match source.transfers_out.get(transfer_id) {
            None => {
                return Err(ProcessError::UnknownTransfer {
                    from: from.to_owned(),
                    transfer_id: transfer_id.to_owned(),
                })
            }
            Some(transfer) if transfer.refunded => return Ok(Settlement::AlreadySettled),
            Some(_) => {}
        }
        let credit = AccountCommand::CreditTransfer {
            from: from.to_owned(),
            transfer_id: transfer_id.to_owned(),
            amount,
        };
        let reason = match self.bank.execute(to, &credit).await {
            Ok(done) if done.events.is_empty() => return Ok(Settlement::AlreadySettled),
            Ok(_) => return Ok(Settlement::Credited),
            Err(BankError::Refused(refusal)) => format!("{to} refused: {refusal}"),
            Err(error) => return Err(failed(error)),
        };
        let refund = AccountCommand::RefundTransfer {
            transfer_id: transfer_id.to_owned(),
            reason: reason.clone(),
        };
        match self.bank.execute(from, &refund).await {
            Ok(done) if done.events.is_empty() => Ok(Settlement::AlreadySettled),
            Ok(_) => Ok(Settlement::Refunded { reason }),
            Err(error) => Err(failed(error)),
        }
    }

    fn count(&self, settlement: &Settlement) {
        let counter = match settlement {
            Settlement::Credited => &self.credited,
            Settlement::Refunded { .. } => &self.refunded,
            Settlement::AlreadySettled => &self.already_settled,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn position(&self) -> Result<Option<TopicPosition>, DatabaseError> {
        let connection = self.connection.lock().map_err(|_| DatabaseError::Poisoned)?;
        database::checkpoint(&connection, &self.checkpoint_name)
    }

    fn save_position(&self, position: &TopicPosition) -> Result<(), DatabaseError> {
        let connection = self.connection.lock().map_err(|_| DatabaseError::Poisoned)?;
        database::save_checkpoint(&connection, &self.checkpoint_name, position)
    }

    async fn handle(
        &self,
        event: &RecordedEvent,
        position: &TopicPosition,
    ) -> Result<(), ProcessError> {
        self.events.fetch_add(1, Ordering::Relaxed);
        if let AccountEvent::TransferDebited { transfer_id, to, amount } =
            decode(event).map_err(ProcessError::Decode)?
        {
            let settlement = self.settle(&event.stream, &to, &transfer_id, amount).await?;
            self.count(&settlement);
        }
        // After the effects: a crash before this line delivers the event again.
        self.save_position(position)?;
        Ok(())
    }
}

impl ProjectionStore for TransferProcessor {
    async fn checkpoint(&self) -> Result<Option<TopicPosition>, BoxError> {
        Ok(self.position()?)
    }

    async fn apply(&self, event: &RecordedEvent, position: &TopicPosition) -> Result<(), BoxError> {
        Ok(self.handle(event, position).await?)
    }
}
