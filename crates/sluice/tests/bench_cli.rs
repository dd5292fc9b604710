//! End-to-end tests of `sluice bench log`, `bench produce`, `bench consume` and
//! `bench streams`: they run the real binary and read what it prints. They check the output's
//! shape, never its speed.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Output};

const WORKLOADS: [&str; 12] = [
    "disk-seq-write",
    "disk-4k-fdatasync",
    "disk-4k-overwrite-fdatasync",
    "append-none-1w",
    "read",
    "append-none-8w",
    "append-interval-1w",
    "append-interval-8w",
    "append-fsync-1w",
    "append-fsync-8w",
    "append-fsync-1w-1rec",
    "append-fsync-8w-1rec",
];

const NUMERIC_FIELDS: [&str; 5] =
    ["records_per_sec", "bytes_per_sec", "p50_us", "p99_us", "ratio_to_disk"];

fn sluice(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice")).args(args).output().expect("running sluice")
}

/// Splits one flat JSON object of numbers and plain strings into its fields, failing on
/// anything else. Enough for the benchmark's output, which has no nesting and no escapes.
fn parse_flat_object(line: &str) -> BTreeMap<String, String> {
    let body = line
        .strip_prefix('{')
        .and_then(|rest| rest.strip_suffix('}'))
        .unwrap_or_else(|| panic!("not a JSON object: {line}"));
    let mut fields = BTreeMap::new();
    for field in body.split(',') {
        let (key, value) = field.split_once(':').unwrap_or_else(|| panic!("bad field {field}"));
        let key = key.strip_prefix('"').and_then(|key| key.strip_suffix('"'));
        let key = key.unwrap_or_else(|| panic!("unquoted key in {line}"));
        assert!(fields.insert(key.to_owned(), value.to_owned()).is_none(), "{key} twice: {line}");
    }
    fields
}

#[test]
fn bench_log_json_reports_every_workload_with_positive_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let bench_dir = dir.path().join("b");
    let output = sluice(&[
        "bench",
        "log",
        "--json",
        "--total-bytes",
        "2M",
        "--batch-records",
        "100",
        "--repeat",
        "2",
        "--dir",
        bench_dir.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "exit {:?}; stderr:\n{stderr}", output.status);
    let stdout = String::from_utf8(output.stdout).unwrap();
    let mut seen = Vec::new();
    for line in stdout.lines() {
        let fields = parse_flat_object(line);
        let workload = fields["workload"].strip_prefix('"').and_then(|w| w.strip_suffix('"'));
        seen.push(workload.unwrap_or_else(|| panic!("unquoted workload: {line}")).to_owned());
        for name in NUMERIC_FIELDS {
            let value = fields.get(name).unwrap_or_else(|| panic!("no {name} in {line}"));
            let number: f64 =
                value.parse().unwrap_or_else(|_| panic!("{name} not a number: {line}"));
            assert!(number > 0.0, "{name} is not positive: {line}");
        }
        let has_latency_ratio = fields.contains_key("latency_ratio_to_disk");
        assert_eq!(has_latency_ratio, line.contains("-1rec"), "{line}");
    }
    assert_eq!(seen, WORKLOADS, "stdout:\n{stdout}");
    let left: Vec<_> = std::fs::read_dir(&bench_dir).unwrap().collect();
    assert!(left.is_empty(), "workload directories left behind: {left:?}");
}

#[test]
fn bench_log_refuses_an_unknown_workload_and_lists_the_valid_ones() {
    let output = sluice(&["bench", "log", "--workloads", "append-none-1w,nope"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("nope"), "{stderr}");
    for workload in WORKLOADS {
        assert!(stderr.contains(workload), "{workload} not listed in:\n{stderr}");
    }
}

/// The fields of every `bench produce|consume --json` line.
const TOPIC_BENCH_FIELDS: [&str; 5] =
    ["records_per_sec", "bytes_per_sec", "p50_us", "p99_us", "p999_us"];

/// Runs `sluice bench <args> --json` in a fresh `--dir` and returns each line's workload name and
/// numeric fields, checking that every field is present and positive, that the percentiles are
/// ordered, and that the directory is left empty.
fn run_topic_bench(args: &[&str]) -> Vec<(String, BTreeMap<String, f64>)> {
    let dir = tempfile::tempdir().expect("creating a temporary directory");
    let bench_dir = dir.path().join("b");
    let mut all_args = vec!["bench"];
    all_args.extend_from_slice(args);
    all_args.extend_from_slice(&[
        "--json",
        "--repeat",
        "1",
        "--dir",
        bench_dir.to_str().expect("a UTF-8 path"),
    ]);
    let output = sluice(&all_args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "exit {:?}; stderr:\n{stderr}", output.status);
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
    let mut lines = Vec::new();
    for line in stdout.lines() {
        let fields = parse_flat_object(line);
        assert_eq!(fields.len(), 6, "expected exactly six fields: {line}");
        let workload = fields["workload"].strip_prefix('"').and_then(|w| w.strip_suffix('"'));
        let workload = workload.unwrap_or_else(|| panic!("unquoted workload: {line}")).to_owned();
        let mut numbers = BTreeMap::new();
        for name in TOPIC_BENCH_FIELDS {
            let value = fields.get(name).unwrap_or_else(|| panic!("no {name} in {line}"));
            let number: f64 =
                value.parse().unwrap_or_else(|_| panic!("{name} not a number: {line}"));
            assert!(number > 0.0, "{name} is not positive: {line}");
            numbers.insert(name.to_owned(), number);
        }
        assert!(numbers["p50_us"] <= numbers["p99_us"], "{line}");
        assert!(numbers["p99_us"] <= numbers["p999_us"], "{line}");
        lines.push((workload, numbers));
    }
    let left: Vec<_> = std::fs::read_dir(&bench_dir).expect("listing --dir").collect();
    assert!(left.is_empty(), "directories left behind: {left:?}");
    lines
}

fn names(lines: &[(String, BTreeMap<String, f64>)]) -> Vec<&str> {
    lines.iter().map(|(name, _)| name.as_str()).collect()
}

#[test]
fn bench_produce_json_reports_both_targets_and_every_concurrency() {
    let lines = run_topic_bench(&["produce", "--total-bytes", "256K", "--concurrency", "1,2"]);
    let expected = [
        "produce-embedded-c1-b100",
        "produce-embedded-c2-b100",
        "produce-server-c1-b100",
        "produce-server-c2-b100",
    ];
    assert_eq!(names(&lines), expected);
    // 256 KiB of 1 KiB values in batches of 100: three requests, 300 records of 1024 bytes.
    for (name, numbers) in &lines {
        let record_bytes = numbers["bytes_per_sec"] / numbers["records_per_sec"];
        assert!((record_bytes - 1024.0).abs() < 0.01, "{name}: {record_bytes} bytes per record");
    }
}

#[test]
fn bench_consume_json_reports_groups_and_plain_reads_for_both_targets() {
    let lines = run_topic_bench(&["consume", "--total-bytes", "256K", "--concurrency", "1,2"]);
    let expected = [
        "consume-embedded-c1",
        "consume-embedded-c2",
        "consume-embedded-fetch",
        "consume-server-c1",
        "consume-server-c2",
        "consume-server-fetch",
    ];
    assert_eq!(names(&lines), expected);
}

#[test]
fn bench_consume_measures_a_given_server_and_deletes_its_topics() {
    let data = tempfile::tempdir().unwrap();
    let server = common::Server::start(data.path());
    let lines = run_topic_bench(&[
        "consume",
        "--target",
        "server",
        "--server",
        &server.base,
        "--total-bytes",
        "64K",
        "--record-bytes",
        "512",
        "--batch-records",
        "10",
        "--concurrency",
        "3",
    ]);
    assert_eq!(names(&lines), ["consume-server-c3", "consume-server-fetch"]);
    let list = |what: &str| {
        let output = sluice(&["--server", &server.base, what, "list", "--output", "json"]);
        assert!(output.status.success(), "{what} list failed");
        String::from_utf8(output.stdout).unwrap()
    };
    // The group's committed offsets stay (there is no group deletion): proof this server was used.
    let groups = list("group");
    assert!(groups.contains("-consume-server-c3\""), "{groups}");
    assert_eq!(list("topic").trim(), "[]");
}

#[test]
fn bench_streams_json_reports_the_disk_and_every_workload_for_both_targets() {
    let dir = tempfile::tempdir().unwrap();
    let bench_dir = dir.path().join("b");
    #[rustfmt::skip]
    let output = sluice(&[
        "bench", "streams", "--json", "--repeat", "1",
        "--dir", bench_dir.to_str().unwrap(),
        "--disk-bytes", "64K", "--streams", "40", "--appends", "60", "--concurrency", "1,4",
        "--batch-appends", "4", "--batch-writers", "2",
        // A read count below the stream's length makes every load follow `next`.
        "--load-events", "15", "--loads", "2", "--read-count", "4", "--event-bytes", "200",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "exit {:?}; stderr:\n{stderr}", output.status);
    let stdout = String::from_utf8(output.stdout).unwrap();
    let mut seen = Vec::new();
    for line in stdout.lines() {
        let row: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}"));
        let workload = row["workload"].as_str().unwrap_or_else(|| panic!("no workload: {line}"));
        for field in ["ops", "ops_per_sec", "mb_per_sec", "p50_us", "p99_us"] {
            let number = row[field].as_f64().unwrap_or_else(|| panic!("no {field} in {line}"));
            assert!(number > 0.0, "{field} is not positive: {line}");
        }
        assert!(row["p50_us"].as_f64() <= row["p99_us"].as_f64(), "{line}");
        let appends = workload.starts_with("streams-") && !workload.contains("-load-");
        assert_eq!(row["sync_ratio"].is_f64(), appends, "{line}");
        assert_eq!(row["events_per_sec"].is_f64(), workload.starts_with("streams-"), "{line}");
        seen.push((workload.to_owned(), row["ops"].as_u64(), row["events"].as_u64()));
    }
    let mut expected = vec![
        ("disk-seq-write".to_owned(), Some(1), Some(0)),
        ("disk-4k-fdatasync".to_owned(), Some(16), Some(0)),
    ];
    for target in ["embedded", "server"] {
        expected.extend([
            (format!("streams-{target}-c1"), Some(60), Some(60)),
            (format!("streams-{target}-c4"), Some(60), Some(60)),
            (format!("streams-{target}-batch100"), Some(4), Some(400)),
            // Two loads of all 15 events; two of the snapshot (at version 5) and 9 after it.
            (format!("streams-{target}-load-full"), Some(2), Some(30)),
            (format!("streams-{target}-load-snapshot"), Some(2), Some(18)),
        ]);
    }
    assert_eq!(seen, expected, "stdout:\n{stdout}");
    let left: Vec<_> = std::fs::read_dir(&bench_dir).unwrap().collect();
    assert!(left.is_empty(), "directories left behind: {left:?}");
}

#[test]
fn version_prints_the_package_version() {
    let output = sluice(&["--version"]);
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.trim(), format!("sluice {}", env!("CARGO_PKG_VERSION")));
}
