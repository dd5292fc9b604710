//! The partition-log workloads: appends from one or several threads under each durability
//! policy, and a sequential read of what was appended.
//!
//! Every writer appends one pre-built batch again and again. The log rewrites only
//! `baseOffset`, which the CRC does not cover, so the re-appended batch stays valid, and the
//! timed loop measures the log (validation, CRC, write, sync) rather than encoding or copying.
//! Opening and closing the partition are not timed.

use std::path::Path;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, ensure, Context};
use sluice_format::{BatchBuilder, BatchHeader, NewRecord};
use sluice_log::{AppendError, Durability, LogConfig, Partition};

use super::workload::{AppendPlan, Workload};
use super::{elapsed_ns, pseudo_random_bytes, Measurement, Settings};

/// Appends a single-record workload makes at most, so durable latency is measured in bounded
/// time whatever `--total-bytes` says.
const SINGLE_RECORD_APPENDS_MAX: u64 = 5000;
/// The byte budget of one read: a 1 MiB fetch, Kafka's default `max.partition.fetch.bytes`.
const READ_BYTES_MAX: u32 = 1024 * 1024;
/// Record values are windows into a random pool this much longer than a value, so the records
/// of a batch differ from each other.
const VALUE_POOL_SLACK_BYTES: usize = 4096;
/// Stride between the windows of consecutive records; odd, so windows rarely coincide.
const VALUE_WINDOW_STRIDE_BYTES: usize = 61;

/// Appends per `plan` to a new partition in `dir`, then closes it (so it can be read again).
///
/// # Errors
/// A batch larger than the log accepts, and any open, append or close error.
pub fn append(
    workload: Workload,
    plan: AppendPlan,
    settings: &Settings,
    dir: &Path,
) -> anyhow::Result<Measurement> {
    let config = LogConfig { durability: plan.durability, ..LogConfig::default() };
    let limit = config.batch_bytes_max;
    let partition = Partition::open(dir, config)
        .with_context(|| format!("opening a partition in {}", dir.display()))?;
    let records_per_batch = if plan.single_record { 1 } else { settings.batch_records };
    let batch = build_batch(records_per_batch, settings.record_bytes, limit)?;
    let appends = append_count(plan, settings);
    let (elapsed, latencies) = run_writers(&partition, plan.writers, appends, &batch)?;
    partition.close().context("closing the partition")?;
    let volume = (appends * u64::from(records_per_batch), appends * batch.len() as u64);
    Ok(Measurement::new(workload, volume, elapsed, latencies))
}

/// Fails, before anything runs, if `settings` make batches larger than the log accepts.
///
/// # Errors
/// The batch size and the limit, and which options to lower.
pub fn check_batch_fits(settings: &Settings) -> anyhow::Result<()> {
    let limit = LogConfig::default().batch_bytes_max;
    build_batch(settings.batch_records, settings.record_bytes, limit).map(drop)
}

/// How many appends make up the workload: enough batches to carry `total_bytes` of values, or
/// for single records one per `record_bytes`, capped at [`SINGLE_RECORD_APPENDS_MAX`].
fn append_count(plan: AppendPlan, settings: &Settings) -> u64 {
    let record_bytes = u64::from(settings.record_bytes);
    if plan.single_record {
        (settings.total_bytes / record_bytes).clamp(1, SINGLE_RECORD_APPENDS_MAX)
    } else {
        let batch_payload_bytes = u64::from(settings.batch_records) * record_bytes;
        settings.total_bytes.div_ceil(batch_payload_bytes).max(1)
    }
}

/// One batch of `records` keyless records with `record_bytes` random bytes each, stamped now.
fn build_batch(records: u32, record_bytes: u32, limit_bytes: u32) -> anyhow::Result<Vec<u8>> {
    let too_large = |bytes: u64| {
        anyhow!(
            "a batch of {records} records of {record_bytes} bytes takes {bytes} bytes, more than \
             the log accepts (batch_bytes_max {limit_bytes}); lower --batch-records or --record-bytes"
        )
    };
    let payload_bytes = u64::from(records) * u64::from(record_bytes);
    if payload_bytes > u64::from(limit_bytes) {
        return Err(too_large(payload_bytes));
    }
    let value_bytes = record_bytes as usize;
    let pool = pseudo_random_bytes(value_bytes + VALUE_POOL_SLACK_BYTES);
    let timestamp_ms = now_ms();
    let mut builder = BatchBuilder::new(0);
    for index in 0..records as usize {
        let start = index * VALUE_WINDOW_STRIDE_BYTES % VALUE_POOL_SLACK_BYTES;
        let value = Some(&pool[start..start + value_bytes]);
        builder.push(&NewRecord { key: None, value, headers: &[], timestamp_ms });
    }
    let batch = builder.build();
    if batch.len() as u64 > u64::from(limit_bytes) {
        return Err(too_large(batch.len() as u64));
    }
    Ok(batch)
}

fn now_ms() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// Runs `writers` threads that share `appends` appends of `batch` and start together. Returns
/// the wall time from the start until the last writer finished, and every append's latency.
fn run_writers(
    partition: &Partition,
    writers: u32,
    appends: u64,
    batch: &[u8],
) -> anyhow::Result<(Duration, Vec<u64>)> {
    let start_line = Barrier::new(writers as usize + 1);
    thread::scope(|scope| {
        let handles: Vec<_> = (0..u64::from(writers))
            .map(|index| {
                let share =
                    appends / u64::from(writers) + u64::from(index < appends % u64::from(writers));
                let start_line = &start_line;
                scope.spawn(move || append_loop(partition, batch.to_vec(), share, start_line))
            })
            .collect();
        // Taken before the barrier releases the writers, so time they spend before this thread
        // runs again is counted.
        let start = Instant::now();
        start_line.wait();
        let mut latencies = Vec::with_capacity(usize::try_from(appends).unwrap_or(0));
        for handle in handles {
            let writer_latencies = handle.join().map_err(|_| anyhow!("a writer panicked"))?;
            latencies.extend(writer_latencies.context("appending")?);
        }
        Ok((start.elapsed(), latencies))
    })
}

/// One writer: waits for the start, then appends its own copy of the batch `appends` times.
fn append_loop(
    partition: &Partition,
    mut batch: Vec<u8>,
    appends: u64,
    start_line: &Barrier,
) -> Result<Vec<u64>, AppendError> {
    let mut latencies = Vec::with_capacity(usize::try_from(appends).unwrap_or(0));
    start_line.wait();
    for _ in 0..appends {
        let start = Instant::now();
        partition.append(&mut batch)?;
        latencies.push(elapsed_ns(start));
    }
    Ok(latencies)
}

/// Reopens the partition in `dir` and reads it from offset 0 to the high watermark, one
/// [`READ_BYTES_MAX`] read at a time.
///
/// # Errors
/// An empty partition, a read that makes no progress, and any open or read error.
pub fn read(workload: Workload, dir: &Path) -> anyhow::Result<Measurement> {
    let config = LogConfig { durability: Durability::None, ..LogConfig::default() };
    let partition = Partition::open(dir, config)
        .with_context(|| format!("reopening the partition in {}", dir.display()))?;
    let high_watermark = partition.high_watermark();
    ensure!(high_watermark > 0, "the partition in {} is empty", dir.display());
    let (mut offset, mut records, mut bytes) = (0, 0, 0);
    let mut latencies = Vec::new();
    let start = Instant::now();
    while offset < high_watermark {
        let read_start = Instant::now();
        let batches = partition
            .read(offset, READ_BYTES_MAX)
            .with_context(|| format!("reading at offset {offset}"))?
            .batches;
        latencies.push(elapsed_ns(read_start));
        let (batch_records, next_offset) = walk_batches(&batches)?;
        ensure!(next_offset > offset, "a read at offset {offset} made no progress");
        (offset, records, bytes) = (next_offset, records + batch_records, bytes + batches.len());
    }
    let elapsed = start.elapsed();
    Ok(Measurement::new(workload, (records, bytes as u64), elapsed, latencies))
}

/// Counts the records in concatenated batches; returns the count and the offset after them.
fn walk_batches(mut bytes: &[u8]) -> anyhow::Result<(u64, u64)> {
    let (mut records, mut next_offset) = (0, 0);
    while !bytes.is_empty() {
        let header = BatchHeader::parse(bytes).context("a read returned a malformed batch")?;
        records += u64::try_from(header.records_count).context("negative record count")?;
        next_offset = u64::try_from(header.last_offset() + 1).context("negative offset")?;
        let total_bytes = usize::try_from(header.total_bytes()).context("batch size")?;
        bytes = bytes.get(total_bytes..).context("a read returned a truncated batch")?;
    }
    Ok((records, next_offset))
}
