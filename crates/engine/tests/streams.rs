//! Event streams through the engine's API, on real files.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_engine::partitioner::partition_for_key;
use sluice_engine::streams::{
    Direction, ExpectedVersion, NewEvent, ReadStream, StreamMetadata, StreamWrite, SubscriptionFrom,
};
use sluice_engine::{ProduceRecord, Sluice, StreamError, TopicConfig};

fn event(kind: &str, data: &str) -> NewEvent {
    NewEvent { event_type: kind.to_owned(), data: data.as_bytes().to_vec(), ..NewEvent::default() }
}

fn topic(partitions: u32) -> TopicConfig {
    TopicConfig { partitions, retention_age_ms: None, ..TopicConfig::default() }
}

fn versions(events: &[sluice_engine::streams::StreamEvent]) -> Vec<u64> {
    events.iter().map(|event| event.version).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_check_the_expected_version_and_say_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Sluice::open(dir.path()).unwrap();
    engine.create_topic("account", topic(3)).unwrap();
    let opened = engine
        .append_stream(
            "account",
            "account-42",
            ExpectedVersion::NoStream,
            vec![event("Opened", "{}")],
        )
        .await
        .unwrap();
    assert_eq!(opened.version, 0);
    assert_eq!(opened.partition, partition_for_key(b"account-42", 3));
    let more = vec![event("Deposited", "{\"amount\":5}"), event("Deposited", "{\"amount\":7}")];
    let appended = engine
        .append_stream("account", "account-42", ExpectedVersion::Exact(0), more)
        .await
        .unwrap();
    assert_eq!(appended.version, 2);
    assert_eq!(appended.offsets.len(), 2);

    for (expected, text) in [
        (ExpectedVersion::Exact(1), "expected version 1, stream account-42 is at version 2"),
        (ExpectedVersion::NoStream, "expected no stream, stream account-42 is at version 2"),
    ] {
        let error = engine
            .append_stream("account", "account-42", expected, vec![event("Deposited", "{}")])
            .await
            .unwrap_err();
        assert!(matches!(error, StreamError::WrongExpectedVersion { actual: 2, .. }), "{error}");
        assert_eq!(error.to_string(), text);
    }
    let error = engine
        .append_stream(
            "account",
            "account-7",
            ExpectedVersion::StreamExists,
            vec![event("X", "{}")],
        )
        .await
        .unwrap_err();
    assert_eq!(error.to_string(), "expected an existing stream, stream account-7 does not exist");

    let read = engine.read_stream("account", "account-42", ReadStream::default()).await.unwrap();
    assert_eq!(versions(&read.events), vec![0, 1, 2]);
    assert_eq!(read.version, 2);
    let first = &read.events[1];
    assert_eq!(first.event_type, "Deposited");
    assert_eq!(first.data, b"{\"amount\":5}");
    let header = |name: &str| {
        first.headers.iter().find(|(key, _)| key == name).and_then(|(_, value)| value.clone())
    };
    assert_eq!(header("sluice-stream-version").as_deref(), Some(&b"1"[..]));
    assert_eq!(header("ce_subject").as_deref(), Some(&b"account-42"[..]));
    assert_eq!(header("ce_specversion").as_deref(), Some(&b"1.0"[..]));
    assert_eq!(header("content-type").as_deref(), Some(&b"application/json"[..]));
    assert_eq!(header("ce_id").map(|id| id.len()), Some(36));

    // The events are ordinary records too: a fetch sees them with their headers.
    let fetched =
        engine.fetch("account", first.partition, 0, 1 << 20, Duration::ZERO).await.unwrap();
    assert_eq!(fetched.records_from(0).unwrap().len(), 3);

    // A produce may not forge a version.
    let forged = ProduceRecord {
        key: Some(b"account-42".to_vec()),
        value: Some(b"{}".to_vec()),
        headers: vec![("sluice-stream-version".to_owned(), Some(b"3".to_vec()))],
        ..ProduceRecord::default()
    };
    let error = engine.produce("account", vec![forged]).await.unwrap_err();
    assert!(error.to_string().contains("sluice-stream-version"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_append_with_the_same_ids_gets_the_first_result() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Sluice::open(dir.path()).unwrap();
    engine.create_topic("orders", topic(1)).unwrap();
    let with_id = |id: &str| NewEvent { id: Some(id.to_owned()), ..event("Placed", "{}") };
    let first = engine
        .append_stream(
            "orders",
            "order-1",
            ExpectedVersion::NoStream,
            vec![with_id("a"), with_id("b")],
        )
        .await
        .unwrap();
    let again = engine
        .append_stream(
            "orders",
            "order-1",
            ExpectedVersion::NoStream,
            vec![with_id("a"), with_id("b")],
        )
        .await
        .unwrap();
    assert_eq!(again, first);
    let other = engine
        .append_stream("orders", "order-1", ExpectedVersion::NoStream, vec![with_id("c")])
        .await
        .unwrap_err();
    assert!(matches!(other, StreamError::WrongExpectedVersion { .. }));
    let read = engine.read_stream("orders", "order-1", ReadStream::default()).await.unwrap();
    assert_eq!(read.events.len(), 2);
}

/// Many tasks race appends with exact expected versions on a few streams: for every stream
/// and version exactly one append wins, versions have no gaps or duplicates, losers are told.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_appends_one_winner_per_version_no_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Sluice::open(dir.path()).unwrap();
    engine.create_topic("race", topic(2)).unwrap();
    const TASKS: usize = 16;
    const STREAMS: usize = 5;
    const ATTEMPTS: usize = 40;
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let (mut won, mut lost) = (Vec::new(), 0);
            for attempt in 0..ATTEMPTS {
                let stream = format!("s{}", (task + attempt) % STREAMS);
                let known = match engine.read_stream("race", &stream, ReadStream::default()).await {
                    Ok(slice) => ExpectedVersion::Exact(slice.version as u64),
                    Err(StreamError::StreamNotFound { .. }) => ExpectedVersion::NoStream,
                    Err(error) => panic!("{error}"),
                };
                let id = format!("t{task}-a{attempt}");
                let new = NewEvent { id: Some(id.clone()), ..event("Raced", &id) };
                match engine.append_stream("race", &stream, known, vec![new]).await {
                    Ok(appended) => won.push((stream, appended.version, id)),
                    Err(StreamError::WrongExpectedVersion { .. }) => lost += 1,
                    Err(error) => panic!("{error}"),
                }
            }
            (won, lost)
        }));
    }
    check_race(&engine, tasks, TASKS * ATTEMPTS).await;
}

/// Streams of one partition, one append: all conditions hold and everything is appended, or
/// nothing is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_stream_appends_are_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Sluice::open(dir.path()).unwrap();
    engine.create_topic("bank", topic(4)).unwrap();
    // Two streams that share a partition, and one that does not.
    let partition = partition_for_key(b"acct-0", 4);
    let same = (1..)
        .map(|i| format!("acct-{i}"))
        .find(|name| partition_for_key(name.as_bytes(), 4) == partition)
        .unwrap();
    let other = (1..)
        .map(|i| format!("acct-{i}"))
        .find(|name| partition_for_key(name.as_bytes(), 4) != partition)
        .unwrap();
    for stream in ["acct-0", same.as_str()] {
        engine
            .append_stream("bank", stream, ExpectedVersion::NoStream, vec![event("Opened", "{}")])
            .await
            .unwrap();
    }
    let transfer = |debit_expected, credit_expected| {
        vec![
            StreamWrite {
                stream: "acct-0".to_owned(),
                expected: debit_expected,
                events: vec![event("Debited", "{}")],
            },
            StreamWrite {
                stream: same.clone(),
                expected: credit_expected,
                events: vec![event("Credited", "{}")],
            },
        ]
    };
    let done = engine
        .append_streams("bank", transfer(ExpectedVersion::Exact(0), ExpectedVersion::Exact(0)))
        .await
        .unwrap();
    assert_eq!(done.iter().map(|d| d.version).collect::<Vec<_>>(), vec![1, 1]);
    assert_eq!(done[1].offsets[0], done[0].offsets[0] + 1, "one batch");
    // The credit side's condition fails: the debit is not appended either.
    let error = engine
        .append_streams("bank", transfer(ExpectedVersion::Exact(1), ExpectedVersion::Exact(0)))
        .await
        .unwrap_err();
    assert_eq!(error.to_string(), format!("expected version 0, stream {same} is at version 1"));
    let debit = engine.read_stream("bank", "acct-0", ReadStream::default()).await.unwrap();
    assert_eq!(debit.version, 1);
    // A condition without events.
    let guarded = vec![
        StreamWrite {
            stream: "acct-0".to_owned(),
            expected: ExpectedVersion::Exact(1),
            events: vec![event("Debited", "{}")],
        },
        StreamWrite { stream: same.clone(), expected: ExpectedVersion::Exact(1), events: vec![] },
    ];
    let done = engine.append_streams("bank", guarded).await.unwrap();
    assert_eq!((done[0].version, done[1].version), (2, 1));
    assert!(done[1].offsets.is_empty());
    // Across partitions it is refused, naming both.
    let across = vec![
        StreamWrite {
            stream: "acct-0".to_owned(),
            expected: ExpectedVersion::Any,
            events: vec![event("X", "{}")],
        },
        StreamWrite {
            stream: other.clone(),
            expected: ExpectedVersion::Any,
            events: vec![event("X", "{}")],
        },
    ];
    let error = engine.append_streams("bank", across).await.unwrap_err();
    assert!(error.to_string().contains("different partitions"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_delete_hides_the_stream_until_no_stream_brings_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Sluice::open(dir.path()).unwrap();
    engine.create_topic("cart", topic(1)).unwrap();
    let three = vec![event("A", "1"), event("B", "2"), event("C", "3")];
    engine.append_stream("cart", "c1", ExpectedVersion::NoStream, three).await.unwrap();
    let error = engine.delete_stream("cart", "c1", ExpectedVersion::Exact(1)).await.unwrap_err();
    assert!(matches!(error, StreamError::WrongExpectedVersion { .. }));
    assert_eq!(engine.delete_stream("cart", "c1", ExpectedVersion::Exact(2)).await.unwrap(), 2);
    let error = engine.read_stream("cart", "c1", ReadStream::default()).await.unwrap_err();
    assert_eq!(error.to_string(), "stream c1 was deleted at version 2 in topic 'cart'");
    for expected in [ExpectedVersion::Any, ExpectedVersion::Exact(2), ExpectedVersion::StreamExists]
    {
        let error =
            engine.append_stream("cart", "c1", expected, vec![event("D", "4")]).await.unwrap_err();
        assert!(error.to_string().contains("was deleted at version 2"), "{error}");
    }
    let back = engine
        .append_stream("cart", "c1", ExpectedVersion::NoStream, vec![event("D", "4")])
        .await
        .unwrap();
    assert_eq!(back.version, 3);
    let read = engine.read_stream("cart", "c1", ReadStream::default()).await.unwrap();
    assert_eq!(versions(&read.events), vec![3]);
    assert_eq!(read.first_visible, 3);
    // A restart derives the same: heads from the log, the deletion from __streams.
    engine.shutdown().unwrap();
    drop(engine);
    let engine = Sluice::open(dir.path()).unwrap();
    let read = engine.read_stream("cart", "c1", ReadStream::default()).await.unwrap();
    assert_eq!(versions(&read.events), vec![3]);
    let next = engine
        .append_stream("cart", "c1", ExpectedVersion::Exact(3), vec![event("E", "5")])
        .await
        .unwrap();
    assert_eq!(next.version, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_truncates_and_limits_reads() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Sluice::open(dir.path()).unwrap();
    engine.create_topic("log", topic(1)).unwrap();
    let ten: Vec<NewEvent> = (0..10).map(|i| event("E", &i.to_string())).collect();
    engine.append_stream("log", "s", ExpectedVersion::NoStream, ten).await.unwrap();
    let set = |metadata| engine.set_stream_metadata("log", "s", metadata);
    set(StreamMetadata { truncate_before: Some(4), ..StreamMetadata::default() }).await.unwrap();
    let read = engine.read_stream("log", "s", ReadStream::default()).await.unwrap();
    assert_eq!(versions(&read.events), (4..10).collect::<Vec<_>>());
    set(StreamMetadata { max_count: Some(3), ..StreamMetadata::default() }).await.unwrap();
    let backward = ReadStream { direction: Direction::Backward, ..ReadStream::default() };
    let read = engine.read_stream("log", "s", backward).await.unwrap();
    assert_eq!(versions(&read.events), vec![9, 8, 7]);
    assert_eq!(engine.stream_metadata("log", "s").unwrap().max_count, Some(3));
    let error =
        set(StreamMetadata { max_count: Some(0), ..StreamMetadata::default() }).await.unwrap_err();
    assert!(error.to_string().contains("max_count"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_store_the_newest_and_refuse_a_version_past_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Sluice::open(dir.path()).unwrap();
    engine.create_topic("acct", topic(2)).unwrap();
    let five: Vec<NewEvent> = (0..5).map(|i| event("E", &i.to_string())).collect();
    engine.append_stream("acct", "a", ExpectedVersion::NoStream, five).await.unwrap();
    assert_eq!(engine.load_snapshot("acct", "a").await.unwrap(), None);
    engine.save_snapshot("acct", "a", 2, b"state@2".to_vec()).await.unwrap();
    engine.save_snapshot("acct", "a", 4, b"state@4".to_vec()).await.unwrap();
    let error = engine.save_snapshot("acct", "a", 5, b"x".to_vec()).await.unwrap_err();
    assert_eq!(error.to_string(), "a snapshot at version 5, but stream a is at version 4");
    let error = engine.save_snapshot("acct", "nope", 0, b"x".to_vec()).await.unwrap_err();
    assert!(matches!(error, StreamError::StreamNotFound { .. }));
    engine.shutdown().unwrap();
    drop(engine);
    let engine = Sluice::open(dir.path()).unwrap();
    let snapshot = engine.load_snapshot("acct", "a").await.unwrap().unwrap();
    assert_eq!((snapshot.version, snapshot.data.as_slice()), (4, &b"state@4"[..]));
    // Deleting the topic forgets its streams' snapshots and metadata.
    engine.delete_topic("acct").unwrap();
    engine.create_topic("acct", topic(2)).unwrap();
    assert_eq!(engine.load_snapshot("acct", "a").await.unwrap(), None);
}

/// Events are found through the key index after segments roll, across a restart, and with
/// every `.keys` file deleted (they are rebuilt from the log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_use_the_key_index_and_survive_losing_it() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Sluice::open(dir.path()).unwrap();
    let config =
        TopicConfig { segment_bytes: Some(1024 * 1024), record_bytes_max: 65_536, ..topic(1) };
    engine.create_topic("big", config).unwrap();
    let payload = "x".repeat(1000);
    for round in 0..30 {
        for stream in 0..100 {
            let expected = if round == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(round - 1)
            };
            engine
                .append_stream("big", &format!("s{stream}"), expected, vec![event("E", &payload)])
                .await
                .unwrap();
        }
    }
    let check = |engine: Sluice| async move {
        let read = engine
            .read_stream("big", "s17", ReadStream { from: Some(25), ..ReadStream::default() })
            .await
            .unwrap();
        assert_eq!(versions(&read.events), (25..30).collect::<Vec<_>>());
        let back = ReadStream {
            from: Some(3),
            direction: Direction::Backward,
            count: 2,
            ..ReadStream::default()
        };
        let read = engine.read_stream("big", "s17", back).await.unwrap();
        assert_eq!(versions(&read.events), vec![3, 2]);
        assert_eq!(read.next, Some(1));
    };
    check(engine.clone()).await;
    engine.shutdown().unwrap();
    drop(engine);
    let partition_dir = dir.path().join("topics/big/0");
    let mut removed = 0;
    for entry in std::fs::read_dir(&partition_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|extension| extension == "keys") {
            std::fs::remove_file(path).unwrap();
            removed += 1;
        }
    }
    assert!(removed >= 2, "the test wants several closed segments; found {removed} .keys files");
    let engine = Sluice::open(dir.path()).unwrap();
    check(engine.clone()).await;
    // The head came from the log: the next append continues at version 30.
    let appended = engine
        .append_stream("big", "s17", ExpectedVersion::Exact(29), vec![event("E", "{}")])
        .await
        .unwrap();
    assert_eq!(appended.version, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_of_reads_the_stream_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Sluice::open(dir.path()).unwrap();
    engine.create_topic("t", topic(1)).unwrap();
    let mut marks = Vec::new();
    for version in 0..5u64 {
        let expected =
            version.checked_sub(1).map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
        engine.append_stream("t", "s", expected, vec![event("E", "{}")]).await.unwrap();
        marks.push(sluice_engine_now());
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    for (version, mark) in marks.iter().enumerate() {
        let read = ReadStream { as_of_ms: Some(*mark), ..ReadStream::default() };
        let slice = engine.read_stream("t", "s", read).await.unwrap();
        assert_eq!(slice.version, version as i64);
        assert_eq!(versions(&slice.events), (0..=version as u64).collect::<Vec<_>>());
    }
    let before = ReadStream { as_of_ms: Some(marks[0] - 60_000), ..ReadStream::default() };
    let slice = engine.read_stream("t", "s", before).await.unwrap();
    assert_eq!((slice.version, slice.events.len()), (-1, 0));
}

fn sluice_engine_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// A catch-up subscription started while appends race it sees every event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_subscriptions_switch_to_live_without_gap_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Sluice::open(dir.path()).unwrap();
    engine.create_topic("feed", topic(3)).unwrap();
    const PER_STREAM: u64 = 150;
    let streams: Vec<String> = (0..4).map(|i| format!("f{i}")).collect();
    let append = |engine: Sluice, streams: Vec<String>, range: std::ops::Range<u64>| async move {
        for version in range {
            for stream in &streams {
                let expected = version
                    .checked_sub(1)
                    .map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
                engine
                    .append_stream("feed", stream, expected, vec![event("E", &version.to_string())])
                    .await
                    .unwrap();
            }
        }
    };
    append(engine.clone(), streams.clone(), 0..50).await;
    let mut one =
        engine.subscribe_stream("feed", "f2", SubscriptionFrom::Version(10)).await.unwrap();
    let mut all = engine.subscribe_topic("feed", SubscriptionFrom::Start).unwrap();
    let writer = tokio::spawn(append(engine.clone(), streams.clone(), 50..PER_STREAM));
    let mut seen = Vec::new();
    while seen.len() < (PER_STREAM - 10) as usize {
        let event = one.next_within(Duration::from_secs(10)).await.unwrap().expect("an event");
        seen.push(event.version);
    }
    assert_eq!(seen, (10..PER_STREAM).collect::<Vec<_>>());
    let mut per_stream: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for _ in 0..PER_STREAM as usize * streams.len() {
        let event = all.next_within(Duration::from_secs(10)).await.unwrap().expect("an event");
        per_stream.entry(event.stream).or_default().push(event.version);
    }
    writer.await.unwrap();
    for stream in &streams {
        assert_eq!(per_stream[stream], (0..PER_STREAM).collect::<Vec<_>>(), "{stream}");
    }
    assert_eq!(all.next_within(Duration::from_millis(100)).await.unwrap(), None);
    // Resuming from a position continues exactly there.
    let position = all.position();
    engine
        .append_stream("feed", "f0", ExpectedVersion::Any, vec![event("Late", "{}")])
        .await
        .unwrap();
    let mut resumed = engine.subscribe_topic("feed", SubscriptionFrom::Offsets(position)).unwrap();
    let late = resumed.next_within(Duration::from_secs(10)).await.unwrap().unwrap();
    assert_eq!(
        (late.stream.as_str(), late.event_type.as_str(), late.version),
        ("f0", "Late", PER_STREAM)
    );
}

/// Found by the model test's author: retries after a re-creation, and under `max_count`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_recognised_after_a_soft_delete_and_under_max_count() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Sluice::open(dir.path()).unwrap();
    engine.create_topic("r", topic(1)).unwrap();
    let with_id = |id: &str| NewEvent { id: Some(id.to_owned()), ..event("E", "{}") };
    engine.append_stream("r", "a", ExpectedVersion::NoStream, vec![with_id("a0")]).await.unwrap();
    engine.delete_stream("r", "a", ExpectedVersion::Any).await.unwrap();
    let first = engine
        .append_stream("r", "a", ExpectedVersion::NoStream, vec![with_id("a1")])
        .await
        .unwrap();
    let retry = engine
        .append_stream("r", "a", ExpectedVersion::NoStream, vec![with_id("a1")])
        .await
        .unwrap();
    assert_eq!((retry.version, &retry.offsets), (1, &first.offsets));

    let metadata = StreamMetadata { max_count: Some(1), ..StreamMetadata::default() };
    engine.set_stream_metadata("r", "a", metadata).await.unwrap();
    let two = || vec![with_id("a2"), with_id("a3")];
    let first = engine.append_stream("r", "a", ExpectedVersion::Exact(1), two()).await.unwrap();
    let retry = engine.append_stream("r", "a", ExpectedVersion::Exact(1), two()).await.unwrap();
    assert_eq!(retry, first);
}

/// `hard_delete_streams`: after a soft delete, maintenance removes the stream's events from
/// closed segments for good; other streams keep their history, the deletion still reads as
/// deleted, and the name comes back with `no_stream` at the next version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_delete_removes_a_deleted_streams_events_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Sluice::open(dir.path()).unwrap();
    let config = TopicConfig {
        segment_bytes: Some(1024 * 1024),
        record_bytes_max: 65_536,
        hard_delete_streams: true,
        ..topic(1)
    };
    engine.create_topic("ledger", config).unwrap();
    let payload = "x".repeat(2000);
    for version in 0..400u64 {
        let expected =
            version.checked_sub(1).map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
        for stream in ["doomed", "kept"] {
            engine
                .append_stream("ledger", stream, expected, vec![event("E", &payload)])
                .await
                .unwrap();
        }
    }
    assert_eq!(
        engine.delete_stream("ledger", "doomed", ExpectedVersion::Exact(399)).await.unwrap(),
        399
    );
    // Close the tombstone's segment, then run maintenance.
    for version in 400..700u64 {
        engine
            .append_stream(
                "ledger",
                "kept",
                ExpectedVersion::Exact(version - 1),
                vec![event("E", &payload)],
            )
            .await
            .unwrap();
    }
    let before = engine.describe_topic("ledger").unwrap().partitions[0].size_bytes;
    engine.run_maintenance();
    let after = engine.describe_topic("ledger").unwrap().partitions[0].size_bytes;
    assert!(after < before - 700_000, "maintenance freed only {} bytes", before - after);
    let fetched = engine.fetch("ledger", 0, 0, 64 << 20, Duration::ZERO).await.unwrap();
    let doomed_left = fetched
        .records_from(0)
        .unwrap()
        .iter()
        .filter(|record| record.key.as_deref() == Some(&b"doomed"[..]))
        .count();
    assert!(
        doomed_left <= 1,
        "{doomed_left} records of the deleted stream are left (only its tombstone may be)"
    );
    let kept = engine.read_stream("ledger", "kept", ReadStream::default()).await.unwrap();
    assert_eq!(versions(&kept.events), (0..700).collect::<Vec<_>>());
    let error = engine.read_stream("ledger", "doomed", ReadStream::default()).await.unwrap_err();
    assert!(error.to_string().contains("deleted at version 399"), "{error}");
    let back = engine
        .append_stream("ledger", "doomed", ExpectedVersion::NoStream, vec![event("Reborn", "{}")])
        .await
        .unwrap();
    assert_eq!(back.version, 400);
    let mutually_exclusive = TopicConfig { compact: true, hard_delete_streams: true, ..topic(1) };
    assert!(engine.create_topic("both", mutually_exclusive).is_err());
}

/// Independent appends in one call: each holds or fails on its own, appends to one stream see
/// the ones before them, and what was appended is durable and reads back after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_each_checks_every_append_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = Sluice::open(dir.path()).unwrap();
        engine.create_topic("acc", topic(4)).unwrap();
        engine
            .append_stream("acc", "b", ExpectedVersion::NoStream, vec![event("Opened", "{}")])
            .await
            .unwrap();
        let write = |stream: &str, expected, count: usize| StreamWrite {
            stream: stream.to_owned(),
            expected,
            events: (0..count).map(|i| event("Moved", &format!("{{\"n\":{i}}}"))).collect(),
        };
        let outcomes = engine
            .append_each(
                "acc",
                vec![
                    write("a", ExpectedVersion::NoStream, 2),
                    write("b", ExpectedVersion::Exact(5), 1),
                    write("a", ExpectedVersion::Exact(1), 1),
                    write("c", ExpectedVersion::Any, 1),
                    write("a", ExpectedVersion::Exact(1), 1),
                    write("", ExpectedVersion::Any, 1),
                    write("d", ExpectedVersion::Any, 0),
                    write("b", ExpectedVersion::StreamExists, 2),
                ],
            )
            .await
            .unwrap();
        let summary: Vec<Result<(String, i64, usize), String>> = outcomes
            .iter()
            .map(|outcome| match outcome {
                Ok(done) => Ok((done.stream.clone(), done.version, done.offsets.len())),
                Err(error) => Err(error.to_string()),
            })
            .collect();
        assert_eq!(summary[0], Ok(("a".to_owned(), 1, 2)));
        assert!(
            matches!(&outcomes[1], Err(StreamError::WrongExpectedVersion { actual: 0, .. })),
            "{summary:?}"
        );
        assert_eq!(summary[2], Ok(("a".to_owned(), 2, 1)), "sees the first append to a");
        assert_eq!(summary[3], Ok(("c".to_owned(), 0, 1)));
        assert!(
            matches!(&outcomes[4], Err(StreamError::WrongExpectedVersion { actual: 2, .. })),
            "{summary:?}"
        );
        assert!(matches!(&outcomes[5], Err(StreamError::Invalid(_))), "{summary:?}");
        assert!(matches!(&outcomes[6], Err(StreamError::Invalid(_))), "no events: {summary:?}");
        assert_eq!(summary[7], Ok(("b".to_owned(), 2, 2)));
        let refused = engine.append_each("acc", vec![]).await.unwrap_err();
        assert!(refused.to_string().contains("allowed is 1..=1000"), "{refused}");
        let unknown = engine.append_each("nope", vec![write("a", ExpectedVersion::Any, 1)]).await;
        assert!(matches!(unknown, Err(StreamError::UnknownTopic(_))));
        // No shutdown: what was answered is durable.
    }
    let engine = Sluice::open(dir.path()).unwrap();
    for (stream, count) in [("a", 3), ("b", 3), ("c", 1)] {
        let read = engine.read_stream("acc", stream, ReadStream::default()).await.unwrap();
        assert_eq!(versions(&read.events), (0..count).collect::<Vec<u64>>(), "stream {stream}");
    }
    let missing = engine.read_stream("acc", "d", ReadStream::default()).await.unwrap_err();
    assert!(matches!(missing, StreamError::StreamNotFound { .. }));
}

/// Many tasks race `append_each` calls of several appends each, with exact expected versions:
/// per stream and version one append wins, versions have no gaps, and the losers are told.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_append_each_calls_one_winner_per_version_no_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Sluice::open(dir.path()).unwrap();
    engine.create_topic("race", topic(2)).unwrap();
    const TASKS: usize = 8;
    const STREAMS: usize = 6;
    const ROUNDS: usize = 20;
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let (mut won, mut lost) = (Vec::new(), 0);
            for round in 0..ROUNDS {
                let mut writes = Vec::new();
                for pick in 0..3 {
                    let stream = format!("s{}", (task + round + pick * 2) % STREAMS);
                    let known =
                        match engine.read_stream("race", &stream, ReadStream::default()).await {
                            Ok(slice) => ExpectedVersion::Exact(slice.version as u64),
                            Err(StreamError::StreamNotFound { .. }) => ExpectedVersion::NoStream,
                            Err(error) => panic!("{error}"),
                        };
                    let id = format!("t{task}-r{round}-p{pick}");
                    let new = NewEvent { id: Some(id.clone()), ..event("Raced", &id) };
                    writes.push(StreamWrite { stream, expected: known, events: vec![new] });
                }
                let ids: Vec<String> =
                    writes.iter().map(|write| write.events[0].id.clone().unwrap()).collect();
                let outcomes = engine.append_each("race", writes).await.unwrap();
                for (outcome, id) in outcomes.into_iter().zip(ids) {
                    match outcome {
                        Ok(appended) => won.push((appended.stream, appended.version, id)),
                        Err(StreamError::WrongExpectedVersion { .. }) => lost += 1,
                        Err(error) => panic!("{error}"),
                    }
                }
            }
            (won, lost)
        }));
    }
    check_race(&engine, tasks, TASKS * ROUNDS * 3).await;
}

/// What a racing task reports: the appends it won (stream, version, event id), and how many
/// it lost to a conflict.
type Raced = tokio::task::JoinHandle<(Vec<(String, i64, String)>, usize)>;

/// One winner per stream and version, `attempts` in all between winners and losers, at least
/// one loss, and each stream in topic `race` holds exactly its winners, versions without gaps.
async fn check_race(engine: &Sluice, tasks: Vec<Raced>, attempts: usize) {
    let mut winners: BTreeMap<String, BTreeMap<i64, String>> = BTreeMap::new();
    let mut losses = 0;
    for task in tasks {
        let (won, lost) = task.await.unwrap();
        losses += lost;
        for (stream, version, id) in won {
            let previous = winners.entry(stream).or_default().insert(version, id);
            assert!(previous.is_none(), "two appends won one version");
        }
    }
    assert!(losses > 0, "the race produced no conflict; the test did not race");
    let total: usize = winners.values().map(BTreeMap::len).sum();
    assert_eq!(total + losses, attempts);
    for (stream, won) in &winners {
        let read = engine.read_stream("race", stream, ReadStream::default()).await.unwrap();
        let stored: Vec<(i64, String)> =
            read.events.iter().map(|event| (event.version as i64, event.id.clone())).collect();
        let expected: Vec<(i64, String)> = won.iter().map(|(v, id)| (*v, id.clone())).collect();
        assert_eq!(stored, expected, "stream {stream}");
        assert_eq!(versions(&read.events), (0..read.events.len() as u64).collect::<Vec<_>>());
    }
}
