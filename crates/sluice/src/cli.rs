//! The command-line surface: every subcommand and option, as clap derive types.
//!
//! Only definitions and argument parsers live here; each subcommand's work lives in its own
//! module. New top-level subcommands (`serve`, `topic`, `produce`, ...) are new variants of
//! [`Command`]; new benchmarks are new variants of [`BenchCommand`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::bench::workload::Workload;

/// Sluice: the event backbone in one binary.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the Sluice server on the embedded engine: the HTTP API on one data directory.
    Serve(ServeArgs),
    /// Measure Sluice, and the disk under it in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// Options of `sluice serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory holding every topic's data; created if missing.
    #[arg(long, value_name = "DIR", default_value = "./sluice-data", env = "SLUICE_DATA")]
    pub data: PathBuf,

    /// Address the HTTP API listens on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080", env = "SLUICE_HTTP")]
    pub http: std::net::SocketAddr,

    /// Close a connection that has not sent complete request headers within this many ms.
    #[arg(long, value_name = "MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub header_timeout_ms: u64,

    /// Answer 408 to a request not done within this many ms (uploads and long-polls included;
    /// fetches wait at most 30,000). Also the grace period for in-flight requests at shutdown.
    #[arg(long, value_name = "MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub request_timeout_ms: u64,
}

/// What `sluice bench` can measure.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Append to and read from one partition log, next to raw disk writes and fdatasyncs.
    Log(LogBenchArgs),
}

/// Options of `sluice bench log`.
#[derive(Debug, Args)]
pub struct LogBenchArgs {
    /// Directory to work in; each workload uses a new subdirectory of it, removed afterwards.
    /// Default: `./sluice-bench-<pid>`, created fresh and removed at the end.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Records per appended batch (the single-record workloads always use 1).
    #[arg(long, value_name = "N", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_records: u32,

    /// Bytes of each record's value.
    #[arg(long, value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub record_bytes: u32,

    /// Payload bytes each workload writes: an integer, optionally with a binary suffix K, M or G.
    #[arg(long, value_name = "N", default_value = "256M", value_parser = parse_bytes)]
    pub total_bytes: u64,

    /// Rounds to run; every workload runs once per round (rounds interleave, so a slow spell of
    /// a shared machine hits all workloads alike) and the round with the median throughput is
    /// reported.
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=15))]
    pub repeat: u32,

    /// Print one JSON object per workload and line instead of the table.
    #[arg(long)]
    pub json: bool,

    /// Comma-separated workloads to run (default: all); an unknown name lists the valid ones.
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = parse_workload)]
    pub workloads: Vec<Workload>,
}

fn parse_workload(name: &str) -> Result<Workload, String> {
    Workload::from_name(name)
}

/// Parses a byte count: digits, optionally followed by `K`, `M` or `G` (powers of 1024, either
/// case). Refuses anything else, and values that overflow `u64`.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let (digits, multiplier) = match text.char_indices().last() {
        Some((at, 'K' | 'k')) => (&text[..at], 1 << 10),
        Some((at, 'M' | 'm')) => (&text[..at], 1 << 20),
        Some((at, 'G' | 'g')) => (&text[..at], 1 << 30),
        _ => (text, 1),
    };
    let invalid = || format!("`{text}` is not a byte count (expected e.g. 4096, 64K, 256M, 1G)");
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(invalid());
    }
    let count: u64 = digits.parse().map_err(|_| invalid())?;
    count.checked_mul(multiplier).ok_or_else(|| format!("`{text}` does not fit in 64 bits"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::{parse_bytes, Cli};

    #[test]
    fn command_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parse_bytes_reads_plain_counts_and_binary_suffixes() {
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64K"), Ok(64 * 1024));
        assert_eq!(parse_bytes("2m"), Ok(2 * 1024 * 1024));
        assert_eq!(parse_bytes("256M"), Ok(256 * 1024 * 1024));
        assert_eq!(parse_bytes("1G"), Ok(1024 * 1024 * 1024));
    }

    #[test]
    fn parse_bytes_refuses_malformed_and_overflowing_input() {
        for text in ["", "K", "-1", "1.5M", "1 M", "12T", "M1", "+5", "1KB"] {
            assert!(parse_bytes(text).is_err(), "{text:?} was accepted");
        }
        assert!(parse_bytes("18446744073709551615").is_ok());
        assert!(parse_bytes("18446744073709551616").is_err());
        assert!(parse_bytes("17179869184G").is_err());
    }
}
