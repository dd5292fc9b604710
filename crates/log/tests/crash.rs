//! Crash tests through the fault-injecting storage. At random points the simulated disk drops
//! everything not yet synced, or keeps a torn prefix of it, or fails an fsync. After each reopen:
//! every acknowledged record is present and intact, what survives is a prefix of what was
//! attempted (nothing past a tear), and nothing corrupt is readable. Each run prints its seed.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{batch, decode, open_sim, payload, read_all, small_config, value_batch, Rec};
use sluice_log::sim::{CrashMode, SimRng, SimStorage};
use sluice_log::{AppendError, LogConfig, ManualClock};

const SEEDS: u64 = 300;
const CYCLES_PER_SEED: usize = 4;

fn random_config(rng: &mut SimRng) -> LogConfig {
    let interval = 64 + rng.below(400) as u32;
    LogConfig {
        segment_bytes_max: 1024 + rng.below(6000),
        batch_bytes_max: 1024,
        index_interval_bytes: interval,
        recovery_checkpoint_interval_bytes: u64::from(interval) * (1 + rng.below(8)),
        ..small_config()
    }
}

#[test]
fn acknowledged_records_survive_every_crash_and_nothing_torn_is_served() {
    for seed in 0..SEEDS {
        run_seed(seed);
    }
}

fn run_seed(seed: u64) {
    let mut rng = SimRng::new(seed + 1);
    let storage = SimStorage::new(seed);
    let clock = Arc::new(ManualClock::new(1_000_000));
    let config = random_config(&mut rng);
    // Everything attempted, in order; `acked` counts the acknowledged prefix of it.
    let mut attempted: Vec<Rec> = Vec::new();
    let mut acked = 0usize;
    let mut sequence = 0u64;
    for cycle in 0..CYCLES_PER_SEED {
        let log = open_sim(&storage, config.clone(), &clock);
        let survivors = read_all(&log);
        check_survivors(seed, cycle, &survivors, &attempted, acked);
        attempted.truncate(survivors.len());
        acked = survivors.len();
        if rng.below(3) == 0 {
            storage.fail_sync_after(rng.below(12));
        }
        let appends = rng.below(40);
        for _ in 0..appends {
            let values: Vec<Vec<u8>> = (0..1 + rng.below(4))
                .map(|_| {
                    sequence += 1;
                    payload(sequence, rng.below(200) as usize)
                })
                .collect();
            let base = attempted.len() as u64;
            attempted.extend(values.iter().enumerate().map(|(index, value)| Rec {
                offset: base + index as u64,
                key: None,
                value: Some(value.clone()),
                timestamp_ms: 7,
            }));
            match log.append(&mut value_batch(&values, 7)) {
                Ok(info) => {
                    assert_eq!(info.base_offset, base, "seed {seed}");
                    acked = attempted.len();
                }
                Err(AppendError::Poisoned { .. }) => break,
                Err(error) => panic!("seed {seed}: unexpected {error}"),
            }
        }
        let mode = if rng.below(2) == 0 { CrashMode::DropUnsynced } else { CrashMode::Torn };
        storage.crash(mode);
        drop(log);
    }
}

fn check_survivors(seed: u64, cycle: usize, survivors: &[Rec], attempted: &[Rec], acked: usize) {
    assert!(
        survivors.len() >= acked,
        "seed {seed} cycle {cycle}: {} acknowledged records, only {} survived",
        acked,
        survivors.len()
    );
    assert!(survivors.len() <= attempted.len(), "seed {seed}: records that were never written");
    for (survivor, expected) in survivors.iter().zip(attempted) {
        assert_eq!(
            survivor, expected,
            "seed {seed} cycle {cycle}: survivors must be a prefix of the attempts"
        );
    }
}

/// Writes 300 keyed records over many small segments; returns the newest (offset, value) per key.
fn keyed_log(
    storage: &SimStorage,
    config: &LogConfig,
    clock: &Arc<ManualClock>,
) -> BTreeMap<Vec<u8>, (u64, Vec<u8>)> {
    let log = open_sim(storage, config.clone(), clock);
    let mut newest = BTreeMap::new();
    for index in 0..300u64 {
        // Every tenth record is superseded by the next one, so segments shrink a little and
        // stale index entries would still point inside the new files, at the wrong bytes.
        let key = format!("k{}", if index % 10 == 1 { index - 1 } else { index }).into_bytes();
        let value = payload(index, 30);
        log.append(&mut batch(&[(Some(&key), Some(&value), 1_000_000)])).unwrap();
        newest.insert(key, (index, value));
    }
    log.close().unwrap();
    newest
}

#[test]
fn a_crash_anywhere_in_compaction_keeps_the_newest_value_of_every_key() {
    // Compaction's file swap must be atomic in effect: old segment or new, never new data with
    // old indexes. The disk crashes at every directory operation of the swap in turn, and at
    // every fsync, in both crash modes.
    let config = LogConfig { compact: true, index_interval_bytes: 1024, ..small_config() };
    let clock = Arc::new(ManualClock::new(1_000_000));
    let storage = SimStorage::new(99);
    keyed_log(&storage, &config, &clock);
    let log = open_sim(&storage, config.clone(), &clock);
    let report = log.compact().unwrap();
    assert!(report.segments_rewritten >= 3, "the scenario must compact: {report:?}");
    let mut crashed_inside = 0;
    for point in 0..60u64 {
        for mode in [CrashMode::DropUnsynced, CrashMode::Torn] {
            let storage = SimStorage::new(point);
            let newest = keyed_log(&storage, &config, &clock);
            let log = open_sim(&storage, config.clone(), &clock);
            if point % 2 == 0 {
                storage.crash_after_dir_ops(point / 2, mode);
            } else {
                storage.fail_sync_after(point / 2);
            }
            if log.compact().is_err() {
                crashed_inside += 1;
            }
            storage.crash(mode);
            drop(log);
            let log = open_sim(&storage, config.clone(), &clock);
            let records = read_all(&log);
            assert!(records.windows(2).all(|pair| pair[0].offset < pair[1].offset));
            for (key, (offset, value)) in &newest {
                let found = records.iter().find(|record| record.offset == *offset);
                let found =
                    found.unwrap_or_else(|| panic!("point {point} {mode:?}: key {key:?} lost"));
                assert_eq!(found.value.as_ref(), Some(value));
                // Read at the offset itself, so the (possibly rebuilt) index is used.
                let direct = decode(&log.read(*offset, 1).unwrap().batches);
                assert!(
                    direct.iter().any(|record| record.offset == *offset),
                    "point {point} {mode:?}: read at {offset}"
                );
            }
            assert_eq!(log.high_watermark(), 300);
            // A second compaction after recovery must also succeed and keep the same answer.
            log.compact().unwrap();
            let again = read_all(&log);
            for (offset, _) in newest.values() {
                assert!(again.iter().any(|record| record.offset == *offset), "point {point}");
            }
        }
    }
    assert!(crashed_inside > 40, "most points must interrupt compaction: {crashed_inside}");
}

#[test]
fn concurrent_appenders_lose_nothing_acknowledged_when_the_disk_crashes_under_them() {
    // Group commit under a crash: eight threads append while the simulated power fails.
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;
    for seed in 0..20u64 {
        let storage = SimStorage::new(seed);
        let clock = Arc::new(ManualClock::new(1_000_000));
        let config = LogConfig { segment_bytes_max: 8192, ..small_config() };
        let log = Arc::new(open_sim(&storage, config.clone(), &clock));
        let acknowledged = Arc::new(Mutex::new(BTreeMap::new()));
        let acks = Arc::new(AtomicU64::new(0));
        let writers: Vec<_> = (0..8u64)
            .map(|writer| {
                let (log, acknowledged, acks) =
                    (Arc::clone(&log), Arc::clone(&acknowledged), Arc::clone(&acks));
                std::thread::spawn(move || {
                    for index in 0..10_000u64 {
                        let value = payload(writer << 32 | index, 50);
                        let Ok(info) =
                            log.append(&mut value_batch(std::slice::from_ref(&value), 1))
                        else {
                            return;
                        };
                        acknowledged.lock().unwrap().insert(info.base_offset, value);
                        acks.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        let crash_after = 50 + seed * 37;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while acks.load(Ordering::SeqCst) < crash_after {
            assert!(
                writers.iter().any(|writer| !writer.is_finished()),
                "seed {seed}: writers stopped early"
            );
            assert!(std::time::Instant::now() < deadline, "seed {seed}: no progress");
            std::thread::yield_now();
        }
        storage.crash(if seed % 2 == 0 { CrashMode::DropUnsynced } else { CrashMode::Torn });
        for writer in writers {
            writer.join().unwrap();
        }
        drop(log);
        let log = open_sim(&storage, config, &clock);
        let survivors: BTreeMap<u64, Vec<u8>> = read_all(&log)
            .into_iter()
            .map(|record| (record.offset, record.value.unwrap()))
            .collect();
        for (offset, value) in acknowledged.lock().unwrap().iter() {
            assert_eq!(
                survivors.get(offset),
                Some(value),
                "seed {seed}: acknowledged offset {offset}"
            );
        }
    }
}

/// Sets `log`'s sync listener to keep the highest synced offset it reports.
fn listen_for_syncs(log: &sluice_log::Partition) -> Arc<std::sync::atomic::AtomicU64> {
    let reported = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = Arc::clone(&reported);
    log.set_sync_listener(move |synced| {
        seen.fetch_max(synced, std::sync::atomic::Ordering::SeqCst);
    });
    reported
}

/// Waits until `offset` is synced or the partition is poisoned (reported as an error, not as
/// progress); fails the test after 10 s.
fn wait_synced_past(log: &sluice_log::Partition, offset: u64, seed: u64) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while matches!(log.synced_offset(), Ok(synced) if synced <= offset) {
        assert!(std::time::Instant::now() < until, "seed {seed}: the syncer never caught up");
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
}

/// The background syncer (`request_sync` + the sync listener) acknowledges only what is synced:
/// whatever offset the listener reported before a crash that drops unsynced bytes survives it,
/// and a failed fsync is reported as a poisoned partition, not as progress.
#[test]
fn what_the_sync_listener_reports_survives_a_crash() {
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    for seed in 0..20u64 {
        let storage = SimStorage::new(seed);
        let clock = Arc::new(ManualClock::new(1_000_000));
        let config = LogConfig { segment_bytes_max: 4096, ..small_config() };
        let log = open_sim(&storage, config.clone(), &clock);
        let reported = listen_for_syncs(&log);
        if seed % 4 == 3 {
            storage.fail_sync_after(3);
        }
        let mut last = None;
        for index in 0..60u64 {
            let mut bytes = value_batch(&[payload(index, 100)], 1_000_000);
            match log.append_unsynced(&mut bytes) {
                Ok(info) => {
                    log.request_sync(info.last_offset);
                    last = Some(info.last_offset);
                }
                Err(AppendError::Poisoned { .. }) => break,
                Err(error) => panic!("seed {seed}: {error}"),
            }
        }
        // Half the seeds wait for the syncer to catch up; the others crash while it runs.
        if seed % 2 == 0 {
            wait_synced_past(&log, last.unwrap_or(0), seed);
        } else {
            std::thread::sleep(Duration::from_micros(200 * seed));
        }
        let acknowledged = reported.load(Ordering::SeqCst);
        if let Ok(synced) = log.synced_offset() {
            assert!(acknowledged <= synced, "seed {seed}: reported {acknowledged} past {synced}");
        }
        storage.crash(CrashMode::DropUnsynced);
        drop(log);
        let survivors = read_all(&open_sim(&storage, config, &clock));
        assert!(
            survivors.len() as u64 >= acknowledged,
            "seed {seed}: {} records survived, {acknowledged} were reported synced",
            survivors.len()
        );
    }
}

/// Large appends synced in the background leave the syncer to write and sync zeros ahead when
/// the partition is idle. A crash at any moment of that (or a failed sync during it) loses
/// nothing the listener reported, and recovery finds the records written, in order, with no
/// zeros taken for data.
#[test]
fn zeros_synced_ahead_after_large_appends_survive_crashes() {
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    for seed in 0..16u64 {
        let mut rng = SimRng::new(seed);
        let storage = SimStorage::new(seed);
        let clock = Arc::new(ManualClock::new(1_000_000));
        let config = LogConfig {
            segment_bytes_max: 2 * 1024 * 1024,
            batch_bytes_max: 1024 * 1024,
            ..small_config()
        };
        let log = open_sim(&storage, config.clone(), &clock);
        let reported = listen_for_syncs(&log);
        if seed % 4 == 3 {
            storage.fail_sync_after(rng.below(8));
        }
        let mut written = Vec::new();
        for index in 0..24u64 {
            let value = payload(index, 70 * 1024 + rng.below(80 * 1024) as usize);
            match log.append_unsynced(&mut value_batch(std::slice::from_ref(&value), 1_000_000)) {
                Ok(info) => {
                    log.request_sync(info.last_offset);
                    written.push(value);
                }
                Err(AppendError::Poisoned { .. }) => break,
                Err(error) => panic!("seed {seed}: {error}"),
            }
            // Now and then wait for the sync, so the syncer finds the partition idle.
            if rng.below(3) == 0 {
                wait_synced_past(&log, index, seed);
                std::thread::sleep(Duration::from_micros(rng.below(400)));
            }
        }
        let acknowledged = reported.load(Ordering::SeqCst);
        let mode = if seed % 2 == 0 { CrashMode::DropUnsynced } else { CrashMode::Torn };
        storage.crash(mode);
        drop(log);
        let reopened = open_sim(&storage, config, &clock);
        let survivors = read_all(&reopened);
        assert!(
            survivors.len() as u64 >= acknowledged,
            "seed {seed}: {} records survived, {acknowledged} were reported synced",
            survivors.len()
        );
        for (offset, record) in survivors.iter().enumerate() {
            assert_eq!(record.value.as_ref(), written.get(offset), "seed {seed}: offset {offset}");
        }
    }
}
