//! Turning measurements into results: rates, latency percentiles and ratios to the disk
//! baselines, printed as a fixed-width table or as one JSON object per line.
//!
//! Ratios: every log workload's bytes per second over `disk-seq-write`'s; for single-record
//! appends also their p50 latency over `disk-4k-fdatasync`'s. A ratio whose baseline was not
//! run (a `--workloads` subset) is shown as `-` and written as JSON `null`. The JSON is written
//! by hand: it holds only numbers and the catalogue's ASCII workload names.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use super::workload::Kind;
use super::{disk, Measurement, Settings};

/// A ratio of a result to a disk baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Ratio {
    /// The row has no such ratio.
    NotApplicable,
    /// The row has one, but its baseline workload was not run.
    BaselineNotRun,
    Value(f64),
}

/// One workload's results.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub workload: &'static str,
    pub records_per_sec: f64,
    pub bytes_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub ratio_to_disk: Ratio,
    pub latency_ratio_to_disk: Ratio,
}

/// The disk measurements the other rows are divided by.
#[derive(Debug, Clone, Copy)]
struct Baselines {
    sequential_bytes_per_sec: Option<f64>,
    sync_p50_ns: Option<f64>,
}

/// One row per measurement, in the same order.
pub fn rows(measurements: &[Measurement]) -> Vec<Row> {
    let find =
        |kind: Kind| measurements.iter().find(|measurement| measurement.workload.kind == kind);
    let baselines = Baselines {
        sequential_bytes_per_sec: find(Kind::DiskSequentialWrite)
            .map(|sequential| per_second(sequential.bytes, sequential.elapsed)),
        sync_p50_ns: find(Kind::DiskSyncLatency)
            .map(|sync| percentile(&sync.latencies_ns, 50) as f64),
    };
    measurements.iter().map(|measurement| row(measurement, baselines)).collect()
}

fn row(measurement: &Measurement, baselines: Baselines) -> Row {
    let bytes_per_sec = per_second(measurement.bytes, measurement.elapsed);
    let p50_ns = percentile(&measurement.latencies_ns, 50) as f64;
    let p99_ns = percentile(&measurement.latencies_ns, 99) as f64;
    let throughput_ratio = ratio(bytes_per_sec, baselines.sequential_bytes_per_sec);
    let (ratio_to_disk, latency_ratio_to_disk) = match measurement.workload.kind {
        Kind::DiskSequentialWrite | Kind::DiskSyncLatency => {
            (Ratio::Value(1.0), Ratio::NotApplicable)
        }
        Kind::Append(plan) if plan.single_record => {
            (throughput_ratio, ratio(p50_ns, baselines.sync_p50_ns))
        }
        Kind::Append(_) | Kind::Read => (throughput_ratio, Ratio::NotApplicable),
    };
    Row {
        workload: measurement.workload.name,
        records_per_sec: per_second(measurement.records, measurement.elapsed),
        bytes_per_sec,
        p50_us: p50_ns / 1000.0,
        p99_us: p99_ns / 1000.0,
        ratio_to_disk,
        latency_ratio_to_disk,
    }
}

fn ratio(value: f64, baseline: Option<f64>) -> Ratio {
    baseline.map_or(Ratio::BaselineNotRun, |baseline| Ratio::Value(value / baseline))
}

fn per_second(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
}

/// The nearest-rank `percent`th percentile of `sorted` (ascending): the smallest value with at
/// least `percent`% of the values at or below it.
///
/// # Panics
/// If `sorted` is empty or `percent` is not in 1..=100.
pub fn percentile(sorted: &[u64], percent: u64) -> u64 {
    assert!(!sorted.is_empty(), "percentile of no values");
    assert!((1..=100).contains(&percent), "percentile {percent} is not in 1..=100");
    let rank = (percent * sorted.len() as u64).div_ceil(100);
    sorted[rank as usize - 1]
}

/// The machine and settings the table's numbers belong to.
pub fn print_facts(dir: &Path, settings: &Settings) {
    let cpus = std::thread::available_parallelism().map_or(0, |count| count.get());
    let filesystem = disk::filesystem(dir).unwrap_or_else(|| "unknown".to_owned());
    let total_mib = settings.total_bytes as f64 / f64::from(1 << 20);
    println!("nproc        {cpus}");
    println!("filesystem   {filesystem}");
    println!("directory    {}", dir.display());
    println!("total bytes  {} ({total_mib:.1} MiB) per workload", settings.total_bytes);
    println!("batch        {} records x {} bytes", settings.batch_records, settings.record_bytes);
    println!();
}

/// The results as a fixed-width table; MB are 10^6 bytes.
pub fn print_table(rows: &[Row]) {
    println!(
        "{:<22} {:>12} {:>9} {:>10} {:>10} {:>13} {:>9}",
        "workload", "records/s", "MB/s", "p50 µs", "p99 µs", "ratio_to_disk", "lat_ratio"
    );
    for row in rows {
        println!(
            "{:<22} {:>12.0} {:>9.1} {:>10.1} {:>10.1} {:>13} {:>9}",
            row.workload,
            row.records_per_sec,
            row.bytes_per_sec / 1e6,
            row.p50_us,
            row.p99_us,
            table_ratio(row.ratio_to_disk),
            table_ratio(row.latency_ratio_to_disk),
        );
    }
}

fn table_ratio(ratio: Ratio) -> String {
    match ratio {
        Ratio::Value(value) => format!("{value:.3}"),
        Ratio::NotApplicable | Ratio::BaselineNotRun => "-".to_owned(),
    }
}

/// The results as one JSON object per line.
pub fn print_json(rows: &[Row]) {
    for row in rows {
        println!("{}", json_line(row));
    }
}

fn json_line(row: &Row) -> String {
    // Workload names come from the catalogue: ASCII letters, digits and dashes, nothing to escape.
    let mut line = format!("{{\"workload\":\"{}\"", row.workload);
    let fields = [
        ("records_per_sec", row.records_per_sec, 1),
        ("bytes_per_sec", row.bytes_per_sec, 1),
        ("p50_us", row.p50_us, 3),
        ("p99_us", row.p99_us, 3),
    ];
    for (name, value, decimals) in fields {
        write!(line, ",\"{name}\":{}", json_number(value, decimals)).expect("writing to a String");
    }
    for (name, ratio) in
        [("ratio_to_disk", row.ratio_to_disk), ("latency_ratio_to_disk", row.latency_ratio_to_disk)]
    {
        let value = match ratio {
            Ratio::NotApplicable => continue,
            Ratio::BaselineNotRun => "null".to_owned(),
            Ratio::Value(value) => json_number(value, 4),
        };
        write!(line, ",\"{name}\":{value}").expect("writing to a String");
    }
    line.push('}');
    line
}

/// `value` with `decimals` decimals; `null` for infinities and NaN, which JSON cannot hold.
fn json_number(value: f64, decimals: usize) -> String {
    if value.is_finite() {
        format!("{value:.decimals$}")
    } else {
        "null".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::{json_line, percentile, Ratio, Row};

    #[test]
    fn percentile_is_nearest_rank() {
        let hundred: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&hundred, 50), 50);
        assert_eq!(percentile(&hundred, 99), 99);
        assert_eq!(percentile(&hundred, 100), 100);
        assert_eq!(percentile(&hundred, 1), 1);
        assert_eq!(percentile(&[7], 50), 7);
        assert_eq!(percentile(&[7], 99), 7);
        assert_eq!(percentile(&[1, 2, 3], 50), 2);
        assert_eq!(percentile(&[1, 2, 3, 4], 50), 2);
        assert_eq!(percentile(&[1, 2, 3, 4], 99), 4);
    }

    #[test]
    #[should_panic(expected = "percentile of no values")]
    fn percentile_of_nothing_is_a_bug() {
        percentile(&[], 50);
    }

    #[test]
    fn json_line_omits_absent_ratios_and_nulls_missing_baselines() {
        let mut row = Row {
            workload: "append-fsync-1w-1rec",
            records_per_sec: 1500.25,
            bytes_per_sec: 2e6,
            p50_us: 612.5,
            p99_us: f64::INFINITY,
            ratio_to_disk: Ratio::Value(0.5),
            latency_ratio_to_disk: Ratio::BaselineNotRun,
        };
        assert_eq!(
            json_line(&row),
            "{\"workload\":\"append-fsync-1w-1rec\",\"records_per_sec\":1500.2,\
             \"bytes_per_sec\":2000000.0,\"p50_us\":612.500,\"p99_us\":null,\
             \"ratio_to_disk\":0.5000,\"latency_ratio_to_disk\":null}"
        );
        row.latency_ratio_to_disk = Ratio::NotApplicable;
        assert!(!json_line(&row).contains("latency_ratio_to_disk"));
    }
}
