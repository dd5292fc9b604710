//! The bank's write side and its questions to the event store: commands on accounts through
//! the SDK's [`Repository`] (load, decide, append at the loaded version, retry conflicts), the
//! state of a transfer, and an account's balance as of a time, folded from its stream read
//! `as_of` that time.

use sluice_client::streams::STREAM_NOT_FOUND;
use sluice_client::{
    Aggregate, Client, ClientError, Executed, Loaded, ReadOptions, RecordedEvent, Repository,
    RepositoryError,
};

use crate::account::{check_id, Account, AccountCommand, AccountError, ACCOUNT_ID_BYTES_MAX};

/// Why a bank operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BankError {
    /// The account refused the command; nothing was appended.
    #[error("refused: {0}")]
    Refused(AccountError),
    /// A transfer from an account to itself.
    #[error("refused: a transfer from {account} to itself")]
    SameAccount {
        /// The account.
        account: String,
    },
    /// The command could not be applied for another reason than a refusal (conflicts past
    /// the retries, an event that does not decode, a request that failed).
    #[error(transparent)]
    Repository(RepositoryError<AccountError>),
    /// A read failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A stored event is not an account event.
    #[error("event {version} of {account} is not an account event: {source}")]
    Decode {
        /// The account.
        account: String,
        /// The event's version.
        version: u64,
        /// The decoding error.
        #[source]
        source: ClientError,
    },
}

impl From<RepositoryError<AccountError>> for BankError {
    fn from(error: RepositoryError<AccountError>) -> Self {
        match error {
            RepositoryError::Rejected(refusal) => Self::Refused(refusal),
            other => Self::Repository(other),
        }
    }
}

/// Where a transfer is, as its two accounts' streams tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferState {
    /// The source has no such transfer.
    Unknown,
    /// Debited; neither credited nor refunded yet.
    Debited,
    /// Credited to the destination.
    Credited,
    /// Refused by the destination and refunded to the source.
    Refunded,
}

/// An account as it was at a time, folded from its stream read as of then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountAsOf {
    /// The state.
    pub account: Account,
    /// The version of its last event then (`None`: it had no events).
    pub version: Option<u64>,
}

/// The bank: accounts in one event topic, one stream per account. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Bank {
    client: Client,
    accounts: Repository<Account>,
}

impl Bank {
    /// A bank over the event topic `topic` of the server `client` talks to (see
    /// [`crate::topic::ensure_event_topic`] to create it).
    pub fn new(client: &Client, topic: &str) -> Self {
        Self { client: client.clone(), accounts: client.repository(topic) }
    }

    /// The event topic.
    pub fn topic(&self) -> &str {
        self.accounts.topic()
    }

    /// The repository of accounts (the transfer processor runs commands through it too).
    pub fn accounts(&self) -> &Repository<Account> {
        &self.accounts
    }

    /// Runs `command` on `account`.
    ///
    /// # Errors
    /// [`BankError::Refused`] with the account's reason (also for an invalid account id);
    /// [`BankError::Repository`].
    pub async fn execute(
        &self,
        account: &str,
        command: &AccountCommand,
    ) -> Result<Executed<Account>, BankError> {
        check_id("account id", account, ACCOUNT_ID_BYTES_MAX).map_err(BankError::Refused)?;
        Ok(self.accounts.execute(account, command).await?)
    }

    /// Opens `account` for `owner`.
    ///
    /// # Errors
    /// As [`Bank::execute`]; refused if the account was opened before.
    pub async fn open(&self, account: &str, owner: &str) -> Result<Executed<Account>, BankError> {
        self.execute(account, &AccountCommand::Open { owner: owner.to_owned() }).await
    }

    /// Deposits `amount` cents.
    ///
    /// # Errors
    /// As [`Bank::execute`].
    pub async fn deposit(
        &self,
        account: &str,
        amount: u64,
    ) -> Result<Executed<Account>, BankError> {
        self.execute(account, &AccountCommand::Deposit { amount }).await
    }

    /// Withdraws `amount` cents.
    ///
    /// # Errors
    /// As [`Bank::execute`]; refused with [`AccountError::InsufficientFunds`] if the balance
    /// is smaller.
    pub async fn withdraw(
        &self,
        account: &str,
        amount: u64,
    ) -> Result<Executed<Account>, BankError> {
        self.execute(account, &AccountCommand::Withdraw { amount }).await
    }

    /// Closes `account` (its balance must be zero).
    ///
    /// # Errors
    /// As [`Bank::execute`].
    pub async fn close(&self, account: &str) -> Result<Executed<Account>, BankError> {
        self.execute(account, &AccountCommand::Close).await
    }

    /// Starts a transfer of `amount` cents from `from` to `to`, identified by `transfer_id`
    /// (unique among `from`'s transfers): debits `from` now. The transfer processor credits
    /// `to`, or refunds `from` if `to` refuses (see [`Bank::transfer_state`]). Running it again
    /// with the same id, destination and amount appends nothing.
    ///
    /// # Errors
    /// As [`Bank::execute`]; [`BankError::SameAccount`].
    pub async fn transfer(
        &self,
        from: &str,
        to: &str,
        amount: u64,
        transfer_id: &str,
    ) -> Result<Executed<Account>, BankError> {
        if from == to {
            return Err(BankError::SameAccount { account: from.to_owned() });
        }
        let command = AccountCommand::Transfer {
            to: to.to_owned(),
            amount,
            transfer_id: transfer_id.to_owned(),
        };
        self.execute(from, &command).await
    }

    /// Loads `account` from its stream.
    ///
    /// # Errors
    /// [`BankError::Repository`].
    pub async fn load(&self, account: &str) -> Result<Loaded<Account>, BankError> {
        Ok(self.accounts.load(account).await?)
    }

    /// Where transfer `transfer_id` from `from` is, from the two accounts' streams.
    ///
    /// # Errors
    /// [`BankError::Repository`].
    pub async fn transfer_state(
        &self,
        from: &str,
        transfer_id: &str,
    ) -> Result<TransferState, BankError> {
        let source = self.load(from).await?.state;
        let Some(transfer) = source.transfers_out.get(transfer_id) else {
            return Ok(TransferState::Unknown);
        };
        if transfer.refunded {
            return Ok(TransferState::Refunded);
        }
        let destination = self.load(&transfer.to).await?.state;
        if destination.transfers_in.contains(&(from.to_owned(), transfer_id.to_owned())) {
            return Ok(TransferState::Credited);
        }
        Ok(TransferState::Debited)
    }

    /// `account` as it was at `as_of_ms` (ms since the epoch, the event store's clock): its
    /// stream read as of that time (events appended at or before it), folded.
    ///
    /// # Errors
    /// [`BankError::Client`], [`BankError::Decode`].
    pub async fn account_as_of(
        &self,
        account: &str,
        as_of_ms: i64,
    ) -> Result<AccountAsOf, BankError> {
        let mut as_of = AccountAsOf { account: Account::default(), version: None };
        let mut options = ReadOptions::forward().as_of_ms(as_of_ms);
        loop {
            let slice = match self.client.read_stream(self.topic(), account, &options).await {
                Err(error) if error.code() == Some(STREAM_NOT_FOUND) => return Ok(as_of),
                other => other?,
            };
            for recorded in &slice.events {
                as_of.account.apply(&decode(recorded)?);
                as_of.version = Some(recorded.version);
            }
            match slice.next {
                Some(next) => options = options.from(next),
                None => return Ok(as_of),
            }
        }
    }

    /// The newest event of `account`, if it has one (its time and partition, say).
    ///
    /// # Errors
    /// [`BankError::Client`].
    pub async fn last_event(&self, account: &str) -> Result<Option<RecordedEvent>, BankError> {
        let options = ReadOptions::backward().count(1);
        match self.client.read_stream(self.topic(), account, &options).await {
            Ok(slice) => Ok(slice.events.into_iter().next()),
            Err(error) if error.code() == Some(STREAM_NOT_FOUND) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }
}

/// A recorded event as an account event.
///
/// # Errors
/// [`BankError::Decode`].
pub fn decode(recorded: &RecordedEvent) -> Result<crate::account::AccountEvent, BankError> {
    recorded.data_as().map_err(|source| BankError::Decode {
        account: recorded.stream.clone(),
        version: recorded.version,
        source,
    })
}
