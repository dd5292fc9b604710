//! Sluice's Kafka door with a real Kafka client: librdkafka, through confluent-kafka's Python
//! binding (`tests/kafka_client.py`; `.ci/run` installs it), against the real binary.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use common::{call, Server};
use serde_json::{json, Value};

fn client() -> Command {
    let mut command = Command::new("python3");
    command.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kafka_client.py"));
    command
}

/// Every record of a partition through the HTTP door: offset -> value.
fn read_partition(server: &Server, topic: &str, partition: u32) -> BTreeMap<u64, String> {
    let mut records = BTreeMap::new();
    let mut offset = 0;
    loop {
        let url = server
            .url(&format!("/v1/topics/{topic}/partitions/{partition}/records?offset={offset}"));
        let body = call("GET", &url, None);
        let batch = body["records"].as_array().unwrap();
        if batch.is_empty() {
            return records;
        }
        for record in batch {
            // The values are not JSON, so HTTP gives them in base64.
            let value = BASE64.decode(record["value_base64"].as_str().unwrap()).unwrap();
            let value = String::from_utf8(value).unwrap();
            records.insert(record["offset"].as_u64().unwrap(), value);
        }
        offset = body["next_offset"].as_u64().unwrap();
    }
}

#[test]
fn librdkafka_produces_and_consumes_what_http_reads() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    call("POST", &server.url("/v1/topics"), Some(json!({"name": "orders", "partitions": 3})));
    let count = 3000;
    let output = client()
        .args(["produce-consume", server.kafka(), "orders", &count.to_string()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["errors"], json!([]), "{report}");
    assert_eq!(report["unflushed"], 0);
    assert_eq!(report["partitions"], 3);
    let delivered = report["delivered"].as_array().unwrap();
    let consumed = report["consumed"].as_array().unwrap();
    assert_eq!(delivered.len(), count);
    assert_eq!(consumed.len(), count);

    // What librdkafka was told is where HTTP finds it, and what it consumed is the same.
    let partitions: Vec<_> = (0..3).map(|p| read_partition(&server, "orders", p)).collect();
    assert_eq!(partitions.iter().map(BTreeMap::len).sum::<usize>(), count);
    for entry in delivered {
        let (partition, offset) = (entry[0].as_u64().unwrap(), entry[1].as_u64().unwrap());
        assert_eq!(
            partitions[partition as usize].get(&offset).map(String::as_str),
            entry[2].as_str()
        );
    }
    let mut keys_by_partition: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_value_of_key: BTreeMap<String, u64> = BTreeMap::new();
    for entry in consumed {
        let (partition, offset) = (entry[0].as_u64().unwrap(), entry[1].as_u64().unwrap());
        let (key, value) = (entry[2].as_str().unwrap(), entry[3].as_str().unwrap());
        assert_eq!(partitions[partition as usize].get(&offset).map(String::as_str), Some(value));
        // One key, one partition, and its records in the order they were produced.
        assert_eq!(*keys_by_partition.entry(key.to_owned()).or_insert(partition), partition);
        let sequence: u64 = value[1..].parse().unwrap();
        if let Some(previous) = last_value_of_key.insert(key.to_owned(), sequence) {
            assert!(previous < sequence, "key {key}: v{previous} consumed before v{sequence}");
        }
    }
}

#[test]
fn kill_9_loses_no_record_librdkafka_was_told_is_stored() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    call("POST", &server.url("/v1/topics"), Some(json!({"name": "ledger", "partitions": 2})));
    let mut producer = client()
        .args(["produce-until-failure", server.kafka(), "ledger"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(producer.stdout.take().unwrap()).lines();
    let mut acked = Vec::new();
    // Kill the server while the producer is in full flow.
    while acked.len() < 2000 {
        let line = lines.next().expect("the producer stopped early").unwrap();
        acked.push(line);
    }
    server.kill9();
    acked.extend(lines.map(Result::unwrap)); // acknowledged just before the kill
    producer.wait().unwrap();

    let server = Server::start(data.path());
    let partitions: Vec<_> = (0..2).map(|p| read_partition(&server, "ledger", p)).collect();
    for line in &acked {
        let fields: Vec<&str> = line.split(' ').collect();
        let (partition, offset): (usize, u64) =
            (fields[0].parse().unwrap(), fields[1].parse().unwrap());
        assert_eq!(
            partitions[partition].get(&offset).map(String::as_str),
            Some(fields[2]),
            "acknowledged record {line} is missing after kill -9 (of {} acknowledged)",
            acked.len()
        );
    }
    // Offsets stay dense: recovery did not leave a hole in front of a surviving record.
    for partition in &partitions {
        assert!(partition.keys().copied().eq(0..partition.len() as u64));
    }
}

/// Runs the client's `group-consume` mode to its end; its JSON report.
fn group_consume(server: &Server, topic: &str, group: &str, max: usize) -> Value {
    let output = client()
        .args(["group-consume", server.kafka(), topic, group, &max.to_string(), "3"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

fn produce(server: &Server, topic: &str, count: usize) {
    let output = client()
        .args(["produce-consume", server.kafka(), topic, &count.to_string()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// (partition, offset) of every record a report says was consumed.
fn positions(report: &Value) -> Vec<(u64, u64)> {
    let consumed = report["consumed"].as_array().unwrap();
    consumed.iter().map(|entry| (entry[0].as_u64().unwrap(), entry[1].as_u64().unwrap())).collect()
}

#[test]
fn a_subscribed_librdkafka_consumer_resumes_from_its_group_commit() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    call("POST", &server.url("/v1/topics"), Some(json!({"name": "events", "partitions": 3})));
    produce(&server, "events", 1000);

    let first = group_consume(&server, "events", "billing", 400);
    assert_eq!(first["errors"], json!([]), "{first}");
    let second = group_consume(&server, "events", "billing", 10_000);
    assert_eq!(second["errors"], json!([]), "{second}");
    let (first, second) = (positions(&first), positions(&second));
    assert_eq!(first.len(), 400);
    // The second member starts where the first committed: every record once, none twice.
    let all: std::collections::BTreeSet<_> = first.iter().chain(&second).copied().collect();
    assert_eq!((second.len(), all.len()), (600, 1000));

    // The group is the engine's: HTTP sees the committed offsets at the end of each partition.
    let group = call("GET", &server.url("/v1/groups/billing"), None);
    for partition in group["partitions"].as_array().unwrap() {
        assert_eq!(partition["committed"], partition["high_watermark"], "{group}");
        assert_eq!(partition["lag"], 0);
    }
}

#[test]
fn two_subscribed_librdkafka_consumers_share_a_topic() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    call("POST", &server.url("/v1/topics"), Some(json!({"name": "jobs", "partitions": 4})));
    let members: Vec<_> = (0..2)
        .map(|_| {
            client()
                .args(["group-consume", server.kafka(), "jobs", "workers", "100000", "5"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Both members hold partitions (and have had time to learn the final assignment) before
    // anything is produced.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if members_holding_partitions(&server, "workers") == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "two members never held partitions");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    produce(&server, "jobs", 2000);

    let reports: Vec<Value> = members
        .into_iter()
        .map(|member| {
            let output = member.wait_with_output().unwrap();
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            serde_json::from_slice(&output.stdout).unwrap()
        })
        .collect();
    let (a, b) = (positions(&reports[0]), positions(&reports[1]));
    assert!(!a.is_empty() && !b.is_empty(), "one member got nothing: {} and {}", a.len(), b.len());
    let all: std::collections::BTreeSet<_> = a.iter().chain(&b).copied().collect();
    assert_eq!(all.len(), 2000, "records consumed by neither member");
    let partitions = |positions: &[(u64, u64)]| {
        positions.iter().map(|p| p.0).collect::<std::collections::BTreeSet<_>>()
    };
    assert!(partitions(&a).is_disjoint(&partitions(&b)), "a partition went to both members");
}

/// How many members of `group` hold partitions (0 while the group does not exist yet).
fn members_holding_partitions(server: &Server, group: &str) -> usize {
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let mut response = agent.get(&server.url(&format!("/v1/groups/{group}"))).call().unwrap();
    if response.status() != 200 {
        return 0;
    }
    let described: Value =
        serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    described["members"].as_array().map_or(0, |members| {
        members.iter().filter(|m| !m["assignment"].as_array().unwrap().is_empty()).count()
    })
}
