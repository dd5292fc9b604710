//! End-to-end tests of the client subcommands (`topic`, `produce`, `consume`, `group`): the real binary
//! against a real `sluice serve` on a free port of 127.0.0.1. They check what a user sees: the
//! output, the exit code, and that the server's own error messages come through.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::Server;

/// What one run of the binary printed, and how it ended.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json_lines(&self) -> Vec<Value> {
        self.stdout.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
    }
}

fn client(server: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command.arg("--server").arg(server).args(args).env_remove("SLUICE_SERVER");
    command.env("RUST_LOG", "warn");
    command
}

/// Runs `sluice --server <server> <args>` with `stdin` as its input, to completion.
fn sluice(server: &str, args: &[&str], stdin: &str) -> Run {
    let mut child = client(server, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_owned();
    // Written from a thread: a child that prints while reading must not block on a full pipe.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    Run {
        code: output.status.code().unwrap(),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

fn assert_success(run: &Run) {
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
}

#[test]
fn topic_commands_round_trip_and_pass_on_server_errors() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let base = server.base.as_str();
    let create = [
        "topic",
        "create",
        "orders",
        "--partitions",
        "3",
        "--durability",
        "interval:50",
        "--retention-age",
        "12h",
        "--retention-bytes",
        "64M",
        "--compact",
    ];
    assert_success(&sluice(base, &create, ""));
    assert_success(&sluice(base, &["topic", "create", "audit"], ""));

    let table = sluice(base, &["topic", "list"], "");
    assert_success(&table);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", table.stdout);
    assert!(lines[0].starts_with("NAME") && lines[0].contains("PARTITIONS"), "{}", lines[0]);
    let orders: Vec<&str> =
        lines.iter().find(|l| l.starts_with("orders")).unwrap().split_whitespace().collect();
    assert_eq!(orders, ["orders", "3", "interval:50", "12h", "67108864", "true", "0"]);

    let listed = sluice(base, &["topic", "list", "--output", "json"], "");
    assert_success(&listed);
    assert_eq!(listed.stdout.lines().count(), 1, "one JSON array");
    let listed: Value = serde_json::from_str(&listed.stdout).unwrap();
    let orders = listed.as_array().unwrap().iter().find(|t| t["name"] == "orders").unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(
        (&orders["partitions"], &orders["durability"], &orders["retention_age_ms"]),
        (&json!(3), &json!("interval:50"), &json!(43_200_000))
    );
    assert_eq!((&orders["retention_bytes"], &orders["compact"]), (&json!(64 << 20), &json!(true)));

    let described = sluice(base, &["topic", "describe", "orders"], "");
    assert_success(&described);
    assert!(described.stdout.contains("retention_age     12h"), "{}", described.stdout);
    let partition_rows: Vec<&str> = described
        .stdout
        .lines()
        .skip_while(|line| !line.starts_with("PARTITION"))
        .skip(1)
        .collect();
    assert_eq!(partition_rows.len(), 3, "{}", described.stdout);
    let described = sluice(base, &["topic", "describe", "orders", "--output", "json"], "");
    let described: Value = serde_json::from_str(&described.stdout).unwrap();
    assert_eq!(&described, orders, "describe and list agree");

    assert_success(&sluice(base, &["topic", "delete", "orders"], ""));
    let listed = sluice(base, &["topic", "list", "--output", "json"], "");
    let names: Vec<Value> = serde_json::from_str::<Vec<Value>>(&listed.stdout)
        .unwrap()
        .into_iter()
        .map(|t| t["name"].clone())
        .collect();
    assert_eq!(names, [json!("audit")]);
    let gone = sluice(base, &["topic", "describe", "orders"], "");
    assert_eq!(gone.code, 1);
    assert!(
        gone.stderr.starts_with("error: ") && gone.stderr.contains("(code 1001)"),
        "{}",
        gone.stderr
    );
}

#[test]
fn a_refused_topic_name_exits_1_with_the_server_message() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let refused = sluice(&server.base, &["topic", "create", "no/slash"], "");
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let response = agent.post(server.url("/v1/topics")).send_json(json!({"name": "no/slash"}));
    let body: Value =
        serde_json::from_str(&response.unwrap().into_body().read_to_string().unwrap()).unwrap();
    let expected =
        format!("error: {} (code {})\n", body["message"].as_str().unwrap(), body["error_code"]);
    assert_eq!(refused.stderr, expected);

    let usage = sluice(&server.base, &["topic", "create", "ok", "--retention-age", "7"], "");
    assert_eq!(usage.code, 2, "a malformed duration is a usage error: {}", usage.stderr);
}

/// The value a produced line should come back as: JSON stays JSON, anything else is a string.
fn expected_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

#[test]
fn produced_lines_come_back_per_key_in_order_with_their_values() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let base = server.base.as_str();
    assert_success(&sluice(base, &["topic", "create", "orders", "--partitions", "4"], ""));
    let sent: Vec<(String, String)> = (0..1000)
        .map(|index| {
            let value = match index % 6 {
                0 => format!(r#"{{"sequence": {index}, "items": [1, 2]}}"#),
                1 => format!("plain text {index}"),
                2 => index.to_string(),
                3 => format!(r#""a JSON string {index}""#),
                4 => format!("with:colons:{index}"),
                _ => String::new(),
            };
            (format!("customer-{}", index % 7), value)
        })
        .collect();
    let input: String = sent.iter().map(|(key, value)| format!("{key}:{value}\n")).collect();

    let args = ["produce", "orders", "--key-separator", ":", "--print-offsets", "--batch", "300"];
    let produced = sluice(base, &args, &input);
    assert_success(&produced);
    let offsets: Vec<(u64, u64)> = produced
        .json_lines()
        .iter()
        .map(|line| (line["partition"].as_u64().unwrap(), line["offset"].as_u64().unwrap()))
        .collect();
    assert_eq!(offsets.len(), 1000);

    let consumed = sluice(base, &["consume", "orders", "--max", "1000"], "");
    assert_success(&consumed);
    let records = consumed.json_lines();
    assert_eq!(records.len(), 1000);
    let by_position: BTreeMap<(u64, u64), &Value> = records
        .iter()
        .map(|r| ((r["partition"].as_u64().unwrap(), r["offset"].as_u64().unwrap()), r))
        .collect();
    for ((key, value), position) in sent.iter().zip(&offsets) {
        let record = by_position[position];
        assert_eq!((&record["key"], &record["value"]), (&json!(key), &expected_value(value)));
        assert_eq!((&record["topic"], &record["headers"]), (&json!("orders"), &json!({})));
        assert!(record["timestamp"].as_i64().unwrap() > 0, "{record}");
    }
    let mut sent_per_key: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for (key, value) in &sent {
        sent_per_key.entry(key).or_default().push(expected_value(value));
    }
    let mut seen_per_key: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for record in &records {
        seen_per_key
            .entry(record["key"].as_str().unwrap())
            .or_default()
            .push(record["value"].clone());
    }
    assert_eq!(seen_per_key, sent_per_key);

    let few =
        sluice(base, &["consume", "orders", "--max", "7", "--partition", "1", "--from", "2"], "");
    assert_success(&few);
    let few_offsets: Vec<u64> =
        few.json_lines().iter().map(|r| r["offset"].as_u64().unwrap()).collect();
    assert_eq!(few_offsets, (2..9).collect::<Vec<_>>());
}

/// Waits for `child` to exit, failing the test past `deadline`.
fn wait_until_exit(child: &mut Child, deadline: Instant) -> std::process::ExitStatus {
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the consumer did not stop");
        std::thread::sleep(Duration::from_millis(10)); // polling the child's exit
    }
}

#[test]
fn follow_prints_new_records_and_stops_after_the_idle_timeout() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let base = server.base.as_str();
    assert_success(&sluice(base, &["topic", "create", "live", "--partitions", "2"], ""));
    assert_success(&sluice(base, &["produce", "live"], "old 1\nold 2\nold 3\nold 4\n"));

    let args = ["consume", "live", "--from", "latest", "--follow", "--idle-timeout-ms", "1500"];
    let mut consumer = client(base, &args)
        .env("RUST_LOG", "sluice=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The consumer logs its start positions once it has read them; produce only after that.
    let mut stderr = BufReader::new(consumer.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("consuming from") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "the consumer exited early");
    }
    let produced_at = Instant::now();
    assert_success(&sluice(base, &["produce", "live"], "new 1\n{\"new\": 2}\nnew 3\n"));

    let status = wait_until_exit(&mut consumer, Instant::now() + Duration::from_secs(30));
    assert!(status.success(), "{status}");
    assert!(
        produced_at.elapsed() >= Duration::from_millis(1500),
        "stopped before the idle timeout"
    );
    let mut stdout = String::new();
    consumer.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    let values: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["value"].clone())
        .collect();
    assert_eq!(values, [json!("new 1"), json!({"new": 2}), json!("new 3")]);
}

#[test]
fn failures_name_the_topic_the_line_or_the_server() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let base = server.base.as_str();

    let unknown = sluice(base, &["produce", "nope"], "1\n");
    assert_eq!(unknown.code, 1);
    assert!(
        unknown.stderr.contains("nope") && unknown.stderr.contains("(code 1001)"),
        "{}",
        unknown.stderr
    );
    assert!(unknown.stderr.contains("0 records were acknowledged"), "{}", unknown.stderr);

    assert_success(&sluice(base, &["topic", "create", "t"], ""));
    let args = ["produce", "t", "--key-separator", "=", "--batch", "2"];
    let bad_line = sluice(base, &args, "a=1\nb=2\nc=3\nno separator\nd=4\n");
    assert_eq!(bad_line.code, 1);
    assert!(bad_line.stderr.contains("line 4"), "{}", bad_line.stderr);
    assert!(bad_line.stderr.contains("2 records were acknowledged"), "{}", bad_line.stderr);
    let stored = sluice(base, &["consume", "t"], "");
    let keys: Vec<Value> = stored.json_lines().iter().map(|r| r["key"].clone()).collect();
    assert_eq!(keys, [json!("a"), json!("b")], "nothing after the first full request was sent");

    // Start by time: a time before the records gives them all, one after them gives none, and a
    // malformed time is the server's 400.
    let since_2000 = sluice(base, &["consume", "t", "--from", "@2000-01-01T00:00:00Z"], "");
    assert_success(&since_2000);
    assert_eq!(since_2000.json_lines().len(), 2);
    let after_all = sluice(base, &["consume", "t", "--from", "@2999-01-01T00:00:00+01:00"], "");
    assert_success(&after_all);
    assert!(after_all.json_lines().is_empty());
    let malformed = sluice(base, &["consume", "t", "--from", "@yesterday"], "");
    assert_eq!(malformed.code, 1);
    assert!(malformed.stderr.contains("RFC 3339"), "{}", malformed.stderr);

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stopped = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let commands = [
        &["topic", "list"][..],
        &["produce", "t"],
        &["consume", "t"],
        &["consume", "t", "--group", "g"],
        &["group", "list"],
    ];
    for args in commands {
        let refused = sluice(&stopped, args, "1\n");
        assert_eq!(refused.code, 1, "{args:?}");
        assert!(
            refused.stderr.contains(&stopped) && refused.stderr.contains("sluice serve"),
            "{}",
            refused.stderr
        );
    }
}

#[test]
fn an_id_prefix_makes_sending_the_same_input_again_append_nothing() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let base = server.base.as_str();
    assert_success(&sluice(base, &["topic", "create", "t"], ""));
    let args = ["produce", "t", "--id-prefix", "import-", "--header", "source=cli", "--key", "k"];
    for _ in 0..2 {
        assert_success(&sluice(base, &args, "one\ntwo\nthree\n"));
    }
    let records = sluice(base, &["consume", "t"], "").json_lines();
    let headers: Vec<Value> = records.iter().map(|r| r["headers"].clone()).collect();
    assert_eq!(
        headers,
        (1..=3)
            .map(|n| json!({"ce_id": format!("import-{n}"), "source": "cli"}))
            .collect::<Vec<_>>()
    );
    assert!(records.iter().all(|r| r["key"] == "k"));
}

/// Creates `topic` with 4 partitions and produces 200 records with distinct keys; returns where
/// each landed, as (partition, offset).
fn produce_200_keyed(base: &str, topic: &str) -> BTreeSet<(u64, u64)> {
    assert_success(&sluice(base, &["topic", "create", topic, "--partitions", "4"], ""));
    let input: String = (0..200).map(|index| format!("key-{index}:value {index}\n")).collect();
    let args = ["produce", topic, "--key-separator", ":", "--print-offsets"];
    let produced = sluice(base, &args, &input);
    assert_success(&produced);
    let positions = positions(&produced);
    assert_eq!(positions.len(), 200);
    positions
}

/// The (partition, offset) of every JSON line a run printed.
fn positions(run: &Run) -> BTreeSet<(u64, u64)> {
    run.json_lines()
        .iter()
        .map(|line| (line["partition"].as_u64().unwrap(), line["offset"].as_u64().unwrap()))
        .collect()
}

/// `sluice group describe <group> --output json`, parsed.
fn describe_group(base: &str, group: &str) -> Value {
    let described = sluice(base, &["group", "describe", group, "--output", "json"], "");
    assert_success(&described);
    serde_json::from_str(&described.stdout).unwrap()
}

/// The sum of `field` over a described group's partitions (a missing committed offset is 0).
fn partition_sum(described: &Value, field: &str) -> u64 {
    let partitions = described["partitions"].as_array().unwrap();
    partitions.iter().map(|partition| partition[field].as_u64().unwrap_or(0)).sum()
}

#[test]
fn two_group_members_together_print_every_record_and_commit_them_all() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let base = server.base.as_str();
    let produced = produce_200_keyed(base, "orders");

    let members: Vec<_> = (0..2)
        .map(|_| {
            let child = client(base, &["consume", "orders", "--group", "g"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            std::thread::spawn(move || child.wait_with_output().unwrap())
        })
        .collect();
    let mut printed = BTreeSet::new();
    for member in members {
        let output = member.join().unwrap();
        let run = Run {
            code: output.status.code().unwrap(),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        };
        assert_success(&run);
        printed.extend(positions(&run));
        let lines = run.json_lines();
        assert!(lines.iter().all(|line| line["topic"] == "orders"), "{}", run.stdout);
        for line in lines {
            let index = line["key"].as_str().unwrap().strip_prefix("key-").unwrap();
            assert_eq!(line["value"], json!(format!("value {index}")));
        }
    }
    assert_eq!(printed, produced, "every record printed at least once");
    let described = describe_group(base, "g");
    assert_eq!(partition_sum(&described, "lag"), 0, "{described}");
    assert_eq!(described["members"], json!([]), "both members left: {described}");
}

#[test]
fn a_group_consumer_with_max_commits_exactly_what_it_printed() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let base = server.base.as_str();
    let produced = produce_200_keyed(base, "orders");

    let first = sluice(base, &["consume", "orders", "--group", "g", "--max", "10"], "");
    assert_success(&first);
    assert_eq!(first.json_lines().len(), 10);
    let described = describe_group(base, "g");
    assert_eq!(partition_sum(&described, "committed"), 10, "{described}");
    assert_eq!(partition_sum(&described, "lag"), 190, "{described}");

    let rest = sluice(base, &["consume", "orders", "--group", "g"], "");
    assert_success(&rest);
    assert_eq!(rest.json_lines().len(), 190, "nothing printed twice");
    let mut printed = positions(&first);
    printed.extend(positions(&rest));
    assert_eq!(printed, produced);

    let table = sluice(base, &["group", "describe", "g"], "");
    assert_success(&table);
    assert!(table.stdout.contains("lag         0\n"), "{}", table.stdout);
    let partition_rows = table.stdout.lines().skip_while(|line| !line.starts_with("TOPIC"));
    assert_eq!(partition_rows.count(), 5, "a header and 4 partitions: {}", table.stdout);
}

#[test]
fn group_reset_moves_the_committed_offsets_and_passes_on_refusals() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let base = server.base.as_str();
    produce_200_keyed(base, "orders");
    assert_success(&sluice(base, &["consume", "orders", "--group", "g"], ""));
    assert_eq!(partition_sum(&describe_group(base, "g"), "lag"), 0);

    let reset = sluice(base, &["group", "reset", "g", "--to", "earliest"], "");
    assert_success(&reset);
    let rows: Vec<&str> = reset.stdout.lines().collect();
    assert_eq!(rows.len(), 5, "{}", reset.stdout);
    assert!(rows[0].starts_with("TOPIC") && rows[1..].iter().all(|row| row.ends_with(" 0")));
    assert_eq!(partition_sum(&describe_group(base, "g"), "lag"), 200);

    let args = ["group", "reset", "g", "--to", "3", "--topic", "orders", "--output", "json"];
    let reset = sluice(base, &args, "");
    assert_success(&reset);
    let committed: Value = serde_json::from_str(&reset.stdout).unwrap();
    let described = describe_group(base, "g");
    for partition in described["partitions"].as_array().unwrap() {
        let expected = partition["high_watermark"].as_u64().unwrap().min(3);
        assert_eq!(partition["committed"], json!(expected), "{committed}");
    }

    let future = ["group", "reset", "g", "--to", "@2999-01-01T00:00:00Z"];
    assert_success(&sluice(base, &future, ""));
    assert_eq!(partition_sum(&describe_group(base, "g"), "lag"), 0);

    let refused = sluice(base, &["group", "reset", "g", "--to", "sideways"], "");
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let response =
        agent.post(server.url("/v1/groups/g/reset")).send_json(json!({"to": "sideways"}));
    let body: Value =
        serde_json::from_str(&response.unwrap().into_body().read_to_string().unwrap()).unwrap();
    let expected =
        format!("error: {} (code {})\n", body["message"].as_str().unwrap(), body["error_code"]);
    assert_eq!(refused.stderr, expected);

    let listed = sluice(base, &["group", "list", "--output", "json"], "");
    assert_success(&listed);
    let names: Vec<String> = serde_json::from_str(&listed.stdout).unwrap();
    assert!(names.contains(&"g".to_owned()), "{names:?}");
    let table = sluice(base, &["group", "list"], "");
    assert!(table.stdout.lines().any(|line| line == "g"), "{}", table.stdout);
}

#[test]
fn an_interrupted_group_consumer_commits_and_leaves_the_group() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let base = server.base.as_str();
    produce_200_keyed(base, "orders");
    let mut consumer = client(base, &["consume", "orders", "--group", "g", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(consumer.stdout.take().unwrap());
    for _ in 0..200 {
        let mut line = String::new();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "the consumer exited early");
    }
    let interrupt = Command::new("kill").args(["-INT", &consumer.id().to_string()]).status();
    assert!(interrupt.unwrap().success());
    let status = wait_until_exit(&mut consumer, Instant::now() + Duration::from_secs(30));
    assert!(status.success(), "{status}");
    let described = describe_group(base, "g");
    assert_eq!(described["members"], json!([]), "{described}");
    assert_eq!(partition_sum(&described, "lag"), 0, "{described}");
    let again = sluice(base, &["group", "reset", "g", "--to", "earliest"], "");
    assert_success(&again);
}

#[test]
fn group_consume_refuses_options_it_cannot_honour() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let base = server.base.as_str();
    assert_success(&sluice(base, &["topic", "create", "t"], ""));
    let both = sluice(base, &["consume", "t", "--group", "g", "--partition", "0"], "");
    assert_eq!(both.code, 2, "{}", both.stderr);
    let offset = sluice(base, &["consume", "t", "--group", "g", "--from", "5"], "");
    assert_eq!(offset.code, 1, "{}", offset.stderr);
    assert!(offset.stderr.contains("sluice group reset g --to OFFSET"), "{}", offset.stderr);
    let unknown = sluice(base, &["consume", "nope", "--group", "g"], "");
    assert_eq!(unknown.code, 1);
    assert!(unknown.stderr.contains("(code 1001)"), "{}", unknown.stderr);
}
