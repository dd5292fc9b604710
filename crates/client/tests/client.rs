//! The SDK against a real server (engine and HTTP door in-process, on a real socket): typed
//! values round-trip, concurrent sends are batched and all acknowledged, a group consumer
//! commits and a second member sees nothing twice, errors carry the server's codes, and a
//! member the server forgot rejoins by itself.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_client::{Client, ClientError, ConsumerOptions, ProducerOptions};
use sluice_engine::Engine;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    customer: String,
    total_cents: u64,
}

async fn start() -> (tempfile::TempDir, Client, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = engine.clone();
    tokio::spawn(sluice_http::serve(
        listener,
        server,
        sluice_http::Timeouts::default(),
        std::future::pending(),
    ));
    (dir, Client::new(&address.to_string()), engine)
}

fn order(id: u64) -> Order {
    Order { id, customer: format!("c{}", id % 7), total_cents: id * 100 }
}

async fn consume_all(client: &Client, group: &str, expected: usize) -> Vec<Order> {
    let options = ConsumerOptions { from_earliest: true, ..ConsumerOptions::default() };
    let mut consumer = client.consumer::<Order>(group, &["orders"], options).await.unwrap();
    let mut orders = Vec::new();
    while orders.len() < expected {
        let deliveries = consumer.poll(Duration::from_secs(5)).await.unwrap();
        assert!(!deliveries.is_empty(), "records stopped arriving at {}", orders.len());
        orders.extend(deliveries.into_iter().map(|delivery| delivery.value));
        consumer.commit().await.unwrap();
    }
    consumer.close().await.unwrap();
    orders
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_values_round_trip_and_commits_hold() {
    let (_dir, client, _engine) = start().await;
    client.create_topic("orders", 3).await.unwrap();
    client.create_topic("orders", 3).await.unwrap(); // already there: fine
    let producer = std::sync::Arc::new(client.producer::<Order>("orders"));
    let sends: Vec<_> = (0..200)
        .map(|id| {
            let producer = std::sync::Arc::clone(&producer);
            tokio::spawn(async move {
                producer.send(Some(&format!("c{}", id % 7)), &order(id)).await.unwrap()
            })
        })
        .collect();
    for send in sends {
        assert!(!send.await.unwrap().duplicate);
    }
    let mut orders = consume_all(&client, "billing", 200).await;
    orders.sort_by_key(|order| order.id);
    assert_eq!(orders, (0..200).map(order).collect::<Vec<_>>());

    // A new member of the same group starts at the commits: nothing is delivered twice.
    let mut again =
        client.consumer::<Order>("billing", &["orders"], ConsumerOptions::default()).await.unwrap();
    assert!(again.poll(Duration::from_millis(200)).await.unwrap().is_empty());
    producer.send(None, &order(999)).await.unwrap();
    let ids: BTreeSet<u64> = again
        .poll(Duration::from_secs(5))
        .await
        .unwrap()
        .into_iter()
        .map(|delivery| delivery.value.id)
        .collect();
    assert_eq!(ids, BTreeSet::from([999]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_refusals_keep_their_codes() {
    let (_dir, client, _engine) = start().await;
    let error =
        client.consumer::<Order>("g", &["missing"], ConsumerOptions::default()).await.unwrap_err();
    assert_eq!(error.code(), Some(1001), "{error}");
    let error = client.create_topic("bad name", 1).await.unwrap_err();
    assert_eq!(error.code(), Some(1003));
    client.create_topic("orders", 1).await.unwrap();
    let producer = client.producer_with::<String>(
        "orders",
        ProducerOptions { linger: Duration::ZERO, ..ProducerOptions::default() },
    );
    let error = producer.send(None, &"x".repeat(2_000_000)).await.unwrap_err();
    assert!(matches!(error, ClientError::Api { code: 1006, .. }), "{error}");
    assert!(!error.is_transient());
    let unreachable = Client::new("127.0.0.1:9").create_topic("t", 1).await.unwrap_err();
    assert!(unreachable.is_transient(), "{unreachable}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_the_server_forgot_rejoins_by_itself() {
    let (_dir, client, engine) = start().await;
    client.create_topic("orders", 2).await.unwrap();
    let producer = client.producer::<Order>("orders");
    for id in 0..10 {
        producer.send(None, &order(id)).await.unwrap();
    }
    let options = ConsumerOptions { from_earliest: true, ..ConsumerOptions::default() };
    let mut consumer = client.consumer::<Order>("g", &["orders"], options).await.unwrap();
    let first = consumer.member_id().to_owned();
    engine.leave_group("g", &first).unwrap(); // as a session timeout would
    let deliveries = consumer.poll(Duration::from_secs(5)).await.unwrap();
    assert_ne!(consumer.member_id(), first, "it joined again under a new id");
    assert_eq!(deliveries.len(), 10);
}
