//! Sluice's HTTP front door: REST/JSON over the engine. It translates requests into engine
//! calls and engine results and errors into JSON; it holds no business rules.
//!
//! Paths (the contract: extend, never rename; see `docs/http-api.md`):
//! - `GET /health`, `GET /metrics` (Prometheus text), `GET /openapi.json` (this list, typed)
//! - `GET/POST /v1/topics`, `GET/DELETE /v1/topics/{topic}`
//! - `POST /v1/topics/{topic}/records`, `GET /v1/topics/{topic}/events` (SSE)
//! - `GET /v1/topics/{topic}/partitions/{partition}/records?offset=&max_records=&max_bytes=&wait_ms=`
//! - `GET /v1/groups`, `GET /v1/groups/{group}`, `POST /v1/groups/{group}/reset`
//! - `POST /v1/groups/{group}/members` (join), `DELETE /v1/groups/{group}/members/{member}`,
//!   `GET .../members/{member}/records`, `POST .../members/{member}/heartbeat|commit`
//! - `GET/POST /v1/queues`, `GET/DELETE /v1/queues/{group}`,
//!   `GET /v1/queues/{group}/messages?max=&wait_ms=&member=` (lease),
//!   `POST /v1/queues/{group}/ack|nack|reject|extend|release`
//! - `GET /v1/topics/{topic}/dlq?from=&max=&include_replayed=`,
//!   `POST /v1/topics/{topic}/dlq/replay|purge`
//! - `POST/GET/DELETE /v1/streams/{topic}/{stream}` (append, read, soft delete),
//!   `GET/PUT .../snapshot`, `GET/PUT .../metadata`, `GET .../events` (SSE), and
//!   `GET /v1/streams/{topic}` (SSE of every stream of the topic)
//!
//! Limits: request bodies up to [`REQUEST_BYTES_MAX`]; fetches up to [`FETCH_RECORDS_MAX`]
//! records and the engine's byte and wait limits.

#![warn(missing_docs)]

mod cloudevents;
mod dead_letters;
mod error;
mod events;
mod groups;
mod metrics;
mod offsets;
mod openapi;
mod queues;
mod records;
mod server;
mod streams;
mod topics;

use std::future::Future;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use axum::Router;
use sluice_engine::{Engine, ErrorCode};
use tokio::net::TcpListener;

pub use error::ApiError;
pub use records::FETCH_RECORDS_MAX;
pub use server::{Timeouts, CONNECTIONS_MAX, HEADER_READ_TIMEOUT, REQUEST_TIMEOUT};

/// Largest request body accepted (16 MiB); larger ones get 413.
pub const REQUEST_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The routes, over `engine`.
pub fn router(engine: Engine) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics::metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/v1/topics", get(topics::list).post(topics::create))
        .route("/v1/topics/{topic}", get(topics::describe).delete(topics::delete))
        .route("/v1/topics/{topic}/records", post(records::produce))
        .route("/v1/topics/{topic}/partitions/{partition}/records", get(records::fetch))
        .route("/v1/topics/{topic}/events", get(events::events))
        .route("/v1/topics/{topic}/partitions/{partition}/offset", get(offsets::offset_for_time))
        .route("/v1/groups", get(groups::list))
        .route("/v1/groups/{group}", get(groups::describe))
        .route("/v1/groups/{group}/reset", post(groups::reset))
        .route("/v1/groups/{group}/members", post(groups::join))
        .route("/v1/groups/{group}/members/{member}", delete(groups::leave))
        .route("/v1/groups/{group}/members/{member}/records", get(groups::fetch))
        .route("/v1/groups/{group}/members/{member}/heartbeat", post(groups::heartbeat))
        .route("/v1/groups/{group}/members/{member}/commit", post(groups::commit))
        .route("/v1/queues", get(queues::list).post(queues::create))
        .route("/v1/queues/{group}", get(queues::describe).delete(queues::delete))
        .route("/v1/queues/{group}/messages", get(queues::lease))
        .route("/v1/queues/{group}/ack", post(queues::ack))
        .route("/v1/queues/{group}/ack-next", post(queues::ack_next))
        .route("/v1/queues/{group}/nack", post(queues::nack))
        .route("/v1/queues/{group}/reject", post(queues::reject))
        .route("/v1/queues/{group}/extend", post(queues::extend))
        .route("/v1/queues/{group}/release", post(queues::release))
        .route("/v1/topics/{topic}/dlq", get(dead_letters::list))
        .route("/v1/topics/{topic}/dlq/replay", post(dead_letters::replay))
        .route("/v1/topics/{topic}/dlq/purge", post(dead_letters::purge))
        .route("/v1/streams/{topic}", get(streams::subscribe_topic).post(streams::append_each))
        .route(
            "/v1/streams/{topic}/{stream}",
            get(streams::read).post(streams::append).delete(streams::delete),
        )
        .route("/v1/streams/{topic}/{stream}/events", get(streams::subscribe_stream))
        .route(
            "/v1/streams/{topic}/{stream}/snapshot",
            get(streams::load_snapshot).put(streams::save_snapshot),
        )
        .route(
            "/v1/streams/{topic}/{stream}/metadata",
            get(streams::metadata).put(streams::set_metadata),
        )
        .fallback(|| async {
            ApiError::new(ErrorCode::InvalidRequest, "no such path; see /v1/topics")
                .with_status(axum::http::StatusCode::NOT_FOUND)
        })
        .layer(DefaultBodyLimit::max(REQUEST_BYTES_MAX))
        .with_state(engine)
}

/// Answers while the server accepts requests.
#[utoipa::path(get, path = "/health", operation_id = "health", tag = "operations",
    responses((status = 200, description = "`ok`", content_type = "text/plain", body = String)))]
async fn health() -> &'static str {
    "ok"
}

/// Serves `engine` on `listener` until `shutdown` completes, then finishes in-flight requests.
///
/// # Errors
/// The listener failing.
pub async fn serve(
    listener: TcpListener,
    engine: Engine,
    timeouts: Timeouts,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    server::serve_router(listener, router(engine), timeouts, shutdown).await
}

/// The body, or the error for a body that could not be read (too large: 413).
fn body(request: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    request.map_err(|rejection| {
        let status = rejection.status();
        let message = if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            format!("request body is larger than the limit of {REQUEST_BYTES_MAX} bytes")
        } else {
            format!("could not read the request body: {}", rejection.body_text())
        };
        ApiError::new(ErrorCode::InvalidRequest, message).with_status(status)
    })
}

impl ApiError {
    /// The same error with an explicit HTTP status.
    pub fn with_status(mut self, status: axum::http::StatusCode) -> Self {
        self.status = Some(status);
        self
    }
}
