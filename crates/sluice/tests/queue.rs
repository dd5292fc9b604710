//! End-to-end tests of queue groups with the real binary: `sluice serve`, `sluice queue`,
//! `sluice worker` and `sluice dlq`, over HTTP on 127.0.0.1.
//!
//! - A command that always fails sends its message to the dead-letter topic after exactly
//!   `deliveries_max` deliveries, with gaps that grow by the backoff multiplier; a replay after
//!   fixing the command is delivered once more and acked.
//! - Under key ordering a failing message of key A holds back later A messages, not B ones.
//! - `kill -9` of the server with leases outstanding: acked messages are never delivered again,
//!   unacked ones are.
//! - Four workers share one group's load and every message is acked exactly once.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{call, Server};

fn sluice(server: &Server, args: &[&str], stdin: &str) -> Output {
    let output = common::run_sluice(server, args, stdin);
    assert!(
        output.status.success(),
        "sluice {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn worker(server: &Server, group: &str, exec: &str, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--server")
        .arg(&server.base)
        .args(["worker", group, "--exec", exec])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_exit(mut child: Child, within: Duration) {
    let until = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "worker exited with {status}");
            return;
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("worker did not finish within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn describe(server: &Server, group: &str) -> Value {
    call("GET", &server.url(&format!("/v1/queues/{group}")), None)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

#[test]
fn failing_command_dead_letters_after_deliveries_max_with_growing_gaps_and_replay_acks() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    sluice(&server, &["topic", "create", "jobs"], "");
    sluice(
        &server,
        &[
            "queue",
            "create",
            "workers",
            "--topic",
            "jobs",
            "--ack-wait-ms",
            "10000",
            "--deliveries-max",
            "4",
            "--backoff",
            "300:2:10000",
            "--backoff-jitter",
            "0.1",
        ],
        "",
    );
    sluice(&server, &["produce", "jobs"], "{\"n\":1}\n");
    let log = work.path().join("attempts");
    let exec = format!(
        "echo \"$(date +%s%N) $SLUICE_DELIVERIES\" >> {}; echo boom >&2; exit 3",
        log.display()
    );
    wait_exit(worker(&server, "workers", &exec, &["--max-messages", "4"]), Duration::from_secs(60));
    let attempts: Vec<(u64, u32)> = lines(&log)
        .iter()
        .map(|line| {
            let (nanos, deliveries) = line.split_once(' ').unwrap();
            (nanos.parse().unwrap(), deliveries.parse().unwrap())
        })
        .collect();
    let counts: Vec<u32> = attempts.iter().map(|(_, deliveries)| *deliveries).collect();
    assert_eq!(counts, vec![1, 2, 3, 4], "exactly deliveries_max deliveries");
    let gaps: Vec<f64> =
        attempts.windows(2).map(|pair| (pair[1].0 - pair[0].0) as f64 / 1e6).collect();
    // Delays of 300, 600 and 1200 ms, each up to 10% shorter (jitter), plus the time a worker
    // takes to lease and start the command.
    assert!(gaps[0] >= 270.0, "first gap {gaps:?}");
    for pair in gaps.windows(2) {
        let ratio = pair[1] / pair[0];
        assert!((1.5..=2.6).contains(&ratio), "gaps {gaps:?} do not grow by ~2x");
    }

    let listed: Value = serde_json::from_slice(
        &sluice(&server, &["dlq", "list", "jobs", "--output", "json"], "").stdout,
    )
    .unwrap();
    let letters = listed["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "{listed}");
    assert_eq!(letters[0]["deliveries"], 4);
    assert!(letters[0]["last_error"].as_str().unwrap().contains("exit status 3: boom"), "{listed}");
    assert_eq!(letters[0]["origin"]["topic"], "jobs");
    assert_eq!(listed["dead_letter_topic"], "jobs.dlq");

    // Fix the command and replay: delivered once more, acked.
    sluice(&server, &["dlq", "replay", "jobs"], "");
    let out = work.path().join("out");
    let exec = format!("cat >> {}; echo >> {}", out.display(), out.display());
    wait_exit(worker(&server, "workers", &exec, &["--max-messages", "1"]), Duration::from_secs(30));
    assert_eq!(lines(&out), vec!["{\"n\":1}".to_owned()]);
    let described = describe(&server, "workers");
    assert_eq!(described["totals"]["acked"], 1, "{described}");
    assert_eq!(described["totals"]["dead_lettered"], 1, "{described}");
    let listed: Value = serde_json::from_slice(
        &sluice(&server, &["dlq", "list", "jobs", "--output", "json"], "").stdout,
    )
    .unwrap();
    assert!(listed["dead_letters"].as_array().unwrap().is_empty(), "replayed: {listed}");
}

#[test]
fn key_ordering_holds_back_the_failing_key_only() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    sluice(&server, &["topic", "create", "jobs"], "");
    sluice(
        &server,
        &[
            "queue",
            "create",
            "ordered",
            "--topic",
            "jobs",
            "--ordering",
            "key",
            "--deliveries-max",
            "1",
        ],
        "",
    );
    sluice(
        &server,
        &["produce", "jobs", "--key-separator", ":"],
        "A:\"A1\"\nA:\"A2\"\nB:\"B1\"\nB:\"B2\"\n",
    );
    let out = work.path().join("out");
    let exec = format!(
        "value=$(cat); if [ \"$value\" = '\"A1\"' ]; then exit 1; fi; echo \"$value\" >> {}",
        out.display()
    );
    wait_exit(worker(&server, "ordered", &exec, &["--max-messages", "3"]), Duration::from_secs(30));
    assert_eq!(lines(&out), vec!["\"B1\"".to_owned(), "\"B2\"".to_owned()], "B went on, A2 waits");
    let leased = call("GET", &server.url("/v1/queues/ordered/messages?max=10&wait_ms=300"), None);
    assert!(leased["messages"].as_array().unwrap().is_empty(), "A2 is held back: {leased}");
    let described = describe(&server, "ordered");
    assert_eq!(described["partitions"][0]["parked_keys"], json!(["A"]), "{described}");

    // Replaying A's dead letter releases the key: A2 comes, then the replayed A1.
    sluice(&server, &["dlq", "replay", "jobs", "--key", "A"], "");
    let exec = format!("cat >> {}; echo >> {}", out.display(), out.display());
    wait_exit(worker(&server, "ordered", &exec, &["--max-messages", "2"]), Duration::from_secs(30));
    let seen = lines(&out);
    assert_eq!(seen[2..], ["\"A2\"".to_owned(), "\"A1\"".to_owned()], "{seen:?}");
}

#[test]
fn kill9_with_leases_outstanding_redelivers_unacked_and_never_acked() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    call("POST", &server.url("/v1/topics"), Some(json!({"name": "jobs", "partitions": 2})));
    call(
        "POST",
        &server.url("/v1/queues"),
        Some(json!({"group": "g", "topics": ["jobs"], "ack_wait_ms": 1500})),
    );
    let records: Vec<Value> =
        (0..40).map(|n| json!({"key": format!("k{n}"), "value": n})).collect();
    call("POST", &server.url("/v1/topics/jobs/records"), Some(json!({"records": records})));
    let leased = call("GET", &server.url("/v1/queues/g/messages?max=20&member=m1"), None);
    let leased = leased["messages"].as_array().unwrap().clone();
    assert_eq!(leased.len(), 20);
    let acked: Vec<Value> = leased[..12].iter().map(|m| m["delivery_id"].clone()).collect();
    let answer = call("POST", &server.url("/v1/queues/g/ack"), Some(json!({"ids": acked})));
    assert!(answer["results"].as_array().unwrap().iter().all(|r| r["ok"] == true), "{answer}");
    let acked_values: BTreeSet<i64> =
        leased[..12].iter().map(|m| m["value"].as_i64().unwrap()).collect();
    let unacked_values: BTreeSet<i64> =
        leased[12..].iter().map(|m| m["value"].as_i64().unwrap()).collect();
    server.kill9();

    let server = Server::start(data.path());
    let mut delivered: BTreeMap<i64, u64> = BTreeMap::new();
    let until = Instant::now() + Duration::from_secs(20);
    while delivered.len() < 28 && Instant::now() < until {
        let url = server.url("/v1/queues/g/messages?max=100&wait_ms=1000&member=m2");
        let messages = call("GET", &url, None)["messages"].as_array().unwrap().clone();
        for message in &messages {
            let value = message["value"].as_i64().unwrap();
            let deliveries = message["deliveries"].as_u64().unwrap();
            assert!(delivered.insert(value, deliveries).is_none(), "{value} delivered twice");
        }
        // Ack what came, so no lease of this phase expires and muddles the count.
        let ids: Vec<Value> = messages.iter().map(|m| m["delivery_id"].clone()).collect();
        if !ids.is_empty() {
            call("POST", &server.url("/v1/queues/g/ack"), Some(json!({"ids": ids})));
        }
    }
    for value in &acked_values {
        assert!(!delivered.contains_key(value), "acked message {value} was delivered again");
    }
    assert_eq!(delivered.len(), 28, "every unacked message is delivered: {delivered:?}");
    for value in &unacked_values {
        assert_eq!(delivered[value], 2, "a leased, unacked message comes back as delivery 2");
    }
}

#[test]
fn four_workers_share_the_load_and_ack_every_message_once() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    call("POST", &server.url("/v1/topics"), Some(json!({"name": "jobs", "partitions": 4})));
    call("POST", &server.url("/v1/queues"), Some(json!({"group": "pool", "topics": ["jobs"]})));
    let records: Vec<Value> = (0..200).map(|n| json!({"value": n})).collect();
    call("POST", &server.url("/v1/topics/jobs/records"), Some(json!({"records": records})));
    let workers: Vec<Child> = (0..4)
        .map(|index| {
            let out = work.path().join(format!("worker-{index}"));
            // A little work per message, so no single worker drains the queue alone.
            let exec = format!("sleep 0.01; cat >> {}; echo >> {}", out.display(), out.display());
            worker(&server, "pool", &exec, &["--member", &format!("w{index}")])
        })
        .collect();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let described = describe(&server, "pool");
        if described["totals"]["acked"] == 200 {
            assert_eq!(described["totals"]["delivered"], 200, "{described}");
            assert_eq!(described["totals"]["redelivered"], 0, "{described}");
            break;
        }
        assert!(Instant::now() < until, "not all acked: {described}");
        std::thread::sleep(Duration::from_millis(100));
    }
    for mut child in workers {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let mut seen = BTreeSet::new();
    for index in 0..4 {
        let handled = lines(&work.path().join(format!("worker-{index}")));
        assert!(!handled.is_empty(), "worker {index} got no message");
        for line in handled {
            assert!(seen.insert(line.parse::<i64>().unwrap()), "{line} handled twice");
        }
    }
    assert_eq!(seen, (0..200).collect::<BTreeSet<i64>>());
}

#[test]
fn a_worker_that_reaches_max_messages_holds_no_lease() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    call("POST", &server.url("/v1/topics"), Some(json!({"name": "jobs", "partitions": 1})));
    call("POST", &server.url("/v1/queues"), Some(json!({"group": "g", "topics": ["jobs"]})));
    let records: Vec<Value> = (0..10).map(|n| json!({"value": n})).collect();
    call("POST", &server.url("/v1/topics/jobs/records"), Some(json!({"records": records})));
    let out = work.path().join("out");
    let exec = format!("cat >> {}; echo >> {}", out.display(), out.display());
    // Each ack asks for the next message while the loop may take one more; the fourth acks
    // alone, so the worker exits holding nothing.
    wait_exit(worker(&server, "g", &exec, &["--max-messages", "4"]), Duration::from_secs(30));
    assert_eq!(lines(&out), vec!["0", "1", "2", "3"]);
    let described = describe(&server, "g");
    assert_eq!(described["totals"]["acked"], 4, "{described}");
    assert_eq!(described["totals"]["delivered"], 4, "nothing leased and left: {described}");
    assert_eq!(described["counts"]["leased"], 0, "{described}");
}

#[test]
fn a_command_longer_than_the_ack_deadline_keeps_its_lease() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    call("POST", &server.url("/v1/topics"), Some(json!({"name": "jobs", "partitions": 1})));
    call(
        "POST",
        &server.url("/v1/queues"),
        Some(json!({"group": "g", "topics": ["jobs"], "ack_wait_ms": 600,
                    "backoff_initial_ms": 10, "backoff_max_ms": 10})),
    );
    call("POST", &server.url("/v1/topics/jobs/records"), Some(json!({"records": [{"value": 1}]})));
    let out = work.path().join("out");
    // Runs 2.5 ack deadlines; the worker extends the lease every 300 ms meanwhile.
    let exec = format!("sleep 1.5; cat >> {}; echo >> {}", out.display(), out.display());
    let running = worker(&server, "g", &exec, &["--max-messages", "1"]);
    // Past the first deadline, were the lease not extended: the expiry is noticed by this
    // lease, and the retry comes 10 ms later, within its wait.
    std::thread::sleep(Duration::from_millis(1000));
    let path = "/v1/queues/g/messages?max=1&wait_ms=300&member=other";
    let other = call("GET", &server.url(path), None);
    assert!(other["messages"].as_array().unwrap().is_empty(), "the lease ran out: {other}");
    wait_exit(running, Duration::from_secs(30));
    assert_eq!(lines(&out), vec!["1"]);
    let described = describe(&server, "g");
    assert_eq!(described["totals"]["acked"], 1, "{described}");
    assert_eq!(described["totals"]["delivered"], 1, "never redelivered: {described}");
}
