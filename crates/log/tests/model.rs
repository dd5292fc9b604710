//! Property test: the partition log behaves like a `Vec` of records under random appends, reads,
//! rolls (small random segment sizes), retention, reopens, clock moves and crashes that drop
//! unsynced bytes (under `Fsync` nothing acknowledged may go).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{decode, open_sim, payload, read_all, value_batch, Rec};
use proptest::prelude::*;
use sluice_log::sim::{CrashMode, SimStorage};
use sluice_log::{LogConfig, ManualClock, Partition};

#[derive(Debug, Clone)]
enum Op {
    Append { lengths: Vec<usize> },
    Read { pick: usize, max_bytes: u32 },
    TimeLookup { pick: usize },
    Retention,
    AdvanceClock { ms: i64 },
    Reopen { clean: bool },
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec(0usize..100, 1..8).prop_map(|lengths| Op::Append { lengths }),
        3 => (any::<usize>(), 0u32..3000).prop_map(|(pick, max_bytes)| Op::Read { pick, max_bytes }),
        1 => any::<usize>().prop_map(|pick| Op::TimeLookup { pick }),
        1 => Just(Op::Retention),
        1 => (0i64..20_000).prop_map(|ms| Op::AdvanceClock { ms }),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
        1 => Just(Op::Crash),
    ]
}

fn config() -> impl Strategy<Value = LogConfig> {
    (1024u64..6000, 64u32..600, 0u64..3, prop::option::of(2000u64..12_000)).prop_map(
        |(segment_bytes_max, index_interval_bytes, checkpoint_factor, retention_bytes)| LogConfig {
            segment_bytes_max,
            batch_bytes_max: 1024,
            index_interval_bytes,
            recovery_checkpoint_interval_bytes: u64::from(index_interval_bytes)
                * (1 + checkpoint_factor * 4),
            retention_bytes,
            retention_age: Some(Duration::from_secs(60)),
            segment_age_max: Some(Duration::from_secs(30)),
            ..LogConfig::default()
        },
    )
}

struct Harness {
    storage: SimStorage,
    clock: Arc<ManualClock>,
    config: LogConfig,
    log: Option<Partition>,
    model: Vec<Rec>,
    start: u64,
    sequence: u64,
}

impl Harness {
    fn log(&self) -> &Partition {
        self.log.as_ref().unwrap()
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Append { lengths } => self.append(lengths),
            Op::Read { pick, max_bytes } => self.read(*pick, *max_bytes),
            Op::TimeLookup { pick } => self.time_lookup(*pick),
            Op::Retention => {
                self.log().enforce_retention().unwrap();
                let start = self.log().log_start_offset();
                assert!(start >= self.start && start <= self.next_offset());
                self.start = start;
            }
            Op::AdvanceClock { ms } => self.clock.advance_ms(*ms),
            Op::Reopen { clean } => {
                let log = self.log.take().unwrap();
                if *clean {
                    log.close().unwrap();
                } else {
                    drop(log);
                }
                self.log = Some(open_sim(&self.storage, self.config.clone(), &self.clock));
            }
            Op::Crash => {
                self.storage.crash(CrashMode::DropUnsynced);
                drop(self.log.take());
                self.log = Some(open_sim(&self.storage, self.config.clone(), &self.clock));
                assert_eq!(self.log().recovery_report().bytes_dropped, 0, "everything was synced");
            }
        }
        self.check();
    }

    fn next_offset(&self) -> u64 {
        self.model.last().map_or(self.start, |record| record.offset + 1)
    }

    fn append(&mut self, lengths: &[usize]) {
        let timestamp_ms = self.clock.now_ms_for_test();
        let values: Vec<Vec<u8>> = lengths
            .iter()
            .map(|length| {
                self.sequence += 1;
                payload(self.sequence, *length)
            })
            .collect();
        let info = self.log().append(&mut value_batch(&values, timestamp_ms)).unwrap();
        assert_eq!(info.base_offset, self.next_offset());
        for (index, value) in values.into_iter().enumerate() {
            let offset = info.base_offset + index as u64;
            self.model.push(Rec { offset, key: None, value: Some(value), timestamp_ms });
        }
    }

    fn read(&self, pick: usize, max_bytes: u32) {
        let live: Vec<&Rec> =
            self.model.iter().filter(|record| record.offset >= self.start).collect();
        if live.is_empty() {
            return;
        }
        let wanted = live[pick % live.len()];
        let records = decode(&self.log().read(wanted.offset, max_bytes).unwrap().batches);
        let first = records.iter().position(|record| record.offset == wanted.offset).unwrap();
        assert!(records.len() > first);
        let at = live.iter().position(|record| record.offset == records[0].offset).unwrap();
        for (record, expected) in records.iter().zip(&live[at..]) {
            assert_eq!(record, *expected);
        }
    }

    fn time_lookup(&self, pick: usize) {
        let live: Vec<&Rec> =
            self.model.iter().filter(|record| record.offset >= self.start).collect();
        let target = live.get(pick % live.len().max(1)).map_or(0, |record| record.timestamp_ms);
        let expected =
            live.iter().find(|record| record.timestamp_ms >= target).map(|record| record.offset);
        assert_eq!(self.log().offset_for_timestamp(target).unwrap(), expected);
    }

    fn check(&mut self) {
        let log = self.log();
        assert_eq!(log.high_watermark(), self.next_offset());
        assert_eq!(log.log_start_offset(), self.start);
        let live: Vec<Rec> =
            self.model.iter().filter(|record| record.offset >= self.start).cloned().collect();
        assert_eq!(read_all(log), live);
    }
}

/// `ManualClock` reads through the `Clock` trait; a tiny helper keeps the call sites short.
trait NowForTest {
    fn now_ms_for_test(&self) -> i64;
}

impl NowForTest for Arc<ManualClock> {
    fn now_ms_for_test(&self) -> i64 {
        sluice_log::Clock::now_ms(self.as_ref())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_log_behaves_like_a_vec(config in config(), ops in prop::collection::vec(op(), 1..60), seed in any::<u64>()) {
        let storage = SimStorage::new(seed);
        let clock = Arc::new(ManualClock::new(1_000_000));
        let log = open_sim(&storage, config.clone(), &clock);
        let mut harness = Harness { storage, clock, config, log: Some(log), model: Vec::new(), start: 0, sequence: 0 };
        for op in &ops {
            harness.apply(op);
        }
    }
}
