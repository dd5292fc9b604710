//! The scripted scenario the binary runs, printing each step: accounts opened, deposits, a
//! refused withdrawal, a transfer credited, two transfers refused by their destination and
//! compensated, then balances, a history, a monthly statement and balances as of a time
//! between two steps, each cross-checked against the event store.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use sluice_client::{Client, ProjectionError, ProjectionReport, ProjectionStore};
use sluice_example_bank::bank::TransferState;
use sluice_example_bank::topic::{ensure_event_topic, Ensured};
use sluice_example_bank::{money, Bank, BankError, EmbeddedServer, ReadModel, TransferProcessor};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Partitions of the event topic: accounts spread over them, so transfers cross partitions.
const PARTITIONS: u32 = 3;
/// Longest the scenario waits for the processor to settle a transfer.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between polls of a transfer's state.
const SETTLE_POLL: Duration = Duration::from_millis(5);

/// Where the scenario runs.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// A running server's URL; `None` starts one in this process.
    pub server: Option<String>,
    /// The event topic; `None`: `account` on an embedded server, `account-<run id>` on a
    /// running one (so runs do not meet each other's accounts).
    pub topic: Option<String>,
    /// Where to keep the SQLite database (a new file); `None`: a temporary file.
    pub database: Option<PathBuf>,
}

/// Runs the scenario, printing each step.
///
/// # Errors
/// Any step failing unexpectedly, or a cross-check that does not hold.
pub async fn run(options: Options) -> anyhow::Result<()> {
    let work = tempfile::tempdir().context("making a temporary directory")?;
    let database = options.database.clone().unwrap_or_else(|| work.path().join("bank.db"));
    ensure!(
        !database.exists(),
        "{} exists: the scenario builds its read model from scratch, give a new file",
        database.display()
    );
    let (embedded, url) = match &options.server {
        Some(url) => (None, url.clone()),
        None => {
            let data = work.path().join("sluice");
            let server = EmbeddedServer::start(&data).await.context("starting Sluice")?;
            let url = server.url();
            println!("Sluice: embedded server at {url}, data in {}", data.display());
            (Some(server), url)
        }
    };
    let topic = options.topic.clone().unwrap_or_else(|| match &embedded {
        Some(_) => "account".to_owned(),
        None => format!("account-{}", run_id()),
    });
    let outcome = script(&url, &topic, &database).await;
    let Some(server) = embedded else { return outcome };
    // The scenario's own failure comes first; its background runs stop when it drops them.
    outcome.and(server.stop().await.context("stopping the embedded server"))
}

/// A run id for topic names: ms since the epoch, in base 36.
fn run_id() -> String {
    let mut ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis());
    let mut digits = Vec::new();
    while ms > 0 || digits.is_empty() {
        let digit = u32::try_from(ms % 36).unwrap_or(0);
        digits.push(char::from_digit(digit, 36).unwrap_or('0'));
        ms /= 36;
    }
    digits.iter().rev().collect()
}

/// A projection running in the background until stopped.
struct Running<S> {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<ProjectionReport, ProjectionError>>,
    store: Arc<S>,
}

impl<S: ProjectionStore + 'static> Running<S> {
    fn start(client: &Client, topic: &str, store: Arc<S>) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let projection = client.projection(topic, Arc::clone(&store));
        let task = tokio::spawn(async move {
            projection
                .run_until(async {
                    let _ = stopped.await;
                })
                .await
        });
        Self { stop, task, store }
    }

    /// Fails if the projection stopped by itself (an error), without waiting.
    async fn check_alive(&mut self, what: &str) -> anyhow::Result<()> {
        if self.task.is_finished() {
            let ended = (&mut self.task).await.with_context(|| format!("the {what} panicked"))?;
            ended.with_context(|| format!("the {what} stopped"))?;
            bail!("the {what} stopped by itself");
        }
        Ok(())
    }

    async fn stop(self, what: &str) -> anyhow::Result<(ProjectionReport, Arc<S>)> {
        let _ = self.stop.send(());
        let report = self.task.await.with_context(|| format!("the {what} panicked"))?;
        Ok((report.with_context(|| format!("the {what} failed"))?, self.store))
    }
}

async fn script(url: &str, topic: &str, database: &Path) -> anyhow::Result<()> {
    let created = ensure_event_topic(url, topic, PARTITIONS).await.context("creating the topic")?;
    let state = match created {
        Ensured::Created => "created",
        Ensured::Existed => "exists",
    };
    println!("Event topic `{topic}`: {state} ({PARTITIONS} partitions, retention forever)");
    println!("Read model: SQLite {} at {}", rusqlite::version(), database.display());
    let client = Client::new(url);
    let bank = Bank::new(&client, topic);
    let model = Arc::new(ReadModel::open(database)?);
    let processor = Arc::new(TransferProcessor::open(bank.clone(), database)?);
    let mut projection = Running::start(&client, topic, Arc::clone(&model));
    let mut processing = Running::start(&client, topic, processor);
    println!("Running in the background: the read-model projection and the transfer processor\n");

    let mut steps = Steps { bank: &bank, processing: &mut processing, count: 0 };
    steps.accounts().await?;
    let as_of_ms = steps.mark().await?;
    steps.transfers().await?;

    processing.check_alive("transfer processor").await?;
    projection.check_alive("read-model projection").await?;
    let (processed, processor) = processing.stop("transfer processor").await?;
    let (_, model) = projection.stop("read-model projection").await?;
    // Whatever the background run had not applied yet.
    client
        .projection(topic, Arc::clone(&model))
        .catch_up()
        .await
        .context("catching the read model up")?;
    let stats = processor.stats();
    println!(
        "\nThe transfer processor handled {} events; transfers credited: {}, refunded: {}, \
         found settled already: {}",
        processed.applied, stats.credited, stats.refunded, stats.already_settled
    );
    report(&bank, &model, as_of_ms).await
}

/// The commands, printed as they run, numbered.
struct Steps<'a> {
    bank: &'a Bank,
    processing: &'a mut Running<TransferProcessor>,
    count: u32,
}

impl Steps<'_> {
    fn say(&mut self, text: &str) {
        self.count += 1;
        println!("{:>2}. {text}", self.count);
    }

    /// Opens alice, bob and carol, deposits, one withdrawal and one refused.
    async fn accounts(&mut self) -> anyhow::Result<()> {
        let bank = self.bank;
        for (account, owner) in
            [("alice", "Alice Liddell"), ("bob", "Bob Cratchit"), ("carol", "Carol Danvers")]
        {
            bank.open(account, owner).await.with_context(|| {
                format!("opening {account}: the scenario needs a topic without its accounts")
            })?;
            let partition = bank.last_event(account).await?.map(|event| event.partition);
            let partition = partition.context("an opened account has an event")?;
            self.say(&format!("open {account} for {owner}: partition {partition}"));
        }
        for (account, cents) in [("alice", 10_000), ("bob", 5_000), ("carol", 2_000)] {
            let done = bank.deposit(account, cents).await?;
            let balance = balance(&done);
            self.say(&format!("deposit {} to {account}: balance {balance}", money(to_i64(cents))));
        }
        let done = bank.withdraw("alice", 3_000).await?;
        self.say(&format!("withdraw 30.00 from alice: balance {}", balance(&done)));
        match bank.withdraw("bob", 8_000).await {
            Err(BankError::Refused(refusal)) => {
                self.say(&format!("withdraw 80.00 from bob: REFUSED, {refusal}"));
            }
            other => bail!("withdrawing 80.00 from bob should be refused: {other:?}"),
        }
        Ok(())
    }

    /// A time after every event so far and before every later one (ms since the epoch).
    async fn mark(&mut self) -> anyhow::Result<i64> {
        let last = self.bank.last_event("alice").await?.context("alice has events")?;
        let as_of_ms = last.timestamp_ms + 1;
        // Every later event is stamped after `as_of_ms`: the server's clock moves on these 3 ms
        // whatever its offset from ours.
        tokio::time::sleep(Duration::from_millis(3)).await;
        println!("    -- as-of mark: {as_of_ms} ms since the epoch --");
        Ok(as_of_ms)
    }

    /// A transfer credited, then two refused by their destination and compensated.
    async fn transfers(&mut self) -> anyhow::Result<()> {
        let bank = self.bank;
        bank.transfer("alice", "bob", 2_500, "transfer-1").await?;
        let settled = settle(bank, self.processing, "alice", "transfer-1").await?;
        self.say(&format!(
            "transfer 25.00 alice -> bob (transfer-1): alice debited; then {settled}"
        ));
        bank.withdraw("carol", 2_000).await?;
        bank.close("carol").await?;
        self.say("withdraw 20.00 from carol, close carol");
        for (from, to, cents, id) in
            [("bob", "carol", 1_000, "transfer-2"), ("alice", "dave", 500, "transfer-3")]
        {
            let before = (bank.load(from).await?.state.balance, bank.load(to).await?.state.balance);
            bank.transfer(from, to, cents, id).await?;
            let settled = settle(bank, self.processing, from, id).await?;
            let after = (bank.load(from).await?.state.balance, bank.load(to).await?.state.balance);
            ensure!(
                before == after,
                "{id} was compensated, yet balances moved: {before:?} -> {after:?}"
            );
            self.say(&format!(
                "transfer {} {from} -> {to} ({id}): {from} debited; then {settled}; \
                 {from} and {to} balances unchanged",
                money(to_i64(cents))
            ));
        }
        Ok(())
    }
}

/// Waits for the processor to settle `transfer_id` of `from`; says how it ended.
async fn settle(
    bank: &Bank,
    processing: &mut Running<TransferProcessor>,
    from: &str,
    transfer_id: &str,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        match bank.transfer_state(from, transfer_id).await? {
            TransferState::Credited => return Ok("the processor credited it".to_owned()),
            TransferState::Refunded => {
                let reason = refund_reason(bank, from, transfer_id).await?;
                return Ok(format!("the processor refunded it ({reason})"));
            }
            TransferState::Unknown => bail!("{from} has no transfer {transfer_id}"),
            TransferState::Debited => {}
        }
        processing.check_alive("transfer processor").await?;
        ensure!(
            Instant::now() < deadline,
            "transfer {transfer_id} not settled within {} s",
            SETTLE_TIMEOUT.as_secs()
        );
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

/// The reason recorded in the `TransferRefunded` of `transfer_id`.
async fn refund_reason(bank: &Bank, from: &str, transfer_id: &str) -> anyhow::Result<String> {
    let event = bank.last_event(from).await?.context("a refunded account has events")?;
    match sluice_example_bank::bank::decode(&event)? {
        sluice_example_bank::AccountEvent::TransferRefunded { transfer_id: id, reason, .. }
            if id == transfer_id =>
        {
            Ok(reason)
        }
        other => bail!("the last event of {from} is {other:?}, not the refund of {transfer_id}"),
    }
}

/// Balances, alice's history and statement, and balances as of the mark, each checked against
/// the event store.
async fn report(bank: &Bank, model: &ReadModel, as_of_ms: i64) -> anyhow::Result<()> {
    println!("\nBalances (SQLite read model, each equal to its stream folded):");
    println!(
        "  {:<8} {:<14} {:<7} {:>9} {:>7}",
        "account", "owner", "status", "balance", "version"
    );
    for row in model.accounts()? {
        let folded = bank.load(&row.account).await?;
        ensure!(
            to_i64(folded.state.balance) == row.balance_cents
                && folded.version == Some(row.version),
            "the read model says {row:?}, the stream folds to {} at {:?}",
            folded.state.balance,
            folded.version
        );
        println!(
            "  {:<8} {:<14} {:<7} {:>9} {:>7}",
            row.account,
            row.owner,
            row.status,
            money(row.balance_cents),
            row.version
        );
    }
    let exists = bank.load("dave").await?.version.is_some();
    println!("  (dave: {})", if exists { "exists!" } else { "never opened, no stream" });
    print_history_and_statement(model, "alice")?;
    print_as_of(bank, model, as_of_ms).await
}

/// `account`'s history and monthly statement, from SQLite.
fn print_history_and_statement(model: &ReadModel, account: &str) -> anyhow::Result<()> {
    println!("\nHistory of {account}:");
    println!("  {:>3} {:<24} {:<17} {:>8} counterparty", "v", "time (UTC)", "kind", "amount");
    for row in model.history(account)? {
        let line = format!(
            "  {:>3} {:<24} {:<17} {:>8} {}",
            row.version,
            row.time_utc,
            row.kind,
            money(row.amount_cents),
            row.counterparty.unwrap_or_default()
        );
        println!("{}", line.trim_end());
    }

    println!("\nMonthly statement of {account}:");
    println!("  {:<8} {:>9} {:>9} {:>9} {:>9}", "month", "opening", "credits", "debits", "closing");
    for row in model.statement(account)? {
        println!(
            "  {:<8} {:>9} {:>9} {:>9} {:>9}",
            row.month,
            money(row.opening_cents),
            money(row.credits_cents),
            money(row.debits_cents),
            money(row.closing_cents)
        );
    }
    Ok(())
}

/// Balances as of the mark, from the event store (streams read as of then, folded), checked
/// against the SQLite history.
async fn print_as_of(bank: &Bank, model: &ReadModel, as_of_ms: i64) -> anyhow::Result<()> {
    let mark = model.time_utc(as_of_ms)?;
    println!("\nBalances as of the mark ({mark} UTC, {as_of_ms} ms), before the transfers:");
    for account in ["alice", "bob", "carol"] {
        let folded = bank.account_as_of(account, as_of_ms).await?;
        let from_history = model.balance_as_of(account, as_of_ms)?;
        let from_store = to_i64(folded.account.balance);
        ensure!(
            from_store == from_history,
            "{account} as of {as_of_ms}: {from_store} from the event store, \
             {from_history} from SQLite"
        );
        let now = model.account(account)?.map_or(0, |row| row.balance_cents);
        println!(
            "  {account:<6} {:>9} (event store: stream read as of the mark, {} events folded; \
             SQLite history agrees; now {})",
            money(from_store),
            folded.version.map_or(0, |version| version + 1),
            money(now)
        );
    }
    Ok(())
}

fn balance(done: &sluice_client::Executed<sluice_example_bank::Account>) -> String {
    money(to_i64(done.state.balance))
}

/// A balance (at most `i64::MAX`, see `BALANCE_MAX_CENTS`) as `i64`.
fn to_i64(cents: u64) -> i64 {
    i64::try_from(cents).unwrap_or(i64::MAX)
}
