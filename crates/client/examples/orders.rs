//! A runnable tour of the SDK: produce typed orders, consume them in a group, commit.
//!
//! Start a server first (`cargo run --release -p sluice -- serve`), then:
//! `cargo run -p sluice-client --example orders [SERVER]` (default `http://127.0.0.1:8080`).
#![allow(clippy::print_stdout)]

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_client::{Client, ClientError, ConsumerOptions};

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u64,
    customer: String,
    total_cents: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), ClientError> {
    let server = std::env::args().nth(1).unwrap_or_else(|| "http://127.0.0.1:8080".to_owned());
    let client = Client::new(&server);
    client.create_topic("example-orders", 3).await?;
    let producer = client.producer::<Order>("example-orders");
    for id in 0..10 {
        let customer = format!("customer-{}", id % 3);
        let order = Order { id, customer: customer.clone(), total_cents: 1000 + id * 250 };
        let position = producer.send(Some(&customer), &order).await?;
        println!(
            "order {id} stored at partition {} offset {}",
            position.partition, position.offset
        );
    }
    let options = ConsumerOptions { from_earliest: true, ..ConsumerOptions::default() };
    let mut consumer =
        client.consumer::<Order>("example-billing", &["example-orders"], options).await?;
    let mut billed = 0;
    loop {
        let deliveries = consumer.poll(Duration::from_millis(500)).await?;
        if deliveries.is_empty() {
            break;
        }
        for delivery in &deliveries {
            billed += delivery.value.total_cents;
            println!("billing {} for order {}", delivery.value.customer, delivery.value.id);
        }
        consumer.commit().await?;
    }
    consumer.close().await?;
    println!("billed {billed} cents in total; run again and only the new orders are billed");
    Ok(())
}
