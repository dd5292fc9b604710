//! The bank's SQLite database: its schema, how a connection is opened, and the checkpoints
//! table that the read model and the transfer processor each keep a row in.
//!
//! Tables:
//!
//! - `accounts`: one row per opened account: owner, balance (cents), status, and the version of
//!   the last event applied (the projection checks each event follows it).
//! - `history`: one row per event: account, version, kind, signed amount (cents; 0 for
//!   `Opened`/`Closed`), counterparty and transfer id (transfers only), and the event's time
//!   (ms since the epoch, as the event store stamped it).
//! - `checkpoints`: one row per consumer of the topic, named; the position just after the last
//!   event it handled (`0:15,1:7`).
//!
//! The database runs in WAL mode with `synchronous = NORMAL`: a power cut may lose the last
//! transactions, but each is atomic, so the checkpoint never disagrees with the tables and a
//! restart resumes where they stopped.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension};
use sluice_client::TopicPosition;

/// How long a connection waits for another connection's write lock before it gives up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The checkpoint row of the read model (balances, history).
pub const READ_MODEL_CHECKPOINT: &str = "read-model";
/// The checkpoint row of the transfer processor.
pub const PROCESSOR_CHECKPOINT: &str = "transfer-processor";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS accounts (
    account TEXT PRIMARY KEY NOT NULL,
    owner   TEXT NOT NULL,
    balance INTEGER NOT NULL,
    status  TEXT NOT NULL CHECK (status IN ('open', 'closed')),
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    account      TEXT NOT NULL,
    version      INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    amount       INTEGER NOT NULL,
    counterparty TEXT,
    transfer_id  TEXT,
    time_ms      INTEGER NOT NULL,
    PRIMARY KEY (account, version)
);
CREATE INDEX IF NOT EXISTS history_by_transfer
    ON history (transfer_id) WHERE transfer_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS checkpoints (
    name     TEXT PRIMARY KEY NOT NULL,
    position TEXT NOT NULL
);
";

/// A database failure, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// SQLite failed.
    #[error("{doing}: {source}")]
    Sqlite {
        /// What was being done: `opening /tmp/bank.db`, `applying event 3 of alice`.
        doing: String,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// A stored checkpoint does not parse.
    #[error("checkpoint {name} holds '{text}', not a position: {reason}")]
    BadCheckpoint {
        /// The checkpoint's name.
        name: String,
        /// What it holds.
        text: String,
        /// Why it does not parse.
        reason: String,
    },
    /// A thread panicked while it held the connection.
    #[error("the database connection was poisoned by a panic")]
    Poisoned,
}

/// `Result::map_err` adding what was being done to a SQLite error.
pub(crate) fn doing(doing: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> DatabaseError {
    let doing = doing.into();
    move |source| DatabaseError::Sqlite { doing, source }
}

/// Opens (creating if need be) the bank database at `path`, with the schema.
///
/// # Errors
/// [`DatabaseError::Sqlite`]: the file cannot be opened or is not a database.
pub fn open(path: &Path) -> Result<Connection, DatabaseError> {
    let opening = || format!("opening the database {}", path.display());
    let connection = Connection::open(path).map_err(doing(opening()))?;
    connection.busy_timeout(BUSY_TIMEOUT).map_err(doing(opening()))?;
    connection
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))
        .map_err(doing(opening()))?;
    connection.pragma_update(None, "synchronous", "NORMAL").map_err(doing(opening()))?;
    connection.execute_batch(SCHEMA).map_err(doing(opening()))?;
    Ok(connection)
}

/// The position checkpoint `name` holds, if it was ever written.
///
/// # Errors
/// [`DatabaseError::Sqlite`], [`DatabaseError::BadCheckpoint`].
pub fn checkpoint(
    connection: &Connection,
    name: &str,
) -> Result<Option<TopicPosition>, DatabaseError> {
    let text: Option<String> = connection
        .query_row("SELECT position FROM checkpoints WHERE name = ?1", [name], |row| row.get(0))
        .optional()
        .map_err(doing(format!("reading checkpoint {name}")))?;
    text.map(|text| {
        text.parse().map_err(|reason| DatabaseError::BadCheckpoint {
            name: name.to_owned(),
            text,
            reason,
        })
    })
    .transpose()
}

/// Records `position` as checkpoint `name` (inside the caller's transaction, if it has one).
///
/// # Errors
/// [`DatabaseError::Sqlite`].
pub fn save_checkpoint(
    connection: &Connection,
    name: &str,
    position: &TopicPosition,
) -> Result<(), DatabaseError> {
    connection
        .execute(
            "INSERT INTO checkpoints (name, position) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET position = excluded.position",
            [name, &position.to_string()],
        )
        .map_err(doing(format!("writing checkpoint {name}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_are_kept_by_name_across_connections() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("bank.db");
        let connection = open(&path).expect("opens");
        assert_eq!(checkpoint(&connection, READ_MODEL_CHECKPOINT).expect("reads"), None);
        let position = TopicPosition::new([(0, 3), (2, 9)]);
        save_checkpoint(&connection, READ_MODEL_CHECKPOINT, &position).expect("writes");
        save_checkpoint(&connection, READ_MODEL_CHECKPOINT, &position).expect("overwrites");
        drop(connection);
        let connection = open(&path).expect("opens again");
        assert_eq!(checkpoint(&connection, READ_MODEL_CHECKPOINT).expect("reads"), Some(position));
        assert_eq!(checkpoint(&connection, PROCESSOR_CHECKPOINT).expect("reads"), None);
    }
}
