//! Queue groups and dead letters over HTTP: create (and its refusals), lease, ack, nack with
//! redelivery, reject into the dead-letter topic, list/replay/purge of dead letters, extend,
//! release of a parked key, per-id errors, and the queue metrics. The server runs in-process on
//! a real socket on 127.0.0.1; ack deadlines and backoffs are short so the tests are fast, and
//! timing is only asserted with generous bounds.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

struct Api {
    base: String,
    agent: ureq::Agent,
}

impl Api {
    fn new(address: SocketAddr) -> Self {
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
        Self { base: format!("http://{address}"), agent }
    }

    fn read(response: ureq::http::Response<ureq::Body>) -> (u16, Value) {
        let status = response.status().as_u16();
        let text = response.into_body().read_to_string().unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    fn get(&self, path: &str) -> (u16, Value) {
        Self::read(self.agent.get(format!("{}{path}", self.base)).call().unwrap())
    }

    fn post(&self, path: &str, body: Value) -> (u16, Value) {
        Self::read(self.agent.post(format!("{}{path}", self.base)).send_json(body).unwrap())
    }

    fn delete(&self, path: &str) -> (u16, Value) {
        Self::read(self.agent.delete(format!("{}{path}", self.base)).call().unwrap())
    }

    /// Creates queue group `group` on topic `t` with `settings` merged in; expects 201.
    fn create(&self, group: &str, settings: Value) -> Value {
        let mut body = json!({"group": group, "topics": ["t"]});
        for (name, value) in settings.as_object().unwrap() {
            body[name] = value.clone();
        }
        let (status, queue) = self.post("/v1/queues", body);
        assert_eq!(status, 201, "{queue}");
        queue
    }

    fn produce(&self, records: Value) {
        let (status, body) = self.post("/v1/topics/t/records", json!({ "records": records }));
        assert_eq!(status, 200, "{body}");
    }

    fn lease(&self, group: &str, query: &str) -> Vec<Value> {
        let (status, body) = self.get(&format!("/v1/queues/{group}/messages?{query}"));
        assert_eq!(status, 200, "{body}");
        body["messages"].as_array().unwrap().clone()
    }

    /// Settles `ids` with `verb` (ack, nack, reject, extend) and returns the per-id results.
    fn settle(&self, group: &str, verb: &str, body: Value) -> Vec<Value> {
        let (status, body) = self.post(&format!("/v1/queues/{group}/{verb}"), body);
        assert_eq!(status, 200, "{body}");
        body["results"].as_array().unwrap().clone()
    }
}

fn now_ms() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

fn assert_error(response: &(u16, Value), status: u16, code: u64, mentions: &str) {
    let (got_status, body) = response;
    assert_eq!(*got_status, status, "{body}");
    assert_eq!(body["error_code"], json!(code), "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains(mentions), "{message:?} does not mention {mentions:?}");
}

#[test]
fn create_describe_list_delete_and_refusals() {
    let server = common::start("t", 2);
    let api = Api::new(server.address);

    let created = api.create("q", json!({"ack_wait_ms": 5000, "ordering": "key"}));
    assert_eq!(created["group"], "q");
    let config = &created["config"];
    assert_eq!(config["topics"], json!(["t"]));
    assert_eq!(config["ack_wait_ms"], 5000);
    assert_eq!(config["ordering"], "key");
    // Defaults fill what the request left out.
    assert_eq!(config["deliveries_max"], 5);
    assert_eq!(config["start"], "earliest");
    assert_eq!(config["dead_letter_topic"], Value::Null);
    let config_keys: Vec<&str> = config.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(config_keys.len(), 12, "{config_keys:?}");
    for counter in ["leased", "waiting", "ready", "open", "in_flight", "parked_keys"] {
        assert_eq!(created["counts"][counter], 0, "{counter}");
    }
    for total in ["delivered", "redelivered", "acked", "dead_lettered"] {
        assert_eq!(created["totals"][total], 0, "{total}");
    }
    let partitions = created["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 2);
    assert_eq!(partitions[1]["topic"], "t");
    assert_eq!(partitions[1]["partition"], 1);
    assert_eq!(partitions[1]["parked_keys"], json!([]));
    for field in ["ack_floor", "read_position", "high_watermark", "open"] {
        assert_eq!(partitions[0][field], 0, "{field}");
    }
    assert_eq!(created["members"], json!({}));
    // The dead-letter topic was created with the group.
    assert_eq!(api.get("/v1/topics/t.dlq").0, 200);

    // The same request again: 200 with the same group. Other settings: 409.
    let again = api.post(
        "/v1/queues",
        json!({"group": "q", "topics": ["t"], "ack_wait_ms": 5000, "ordering": "key"}),
    );
    assert_eq!(again.0, 200, "{}", again.1);
    assert_eq!(again.1["config"], created["config"]);
    let other = api.post("/v1/queues", json!({"group": "q", "topics": ["t"], "ack_wait_ms": 6000}));
    assert_error(&other, 409, 1018, "q");

    // Refusals name what is wrong.
    let bad = api.post("/v1/queues", json!({"group": "b", "topics": ["t"], "ack_wait_ms": 1}));
    assert_error(&bad, 400, 1004, "ack_wait_ms");
    let bad = api.post("/v1/queues", json!({"group": "b", "topics": ["t"], "backoff_jitter": 2.0}));
    assert_error(&bad, 400, 1004, "backoff_jitter");
    let unknown_field =
        api.post("/v1/queues", json!({"group": "b", "topics": ["t"], "ack_wait": 100}));
    assert_error(&unknown_field, 400, 1008, "ack_wait");
    let bad_ordering =
        api.post("/v1/queues", json!({"group": "b", "topics": ["t"], "ordering": "fifo"}));
    assert_error(&bad_ordering, 400, 1008, "fifo");
    let no_topic = api.post("/v1/queues", json!({"group": "b", "topics": ["nope"]}));
    assert_error(&no_topic, 404, 1001, "nope");
    let no_topics = api.post("/v1/queues", json!({"group": "b", "topics": []}));
    assert_error(&no_topics, 400, 1004, "topics");
    let bad_name = api.post("/v1/queues", json!({"group": "a/b", "topics": ["t"]}));
    assert_eq!(bad_name.0, 400, "{}", bad_name.1);
    assert_eq!(bad_name.1["error_code"], 1003);

    let (status, listed) = api.get("/v1/queues");
    assert_eq!(status, 200);
    let queues = listed["queues"].as_array().unwrap();
    assert_eq!(queues.len(), 1, "{listed}");
    assert_eq!(queues[0]["group"], "q");
    let (status, described) = api.get("/v1/queues/q");
    assert_eq!(status, 200);
    assert_eq!(described["config"], created["config"]);

    assert_eq!(api.delete("/v1/queues/q").0, 204);
    assert_error(&api.get("/v1/queues/q"), 404, 1017, "q");
    assert_error(&api.delete("/v1/queues/q"), 404, 1017, "q");
    assert_eq!(api.get("/v1/queues").1, json!({"queues": []}));
    // Its dead-letter topic stays.
    assert_eq!(api.get("/v1/topics/t.dlq").0, 200);
}

#[test]
fn unknown_group_is_404_everywhere() {
    let server = common::start("t", 1);
    let api = Api::new(server.address);
    assert_error(&api.get("/v1/queues/nope"), 404, 1017, "nope");
    assert_error(&api.get("/v1/queues/nope/messages"), 404, 1017, "nope");
    let id = "t/0/0/1";
    for verb in ["ack", "nack", "reject", "extend"] {
        let response = api.post(&format!("/v1/queues/nope/{verb}"), json!({"ids": [id]}));
        assert_error(&response, 404, 1017, "nope");
    }
    let release =
        api.post("/v1/queues/nope/release", json!({"topic": "t", "partition": 0, "key": "k"}));
    assert_error(&release, 404, 1017, "nope");
}

#[test]
fn lease_ack_and_stale_ack() {
    let server = common::start("t", 1);
    let api = Api::new(server.address);
    api.create("q", json!({"ack_wait_ms": 10000}));
    api.produce(json!([
        {"key": "k1", "value": {"n": 1}, "headers": {"h": "v"}, "timestamp": 1234},
        {"key_base64": "/wA=", "value_base64": "3q2+7w=="},
    ]));

    let before = now_ms();
    let messages = api.lease("q", "max=10&member=w1");
    assert_eq!(messages.len(), 2, "{messages:?}");
    let first = &messages[0];
    assert_eq!(first["topic"], "t");
    assert_eq!(first["partition"], 0);
    assert_eq!(first["offset"], 0);
    assert_eq!(first["deliveries"], 1);
    assert_eq!(first["timestamp_ms"], 1234);
    assert_eq!(first["key"], "k1");
    assert_eq!(first["value"], json!({"n": 1}));
    assert_eq!(first["headers"]["h"], "v");
    assert_eq!(first["delivery_id"], "t/0/0/1");
    let deadline = first["deadline_ms"].as_i64().unwrap();
    assert!(deadline >= before + 9_000 && deadline <= now_ms() + 11_000, "{deadline}");
    // Bytes that are not UTF-8 or JSON travel as base64, as in a partition fetch.
    assert_eq!(messages[1]["key_base64"], "/wA=");
    assert_eq!(messages[1]["value_base64"], "3q2+7w==");
    assert!(messages[1].get("key").is_none());

    let (_, described) = api.get("/v1/queues/q");
    assert_eq!(described["counts"]["leased"], 2);
    assert_eq!(described["members"], json!({"w1": 2}));
    // Nothing else to lease.
    assert!(api.lease("q", "wait_ms=0").is_empty());

    let ids: Vec<Value> = messages.iter().map(|m| m["delivery_id"].clone()).collect();
    let results = api.settle("q", "ack", json!({ "ids": ids }));
    assert_eq!(results.len(), 2);
    for (result, id) in results.iter().zip(&ids) {
        assert_eq!(result, &json!({"id": id, "ok": true}));
    }
    let (_, described) = api.get("/v1/queues/q");
    assert_eq!(described["totals"]["acked"], 2);
    assert_eq!(described["totals"]["delivered"], 2);
    assert_eq!(described["counts"]["leased"], 0);
    assert_eq!(described["partitions"][0]["ack_floor"], 2);
    assert!(api.lease("q", "max=5").is_empty());

    // Acking again: refused per id (1019), others in the request unaffected; a malformed id is
    // 1020.
    let results = api.settle("q", "ack", json!({"ids": [ids[0], "not-an-id"]}));
    assert_eq!(results[0]["id"], ids[0]);
    assert_eq!(results[0]["ok"], false);
    assert_eq!(results[0]["error"]["code"], 1019, "{results:?}");
    assert!(results[0]["error"]["message"].as_str().unwrap().len() > 3);
    assert_eq!(results[1]["ok"], false);
    assert_eq!(results[1]["error"]["code"], 1020, "{results:?}");

    // Whole-request refusals use the normal error body.
    assert_error(&api.post("/v1/queues/q/ack", json!({"ids": []})), 400, 1008, "ids");
    assert_error(&api.post("/v1/queues/q/ack", json!({"id": ["x"]})), 400, 1008, "id");
    assert_error(&api.get("/v1/queues/q/messages?max=0"), 400, 1008, "max");
    assert_error(&api.get("/v1/queues/q/messages?wait_ms=40000"), 400, 1008, "wait_ms");
    assert_error(&api.get("/v1/queues/q/messages?maxx=1"), 400, 1008, "maxx");
    let long_member = "m".repeat(300);
    assert_error(
        &api.get(&format!("/v1/queues/q/messages?member={long_member}")),
        400,
        1008,
        "member",
    );
}

#[test]
fn ack_next_acks_then_leases_in_one_round_trip() {
    let server = common::start("t", 1);
    let api = Api::new(server.address);
    api.create("q", json!({"ack_wait_ms": 10000}));
    api.produce(json!([{"value": 0}, {"value": 1}, {"value": 2}, {"value": 3}, {"value": 4}]));
    let ack_next = |body: Value| {
        let (status, answer) = api.post("/v1/queues/q/ack-next", body);
        assert_eq!(status, 200, "{answer}");
        answer
    };
    let offsets = |answer: &Value| -> Vec<u64> {
        answer["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["offset"].as_u64().unwrap())
            .collect()
    };
    let ids = |answer: &Value| -> Vec<Value> {
        answer["messages"].as_array().unwrap().iter().map(|m| m["delivery_id"].clone()).collect()
    };

    // Nothing to ack yet: a plain lease.
    let first = ack_next(json!({"max": 2, "member": "w1"}));
    assert_eq!(first["results"], json!([]));
    assert_eq!(offsets(&first), [0, 1]);
    assert_eq!(first["messages"][0]["value"], 0);

    let second = ack_next(json!({"ids": ids(&first), "max": 2, "member": "w1"}));
    let acked: Vec<Value> =
        ids(&first).into_iter().map(|id| json!({"id": id, "ok": true})).collect();
    assert_eq!(second["results"], json!(acked));
    assert_eq!(offsets(&second), [2, 3]);
    assert_eq!(second["messages"][0]["deliveries"], 1);
    let (_, described) = api.get("/v1/queues/q");
    assert_eq!(described["totals"]["acked"], 2, "{described}");
    assert_eq!(described["counts"]["leased"], 2, "{described}");
    assert_eq!(described["members"], json!({"w1": 2}));

    // An id that cannot be acked is reported and does not stop the others or the lease.
    let stale = ids(&first)[0].clone();
    let mut batch = vec![stale.clone()];
    batch.extend(ids(&second));
    let third = ack_next(json!({"ids": batch, "max": 5, "member": "w2"}));
    let results = third["results"].as_array().unwrap();
    assert_eq!(results[0]["id"], stale);
    assert_eq!(results[0]["error"]["code"], 1019, "{results:?}");
    assert_eq!(results[1]["ok"], true);
    assert_eq!(results[2]["ok"], true);
    assert_eq!(offsets(&third), [4]);

    // Whole-request refusals settle nothing.
    let last = ids(&third);
    let refused = api.post("/v1/queues/q/ack-next", json!({"ids": last, "max": 0}));
    assert_error(&refused, 400, 1008, "max");
    let refused = api.post("/v1/queues/q/ack-next", json!({"ids": last, "wait_ms": 40000}));
    assert_error(&refused, 400, 1008, "wait_ms");
    let refused = api.post("/v1/queues/q/ack-next", json!({"ids": last, "maxx": 1}));
    assert_error(&refused, 400, 1008, "maxx");
    let member = "m".repeat(300);
    let refused = api.post("/v1/queues/q/ack-next", json!({"ids": last, "member": member}));
    assert_error(&refused, 400, 1008, "member");
    assert_error(&api.post("/v1/queues/nope/ack-next", json!({"ids": last})), 404, 1017, "nope");
    let (_, described) = api.get("/v1/queues/q");
    assert_eq!(described["counts"]["leased"], 1, "{described}");

    // Acking the last one with nothing left to lease answers at once with no messages.
    let fourth = ack_next(json!({"ids": last, "max": 10, "member": "w2"}));
    assert_eq!(fourth["results"][0]["ok"], true);
    assert_eq!(offsets(&fourth), Vec::<u64>::new());
    let (_, described) = api.get("/v1/queues/q");
    assert_eq!(described["totals"]["acked"], 5, "{described}");
    assert_eq!(described["counts"]["leased"], 0, "{described}");
    assert_eq!(described["partitions"][0]["ack_floor"], 5);
}

#[test]
fn an_expired_lease_cannot_be_acked_and_is_redelivered() {
    let server = common::start("t", 1);
    let api = Api::new(server.address);
    api.create("q", json!({"ack_wait_ms": 50, "backoff_initial_ms": 0, "backoff_max_ms": 0}));
    api.produce(json!([{"value": 1}]));
    let first = api.lease("q", "");
    assert_eq!(first.len(), 1);
    std::thread::sleep(Duration::from_millis(400));
    let again = api.lease("q", "wait_ms=5000");
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0]["deliveries"], 2);
    let results = api.settle("q", "ack", json!({"ids": [first[0]["delivery_id"]]}));
    assert_eq!(results[0]["error"]["code"], 1019, "{results:?}");
}

#[test]
fn nack_redelivers_and_dead_letters_after_deliveries_max() {
    let server = common::start("t", 1);
    let api = Api::new(server.address);
    api.create(
        "q",
        json!({"ack_wait_ms": 10000, "deliveries_max": 2, "backoff_initial_ms": 10,
               "backoff_max_ms": 20}),
    );
    api.produce(json!([{"key": "k", "value": "v"}]));
    let first = api.lease("q", "");
    assert_eq!(first[0]["deliveries"], 1);
    let results =
        api.settle("q", "nack", json!({"ids": [first[0]["delivery_id"]], "error": "first try"}));
    assert_eq!(results[0], json!({"id": first[0]["delivery_id"], "ok": true}));

    let second = api.lease("q", "wait_ms=5000");
    assert_eq!(second.len(), 1, "{second:?}");
    assert_eq!(second[0]["deliveries"], 2);
    assert_eq!(second[0]["offset"], 0);
    assert_ne!(second[0]["delivery_id"], first[0]["delivery_id"]);
    let (_, described) = api.get("/v1/queues/q");
    assert_eq!(described["totals"]["redelivered"], 1);

    // The second failure is the last allowed: the message goes to the dead-letter topic.
    let results = api.settle(
        "q",
        "nack",
        json!({"ids": [second[0]["delivery_id"]], "delay_ms": 0, "error": "second try"}),
    );
    assert_eq!(results[0]["ok"], true, "{results:?}");
    assert_eq!(results[0]["dead_lettered"], json!({"topic": "t.dlq", "partition": 0, "offset": 0}));
    assert!(api.lease("q", "wait_ms=100").is_empty());
    let (_, listed) = api.get("/v1/topics/t/dlq");
    let letters = listed["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "{listed}");
    assert_eq!(letters[0]["deliveries"], 2);
    assert_eq!(letters[0]["last_error"], "second try");

    // A nack delay out of range refuses the whole request.
    let long =
        api.post("/v1/queues/q/nack", json!({"ids": ["t/0/0/3"], "delay_ms": 100_000_000_000u64}));
    assert_error(&long, 400, 1008, "delay_ms");
}

#[test]
fn reject_list_replay_and_purge_dead_letters() {
    let server = common::start("t", 1);
    let api = Api::new(server.address);
    api.create("q", json!({"ack_wait_ms": 10000}));
    api.produce(json!([{"key": "k", "value": {"order": 7}, "headers": {"trace": "abc"}}]));
    let leased = api.lease("q", "");
    let id = leased[0]["delivery_id"].clone();
    let before = now_ms();
    let results = api.settle("q", "reject", json!({"ids": [id], "error": "bad order"}));
    assert_eq!(
        results[0],
        json!({"id": id, "ok": true, "dead_lettered": {"topic": "t.dlq", "partition": 0, "offset": 0}})
    );
    let (_, described) = api.get("/v1/queues/q");
    assert_eq!(described["totals"]["dead_lettered"], 1);
    assert_eq!(described["partitions"][0]["ack_floor"], 1);

    // Listed by the original topic's name or the dead-letter topic's.
    let (status, listed) = api.get("/v1/topics/t/dlq");
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed, api.get("/v1/topics/t.dlq/dlq").1);
    assert_eq!(listed["dead_letter_topic"], "t.dlq");
    let letters = listed["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "{listed}");
    let letter = &letters[0];
    assert_eq!(letter["partition"], 0);
    assert_eq!(letter["offset"], 0);
    assert!(letter["timestamp_ms"].as_i64().unwrap() > 0);
    assert_eq!(letter["key"], "k");
    assert_eq!(letter["value"], json!({"order": 7}));
    assert_eq!(letter["headers"]["trace"], "abc");
    assert_eq!(letter["headers"]["sluice-dlq-group"], "q");
    assert_eq!(letter["origin"], json!({"topic": "t", "partition": 0, "offset": 0}));
    assert_eq!(letter["group"], "q");
    assert_eq!(letter["deliveries"], 1);
    assert_eq!(letter["last_error"], "bad order");
    let last_failure = letter["last_failure_ms"].as_i64().unwrap();
    assert!(last_failure >= before - 1000 && last_failure <= now_ms() + 1000, "{letter}");
    assert!(letter["first_failure_ms"].as_i64().is_some(), "{letter}");
    assert_eq!(letter["replayed"], Value::Null);

    // Replay all: the message is back in t and delivered again.
    let (status, replayed) = api.post("/v1/topics/t/dlq/replay", json!({}));
    assert_eq!(status, 200, "{replayed}");
    assert_eq!(
        replayed,
        json!({"replayed": [{"dead_letter_partition": 0, "dead_letter_offset": 0,
                             "topic": "t", "partition": 0, "offset": 1}]})
    );
    let again = api.lease("q", "wait_ms=5000");
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0]["offset"], 1);
    assert_eq!(again[0]["key"], "k");
    assert_eq!(again[0]["value"], json!({"order": 7}));
    assert_eq!(again[0]["headers"]["replayed-from"], "t.dlq/0/0");
    assert_eq!(again[0]["headers"]["trace"], "abc");
    api.settle("q", "ack", json!({"ids": [again[0]["delivery_id"]]}));

    // Replayed dead letters are listed only on request, and not replayed twice.
    assert_eq!(api.get("/v1/topics/t/dlq").1["dead_letters"], json!([]));
    let (_, all) = api.get("/v1/topics/t/dlq?include_replayed=true&from=0&max=10");
    let replayed_mark = &all["dead_letters"][0]["replayed"];
    assert_eq!(replayed_mark["topic"], "t");
    assert_eq!(replayed_mark["partition"], 0);
    assert_eq!(replayed_mark["offset"], 1);
    assert!(replayed_mark["replayed_at_ms"].as_i64().unwrap() > 0);
    assert_eq!(api.post("/v1/topics/t/dlq/replay", json!({})).1, json!({"replayed": []}));
    let offsets = api.post("/v1/topics/t/dlq/replay", json!({"offsets": [0]}));
    assert_eq!(offsets, (200, json!({"replayed": []})));
    assert_error(&api.post("/v1/topics/t/dlq/replay", json!({"offsets": [9]})), 400, 1008, "9");
    assert_error(
        &api.post("/v1/topics/t/dlq/replay", json!({"offsets": [0], "key": "k"})),
        400,
        1008,
        "offsets",
    );

    // Another dead letter, replayed by offset (with its partition) this time.
    api.produce(json!([{"key": "k2", "value": 2}]));
    let leased = api.lease("q", "");
    let results = api.settle("q", "reject", json!({"ids": [leased[0]["delivery_id"]]}));
    assert_eq!(results[0]["dead_lettered"]["offset"], 1, "{results:?}");
    let (status, replayed) =
        api.post("/v1/topics/t/dlq/replay", json!({"offsets": [{"partition": 0, "offset": 1}]}));
    assert_eq!(status, 200, "{replayed}");
    assert_eq!(replayed["replayed"][0]["dead_letter_offset"], 1);

    // Purge: everything goes, replayed or not.
    let (status, purged) = api.post("/v1/topics/t/dlq/purge", json!({}));
    assert_eq!((status, purged), (200, json!({"purged": 2})));
    let (_, empty) = api.get("/v1/topics/t/dlq?include_replayed=true");
    assert_eq!(empty["dead_letters"], json!([]));

    assert_error(&api.get("/v1/topics/nope/dlq"), 404, 1001, "nope.dlq");
    assert_error(&api.get("/v1/topics/t/dlq?max=0"), 400, 1008, "max");
    assert_error(&api.post("/v1/topics/nope/dlq/purge", json!({})), 404, 1001, "nope.dlq");
}

#[test]
fn extend_moves_the_deadline_later() {
    let server = common::start("t", 1);
    let api = Api::new(server.address);
    api.create("q", json!({"ack_wait_ms": 10000}));
    api.produce(json!([{"value": 1}]));
    let leased = api.lease("q", "");
    let deadline = leased[0]["deadline_ms"].as_i64().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let results = api.settle("q", "extend", json!({"ids": [leased[0]["delivery_id"]]}));
    assert_eq!(results[0]["ok"], true, "{results:?}");
    let extended = results[0]["deadline_ms"].as_i64().unwrap();
    assert!(extended > deadline, "{extended} is not after {deadline}");
    assert!(extended <= now_ms() + 11_000, "{extended}");
    // Still leased: it can be acked.
    let results = api.settle("q", "ack", json!({"ids": [leased[0]["delivery_id"]]}));
    assert_eq!(results[0]["ok"], true, "{results:?}");
}

#[test]
fn a_rejected_key_is_parked_until_released() {
    let server = common::start("t", 1);
    let api = Api::new(server.address);
    api.create("q", json!({"ack_wait_ms": 10000, "ordering": "key"}));
    api.produce(json!([{"key": "k", "value": 1}, {"key": "k", "value": 2}]));
    let leased = api.lease("q", "max=10");
    assert_eq!(leased.len(), 1, "one message of a key at a time: {leased:?}");
    api.settle("q", "reject", json!({"ids": [leased[0]["delivery_id"]]}));
    let (_, described) = api.get("/v1/queues/q");
    assert_eq!(described["counts"]["parked_keys"], 1, "{described}");
    assert_eq!(described["partitions"][0]["parked_keys"], json!(["k"]));
    assert!(api.lease("q", "max=10").is_empty());

    let release = json!({"topic": "t", "partition": 0, "key": "k"});
    assert_eq!(api.post("/v1/queues/q/release", release.clone()), (200, json!({"released": true})));
    assert_eq!(api.post("/v1/queues/q/release", release), (200, json!({"released": false})));
    let both = json!({"topic": "t", "partition": 0, "key": "k", "key_base64": "aw=="});
    assert_error(&api.post("/v1/queues/q/release", both), 400, 1008, "key");
    let next = api.lease("q", "wait_ms=5000");
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!(next[0]["value"], 2);
}

#[test]
fn metrics_have_queue_lines() {
    let server = common::start("t", 1);
    let api = Api::new(server.address);
    api.create("q", json!({"ack_wait_ms": 10000}));
    api.produce(json!([{"value": 1}, {"value": 2}]));
    let leased = api.lease("q", "max=2");
    api.settle("q", "ack", json!({"ids": [leased[0]["delivery_id"]]}));

    let (status, metrics) = api.get("/metrics");
    assert_eq!(status, 200);
    // The body is Prometheus text, not JSON.
    let metrics = metrics.as_str().map(str::to_owned).unwrap_or_else(|| metrics.to_string());
    for line in [
        "# TYPE sluice_queue_ack_pending gauge",
        "sluice_queue_ack_pending{group=\"q\"} 1",
        "sluice_queue_waiting{group=\"q\"} 0",
        "sluice_queue_in_flight{group=\"q\"} 1",
        "sluice_queue_parked_keys{group=\"q\"} 0",
        "# TYPE sluice_queue_delivered_total counter",
        "sluice_queue_delivered_total{group=\"q\"} 2",
        "sluice_queue_redelivered_total{group=\"q\"} 0",
        "sluice_queue_acked_total{group=\"q\"} 1",
        "sluice_queue_dead_lettered_total{group=\"q\"} 0",
        "# TYPE kafka_consumergroup_lag gauge",
    ] {
        assert!(metrics.contains(line), "{line} not in {metrics}");
    }
    for line in metrics.lines().filter(|line| line.starts_with("# TYPE ")) {
        let kind = line.rsplit(' ').next().unwrap();
        assert!(["gauge", "counter"].contains(&kind), "{line}");
    }
}
