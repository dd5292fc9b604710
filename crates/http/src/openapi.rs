//! `GET /openapi.json`: the OpenAPI 3.1 document of this door, generated from the handlers'
//! `#[utoipa::path]` attributes and the `ToSchema`/`IntoParams` derives on the types they read
//! and write, so field names, types and doc comments cannot drift from the code. Built once, on
//! first request.
//!
//! What the compiler does not check: that each attribute's path and method match the route in
//! `router()`, and that its statuses are the ones the handler returns. `tests/openapi.rs` checks
//! the first against the router; the error codes per status follow `docs/http-api.md`.
//! Deliberately serves no browsing UI (nothing downloaded or bundled).

use std::sync::OnceLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use utoipa::OpenApi;

use crate::error::ErrorBody;
use crate::{dead_letters, events, groups, metrics, offsets, queues, records, streams, topics};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sluice",
        version = env!("CARGO_PKG_VERSION"),
        description = "A durable, partitioned log with consumer groups, over REST/JSON.",
    ),
    paths(
        crate::health,
        metrics::metrics,
        openapi_json,
        topics::list,
        topics::create,
        topics::describe,
        topics::delete,
        records::produce,
        records::fetch,
        offsets::offset_for_time,
        events::events,
        groups::list,
        groups::describe,
        groups::reset,
        groups::join,
        groups::leave,
        groups::fetch,
        groups::heartbeat,
        groups::commit,
        queues::create,
        queues::list,
        queues::describe,
        queues::delete,
        queues::lease,
        queues::ack,
        queues::ack_next,
        queues::nack,
        queues::reject,
        queues::extend,
        queues::release,
        dead_letters::list,
        dead_letters::replay,
        dead_letters::purge,
        streams::append,
        streams::append_each,
        streams::read,
        streams::delete,
        streams::load_snapshot,
        streams::save_snapshot,
        streams::metadata,
        streams::set_metadata,
        streams::subscribe_stream,
        streams::subscribe_topic,
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "operations", description = "Health, metrics and this document"),
        (name = "topics", description = "Create, list, describe and delete topics"),
        (name = "records", description = "Produce, fetch and stream records"),
        (name = "groups", description = "Consumer groups (stream mode)"),
        (name = "queues", description = "Queue groups (work queues): leases, acks, retries"),
        (name = "dead-letters", description = "Dead letters of queue groups: list, replay, purge"),
        (name = "streams", description = "Event streams: expected-version appends, reads, snapshots, subscriptions"),
    ),
)]
struct ApiDocument;

/// The document as JSON text.
pub(crate) fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        ApiDocument::openapi().to_json().expect("an OpenAPI document serialises to JSON")
    })
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", operation_id = "openapi", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
pub(crate) async fn openapi_json() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], document())
}
