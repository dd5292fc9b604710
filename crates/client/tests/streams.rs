//! Event streams through the SDK against a real server (engine and HTTP door in-process, on a
//! real socket): appends with typed conflicts and idempotent retries (also after a response
//! lost in the network), appends of many tasks gathered into shared requests (each answered on
//! its own, split by the body limit, resent after a lost response when a repeat is safe), reads,
//! multi-stream appends, snapshots, metadata, soft delete, subscriptions (history, live, resume,
//! and an error when the connection ends), a repository whose commands from many tasks each land
//! exactly once (also with gathered appends), snapshot-plus-tail loads, bounded conflict
//! retries, a projection stopped and restarted from its checkpoint while appends race it, and a
//! catch-up that ends past records that are not events.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sluice_client::streams::{SNAPSHOT_NOT_FOUND, STREAM_NOT_FOUND};
use sluice_client::worker::BoxError;
use sluice_client::{
    Aggregate, AppenderOptions, Client, ClientError, EventData, ExpectedVersion, ProjectionStore,
    ReadOptions, RecordedEvent, Repository, RepositoryError, StreamFrom, StreamMetadata,
    StreamWrite, TopicFrom, TopicPosition,
};
use sluice_engine::Engine;

async fn start() -> (tempfile::TempDir, Client, Engine) {
    let (dir, client, engine, _) = start_at().await;
    (dir, client, engine)
}

/// As [`start`], also giving the server's address.
async fn start_at() -> (tempfile::TempDir, Client, Engine, std::net::SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(sluice_http::serve(
        listener,
        engine.clone(),
        sluice_http::Timeouts::default(),
        std::future::pending(),
    ));
    (dir, Client::new(&address.to_string()), engine, address)
}

/// Runs `future` with a deadline, so a hang fails the test instead of stalling it.
async fn within<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), future).await.expect("finished in time")
}

fn event(event_type: &str, data: Value) -> EventData {
    EventData::json(event_type, &data).unwrap()
}

fn versions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|event| event.version).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_read_typed_conflicts_and_idempotent_retries() {
    let (_dir, client, _engine) = start().await;
    client.create_topic("account", 2).await.unwrap();
    let opened = event("Opened", json!({"owner": "ada"}));
    let deposit = event("Deposited", json!({"amount": 10}));
    let first = [opened.clone(), deposit.clone()];

    let appended =
        client.append("account", "acct-1", ExpectedVersion::NoStream, &first).await.unwrap();
    assert_eq!((appended.stream.as_str(), appended.version), ("acct-1", Some(1)));
    assert_eq!(appended.offsets.len(), 2);
    // The same events (same ids) at the same expected version: the first append's answer.
    let again =
        client.append("account", "acct-1", ExpectedVersion::NoStream, &first).await.unwrap();
    assert_eq!(again, appended);

    // A stale version: a typed conflict with both versions, and nothing appended.
    let error = client
        .append(
            "account",
            "acct-1",
            ExpectedVersion::Exact(0),
            &[event("Deposited", json!({"amount": 1}))],
        )
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(1021));
    assert!(!error.is_transient());
    let conflict = error.conflict().unwrap();
    assert_eq!(
        (conflict.stream.as_str(), conflict.expected, conflict.actual, conflict.deleted_at),
        ("acct-1", ExpectedVersion::Exact(0), Some(1), None)
    );
    assert_eq!(conflict.message, "expected version 0, stream acct-1 is at version 1");
    assert!(error.to_string().contains("code 1021"), "{error}");
    let error = client
        .append("account", "acct-1", ExpectedVersion::NoStream, &[deposit.clone().with_id("other")])
        .await
        .unwrap_err();
    let conflict = error.conflict().unwrap();
    assert_eq!((conflict.expected, conflict.actual), (ExpectedVersion::NoStream, Some(1)));
    let third = client
        .append(
            "account",
            "acct-1",
            ExpectedVersion::StreamExists,
            &[event("Deposited", json!({"amount": 5}))],
        )
        .await
        .unwrap();
    assert_eq!(third.version, Some(2));

    // Reads: forward, backward, pages, as of a time.
    let slice = client.read_stream("account", "acct-1", &ReadOptions::forward()).await.unwrap();
    assert_eq!(
        (versions(&slice.events), slice.version, slice.next),
        (vec![0, 1, 2], Some(2), None)
    );
    let first_event = &slice.events[0];
    assert_eq!(first_event.event_type, "Opened");
    assert_eq!(first_event.id, opened.id());
    assert_eq!(first_event.data_as::<Value>().unwrap(), json!({"owner": "ada"}));
    assert_eq!(first_event.header("ce_subject"), Some("acct-1"));
    assert_eq!(first_event.content_type(), Some("application/json"));
    assert_eq!(first_event.offset, appended.offsets[0]);
    assert_eq!(first_event.partition, appended.partition);
    let back =
        client.read_stream("account", "acct-1", &ReadOptions::backward().count(2)).await.unwrap();
    assert_eq!((versions(&back.events), back.next), (vec![2, 1], Some(0)));
    let page = client
        .read_stream("account", "acct-1", &ReadOptions::forward().from(1).count(1))
        .await
        .unwrap();
    assert_eq!((versions(&page.events), page.next), (vec![1], Some(2)));
    let before = client
        .read_stream(
            "account",
            "acct-1",
            &ReadOptions::forward().as_of_ms(first_event.timestamp_ms - 1),
        )
        .await
        .unwrap();
    assert_eq!((before.version, before.events.len()), (None, 0));
    let last_time = slice.events[2].timestamp_ms;
    let then = client
        .read_stream("account", "acct-1", &ReadOptions::forward().as_of_ms(last_time))
        .await
        .unwrap();
    assert_eq!(versions(&then.events), vec![0, 1, 2]);

    // Bytes that are not JSON, to a stream whose name needs escaping.
    let blob = EventData::bytes("Blob", vec![0, 159, 146, 150]).with_header("traceparent", "00-ab");
    let stored = client.append("account", "blob/1 x", ExpectedVersion::Any, &[blob]).await.unwrap();
    assert_eq!((stored.stream.as_str(), stored.version), ("blob/1 x", Some(0)));
    let read = client.read_stream("account", "blob/1 x", &ReadOptions::default()).await.unwrap();
    let blob = &read.events[0];
    assert_eq!((blob.stream.as_str(), blob.data.as_slice()), ("blob/1 x", &[0, 159, 146, 150][..]));
    assert_eq!(blob.content_type(), Some("application/octet-stream"));
    assert_eq!(blob.header("traceparent"), Some("00-ab"));

    let error = client.read_stream("account", "nobody", &ReadOptions::default()).await.unwrap_err();
    assert_eq!(error.code(), Some(STREAM_NOT_FOUND));
    let error = client
        .append("account", "acct-1", ExpectedVersion::Any, &[event("", json!(1))])
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(1008));
}

/// A TCP proxy to `upstream` that passes the first connection's request on, waits for the
/// server's answer to begin, and then cuts the client off without it: a response lost in
/// the network. Later connections pass through.
fn response_losing_proxy(upstream: std::net::SocketAddr) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for (index, client) in listener.incoming().enumerate() {
            let Ok(mut client) = client else { return };
            let mut server = TcpStream::connect(upstream).unwrap();
            let (mut client_in, mut server_out) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut client_in, &mut server_out);
            });
            if index == 0 {
                let mut first = [0u8; 1];
                let _ = server.read(&mut first);
                let _ = client.shutdown(Shutdown::Both);
                let _ = server.shutdown(Shutdown::Both);
            } else {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut server, &mut client);
                    let _ = client.flush();
                    let _ = client.shutdown(Shutdown::Both);
                });
            }
        }
    });
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_whose_response_was_lost_is_retried_without_a_duplicate() {
    let (_dir, client, _engine, server) = start_at().await;
    client.create_topic("orders", 1).await.unwrap();

    // An exact expected version: retried with the same ids, answered with the first result.
    let lossy = Client::new(&response_losing_proxy(server).to_string());
    let events = [event("Placed", json!({"n": 1})), event("Paid", json!({"n": 2}))];
    let appended =
        lossy.append("orders", "order-1", ExpectedVersion::NoStream, &events).await.unwrap();
    assert_eq!(appended.version, Some(1));
    let stored = client.read_stream("orders", "order-1", &ReadOptions::default()).await.unwrap();
    assert_eq!(versions(&stored.events), vec![0, 1], "appended once");
    assert_eq!(stored.events[0].id, events[0].id());

    // `any` cannot be repeated safely: the transport error comes back; the event landed once.
    let lossy = Client::new(&response_losing_proxy(server).to_string());
    let error = lossy
        .append("orders", "order-1", ExpectedVersion::Any, &[event("Shipped", json!({}))])
        .await
        .unwrap_err();
    assert!(error.is_transient(), "{error}");
    let stored = client.read_stream("orders", "order-1", &ReadOptions::default()).await.unwrap();
    assert_eq!(versions(&stored.events), vec![0, 1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_from_many_tasks_are_gathered_into_shared_requests_and_answered_each() {
    let (_dir, client, _engine, server) = start_at().await;
    client.create_topic("ledger", 4).await.unwrap();
    let (proxy, sent) = common::recording_proxy(server).await;
    let options = AppenderOptions { requests_in_flight: 1, ..AppenderOptions::default() };
    let appender = Client::new(&proxy.to_string()).stream_appender("ledger", options);

    const TASKS: usize = 32;
    const APPENDS: u64 = 10;
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let appender = appender.clone();
            tokio::spawn(async move {
                let stream = format!("acct-{task}");
                let mut ids = Vec::new();
                for version in 0..APPENDS {
                    let expected = ExpectedVersion::from_version(version.checked_sub(1));
                    let data = event("Posted", json!({"task": task, "version": version}));
                    ids.push(data.id().to_owned());
                    let appended = appender.append(&stream, expected, &[data]).await.unwrap();
                    assert_eq!(
                        (appended.stream.as_str(), appended.version),
                        (&*stream, Some(version))
                    );
                    assert_eq!(appended.offsets.len(), 1);
                }
                // A stale expectation is refused on its own, typed, with both versions.
                let stale = [event("Posted", json!({"stale": true}))];
                let error = appender.append(&stream, ExpectedVersion::Exact(3), &stale).await;
                let conflict = error.unwrap_err().conflict().cloned().expect("a typed conflict");
                assert_eq!(
                    (conflict.stream.as_str(), conflict.actual),
                    (&*stream, Some(APPENDS - 1))
                );
                assert_eq!(conflict.expected, ExpectedVersion::Exact(3));
                // So is an append without events, with the status it would have had alone.
                let error = appender.append(&stream, ExpectedVersion::Any, &[]).await.unwrap_err();
                assert!(
                    matches!(error, ClientError::Api { code: 1008, status: 400, .. }),
                    "{error}"
                );
                (stream, ids)
            })
        })
        .collect();
    for task in tasks {
        let (stream, ids) = within(task).await.unwrap();
        let stored = client.read_stream("ledger", &stream, &ReadOptions::default()).await.unwrap();
        assert_eq!(versions(&stored.events), (0..APPENDS).collect::<Vec<_>>(), "{stream}");
        let stored_ids: Vec<&str> = stored.events.iter().map(|event| event.id.as_str()).collect();
        assert_eq!(stored_ids, ids, "{stream}: each append stored once, in order");
    }
    let appends = TASKS * (APPENDS as usize + 2);
    let requests = common::count(&sent.lock().unwrap(), "POST /v1/streams/ledger ");
    assert!(
        requests > 0 && requests * 4 <= appends,
        "{requests} requests for {appends} appends: appends made while one was in flight share the next"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gathered_appends_larger_than_one_request_body_are_split_between_requests() {
    let (_dir, client, _engine) = start().await;
    client.create_topic("scans", 2).await.unwrap();
    let options = AppenderOptions { requests_in_flight: 1, ..AppenderOptions::default() };
    let appender = client.stream_appender("scans", options);
    // 40 appends of 512 KiB each wait together, 20 MiB in all: more than one request may carry.
    let page = "x".repeat(512 * 1024);
    let tasks: Vec<_> = (0..40)
        .map(|index| {
            let (appender, page) = (appender.clone(), page.clone());
            tokio::spawn(async move {
                let scan = vec![event("Scanned", json!({"page": page}))];
                let write =
                    StreamWrite::new(format!("scan-{index}"), ExpectedVersion::NoStream, scan);
                appender.write(&write).await
            })
        })
        .collect();
    for task in tasks {
        let appended = within(task).await.unwrap().unwrap();
        assert_eq!(appended.version, Some(0), "{}", appended.stream);
    }
    assert!(sluice_client::streams::GATHERED_BODY_BYTES_MAX < 40 * page.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gathered_request_whose_response_was_lost_is_sent_again_with_its_repeatable_appends() {
    let (_dir, client, _engine, server) = start_at().await;
    client.create_topic("orders", 2).await.unwrap();
    let lossy = Client::new(&response_losing_proxy(server).to_string());
    // One slot and a long linger: both appends go in the first request, whose answer is lost.
    let options = AppenderOptions {
        requests_in_flight: 1,
        linger: Duration::from_millis(300),
        ..AppenderOptions::default()
    };
    let appender = lossy.stream_appender("orders", options);
    let placed = [event("Placed", json!({"n": 1}))];
    let noted = [event("Noted", json!({"n": 2}))];
    let (exact, any) = within(async {
        tokio::join!(
            appender.append("order-1", ExpectedVersion::NoStream, &placed),
            appender.append("order-2", ExpectedVersion::Any, &noted),
        )
    })
    .await;
    // The no-stream append was sent again with the same ids and answered with its first result.
    assert_eq!(exact.unwrap().version, Some(0));
    // `any` could land twice if sent again: its caller gets the transport failure.
    let error = any.unwrap_err();
    assert!(error.is_transient(), "{error}");
    for (stream, id) in [("order-1", placed[0].id()), ("order-2", noted[0].id())] {
        let stored = client.read_stream("orders", stream, &ReadOptions::default()).await.unwrap();
        assert_eq!(versions(&stored.events), vec![0], "{stream} appended once");
        assert_eq!(stored.events[0].id, id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_stream_appends_snapshots_metadata_and_soft_delete() {
    let (_dir, client, _engine) = start().await;
    client.create_topic("bank", 1).await.unwrap();
    for stream in ["a", "b"] {
        client
            .append("bank", stream, ExpectedVersion::NoStream, &[event("Opened", json!({}))])
            .await
            .unwrap();
    }
    let transfer = |credit_expected| {
        [
            StreamWrite::new(
                "a",
                ExpectedVersion::Exact(0),
                vec![event("Debited", json!({"amount": 3}))],
            ),
            StreamWrite::new("b", credit_expected, vec![event("Credited", json!({"amount": 3}))]),
        ]
    };
    let error =
        client.append_streams("bank", &transfer(ExpectedVersion::Exact(5))).await.unwrap_err();
    let conflict = error.conflict().unwrap();
    assert_eq!((conflict.stream.as_str(), conflict.actual), ("b", Some(0)));
    let a = client.read_stream("bank", "a", &ReadOptions::default()).await.unwrap();
    assert_eq!(a.version, Some(0), "nothing was appended to a either");
    let appended =
        client.append_streams("bank", &transfer(ExpectedVersion::Exact(0))).await.unwrap();
    assert_eq!(appended.len(), 2);
    assert_eq!((appended[0].stream.as_str(), appended[0].version), ("a", Some(1)));
    assert_eq!((appended[1].stream.as_str(), appended[1].version), ("b", Some(1)));
    // A condition-only write on a stream without events.
    let checked = client
        .append_streams(
            "bank",
            &[
                StreamWrite::new("a", ExpectedVersion::Exact(1), vec![event("Noted", json!({}))]),
                StreamWrite::new("nobody", ExpectedVersion::NoStream, vec![]),
            ],
        )
        .await
        .unwrap();
    assert_eq!((checked[1].version, checked[1].offsets.len()), (None, 0));

    // Snapshots: none, JSON, bytes.
    assert_eq!(client.load_snapshot("bank", "a").await.unwrap(), None);
    client.save_snapshot("bank", "a", 1, &json!({"balance": -3})).await.unwrap();
    let snapshot = client.load_snapshot("bank", "a").await.unwrap().unwrap();
    assert_eq!(snapshot.version, 1);
    assert_eq!(snapshot.data_as::<Value>().unwrap(), json!({"balance": -3}));
    assert!(snapshot.timestamp_ms.is_some());
    client.save_snapshot_bytes("bank", "a", 2, &[0xff, 0x00, 0x7f]).await.unwrap();
    let snapshot = client.load_snapshot("bank", "a").await.unwrap().unwrap();
    assert_eq!((snapshot.version, snapshot.data), (2, vec![0xff, 0x00, 0x7f]));
    let error = client.save_snapshot("bank", "a", 9, &json!({})).await.unwrap_err();
    assert_eq!(error.code(), Some(1008));
    let error = client.load_snapshot("bank", "nobody").await.unwrap();
    assert_eq!(error, None, "no snapshot ({SNAPSHOT_NOT_FOUND}) is None");

    // Metadata.
    let metadata = StreamMetadata { truncate_before: Some(1), ..StreamMetadata::default() };
    let stored = client.set_stream_metadata("bank", "a", &metadata).await.unwrap();
    assert_eq!(stored, metadata);
    assert_eq!(client.stream_metadata("bank", "a").await.unwrap(), metadata);
    let a = client.read_stream("bank", "a", &ReadOptions::default()).await.unwrap();
    assert_eq!((versions(&a.events), a.first_visible), (vec![1, 2], 1));

    // Soft delete with an expected version, then reuse with no_stream.
    let error = client.delete_stream("bank", "b", ExpectedVersion::Exact(0)).await.unwrap_err();
    assert_eq!(error.conflict().unwrap().actual, Some(1));
    assert_eq!(client.delete_stream("bank", "b", ExpectedVersion::Exact(1)).await.unwrap(), 1);
    let error = client.read_stream("bank", "b", &ReadOptions::default()).await.unwrap_err();
    assert_eq!(error.code(), Some(STREAM_NOT_FOUND));
    assert_eq!(client.stream_metadata("bank", "b").await.unwrap().deleted_at, Some(1));
    let error = client
        .append("bank", "b", ExpectedVersion::Any, &[event("Reopened", json!({}))])
        .await
        .unwrap_err();
    assert_eq!(error.conflict().unwrap().deleted_at, Some(1));
    let reopened = client
        .append("bank", "b", ExpectedVersion::NoStream, &[event("Reopened", json!({}))])
        .await
        .unwrap();
    assert_eq!(reopened.version, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_deliver_history_then_live_resume_and_fail_when_the_connection_ends() {
    let (_dir, client, engine) = start().await;
    client.create_topic("feed", 3).await.unwrap();
    for version in 0..3 {
        for stream in ["x", "y"] {
            let expected = if version == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(version - 1)
            };
            client
                .append("feed", stream, expected, &[event("Tick", json!({"n": version}))])
                .await
                .unwrap();
        }
    }
    let mut from_one = client.subscribe_stream("feed", "x", StreamFrom::Version(1)).await.unwrap();
    let mut at_end = client.subscribe_stream("feed", "x", StreamFrom::End).await.unwrap();
    assert_eq!(within(from_one.next()).await.unwrap().version, 1);
    assert_eq!(within(from_one.next()).await.unwrap().version, 2);
    client
        .append("feed", "x", ExpectedVersion::Exact(2), &[event("Tock", json!({"live": true}))])
        .await
        .unwrap();
    let live = within(from_one.next()).await.unwrap();
    assert_eq!((live.version, live.event_type.as_str()), (3, "Tock"));
    assert_eq!(live.data_as::<Value>().unwrap(), json!({"live": true}));
    assert_eq!(within(at_end.next()).await.unwrap(), live, "from the end: only the live event");

    // The whole topic: 7 events, each with the position after it.
    let mut topic = client.subscribe_topic("feed", TopicFrom::Start).await.unwrap();
    let mut all = Vec::new();
    for _ in 0..7 {
        all.push(within(topic.next()).await.unwrap());
    }
    let mut per_stream = BTreeMap::<String, Vec<u64>>::new();
    for received in &all {
        per_stream.entry(received.event.stream.clone()).or_default().push(received.event.version);
        let partition = received.event.partition;
        assert!(received.position.offset(partition) > received.event.offset);
    }
    assert_eq!(per_stream["x"], vec![0, 1, 2, 3]);
    assert_eq!(per_stream["y"], vec![0, 1, 2]);
    let mut resumed =
        client.subscribe_topic("feed", TopicFrom::Position(all[3].position.clone())).await.unwrap();
    for expected in &all[4..] {
        assert_eq!(&within(resumed.next()).await.unwrap(), expected);
    }
    let mut topic_end = client.subscribe_topic("feed", TopicFrom::End).await.unwrap();
    client
        .append("feed", "y", ExpectedVersion::Exact(2), &[event("Tick", json!({"n": 3}))])
        .await
        .unwrap();
    let latest = within(topic_end.next()).await.unwrap();
    assert_eq!((latest.event.stream.as_str(), latest.event.version), ("y", 3));

    let error = client.subscribe_topic("nothing", TopicFrom::Start).await.unwrap_err();
    assert_eq!(error.code(), Some(1001));

    // The server ends the subscriptions when the topic goes: `next` says so, it does not hang.
    engine.delete_topic("feed").unwrap();
    let ended = within(from_one.next()).await.unwrap_err();
    assert!(ended.is_transient(), "{ended}");
    assert!(ended.to_string().contains("ended the subscription"), "{ended}");
    // The topic subscription still had y's last event to deliver; then it ends too.
    assert_eq!(within(topic.next()).await.unwrap().event, latest.event);
    assert!(within(topic.next()).await.is_err());
}

// ---- A small aggregate ----

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Account {
    opened: bool,
    balance: i64,
    deposits: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
enum AccountEvent {
    Opened,
    Deposited { amount: i64 },
    Withdrawn { amount: i64 },
}

/// Appends a competing deposit (through the engine, behind the repository's back) while
/// `times` lasts: a conflict on demand.
struct Meddler {
    engine: Engine,
    topic: &'static str,
    stream: &'static str,
    times: AtomicU32,
}

impl Meddler {
    fn meddle(&self) {
        if self
            .times
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1))
            .is_err()
        {
            return;
        }
        let data = serde_json::to_vec(&AccountEvent::Deposited { amount: 1000 }).unwrap();
        let new_event = sluice_engine::streams::NewEvent {
            event_type: "Deposited".to_owned(),
            data,
            ..Default::default()
        };
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(self.engine.append_stream(
                self.topic,
                self.stream,
                sluice_engine::streams::ExpectedVersion::Any,
                vec![new_event],
            ))
        })
        .unwrap();
    }
}

enum Command {
    Open,
    Deposit(i64),
    Withdraw(i64),
    DepositMeddled(i64, Arc<Meddler>),
}

#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("the account is not open")]
    NotOpen,
    #[error("the account is open already")]
    AlreadyOpen,
    #[error("insufficient funds: {balance} < {amount}")]
    Insufficient { balance: i64, amount: i64 },
}

impl Aggregate for Account {
    type Event = AccountEvent;
    type Command = Command;
    type Error = Refused;

    fn event_type(event: &AccountEvent) -> &str {
        match event {
            AccountEvent::Opened => "Opened",
            AccountEvent::Deposited { .. } => "Deposited",
            AccountEvent::Withdrawn { .. } => "Withdrawn",
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened => self.opened = true,
            AccountEvent::Deposited { amount } => {
                self.balance += amount;
                self.deposits += 1;
            }
            AccountEvent::Withdrawn { amount } => self.balance -= amount,
        }
    }

    fn handle(&self, command: &Command) -> Result<Vec<AccountEvent>, Refused> {
        match command {
            Command::Open if self.opened => Err(Refused::AlreadyOpen),
            Command::Open => Ok(vec![AccountEvent::Opened]),
            _ if !self.opened => Err(Refused::NotOpen),
            Command::Deposit(amount) => Ok(vec![AccountEvent::Deposited { amount: *amount }]),
            Command::Withdraw(amount) if *amount > self.balance => {
                Err(Refused::Insufficient { balance: self.balance, amount: *amount })
            }
            Command::Withdraw(amount) => Ok(vec![AccountEvent::Withdrawn { amount: *amount }]),
            Command::DepositMeddled(amount, meddler) => {
                meddler.meddle();
                Ok(vec![AccountEvent::Deposited { amount: *amount }])
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_from_many_tasks_on_one_stream_each_apply_exactly_once() {
    let (_dir, client, _engine) = start().await;
    client.create_topic("accounts", 2).await.unwrap();
    let accounts = client.repository::<Account>("accounts").conflict_retries(500);
    commands_from_many_tasks_apply_exactly_once(&client, &accounts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_from_many_tasks_with_gathered_appends_each_apply_exactly_once() {
    let (_dir, client, _engine) = start().await;
    client.create_topic("accounts", 2).await.unwrap();
    let accounts = client
        .repository::<Account>("accounts")
        .conflict_retries(500)
        .gather_appends(AppenderOptions::default());
    commands_from_many_tasks_apply_exactly_once(&client, &accounts).await;
}

/// Eight tasks deposit into one account at once through `accounts`, racing each other: each
/// command lands once, conflicts are decided again, and refusals come back typed.
async fn commands_from_many_tasks_apply_exactly_once(
    client: &Client,
    accounts: &Repository<Account>,
) {
    let opened = accounts.execute("acct-9", &Command::Open).await.unwrap();
    assert_eq!((opened.version, opened.attempts), (Some(0), 1));
    let refused = accounts.execute("acct-9", &Command::Open).await.unwrap_err();
    assert!(matches!(refused, RepositoryError::Rejected(Refused::AlreadyOpen)), "{refused}");

    const TASKS: i64 = 8;
    const COMMANDS: i64 = 12;
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let accounts = accounts.clone();
            tokio::spawn(async move {
                let mut attempts = 0;
                for index in 0..COMMANDS {
                    let amount = task * 100 + index + 1;
                    let done = accounts.execute("acct-9", &Command::Deposit(amount)).await.unwrap();
                    assert_eq!(done.events, vec![AccountEvent::Deposited { amount }]);
                    attempts += done.attempts;
                }
                attempts
            })
        })
        .collect();
    let mut attempts = 0;
    for task in tasks {
        attempts += within(task).await.unwrap();
    }
    let expected_sum: i64 =
        (0..TASKS).flat_map(|task| (0..COMMANDS).map(move |index| task * 100 + index + 1)).sum();
    let loaded = accounts.load("acct-9").await.unwrap();
    let commands = (TASKS * COMMANDS) as u64;
    assert_eq!(loaded.state.balance, expected_sum);
    assert_eq!(loaded.state.deposits, commands, "each command applied exactly once");
    assert_eq!(loaded.version, Some(commands));
    assert!(attempts > commands as u32, "the tasks raced: some commands met conflicts");

    let stored = client.read_stream("accounts", "acct-9", &ReadOptions::default()).await.unwrap();
    let ids: BTreeSet<&str> = stored.events.iter().map(|event| event.id.as_str()).collect();
    assert_eq!(ids.len() as u64, commands + 1, "every event has its own id");
    assert_eq!(stored.events[1].event_type, "Deposited");

    let refused =
        accounts.execute("acct-9", &Command::Withdraw(expected_sum + 1)).await.unwrap_err();
    assert!(
        matches!(refused, RepositoryError::Rejected(Refused::Insufficient { .. })),
        "{refused}"
    );
    let withdrawn = accounts.execute("acct-9", &Command::Withdraw(expected_sum)).await.unwrap();
    assert_eq!((withdrawn.state.balance, withdrawn.version), (0, Some(commands + 1)));
    let refused = accounts.execute("new", &Command::Deposit(1)).await.unwrap_err();
    assert!(matches!(refused, RepositoryError::Rejected(Refused::NotOpen)), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_are_retried_a_bounded_number_of_times_then_returned() {
    let (_dir, client, engine) = start().await;
    client.create_topic("meddled", 1).await.unwrap();
    let accounts = client.repository::<Account>("meddled").conflict_retries(3);
    accounts.execute("acct", &Command::Open).await.unwrap();
    let meddler = |times| {
        Arc::new(Meddler {
            engine: engine.clone(),
            topic: "meddled",
            stream: "acct",
            times: AtomicU32::new(times),
        })
    };

    // The meddler blocks in place inside `handle`, which needs a worker thread: run there.
    let execute = |command| {
        let accounts = accounts.clone();
        tokio::spawn(async move { accounts.execute("acct", &command).await })
    };

    // Three competing appends: three conflicts, then the fourth decision lands on top of them.
    let done = within(execute(Command::DepositMeddled(5, meddler(3)))).await.unwrap().unwrap();
    assert_eq!((done.attempts, done.version), (4, Some(4)));
    assert_eq!(done.state.balance, 3 * 1000 + 5);

    // More competitors than retries: the conflict comes back and the command is not applied.
    let error =
        within(execute(Command::DepositMeddled(7, meddler(10)))).await.unwrap().unwrap_err();
    let RepositoryError::Conflict { stream, attempts, conflict } = error else {
        panic!("expected a conflict, got {error}");
    };
    assert_eq!((stream.as_str(), attempts), ("acct", 4));
    assert_eq!((conflict.expected, conflict.actual), (ExpectedVersion::Exact(7), Some(8)));
    let loaded = accounts.load("acct").await.unwrap();
    assert_eq!((loaded.version, loaded.state.balance), (Some(8), 7 * 1000 + 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_start_from_the_snapshot_and_read_only_the_events_after_it() {
    let (_dir, client, _engine) = start().await;
    client.create_topic("ledger", 2).await.unwrap();
    let accounts = client.repository::<Account>("ledger").snapshot_every(10);
    accounts.execute("acct", &Command::Open).await.unwrap();
    let mut snapshots = Vec::new();
    for amount in 1..=24 {
        let done = accounts.execute("acct", &Command::Deposit(amount)).await.unwrap();
        assert_eq!(done.version, Some(amount as u64));
        snapshots.extend(done.snapshot);
    }
    assert_eq!(snapshots, vec![9, 19], "a snapshot every 10 events");
    let stored = client.load_snapshot("ledger", "acct").await.unwrap().unwrap();
    assert_eq!(stored.version, 19);
    assert_eq!(stored.data_as::<Account>().unwrap().balance, (1..=19).sum::<i64>());

    let loaded = accounts.load("acct").await.unwrap();
    assert_eq!(loaded.snapshot_version, Some(19));
    assert_eq!(loaded.events_folded, 5, "only versions 20..=24 were read");
    assert_eq!(loaded.version, Some(24));
    assert_eq!(loaded.state, Account { opened: true, balance: (1..=24).sum(), deposits: 24 });

    // Hide everything before the snapshot: the load does not need it.
    let hidden = StreamMetadata { truncate_before: Some(20), ..StreamMetadata::default() };
    client.set_stream_metadata("ledger", "acct", &hidden).await.unwrap();
    assert_eq!(accounts.load("acct").await.unwrap().state, loaded.state);
    // Without snapshots the state cannot be rebuilt, and the load says why.
    let plain = client.repository::<Account>("ledger");
    let error = plain.load("acct").await.unwrap_err();
    assert!(matches!(error, RepositoryError::Gap { expected: 0, found: Some(20), .. }), "{error}");

    // Soft-deleted, then begun again: the old snapshot no longer counts.
    client.delete_stream("ledger", "acct", ExpectedVersion::Exact(24)).await.unwrap();
    let gone = accounts.load("acct").await.unwrap();
    assert_eq!((gone.version, gone.state.clone()), (None, Account::default()));
    // Begun again by a writer without snapshots, so the newest snapshot is the old life's.
    let reopened = plain.execute("acct", &Command::Open).await.unwrap();
    assert_eq!(reopened.version, Some(25));
    for repository in [&accounts, &plain] {
        let loaded = repository.load("acct").await.unwrap();
        assert_eq!((loaded.version, loaded.snapshot_version), (Some(25), None));
        assert_eq!(loaded.state, Account { opened: true, balance: 0, deposits: 0 });
    }
}

// ---- A projection ----

/// A read model and its checkpoint under one lock: `apply` is one transaction. It refuses an
/// event that does not follow its stream's last one, so a double or a skip fails the run.
#[derive(Default)]
struct Totals {
    inner: Mutex<TotalsInner>,
}

#[derive(Default, Clone)]
struct TotalsInner {
    versions: BTreeMap<String, Vec<u64>>,
    sum: i64,
    applied: u64,
    checkpoint: Option<TopicPosition>,
}

impl Totals {
    fn snapshot(&self) -> TotalsInner {
        self.inner.lock().unwrap().clone()
    }
}

impl ProjectionStore for Totals {
    async fn checkpoint(&self) -> Result<Option<TopicPosition>, BoxError> {
        Ok(self.inner.lock().unwrap().checkpoint.clone())
    }

    async fn apply(&self, event: &RecordedEvent, position: &TopicPosition) -> Result<(), BoxError> {
        let amount = event.data_as::<Value>()?["amount"].as_i64().ok_or("no amount")?;
        let mut inner = self.inner.lock().unwrap();
        let seen = inner.versions.entry(event.stream.clone()).or_default();
        if event.version != seen.len() as u64 {
            return Err(format!("{} version {} after {seen:?}", event.stream, event.version).into());
        }
        seen.push(event.version);
        inner.sum += amount;
        inner.applied += 1;
        inner.checkpoint = Some(position.clone());
        Ok(())
    }
}

async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_stopped_and_restarted_applies_every_event_once_while_appends_race() {
    let (_dir, client, _engine) = start().await;
    client.create_topic("orders", 3).await.unwrap();
    const STREAMS: usize = 12;
    const EVENTS: u64 = 30;
    let total = STREAMS as u64 * EVENTS;
    let appenders: Vec<_> = (0..3)
        .map(|appender| {
            let client = client.clone();
            tokio::spawn(async move {
                for version in 0..EVENTS {
                    for stream in (appender..STREAMS).step_by(3) {
                        let amount = (stream as i64 + 1) * 1000 + version as i64;
                        let data = event("Ordered", json!({"amount": amount}));
                        let expected = ExpectedVersion::from_version(version.checked_sub(1));
                        client
                            .append("orders", &format!("order-{stream}"), expected, &[data])
                            .await
                            .unwrap();
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    let store = Arc::new(Totals::default());

    // 1. A fixed number of events.
    let projection = client.projection("orders", Arc::clone(&store));
    let report = within(projection.run_events(40)).await.unwrap();
    assert_eq!((report.applied, store.snapshot().applied), (40, 40));
    assert_eq!(report.position, store.snapshot().checkpoint);

    // 2. Stopped by a signal, from its checkpoint.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let projection = client.projection("orders", Arc::clone(&store));
    let run =
        tokio::spawn(
            async move { projection.run_until(async { stopped.await.unwrap_or(()) }).await },
        );
    wait_until("100 applied", || store.snapshot().applied >= 100).await;
    stop.send(()).unwrap();
    let report = within(run).await.unwrap().unwrap();
    assert!(report.applied >= 60, "{report:?}");
    assert_eq!(store.snapshot().applied, 40 + report.applied);

    // 3. Dropped mid-way (its task aborted): whatever it applied is checkpointed with it.
    let projection = client.projection("orders", Arc::clone(&store));
    let run = tokio::spawn(async move { projection.run_until(std::future::pending()).await });
    wait_until("160 applied", || store.snapshot().applied >= 160).await;
    run.abort();
    assert!(run.await.unwrap_err().is_cancelled());

    // 4. After the appends: catch up, and the model is the fold of every event.
    for appender in appenders {
        within(appender).await.unwrap();
    }
    let projection = client.projection("orders", Arc::clone(&store));
    let report = within(projection.catch_up()).await.unwrap();
    assert!(report.caught_up);
    let model = store.snapshot();
    assert_eq!(model.applied, total, "no event applied twice or skipped");
    let mut sum = 0;
    for stream in 0..STREAMS {
        let name = format!("order-{stream}");
        assert_eq!(model.versions[&name], (0..EVENTS).collect::<Vec<_>>(), "{name}");
        let slice = client.read_stream("orders", &name, &ReadOptions::default()).await.unwrap();
        for event in &slice.events {
            sum += event.data_as::<Value>().unwrap()["amount"].as_i64().unwrap();
        }
    }
    assert_eq!(model.sum, sum);
    // Caught up already: a second catch-up applies nothing and stops at once.
    let projection = client.projection("orders", Arc::clone(&store));
    let again = within(projection.catch_up()).await.unwrap();
    assert_eq!((again.applied, again.caught_up), (0, true));
    assert_eq!(again.position, model.checkpoint);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_ends_where_a_partition_ends_in_records_that_are_not_events() {
    let (_dir, client, _engine) = start().await;
    client.create_topic("mixed", 2).await.unwrap();
    for stream in ["a", "b", "c"] {
        let events =
            [event("Ordered", json!({"amount": 1})), event("Ordered", json!({"amount": 2}))];
        client.append("mixed", stream, ExpectedVersion::NoStream, &events).await.unwrap();
    }
    let store = Arc::new(Totals::default());
    let projection = client.projection("mixed", Arc::clone(&store));
    let report = within(projection.catch_up()).await.unwrap();
    assert_eq!((report.applied, report.caught_up), (6, true));
    assert_eq!(store.snapshot().sum, 9);

    // Now the partitions end in a soft delete's tombstone and in plain records: no event moves
    // the position past them, so the catch-up looks at the records in between.
    client.delete_stream("mixed", "a", ExpectedVersion::Exact(1)).await.unwrap();
    let producer = client.producer::<Value>("mixed");
    for key in ["a", "b", "c", "d"] {
        producer.send(Some(key), &json!({"plain": true})).await.unwrap();
    }
    let report = within(projection.catch_up()).await.unwrap();
    assert_eq!((report.applied, report.caught_up), (0, true));

    // An event after the plain records is still found, and applied once.
    client
        .append("mixed", "b", ExpectedVersion::Exact(1), &[event("Ordered", json!({"amount": 4}))])
        .await
        .unwrap();
    let report = within(projection.catch_up()).await.unwrap();
    assert_eq!((report.applied, report.caught_up), (1, true));
    assert_eq!((store.snapshot().applied, store.snapshot().sum), (7, 13));
}
