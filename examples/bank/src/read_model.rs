//! The read model: the account topic folded into SQLite (see [`crate::database`] for the
//! tables), exactly once.
//!
//! [`ReadModel`] is the SDK's [`ProjectionStore`]: each event's rows and the checkpoint are
//! written in one SQLite transaction, so an event is applied if and only if the checkpoint is
//! past it, and a projection stopped (or killed) anywhere resumes without applying an event
//! twice or skipping one. As a second guard, each event must follow the version the account's
//! row holds (and `history` is keyed by account and version): a store fed an event twice
//! refuses it instead of counting it twice.
//!
//! The queries are the read side: balances, an account's history, a monthly statement (one
//! SQL query over the history, by calendar month in UTC) and a balance as of a time.
//!
//! SQLite calls block. They are short (one small transaction on a local file), so they run on
//! the async task that asks; a busy server would move them to `spawn_blocking`.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use sluice_client::worker::BoxError;
use sluice_client::{ClientError, ProjectionStore, RecordedEvent, TopicPosition};

use crate::account::AccountEvent;
use crate::database::{self, doing, DatabaseError, READ_MODEL_CHECKPOINT};

/// Why an event could not be applied. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The database failed.
    #[error(transparent)]
    Database(#[from] DatabaseError),
    /// The event's payload is not an [`AccountEvent`].
    #[error("event {version} of {account} is not an account event: {source}")]
    Decode {
        /// The account (stream).
        account: String,
        /// The event's version.
        version: u64,
        /// The decoding error.
        #[source]
        source: ClientError,
    },
    /// The event does not follow the last one applied to its account: applied twice, or one
    /// is missing.
    #[error("event {version} of {account} does not follow the last applied ({applied:?})")]
    OutOfOrder {
        /// The account.
        account: String,
        /// The event's version.
        version: u64,
        /// The version of the last event applied to it (`None`: none).
        applied: Option<u64>,
    },
    /// A number past SQLite's 64-bit integers.
    #[error("event {version} of {account} holds a number past the range of SQLite integers")]
    OutOfRange {
        /// The account.
        account: String,
        /// The event's version.
        version: u64,
    },
}

/// One account's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRow {
    /// The account id (its stream).
    pub account: String,
    /// Who holds it.
    pub owner: String,
    /// Cents.
    pub balance_cents: i64,
    /// `open` or `closed`.
    pub status: String,
    /// The version of the last event applied.
    pub version: u64,
}

/// One event of an account's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    /// The account.
    pub account: String,
    /// The event's version.
    pub version: u64,
    /// The event's type (`Deposited`, `TransferDebited`, ...).
    pub kind: String,
    /// Cents, negative for money going out.
    pub amount_cents: i64,
    /// The other account of a transfer.
    pub counterparty: Option<String>,
    /// The transfer's id.
    pub transfer_id: Option<String>,
    /// When it was appended (ms since the epoch).
    pub time_ms: i64,
    /// The same time in UTC, `2026-01-31 17:05:09.120`.
    pub time_utc: String,
}

/// One calendar month (UTC) of an account's statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementRow {
    /// `2026-01`.
    pub month: String,
    /// The balance when the month began (cents).
    pub opening_cents: i64,
    /// Money in during the month (cents).
    pub credits_cents: i64,
    /// Money out during the month (cents, positive).
    pub debits_cents: i64,
    /// The balance when the month ended (cents).
    pub closing_cents: i64,
}

/// The bank's read model in a SQLite file. Shared between a projection (as its store) and the
/// code that queries it, behind one connection.
#[derive(Debug)]
pub struct ReadModel {
    connection: Mutex<Connection>,
}

/// The history columns, with the time formatted.
const HISTORY_COLUMNS: &str = "account, version, kind, amount, counterparty, transfer_id, time_ms,
    strftime('%Y-%m-%d %H:%M:%f', time_ms / 1000.0, 'unixepoch')";

/// Per calendar month (UTC) of an account's history: money in, money out, and the running
/// balance around them (a window over the months in order).
const STATEMENT: &str = "
WITH months AS (
    SELECT strftime('%Y-%m', time_ms / 1000, 'unixepoch') AS month,
           SUM(CASE WHEN amount > 0 THEN amount ELSE 0 END) AS credits,
           SUM(CASE WHEN amount < 0 THEN -amount ELSE 0 END) AS debits,
           SUM(amount) AS net
    FROM history
    WHERE account = ?1
    GROUP BY month
)
SELECT month,
       SUM(net) OVER (ORDER BY month) - net AS opening,
       credits,
       debits,
       SUM(net) OVER (ORDER BY month) AS closing
FROM months
ORDER BY month";

impl ReadModel {
    /// Opens the read model in the database at `path` (created if need be). A new database
    /// has no checkpoint: a projection into it starts at the topic's first event.
    ///
    /// # Errors
    /// [`DatabaseError::Sqlite`].
    pub fn open(path: &Path) -> Result<Self, DatabaseError> {
        Ok(Self { connection: Mutex::new(database::open(path)?) })
    }

    fn connection(&self) -> Result<MutexGuard<'_, Connection>, DatabaseError> {
        self.connection.lock().map_err(|_| DatabaseError::Poisoned)
    }

    /// The position just after the last event applied, if any was.
    ///
    /// # Errors
    /// [`DatabaseError`].
    pub fn position(&self) -> Result<Option<TopicPosition>, DatabaseError> {
        let connection = self.connection()?;
        database::checkpoint(&connection, READ_MODEL_CHECKPOINT)
    }

    /// Applies `event` and records `position` as the checkpoint, in one transaction.
    ///
    /// # Errors
    /// [`ApplyError`]; then nothing was written.
    pub fn apply_event(
        &self,
        event: &RecordedEvent,
        position: &TopicPosition,
    ) -> Result<(), ApplyError> {
        let decoded: AccountEvent = event.data_as().map_err(|source| ApplyError::Decode {
            account: event.stream.clone(),
            version: event.version,
            source,
        })?;
        let applying = format!("applying event {} of {}", event.version, event.stream);
        let mut connection = self.connection()?;
        // Immediate: take the write lock first. A deferred transaction would read, then fail
        // to upgrade (SQLITE_BUSY_SNAPSHOT, no waiting) if the processor's connection wrote
        // its checkpoint in between.
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(doing(applying.as_str()))?;
        apply_rows(&transaction, event, &decoded).map_err(|error| match error {
            RowsError::Sqlite(source) => {
                ApplyError::Database(DatabaseError::Sqlite { doing: applying.clone(), source })
            }
            RowsError::Apply(error) => error,
        })?;
        database::save_checkpoint(&transaction, READ_MODEL_CHECKPOINT, position)?;
        // Dropping an uncommitted transaction rolls it back: an error above writes nothing.
        transaction.commit().map_err(doing(applying))?;
        Ok(())
    }

    /// Every account, by id.
    ///
    /// # Errors
    /// [`DatabaseError`].
    pub fn accounts(&self) -> Result<Vec<AccountRow>, DatabaseError> {
        let connection = self.connection()?;
        let reading = || "reading the accounts";
        let mut statement = connection
            .prepare(
                "SELECT account, owner, balance, status, version FROM accounts ORDER BY account",
            )
            .map_err(doing(reading()))?;
        let rows = statement
            .query_map([], |row| {
                Ok(AccountRow {
                    account: row.get(0)?,
                    owner: row.get(1)?,
                    balance_cents: row.get(2)?,
                    status: row.get(3)?,
                    version: version_of(row.get(4)?)?,
                })
            })
            .map_err(doing(reading()))?;
        rows.collect::<Result<_, _>>().map_err(doing(reading()))
    }

    /// One account's row, if it was opened.
    ///
    /// # Errors
    /// [`DatabaseError`].
    pub fn account(&self, account: &str) -> Result<Option<AccountRow>, DatabaseError> {
        Ok(self.accounts()?.into_iter().find(|row| row.account == account))
    }

    /// `account`'s events, oldest first.
    ///
    /// # Errors
    /// [`DatabaseError`].
    pub fn history(&self, account: &str) -> Result<Vec<HistoryRow>, DatabaseError> {
        let connection = self.connection()?;
        let reading = || format!("reading the history of {account}");
        let sql =
            format!("SELECT {HISTORY_COLUMNS} FROM history WHERE account = ?1 ORDER BY version");
        let mut statement = connection.prepare(&sql).map_err(doing(reading()))?;
        let rows = statement
            .query_map([account], |row| {
                Ok(HistoryRow {
                    account: row.get(0)?,
                    version: version_of(row.get(1)?)?,
                    kind: row.get(2)?,
                    amount_cents: row.get(3)?,
                    counterparty: row.get(4)?,
                    transfer_id: row.get(5)?,
                    time_ms: row.get(6)?,
                    time_utc: row.get(7)?,
                })
            })
            .map_err(doing(reading()))?;
        rows.collect::<Result<_, _>>().map_err(doing(reading()))
    }

    /// `account`'s monthly statement: per calendar month (UTC) with events, the opening
    /// balance, credits, debits and closing balance.
    ///
    /// # Errors
    /// [`DatabaseError`].
    pub fn statement(&self, account: &str) -> Result<Vec<StatementRow>, DatabaseError> {
        let connection = self.connection()?;
        statement_of(&connection, account)
            .map_err(doing(format!("reading the statement of {account}")))
    }

    /// `account`'s balance as of `as_of_ms` (ms since the epoch): the sum of its history up
    /// to and including that time. Zero for an account without events then.
    ///
    /// # Errors
    /// [`DatabaseError`].
    pub fn balance_as_of(&self, account: &str, as_of_ms: i64) -> Result<i64, DatabaseError> {
        self.connection()?
            .query_row(
                "SELECT COALESCE(SUM(amount), 0) FROM history WHERE account = ?1 AND time_ms <= ?2",
                params![account, as_of_ms],
                |row| row.get(0),
            )
            .map_err(doing(format!("reading the balance of {account} as of {as_of_ms}")))
    }
}

impl ReadModel {
    /// `ms` since the epoch written as the history writes times: `2026-01-31 17:05:09.120`
    /// (UTC).
    ///
    /// # Errors
    /// [`DatabaseError`].
    pub fn time_utc(&self, ms: i64) -> Result<String, DatabaseError> {
        self.connection()?
            .query_row(
                "SELECT strftime('%Y-%m-%d %H:%M:%f', ?1 / 1000.0, 'unixepoch')",
                [ms],
                |row| row.get(0),
            )
            .map_err(doing(format!("formatting the time {ms}")))
    }
}

impl ProjectionStore for ReadModel {
    async fn checkpoint(&self) -> Result<Option<TopicPosition>, BoxError> {
        Ok(self.position()?)
    }

    async fn apply(&self, event: &RecordedEvent, position: &TopicPosition) -> Result<(), BoxError> {
        Ok(self.apply_event(event, position)?)
    }
}

/// A stored version as `u64` (they are written from `u64`, so never negative).
fn version_of(stored: i64) -> Result<u64, rusqlite::Error> {
    u64::try_from(stored).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(0, stored))
}

/// What [`apply_rows`] can fail with: SQLite (given context by the caller) or the event.
enum RowsError {
    Sqlite(rusqlite::Error),
    Apply(ApplyError),
}

impl From<rusqlite::Error> for RowsError {
    fn from(error: rusqlite::Error) -> Self {
        Self::Sqlite(error)
    }
}

/// Writes one event's rows: its account's row, and its history row.
fn apply_rows(
    transaction: &Transaction<'_>,
    recorded: &RecordedEvent,
    event: &AccountEvent,
) -> Result<(), RowsError> {
    let account = recorded.stream.as_str();
    let out_of_range = || {
        RowsError::Apply(ApplyError::OutOfRange {
            account: account.to_owned(),
            version: recorded.version,
        })
    };
    let version = i64::try_from(recorded.version).map_err(|_| out_of_range())?;
    let amount = i64::try_from(event.balance_change()).map_err(|_| out_of_range())?;
    let applied: Option<i64> = transaction
        .query_row("SELECT version FROM accounts WHERE account = ?1", [account], |row| row.get(0))
        .optional()?;
    let follows = match (event, applied) {
        (AccountEvent::Opened { .. }, None) => true,
        (AccountEvent::Opened { .. }, Some(_)) | (_, None) => false,
        (_, Some(applied)) => applied.checked_add(1) == Some(version),
    };
    if !follows {
        return Err(RowsError::Apply(ApplyError::OutOfOrder {
            account: account.to_owned(),
            version: recorded.version,
            applied: applied.and_then(|applied| u64::try_from(applied).ok()),
        }));
    }
    match event {
        AccountEvent::Opened { owner } => {
            transaction.execute(
                "INSERT INTO accounts (account, owner, balance, status, version)
                 VALUES (?1, ?2, 0, 'open', ?3)",
                params![account, owner, version],
            )?;
        }
        _ => {
            let closed = matches!(event, AccountEvent::Closed);
            transaction.execute(
                "UPDATE accounts
                 SET balance = balance + ?2, version = ?3,
                     status = CASE WHEN ?4 THEN 'closed' ELSE status END
                 WHERE account = ?1",
                params![account, amount, version, closed],
            )?;
        }
    }
    transaction.execute(
        "INSERT INTO history (account, version, kind, amount, counterparty, transfer_id, time_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            account,
            version,
            event.kind(),
            amount,
            event.counterparty(),
            event.transfer_id(),
            recorded.timestamp_ms
        ],
    )?;
    Ok(())
}

fn statement_of(
    connection: &Connection,
    account: &str,
) -> Result<Vec<StatementRow>, rusqlite::Error> {
    let mut statement = connection.prepare(STATEMENT)?;
    let rows = statement.query_map([account], |row| {
        Ok(StatementRow {
            month: row.get(0)?,
            opening_cents: row.get(1)?,
            credits_cents: row.get(2)?,
            debits_cents: row.get(3)?,
            closing_cents: row.get(4)?,
        })
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Day `day` of 2026's `month` at noon UTC, in ms since the epoch (2026-01-01 is day
    /// 20,454 since the epoch; months here are 31 days apart, which is enough to cross them).
    fn time_ms(month: i64, day: i64) -> i64 {
        let day_index = 20_454 + (month - 1) * 31 + (day - 1);
        day_index * 86_400_000 + 43_200_000
    }

    fn recorded(account: &str, version: u64, time_ms: i64, event: &AccountEvent) -> RecordedEvent {
        RecordedEvent {
            stream: account.to_owned(),
            version,
            event_type: event.kind().to_owned(),
            id: format!("{account}-{version}"),
            partition: 0,
            offset: version,
            timestamp_ms: time_ms,
            data: serde_json::to_vec(event).expect("serialises"),
            headers: BTreeMap::new(),
        }
    }

    #[test]
    fn statements_carry_the_balance_from_month_to_month() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let model = ReadModel::open(&dir.path().join("bank.db")).expect("opens");
        let events = [
            (time_ms(1, 5), AccountEvent::Opened { owner: "Ada".into() }),
            (time_ms(1, 6), AccountEvent::Deposited { amount: 10_000 }),
            (time_ms(1, 20), AccountEvent::Withdrawn { amount: 2_500 }),
            (
                time_ms(3, 2),
                AccountEvent::TransferDebited {
                    transfer_id: "t1".into(),
                    to: "bo".into(),
                    amount: 500,
                },
            ),
            (
                time_ms(3, 3),
                AccountEvent::TransferRefunded {
                    transfer_id: "t1".into(),
                    to: "bo".into(),
                    amount: 500,
                    reason: "closed".into(),
                },
            ),
            (time_ms(3, 9), AccountEvent::Deposited { amount: 1 }),
        ];
        for (version, (time, event)) in (0u64..).zip(&events) {
            let position = TopicPosition::new([(0, version + 1)]);
            model.apply_event(&recorded("ada", version, *time, event), &position).expect("applies");
        }
        let months: Vec<_> = model
            .statement("ada")
            .expect("reads")
            .into_iter()
            .map(|row| {
                (
                    row.month,
                    row.opening_cents,
                    row.credits_cents,
                    row.debits_cents,
                    row.closing_cents,
                )
            })
            .collect();
        assert_eq!(
            months,
            vec![
                ("2026-01".to_owned(), 0, 10_000, 2_500, 7_500),
                ("2026-03".to_owned(), 7_500, 501, 500, 7_501),
            ]
        );
        assert_eq!(model.balance_as_of("ada", time_ms(1, 19)).expect("reads"), 10_000);
        assert_eq!(model.balance_as_of("ada", time_ms(1, 1)).expect("reads"), 0);
        let history = model.history("ada").expect("reads");
        assert_eq!(history[3].counterparty.as_deref(), Some("bo"));
        assert_eq!(history[1].time_utc, "2026-01-06 12:00:00.000");
        assert_eq!(model.time_utc(time_ms(1, 6)).expect("formats"), history[1].time_utc);
        let row = model.account("ada").expect("reads").expect("opened");
        assert_eq!((row.balance_cents, row.version, row.status.as_str()), (7_501, 5, "open"));
    }

    #[test]
    fn an_event_applied_twice_or_out_of_order_is_refused_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let model = ReadModel::open(&dir.path().join("bank.db")).expect("opens");
        let opened = recorded("ada", 0, 1_000, &AccountEvent::Opened { owner: "Ada".into() });
        let deposit = recorded("ada", 1, 2_000, &AccountEvent::Deposited { amount: 5 });
        model.apply_event(&opened, &TopicPosition::new([(0, 1)])).expect("applies");
        model.apply_event(&deposit, &TopicPosition::new([(0, 2)])).expect("applies");
        let again = model.apply_event(&deposit, &TopicPosition::new([(0, 3)]));
        assert!(matches!(again, Err(ApplyError::OutOfOrder { applied: Some(1), .. })), "{again:?}");
        let skipped = recorded("ada", 5, 3_000, &AccountEvent::Deposited { amount: 5 });
        assert!(model.apply_event(&skipped, &TopicPosition::new([(0, 9)])).is_err());
        let mut garbage = recorded("ada", 2, 3_000, &AccountEvent::Closed);
        garbage.data = b"{}".to_vec();
        assert!(matches!(
            model.apply_event(&garbage, &TopicPosition::new([(0, 9)])),
            Err(ApplyError::Decode { version: 2, .. })
        ));
        assert_eq!(model.position().expect("reads"), Some(TopicPosition::new([(0, 2)])));
        assert_eq!(model.account("ada").expect("reads").expect("opened").balance_cents, 5);
    }
}
