//! Ctrl-C (SIGINT) and SIGTERM for the blocking client commands: the first one sets a flag the
//! command polls between requests, so it can finish cleanly (commit, leave its group); a second
//! one exits at once with status 130.
//!
//! The signals are caught on a thread of its own running a single-threaded tokio runtime (tokio
//! is already a dependency for `sluice serve`). A command notices the flag only between requests,
//! so a long-poll in flight finishes first: keep the waits of commands that listen short.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Exit status after a second signal: 128 + SIGINT, as shells report an interrupted command.
const FORCED_EXIT_STATUS: i32 = 130;

/// Whether SIGINT or SIGTERM has arrived since [`StopSignal::listen`].
pub struct StopSignal {
    received: Arc<AtomicBool>,
}

impl StopSignal {
    /// Replaces the default handling of SIGINT and SIGTERM (which kills the process) for the
    /// rest of the process's life.
    ///
    /// # Errors
    /// The runtime, the signal handlers or the thread could not be set up.
    pub fn listen() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .context("starting the signal listener")?;
        let (interrupt, terminate) = {
            let _context = runtime.enter();
            let interrupt = signal(SignalKind::interrupt()).context("listening for Ctrl-C")?;
            let terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
            (interrupt, terminate)
        };
        let received = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&received);
        std::thread::Builder::new()
            .name("sluice-signals".to_owned())
            .spawn(move || runtime.block_on(wait_for_signals(interrupt, terminate, &flag)))
            .context("starting the signal listener")?;
        Ok(Self { received })
    }

    /// Whether the command should stop.
    pub fn is_received(&self) -> bool {
        self.received.load(Ordering::SeqCst)
    }
}

async fn wait_for_signals(mut interrupt: Signal, mut terminate: Signal, flag: &AtomicBool) {
    loop {
        let received = tokio::select! {
            received = interrupt.recv() => received,
            received = terminate.recv() => received,
        };
        if received.is_none() {
            return; // the runtime is shutting down; the default handling is gone for good
        }
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(FORCED_EXIT_STATUS);
        }
        tracing::info!("stopping after the request in flight; signal again to quit at once");
    }
}
