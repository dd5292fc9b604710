//! Server-Sent Events: history first, then live records, with no gap and no duplicate; and the
//! same stream as a member of a group, which commits what it sent.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;

mod common;

use serde_json::{json, Value};

fn produce(address: SocketAddr, numbers: std::ops::Range<u64>) {
    let records: Vec<Value> =
        numbers.map(|number| json!({"key": format!("k{number}"), "value": number})).collect();
    let response = ureq::post(format!("http://{address}/v1/topics/t/records"))
        .send_json(json!({"records": records}))
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// Reads `count` record events from an SSE response body; returns their values.
fn read_events(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    count: usize,
) -> Vec<u64> {
    let mut values = Vec::new();
    while values.len() < count {
        let line = lines.next().expect("the stream stays open").unwrap();
        if let Some(data) = line.strip_prefix("data:") {
            let record: Value = serde_json::from_str(data.trim()).unwrap();
            assert_eq!(record["topic"], json!("t"));
            values.push(record["value"].as_u64().unwrap());
        }
    }
    values
}

#[test]
fn history_then_live_records_with_no_gap_and_no_duplicate() {
    let server = common::start("t", 2);
    let address = server.address;
    produce(address, 0..50);
    let response =
        ureq::get(format!("http://{address}/v1/topics/t/events?from=earliest")).call().unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut lines = BufReader::new(response.into_body().into_reader()).lines();
    let mut values = read_events(&mut lines, 50);
    produce(address, 50..80);
    values.extend(read_events(&mut lines, 30));
    values.sort_unstable();
    assert_eq!(values, (0..80).collect::<Vec<_>>());
}

#[test]
fn a_group_stream_commits_what_it_sent() {
    let server = common::start("t", 2);
    let (address, engine) = (server.address, &server.engine);
    produce(address, 0..40);
    let response =
        ureq::get(format!("http://{address}/v1/topics/t/events?group=browser&from=earliest"))
            .call()
            .unwrap();
    let mut lines = BufReader::new(response.into_body().into_reader()).lines();
    let mut values = read_events(&mut lines, 40);
    values.sort_unstable();
    assert_eq!(values, (0..40).collect::<Vec<_>>());
    // The commit follows the delivery; poll the group's view until it shows.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let lag: u64 = engine
            .describe_group("browser")
            .unwrap()
            .partitions
            .iter()
            .map(|partition| partition.lag)
            .sum();
        if lag == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the stream never committed");
        std::thread::yield_now();
    }
}

#[test]
fn bad_stream_requests_get_errors() {
    let server = common::start("t", 2);
    let address = server.address;
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    for (query, status) in [
        ("from=yesterday", 400),
        ("partition=7", 404),
        ("from=@not-a-time", 400),
        ("group=bad%20name", 400),
    ] {
        let response =
            agent.get(format!("http://{address}/v1/topics/t/events?{query}")).call().unwrap();
        assert_eq!(response.status().as_u16(), status, "{query}");
    }
    let response = agent.get(format!("http://{address}/v1/topics/nope/events")).call().unwrap();
    assert_eq!(response.status().as_u16(), 404);
}
