//! The `Account` aggregate: one stream per account, its events, the commands it accepts and
//! the typed reasons it refuses one.
//!
//! Amounts are integer cents (`u64`), and a balance never exceeds [`BALANCE_MAX_CENTS`], so
//! every amount and balance also fits the read model's signed 64-bit integers.
//!
//! A transfer touches two streams, which may live in different partitions, so it is not one
//! append: the source appends `TransferDebited` ([`AccountCommand::Transfer`]), the transfer
//! processor then appends `TransferCredited` on the destination
//! ([`AccountCommand::CreditTransfer`]) or, if the destination refuses, `TransferRefunded` on the
//! source ([`AccountCommand::RefundTransfer`]). The aggregate remembers the transfers it has
//! seen, which is what makes the processor safe to re-run:
//!
//! - a source refuses a `Transfer` whose id it already used for another transfer, and accepts
//!   the same transfer again as a no-op (a retried request);
//! - a destination credits a `(source, transfer id)` pair at most once: a second credit is a
//!   no-op;
//! - a source refunds a transfer at most once: a second refund is a no-op.
//!
//! The sets of transfer ids grow with the account's history. That is fine for an example; a
//! real bank would keep them for a bounded window, or snapshot them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sluice_client::Aggregate;

/// The largest balance an account may hold (cents): `i64::MAX`, so balances fit SQLite's
/// integers.
pub const BALANCE_MAX_CENTS: u64 = i64::MAX as u64;
/// The longest account id (bytes).
pub const ACCOUNT_ID_BYTES_MAX: usize = 64;
/// The longest transfer id (bytes).
pub const TRANSFER_ID_BYTES_MAX: usize = 64;

/// What happened to an account. Stored as the JSON of the whole value (externally tagged:
/// `{"Deposited":{"amount":500}}`), with the variant's name as the event type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountEvent {
    /// The account was opened for `owner`.
    Opened {
        /// Who holds it.
        owner: String,
    },
    /// Cash came in.
    Deposited {
        /// Cents.
        amount: u64,
    },
    /// Cash went out.
    Withdrawn {
        /// Cents.
        amount: u64,
    },
    /// The first step of a transfer: the money left this (the source) account.
    TransferDebited {
        /// The transfer's id, unique among this account's transfers.
        transfer_id: String,
        /// The destination account.
        to: String,
        /// Cents.
        amount: u64,
    },
    /// The second step of a transfer: the money arrived in this (the destination) account.
    TransferCredited {
        /// The transfer's id, as the source gave it.
        transfer_id: String,
        /// The source account.
        from: String,
        /// Cents.
        amount: u64,
    },
    /// The compensation of a transfer the destination refused: the money came back to this
    /// (the source) account.
    TransferRefunded {
        /// The transfer's id.
        transfer_id: String,
        /// The destination that refused it.
        to: String,
        /// Cents.
        amount: u64,
        /// Why the destination refused it.
        reason: String,
    },
    /// The account was closed (its balance was zero).
    Closed,
}

impl AccountEvent {
    /// The event's type: the variant's name.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Opened { .. } => "Opened",
            Self::Deposited { .. } => "Deposited",
            Self::Withdrawn { .. } => "Withdrawn",
            Self::TransferDebited { .. } => "TransferDebited",
            Self::TransferCredited { .. } => "TransferCredited",
            Self::TransferRefunded { .. } => "TransferRefunded",
            Self::Closed => "Closed",
        }
    }

    /// How the event moves the balance (cents; negative for money going out).
    pub fn balance_change(&self) -> i128 {
        match self {
            Self::Deposited { amount }
            | Self::TransferCredited { amount, .. }
            | Self::TransferRefunded { amount, .. } => i128::from(*amount),
            Self::Withdrawn { amount } | Self::TransferDebited { amount, .. } => {
                -i128::from(*amount)
            }
            Self::Opened { .. } | Self::Closed => 0,
        }
    }

    /// The other account of a transfer event.
    pub fn counterparty(&self) -> Option<&str> {
        match self {
            Self::TransferDebited { to, .. } | Self::TransferRefunded { to, .. } => Some(to),
            Self::TransferCredited { from, .. } => Some(from),
            _ => None,
        }
    }

    /// The transfer id of a transfer event.
    pub fn transfer_id(&self) -> Option<&str> {
        match self {
            Self::TransferDebited { transfer_id, .. }
            | Self::TransferCredited { transfer_id, .. }
            | Self::TransferRefunded { transfer_id, .. } => Some(transfer_id),
            _ => None,
        }
    }
}

/// What is asked of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountCommand {
    /// Open the account for `owner`.
    Open {
        /// Who holds it.
        owner: String,
    },
    /// Put `amount` cents in.
    Deposit {
        /// Cents, at least 1.
        amount: u64,
    },
    /// Take `amount` cents out; refused if the balance is smaller.
    Withdraw {
        /// Cents, at least 1.
        amount: u64,
    },
    /// Close the account; refused unless its balance is zero.
    Close,
    /// Start a transfer of `amount` cents to `to`: debits this account.
    Transfer {
        /// The destination account.
        to: String,
        /// Cents, at least 1.
        amount: u64,
        /// The caller's id for this transfer (an idempotency key), unique among this
        /// account's transfers.
        transfer_id: String,
    },
    /// Credit this (destination) account with a transfer `from` debited. Sent by the transfer
    /// processor; a no-op if this transfer was credited already.
    CreditTransfer {
        /// The source account.
        from: String,
        /// The transfer's id.
        transfer_id: String,
        /// Cents.
        amount: u64,
    },
    /// Give back the money of a transfer this (source) account debited and the destination
    /// refused. Sent by the transfer processor; a no-op if it was refunded already. Accepted on
    /// a closed account too: a compensation must not fail.
    RefundTransfer {
        /// The transfer's id.
        transfer_id: String,
        /// Why the destination refused it.
        reason: String,
    },
}

/// Why an account refused a command. Nothing was appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// The account was never opened.
    #[error("the account is not open")]
    NotOpen,
    /// The account was opened already.
    #[error("the account is open already")]
    AlreadyOpen,
    /// The account is closed.
    #[error("the account is closed")]
    Closed,
    /// An amount of zero.
    #[error("the amount must be at least 1 cent")]
    ZeroAmount,
    /// The balance does not cover the amount.
    #[error("insufficient funds: the balance is {balance} cents, {requested} cents requested")]
    InsufficientFunds {
        /// The balance (cents).
        balance: u64,
        /// The amount asked for (cents).
        requested: u64,
    },
    /// The balance would pass [`BALANCE_MAX_CENTS`].
    #[error(
        "the balance of {balance} cents cannot take {amount} more (limit {BALANCE_MAX_CENTS})"
    )]
    BalanceLimit {
        /// The balance (cents).
        balance: u64,
        /// The amount that would pass the limit (cents).
        amount: u64,
    },
    /// Only an account with a zero balance can close.
    #[error("the balance is {balance} cents: only an empty account can close")]
    BalanceNotZero {
        /// The balance (cents).
        balance: u64,
    },
    /// An account or transfer id that is empty, too long, or has characters other than ASCII
    /// letters, digits, `-`, `_` and `.`.
    #[error("{what} '{id}' is not 1 to {max} ASCII letters, digits, '-', '_' or '.'")]
    InvalidId {
        /// `account id` or `transfer id`.
        what: &'static str,
        /// The id given.
        id: String,
        /// The longest allowed (bytes).
        max: usize,
    },
    /// This account used the transfer id for another transfer.
    #[error("transfer id {transfer_id} was used for another transfer ({amount} cents to {to})")]
    TransferIdReused {
        /// The id.
        transfer_id: String,
        /// Where that transfer went.
        to: String,
        /// Its amount (cents).
        amount: u64,
    },
    /// A refund of a transfer this account never debited.
    #[error("this account has no transfer {transfer_id} to refund")]
    UnknownTransfer {
        /// The id.
        transfer_id: String,
    },
}

/// Where an account is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Status {
    /// No events: never opened.
    #[default]
    New,
    /// Opened and not closed.
    Open,
    /// Closed.
    Closed,
}

/// A transfer this account debited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingTransfer {
    /// The destination.
    pub to: String,
    /// Cents.
    pub amount: u64,
    /// Whether it was refunded (the destination refused it).
    pub refunded: bool,
}

/// An account's state, folded from its events.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Account {
    /// Where it is in its life.
    pub status: Status,
    /// Who holds it (empty until opened).
    pub owner: String,
    /// Cents.
    pub balance: u64,
    /// The transfers it debited, by transfer id.
    pub transfers_out: BTreeMap<String, OutgoingTransfer>,
    /// The transfers it was credited with, as `(source, transfer id)`.
    pub transfers_in: BTreeSet<(String, String)>,
}

/// Checks an account or transfer id: 1 to `max` bytes of ASCII letters, digits, `-`, `_`, `.`.
///
/// # Errors
/// [`AccountError::InvalidId`].
pub fn check_id(what: &'static str, id: &str, max: usize) -> Result<(), AccountError> {
    let allowed = |byte: u8| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.');
    if id.is_empty() || id.len() > max || !id.bytes().all(allowed) {
        return Err(AccountError::InvalidId { what, id: id.to_owned(), max });
    }
    Ok(())
}

fn positive(amount: u64) -> Result<u64, AccountError> {
    if amount == 0 {
        return Err(AccountError::ZeroAmount);
    }
    Ok(amount)
}

impl Account {
    fn open(&self) -> Result<(), AccountError> {
        match self.status {
            Status::Open => Ok(()),
            Status::New => Err(AccountError::NotOpen),
            Status::Closed => Err(AccountError::Closed),
        }
    }

    fn room_for(&self, amount: u64) -> Result<(), AccountError> {
        match self.balance.checked_add(amount) {
            Some(balance) if balance <= BALANCE_MAX_CENTS => Ok(()),
            _ => Err(AccountError::BalanceLimit { balance: self.balance, amount }),
        }
    }

    fn covers(&self, amount: u64) -> Result<(), AccountError> {
        if amount > self.balance {
            return Err(AccountError::InsufficientFunds {
                balance: self.balance,
                requested: amount,
            });
        }
        Ok(())
    }

    fn transfer(
        &self,
        to: &str,
        amount: u64,
        transfer_id: &str,
    ) -> Result<Vec<AccountEvent>, AccountError> {
        check_id("transfer id", transfer_id, TRANSFER_ID_BYTES_MAX)?;
        check_id("account id", to, ACCOUNT_ID_BYTES_MAX)?;
        if let Some(known) = self.transfers_out.get(transfer_id) {
            // The same request again (a retry after a lost answer): it happened already.
            if known.to == to && known.amount == amount {
                return Ok(Vec::new());
            }
            return Err(AccountError::TransferIdReused {
                transfer_id: transfer_id.to_owned(),
                to: known.to.clone(),
                amount: known.amount,
            });
        }
        self.open()?;
        self.covers(positive(amount)?)?;
        Ok(vec![AccountEvent::TransferDebited {
            transfer_id: transfer_id.to_owned(),
            to: to.to_owned(),
            amount,
        }])
    }

    fn credit(
        &self,
        from: &str,
        transfer_id: &str,
        amount: u64,
    ) -> Result<Vec<AccountEvent>, AccountError> {
        // Checked before the status: a transfer credited before the account closed stays
        // credited, and a re-delivered credit must not turn into a refund.
        if self.transfers_in.contains(&(from.to_owned(), transfer_id.to_owned())) {
            return Ok(Vec::new());
        }
        self.open()?;
        self.room_for(positive(amount)?)?;
        Ok(vec![AccountEvent::TransferCredited {
            transfer_id: transfer_id.to_owned(),
            from: from.to_owned(),
            amount,
        }])
    }

    fn refund(&self, transfer_id: &str, reason: &str) -> Result<Vec<AccountEvent>, AccountError> {
        let Some(transfer) = self.transfers_out.get(transfer_id) else {
            return Err(AccountError::UnknownTransfer { transfer_id: transfer_id.to_owned() });
        };
        if transfer.refunded {
            return Ok(Vec::new());
        }
        // No status or limit check: the money left this account, it can come back.
        Ok(vec![AccountEvent::TransferRefunded {
            transfer_id: transfer_id.to_owned(),
            to: transfer.to.clone(),
            amount: transfer.amount,
            reason: reason.to_owned(),
        }])
    }
}

impl Aggregate for Account {
    type Event = AccountEvent;
    type Command = AccountCommand;
    type Error = AccountError;

    fn event_type(event: &AccountEvent) -> &str {
        event.kind()
    }

    fn apply(&mut self, event: &AccountEvent) {
        // Saturating: an event already happened, and `handle` keeps balances in range.
        match event {
            AccountEvent::Opened { owner } => {
                self.status = Status::Open;
                owner.clone_into(&mut self.owner);
            }
            AccountEvent::Deposited { amount } => {
                self.balance = self.balance.saturating_add(*amount);
            }
            AccountEvent::Withdrawn { amount } => {
                self.balance = self.balance.saturating_sub(*amount);
            }
            AccountEvent::TransferDebited { transfer_id, to, amount } => {
                self.balance = self.balance.saturating_sub(*amount);
                let transfer =
                    OutgoingTransfer { to: to.clone(), amount: *amount, refunded: false };
                self.transfers_out.insert(transfer_id.clone(), transfer);
            }
            AccountEvent::TransferCredited { transfer_id, from, amount } => {
                self.balance = self.balance.saturating_add(*amount);
                self.transfers_in.insert((from.clone(), transfer_id.clone()));
            }
            AccountEvent::TransferRefunded { transfer_id, amount, .. } => {
                self.balance = self.balance.saturating_add(*amount);
                if let Some(transfer) = self.transfers_out.get_mut(transfer_id) {
                    transfer.refunded = true;
                }
            }
            AccountEvent::Closed => self.status = Status::Closed,
        }
    }

    fn handle(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Open { owner } => match self.status {
                Status::New => Ok(vec![AccountEvent::Opened { owner: owner.clone() }]),
                Status::Open => Err(AccountError::AlreadyOpen),
                Status::Closed => Err(AccountError::Closed),
            },
            AccountCommand::Deposit { amount } => {
                self.open()?;
                self.room_for(positive(*amount)?)?;
                Ok(vec![AccountEvent::Deposited { amount: *amount }])
            }
            AccountCommand::Withdraw { amount } => {
                self.open()?;
                self.covers(positive(*amount)?)?;
                Ok(vec![AccountEvent::Withdrawn { amount: *amount }])
            }
            AccountCommand::Close => {
                self.open()?;
                if self.balance != 0 {
                    return Err(AccountError::BalanceNotZero { balance: self.balance });
                }
                Ok(vec![AccountEvent::Closed])
            }
            AccountCommand::Transfer { to, amount, transfer_id } => {
                self.transfer(to, *amount, transfer_id)
            }
            AccountCommand::CreditTransfer { from, transfer_id, amount } => {
                self.credit(from, transfer_id, *amount)
            }
            AccountCommand::RefundTransfer { transfer_id, reason } => {
                self.refund(transfer_id, reason)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(account: &mut Account, command: AccountCommand) -> Result<usize, AccountError> {
        let events = account.handle(&command)?;
        for event in &events {
            account.apply(event);
        }
        Ok(events.len())
    }

    fn opened_with(balance: u64) -> Account {
        let mut account = Account::default();
        run(&mut account, AccountCommand::Open { owner: "Ada".into() }).expect("opens");
        if balance > 0 {
            run(&mut account, AccountCommand::Deposit { amount: balance }).expect("deposits");
        }
        account
    }

    #[test]
    fn withdrawals_past_the_balance_are_refused_with_the_numbers() {
        let mut account = opened_with(500);
        assert_eq!(
            run(&mut account, AccountCommand::Withdraw { amount: 501 }),
            Err(AccountError::InsufficientFunds { balance: 500, requested: 501 })
        );
        assert_eq!(run(&mut account, AccountCommand::Withdraw { amount: 500 }), Ok(1));
        assert_eq!(account.balance, 0);
        assert_eq!(
            run(&mut account, AccountCommand::Deposit { amount: 0 }),
            Err(AccountError::ZeroAmount)
        );
    }

    #[test]
    fn commands_follow_the_life_of_the_account() {
        let mut account = Account::default();
        assert_eq!(
            run(&mut account, AccountCommand::Deposit { amount: 1 }),
            Err(AccountError::NotOpen)
        );
        account = opened_with(10);
        assert_eq!(
            run(&mut account, AccountCommand::Open { owner: "Bo".into() }),
            Err(AccountError::AlreadyOpen)
        );
        assert_eq!(
            run(&mut account, AccountCommand::Close),
            Err(AccountError::BalanceNotZero { balance: 10 })
        );
        run(&mut account, AccountCommand::Withdraw { amount: 10 }).expect("empties");
        assert_eq!(run(&mut account, AccountCommand::Close), Ok(1));
        assert_eq!(
            run(&mut account, AccountCommand::Deposit { amount: 1 }),
            Err(AccountError::Closed)
        );
        assert_eq!(account.status, Status::Closed);
    }

    #[test]
    fn balances_stop_at_the_limit() {
        let mut account = opened_with(BALANCE_MAX_CENTS);
        assert_eq!(
            run(&mut account, AccountCommand::Deposit { amount: 1 }),
            Err(AccountError::BalanceLimit { balance: BALANCE_MAX_CENTS, amount: 1 })
        );
    }

    #[test]
    fn a_transfer_is_debited_once_per_id() {
        let mut source = opened_with(100);
        let transfer =
            AccountCommand::Transfer { to: "bob".into(), amount: 60, transfer_id: "t1".into() };
        assert_eq!(run(&mut source, transfer.clone()), Ok(1));
        // The same request again: nothing new.
        assert_eq!(run(&mut source, transfer), Ok(0));
        assert_eq!(source.balance, 40);
        let reused =
            AccountCommand::Transfer { to: "bob".into(), amount: 5, transfer_id: "t1".into() };
        assert!(matches!(
            run(&mut source, reused),
            Err(AccountError::TransferIdReused { amount: 60, .. })
        ));
        let too_much =
            AccountCommand::Transfer { to: "bob".into(), amount: 41, transfer_id: "t2".into() };
        assert_eq!(
            run(&mut source, too_much),
            Err(AccountError::InsufficientFunds { balance: 40, requested: 41 })
        );
        let bad_name =
            AccountCommand::Transfer { to: "bo b".into(), amount: 1, transfer_id: "t3".into() };
        assert!(matches!(run(&mut source, bad_name), Err(AccountError::InvalidId { .. })));
    }

    #[test]
    fn credits_and_refunds_happen_at_most_once() {
        let mut destination = opened_with(0);
        let credit = AccountCommand::CreditTransfer {
            from: "ada".into(),
            transfer_id: "t1".into(),
            amount: 7,
        };
        assert_eq!(run(&mut destination, credit.clone()), Ok(1));
        assert_eq!(run(&mut destination, credit.clone()), Ok(0));
        // The same id from another source is another transfer.
        let other = AccountCommand::CreditTransfer {
            from: "cy".into(),
            transfer_id: "t1".into(),
            amount: 3,
        };
        assert_eq!(run(&mut destination, other), Ok(1));
        assert_eq!(destination.balance, 10);
        // Credited before the account closed: a re-delivery is still a no-op, not a refusal.
        run(&mut destination, AccountCommand::Withdraw { amount: 10 }).expect("empties");
        run(&mut destination, AccountCommand::Close).expect("closes");
        assert_eq!(run(&mut destination, credit), Ok(0));

        let mut source = opened_with(50);
        let transfer =
            AccountCommand::Transfer { to: "gone".into(), amount: 20, transfer_id: "t9".into() };
        run(&mut source, transfer).expect("debits");
        let refund =
            AccountCommand::RefundTransfer { transfer_id: "t9".into(), reason: "closed".into() };
        assert_eq!(run(&mut source, refund.clone()), Ok(1));
        assert_eq!(run(&mut source, refund), Ok(0));
        assert_eq!(source.balance, 50);
        assert!(matches!(
            run(
                &mut source,
                AccountCommand::RefundTransfer {
                    transfer_id: "nope".into(),
                    reason: String::new()
                }
            ),
            Err(AccountError::UnknownTransfer { .. })
        ));
    }

    #[test]
    fn events_round_trip_as_json_with_their_type() {
        let event =
            AccountEvent::TransferDebited { transfer_id: "t1".into(), to: "bob".into(), amount: 5 };
        let json = serde_json::to_string(&event).expect("serialises");
        assert_eq!(json, r#"{"TransferDebited":{"transfer_id":"t1","to":"bob","amount":5}}"#);
        assert_eq!(serde_json::from_str::<AccountEvent>(&json).expect("parses"), event);
        assert_eq!(Account::event_type(&event), "TransferDebited");
        assert_eq!(event.balance_change(), -5);
        assert_eq!(event.counterparty(), Some("bob"));
    }
}
