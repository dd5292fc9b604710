//! `sluice serve`: opens the engine on the data directory, serves the HTTP API, runs retention
//! and compaction in the background, and on SIGTERM or Ctrl-C stops accepting, finishes the
//! requests in flight, syncs every partition and exits 0.

use std::time::Duration;

use anyhow::Context;
use sluice_engine::Engine;
use tokio::net::TcpListener;

use crate::cli::{KafkaListen, ServeArgs};

/// How often retention and compaction run over every partition.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(60);

/// Runs the server until a shutdown signal.
///
/// # Errors
/// The data directory or the address cannot be used; the final sync failed.
pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sluice")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let data = args.data.clone();
    let engine = tokio::task::spawn_blocking(move || Engine::open(&data))
        .await
        .context("opening the engine")?
        .with_context(|| format!("opening the data directory {}", args.data.display()))?;
    let listener = TcpListener::bind(args.http)
        .await
        .with_context(|| format!("listening on {}", args.http))?;
    let address = listener.local_addr().context("reading the listening address")?;
    let kafka = match args.kafka {
        KafkaListen::Off => None,
        KafkaListen::On(kafka_address) => {
            let kafka_listener = TcpListener::bind(kafka_address).await.with_context(|| {
                format!("listening for Kafka clients on {kafka_address} (choose another with --kafka ADDR, or --kafka off)")
            })?;
            let bound = kafka_listener.local_addr().context("reading the Kafka address")?;
            let advertised = match &args.kafka_advertised {
                None => sluice_kafka::Advertised::from_bound(bound),
                Some(text) => parse_advertised(text)?,
            };
            Some((kafka_listener, bound, advertised))
        }
    };
    let kafka_text = kafka
        .as_ref()
        .map_or_else(|| "kafka off".to_owned(), |(_, bound, _)| format!("kafka on {bound}"));
    // Scripts and tests wait for this line; keep its shape (the HTTP address up to the first
    // comma, the Kafka address after the last ", kafka on ").
    println!("sluice listening on http://{address}, data in {}, {kafka_text}", args.data.display());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    let when_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };
    let kafka = kafka.map(|(kafka_listener, _, advertised)| {
        tokio::spawn(sluice_kafka::serve(
            kafka_listener,
            engine.clone(),
            advertised,
            when_stopped(),
        ))
    });
    let maintenance = tokio::spawn(run_maintenance(engine.clone()));
    let timeouts = sluice_http::Timeouts {
        header_read: Duration::from_millis(args.header_timeout_ms),
        request: Duration::from_millis(args.request_timeout_ms),
    };
    sluice_http::serve(listener, engine.clone(), timeouts, when_stopped())
        .await
        .context("serving HTTP")?;
    if let Some(kafka) = kafka {
        let _ = kafka.await;
    }
    maintenance.abort();
    tracing::info!("shutting down: syncing every partition");
    tokio::task::spawn_blocking(move || engine.shutdown())
        .await
        .context("shutting down")?
        .context("syncing partitions at shutdown")?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// `HOST:PORT` for `--kafka-advertised`.
fn parse_advertised(text: &str) -> anyhow::Result<sluice_kafka::Advertised> {
    let parsed = text.rsplit_once(':').and_then(|(host, port)| {
        let port = port.parse().ok()?;
        (!host.is_empty()).then(|| sluice_kafka::Advertised { host: host.to_owned(), port })
    });
    parsed.with_context(|| {
        format!("--kafka-advertised is '{text}'; give HOST:PORT, e.g. broker.example:9092")
    })
}

async fn run_maintenance(engine: Engine) {
    let mut ticks = tokio::time::interval(MAINTENANCE_INTERVAL);
    ticks.tick().await; // the first tick is immediate; nothing has aged yet
    loop {
        ticks.tick().await;
        let engine = engine.clone();
        if tokio::task::spawn_blocking(move || engine.run_maintenance()).await.is_err() {
            tracing::error!("maintenance task panicked");
        }
    }
}

/// Completes at the first SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutdown signal received");
}
