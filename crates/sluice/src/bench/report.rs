//! Turning measurements into results: rates, latency percentiles and ratios to the disk
//! baselines, printed as a fixed-width table or as one JSON object per line.
//!
//! Ratios (`sluice bench log` only): every log workload's bytes per second over
//! `disk-seq-write`'s; for single-record appends also their p50 latency over
//! `disk-4k-fdatasync`'s. A ratio whose baseline was not run (a `--workloads` subset) is shown as
//! `-` and written as JSON `null`. The JSON is written by hand: it holds only numbers and
//! workload names made of ASCII letters, digits and dashes.

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
    pub workload: String,
    pub records_per_sec: f64,
    pub bytes_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
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
    let volume = (measurement.records, measurement.bytes);
    let mut row = plain_row(
        measurement.workload.name,
        volume,
        measurement.elapsed,
        &measurement.latencies_ns,
    );
    let throughput_ratio = ratio(row.bytes_per_sec, baselines.sequential_bytes_per_sec);
    (row.ratio_to_disk, row.latency_ratio_to_disk) = match measurement.workload.kind {
        Kind::DiskSequentialWrite | Kind::DiskSyncLatency | Kind::DiskOverwriteSyncLatency => {
            (Ratio::Value(1.0), Ratio::NotApplicable)
        }
        Kind::Append(plan) if plan.single_record => {
            let p50_ns = percentile(&measurement.latencies_ns, 50) as f64;
            (throughput_ratio, ratio(p50_ns, baselines.sync_p50_ns))
        }
        Kind::Append(_) | Kind::Read => (throughput_ratio, Ratio::NotApplicable),
    };
    row
}

/// A row without ratios: rates over `elapsed`, and percentiles of `sorted_latencies_ns`
/// (ascending, nanoseconds, not empty).
pub fn plain_row(
    workload: &str,
    (records, bytes): (u64, u64),
    elapsed: Duration,
    sorted_latencies_ns: &[u64],
) -> Row {
    let micros = |per_mille| per_mille_rank(sorted_latencies_ns, per_mille) as f64 / 1000.0;
    Row {
        workload: workload.to_owned(),
        records_per_sec: per_second(records, elapsed),
        bytes_per_sec: per_second(bytes, elapsed),
        p50_us: micros(500),
        p99_us: micros(990),
        p999_us: micros(999),
        ratio_to_disk: Ratio::NotApplicable,
        latency_ratio_to_disk: Ratio::NotApplicable,
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
    assert!((1..=100).contains(&percent), "percentile {percent} is not in 1..=100");
    per_mille_rank(sorted, percent * 10)
}

/// As [`percentile`], in thousandths: `per_mille` 999 is the p99.9.
///
/// # Panics
/// If `sorted` is empty or `per_mille` is not in 1..=1000.
pub fn per_mille_rank(sorted: &[u64], per_mille: u64) -> u64 {
    assert!(!sorted.is_empty(), "percentile of no values");
    assert!((1..=1000).contains(&per_mille), "per mille {per_mille} is not in 1..=1000");
    let rank = (per_mille * sorted.len() as u64).div_ceil(1000);
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
        "{:<27} {:>12} {:>9} {:>10} {:>10} {:>13} {:>9}",
        "workload", "records/s", "MB/s", "p50 µs", "p99 µs", "ratio_to_disk", "lat_ratio"
    );
    for row in rows {
        println!(
            "{:<27} {:>12.0} {:>9.1} {:>10.1} {:>10.1} {:>13} {:>9}",
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

/// The results of `sluice bench produce|consume` as a fixed-width table: no disk ratios, and
/// the p99.9 latency; MB are 10^6 bytes.
pub fn print_latency_table(rows: &[Row]) {
    println!(
        "{:<26} {:>10} {:>8} {:>9} {:>9} {:>9}",
        "workload", "records/s", "MB/s", "p50 µs", "p99 µs", "p999 µs"
    );
    for row in rows {
        println!(
            "{:<26} {:>10.0} {:>8.1} {:>9.1} {:>9.1} {:>9.1}",
            row.workload,
            row.records_per_sec,
            row.bytes_per_sec / 1e6,
            row.p50_us,
            row.p99_us,
            row.p999_us,
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
        ("p999_us", row.p999_us, 3),
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
    use std::time::Duration;

    use super::{json_line, per_mille_rank, percentile, plain_row, Ratio, Row};

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
    fn per_mille_rank_is_nearest_rank_in_thousandths() {
        let thousand: Vec<u64> = (1..=1000).collect();
        assert_eq!(per_mille_rank(&thousand, 999), 999);
        assert_eq!(per_mille_rank(&thousand, 1000), 1000);
        let hundred: Vec<u64> = (1..=100).collect();
        // Below 1000 values the p99.9 is the largest value.
        assert_eq!(per_mille_rank(&hundred, 999), 100);
        assert_eq!(per_mille_rank(&hundred, 990), 99);
    }

    #[test]
    fn plain_row_divides_by_elapsed_and_reads_percentiles_in_microseconds() {
        let latencies: Vec<u64> = (1..=1000).map(|index| index * 1000).collect();
        let row = plain_row("w", (500, 2_000_000), Duration::from_millis(250), &latencies);
        assert_eq!(row.records_per_sec, 2000.0);
        assert_eq!(row.bytes_per_sec, 8e6);
        assert_eq!((row.p50_us, row.p99_us, row.p999_us), (500.0, 990.0, 999.0));
        assert_eq!(row.ratio_to_disk, Ratio::NotApplicable);
        assert!(!json_line(&row).contains("ratio"), "{}", json_line(&row));
    }

    #[test]
    #[should_panic(expected = "percentile of no values")]
    fn percentile_of_nothing_is_a_bug() {
        percentile(&[], 50);
    }

    #[test]
    fn json_line_omits_absent_ratios_and_nulls_missing_baselines() {
        let mut row = Row {
            workload: "append-fsync-1w-1rec".to_owned(),
            records_per_sec: 1500.25,
            bytes_per_sec: 2e6,
            p50_us: 612.5,
            p99_us: f64::INFINITY,
            p999_us: 700.0,
            ratio_to_disk: Ratio::Value(0.5),
            latency_ratio_to_disk: Ratio::BaselineNotRun,
        };
        assert_eq!(
            json_line(&row),
            "{\"workload\":\"append-fsync-1w-1rec\",\"records_per_sec\":1500.2,\
             \"bytes_per_sec\":2000000.0,\"p50_us\":612.500,\"p99_us\":null,\
             \"p999_us\":700.000,\"ratio_to_disk\":0.5000,\"latency_ratio_to_disk\":null}"
        );
        row.latency_ratio_to_disk = Ratio::NotApplicable;
        assert!(!json_line(&row).contains("latency_ratio_to_disk"));
    }
}
