//! `GET /openapi.json` describes exactly the routes the router serves, every operation that can
//! fail documents its errors with the one shared `ErrorBody` schema, and the schemas match what
//! the server really sends. The server runs in-process on a real socket on 127.0.0.1.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use serde_json::{json, Value};

/// Every (path, method) the router serves, as `router()` in `src/lib.rs` lists them.
const ROUTES: [(&str, &str); 43] = [
    ("/health", "get"),
    ("/metrics", "get"),
    ("/openapi.json", "get"),
    ("/v1/topics", "get"),
    ("/v1/topics", "post"),
    ("/v1/topics/{topic}", "get"),
    ("/v1/topics/{topic}", "delete"),
    ("/v1/topics/{topic}/records", "post"),
    ("/v1/topics/{topic}/partitions/{partition}/records", "get"),
    ("/v1/topics/{topic}/partitions/{partition}/offset", "get"),
    ("/v1/topics/{topic}/events", "get"),
    ("/v1/groups", "get"),
    ("/v1/groups/{group}", "get"),
    ("/v1/groups/{group}/reset", "post"),
    ("/v1/groups/{group}/members", "post"),
    ("/v1/groups/{group}/members/{member}", "delete"),
    ("/v1/groups/{group}/members/{member}/records", "get"),
    ("/v1/groups/{group}/members/{member}/heartbeat", "post"),
    ("/v1/groups/{group}/members/{member}/commit", "post"),
    ("/v1/queues", "get"),
    ("/v1/queues", "post"),
    ("/v1/queues/{group}", "get"),
    ("/v1/queues/{group}", "delete"),
    ("/v1/queues/{group}/messages", "get"),
    ("/v1/queues/{group}/ack", "post"),
    ("/v1/queues/{group}/ack-next", "post"),
    ("/v1/queues/{group}/nack", "post"),
    ("/v1/queues/{group}/reject", "post"),
    ("/v1/queues/{group}/extend", "post"),
    ("/v1/queues/{group}/release", "post"),
    ("/v1/topics/{topic}/dlq", "get"),
    ("/v1/topics/{topic}/dlq/replay", "post"),
    ("/v1/topics/{topic}/dlq/purge", "post"),
    ("/v1/streams/{topic}", "get"),
    ("/v1/streams/{topic}", "post"),
    ("/v1/streams/{topic}/{stream}", "post"),
    ("/v1/streams/{topic}/{stream}", "get"),
    ("/v1/streams/{topic}/{stream}", "delete"),
    ("/v1/streams/{topic}/{stream}/events", "get"),
    ("/v1/streams/{topic}/{stream}/snapshot", "get"),
    ("/v1/streams/{topic}/{stream}/snapshot", "put"),
    ("/v1/streams/{topic}/{stream}/metadata", "get"),
    ("/v1/streams/{topic}/{stream}/metadata", "put"),
];

/// Operations that cannot fail with an error body (no input, no engine call that errs).
const INFALLIBLE: [&str; 6] =
    ["health", "metrics", "openapi", "list_topics", "list_groups", "list_queues"];

const ERROR_BODY: &str = "#/components/schemas/ErrorBody";

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().new_agent()
}

fn get_json(address: SocketAddr, path: &str) -> (u16, Value) {
    let response = agent().get(format!("http://{address}{path}")).call().unwrap();
    let status = response.status().as_u16();
    (status, serde_json::from_str(&response.into_body().read_to_string().unwrap()).unwrap())
}

fn document(address: SocketAddr) -> Value {
    let response = agent().get(format!("http://{address}/openapi.json")).call().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    serde_json::from_str(&response.into_body().read_to_string().unwrap()).unwrap()
}

/// The paths of the `.route("...")` calls in `router()`: a route added there without a line in
/// `ROUTES` (and so without a check that it is documented) fails this test.
fn router_paths() -> BTreeSet<String> {
    let source = include_str!("../src/lib.rs");
    // rustfmt may break a long `.route(` call after the parenthesis.
    source
        .split(".route(")
        .skip(1)
        .map(|rest| rest.trim_start().trim_start_matches('"').split('"').next().unwrap().to_owned())
        .collect()
}

#[test]
fn the_document_lists_exactly_the_routes_the_router_serves() {
    let server = common::start("t", 1);
    let document = document(server.address);
    assert!(document["openapi"].as_str().unwrap().starts_with("3."), "{}", document["openapi"]);
    assert_eq!(document["info"]["title"], "Sluice");
    assert_eq!(document["info"]["version"], env!("CARGO_PKG_VERSION"));

    let expected: BTreeSet<(String, String)> =
        ROUTES.iter().map(|(path, method)| (path.to_string(), method.to_string())).collect();
    let documented: BTreeSet<(String, String)> = document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, operations)| {
            operations.as_object().unwrap().keys().map(|method| (path.clone(), method.clone()))
        })
        .collect();
    assert_eq!(documented, expected);
    assert!(document["paths"]["/v1/topics/{topic}/records"]["post"].is_object());

    let listed_paths: BTreeSet<String> = ROUTES.iter().map(|(path, _)| path.to_string()).collect();
    assert_eq!(router_paths(), listed_paths, "router() and ROUTES disagree");
}

#[test]
fn every_documented_route_is_served() {
    let server = common::start("t", 1);
    let agent = agent();
    // Reorder so the topic is deleted last: the other requests then reach their handlers.
    let mut routes = ROUTES.to_vec();
    routes.sort_by_key(|(_, method)| *method == "delete");
    for (template, method) in routes {
        let path = template
            .replace("{topic}", "t")
            .replace("{partition}", "0")
            .replace("{group}", "g")
            .replace("{member}", "m")
            .replace("{stream}", "s");
        let url = format!("http://{}{path}", server.address);
        let response = match method {
            "get" => agent.get(&url).call(),
            "post" => agent.post(&url).send_json(json!({})),
            "put" => agent.put(&url).send_json(json!({})),
            "delete" => agent.delete(&url).call(),
            other => panic!("unexpected method {other}"),
        }
        .unwrap();
        let status = response.status().as_u16();
        assert_ne!(status, 405, "{method} {template}: method not routed");
        if status == 404 {
            let body: Value =
                serde_json::from_str(&response.into_body().read_to_string().unwrap()).unwrap();
            let message = body["message"].as_str().unwrap();
            assert!(!message.contains("no such path"), "{method} {template}: {message}");
        }
    }
}

#[test]
fn every_operation_that_can_fail_documents_its_errors_as_error_body() {
    let server = common::start("t", 1);
    let document = document(server.address);
    let mut operation_ids = BTreeSet::new();
    for (path, method) in ROUTES {
        let operation = &document["paths"][path][method];
        let id = operation["operationId"].as_str().unwrap();
        assert!(operation_ids.insert(id.to_owned()), "operationId {id} is used twice");
        let responses = operation["responses"].as_object().unwrap();
        assert!(responses.keys().any(|status| status.starts_with('2')), "{method} {path}");
        let mut client_errors = 0;
        for (status, response) in responses {
            if status.starts_with('4') || status.starts_with('5') {
                let schema = &response["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(schema, ERROR_BODY, "{method} {path} {status}");
                client_errors += usize::from(status.starts_with('4'));
            }
        }
        if INFALLIBLE.contains(&id) {
            assert_eq!(client_errors, 0, "{method} {path} documents errors it cannot return");
        } else {
            assert!(client_errors > 0, "{method} {path} documents no 4xx");
        }
    }
}

#[test]
fn schemas_match_what_the_server_sends() {
    let server = common::start("t", 2);
    let document = document(server.address);
    let schemas = &document["components"]["schemas"];
    let properties = |name: &str| -> BTreeSet<String> {
        schemas[name]["properties"].as_object().unwrap().keys().cloned().collect()
    };

    let (status, error) = get_json(server.address, "/v1/topics/nope");
    assert_eq!(status, 404);
    let error_keys: BTreeSet<String> = error.as_object().unwrap().keys().cloned().collect();
    // `details` is sent only by errors that have facts to give (a stream conflict).
    let mut documented = properties("ErrorBody");
    assert!(documented.remove("details"));
    assert_eq!(documented, error_keys);
    assert_eq!(schemas["ErrorBody"]["required"], json!(["error_code", "message"]));

    let (status, topic) = get_json(server.address, "/v1/topics/t");
    assert_eq!(status, 200);
    let topic_keys: BTreeSet<String> = topic.as_object().unwrap().keys().cloned().collect();
    // `segment_bytes` is sent only when the topic sets it.
    let mut documented = properties("TopicBody");
    assert!(documented.remove("segment_bytes"));
    assert_eq!(documented, topic_keys);
    let describe = &document["paths"]["/v1/topics/{topic}"]["get"]["responses"]["200"];
    assert_eq!(
        describe["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/TopicBody"
    );
}

#[test]
fn produce_documents_cloudevents_and_fetch_its_query() {
    let server = common::start("t", 1);
    let document = document(server.address);
    let produce = &document["paths"]["/v1/topics/{topic}/records"]["post"];
    let content = produce["requestBody"]["content"].as_object().unwrap();
    for content_type in
        ["application/json", "application/cloudevents+json", "application/cloudevents-batch+json"]
    {
        assert!(content.contains_key(content_type), "{content_type}");
    }
    let fetch = &document["paths"]["/v1/topics/{topic}/partitions/{partition}/records"]["get"];
    let query: BTreeSet<&str> = fetch["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|parameter| parameter["in"] == "query")
        .map(|parameter| parameter["name"].as_str().unwrap())
        .collect();
    assert_eq!(query, BTreeSet::from(["offset", "max_records", "max_bytes", "wait_ms"]));
    let events = &document["paths"]["/v1/topics/{topic}/events"]["get"]["responses"]["200"];
    assert!(events["content"]["text/event-stream"].is_object());
    let metrics = &document["paths"]["/metrics"]["get"]["responses"]["200"]["content"];
    assert!(metrics.as_object().unwrap().keys().all(|key| key.starts_with("text/plain")));
}
