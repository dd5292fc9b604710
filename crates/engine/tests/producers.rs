//! Kafka-style producer idempotence on `append_batch`: a retried batch is appended once (also
//! after a restart, within the dedup window), a sequence gap is refused, an old epoch is fenced,
//! a new epoch starts at 0, and batches without a producer id are never checked.
#![allow(clippy::unwrap_used)]

use sluice_engine::{Engine, ErrorCode, TopicConfig};
use sluice_format::{BatchBuilder, NewRecord};

fn batch(producer_id: i64, epoch: i16, base_sequence: i32, records: usize) -> Vec<u8> {
    let mut builder = BatchBuilder::new(0).producer(producer_id, epoch, base_sequence);
    for index in 0..records {
        let value = format!("{producer_id}-{epoch}-{base_sequence}-{index}");
        builder.push(&NewRecord {
            key: None,
            value: Some(value.as_bytes()),
            headers: &[],
            timestamp_ms: sluice_now(),
        });
    }
    builder.build()
}

fn sluice_now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis(),
    )
    .unwrap()
}

#[tokio::test]
async fn retries_are_appended_once_gaps_refused_old_epochs_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    engine.create_topic("t", TopicConfig::default()).unwrap();
    let first = engine.append_batch("t", 0, batch(7, 0, 0, 3)).await.unwrap();
    assert_eq!((first.base_offset, first.last_offset, first.duplicate), (0, 2, false));
    let second = engine.append_batch("t", 0, batch(7, 0, 3, 2)).await.unwrap();
    assert_eq!(second.base_offset, 3);
    // The first batch again (a retry after a lost response): same offsets, nothing appended.
    let retry = engine.append_batch("t", 0, batch(7, 0, 0, 3)).await.unwrap();
    assert_eq!((retry.base_offset, retry.duplicate), (0, true));
    let gap = engine.append_batch("t", 0, batch(7, 0, 9, 1)).await.unwrap_err();
    assert_eq!(gap.code(), ErrorCode::OutOfOrderSequence);
    assert!(gap.to_string().contains("expects 5"), "{gap}");
    // A new epoch starts at 0; the old one is fenced from then on.
    assert_eq!(
        engine.append_batch("t", 0, batch(7, 1, 4, 1)).await.unwrap_err().code(),
        ErrorCode::OutOfOrderSequence
    );
    engine.append_batch("t", 0, batch(7, 1, 0, 1)).await.unwrap();
    assert_eq!(
        engine.append_batch("t", 0, batch(7, 0, 5, 1)).await.unwrap_err().code(),
        ErrorCode::ProducerFenced
    );
    // Batches without a producer id are not checked.
    engine.append_batch("t", 0, batch(-1, -1, -1, 1)).await.unwrap();
    engine.append_batch("t", 0, batch(-1, -1, -1, 1)).await.unwrap();
    assert_eq!(engine.describe_topic("t").unwrap().partitions[0].high_watermark, 8);
}

#[tokio::test]
async fn a_retry_after_a_restart_is_still_recognised() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    engine.create_topic("t", TopicConfig { partitions: 2, ..TopicConfig::default() }).unwrap();
    engine.append_batch("t", 1, batch(42, 3, 10, 4)).await.unwrap();
    engine.shutdown().unwrap();
    drop(engine);
    let engine = Engine::open(dir.path()).unwrap();
    let retry = engine.append_batch("t", 1, batch(42, 3, 10, 4)).await.unwrap();
    assert!(retry.duplicate);
    let next = engine.append_batch("t", 1, batch(42, 3, 14, 1)).await.unwrap();
    assert_eq!((next.base_offset, next.duplicate), (4, false));
    let malformed = engine.append_batch("t", 1, vec![0; 10]).await.unwrap_err();
    assert_eq!(malformed.code(), ErrorCode::InvalidRequest);
    assert_eq!(
        engine.append_batch("t", 5, batch(1, 0, 0, 1)).await.unwrap_err().code(),
        ErrorCode::UnknownPartition
    );
}
