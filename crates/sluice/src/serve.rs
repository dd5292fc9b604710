//! `sluice serve`: opens the engine on the data directory, serves the HTTP API, runs retention
//! and compaction in the background, and on SIGTERM or Ctrl-C stops accepting, finishes the
//! requests in flight, syncs every partition and exits 0.

use std::time::Duration;

use anyhow::Context;
use sluice_engine::Engine;
use tokio::net::TcpListener;

use crate::cli::ServeArgs;

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
    // Scripts and tests wait for this line; keep its shape.
    println!("sluice listening on http://{address}, data in {}", args.data.display());
    let maintenance = tokio::spawn(run_maintenance(engine.clone()));
    let timeouts = sluice_http::Timeouts {
        header_read: Duration::from_millis(args.header_timeout_ms),
        request: Duration::from_millis(args.request_timeout_ms),
    };
    sluice_http::serve(listener, engine.clone(), timeouts, shutdown_signal())
        .await
        .context("serving HTTP")?;
    maintenance.abort();
    tracing::info!("shutting down: syncing every partition");
    tokio::task::spawn_blocking(move || engine.shutdown())
        .await
        .context("shutting down")?
        .context("syncing partitions at shutdown")?;
    tracing::info!("stopped cleanly");
    Ok(())
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
