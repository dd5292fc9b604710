//! Event streams over HTTP: appends with expected versions in the body and as preconditions,
//! the 409 with both versions, multi-stream appends, reads (forward, backward, as-of), soft
//! delete, metadata, snapshots, and SSE subscriptions. In-process server on a real socket.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;

use serde_json::{json, Value};

struct Api {
    base: String,
    agent: ureq::Agent,
}

type Reply = (u16, Value, Option<String>);

impl Api {
    fn new(address: SocketAddr) -> Self {
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
        Self { base: format!("http://{address}"), agent }
    }

    fn read(response: ureq::http::Response<ureq::Body>) -> Reply {
        let status = response.status().as_u16();
        let etag = response.headers().get("etag").map(|value| value.to_str().unwrap().to_owned());
        let text = response.into_body().read_to_string().unwrap();
        let value =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() };
        (status, value, etag)
    }

    fn get(&self, path: &str) -> Reply {
        Self::read(self.agent.get(format!("{}{path}", self.base)).call().unwrap())
    }

    /// The answer's body as the server wrote it.
    fn get_text(&self, path: &str) -> String {
        let response = self.agent.get(format!("{}{path}", self.base)).call().unwrap();
        response.into_body().read_to_string().unwrap()
    }

    fn post(&self, path: &str, headers: &[(&str, &str)], body: Value) -> Reply {
        let mut request = self.agent.post(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Self::read(request.send_json(body).unwrap())
    }

    fn put(&self, path: &str, body: Value) -> Reply {
        Self::read(self.agent.put(format!("{}{path}", self.base)).send_json(body).unwrap())
    }

    fn delete(&self, path: &str) -> Reply {
        Self::read(self.agent.delete(format!("{}{path}", self.base)).call().unwrap())
    }
}

fn deposit(amount: u64) -> Value {
    json!({"type": "Deposited", "data": {"amount": amount}})
}

fn versions(body: &Value) -> Vec<u64> {
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["version"].as_u64().unwrap())
        .collect()
}

#[test]
fn append_read_conflict_and_preconditions() {
    let server = common::start("account", 2);
    let api = Api::new(server.address);
    let path = "/v1/streams/account/acct-1";

    let (status, body, etag) = api.post(
        path,
        &[],
        json!({"expected_version": "no_stream", "events": [{"type": "Opened", "data": {"owner": "ada"}}, deposit(10)]}),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["version"], 1);
    assert_eq!(body["offsets"].as_array().unwrap().len(), 2);
    assert_eq!(etag.as_deref(), Some("\"1\""));

    // A stale version: 409 with both versions, in the message and as fields.
    let (status, body, _) =
        api.post(path, &[], json!({"expected_version": 0, "events": [deposit(1)]}));
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error_code"], 1021);
    assert_eq!(body["message"], "expected version 0, stream acct-1 is at version 1");
    assert_eq!(body["details"]["actual_version"], 1);
    assert_eq!(body["details"]["expected_version"], "0");

    // Preconditions: If-Match with the ETag of a read, If-None-Match: * for a new stream.
    let (status, read, etag) = api.get(path);
    assert_eq!(status, 200, "{read}");
    let etag = etag.unwrap();
    let (status, body, _) = api.post(path, &[("If-Match", &etag)], json!({"events": [deposit(5)]}));
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["version"], 2);
    let (status, _, _) = api.post(path, &[("If-Match", &etag)], json!({"events": [deposit(5)]}));
    assert_eq!(status, 409);
    let (status, body, _) =
        api.post(path, &[("If-None-Match", "*")], json!({"events": [deposit(5)]}));
    assert_eq!((status, body["error_code"].as_u64()), (409, Some(1021)), "{body}");
    let (status, body, _) = api.post(
        path,
        &[("If-Match", "\"2\"")],
        json!({"expected_version": 1, "events": [deposit(5)]}),
    );
    assert_eq!(status, 400, "{body}");

    let (status, read, _) = api.get(path);
    assert_eq!(status, 200);
    assert_eq!(versions(&read), vec![0, 1, 2]);
    let first = &read["events"][0];
    assert_eq!(first["type"], "Opened");
    assert_eq!(first["data"]["owner"], "ada");
    assert_eq!(first["headers"]["ce_subject"], "acct-1");
    assert!(first["time"].as_str().unwrap().ends_with('Z'));

    let (_, back, _) = api.get(&format!("{path}?direction=backward&count=2"));
    assert_eq!(versions(&back), vec![2, 1]);
    assert_eq!(back["next"], 0);
    let (_, page, _) = api.get(&format!("{path}?from=1&count=1"));
    assert_eq!((versions(&page), page["next"].as_u64()), (vec![1], Some(2)));
    let (_, early, _) = api.get(&format!("{path}?as_of=2000-01-01T00:00:00Z"));
    assert_eq!((early["version"].as_i64(), versions(&early)), (Some(-1), vec![]));

    // Refusals name the rule.
    for (query, mentions) in [
        ("?direction=sideways", "forward or backward"),
        ("?count=0", "1..=4096"),
        ("?as_of=yesterday", "RFC 3339"),
    ] {
        let (status, body, _) = api.get(&format!("{path}{query}"));
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body["message"].as_str().unwrap().contains(mentions), "{body}");
    }
    let (status, body, _) = api.get("/v1/streams/account/nobody");
    assert_eq!((status, body["error_code"].as_u64()), (404, Some(1022)), "{body}");
    let (status, body, _) = api.post(path, &[], json!({"events": [{"type": "X"}]}));
    assert_eq!(status, 400, "{body}");
    let (status, body, _) = api.post(
        path,
        &[],
        json!({"events": [{"type": "X", "data": 1, "headers": {"ce_type": "forged"}}]}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("reserved"), "{body}");
}

#[test]
fn multi_stream_append_delete_metadata_and_snapshots() {
    let server = common::start("bank", 1);
    let api = Api::new(server.address);
    for stream in ["a", "b"] {
        let (status, body, _) = api.post(
            &format!("/v1/streams/bank/{stream}"),
            &[],
            json!({"expected_version": "no_stream", "events": [{"type": "Opened", "data": {}}]}),
        );
        assert_eq!(status, 201, "{body}");
    }
    let transfer = |credit_expected: u64| {
        json!({
            "expected_version": 0,
            "events": [{"type": "Debited", "data": {"amount": 3}}],
            "other_streams": [{"stream": "b", "expected_version": credit_expected, "events": [{"type": "Credited", "data": {"amount": 3}}]}]
        })
    };
    let (status, body, _) = api.post("/v1/streams/bank/a", &[], transfer(5));
    assert_eq!(status, 409, "{body}");
    let (_, a, _) = api.get("/v1/streams/bank/a");
    assert_eq!(a["version"], 0, "nothing was appended to a either");
    let (status, body, _) = api.post("/v1/streams/bank/a", &[], transfer(0));
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["other_streams"][0]["stream"], "b");
    assert_eq!(body["other_streams"][0]["version"], 1);

    // Snapshots.
    let (status, body, _) = api.get("/v1/streams/bank/a/snapshot");
    assert_eq!((status, body["error_code"].as_u64()), (404, Some(1023)), "{body}");
    let (status, _, _) =
        api.put("/v1/streams/bank/a/snapshot", json!({"version": 1, "data": {"balance": -3}}));
    assert_eq!(status, 204);
    let (status, snapshot, _) = api.get("/v1/streams/bank/a/snapshot");
    assert_eq!(status, 200);
    assert_eq!(
        (snapshot["version"].as_u64(), &snapshot["data"]),
        (Some(1), &json!({"balance": -3}))
    );
    let (status, body, _) =
        api.put("/v1/streams/bank/a/snapshot", json!({"version": 9, "data": {}}));
    assert_eq!(status, 400, "{body}");

    // Metadata.
    let (status, body, _) = api.put("/v1/streams/bank/a/metadata", json!({"truncate_before": 1}));
    assert_eq!(status, 200, "{body}");
    let (_, metadata, _) = api.get("/v1/streams/bank/a/metadata");
    assert_eq!(metadata["truncate_before"], 1);
    let (_, a, _) = api.get("/v1/streams/bank/a");
    assert_eq!((versions(&a), a["first_visible"].as_u64()), (vec![1], Some(1)));

    // Soft delete, with a precondition, then reuse with no_stream.
    let response = api
        .agent
        .delete(format!("{}/v1/streams/bank/b", api.base))
        .header("If-Match", "\"0\"")
        .call()
        .unwrap();
    assert_eq!(Api::read(response).0, 409);
    let (status, body, _) = api.delete("/v1/streams/bank/b?expected_version=1");
    assert_eq!((status, body["deleted_at"].as_u64()), (200, Some(1)), "{body}");
    let (status, body, _) = api.get("/v1/streams/bank/b");
    assert_eq!(status, 404);
    assert!(body["message"].as_str().unwrap().contains("deleted at version 1"), "{body}");
    let (status, body, _) = api.post(
        "/v1/streams/bank/b",
        &[("If-None-Match", "*")],
        json!({"events": [{"type": "Reopened", "data": {}}]}),
    );
    assert_eq!((status, body["version"].as_u64()), (201, Some(2)), "{body}");
}

/// Reads SSE events until `count` `data:` lines arrived; returns (id, data) pairs.
fn sse_events(url: &str, last_event_id: Option<&str>, count: usize) -> Vec<(String, Value)> {
    let agent = ureq::Agent::config_builder().build().new_agent();
    let mut request = agent.get(url);
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id);
    }
    let response = request.call().unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut lines = BufReader::new(response.into_body().into_reader()).lines();
    let (mut events, mut id) = (Vec::new(), String::new());
    while events.len() < count {
        let line = lines.next().unwrap().unwrap();
        if let Some(value) = line.strip_prefix("id: ").or_else(|| line.strip_prefix("id:")) {
            id = value.to_owned();
        } else if let Some(data) =
            line.strip_prefix("data: ").or_else(|| line.strip_prefix("data:"))
        {
            events.push((id.clone(), serde_json::from_str(data).unwrap()));
        }
    }
    events
}

#[test]
fn subscriptions_stream_history_then_live_and_resume_by_event_id() {
    let server = common::start("feed", 3);
    let api = Api::new(server.address);
    for version in 0..3 {
        for stream in ["x", "y"] {
            let body = json!({"expected_version": if version == 0 { json!("no_stream") } else { json!(version - 1) }, "events": [{"type": "Tick", "data": {"n": version}}]});
            let (status, reply, _) = api.post(&format!("/v1/streams/feed/{stream}"), &[], body);
            assert_eq!(status, 201, "{reply}");
        }
    }
    let base = api.base.clone();
    let live = std::thread::spawn(move || {
        sse_events(&format!("{base}/v1/streams/feed/x/events?from=1"), None, 3)
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (status, _, _) = api.post(
        "/v1/streams/feed/x",
        &[],
        json!({"expected_version": 2, "events": [{"type": "Tock", "data": {}}]}),
    );
    assert_eq!(status, 201);
    let got = live.join().unwrap();
    let got_versions: Vec<u64> =
        got.iter().map(|(_, event)| event["version"].as_u64().unwrap()).collect();
    assert_eq!(got_versions, vec![1, 2, 3]);
    assert_eq!(got[2].1["type"], "Tock");
    assert_eq!(got[2].0, "3");
    // A reconnect with Last-Event-ID resumes after it.
    let again = sse_events(&format!("{}/v1/streams/feed/x/events", api.base), Some("1"), 2);
    assert_eq!(again.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), vec!["2", "3"]);

    // The whole topic: 7 events; resuming from the id of the 4th gives the last 3.
    let all = sse_events(&format!("{}/v1/streams/feed", api.base), None, 7);
    let mut per_stream = std::collections::BTreeMap::<String, Vec<u64>>::new();
    for (_, event) in &all {
        per_stream
            .entry(event["stream"].as_str().unwrap().to_owned())
            .or_default()
            .push(event["version"].as_u64().unwrap());
    }
    assert_eq!(per_stream["x"], vec![0, 1, 2, 3]);
    assert_eq!(per_stream["y"], vec![0, 1, 2]);
    let resumed = sse_events(&format!("{}/v1/streams/feed?from={}", api.base, all[3].0), None, 3);
    let tail: Vec<&Value> = all[4..].iter().map(|(_, event)| event).collect();
    assert_eq!(resumed.iter().map(|(_, event)| event).collect::<Vec<_>>(), tail);
    let (status, body, _) = api.get("/v1/streams/feed/x/events?from=soon");
    assert_eq!(status, 400, "{body}");
}

#[test]
fn json_data_is_kept_as_sent_and_answered_on_one_line() {
    let server = common::start("raw", 1);
    let api = Api::new(server.address);
    let send = |stream: &str, body: &str| {
        let response = api
            .agent
            .post(format!("{}/v1/streams/raw/{stream}", api.base))
            .content_type("application/json")
            .send(body)
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
    };
    // Spacing inside the value is kept; digits past f64's precision are not rounded.
    let spaced = r#"{"n": 1,  "big": 12345678901234567890123, "s": "a\nb"}"#;
    send(
        "spaced",
        &format!(
            r#"{{"expected_version": "no_stream", "events": [{{"type": "T", "data": {spaced}}}]}}"#
        ),
    );
    let text = api.get_text("/v1/streams/raw/spaced");
    assert!(text.contains(&format!(r#""data":{spaced}"#)), "{text}");

    // Line breaks between tokens would split an SSE data field: they come back as spaces.
    send("lines", "{\"expected_version\": \"no_stream\", \"events\": [{\"type\": \"T\", \"data\": {\n  \"n\": 2\n}}]}");
    let (status, body, _) = api.get("/v1/streams/raw/lines");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"][0]["data"], json!({"n": 2}));
    // Nothing is parsed to answer it: numbers past f64 and deep nesting come back as sent.
    let deep = format!("{}1e400{}", "[".repeat(200), "]".repeat(200));
    send("deep", &format!("{{\"expected_version\": \"no_stream\", \"events\": [{{\"type\": \"T\", \"data\": {{\"x\":\r\n{deep}}}}}]}}"));
    let text = api.get_text("/v1/streams/raw/deep");
    assert!(text.contains(&format!(r#""data":{{"x":  {deep}}}"#)), "{text}");
    let events = sse_events(&format!("{}/v1/streams/raw/lines/events", api.base), None, 1);
    assert_eq!(events[0].1["data"], json!({"n": 2}));
    let text = api.get_text("/v1/streams/raw/lines");
    assert!(text.contains(r#""data":{   "n": 2 }"#), "{text}");
}

#[test]
fn several_independent_appends_in_one_request() {
    let server = common::start("account", 2);
    let api = Api::new(server.address);
    let (status, body, _) = api.post(
        "/v1/streams/account",
        &[],
        json!({"appends": [
            {"stream": "acct-1", "expected_version": "no_stream", "events": [deposit(1), deposit(2)]},
            {"stream": "acct-2", "expected_version": 3, "events": [deposit(3)]},
            {"stream": "acct-1", "expected_version": 1, "events": [deposit(4)]},
            {"stream": "acct-3", "expected_version": "sometimes", "events": [deposit(5)]},
            {"stream": "acct-3", "events": [deposit(6)]},
        ]}),
    );
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 5, "{body}");
    assert_eq!(results[0]["ok"], true);
    assert_eq!(results[0]["appended"]["version"], 1);
    assert_eq!(results[0]["appended"]["offsets"].as_array().unwrap().len(), 2);
    assert_eq!(results[1]["ok"], false);
    assert_eq!(results[1]["error"]["error_code"], 1021);
    assert_eq!(results[1]["error"]["status"], 409);
    assert_eq!(results[1]["error"]["message"], "expected version 3, stream acct-2 does not exist");
    assert_eq!(results[1]["error"]["details"]["actual_version"], -1);
    assert_eq!(results[2]["appended"]["version"], 2, "after the first append to acct-1");
    assert_eq!(results[3]["error"]["error_code"], 1008, "{body}");
    assert_eq!(results[3]["error"]["status"], 400, "{body}");
    assert!(results[3]["error"]["message"].as_str().unwrap().contains("sometimes"), "{body}");
    assert_eq!(results[4]["appended"]["stream"], "acct-3");
    assert_eq!(results[4]["appended"]["version"], 0);

    let (status, read, _) = api.get("/v1/streams/account/acct-1");
    assert_eq!(status, 200, "{read}");
    assert_eq!(versions(&read), vec![0, 1, 2]);
    let (status, _, _) = api.get("/v1/streams/account/acct-2");
    assert_eq!(status, 404, "the refused append wrote nothing");

    // Refusals of the whole request.
    let (status, body, _) = api.post("/v1/streams/account", &[], json!({"appends": []}));
    assert_eq!((status, body["error_code"].as_u64()), (400, Some(1008)), "{body}");
    let (status, body, _) = api.post("/v1/streams/account", &[], json!({"appends": [], "x": 1}));
    assert_eq!(status, 400, "{body}");
    let one = json!({"stream": "s", "events": [deposit(1)]});
    let (status, body, _) = api.post("/v1/streams/nope", &[], json!({"appends": [one]}));
    assert_eq!((status, body["error_code"].as_u64()), (404, Some(1001)), "{body}");
}
