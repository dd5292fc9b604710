//! The bank against a real (in-process) Sluice server: random commands from a fixed seed, each
//! outcome checked against a simple model, with the read-model projection stopped and
//! restarted partway and the transfer processor running beside it. Then: a second read model
//! replayed from scratch equals the first, table for table; both equal the accounts folded
//! from their streams; money is conserved; every transfer ends in exactly one credit or
//! refund, a compensated one moving no balance; and a second processor replaying every event
//! appends nothing. Also runs the binary's scenario end to end.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use sluice_client::{Client, ProjectionError, ProjectionReport, ProjectionStore};
use sluice_example_bank::topic::{describe, ensure_event_topic};
use sluice_example_bank::{
    AccountError, Bank, BankError, EmbeddedServer, ReadModel, Status, TransferProcessor,
    TransferState,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const SEED: u64 = 0x5eed_ba4c;
const COMMANDS: u64 = 300;
const TOPIC: &str = "account";
/// Accounts the commands pick from; `ghost` is never opened.
const ACCOUNTS: [&str; 6] = ["a0", "a1", "a2", "a3", "a4", "ghost"];

/// xorshift64*: a fixed seed gives the same commands on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn account(&mut self) -> &'static str {
        ACCOUNTS[usize::try_from(self.below(ACCOUNTS.len() as u64)).unwrap()]
    }
}

/// What the test expects an account to be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Modeled {
    status: Status,
    balance: u64,
}

/// A projection running in the background until stopped.
struct Running<S> {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<ProjectionReport, ProjectionError>>,
    store: Arc<S>,
}

fn start<S: ProjectionStore + 'static>(client: &Client, store: Arc<S>) -> Running<S> {
    let (stop, stopped) = oneshot::channel::<()>();
    let projection = client.projection(TOPIC, Arc::clone(&store));
    let task = tokio::spawn(async move {
        projection
            .run_until(async {
                let _ = stopped.await;
            })
            .await
    });
    Running { stop, task, store }
}

impl<S> Running<S> {
    async fn stop(self) -> (ProjectionReport, Arc<S>) {
        self.stop.send(()).unwrap();
        (self.task.await.unwrap().unwrap(), self.store)
    }
}

/// Polls the two streams of a transfer until it is credited or refunded.
async fn settled(bank: &Bank, from: &str, transfer_id: &str) -> TransferState {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = bank.transfer_state(from, transfer_id).await.unwrap();
        if matches!(state, TransferState::Credited | TransferState::Refunded) {
            return state;
        }
        assert!(Instant::now() < deadline, "{transfer_id} of {from} still {state:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// What the model says a command on `modeled` does: `Ok` or the account's refusal.
fn expect_open(modeled: Modeled) -> Result<(), AccountError> {
    match modeled.status {
        Status::Open => Ok(()),
        Status::New => Err(AccountError::NotOpen),
        Status::Closed => Err(AccountError::Closed),
    }
}

fn refusal<T: std::fmt::Debug>(result: Result<T, BankError>) -> Result<(), AccountError> {
    match result {
        Ok(_) => Ok(()),
        Err(BankError::Refused(refusal)) => Err(refusal),
        Err(other) => panic!("not a refusal: {other}"),
    }
}

/// One random command, run and checked against the model.
async fn random_command(
    bank: &Bank,
    rng: &mut Rng,
    model: &mut BTreeMap<&'static str, Modeled>,
    index: u64,
) {
    let account = rng.account();
    let modeled = model[account];
    let amount = 1 + rng.below(5_000);
    match rng.below(20) {
        0..=2 => {
            if account == "ghost" {
                return; // never opened
            }
            let expected = match modeled.status {
                Status::New => Ok(()),
                Status::Open => Err(AccountError::AlreadyOpen),
                Status::Closed => Err(AccountError::Closed),
            };
            assert_eq!(refusal(bank.open(account, "owner").await), expected, "open {account}");
            if expected.is_ok() {
                model.get_mut(account).unwrap().status = Status::Open;
            }
        }
        3..=8 => {
            let expected = expect_open(modeled);
            assert_eq!(refusal(bank.deposit(account, amount).await), expected);
            if expected.is_ok() {
                model.get_mut(account).unwrap().balance += amount;
            }
        }
        9..=11 => {
            let expected = expect_open(modeled).and_then(|()| {
                if amount > modeled.balance {
                    return Err(AccountError::InsufficientFunds {
                        balance: modeled.balance,
                        requested: amount,
                    });
                }
                Ok(())
            });
            assert_eq!(refusal(bank.withdraw(account, amount).await), expected);
            if expected.is_ok() {
                model.get_mut(account).unwrap().balance -= amount;
            }
        }
        12 => {
            // Rare, so that most accounts stay open; and the account is emptied first half of
            // the time, so that closes succeed too.
            if rng.below(4) != 0 {
                return;
            }
            if modeled.status == Status::Open && modeled.balance > 0 && rng.below(2) == 0 {
                bank.withdraw(account, modeled.balance).await.unwrap();
                model.get_mut(account).unwrap().balance = 0;
            }
            let modeled = model[account];
            let expected = expect_open(modeled).and(match modeled.balance {
                0 => Ok(()),
                balance => Err(AccountError::BalanceNotZero { balance }),
            });
            assert_eq!(refusal(bank.close(account).await), expected, "close {account}");
            if expected.is_ok() {
                model.get_mut(account).unwrap().status = Status::Closed;
            }
        }
        _ => {
            let to = rng.account();
            if to == account {
                return;
            }
            transfer(bank, model, account, to, amount / 4 + 1, &format!("t{index}")).await;
        }
    }
}

/// A transfer, checked against the model, waited for until the processor settles it.
async fn transfer(
    bank: &Bank,
    model: &mut BTreeMap<&'static str, Modeled>,
    from: &'static str,
    to: &'static str,
    amount: u64,
    transfer_id: &str,
) -> Option<TransferState> {
    let source = model[from];
    let expected = expect_open(source).and_then(|()| {
        if amount > source.balance {
            return Err(AccountError::InsufficientFunds {
                balance: source.balance,
                requested: amount,
            });
        }
        Ok(())
    });
    assert_eq!(refusal(bank.transfer(from, to, amount, transfer_id).await), expected);
    expected.ok()?;
    let state = settled(bank, from, transfer_id).await;
    if model[to].status == Status::Open {
        assert_eq!(state, TransferState::Credited, "{transfer_id}: {from} -> {to}");
        model.get_mut(from).unwrap().balance -= amount;
        model.get_mut(to).unwrap().balance += amount;
    } else {
        assert_eq!(state, TransferState::Refunded, "{transfer_id}: {from} -> {to}");
    }
    Some(state)
}

/// Rows of `table` in one database and not the other, both ways.
fn differing_rows(connection: &Connection, table: &str) -> i64 {
    let sql = format!(
        "SELECT (SELECT COUNT(*) FROM
                    (SELECT * FROM main.{table} EXCEPT SELECT * FROM replay.{table}))
              + (SELECT COUNT(*) FROM
                    (SELECT * FROM replay.{table} EXCEPT SELECT * FROM main.{table}))"
    );
    connection.query_row(&sql, [], |row| row.get(0)).unwrap()
}

fn count(connection: &Connection, sql: &str) -> i64 {
    connection.query_row(sql, [], |row| row.get(0)).unwrap()
}

/// Compares the live read model with the replayed one, table for table.
fn assert_same_tables(live: &Path, replayed: &Path) {
    let connection = Connection::open(live).unwrap();
    connection.execute("ATTACH DATABASE ?1 AS replay", [replayed.to_str().unwrap()]).unwrap();
    for table in ["accounts", "history"] {
        assert_eq!(differing_rows(&connection, table), 0, "{table} differs");
        let rows = count(&connection, &format!("SELECT COUNT(*) FROM main.{table}"));
        assert!(rows > 0, "{table} is empty");
        assert_eq!(rows, count(&connection, &format!("SELECT COUNT(*) FROM replay.{table}")));
    }
    let checkpoint = |schema: &str| -> String {
        connection
            .query_row(
                &format!("SELECT position FROM {schema}.checkpoints WHERE name = 'read-model'"),
                [],
                |row| row.get(0),
            )
            .unwrap()
    };
    assert_eq!(checkpoint("main"), checkpoint("replay"));
}

/// Every `TransferDebited` ends in exactly one `TransferCredited` (on the destination) or
/// `TransferRefunded` (on the source); money only enters by deposits and leaves by
/// withdrawals. Returns (debited, credited, refunded).
fn assert_transfers_settled_once(database: &Path) -> (i64, i64, i64) {
    let connection = Connection::open(database).unwrap();
    let unsettled = count(
        &connection,
        "SELECT COUNT(*) FROM history AS debit
         WHERE debit.kind = 'TransferDebited' AND 1 != (
             SELECT COUNT(*) FROM history AS outcome
             WHERE outcome.transfer_id = debit.transfer_id
               AND ((outcome.kind = 'TransferCredited' AND outcome.counterparty = debit.account)
                 OR (outcome.kind = 'TransferRefunded' AND outcome.account = debit.account)))",
    );
    assert_eq!(unsettled, 0, "transfers without exactly one outcome");
    let orphans = count(
        &connection,
        "SELECT COUNT(*) FROM history AS outcome
         WHERE outcome.kind IN ('TransferCredited', 'TransferRefunded') AND NOT EXISTS (
             SELECT 1 FROM history AS debit WHERE debit.kind = 'TransferDebited'
               AND debit.transfer_id = outcome.transfer_id
               AND debit.account = CASE outcome.kind WHEN 'TransferCredited'
                   THEN outcome.counterparty ELSE outcome.account END)",
    );
    assert_eq!(orphans, 0, "credits or refunds without their debit");
    let held = count(&connection, "SELECT SUM(balance) FROM accounts");
    let brought = count(
        &connection,
        "SELECT SUM(amount) FROM history WHERE kind IN ('Deposited', 'Withdrawn')",
    );
    assert_eq!(held, brought, "money was made or lost by transfers");
    let kind = |kind: &str| {
        count(&connection, &format!("SELECT COUNT(*) FROM history WHERE kind = '{kind}'"))
    };
    (kind("TransferDebited"), kind("TransferCredited"), kind("TransferRefunded"))
}

async fn high_watermarks(url: &str) -> Vec<u64> {
    let topic = describe(url, TOPIC).await.unwrap();
    topic.partition_offsets.iter().map(|partition| partition.high_watermark).collect()
}

/// Compensated transfers leave both balances as they were: to an account never opened, to a
/// closed one, and to one opened after the refund (whose re-delivered debit must then find
/// the transfer settled, not credit it).
async fn compensated_transfers(bank: &Bank, model: &mut BTreeMap<&'static str, Modeled>) {
    for account in ["a0", "a1", "a2", "a3", "a4"] {
        if model[account].status == Status::New {
            bank.open(account, "owner").await.unwrap();
            model.get_mut(account).unwrap().status = Status::Open;
        }
    }
    let source = ["a0", "a1", "a2", "a3", "a4"]
        .into_iter()
        .find(|account| model[account].status == Status::Open)
        .unwrap_or_else(|| panic!("every account is closed: pick another seed"));
    bank.deposit(source, 1_000).await.unwrap();
    model.get_mut(source).unwrap().balance += 1_000;
    let closed = ["a0", "a1", "a2", "a3", "a4"]
        .into_iter()
        .find(|account| model[account].status == Status::Closed)
        .unwrap_or("ghost");
    for (to, transfer_id) in [("ghost", "compensated-1"), (closed, "compensated-2")] {
        let before = (bank.load(source).await.unwrap().state, bank.load(to).await.unwrap().state);
        let state = transfer(bank, model, source, to, 700, transfer_id).await;
        assert_eq!(state, Some(TransferState::Refunded));
        let after = (bank.load(source).await.unwrap().state, bank.load(to).await.unwrap().state);
        assert_eq!((before.0.balance, before.1.balance), (after.0.balance, after.1.balance));
        assert_eq!(after.1.transfers_in.len(), before.1.transfers_in.len());
    }

    // Refunded because `late` did not exist yet; `late` opens afterwards. A re-delivery of the
    // debit must find the transfer settled, not credit it now.
    model.insert("late", Modeled::default());
    let state = transfer(bank, model, source, "late", 300, "before-opening").await;
    assert_eq!(state, Some(TransferState::Refunded));
    bank.open("late", "owner").await.unwrap();
    model.get_mut("late").unwrap().status = Status::Open;
}

/// The read model's rows equal the accounts folded from their streams, and the model.
async fn assert_rows_equal_streams(
    bank: &Bank,
    live_model: &ReadModel,
    model: &BTreeMap<&'static str, Modeled>,
) {
    let rows = live_model.accounts().unwrap();
    for (account, modeled) in model {
        let loaded = bank.load(account).await.unwrap();
        assert_eq!((loaded.state.status, loaded.state.balance), (modeled.status, modeled.balance));
        let row = rows.iter().find(|row| row.account == *account);
        match row {
            None => assert_eq!(loaded.version, None, "{account} has no row"),
            Some(row) => {
                assert_eq!(row.balance_cents, i64::try_from(loaded.state.balance).unwrap());
                assert_eq!(Some(row.version), loaded.version);
                let status = if loaded.state.status == Status::Closed { "closed" } else { "open" };
                assert_eq!(row.status, status);
            }
        }
    }
    assert_eq!(rows.len(), model.values().filter(|m| m.status != Status::New).count());
}

/// Every `TransferDebited` delivered again, to a processor with no checkpoint: nothing is
/// appended, each is found settled.
async fn assert_processor_rerun_appends_nothing(
    client: &Client,
    bank: &Bank,
    url: &str,
    database: &Path,
    debited: i64,
) {
    let before = high_watermarks(url).await;
    let again =
        TransferProcessor::open(bank.clone(), database).unwrap().with_checkpoint_name("again");
    let again = client.projection(TOPIC, again);
    again.catch_up().await.unwrap();
    let stats = again.store().stats();
    assert_eq!((stats.credited, stats.refunded), (0, 0));
    assert_eq!(stats.already_settled, u64::try_from(debited).unwrap());
    assert_eq!(high_watermarks(url).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_commands_project_exactly_once_and_transfers_settle_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = EmbeddedServer::start(&dir.path().join("sluice")).await.unwrap();
    let url = server.url();
    ensure_event_topic(&url, TOPIC, 3).await.unwrap();
    let client = Client::new(&url);
    let bank = Bank::new(&client, TOPIC);
    let live = dir.path().join("bank.db");
    let processing =
        start(&client, Arc::new(TransferProcessor::open(bank.clone(), &live).unwrap()));
    let mut projection = Some(start(&client, Arc::new(ReadModel::open(&live).unwrap())));

    let mut rng = Rng(SEED);
    let mut model: BTreeMap<&'static str, Modeled> =
        ACCOUNTS.iter().map(|account| (*account, Modeled::default())).collect();
    for index in 0..COMMANDS {
        if index == COMMANDS / 3 {
            // Stopped partway; its store is dropped with its connection.
            let (report, _) = projection.take().unwrap().stop().await;
            assert!(report.position.is_some(), "the projection applied nothing before its stop");
        }
        if index == 2 * COMMANDS / 3 {
            // Restarted on a fresh connection: it resumes from the checkpoint in the file.
            projection = Some(start(&client, Arc::new(ReadModel::open(&live).unwrap())));
        }
        random_command(&bank, &mut rng, &mut model, index).await;
    }

    compensated_transfers(&bank, &mut model).await;

    let (processed, processor) = processing.stop().await;
    let stats = processor.stats();
    assert_eq!(stats.events, processed.applied);
    assert!(stats.credited > 0 && stats.refunded > 0, "{stats:?}");
    let (_, live_model) = projection.take().unwrap().stop().await;
    client.projection(TOPIC, Arc::clone(&live_model)).catch_up().await.unwrap();

    // A second read model, replayed from the first event into a fresh database.
    let replayed_path = dir.path().join("replayed.db");
    let replayed = client.projection(TOPIC, ReadModel::open(&replayed_path).unwrap());
    let report = replayed.catch_up().await.unwrap();
    assert!(report.caught_up);
    assert_same_tables(&live, &replayed_path);

    assert_rows_equal_streams(&bank, &live_model, &model).await;

    let (debited, credited, refunded) = assert_transfers_settled_once(&live);
    assert_eq!(debited, credited + refunded);
    assert_eq!(u64::try_from(credited).unwrap(), stats.credited);
    assert_eq!(u64::try_from(refunded).unwrap(), stats.refunded);

    assert_processor_rerun_appends_nothing(&client, &bank, &url, &live, debited).await;
    server.stop().await.unwrap();
}

#[test]
fn the_binary_runs_the_scenario_and_prints_each_step() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_bank")).output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    for expected in [
        "withdraw 80.00 from bob: REFUSED, insufficient funds",
        "transfer 25.00 alice -> bob (transfer-1): alice debited; then the processor credited it",
        "(carol refused: the account is closed); bob and carol balances unchanged",
        "(dave refused: the account is not open); alice and dave balances unchanged",
        "  alice    Alice Liddell  open        45.00       5",
        "  alice      70.00 (event store",
    ] {
        assert!(stdout.contains(expected), "no '{expected}' in:\n{stdout}");
    }
}
