//! A queue worker: produce image-resize jobs, then work them off with four handlers at once,
//! as an idempotent consumer. One job fails once and is retried, one is malformed and goes to
//! the dead-letter topic `example-resize.dlq`.
//!
//! Start a server first (`cargo run --release -p sluice -- serve`), then:
//! `cargo run -p sluice-client --example worker [SERVER]` (default `http://127.0.0.1:8080`).
#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_client::{dedup, Client, ClientError, HandlerError, MemoryStore, Message};

#[derive(Debug, Serialize, Deserialize)]
struct Resize {
    image: String,
    width: u32,
}

const JOBS: u64 = 12;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), ClientError> {
    let server = std::env::args().nth(1).unwrap_or_else(|| "http://127.0.0.1:8080".to_owned());
    let client = Client::new(&server);
    client.create_topic("example-resize", 3).await?;
    client.create_queue("example-resizers", &["example-resize"]).await?;

    let producer = client.producer::<Resize>("example-resize");
    for index in 0..JOBS {
        let width = if index == 7 { 0 } else { 320 + 10 * index as u32 };
        producer.send(None, &Resize { image: format!("photo-{index}.jpg"), width }).await?;
    }
    // A malformed job: not a `Resize` at all.
    client.producer::<String>("example-resize").send(None, &"not a job".to_owned()).await?;

    // Stop once every job has settled one way or the other (the report counts confirmed acks).
    let settled = Arc::new(AtomicU64::new(0));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let stop = Arc::new(std::sync::Mutex::new(Some(stop)));
    let handler = {
        let settled = Arc::clone(&settled);
        move |message: Message| {
            let settled = Arc::clone(&settled);
            let stop = Arc::clone(&stop);
            async move {
                let outcome = resize(&message).await;
                let finished = match &outcome {
                    Err(HandlerError::Transient { .. }) => false,
                    Ok(()) | Err(HandlerError::Permanent(_)) => true,
                };
                if finished && settled.fetch_add(1, Ordering::SeqCst) + 1 == JOBS + 1 {
                    if let Some(stop) = stop.lock().ok().and_then(|mut stop| stop.take()) {
                        let _ = stop.send(());
                    }
                }
                outcome
            }
        }
    };
    let report = client
        .worker("example-resizers")
        .concurrency(4)
        .run_until(dedup(MemoryStore::new(), handler), async {
            let _ = tokio::time::timeout(Duration::from_secs(30), stopped).await;
        })
        .await?;
    println!(
        "acked {}, retried {}, dead-lettered {} (see topic example-resize.dlq)",
        report.acked, report.nacked, report.rejected
    );
    Ok(())
}

/// Pretends to resize an image.
async fn resize(message: &Message) -> Result<(), HandlerError> {
    let job: Resize = message.value_as()?; // malformed: permanent, straight to the DLQ
    if job.width == 0 && message.deliveries == 1 {
        // A flaky dependency: try again in 200 ms.
        return Err(HandlerError::retry_after(
            "thumbnail service timed out",
            Duration::from_millis(200),
        ));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    println!("resized {} to {} px (delivery {})", job.image, job.width, message.deliveries);
    Ok(())
}
