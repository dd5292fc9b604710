//! An event-sourced bank on Sluice, with the Rust SDK (`sluice-client`).
//!
//! - [`account`]: the `Account` aggregate, one stream per account in an event topic.
//! - [`bank`]: commands through the SDK's repository, transfer states, and balances as of a
//!   time read from the event store.
//! - [`processor`]: the transfer processor, which finishes each transfer with a credit or, if
//!   the destination refuses, a compensating refund; safe to re-run.
//! - [`read_model`] over [`database`]: balances, history, monthly statements and the
//!   projection's checkpoint in SQLite, each event applied in one transaction with its
//!   checkpoint.
//! - [`topic`]: the event topic, created with retention forever.
//! - [`embedded`]: a Sluice server in this process, for the scenario and the tests.
//!
//! The binary (`cargo run -p sluice-example-bank`) runs a scripted scenario; see the
//! example's README for what it shows and the decisions behind it.

#![warn(missing_docs)]

pub mod account;
pub mod bank;
pub mod database;
pub mod embedded;
pub mod processor;
pub mod read_model;
pub mod topic;

pub use account::{Account, AccountCommand, AccountError, AccountEvent, Status};
pub use bank::{Bank, BankError, TransferState};
pub use embedded::EmbeddedServer;
pub use processor::{ProcessorStats, Settlement, TransferProcessor};
pub use read_model::ReadModel;

/// `cents` as `-12.34` (two decimals, no currency).
pub fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let magnitude = cents.unsigned_abs();
    format!("{sign}{}.{:02}", magnitude / 100, magnitude % 100)
}

#[cfg(test)]
mod tests {
    #[test]
    fn money_has_two_decimals_and_a_sign() {
        assert_eq!(super::money(0), "0.00");
        assert_eq!(super::money(7), "0.07");
        assert_eq!(super::money(-12_345), "-123.45");
        assert_eq!(super::money(i64::MIN), "-92233720368547758.08");
    }
}
