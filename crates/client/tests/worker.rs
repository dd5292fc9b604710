//! Queue workers against a real server (engine and HTTP door in-process, on a real socket):
//! workers share a group's messages and ack each once, transient failures and panics are
//! redelivered, permanent failures are dead-lettered, long handlers keep their leases, shutdown
//! waits for running handlers and their acks, at-most-once acks before handling, and a missing
//! group stops the worker with the server's code. Acks of finished handlers lease the next
//! messages in the same request, without the worker holding more than its concurrency.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_client::{Client, Guarantee, HandlerError, Message, WorkerReport};
use sluice_engine::queue::QueueConfig;
use sluice_engine::Engine;
use tokio::sync::watch;

async fn start() -> (tempfile::TempDir, Client, Engine) {
    let (dir, address, engine) = start_server().await;
    (dir, Client::new(&address.to_string()), engine)
}

async fn start_server() -> (tempfile::TempDir, SocketAddr, Engine) {
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
    (dir, address, engine)
}

/// Creates topic `jobs` (`partitions`), group `workers` with `config`, and produces `values`.
async fn setup(
    client: &Client,
    engine: &Engine,
    partitions: u32,
    config: QueueConfig,
    values: &[&str],
) {
    client.create_topic("jobs", partitions).await.unwrap();
    engine.create_queue("workers", QueueConfig { topics: vec!["jobs".into()], ..config }).unwrap();
    let producer = client.producer::<String>("jobs");
    for value in values {
        producer.send(None, &(*value).to_owned()).await.unwrap();
    }
}

/// A shutdown signal several workers can wait on.
fn shutdown() -> (
    watch::Sender<bool>,
    impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) {
    let (sender, receiver) = watch::channel(false);
    let signal = move || {
        let mut receiver = receiver.clone();
        Box::pin(async move {
            let _ = receiver.wait_for(|stop| *stop).await;
        }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
    };
    (sender, signal)
}

/// Runs `future` with a deadline, so a hung worker fails the test instead of hanging it.
async fn within<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), future).await.expect("finished in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_share_the_messages_and_ack_each_once() {
    let (_dir, client, engine) = start().await;
    let values: Vec<String> = (0..200).map(|index| format!("job-{index}")).collect();
    let value_refs: Vec<&str> = values.iter().map(String::as_str).collect();
    setup(&client, &engine, 4, QueueConfig::default(), &value_refs).await;

    let seen: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
    let (stop, signal) = shutdown();
    let stop = Arc::new(stop);
    let workers: Vec<_> = (0..4)
        .map(|index| {
            let seen = Arc::clone(&seen);
            let stop = Arc::clone(&stop);
            let worker =
                client.worker("workers").member(format!("w{index}")).concurrency(4).batch(8);
            tokio::spawn(worker.run_until(
                move |message: Message| {
                    let seen = Arc::clone(&seen);
                    let stop = Arc::clone(&stop);
                    async move {
                        assert_eq!(message.deliveries, 1);
                        assert!(message.record_id.is_some(), "the producer gave it an id");
                        tokio::time::sleep(Duration::from_millis(2)).await; // some work
                        let value: String = message.value_as()?;
                        let mut seen = seen.lock().unwrap();
                        *seen.entry(value).or_default() += 1;
                        if seen.len() == 200 {
                            let _ = stop.send(true);
                        }
                        Ok(())
                    }
                },
                signal(),
            ))
        })
        .collect();
    let mut total = WorkerReport::default();
    for worker in workers {
        let report = within(worker).await.unwrap().unwrap();
        assert!(report.acked > 0, "every worker got a share: {report:?}");
        assert_eq!(report.acked, report.handled);
        total.acked += report.acked;
        total.handled += report.handled;
        total.unsettled += report.unsettled + report.nacked + report.rejected + report.panicked;
    }
    assert_eq!((total.acked, total.handled, total.unsettled), (200, 200, 0));
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 200);
    assert!(seen.values().all(|count| *count == 1), "no message was handled twice");
    let queue = engine.describe_queue("workers").unwrap();
    assert_eq!(queue.totals.acked, 200);
    assert_eq!(queue.totals.delivered, 200, "nothing was redelivered");
    assert_eq!(queue.counts.in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_and_panics_are_redelivered() {
    let (_dir, client, engine) = start().await;
    let config =
        QueueConfig { backoff_initial_ms: 10, backoff_max_ms: 50, ..QueueConfig::default() };
    setup(&client, &engine, 1, config, &["flaky", "delayed", "panics", "fine"]).await;

    let deliveries: Arc<Mutex<BTreeMap<String, Vec<u32>>>> = Arc::default();
    let (stop, signal) = shutdown();
    let handler = {
        let deliveries = Arc::clone(&deliveries);
        move |message: Message| {
            let deliveries = Arc::clone(&deliveries);
            let stop = stop.clone();
            async move {
                let value: String = message.value_as()?;
                let done = {
                    let mut deliveries = deliveries.lock().unwrap();
                    deliveries.entry(value.clone()).or_default().push(message.deliveries);
                    deliveries.values().map(Vec::len).sum::<usize>() == 7
                };
                if done {
                    let _ = stop.send(true);
                }
                match (value.as_str(), message.deliveries) {
                    ("flaky", 1) => Err(HandlerError::transient("database restarting")),
                    ("delayed", 1) => {
                        Err(HandlerError::retry_after("rate limited", Duration::from_millis(30)))
                    }
                    ("panics", 1) => panic!("handler bug"),
                    _ => Ok(()),
                }
            }
        }
    };
    let worker = client.worker("workers").concurrency(2);
    let report = within(worker.run_until(handler, signal())).await.unwrap();
    assert_eq!(report.acked, 4, "{report:?}");
    assert_eq!((report.nacked, report.panicked, report.handled), (3, 1, 7), "{report:?}");
    assert_eq!(report.unsettled, 0);
    let deliveries = deliveries.lock().unwrap();
    for value in ["flaky", "delayed", "panics"] {
        assert_eq!(deliveries[value], vec![1, 2], "{value}");
    }
    assert_eq!(deliveries["fine"], vec![1]);
    let queue = engine.describe_queue("workers").unwrap();
    assert_eq!((queue.totals.acked, queue.totals.redelivered), (4, 3));
    assert_eq!(queue.totals.dead_lettered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_is_dead_lettered_at_once() {
    let (_dir, client, engine) = start().await;
    setup(&client, &engine, 2, QueueConfig::default(), &["poison", "good"]).await;

    let handled = Arc::new(Mutex::new(Vec::new()));
    let (stop, signal) = shutdown();
    let handler = {
        let handled = Arc::clone(&handled);
        move |message: Message| {
            let handled = Arc::clone(&handled);
            let stop = stop.clone();
            async move {
                let value: String = message.value_as()?;
                let count = {
                    let mut handled = handled.lock().unwrap();
                    handled.push(value.clone());
                    handled.len()
                };
                if count == 2 {
                    let _ = stop.send(true);
                }
                if value == "poison" {
                    return Err(HandlerError::permanent("customer 7 does not exist"));
                }
                Ok(())
            }
        }
    };
    let report = within(client.worker("workers").run_until(handler, signal())).await.unwrap();
    assert_eq!((report.acked, report.rejected, report.nacked), (1, 1, 0), "{report:?}");
    assert_eq!(handled.lock().unwrap().len(), 2, "handled once each");
    let queue = engine.describe_queue("workers").unwrap();
    assert_eq!((queue.totals.acked, queue.totals.dead_lettered), (1, 1));
    let letters = engine.dead_letters("jobs.dlq", 0, 10, true).unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].record.value.as_deref(), Some(&b"\"poison\""[..]));
    let history = format!("{:?}", letters[0].history);
    assert!(history.contains("customer 7 does not exist"), "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_slower_than_the_ack_wait_keeps_its_lease() {
    let (_dir, client, engine) = start().await;
    let config = QueueConfig { ack_wait_ms: 200, ..QueueConfig::default() };
    setup(&client, &engine, 1, config, &["slow"]).await;

    let (stop, signal) = shutdown();
    let (started_sender, mut started) = tokio::sync::mpsc::channel(1);
    let handler = move |message: Message| {
        let stop = stop.clone();
        let started_sender = started_sender.clone();
        async move {
            assert_eq!(message.deliveries, 1, "the lease never ran out");
            started_sender.send(()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(900)).await; // 4.5 ack waits of work
            let _ = stop.send(true);
            Ok(())
        }
    };
    let slow = tokio::spawn(client.worker("workers").run_until(handler, signal()));
    within(started.recv()).await.unwrap();
    // A second worker: if the lease lapsed, it would get the message.
    let idle = client.worker("workers").run_until(
        |_message: Message| async { panic!("the message went to a second worker") },
        signal(),
    );
    assert_eq!(within(idle).await.unwrap(), WorkerReport::default());
    let report = within(slow).await.unwrap().unwrap();
    assert_eq!((report.acked, report.handled), (1, 1), "{report:?}");
    let queue = engine.describe_queue("workers").unwrap();
    assert_eq!((queue.totals.delivered, queue.totals.acked), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_running_handlers_finish_and_sends_their_acks() {
    let (_dir, client, engine) = start().await;
    setup(&client, &engine, 1, QueueConfig::default(), &["a", "b"]).await;

    let (started_sender, mut started) = tokio::sync::mpsc::channel(2);
    let (release, released) = watch::channel(false);
    let handler = move |_message: Message| {
        let started_sender = started_sender.clone();
        let mut released = released.clone();
        async move {
            started_sender.send(()).await.unwrap();
            let _ = released.wait_for(|go| *go).await;
            Ok(())
        }
    };
    let (stop, signal) = shutdown();
    let worker = tokio::spawn(client.worker("workers").concurrency(2).run_until(handler, signal()));
    within(started.recv()).await.unwrap();
    within(started.recv()).await.unwrap();
    stop.send(true).unwrap();
    assert!(!worker.is_finished(), "it waits for the running handlers");
    release.send(true).unwrap();
    let report = within(worker).await.unwrap().unwrap();
    assert_eq!(report.acked, 2, "{report:?}");
    // The acks were confirmed before run_until returned.
    assert_eq!(engine.describe_queue("workers").unwrap().totals.acked, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_once_acks_before_handling_and_never_retries() {
    let (_dir, client, engine) = start().await;
    setup(&client, &engine, 1, QueueConfig::default(), &["x"]).await;

    let (stop, signal) = shutdown();
    let engine_in_handler = engine.clone();
    let handler = move |_message: Message| {
        let stop = stop.clone();
        let engine = engine_in_handler.clone();
        async move {
            let acked = engine.describe_queue("workers").unwrap().totals.acked;
            let _ = stop.send(true);
            assert_eq!(acked, 1, "acked on receipt");
            Err(HandlerError::transient("lost on purpose"))
        }
    };
    let worker = client.worker("workers").guarantee(Guarantee::AtMostOnce);
    let report = within(worker.run_until(handler, signal())).await.unwrap();
    assert_eq!((report.acked, report.handled, report.failed_after_ack), (1, 1, 1), "{report:?}");
    assert_eq!((report.nacked, report.panicked), (0, 0), "{report:?}");
    let queue = engine.describe_queue("workers").unwrap();
    assert_eq!((queue.totals.delivered, queue.counts.in_flight), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_group_stops_the_worker_with_its_code() {
    let (_dir, client, _engine) = start().await;
    let error = within(client.worker("nobody").run(|_message: Message| async { Ok(()) }))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(1017), "{error}");
    client.create_topic("jobs", 1).await.unwrap();
    client.create_queue("made", &["jobs"]).await.unwrap();
    client.create_queue("made", &["jobs"]).await.unwrap(); // same settings: fine
    let error = client.create_queue("made", &["jobs", "jobs.dlq"]).await.unwrap_err();
    assert_eq!(error.code(), Some(1018), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_lease_the_next_messages_without_exceeding_the_concurrency() {
    let (_dir, address, engine) = start_server().await;
    let client = Client::new(&address.to_string());
    let values: Vec<String> = (0..60).map(|index| format!("job-{index}")).collect();
    let value_refs: Vec<&str> = values.iter().map(String::as_str).collect();
    setup(&client, &engine, 1, QueueConfig::default(), &value_refs).await;
    let (proxy, sent) = common::recording_proxy(address).await;

    let (stop, signal) = shutdown();
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (running, most, done, engine) =
            (Arc::clone(&running), Arc::clone(&most), Arc::clone(&done), engine.clone());
        move |_message: Message| {
            let (running, most, done, stop) =
                (Arc::clone(&running), Arc::clone(&most), Arc::clone(&done), stop.clone());
            let leased = engine.describe_queue("workers").unwrap().counts.in_flight;
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now.max(usize::try_from(leased).unwrap()), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                if done.fetch_add(1, Ordering::SeqCst) + 1 == 60 {
                    let _ = stop.send(true);
                }
                Ok(())
            }
        }
    };
    let worker = sluice_client::Worker::new(&proxy.to_string(), "workers").concurrency(2);
    let report = within(worker.run_until(handler, signal())).await.unwrap();
    assert_eq!((report.handled, report.acked, report.unsettled), (60, 60, 0), "{report:?}");
    let most = most.load(Ordering::SeqCst);
    assert!(most <= 2, "{most} handlers ran or messages were leased at once, with 2 slots");
    let queue = engine.describe_queue("workers").unwrap();
    assert_eq!((queue.totals.acked, queue.totals.delivered, queue.counts.in_flight), (60, 60, 0));

    let sent = sent.lock().unwrap();
    let ack_next = common::count(&sent, "POST /v1/queues/workers/ack-next ");
    let leases = common::count(&sent, "GET /v1/queues/workers/messages?");
    let plain_acks = common::count(&sent, "POST /v1/queues/workers/ack ");
    // Lease-then-ack would take at least 30 leases of 2 messages and as many acks.
    assert!(ack_next >= 20, "{ack_next} ack-next requests, {leases} leases, {plain_acks} acks");
    assert!(leases <= 10, "{ack_next} ack-next requests, {leases} leases, {plain_acks} acks");
}
