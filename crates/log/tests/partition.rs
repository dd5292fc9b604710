//! Behaviour of one partition: appends, reads, rolls, limits, time lookups, reopen, retention,
//! compaction, poisoning, a full disk, group commit and the open-files bound.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::{batch, decode, open_sim, payload, read_all, small_config, value_batch, Rec};
use sluice_format::{compute_crc, BatchBuilder, NewRecord};
use sluice_log::sim::{CrashMode, SimStorage};
use sluice_log::storage::FileHandle;
use sluice_log::{
    AppendError, Clock, Durability, LogConfig, ManualClock, OpenError, OpenMode, Partition,
    ReadError, Storage, StorageFile,
};

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(1_000_000))
}

#[test]
fn appends_get_consecutive_offsets_and_read_back_as_written() {
    // The basic contract: offsets are assigned in order and reads return the stored bytes.
    let dir = tempfile::tempdir().unwrap();
    let log = Partition::open(dir.path(), LogConfig::default()).unwrap();
    let mut first = value_batch(&[b"a".to_vec(), b"b".to_vec()], 10);
    let mut second = value_batch(&[b"c".to_vec()], 11);
    assert_eq!(log.append(&mut first).unwrap().base_offset, 0);
    let info = log.append(&mut second).unwrap();
    assert_eq!((info.base_offset, info.last_offset), (2, 2));
    assert_eq!(log.high_watermark(), 3);
    let read = log.read(0, 1 << 20).unwrap();
    assert_eq!(read.batches, [first.clone(), second.clone()].concat());
    assert_eq!(log.read(2, 1 << 20).unwrap().batches, second);
    assert_eq!(log.read(1, 1).unwrap().batches, first, "at least one whole batch is returned");
    assert!(log.read(3, 100).unwrap().batches.is_empty());
    let error = log.read(4, 100).unwrap_err();
    assert!(matches!(error, ReadError::OffsetOutOfRange { offset: 4, high_watermark: 3, .. }));
    assert!(error.to_string().contains("offset 4 is out of range"), "{error}");
}

#[test]
fn bad_batches_are_refused_with_the_fault_named_and_nothing_appended() {
    // Bad input gets a clear error and changes nothing.
    let storage = SimStorage::new(1);
    let config = LogConfig { batch_bytes_max: 1024, ..small_config() };
    let log = open_sim(&storage, config, &clock());
    let mut big = value_batch(&[vec![7u8; 2000]], 1);
    let error = log.append(&mut big).unwrap_err();
    assert!(matches!(error, AppendError::BatchTooLarge { limit: 1024, .. }));
    assert!(error.to_string().contains("batch_bytes_max"), "{error}");

    let mut bad_crc = value_batch(&[b"x".to_vec()], 1);
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0xFF;
    assert!(log.append(&mut bad_crc).unwrap_err().to_string().contains("CRC"));

    let mut bad_magic = value_batch(&[b"x".to_vec()], 1);
    bad_magic[16] = 1;
    assert!(log.append(&mut bad_magic).unwrap_err().to_string().contains("magic"));

    let mut wrong_max_timestamp = value_batch(&[b"x".to_vec()], 1);
    wrong_max_timestamp[35..43].copy_from_slice(&i64::MAX.to_be_bytes());
    let crc = compute_crc(&wrong_max_timestamp);
    wrong_max_timestamp[17..21].copy_from_slice(&crc.to_be_bytes());
    let error = log.append(&mut wrong_max_timestamp).unwrap_err().to_string();
    assert!(error.contains("maxTimestamp"), "{error}");

    let mut gzip = value_batch(&[b"x".to_vec()], 1);
    gzip[22] |= 1; // attributes low byte: compression = gzip
    let crc = compute_crc(&gzip);
    gzip[17..21].copy_from_slice(&crc.to_be_bytes());
    let error = log.append(&mut gzip).unwrap_err().to_string();
    assert!(error.contains("gzip"), "{error}");

    assert_eq!(log.high_watermark(), 0);
    let mut good = value_batch(&[b"ok".to_vec()], 1);
    assert_eq!(log.append(&mut good).unwrap().base_offset, 0);
}

#[test]
fn segments_roll_by_size_and_reopen_keeps_every_record() {
    // Rolls must not lose or reorder records, and a clean reopen scans nothing.
    let storage = SimStorage::new(2);
    let clock = clock();
    let log = open_sim(&storage, small_config(), &clock);
    let mut expected = Vec::new();
    for index in 0..200u64 {
        let value = payload(index, 100);
        log.append(&mut value_batch(std::slice::from_ref(&value), index as i64)).unwrap();
        expected.push(Rec {
            offset: index,
            key: None,
            value: Some(value),
            timestamp_ms: index as i64,
        });
    }
    assert!(log.segment_count() > 4, "segments: {}", log.segment_count());
    assert_eq!(read_all(&log), expected);
    log.close().unwrap();
    let log = open_sim(&storage, small_config(), &clock);
    assert_eq!(log.recovery_report().bytes_scanned, 0);
    assert_eq!(read_all(&log), expected);
    for offset in [0, 1, 57, 150, 199] {
        let first = decode(&log.read(offset, 1).unwrap().batches);
        assert_eq!(first[0].offset, offset);
    }
}

#[test]
fn segments_roll_by_age_measured_on_the_clock() {
    // segment_age_max rolls the active segment at the first append after the age passes.
    let storage = SimStorage::new(3);
    let clock = clock();
    let config = LogConfig { segment_age_max: Some(Duration::from_secs(60)), ..small_config() };
    let log = open_sim(&storage, config, &clock);
    log.append(&mut value_batch(&[b"a".to_vec()], 1)).unwrap();
    log.append(&mut value_batch(&[b"b".to_vec()], 1)).unwrap();
    assert_eq!(log.segment_count(), 1);
    clock.advance_ms(60_000);
    log.append(&mut value_batch(&[b"c".to_vec()], 1)).unwrap();
    assert_eq!(log.segment_count(), 2);
    assert_eq!(read_all(&log).len(), 3);
}

#[test]
fn offset_for_timestamp_finds_the_first_record_at_or_after() {
    // Time lookups across segments, with timestamps that are not monotonic.
    let storage = SimStorage::new(4);
    let log = open_sim(&storage, small_config(), &clock());
    let timestamps: Vec<i64> =
        (0..300).map(|index| index * 10 + if index % 7 == 0 { -25 } else { 0 }).collect();
    for timestamp in &timestamps {
        log.append(&mut value_batch(&[payload(*timestamp as u64, 50)], *timestamp)).unwrap();
    }
    for target in [-100, 0, 5, 995, 1000, 1001, 2990, 2991, 5000] {
        let expected =
            timestamps.iter().position(|timestamp| *timestamp >= target).map(|index| index as u64);
        assert_eq!(log.offset_for_timestamp(target).unwrap(), expected, "target {target}");
    }
}

#[test]
fn retention_deletes_whole_old_segments_by_size_and_by_age() {
    // Retention never touches the active segment and keeps the offsets contiguous.
    let storage = SimStorage::new(5);
    let clock = clock();
    let config = LogConfig { retention_bytes: Some(8192), ..small_config() };
    let log = open_sim(&storage, config, &clock);
    for index in 0..300u64 {
        log.append(&mut value_batch(&[payload(index, 100)], 1_000_000)).unwrap();
    }
    let before = log.segment_count();
    let report = log.enforce_retention().unwrap();
    assert!(report.segments_deleted > 0);
    assert_eq!(log.segment_count(), before - report.segments_deleted);
    assert!(log.size_bytes() >= 8192 && log.size_bytes() < 8192 + 4096, "{}", log.size_bytes());
    let start = log.log_start_offset();
    assert!(start > 0);
    assert!(matches!(log.read(0, 10), Err(ReadError::OffsetOutOfRange { .. })));
    let remaining = read_all(&log);
    assert_eq!(remaining.first().unwrap().offset, start);
    assert_eq!(remaining.last().unwrap().offset, 299);
    drop(log);

    let storage = SimStorage::new(6);
    let config = LogConfig { retention_age: Some(Duration::from_secs(10)), ..small_config() };
    let log = open_sim(&storage, config, &clock);
    for index in 0..100u64 {
        log.append(&mut value_batch(&[payload(index, 100)], clock.now_ms())).unwrap();
    }
    assert_eq!(log.enforce_retention().unwrap().segments_deleted, 0);
    clock.advance_ms(10_001);
    let report = log.enforce_retention().unwrap();
    assert_eq!(log.segment_count(), 1, "{report:?}");
    assert_eq!(read_all(&log).last().unwrap().offset, 99);
}

#[test]
fn compaction_keeps_the_newest_record_per_key_and_expires_tombstones() {
    // Offsets survive compaction; superseded values and old tombstones do not.
    let storage = SimStorage::new(7);
    let clock = clock();
    let config =
        LogConfig { compact: true, tombstone_retention: Duration::from_secs(60), ..small_config() };
    let log = open_sim(&storage, config.clone(), &clock);
    let now = clock.now_ms();
    let mut newest = std::collections::BTreeMap::new();
    for index in 0..400u64 {
        let key = format!("key-{}", index % 10).into_bytes();
        let value = (index % 37 != 5).then(|| payload(index, 40));
        log.append(&mut batch(&[(Some(&key), value.as_deref(), now)])).unwrap();
        newest.insert(key, (index, value));
    }
    log.append(&mut batch(&[(Some(b"solo"), None, now)])).unwrap();
    let before = log.size_bytes();
    let report = log.compact().unwrap();
    assert!(report.records_removed > 300, "{report:?}");
    assert!(log.size_bytes() < before);
    let records = read_all(&log);
    let closed_end = records.iter().map(|record| record.offset).max().unwrap();
    for (key, (offset, value)) in &newest {
        let found: Vec<&Rec> =
            records.iter().filter(|record| record.key.as_ref() == Some(key)).collect();
        assert!(
            found.iter().any(|record| record.offset == *offset && &record.value == value),
            "{key:?}"
        );
        assert!(found.iter().all(|record| record.offset <= closed_end));
    }
    let offsets: Vec<u64> = records.iter().map(|record| record.offset).collect();
    assert!(offsets.windows(2).all(|pair| pair[0] < pair[1]));
    assert_eq!(log.high_watermark(), 401);

    // Reopen: the compacted segments read the same; then tombstones expire.
    drop(log);
    let log = open_sim(&storage, config, &clock);
    assert_eq!(read_all(&log), records);
    clock.advance_ms(61_000);
    log.append(&mut value_batch(&[vec![0u8; 4000]], clock.now_ms())).unwrap();
    log.compact().unwrap();
    let tombstones = read_all(&log)
        .iter()
        .filter(|record| record.value.is_none() && record.key.is_some())
        .count();
    assert_eq!(tombstones, 0, "expired tombstones in closed segments are removed");
}

#[test]
fn a_failed_fsync_poisons_the_partition_until_reopened() {
    // After an fsync error nothing is acknowledged and nothing retries; reopening recovers.
    let storage = SimStorage::new(8);
    let clock = clock();
    let log = open_sim(&storage, small_config(), &clock);
    log.append(&mut value_batch(&[b"kept".to_vec()], 1)).unwrap();
    storage.fail_sync_after(0);
    let error = log.append(&mut value_batch(&[b"lost".to_vec()], 1)).unwrap_err();
    assert!(matches!(error, AppendError::Poisoned { .. }), "{error}");
    let again = log.append(&mut value_batch(&[b"later".to_vec()], 1)).unwrap_err();
    assert!(again.to_string().contains("poisoned"), "{again}");
    assert_eq!(log.high_watermark(), 1, "the unsynced record is never visible");
    drop(log);
    let log = open_sim(&storage, small_config(), &clock);
    assert_eq!(read_all(&log)[0].value.as_deref(), Some(&b"kept"[..]));
    log.append(&mut value_batch(&[b"after".to_vec()], 1)).unwrap();
}

/// Bytes held by every file of the partition at `/p`.
fn stored_bytes(storage: &SimStorage) -> u64 {
    let names = storage.list_files(Path::new("/p")).unwrap();
    names
        .iter()
        .filter_map(|name| storage.file_contents(&Path::new("/p").join(name)))
        .map(|bytes| bytes.len() as u64)
        .sum()
}

#[test]
fn a_full_disk_is_a_clear_error_that_corrupts_nothing() {
    // ENOSPC mid-write leaves no partial batch, and the partition keeps serving. (Without zeros
    // written ahead, so the second append is the one that grows the file.)
    let storage = SimStorage::new(9);
    let clock = clock();
    let config = LogConfig { preallocate_bytes_max: 0, ..small_config() };
    let log = open_sim(&storage, config.clone(), &clock);
    log.append(&mut value_batch(&[payload(1, 500)], 1)).unwrap();
    let used = stored_bytes(&storage);
    storage.set_capacity_bytes(Some(used + 100));
    let error = log.append(&mut value_batch(&[payload(2, 500)], 1)).unwrap_err();
    assert!(matches!(error, AppendError::DiskFull { .. }), "{error}");
    assert!(error.to_string().contains("disk full"));
    storage.set_capacity_bytes(None);
    log.append(&mut value_batch(&[payload(3, 500)], 1)).unwrap();
    let records = read_all(&log);
    assert_eq!(records.len(), 2);
    assert_eq!(records[1].value, Some(payload(3, 500)));
    drop(log);
    let log = open_sim(&storage, config, &clock);
    assert_eq!(log.recovery_report().bytes_dropped, 0);
    assert_eq!(read_all(&log), records);
}

#[test]
fn zeros_written_ahead_are_space_after_a_crash_and_gone_after_close() {
    // Small synced appends leave zeros after the last batch. After a power loss recovery cuts
    // them without calling them a fault or dropped bytes, and appends go on where the data
    // ended; a clean close leaves no zeros behind.
    let storage = SimStorage::new(12);
    let clock = clock();
    let config = LogConfig { segment_bytes_max: 1024 * 1024, ..small_config() };
    let log = open_sim(&storage, config.clone(), &clock);
    for seed in 0..20 {
        log.append(&mut value_batch(&[payload(seed, 100)], 1)).unwrap();
    }
    let records = read_all(&log);
    let data = Path::new("/p/00000000000000000000.log");
    let zeroed = storage.file_contents(data).unwrap();
    assert!(zeroed.ends_with(&[0; 4096]), "zeros follow the data ({} bytes)", zeroed.len());
    storage.crash(CrashMode::DropUnsynced);
    drop(log);
    let log = open_sim(&storage, config.clone(), &clock);
    let report = log.recovery_report().clone();
    assert_eq!((report.fault, report.bytes_dropped), (None, 0));
    assert_eq!(read_all(&log), records);
    let cut = storage.file_contents(data).unwrap().len();
    assert!(cut + 4096 <= zeroed.len(), "recovery cut the zeros: {cut} of {} bytes", zeroed.len());
    for seed in 20..40 {
        log.append(&mut value_batch(&[payload(seed, 100)], 1)).unwrap();
    }
    let records = read_all(&log);
    assert_eq!(records.len(), 40);
    assert_eq!(records[20].value, Some(payload(20, 100)));
    let open_bytes = storage.file_contents(data).unwrap();
    assert!(open_bytes.ends_with(&[0; 4096]), "zeros were written ahead again");
    log.close().unwrap();
    let closed = storage.file_contents(data).unwrap().len();
    assert!(closed + 4096 <= open_bytes.len(), "close cut the zeros: {closed} bytes left");
    let log = open_sim(&storage, config, &clock);
    assert_eq!(log.recovery_report().bytes_scanned, 0, "close checkpointed the very end");
    assert_eq!(storage.file_contents(data).unwrap().len(), closed);
    assert_eq!(read_all(&log), records);
}

#[test]
fn after_a_large_background_sync_an_idle_partition_syncs_zeros_ahead() {
    // A sync of more than 64 KiB does not leave zeros for the next append's sync to carry.
    // Once nothing waits, the background syncer writes them and syncs them at once, so the
    // next large append writes over blocks already on disk: the file's synced length runs
    // ahead of the data after each large append.
    let storage = SimStorage::new(13);
    let clock = clock();
    let config = LogConfig {
        segment_bytes_max: 8 * 1024 * 1024,
        batch_bytes_max: 1024 * 1024,
        ..small_config()
    };
    let log = open_sim(&storage, config, &clock);
    let data = Path::new("/p/00000000000000000000.log");
    let synced_past_data = |log: &Partition| {
        let end = log.size_bytes() as usize;
        storage.synced_len(data).is_some_and(|synced| synced > end)
    };
    for (index, value) in [payload(0, 100 * 1024), payload(1, 100 * 1024)].into_iter().enumerate() {
        let info = log.append_unsynced(&mut value_batch(&[value], 1)).unwrap();
        log.request_sync(info.last_offset);
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while log.synced_offset().unwrap() <= info.last_offset || !synced_past_data(&log) {
            assert!(std::time::Instant::now() < until, "append {index}: no zeros synced ahead");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let records = read_all(&log);
    assert_eq!(records.len(), 2);
    assert_eq!(records[1].value, Some(payload(1, 100 * 1024)));
}

#[test]
fn a_full_disk_while_writing_zeros_ahead_loses_nothing() {
    // Zeros are written ahead of the active segment's end after a sync. When the disk fills,
    // appends still use the zeros already there, the first append past them gets DiskFull, and
    // a reopen finds every acknowledged record and no fault.
    let storage = SimStorage::new(11);
    let clock = clock();
    let config = LogConfig { segment_bytes_max: 1024 * 1024, ..small_config() };
    let log = open_sim(&storage, config.clone(), &clock);
    log.append(&mut value_batch(&[payload(0, 500)], 1)).unwrap();
    let data = Path::new("/p/00000000000000000000.log");
    let file = storage.file_contents(data).unwrap();
    assert!(
        file.len() >= 64 * 1024,
        "zeros were written ahead: the file holds {} bytes",
        file.len()
    );
    let used = stored_bytes(&storage);
    // Room for index entries, not for another piece of zeros.
    storage.set_capacity_bytes(Some(used + 4096));
    let mut acked = 1;
    let error = loop {
        match log.append(&mut value_batch(&[payload(acked, 500)], 1)) {
            Ok(_) => acked += 1,
            Err(error) => break error,
        }
        assert!(acked < 1000, "the disk never filled");
    };
    assert!(matches!(error, AppendError::DiskFull { .. }), "{error}");
    assert!(acked > 100, "appends used the zeros written ahead: {acked} acknowledged");
    let records = read_all(&log);
    assert_eq!(records.len(), acked as usize);
    drop(log);
    storage.set_capacity_bytes(None);
    let log = open_sim(&storage, config, &clock);
    assert_eq!(log.recovery_report().bytes_dropped, 0);
    assert_eq!(log.recovery_report().fault, None);
    assert_eq!(read_all(&log), records);
}

#[test]
fn unknown_files_and_bad_configuration_are_refused_at_open() {
    // Opening names the offending file or the rule a setting breaks.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"hi").unwrap();
    let error = Partition::open(dir.path(), LogConfig::default()).unwrap_err();
    assert!(matches!(error, OpenError::UnexpectedFile { .. }));
    assert!(error.to_string().contains("notes.txt"));
    let config = LogConfig { segment_bytes_max: 10, ..LogConfig::default() };
    let error = Partition::open(dir.path(), config).unwrap_err().to_string();
    assert!(error.contains("segment_bytes_max is 10"), "{error}");
}

#[test]
fn at_most_open_segments_max_closed_segments_stay_open() {
    // The open-files limit holds however many segments are read.
    let storage = SimStorage::new(10);
    let config = LogConfig { open_segments_max: 2, ..small_config() };
    let log = open_sim(&storage, config, &clock());
    for index in 0..300u64 {
        log.append(&mut value_batch(&[payload(index, 100)], 1)).unwrap();
    }
    drop(log);
    let config = LogConfig { open_segments_max: 2, ..small_config() };
    let log = open_sim(&storage, config, &clock());
    assert!(log.segment_count() > 5);
    assert_eq!(read_all(&log).len(), 300);
    assert!(log.open_segment_count() <= 2, "{}", log.open_segment_count());
}

#[test]
fn opening_reads_the_same_whatever_the_amount_stored() {
    // Open cost depends on the checkpoint interval and segment count, not on bytes stored.
    let mut read_at_open = Vec::new();
    for records in [50u64, 2000] {
        let storage = SimStorage::new(11);
        let config = LogConfig {
            segment_bytes_max: 64 * 1024,
            batch_bytes_max: 64 * 1024,
            ..small_config()
        };
        let log = open_sim(&storage, config.clone(), &clock());
        for index in 0..records {
            log.append(&mut value_batch(&[payload(index, 1000)], 1)).unwrap();
        }
        drop(log); // no close: the tail past the last checkpoint must be rescanned
        let before = storage.bytes_read();
        let log = open_sim(&storage, config, &clock());
        read_at_open.push((storage.bytes_read() - before, log.segment_count()));
    }
    let (small, large) = (read_at_open[0], read_at_open[1]);
    assert!(large.1 > 20 * small.1, "{read_at_open:?}");
    // Per closed segment, open reads one 12-byte time-index entry; the rest is bounded by the
    // checkpoint interval plus one segment's index.
    assert!(large.0 <= small.0 + 64 * 1024 + 12 * large.1 as u64, "{read_at_open:?}");
}

/// A storage whose fdatasync blocks until the test opens the gate, to observe group commit.
#[derive(Debug)]
struct GatedStorage {
    inner: SimStorage,
    gate: Arc<(Mutex<(bool, u64)>, Condvar)>,
}

#[derive(Debug)]
struct GatedFile {
    inner: FileHandle,
    gate: Arc<(Mutex<(bool, u64)>, Condvar)>,
}

impl StorageFile for GatedFile {
    fn read_at(&self, buf: &mut [u8], position: u64) -> std::io::Result<usize> {
        self.inner.read_at(buf, position)
    }
    fn write_all_at(&self, buf: &[u8], position: u64) -> std::io::Result<()> {
        self.inner.write_all_at(buf, position)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        let (lock, opened) = &*self.gate;
        let mut state = lock.lock().unwrap();
        state.1 += 1;
        opened.notify_all();
        while !state.0 {
            state = opened.wait(state).unwrap();
        }
        drop(state);
        self.inner.sync_data()
    }
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
}

impl Storage for GatedStorage {
    fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list_files(&self, path: &Path) -> std::io::Result<Vec<String>> {
        self.inner.list_files(path)
    }
    fn open(&self, path: &Path, mode: OpenMode) -> std::io::Result<FileHandle> {
        let inner = self.inner.open(path, mode)?;
        Ok(Arc::new(GatedFile { inner, gate: Arc::clone(&self.gate) }))
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
fn concurrent_appends_share_one_fdatasync() {
    // Group commit: while one fdatasync runs, every appender that arrives waits for the next
    // one, so eight appenders blocked behind a slow sync need exactly two syncs in total.
    let gate = Arc::new((Mutex::new((true, 0u64)), Condvar::new()));
    let storage = Arc::new(GatedStorage { inner: SimStorage::new(12), gate: Arc::clone(&gate) });
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(0));
    let log = Arc::new(
        Partition::open_with(Path::new("/p"), LogConfig::default(), storage, clock).unwrap(),
    );
    gate.0.lock().unwrap().0 = false;
    let syncs_before = gate.0.lock().unwrap().1;
    let first = {
        let log = Arc::clone(&log);
        std::thread::spawn(move || log.append(&mut value_batch(&[b"first".to_vec()], 1)).unwrap())
    };
    let (lock, changed) = &*gate;
    let mut state = lock.lock().unwrap();
    while state.1 == syncs_before {
        state = changed.wait(state).unwrap(); // the first appender is now inside fdatasync
    }
    drop(state);
    let others: Vec<_> = (0..8)
        .map(|index| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || log.append(&mut value_batch(&[vec![index]], 1)).unwrap())
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while log.log_end_offset() < 9 {
        assert!(std::time::Instant::now() < deadline, "appenders did not write");
        std::thread::yield_now();
    }
    let mut state = lock.lock().unwrap();
    state.0 = true;
    changed.notify_all();
    drop(state);
    first.join().unwrap();
    for other in others {
        other.join().unwrap();
    }
    assert_eq!(log.high_watermark(), 9);
    assert_eq!(
        lock.lock().unwrap().1 - syncs_before,
        2,
        "one sync for the first, one for the other eight"
    );
}

#[test]
fn interval_and_none_policies_show_written_records_at_once_and_keep_them_across_close() {
    // The weaker policies still keep everything across a clean close.
    for durability in [Durability::Interval(Duration::from_millis(5)), Durability::None] {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig { durability, ..LogConfig::default() };
        let log = Partition::open(dir.path(), config.clone()).unwrap();
        for index in 0..50u64 {
            log.append(&mut value_batch(&[payload(index, 64)], 1)).unwrap();
        }
        assert_eq!(log.high_watermark(), 50, "written records are visible at once");
        log.close().unwrap();
        let log = Partition::open(dir.path(), config).unwrap();
        assert_eq!(read_all(&log).len(), 50);
        assert_eq!(log.recovery_report().bytes_scanned, 0);
    }
}

#[test]
fn a_damaged_closed_segment_is_reported_not_served() {
    // Bit rot in a closed segment surfaces as a corruption error at read time.
    let storage = SimStorage::new(13);
    let clock = clock();
    let log = open_sim(&storage, small_config(), &clock);
    for index in 0..100u64 {
        log.append(&mut value_batch(&[payload(index, 100)], 1)).unwrap();
    }
    drop(log);
    storage.corrupt(Path::new("/p/00000000000000000000.log"), 200, &[0xAB; 4]);
    let log = open_sim(&storage, small_config(), &clock);
    let failed = (0..10).map(|offset| log.read(offset, 1)).find(Result::is_err);
    let error = failed.expect("a read crossing the damage fails").unwrap_err();
    assert!(matches!(error, ReadError::Corrupt { .. }), "{error}");
}

#[test]
fn builder_batches_with_headers_survive_the_log() {
    // Headers and keys come back byte for byte.
    let dir = tempfile::tempdir().unwrap();
    let log = Partition::open(dir.path(), LogConfig::default()).unwrap();
    let headers = [sluice_format::Header { key: b"ce_id", value: Some(b"42") }];
    let mut builder = BatchBuilder::new(0);
    builder.push(&NewRecord { key: Some(b"k"), value: None, headers: &headers, timestamp_ms: 5 });
    let mut stored = builder.build();
    log.append(&mut stored).unwrap();
    let read = log.read(0, 1000).unwrap().batches;
    let record = sluice_format::records(&read).unwrap().next().unwrap().unwrap();
    assert_eq!(record.headers, headers.to_vec());
    assert_eq!(record.value, None);
}

/// `purge_before_tombstones`: a key's records before its newest tombstone go (whole segments
/// may empty), its tombstone and later records stay, other keys keep all their history, and
/// reads, key lookups and a reopen agree.
#[test]
fn purging_removes_a_keys_history_before_its_tombstone_and_nothing_else() {
    let storage = SimStorage::new(7);
    let clock = clock();
    let config = LogConfig { purge_before_tombstones: true, ..small_config() };
    let log = open_sim(&storage, config.clone(), &clock);
    let big = payload(1, 300);
    // 30 records of `gone` (several segments), interleaved with `kept`, then `gone`'s tombstone,
    // then a new record of `gone` after it, then filler to close the tombstone's segment.
    for index in 0..30u8 {
        log.append(&mut batch(&[(Some(b"gone"), Some(&big), 10)])).unwrap();
        if index % 3 == 0 {
            log.append(&mut batch(&[(Some(b"kept"), Some(&[index][..]), 10)])).unwrap();
        }
    }
    let tombstone = log.append(&mut batch(&[(Some(b"gone"), None, 11)])).unwrap().base_offset;
    let after = log.append(&mut batch(&[(Some(b"gone"), Some(b"again"), 12)])).unwrap().base_offset;
    for _ in 0..20 {
        log.append(&mut batch(&[(Some(b"filler"), Some(&big), 13)])).unwrap();
    }
    let kept_before = log.key_offsets(b"kept", 0, u64::MAX).unwrap();
    let report = log.run_maintenance().unwrap().1;
    assert!(report.records_removed >= 30, "{report:?}");
    for log in [log, open_sim(&storage, config.clone(), &clock)] {
        assert_eq!(log.key_offsets(b"gone", 0, u64::MAX).unwrap(), vec![tombstone, after]);
        assert_eq!(log.key_offsets(b"kept", 0, u64::MAX).unwrap(), kept_before);
        let records = read_all(&log);
        assert!(records.iter().all(
            |record| record.key.as_deref() != Some(&b"gone"[..]) || record.offset >= tombstone
        ));
        assert_eq!(records.iter().filter(|r| r.key.as_deref() == Some(&b"filler"[..])).count(), 20);
        drop(log);
    }
    let refused = LogConfig { compact: true, ..config };
    assert!(refused.validate().is_err());
}
