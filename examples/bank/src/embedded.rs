//! A Sluice server inside this process: the engine on a data directory and the HTTP API on
//! `127.0.0.1:0` (a free port), as `sluice serve` runs them. The example talks to it over real
//! HTTP, exactly as to a separate server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice_engine::Engine;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Longest [`EmbeddedServer::stop`] waits for the HTTP server to finish its requests.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the embedded server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// The engine did not open its data directory.
    #[error("opening the engine on {dir}: {source}")]
    Open {
        /// The data directory.
        dir: PathBuf,
        /// The engine's error.
        #[source]
        source: sluice_engine::EngineOpenError,
    },
    /// Binding or serving the socket failed.
    #[error("serving HTTP: {0}")]
    Io(#[from] std::io::Error),
    /// The HTTP server did not finish within [`STOP_TIMEOUT`].
    #[error("the HTTP server did not stop within {} s", STOP_TIMEOUT.as_secs())]
    StopTimeout,
    /// Syncing the partitions at shutdown failed.
    #[error("shutting the engine down: {0}")]
    Shutdown(#[from] sluice_engine::CloseError),
    /// A task panicked or was cancelled.
    #[error("a server task did not finish: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A running in-process server. Stop it with [`EmbeddedServer::stop`] to sync its data.
#[derive(Debug)]
pub struct EmbeddedServer {
    address: SocketAddr,
    engine: Engine,
    stop: oneshot::Sender<()>,
    serving: JoinHandle<std::io::Result<()>>,
}

impl EmbeddedServer {
    /// Opens the engine on `dir` and serves its HTTP API on a free port of 127.0.0.1.
    ///
    /// # Errors
    /// [`EmbeddedError::Open`], [`EmbeddedError::Io`].
    pub async fn start(dir: &Path) -> Result<Self, EmbeddedError> {
        let data = dir.to_owned();
        let engine = tokio::task::spawn_blocking(move || Engine::open(&data))
            .await?
            .map_err(|source| EmbeddedError::Open { dir: dir.to_owned(), source })?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(sluice_http::serve(
            listener,
            engine.clone(),
            sluice_http::Timeouts::default(),
            async {
                // A dropped sender stops the server too.
                let _ = stopped.await;
            },
        ));
        Ok(Self { address, engine, stop, serving })
    }

    /// The server's URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Stops serving (after the requests in flight; close subscriptions first), then syncs
    /// every partition.
    ///
    /// # Errors
    /// [`EmbeddedError`].
    pub async fn stop(self) -> Result<(), EmbeddedError> {
        let _ = self.stop.send(());
        tokio::time::timeout(STOP_TIMEOUT, self.serving)
            .await
            .map_err(|_| EmbeddedError::StopTimeout)???;
        let engine = self.engine;
        Ok(tokio::task::spawn_blocking(move || engine.shutdown()).await??)
    }
}
