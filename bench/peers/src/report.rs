//! The median round of every (workload, system, setting), Sluice's rate over each peer's for the
//! same workload, printed as a table and written as JSON.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde_json::{json, Map, Value};

const WORKLOAD_ORDER: [&str; 13] = [
    "disk-seq-write",
    "disk-4k-fdatasync",
    "disk-4k-overwrite-fdatasync",
    "queue-w1",
    "queue-w4",
    "queue-w16",
    "publish-c1",
    "publish-c64",
    "consume",
    "append-c1",
    "append-c64",
    "append-b100",
    "latency-1000",
];
const SYSTEM_ORDER: [&str; 5] = ["disk", "sluice", "rabbitmq", "nats", "postgres"];

fn rate(row: &Value) -> f64 {
    row["messages_per_second"].as_f64().unwrap_or(0.0)
}

fn rank(list: &[&str], name: &str) -> usize {
    list.iter().position(|item| *item == name).unwrap_or(list.len())
}

fn format_ns(ns: Option<u64>) -> String {
    match ns {
        None => "-".to_owned(),
        Some(ns) if ns >= 1_000_000 => format!("{:.2} ms", ns as f64 / 1e6),
        Some(ns) => format!("{:.0} µs", ns as f64 / 1e3),
    }
}

pub fn run(input: &Path, out: &Path, meta: &[String]) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(input).with_context(|| format!("reading {}", input.display()))?;
    let rows: Vec<Value> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("parsing the rounds file")?;

    // Group the rounds of each (workload, system, setting), in first-seen order.
    let mut groups: Vec<(String, String, String, Vec<Value>)> = Vec::new();
    for row in rows {
        let key = |name: &str| row[name].as_str().unwrap_or("?").to_owned();
        let (workload, system, setting) = (key("workload"), key("system"), key("setting"));
        match groups.iter_mut().find(|g| g.0 == workload && g.1 == system && g.2 == setting) {
            Some(group) => group.3.push(row),
            None => groups.push((workload, system, setting, vec![row])),
        }
    }
    groups.sort_by_key(|g| (rank(&WORKLOAD_ORDER, &g.0), rank(&SYSTEM_ORDER, &g.1)));

    let medians: Vec<Value> = groups
        .iter_mut()
        .map(|(workload, _, _, rounds)| {
            if workload.starts_with("latency") {
                // The median round of a latency run is the one with the median p99.
                rounds.sort_by_key(|round| round["p99_ns"].as_u64().unwrap_or(u64::MAX));
            } else {
                rounds.sort_by(|a, b| rate(a).total_cmp(&rate(b)));
            }
            rounds[rounds.len() / 2].clone()
        })
        .collect();
    // Where Sluice has two rows (publish: through HTTP and through the Kafka door; queue: lease
    // then ack, and ack-next), peers are compared with the faster; both rows are in the table.
    let sluice_rate = |workload: &str| {
        medians
            .iter()
            .filter(|m| m["workload"] == workload && m["system"] == "sluice")
            .map(rate)
            .reduce(f64::max)
    };

    let mut table = String::new();
    writeln!(
        table,
        "{:<18} {:<9} {:<52} {:>7} {:>11} {:>10} {:>10} {:>12}",
        "workload", "system", "setting", "durable", "messages/s", "p50", "p99", "sluice/peer"
    )?;
    let mut results = Vec::new();
    for ((workload, system, setting, rounds), median) in groups.iter().zip(&medians) {
        let ratio = match sluice_rate(workload) {
            // A latency run's rate is its fixed schedule; only its percentiles compare.
            Some(sluice)
                if system != "sluice"
                    && system != "disk"
                    && !workload.starts_with("latency")
                    && rate(median) > 0.0 =>
            {
                Some(sluice / rate(median))
            }
            _ => None,
        };
        let durable = median["durable"].as_str().unwrap_or("?");
        let (p50, p99) = (median["p50_ns"].as_u64(), median["p99_ns"].as_u64());
        writeln!(
            table,
            "{workload:<18} {system:<9} {setting:<52} {:>7} {:>11.0} {:>10} {:>10} {:>12}",
            durable,
            rate(median),
            format_ns(p50),
            format_ns(p99),
            ratio.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x")),
        )?;
        results.push(json!({
            "workload": workload, "system": system, "setting": setting, "durable": durable,
            "median": median, "sluice_over_peer": ratio,
            "rounds_messages_per_second": rounds.iter().map(rate).collect::<Vec<_>>(),
        }));
    }
    print!("{table}");

    let mut meta_map = Map::new();
    for item in meta {
        let (key, value) = item.split_once('=').unwrap_or((item, ""));
        meta_map.insert(key.to_owned(), Value::String(value.to_owned()));
    }
    let document = json!({"meta": meta_map, "rows": results, "table": table});
    std::fs::write(out, serde_json::to_string_pretty(&document)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!("results written to {}", out.display());
    Ok(())
}
