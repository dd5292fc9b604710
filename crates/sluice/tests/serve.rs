//! End-to-end tests of `sluice serve`: the real binary on a free port on 127.0.0.1, driven over
//! HTTP. Keyed records come back in order per key; bad input gets clear errors while the server
//! keeps serving; a `kill -9` mid-produce loses no acknowledged record; SIGTERM exits cleanly.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::Server;

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().new_agent()
}

/// Sends a request and returns (status, JSON body).
fn call(method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
    let agent = agent();
    let response = match (method, body) {
        ("GET", _) => agent.get(url).call(),
        ("DELETE", _) => agent.delete(url).call(),
        ("POST", Some(body)) => agent.post(url).send_json(body),
        ("POST", None) => agent.post(url).send_empty(),
        _ => panic!("unsupported {method}"),
    }
    .unwrap();
    let status = response.status().as_u16();
    let text = response.into_body().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn post_raw(url: &str, body: &str) -> (u16, Value) {
    let response = agent().post(url).content_type("application/json").send(body).unwrap();
    let status = response.status().as_u16();
    (status, serde_json::from_str(&response.into_body().read_to_string().unwrap()).unwrap())
}

/// Every record of a partition from offset 0, as JSON objects.
fn read_partition(server: &Server, topic: &str, partition: u32) -> Vec<Value> {
    let mut records = Vec::new();
    let mut offset = 0;
    loop {
        let url = server
            .url(&format!("/v1/topics/{topic}/partitions/{partition}/records?offset={offset}"));
        let (status, body) = call("GET", &url, None);
        assert_eq!(status, 200, "{body}");
        let batch = body["records"].as_array().unwrap().clone();
        if batch.is_empty() {
            return records;
        }
        offset = body["next_offset"].as_u64().unwrap();
        records.extend(batch);
    }
}

#[test]
fn keyed_records_come_back_in_order_per_key() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let (status, body) =
        call("POST", &server.url("/v1/topics"), Some(json!({"name": "orders", "partitions": 4})));
    assert_eq!(status, 201, "{body}");
    let mut sent: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for round in 0..10 {
        let records: Vec<Value> = (0..30)
            .map(|index| {
                let key = format!("customer-{}", index % 9);
                let sequence = round * 100 + index;
                sent.entry(key.clone()).or_default().push(sequence);
                json!({"key": key, "value": {"sequence": sequence}})
            })
            .collect();
        let (status, body) = call(
            "POST",
            &server.url("/v1/topics/orders/records"),
            Some(json!({"records": records})),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["offsets"].as_array().unwrap().len(), 30);
    }
    let mut seen: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for partition in 0..4 {
        for record in read_partition(&server, "orders", partition) {
            let key = record["key"].as_str().unwrap().to_owned();
            seen.entry(key).or_default().push(record["value"]["sequence"].as_i64().unwrap());
        }
    }
    assert_eq!(seen, sent);
}

#[test]
fn bad_input_gets_a_clear_error_and_the_server_keeps_serving() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let created = call(
        "POST",
        &server.url("/v1/topics"),
        Some(json!({"name": "t", "record_bytes_max": 1000})),
    );
    assert_eq!(created.0, 201);
    let records = server.url("/v1/topics/t/records");

    let (status, body) = post_raw(&records, r#"{"records": [{"key": "#);
    assert_eq!((status, body["error_code"].as_u64()), (400, Some(1008)), "{body}");
    assert!(body["message"].as_str().unwrap().contains("malformed JSON"));

    let big = "x".repeat(2000);
    let (status, body) = call("POST", &records, Some(json!({"records": [{"value": big}]})));
    assert_eq!(status, 413, "{body}");
    assert!(body["message"].as_str().unwrap().contains("record_bytes_max"), "{body}");

    let (status, body) = call(
        "POST",
        &server.url("/v1/topics/nope/records"),
        Some(json!({"records": [{"value": 1}]})),
    );
    assert_eq!((status, body["error_code"].as_u64()), (404, Some(1001)), "{body}");

    let (status, body) = call("POST", &server.url("/v1/topics"), Some(json!({"name": "no/slash"})));
    assert_eq!(status, 400, "{body}");
    let (status, body) =
        call("POST", &server.url("/v1/topics"), Some(json!({"name": "ok", "partitions": 100000})));
    assert!(status == 400 && body["message"].as_str().unwrap().contains("partitions"), "{body}");

    for query in
        ["offset=-1", "max_records=0", "max_bytes=999999999999", "wait_ms=99999999", "offset=50"]
    {
        let (status, body) =
            call("GET", &server.url(&format!("/v1/topics/t/partitions/0/records?{query}")), None);
        assert!((400..500).contains(&status), "{query}: {status} {body}");
        assert!(body["message"].is_string(), "{query}: {body}");
    }
    let (status, _) = call("GET", &server.url("/v1/topics/t/partitions/9/records"), None);
    assert_eq!(status, 404);

    // Half a request, then silence: other clients are served meanwhile.
    let mut stalled = TcpStream::connect(server.base.trim_start_matches("http://")).unwrap();
    stalled
        .write_all(
            b"POST /v1/topics/t/records HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"rec",
        )
        .unwrap();
    let (status, body) =
        call("POST", &records, Some(json!({"records": [{"value": "still here"}]})));
    assert_eq!(status, 200, "{body}");
    drop(stalled);
    assert_eq!(
        read_partition(&server, "t", 0).len(),
        1,
        "nothing from the bad requests was stored"
    );
}

#[test]
fn kill9_mid_produce_loses_no_acknowledged_record() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    call("POST", &server.url("/v1/topics"), Some(json!({"name": "t", "partitions": 2})));
    let url = server.url("/v1/topics/t/records");
    let producer = std::thread::spawn(move || {
        // Acknowledged (partition, offset) -> value; stops at the first failed request.
        let mut acknowledged = BTreeMap::new();
        for sequence in 0..100_000u64 {
            let body =
                json!({"records": [{"key": format!("k{}", sequence % 5), "value": sequence}]});
            let Ok(response) = agent().post(&url).send_json(body) else { break };
            if response.status() != 200 {
                break;
            }
            let Ok(text) = response.into_body().read_to_string() else { break };
            let Ok(body) = serde_json::from_str::<Value>(&text) else { break };
            let offset = &body["offsets"][0];
            acknowledged.insert(
                (offset["partition"].as_u64().unwrap(), offset["offset"].as_u64().unwrap()),
                sequence,
            );
        }
        acknowledged
    });
    // Kill once a few hundred produces were acknowledged (polling the server's own view).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = call("GET", &server.url("/v1/topics/t"), None);
        let total: u64 = body["partition_offsets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["high_watermark"].as_u64().unwrap())
            .sum();
        if total >= 300 {
            break;
        }
        assert!(Instant::now() < deadline, "the producer made no progress");
        std::thread::yield_now();
    }
    server.kill9();
    let acknowledged = producer.join().unwrap();
    assert!(acknowledged.len() >= 300);

    let server = Server::start(data.path());
    for partition in 0..2u32 {
        let stored: BTreeMap<u64, u64> = read_partition(&server, "t", partition)
            .iter()
            .map(|record| (record["offset"].as_u64().unwrap(), record["value"].as_u64().unwrap()))
            .collect();
        for ((acked_partition, offset), sequence) in &acknowledged {
            if *acked_partition == u64::from(partition) {
                assert_eq!(
                    stored.get(offset),
                    Some(sequence),
                    "partition {partition} offset {offset}"
                );
            }
        }
    }
}

#[test]
fn sigterm_finishes_and_exits_zero() {
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start(data.path());
    call("POST", &server.url("/v1/topics"), Some(json!({"name": "t"})));
    call("POST", &server.url("/v1/topics/t/records"), Some(json!({"records": [{"value": 1}]})));
    let status =
        Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "exit status {exit}");
    let mut rest = String::new();
    if let Some(mut stdout) = server.child.stdout.take() {
        stdout.read_to_string(&mut rest).unwrap();
    }
    let server = Server::start(data.path());
    assert_eq!(read_partition(&server, "t", 0).len(), 1);
}

/// Joins `group` over HTTP; returns (member id, generation).
fn join_member(server: &Server, group: &str, session_timeout_ms: u64) -> (String, u64) {
    let body =
        json!({"topics": ["t"], "session_timeout_ms": session_timeout_ms, "from": "earliest"});
    let (status, body) =
        call("POST", &server.url(&format!("/v1/groups/{group}/members")), Some(body));
    assert_eq!(status, 200, "{body}");
    (body["member_id"].as_str().unwrap().to_owned(), body["generation"].as_u64().unwrap())
}

/// Fetches and commits as `member` until a fetch returns nothing; returns the values seen.
fn drain_member(server: &Server, group: &str, member: &str) -> Vec<u64> {
    let mut values = Vec::new();
    loop {
        let url = server.url(&format!(
            "/v1/groups/{group}/members/{member}/records?max_records=100&wait_ms=100"
        ));
        let (status, body) = call("GET", &url, None);
        assert_eq!(status, 200, "{body}");
        let records = body["records"].as_array().unwrap();
        if records.is_empty() {
            return values;
        }
        values.extend(records.iter().map(|record| record["value"].as_u64().unwrap()));
        let commit = json!({"generation": body["generation"]});
        let (status, body) = call(
            "POST",
            &server.url(&format!("/v1/groups/{group}/members/{member}/commit")),
            Some(commit),
        );
        assert_eq!(status, 200, "{body}");
    }
}

fn produce_numbers(server: &Server, numbers: std::ops::Range<u64>) {
    let records: Vec<Value> =
        numbers.map(|number| json!({"key": format!("k{number}"), "value": number})).collect();
    let (status, body) =
        call("POST", &server.url("/v1/topics/t/records"), Some(json!({"records": records})));
    assert_eq!(status, 200, "{body}");
}

#[test]
fn group_members_split_partitions_fail_over_and_refuse_stale_commits() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    call("POST", &server.url("/v1/topics"), Some(json!({"name": "t", "partitions": 4})));
    produce_numbers(&server, 0..200);
    let (quiet, _) = join_member(&server, "g", 1000);
    let (steady, _) = join_member(&server, "g", 30_000);
    // Stale generation: the quiet member's first view predates the second join.
    let stale = json!({"generation": 1});
    let (status, body) =
        call("POST", &server.url(&format!("/v1/groups/g/members/{quiet}/commit")), Some(stale));
    assert_eq!((status, body["error_code"].as_u64()), (409, Some(1011)), "{body}");

    let mut seen = drain_member(&server, "g", &quiet);
    assert!(!seen.is_empty(), "the two members split the partitions");
    seen.extend(drain_member(&server, "g", &steady));
    produce_numbers(&server, 200..300);
    // The quiet member stops heartbeating; the steady one takes over its partitions.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) =
            call("POST", &server.url(&format!("/v1/groups/g/members/{steady}/heartbeat")), None);
        if body["assignment"].as_array().unwrap().len() == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "the silent member kept its partitions");
        std::thread::sleep(Duration::from_millis(20)); // polling the session clock
    }
    seen.extend(drain_member(&server, "g", &steady));
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..300).collect::<Vec<_>>(),
        "every record exactly once, resumed from the commits"
    );

    let (status, body) = call("GET", &server.url("/v1/groups/g"), None);
    assert_eq!(status, 200);
    let lag: u64 = body["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|partition| partition["lag"].as_u64().unwrap())
        .sum();
    assert_eq!(lag, 0, "{body}");
    let (status, body) = call("GET", &server.url("/v1/groups"), None);
    assert_eq!((status, body), (200, json!(["g"])));

    let (status, metrics) = call("GET", &server.url("/metrics"), None);
    let metrics = metrics.as_str().unwrap().to_owned();
    assert_eq!(status, 200);
    assert!(metrics.contains("sluice_produced_records_total{topic=\"t\"} 300"), "{metrics}");
    for partition in 0..4 {
        let line = format!("kafka_consumergroup_lag{{consumergroup=\"g\",topic=\"t\",partition=\"{partition}\"}} 0");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    assert!(metrics.contains("kafka_consumergroup_members{consumergroup=\"g\"} 1"), "{metrics}");
}

#[test]
fn committed_offsets_survive_kill9_and_reset_needs_an_empty_group() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    call("POST", &server.url("/v1/topics"), Some(json!({"name": "t", "partitions": 2})));
    produce_numbers(&server, 0..50);
    let (member, _) = join_member(&server, "g", 30_000);
    assert_eq!(drain_member(&server, "g", &member).len(), 50);
    let reset = json!({"to": "earliest"});
    let (status, body) = call("POST", &server.url("/v1/groups/g/reset"), Some(reset.clone()));
    assert_eq!((status, body["error_code"].as_u64()), (409, Some(1013)), "{body}");
    server.kill9();

    let server = Server::start(data.path());
    let (status, body) = call("GET", &server.url("/v1/groups/g"), None);
    assert_eq!(status, 200, "{body}");
    let committed: u64 = body["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|partition| partition["committed"].as_u64().unwrap())
        .sum();
    assert_eq!(committed, 50, "commits acknowledged before the kill are intact: {body}");
    let (status, body) = call("POST", &server.url("/v1/groups/g/reset"), Some(reset));
    assert_eq!(status, 200, "{body}");
    let (member, _) = join_member(&server, "g", 30_000);
    assert_eq!(
        drain_member(&server, "g", &member).len(),
        50,
        "read again from the start after the reset"
    );
    let (status, _) =
        call("POST", &server.url("/v1/groups/g/reset"), Some(json!({"to": "@yesterday"})));
    assert_eq!(status, 400);
}

#[test]
fn clients_that_stall_mid_request_are_cut_off() {
    // Short deadlines so the test is quick; the defaults are 10 s and 60 s.
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        data.path(),
        &["--header-timeout-ms", "300", "--request-timeout-ms", "1000"],
    );
    call("POST", &server.url("/v1/topics"), Some(json!({"name": "t"})));
    let address = server.base.trim_start_matches("http://").to_owned();

    // Half the headers, then silence: the server closes the connection.
    let mut half_headers = TcpStream::connect(&address).unwrap();
    half_headers.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    half_headers.write_all(b"POST /v1/topics/t/records HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut rest = Vec::new();
    let read = half_headers.read_to_end(&mut rest);
    assert!(read.is_ok(), "the server closed the connection: {read:?}");

    // Whole headers, half the body, then silence: 408 with a JSON error.
    let mut half_body = TcpStream::connect(&address).unwrap();
    half_body.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    half_body
        .write_all(
            b"POST /v1/topics/t/records HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"rec",
        )
        .unwrap();
    let mut response = String::new();
    let _ = half_body.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("error_code"), "{response}");

    let (status, body) =
        call("POST", &server.url("/v1/topics/t/records"), Some(json!({"records": [{"value": 1}]})));
    assert_eq!(status, 200, "the server still serves: {body}");
}
