//! The engine end to end in-process: topic administration persisted across reopen, Kafka
//! placement by key, per-key order, id deduplication (also across a restart and between
//! concurrent producers), long-poll fetches, and the errors bad requests get.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sluice_engine::partitioner::partition_for_key;
use sluice_engine::{
    Engine, ErrorCode, FetchError, ProduceError, ProduceRecord, TopicConfig, TopicError,
};

fn keyed(key: &str, value: &str) -> ProduceRecord {
    ProduceRecord { key: Some(key.into()), value: Some(value.into()), ..ProduceRecord::default() }
}

fn with_id(id: &str, value: &str) -> ProduceRecord {
    ProduceRecord { id: Some(id.to_owned()), value: Some(value.into()), ..ProduceRecord::default() }
}

fn topic(partitions: u32) -> TopicConfig {
    TopicConfig { partitions, ..TopicConfig::default() }
}

/// Every record of every partition, as (partition, offset, key, value).
async fn read_everything(
    engine: &Engine,
    name: &str,
) -> Vec<(u32, u64, Option<Vec<u8>>, Option<Vec<u8>>)> {
    let description = engine.describe_topic(name).unwrap();
    let mut out = Vec::new();
    for partition in description.partitions {
        let mut offset = partition.log_start_offset;
        while offset < partition.high_watermark {
            let fetched = engine
                .fetch(name, partition.partition, offset, 1 << 20, Duration::ZERO)
                .await
                .unwrap();
            let records = fetched.records_from(offset).unwrap();
            offset = records.last().unwrap().offset + 1;
            out.extend(
                records
                    .into_iter()
                    .map(|record| (partition.partition, record.offset, record.key, record.value)),
            );
        }
    }
    out
}

#[tokio::test]
async fn topics_are_created_listed_described_deleted_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    engine.create_topic("orders", topic(3)).unwrap();
    engine.create_topic("audit.log_v2", topic(1)).unwrap();
    engine.create_topic("gone", topic(2)).unwrap();
    engine.produce("gone", vec![keyed("k", "v")]).await.unwrap();
    engine.delete_topic("gone").unwrap();
    assert!(matches!(engine.create_topic("orders", topic(1)), Err(TopicError::Exists(_))));
    let names: Vec<String> = engine.list_topics().into_iter().map(|topic| topic.name).collect();
    assert_eq!(names, ["audit.log_v2", "orders"]);
    engine.shutdown().unwrap();
    drop(engine);

    let engine = Engine::open(dir.path()).unwrap();
    let names: Vec<String> = engine.list_topics().into_iter().map(|topic| topic.name).collect();
    assert_eq!(names, ["audit.log_v2", "orders"]);
    assert_eq!(engine.describe_topic("orders").unwrap().partitions.len(), 3);
    // A deleted topic's name can be reused, and it starts empty.
    engine.create_topic("gone", topic(1)).unwrap();
    assert_eq!(engine.describe_topic("gone").unwrap().partitions[0].high_watermark, 0);
}

#[tokio::test]
async fn bad_names_and_settings_are_refused_with_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let error = engine.create_topic("has space", topic(1)).unwrap_err();
    assert_eq!(error.code(), ErrorCode::InvalidName);
    assert!(error.to_string().contains("' '"), "{error}");
    let error = engine.create_topic("__internal", topic(1)).unwrap_err();
    assert_eq!(error.code(), ErrorCode::InvalidName);
    let error = engine.create_topic("fine", topic(0)).unwrap_err();
    assert!(error.to_string().contains("partitions is 0"), "{error}");
    assert!(matches!(engine.describe_topic("nope"), Err(TopicError::Unknown(_))));
    assert!(engine.list_topics().is_empty());
}

#[tokio::test]
async fn keys_land_where_kafka_would_put_them_and_keep_their_order() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    engine.create_topic("t", topic(4)).unwrap();
    let mut sent: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for round in 0..5 {
        let records: Vec<ProduceRecord> = (0..20)
            .map(|index| {
                let key = format!("key-{}", index % 7);
                let value = format!("{round}-{index}");
                sent.entry(key.clone()).or_default().push(value.clone());
                keyed(&key, &value)
            })
            .collect();
        let produced = engine.produce("t", records.clone()).await.unwrap();
        for (record, produced) in records.iter().zip(&produced) {
            assert_eq!(produced.partition, partition_for_key(record.key.as_ref().unwrap(), 4));
            assert!(!produced.duplicate);
        }
    }
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (_, _, key, value) in read_everything(&engine, "t").await {
        let key = String::from_utf8(key.unwrap()).unwrap();
        seen.entry(key).or_default().push(String::from_utf8(value.unwrap()).unwrap());
    }
    assert_eq!(seen, sent);
}

#[tokio::test]
async fn a_record_id_is_appended_once_within_the_window_even_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    engine.create_topic("t", topic(3)).unwrap();
    let first =
        engine.produce("t", vec![with_id("evt-1", "a"), with_id("evt-2", "b")]).await.unwrap();
    let again = engine.produce("t", vec![with_id("evt-1", "a-retry")]).await.unwrap();
    assert!(again[0].duplicate);
    assert_eq!((again[0].partition, again[0].offset), (first[0].partition, first[0].offset));
    engine.shutdown().unwrap();
    drop(engine);

    let engine = Engine::open(dir.path()).unwrap();
    let after = engine
        .produce("t", vec![with_id("evt-2", "b-retry"), with_id("evt-3", "c")])
        .await
        .unwrap();
    assert!(after[0].duplicate, "the window is rebuilt from the log");
    assert_eq!((after[0].partition, after[0].offset), (first[1].partition, first[1].offset));
    assert!(!after[1].duplicate);
    let values: Vec<Vec<u8>> =
        read_everything(&engine, "t").await.into_iter().filter_map(|record| record.3).collect();
    assert_eq!(values.len(), 3, "{values:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_producers_of_one_id_append_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    engine.create_topic("t", topic(2)).unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let engine = engine.clone();
            tokio::spawn(async move {
                engine.produce("t", vec![with_id("same", "x")]).await.unwrap()[0]
            })
        })
        .collect();
    let mut positions = Vec::new();
    for task in tasks {
        positions.push(task.await.unwrap());
    }
    assert_eq!(positions.iter().filter(|produced| !produced.duplicate).count(), 1);
    assert!(positions
        .windows(2)
        .all(|pair| (pair[0].partition, pair[0].offset) == (pair[1].partition, pair[1].offset)));
    assert_eq!(read_everything(&engine, "t").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_at_the_end_waits_for_the_next_record_or_times_out_empty() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    engine.create_topic("t", topic(1)).unwrap();
    let started = Instant::now();
    let empty = engine.fetch("t", 0, 0, 1024, Duration::from_millis(50)).await.unwrap();
    assert!(empty.batches.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(50));

    let started = Instant::now();
    let waiting = {
        let engine = engine.clone();
        tokio::spawn(async move {
            engine.fetch("t", 0, 0, 1024, Duration::from_secs(20)).await.unwrap()
        })
    };
    // The fetch is parked until the produce lands; it must return with the record, not time out.
    tokio::task::yield_now().await;
    engine.produce("t", vec![keyed("k", "hello")]).await.unwrap();
    let fetched = waiting.await.unwrap();
    // Not a speed check: a fetch that missed the wake-up would sit out its whole 20 s wait.
    assert!(started.elapsed() < Duration::from_secs(10), "the parked fetch was not woken");
    let records = fetched.records_from(0).unwrap();
    assert_eq!(records[0].value.as_deref(), Some(&b"hello"[..]));
    assert_eq!(fetched.high_watermark, 1);
}

#[tokio::test]
async fn bad_produce_and_fetch_requests_get_named_errors_and_append_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    engine
        .create_topic(
            "t",
            TopicConfig { partitions: 2, record_bytes_max: 100, ..TopicConfig::default() },
        )
        .unwrap();
    let error = engine.produce("nope", vec![keyed("k", "v")]).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::UnknownTopic);
    let big = ProduceRecord { value: Some(vec![0; 200]), ..ProduceRecord::default() };
    let error = engine.produce("t", vec![keyed("k", "v"), big]).await.unwrap_err();
    assert!(matches!(error, ProduceError::RecordTooLarge { index: 1, limit: 100, .. }), "{error}");
    let misplaced = ProduceRecord { partition: Some(2), ..keyed("k", "v") };
    let error = engine.produce("t", vec![misplaced]).await.unwrap_err();
    assert!(error.to_string().contains("partitions 0..2"), "{error}");
    assert!(engine.produce("t", vec![]).await.is_err());
    assert!(read_everything(&engine, "t").await.is_empty());
    let error = engine.fetch("t", 5, 0, 1024, Duration::ZERO).await.unwrap_err();
    assert!(matches!(error, FetchError::UnknownPartition { partition: 5, .. }));
    let error = engine.fetch("t", 0, 7, 1024, Duration::ZERO).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::OffsetOutOfRange);
}

#[tokio::test]
async fn keyless_records_stick_to_one_partition_per_request_and_spread_across_requests() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    engine.create_topic("t", topic(3)).unwrap();
    let mut partitions_used = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let records = (0..5)
            .map(|_| ProduceRecord { value: Some(b"v".to_vec()), ..ProduceRecord::default() })
            .collect();
        let produced = engine.produce("t", records).await.unwrap();
        assert!(produced.iter().all(|one| one.partition == produced[0].partition));
        partitions_used.insert(produced[0].partition);
    }
    assert_eq!(partitions_used.len(), 3);
}

#[tokio::test]
async fn a_ce_id_header_is_the_record_id_and_must_agree_with_it() {
    // The dedup window is rebuilt from ce_id headers, so at runtime the header is the id too.
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    engine.create_topic("t", topic(1)).unwrap();
    let with_header = |id: Option<&str>, header: &str| ProduceRecord {
        id: id.map(str::to_owned),
        headers: vec![("ce_id".to_owned(), Some(header.as_bytes().to_vec()))],
        value: Some(b"v".to_vec()),
        ..ProduceRecord::default()
    };
    engine.produce("t", vec![with_header(None, "h-1")]).await.unwrap();
    let again = engine.produce("t", vec![with_id("h-1", "v")]).await.unwrap();
    assert!(again[0].duplicate);
    let error = engine.produce("t", vec![with_header(Some("a"), "b")]).await.unwrap_err();
    assert!(error.to_string().contains("must be equal"), "{error}");
}
