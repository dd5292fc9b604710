//! The accept loop: one task per connection, bounded in number, with a deadline for reading
//! request headers and another for each whole request, and a graceful shutdown that lets the
//! requests in flight finish.
//!
//! `axum::serve` has no header-read timeout, so a client that sends half a request and stalls
//! would hold its connection forever; hyper's connection builder has one.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use sluice_engine::ErrorCode;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::error::ApiError;

/// Default for [`Timeouts::header_read`].
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for [`Timeouts::request`]; above the longest fetch wait (30 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The server's deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// A connection that has not sent complete request headers this long after it opened (or
    /// after its previous request) is closed.
    pub header_read: Duration,
    /// Longest a request may take from its headers to its response, body upload and long-poll
    /// included; past it the client gets 408. Also the grace period at shutdown.
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self { header_read: HEADER_READ_TIMEOUT, request: REQUEST_TIMEOUT }
    }
}
/// Most connections served at once; more are closed on accept.
pub const CONNECTIONS_MAX: usize = 10_000;
/// Pause after a failed accept (out of file descriptors, say) before trying again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until `shutdown` completes, then waits up to the request
/// timeout for the requests in flight.
///
/// # Errors
/// None today; the signature leaves room for listener failures that should stop the server.
pub async fn serve_router(
    listener: TcpListener,
    router: Router,
    timeouts: Timeouts,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let deadline = timeouts.request;
    let router = router.layer(axum::middleware::from_fn(move |request: Request, next: Next| {
        request_deadline(deadline, request, next)
    }));
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            tracing::warn!(%peer, limit = CONNECTIONS_MAX, "too many connections; closing a new one");
            continue;
        };
        let mut builder = http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(timeouts.header_read);
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(timeouts.request, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still in flight after the shutdown grace period; stopping anyway");
    }
    Ok(())
}

/// Answers 408 to a request that takes longer than `deadline` (a stalled upload).
async fn request_deadline(deadline: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(deadline, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            ErrorCode::InvalidRequest,
            format!("request took longer than {} ms", deadline.as_millis()),
        )
        .with_status(axum::http::StatusCode::REQUEST_TIMEOUT)
        .into_response(),
    }
}
