//! Real-process crash test: a child process appends with `fsync` durability on the real file
//! system and prints each acknowledged offset; the parent `kill -9`s it at a random moment (after
//! a random number of acknowledgements, while it keeps appending), many cycles; after each
//! reopen every acknowledged record must be there, byte for byte.
//!
//! A `kill -9` keeps the page cache, so this test shows the process-crash path (recovery of a
//! tail cut mid-append, checkpoints, rolls) on a real file system; the loss of unsynced bytes at
//! a power cut is what `crash.rs` tests through the simulated disk.
//!
//! The child is this same test binary, re-run with `--exact child_appender --ignored` and the
//! directory in an environment variable.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::{decode, payload, value_batch};
use sluice_log::sim::SimRng;
use sluice_log::{LogConfig, Partition};

const CHILD_DIR_VARIABLE: &str = "SLUICE_KILL9_DIR";
const CHILD_SEED_VARIABLE: &str = "SLUICE_KILL9_SEED";
const CYCLES: u64 = 40;

fn config() -> LogConfig {
    // Small segments so kills also land in rolls; checkpoints often so they land there too.
    LogConfig {
        segment_bytes_max: 256 * 1024,
        batch_bytes_max: 64 * 1024,
        recovery_checkpoint_interval_bytes: 32 * 1024,
        ..LogConfig::default()
    }
}

/// The value of the record the child writes with sequence number `sequence`.
fn value_for(seed: u64, sequence: u64) -> Vec<u8> {
    payload(seed << 32 | sequence, 100 + (sequence % 900) as usize)
}

#[test]
#[ignore = "the child process of kill9_during_appends_loses_nothing_acknowledged"]
fn child_appender() {
    use std::io::Write;
    let dir = std::env::var(CHILD_DIR_VARIABLE).expect("run by the parent test");
    let seed: u64 = std::env::var(CHILD_SEED_VARIABLE).unwrap().parse().unwrap();
    let log = Partition::open(Path::new(&dir), config()).unwrap();
    let mut stdout = std::io::stdout().lock();
    let start = log.high_watermark();
    // Appends until killed; the parent always kills, the bound only keeps a stray child finite.
    for sequence in 0..1_000_000u64 {
        let records = 1 + sequence % 5;
        let values: Vec<Vec<u8>> =
            (0..records).map(|index| value_for(seed, sequence * 8 + index)).collect();
        let info = log.append(&mut value_batch(&values, 1)).unwrap();
        assert!(info.base_offset >= start);
        writeln!(stdout, "{} {} {}", info.base_offset, sequence, records).unwrap();
        stdout.flush().unwrap();
    }
}

#[test]
fn kill9_during_appends_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = SimRng::new(0x5eed);
    // offset → expected value, for every acknowledged record of every cycle.
    let mut acknowledged: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for cycle in 0..CYCLES {
        let mut child = Command::new(&exe)
            .args(["--exact", "child_appender", "--ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR_VARIABLE, dir.path())
            .env(CHILD_SEED_VARIABLE, cycle.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let kill_after = 1 + rng.below(300);
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = 0;
        while seen < kill_after {
            let Some(line) = lines.next() else { break };
            let line = line.unwrap();
            let fields: Vec<u64> = match line.split(' ').map(str::parse).collect::<Result<_, _>>() {
                Ok(fields) => fields,
                Err(_) => continue, // the test harness's own output
            };
            let [base, sequence, records] = fields[..] else { continue };
            for index in 0..records {
                acknowledged.insert(base + index, value_for(cycle, sequence * 8 + index));
            }
            seen += 1;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Lines the child printed before dying are acknowledged too.
        for line in lines.map_while(Result::ok) {
            let fields: Vec<u64> = line.split(' ').filter_map(|field| field.parse().ok()).collect();
            if let [base, sequence, records] = fields[..] {
                for index in 0..records {
                    acknowledged.insert(base + index, value_for(cycle, sequence * 8 + index));
                }
            }
        }
        assert!(seen > 0, "cycle {cycle}: the child acknowledged nothing");
        verify(dir.path(), &acknowledged, cycle);
    }
}

fn verify(dir: &Path, acknowledged: &BTreeMap<u64, Vec<u8>>, cycle: u64) {
    let log = Partition::open(dir, config()).unwrap();
    let last = *acknowledged.keys().next_back().unwrap();
    assert!(
        log.high_watermark() > last,
        "cycle {cycle}: high watermark below an acknowledged offset"
    );
    let mut offset = 0;
    let mut checked = 0;
    while offset <= last {
        let records = decode(&log.read(offset, 1 << 20).unwrap().batches);
        for record in &records {
            if let Some(expected) = acknowledged.get(&record.offset) {
                assert_eq!(
                    record.value.as_ref(),
                    Some(expected),
                    "cycle {cycle}: offset {} differs",
                    record.offset
                );
                checked += 1;
            }
        }
        offset = records.last().unwrap().offset + 1;
    }
    assert_eq!(checked, acknowledged.len(), "cycle {cycle}: acknowledged records missing");
    log.close().unwrap();
}
