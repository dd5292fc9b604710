//! End-to-end tests of event streams with the real binary: `sluice serve` and `sluice stream`.
//!
//! - `stream append` with a stale expected version exits 3 with both versions; `stream read`
//!   prints events forward, backward and as of a time; `stream subscribe` prints stored then
//!   live events.
//! - `kill -9` of the server during concurrent appends: every acknowledged append is readable
//!   after restart with its version, versions have no gaps, and with every `.keys` file deleted
//!   the key index is rebuilt and reads agree.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::Server;

fn sluice(server: &Server, args: &[&str], stdin: &str) -> Output {
    common::run_sluice(server, args, stdin)
}

fn ok(output: Output) -> String {
    assert!(output.status.success(), "failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

fn versions(events: &[Value]) -> Vec<u64> {
    events.iter().map(|event| event["version"].as_u64().unwrap()).collect()
}

#[test]
fn append_conflict_exits_3_read_and_subscribe_print_events() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    ok(sluice(&server, &["topic", "create", "account", "--retention-age", "forever"], ""));
    let first = ok(sluice(
        &server,
        &[
            "stream",
            "append",
            "account",
            "acct-42",
            "--type",
            "Opened",
            "--expected-version",
            "no_stream",
            "--data",
            "{\"owner\":\"ada\"}",
        ],
        "",
    ));
    assert!(first.starts_with("appended to acct-42 at version 0"), "{first}");
    for amount in [5, 7] {
        ok(sluice(
            &server,
            &["stream", "append", "account", "acct-42", "--type", "Deposited"],
            &format!("{{\"amount\":{amount}}}"),
        ));
    }
    let conflict = sluice(
        &server,
        &[
            "stream",
            "append",
            "account",
            "acct-42",
            "--type",
            "Deposited",
            "--expected-version",
            "1",
            "--data",
            "{}",
        ],
        "",
    );
    assert_eq!(conflict.status.code(), Some(3));
    let stderr = String::from_utf8(conflict.stderr).unwrap();
    assert!(stderr.contains("expected version 1, stream acct-42 is at version 2"), "{stderr}");

    let all = json_lines(&ok(sluice(&server, &["stream", "read", "account", "acct-42"], "")));
    assert_eq!(versions(&all), vec![0, 1, 2]);
    assert_eq!(all[2]["data"], json!({"amount": 7}));
    let back = json_lines(&ok(sluice(
        &server,
        &["stream", "read", "account", "acct-42", "--backward", "--count", "2"],
        "",
    )));
    assert_eq!(versions(&back), vec![2, 1]);
    let before = ok(sluice(
        &server,
        &["stream", "read", "account", "acct-42", "--as-of", "2001-01-01T00:00:00Z"],
        "",
    ));
    assert_eq!(before, "");
    let missing = sluice(&server, &["stream", "read", "account", "nobody"], "");
    assert_eq!(missing.status.code(), Some(1));

    // Subscribe: the three stored events, then a live one.
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--server", &server.base, "stream", "subscribe", "account", "--max", "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(serde_json::from_str::<Value>(&lines.next().unwrap().unwrap()).unwrap());
    }
    ok(sluice(
        &server,
        &[
            "stream",
            "append",
            "account",
            "acct-42",
            "--type",
            "Withdrawn",
            "--expected-version",
            "2",
            "--data",
            "{\"amount\":1}",
        ],
        "",
    ));
    seen.push(serde_json::from_str::<Value>(&lines.next().unwrap().unwrap()).unwrap());
    assert!(child.wait().unwrap().success());
    assert_eq!(versions(&seen), vec![0, 1, 2, 3]);
    assert_eq!(seen[3]["type"], "Withdrawn");
    assert!(seen[3]["position"].as_str().unwrap().starts_with("0:"), "{}", seen[3]);
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .new_agent()
}

/// Every stream's events as (version, id), read through the API.
fn read_all(server: &Server, streams: usize) -> BTreeMap<String, Vec<(u64, String)>> {
    let agent = agent();
    let mut all = BTreeMap::new();
    for stream in 0..streams {
        let name = format!("s{stream}");
        let mut events = Vec::new();
        let mut from = 0;
        loop {
            let url = server.url(&format!("/v1/streams/ledger/{name}?from={from}"));
            let mut response = agent.get(&url).call().unwrap();
            if response.status() == 404 {
                break;
            }
            let body: Value = response.body_mut().read_json().unwrap();
            for event in body["events"].as_array().unwrap() {
                events.push((
                    event["version"].as_u64().unwrap(),
                    event["id"].as_str().unwrap().to_owned(),
                ));
            }
            match body["next"].as_u64() {
                Some(next) => from = next,
                None => break,
            }
        }
        all.insert(name, events);
    }
    all
}

#[test]
fn kill9_during_appends_keeps_every_acknowledged_event_and_rebuilds_the_key_index() {
    const STREAMS: usize = 24;
    const WRITERS: usize = 6;
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let created = agent()
        .post(server.url("/v1/topics"))
        .send_json(json!({"name": "ledger", "partitions": 2, "retention_age_ms": null, "segment_bytes": 1_048_576, "record_bytes_max": 65_536}))
        .unwrap();
    assert_eq!(created.status(), 201);

    // Writers append 2 KiB events with exact expected versions until the server dies; each
    // remembers what was acknowledged.
    let acked: Arc<Mutex<Vec<(String, u64, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let (acked, stop, base) = (Arc::clone(&acked), Arc::clone(&stop), server.base.clone());
        writers.push(std::thread::spawn(move || {
            let agent = agent();
            let mut known: BTreeMap<String, Option<u64>> = BTreeMap::new();
            let padding = "x".repeat(2048);
            let mut attempt = 0u64;
            while !stop.load(Ordering::Relaxed) {
                attempt += 1;
                let stream = format!("s{}", (attempt as usize * 7 + writer) % STREAMS);
                let expected = match known.get(&stream).copied().flatten() {
                    Some(version) => json!(version),
                    None => json!("no_stream"),
                };
                let id = format!("w{writer}-{attempt}");
                let body = json!({"expected_version": expected, "events": [{"type": "Posted", "id": id, "data": {"pad": padding}}]});
                let Ok(mut response) = agent.post(format!("{base}/v1/streams/ledger/{stream}")).send_json(body) else {
                    break; // the server is gone
                };
                let status = response.status().as_u16();
                let Ok(reply) = response.body_mut().read_json::<Value>() else { break };
                match status {
                    201 => {
                        let version = reply["version"].as_u64().unwrap();
                        acked.lock().unwrap().push((stream.clone(), version, id));
                        known.insert(stream, Some(version));
                    }
                    409 => {
                        let actual = reply["details"]["actual_version"].as_i64().unwrap();
                        known.insert(stream, u64::try_from(actual).ok());
                    }
                    other => panic!("append answered {other}: {reply}"),
                }
            }
        }));
    }
    // Let them write a few segments' worth, then kill the server mid-stream.
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 2500 && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    server.kill9();
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 500, "only {} appends were acknowledged", acked.len());

    let check = |server: &Server| {
        let stored = read_all(server, STREAMS);
        for (stream, events) in &stored {
            let numbers: Vec<u64> = events.iter().map(|(version, _)| *version).collect();
            assert_eq!(
                numbers,
                (0..events.len() as u64).collect::<Vec<_>>(),
                "{stream} has gaps or duplicates"
            );
        }
        for (stream, version, id) in &acked {
            let found = stored[stream].get(*version as usize);
            assert_eq!(
                found.map(|(_, stored_id)| stored_id),
                Some(id),
                "acknowledged {stream}@{version} lost"
            );
        }
        stored
    };
    let server = Server::start(data.path());
    let before = check(&server);
    drop(server);

    let mut removed = 0;
    for partition in ["0", "1"] {
        for entry in std::fs::read_dir(data.path().join("topics/ledger").join(partition)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|extension| extension == "keys") {
                std::fs::remove_file(&path).unwrap();
                removed += 1;
            }
        }
    }
    assert!(removed >= 2, "expected closed segments with key indexes; found {removed}");
    let server = Server::start(data.path());
    assert_eq!(check(&server), before);
    // Appends continue at the right versions.
    let stream = "s3";
    let next = before[stream].len();
    let expected = if next == 0 { json!("no_stream") } else { json!(next - 1) };
    let mut response = agent()
        .post(server.url(&format!("/v1/streams/ledger/{stream}")))
        .send_json(
            json!({"expected_version": expected, "events": [{"type": "Posted", "data": {}}]}),
        )
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.body_mut().read_json::<Value>().unwrap()["version"], json!(next));
    assert!(
        keys_files(&data.path().join("topics/ledger/0"))
            + keys_files(&data.path().join("topics/ledger/1"))
            > 0,
        "reads rebuilt the index files"
    );
}

fn keys_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|entry| {
            entry.as_ref().unwrap().path().extension().is_some_and(|extension| extension == "keys")
        })
        .count()
}
