//! The per-segment key index behind `Partition::key_offsets`: it must agree with the log's own
//! contents under appends, rolls, reopens, crashes, compaction and retention; a missing or
//! damaged `.keys` file must be rebuilt from the segment; the filter must spare lookups the
//! segments that lack the key; and unsynced records must stay invisible.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{batch, open_sim, payload, read_all, small_config, Rec};
use proptest::prelude::*;
use sluice_log::sim::{CrashMode, SimStorage};
use sluice_log::storage::FileHandle;
use sluice_log::{Clock, LogConfig, ManualClock, OpenMode, Partition, Storage, StorageFile};

const KEYS: u8 = 6;

fn key(id: u8) -> Vec<u8> {
    format!("key-{id}").into_bytes()
}

/// The offsets in `[from, to)` of `records` whose key is `wanted`.
fn expected(records: &[Rec], wanted: &[u8], from: u64, to: u64) -> Vec<u64> {
    records
        .iter()
        .filter(|record| record.key.as_deref() == Some(wanted))
        .map(|record| record.offset)
        .filter(|offset| (from..to).contains(offset))
        .collect()
}

/// Checks every key (and one never written) over the whole log against its contents.
fn check_all_keys(log: &Partition, records: &[Rec]) {
    for id in 0..=KEYS {
        let wanted = key(id);
        assert_eq!(
            log.key_offsets(&wanted, 0, u64::MAX).unwrap(),
            expected(records, &wanted, 0, u64::MAX),
            "key {id}"
        );
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Records of one batch: key id (`None` = no key, `KEYS` never occurs), value length or
    /// `None` for a tombstone.
    Append(Vec<(Option<u8>, Option<usize>)>),
    Lookup {
        key: u8,
        from: u64,
        len: u64,
    },
    Reopen {
        clean: bool,
    },
    Crash,
    Compact,
    Retention,
}

fn op() -> impl Strategy<Value = Op> {
    let record = (prop::option::of(0..KEYS), prop::option::weighted(0.9, 0usize..120));
    prop_oneof![
        8 => prop::collection::vec(record, 1..6).prop_map(Op::Append),
        3 => (0..=KEYS, 0u64..200, 0u64..200).prop_map(|(key, from, len)| Op::Lookup { key, from, len }),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
        1 => Just(Op::Crash),
        1 => Just(Op::Compact),
        1 => Just(Op::Retention),
    ]
}

fn config() -> impl Strategy<Value = LogConfig> {
    (1024u64..3000, prop::option::of(2000u64..8000)).prop_map(
        |(segment_bytes_max, retention_bytes)| LogConfig {
            segment_bytes_max,
            batch_bytes_max: 1024,
            retention_bytes,
            compact: true,
            ..small_config()
        },
    )
}

struct Harness {
    storage: SimStorage,
    clock: Arc<ManualClock>,
    config: LogConfig,
    log: Option<Partition>,
    /// The log's records as the model has them.
    model: Vec<Rec>,
    next_offset: u64,
    sequence: u64,
}

impl Harness {
    fn log(&self) -> &Partition {
        self.log.as_ref().unwrap()
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Append(specs) => {
                let keys: Vec<Option<Vec<u8>>> = specs.iter().map(|(id, _)| id.map(key)).collect();
                let values: Vec<Option<Vec<u8>>> = specs
                    .iter()
                    .map(|(_, len)| {
                        self.sequence += 1;
                        len.map(|len| payload(self.sequence, len))
                    })
                    .collect();
                let records: Vec<common::Spec<'_>> = keys
                    .iter()
                    .zip(&values)
                    .map(|(key, value)| (key.as_deref(), value.as_deref(), 1_000_000))
                    .collect();
                let info = self.log().append(&mut batch(&records)).unwrap();
                assert_eq!(info.base_offset, self.next_offset);
                for (index, (key, value)) in keys.into_iter().zip(values).enumerate() {
                    let offset = info.base_offset + index as u64;
                    self.model.push(Rec { offset, key, value, timestamp_ms: 1_000_000 });
                }
                self.next_offset = info.last_offset + 1;
            }
            Op::Lookup { key: id, from, len } => {
                let wanted = key(*id);
                let from = self.next_offset.saturating_sub(*from);
                let to = from + len;
                let found = self.log().key_offsets(&wanted, from, to).unwrap();
                assert_eq!(found, expected(&self.model, &wanted, from, to));
                // Candidates are unverified hash matches: ascending, in range, and a superset.
                let candidates = self.log().key_candidates(&wanted, from, to).unwrap();
                assert!(candidates.windows(2).all(|pair| pair[0] < pair[1]));
                assert!(candidates.iter().all(|offset| (from..to).contains(offset)));
                assert!(found.iter().all(|offset| candidates.contains(offset)));
            }
            Op::Reopen { clean } => {
                let log = self.log.take().unwrap();
                if *clean {
                    log.close().unwrap();
                } else {
                    drop(log); // leaves a checkpoint: the active segment's start is not rescanned
                }
                self.log = Some(open_sim(&self.storage, self.config.clone(), &self.clock));
            }
            Op::Crash => {
                self.storage.crash(CrashMode::Torn);
                drop(self.log.take());
                self.log = Some(open_sim(&self.storage, self.config.clone(), &self.clock));
            }
            Op::Compact => {
                self.log().compact().unwrap();
                // Compaction's own rules are tested elsewhere; what is kept must be a subset.
                let kept = read_all(self.log());
                assert!(kept.iter().all(|record| self.model.contains(record)));
                self.model = kept;
            }
            Op::Retention => {
                self.log().enforce_retention().unwrap();
                let start = self.log().log_start_offset();
                self.model.retain(|record| record.offset >= start);
            }
        }
        assert_eq!(read_all(self.log()), self.model);
        check_all_keys(self.log(), &self.model);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn key_offsets_agree_with_the_log(config in config(), ops in prop::collection::vec(op(), 1..50), seed in any::<u64>()) {
        let storage = SimStorage::new(seed);
        let clock = Arc::new(ManualClock::new(1_000_000));
        let log = open_sim(&storage, config.clone(), &clock);
        let mut harness = Harness { storage, clock, config, log: Some(log), model: Vec::new(), next_offset: 0, sequence: 0 };
        for op in &ops {
            harness.apply(op);
        }
    }
}

/// Appends `count` single-record batches cycling through the keys (every fifth keyless).
fn fill(log: &Partition, count: u64) {
    for index in 0..count {
        let id = (index % u64::from(KEYS)) as u8;
        let key = key(id);
        let value = payload(index, 60);
        let key = (index % 5 != 4).then_some(key.as_slice());
        log.append(&mut batch(&[(key, Some(&value), 1_000_000)])).unwrap();
    }
}

fn key_files(storage: &SimStorage, log: &Partition) -> Vec<PathBuf> {
    let mut names: Vec<PathBuf> = (0..log.high_watermark())
        .map(|base| Path::new("/p").join(format!("{base:020}.keys")))
        .filter(|path| storage.file_contents(path).is_some())
        .collect();
    names.sort();
    names
}

#[test]
fn a_missing_or_damaged_key_index_is_rebuilt_and_lookups_still_agree() {
    let storage = SimStorage::new(5);
    let clock = Arc::new(ManualClock::new(1_000_000));
    let log = open_sim(&storage, small_config(), &clock);
    fill(&log, 400);
    let files = key_files(&storage, &log);
    assert!(files.len() >= 6, "every closed segment has its key index: {files:?}");
    assert_eq!(files.len() + 1, log.segment_count());
    let records = read_all(&log);
    log.close().unwrap();

    // Delete one file, flip a bit in another, cut a third short (a torn write), and make a
    // fourth describe other data (a stale file left next to a compacted segment).
    let originals: Vec<Vec<u8>> =
        files.iter().map(|path| storage.file_contents(path).unwrap()).collect();
    storage.corrupt(&files[1], 40, &[originals[1][40] ^ 0x10]);
    let torn = storage.incarnation().open(&files[2], OpenMode::ReadWrite).unwrap();
    torn.set_len(originals[2].len() as u64 / 2).unwrap();
    torn.sync_data().unwrap();
    let stale = storage.incarnation().open(&files[3], OpenMode::ReadWrite).unwrap();
    stale.write_all_at(&originals[4], 0).unwrap();
    stale.set_len(originals[4].len() as u64).unwrap();
    stale.sync_data().unwrap();
    storage.incarnation().remove_file(&files[0]).unwrap();
    storage.incarnation().sync_dir(Path::new("/p")).unwrap();

    let log = open_sim(&storage, small_config(), &clock);
    check_all_keys(&log, &records);
    assert_eq!(log.key_lookup_stats().indexes_rebuilt, 4);
    // The rebuilt files were saved and are what the roll had written.
    for (path, original) in files.iter().zip(&originals).take(4) {
        assert_eq!(storage.file_contents(path).as_ref(), Some(original), "{}", path.display());
    }
    drop(log);
    let log = open_sim(&storage, small_config(), &clock);
    check_all_keys(&log, &records);
    assert_eq!(log.key_lookup_stats().indexes_rebuilt, 0, "saved files are trusted next time");
}

/// A storage that records which files were read, to see which segments a lookup touched.
#[derive(Debug)]
struct CountingStorage {
    inner: SimStorage,
    reads: Arc<Mutex<Vec<PathBuf>>>,
}

#[derive(Debug)]
struct CountingFile {
    inner: FileHandle,
    path: PathBuf,
    reads: Arc<Mutex<Vec<PathBuf>>>,
}

impl StorageFile for CountingFile {
    fn read_at(&self, buf: &mut [u8], position: u64) -> std::io::Result<usize> {
        self.reads.lock().unwrap().push(self.path.clone());
        self.inner.read_at(buf, position)
    }
    fn write_all_at(&self, buf: &[u8], position: u64) -> std::io::Result<()> {
        self.inner.write_all_at(buf, position)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.inner.sync_data()
    }
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
}

impl Storage for CountingStorage {
    fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list_files(&self, path: &Path) -> std::io::Result<Vec<String>> {
        self.inner.list_files(path)
    }
    fn open(&self, path: &Path, mode: OpenMode) -> std::io::Result<FileHandle> {
        let inner = self.inner.open(path, mode)?;
        let reads = Arc::clone(&self.reads);
        Ok(Arc::new(CountingFile { inner, path: path.to_owned(), reads }))
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        self.inner.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        self.inner.sync_dir(path)
    }
}

#[test]
fn a_lookup_searches_and_reads_only_the_segments_whose_filter_admits_the_key() {
    let storage = SimStorage::new(6);
    let reads = Arc::new(Mutex::new(Vec::new()));
    let counting = Arc::new(CountingStorage { inner: storage.clone(), reads: Arc::clone(&reads) });
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(1_000_000));
    let log = Partition::open_with(Path::new("/p"), small_config(), counting, clock).unwrap();
    // Many segments of common keys; the rare key lands in exactly two closed segments.
    let mut rare_offsets = Vec::new();
    for index in 0..1500u64 {
        let rare = index == 300 || index == 301 || index == 1100;
        let key =
            if rare { b"rare".to_vec() } else { format!("common-{}", index % 40).into_bytes() };
        let value = payload(index, 40);
        let info = log.append(&mut batch(&[(Some(&key), Some(&value), 1_000_000)])).unwrap();
        if rare {
            rare_offsets.push(info.base_offset);
        }
    }
    log.append(&mut batch(&[(Some(b"filler"), Some(b"x"), 1_000_000)])).unwrap();
    let segments = log.segment_count() as u64;
    assert!(segments > 40, "{segments}");
    // Warm up: load every segment's key index (all filters consulted, nothing rare read).
    assert_eq!(log.key_offsets(b"absent", 0, u64::MAX).unwrap(), Vec::<u64>::new());
    let warm = log.key_lookup_stats();
    assert_eq!(warm.segments_probed + warm.segments_skipped, segments - 1);
    assert!(warm.segments_probed <= 3, "the filter passes an absent key rarely: {warm:?}");

    reads.lock().unwrap().clear();
    assert_eq!(log.key_offsets(b"rare", 0, u64::MAX).unwrap(), rare_offsets);
    let stats = log.key_lookup_stats();
    let probed = stats.segments_probed - warm.segments_probed;
    let skipped = stats.segments_skipped - warm.segments_skipped;
    // The segments holding the key, from the data files' names (base offsets).
    let bases: Vec<u64> = storage
        .list_files(Path::new("/p"))
        .unwrap()
        .iter()
        .filter_map(|name| name.strip_suffix(".log")?.parse().ok())
        .collect();
    let holding: std::collections::BTreeSet<PathBuf> = rare_offsets
        .iter()
        .map(|offset| {
            let base = bases.iter().filter(|base| *base <= offset).max().unwrap();
            Path::new("/p").join(format!("{base:020}.log"))
        })
        .collect();
    assert!(holding.len() >= 2, "{holding:?}");
    // Allow for a filter false positive or two (about 1% each); without the filter every
    // segment would be searched.
    let most = holding.len() as u64 + 2;
    assert!((holding.len() as u64..=most).contains(&probed), "probed {probed} of {}", segments - 1);
    assert_eq!(probed + skipped, segments - 1);
    assert_eq!(stats.batches_read - warm.batches_read, 3, "one batch read per candidate");
    // And on disk: only the data files of segments holding the key were read, no key index
    // (all cached), nothing else.
    let touched: std::collections::BTreeSet<PathBuf> =
        reads.lock().unwrap().iter().cloned().collect();
    assert!(
        touched.iter().all(|path| path.extension().is_some_and(|ext| ext == "log")),
        "{touched:?}"
    );
    assert_eq!(touched, holding);
}

#[test]
fn unsynced_records_are_not_returned_until_durable() {
    let storage = SimStorage::new(7);
    let clock = Arc::new(ManualClock::new(1_000_000));
    let log = open_sim(&storage, small_config(), &clock);
    let first = log.append(&mut batch(&[(Some(b"k"), Some(b"1"), 1)])).unwrap();
    let second = log.append_unsynced(&mut batch(&[(Some(b"k"), Some(b"2"), 1)])).unwrap();
    assert_eq!(log.key_offsets(b"k", 0, u64::MAX).unwrap(), vec![first.base_offset]);
    log.wait_durable(second.last_offset).unwrap();
    assert_eq!(
        log.key_offsets(b"k", 0, u64::MAX).unwrap(),
        vec![first.base_offset, second.base_offset]
    );
    // Bounds are respected: `to` is exclusive, `from` inclusive.
    assert_eq!(log.key_offsets(b"k", 1, 2).unwrap(), vec![second.base_offset]);
    assert_eq!(log.key_offsets(b"k", 0, 1).unwrap(), vec![first.base_offset]);
    assert!(log.key_offsets(b"k", 2, 1).unwrap().is_empty());
}

#[test]
fn key_lookups_agree_after_a_crash_anywhere_in_compaction() {
    // The key index moves with the segment in compaction's swap; whatever point a crash hits,
    // the lookups after recovery agree with what the log holds.
    let config = LogConfig {
        compact: true,
        tombstone_retention: Duration::from_secs(3600),
        ..small_config()
    };
    let clock = Arc::new(ManualClock::new(1_000_000));
    for point in 0..40u64 {
        for mode in [CrashMode::DropUnsynced, CrashMode::Torn] {
            let storage = SimStorage::new(point);
            let log = open_sim(&storage, config.clone(), &clock);
            fill(&log, 300);
            log.close().unwrap();
            let log = open_sim(&storage, config.clone(), &clock);
            if point % 2 == 0 {
                storage.crash_after_dir_ops(point / 2, mode);
            } else {
                storage.fail_sync_after(point / 2);
            }
            let _ = log.compact();
            storage.crash(mode);
            drop(log);
            let log = open_sim(&storage, config.clone(), &clock);
            let records = read_all(&log);
            check_all_keys(&log, &records);
            log.compact().unwrap();
            let records = read_all(&log);
            check_all_keys(&log, &records);
        }
    }
}
