//! End-to-end tests of `sluice bench log`: they run the real binary and read what it prints.
//! They check the output's shape, never its speed.

use std::collections::BTreeMap;
use std::process::{Command, Output};

const WORKLOADS: [&str; 11] = [
    "disk-seq-write",
    "disk-4k-fdatasync",
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

#[test]
fn version_prints_the_package_version() {
    let output = sluice(&["--version"]);
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.trim(), format!("sluice {}", env!("CARGO_PKG_VERSION")));
}
