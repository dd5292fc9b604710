//! Event sourcing with the SDK: an account aggregate run through a repository (conflicts
//! retried, snapshots every 20 events), its stream followed by a subscription, and a projection
//! of every account's balance kept exactly once.
//!
//! Start a server first (`cargo run --release -p sluice -- serve`), then:
//! `cargo run -p sluice-client --example streams [SERVER]` (default `http://127.0.0.1:8080`).
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sluice_client::worker::BoxError;
use sluice_client::{
    Aggregate, Client, ProjectionStore, RecordedEvent, RepositoryError, StreamFrom, TopicPosition,
};

#[derive(Debug, Default, Serialize, Deserialize)]
struct Account {
    balance: u64,
}

#[derive(Debug, Serialize, Deserialize)]
enum AccountEvent {
    Deposited { amount: u64 },
    Withdrawn { amount: u64 },
}

enum AccountCommand {
    Deposit(u64),
    Withdraw(u64),
}

#[derive(Debug, thiserror::Error)]
#[error("insufficient funds: the balance is {0}")]
struct Insufficient(u64);

impl Aggregate for Account {
    type Event = AccountEvent;
    type Command = AccountCommand;
    type Error = Insufficient;

    fn event_type(event: &AccountEvent) -> &str {
        match event {
            AccountEvent::Deposited { .. } => "Deposited",
            AccountEvent::Withdrawn { .. } => "Withdrawn",
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Deposited { amount } => self.balance += amount,
            AccountEvent::Withdrawn { amount } => self.balance -= amount,
        }
    }

    fn handle(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, Insufficient> {
        match *command {
            AccountCommand::Deposit(amount) => Ok(vec![AccountEvent::Deposited { amount }]),
            AccountCommand::Withdraw(amount) if amount > self.balance => {
                Err(Insufficient(self.balance))
            }
            AccountCommand::Withdraw(amount) => Ok(vec![AccountEvent::Withdrawn { amount }]),
        }
    }
}

/// Balances per account and the checkpoint, under one lock: each `apply` is one transaction.
#[derive(Default)]
struct Balances {
    inner: Mutex<(BTreeMap<String, i64>, Option<TopicPosition>)>,
}

impl ProjectionStore for Balances {
    async fn checkpoint(&self) -> Result<Option<TopicPosition>, BoxError> {
        Ok(self.inner.lock().map_err(|_| "poisoned")?.1.clone())
    }

    async fn apply(&self, event: &RecordedEvent, position: &TopicPosition) -> Result<(), BoxError> {
        let change = match event.data_as::<AccountEvent>()? {
            AccountEvent::Deposited { amount } => i64::try_from(amount)?,
            AccountEvent::Withdrawn { amount } => -i64::try_from(amount)?,
        };
        let mut inner = self.inner.lock().map_err(|_| "poisoned")?;
        *inner.0.entry(event.stream.clone()).or_default() += change;
        inner.1 = Some(position.clone());
        Ok(())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = std::env::args().nth(1).unwrap_or_else(|| "http://127.0.0.1:8080".to_owned());
    let client = Client::new(&server);
    client.create_topic("example-accounts", 3).await?;
    let accounts = client.repository::<Account>("example-accounts").snapshot_every(20);
    let stream = format!("account-{}", std::process::id());

    for amount in [100, 250, 75] {
        let done = accounts.execute(&stream, &AccountCommand::Deposit(amount)).await?;
        println!(
            "deposited {amount}: balance {} at version {:?}",
            done.state.balance, done.version
        );
    }
    match accounts.execute(&stream, &AccountCommand::Withdraw(1_000)).await {
        Err(RepositoryError::Rejected(refused)) => println!("withdrawing 1000 refused: {refused}"),
        other => println!("withdrawing 1000: {other:?}"),
    }
    let done = accounts.execute(&stream, &AccountCommand::Withdraw(125)).await?;
    println!("withdrew 125: balance {}", done.state.balance);

    let mut subscription =
        client.subscribe_stream("example-accounts", &stream, StreamFrom::Start).await?;
    loop {
        let event = subscription.next().await?;
        println!(
            "{stream} v{}: {} {}",
            event.version,
            event.event_type,
            String::from_utf8_lossy(&event.data)
        );
        if Some(event.version) == done.version {
            break;
        }
    }

    let projection = client.projection("example-accounts", Balances::default());
    let report = projection.catch_up().await?;
    let (balances, _) = &*projection.store().inner.lock().map_err(|_| "poisoned")?;
    println!("projected {} events; {stream} has {:?}", report.applied, balances.get(&stream));
    Ok(())
}
