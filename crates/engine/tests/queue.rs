//! Queue groups through the engine's API, on real files.

use std::time::Duration;

use sluice_engine::queue::{Action, Ordering, QueueConfig};
use sluice_engine::{ProduceRecord, QueueError, Sluice, TopicConfig};

fn record(key: &str, value: &str) -> ProduceRecord {
    ProduceRecord {
        key: Some(key.as_bytes().to_vec()),
        value: Some(value.as_bytes().to_vec()),
        ..ProduceRecord::default()
    }
}

fn config(topic: &str) -> QueueConfig {
    QueueConfig {
        topics: vec![topic.to_owned()],
        ack_wait_ms: 200,
        deliveries_max: 3,
        backoff_initial_ms: 10,
        backoff_max_ms: 100,
        ..QueueConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_ack_and_nothing_is_delivered_twice() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Sluice::open(dir.path()).unwrap();
    engine.create_topic("jobs", TopicConfig { partitions: 2, ..TopicConfig::default() }).unwrap();
    let records: Vec<_> = (0..20).map(|i| record(&format!("k{i}"), &format!("v{i}"))).collect();
    engine.produce("jobs", records).await.unwrap();
    engine.create_queue("workers", config("jobs")).unwrap();
    let leased = engine.lease("workers", "w1", 50, Duration::ZERO).await.unwrap();
    assert_eq!(leased.len(), 20);
    assert!(leased.iter().all(|delivery| delivery.deliveries == 1));
    let again = engine.lease("workers", "w1", 50, Duration::ZERO).await.unwrap();
    assert!(again.is_empty(), "leased messages are not delivered again before their deadline");
    let items = leased.iter().map(|delivery| (delivery.id.clone(), Action::Ack)).collect();
    let outcomes = engine.settle("workers", items).await.unwrap();
    assert!(outcomes.iter().all(Result::is_ok));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = engine.lease("workers", "w1", 50, Duration::ZERO).await.unwrap();
    assert!(after.is_empty(), "acked messages are never delivered again");
    let described = engine.describe_queue("workers").unwrap();
    assert_eq!(described.totals.acked, 20);
    assert!(described.partitions.iter().all(|part| part.ack_floor == part.high_watermark));
    // A second ack of a settled delivery is refused with its reason.
    let twice = engine.settle("workers", vec![(leased[0].id.clone(), Action::Ack)]).await.unwrap();
    assert!(matches!(twice[0], Err(QueueError::NotLeased(_))), "{twice:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_message_goes_to_the_dead_letter_topic_after_deliveries_max() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Sluice::open(dir.path()).unwrap();
    engine.create_topic("jobs", TopicConfig::default()).unwrap();
    engine.create_queue("workers", config("jobs")).unwrap();
    engine.produce("jobs", vec![record("a", "poison")]).await.unwrap();
    let mut deliveries = Vec::new();
    for _ in 0..3 {
        let leased = engine.lease("workers", "w", 1, Duration::from_secs(2)).await.unwrap();
        assert_eq!(leased.len(), 1);
        deliveries.push(leased[0].deliveries);
        let nack = Action::Nack { delay_ms: None, error: Some("boom".to_owned()) };
        let outcome = engine.settle("workers", vec![(leased[0].id.clone(), nack)]).await.unwrap();
        outcome[0].as_ref().unwrap();
    }
    assert_eq!(deliveries, vec![1, 2, 3]);
    let letters = engine.dead_letters("jobs.dlq", 0, 100, false).unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].history.deliveries, 3);
    assert_eq!(letters[0].history.last_error.as_deref(), Some("boom"));
    assert_eq!(letters[0].record.value.as_deref(), Some(&b"poison"[..]));
    let replayed = engine
        .replay_dead_letters("jobs.dlq", sluice_engine::queue::dlq::ReplaySelection::All)
        .await
        .unwrap();
    assert_eq!(replayed.len(), 1);
    let leased = engine.lease("workers", "w", 1, Duration::from_secs(2)).await.unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].deliveries, 1);
    assert_eq!(leased[0].record.value.as_deref(), Some(&b"poison"[..]));
    assert!(engine.dead_letters("jobs.dlq", 0, 100, false).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_ordering_holds_back_a_failing_key_only() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Sluice::open(dir.path()).unwrap();
    engine.create_topic("jobs", TopicConfig::default()).unwrap();
    let config = QueueConfig { ordering: Ordering::Key, deliveries_max: 1, ..config("jobs") };
    engine.create_queue("workers", config).unwrap();
    engine
        .produce(
            "jobs",
            vec![record("a", "a1"), record("a", "a2"), record("b", "b1"), record("b", "b2")],
        )
        .await
        .unwrap();
    let leased = engine.lease("workers", "w", 10, Duration::ZERO).await.unwrap();
    let values: Vec<_> = leased.iter().map(|d| d.record.value.clone().unwrap()).collect();
    assert_eq!(values, vec![b"a1".to_vec(), b"b1".to_vec()]);
    let reject = Action::Reject { error: Some("bad".to_owned()) };
    engine.settle("workers", vec![(leased[0].id.clone(), reject)]).await.unwrap()[0]
        .as_ref()
        .unwrap();
    engine.settle("workers", vec![(leased[1].id.clone(), Action::Ack)]).await.unwrap()[0]
        .as_ref()
        .unwrap();
    let leased = engine.lease("workers", "w", 10, Duration::ZERO).await.unwrap();
    let values: Vec<_> = leased.iter().map(|d| d.record.value.clone().unwrap()).collect();
    assert_eq!(values, vec![b"b2".to_vec()], "a is parked; b goes on");
    let described = engine.describe_queue("workers").unwrap();
    assert_eq!(described.counts.parked_keys, 1);
    engine
        .replay_dead_letters(
            "jobs.dlq",
            sluice_engine::queue::dlq::ReplaySelection::Key(b"a".to_vec()),
        )
        .await
        .unwrap();
    let leased = engine.lease("workers", "w", 10, Duration::ZERO).await.unwrap();
    let values: Vec<_> = leased.iter().map(|d| d.record.value.clone().unwrap()).collect();
    assert_eq!(values, vec![b"a2".to_vec()], "released: a2 first (a1's replay is behind it)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let ids;
    {
        let engine = Sluice::open(dir.path()).unwrap();
        engine.create_topic("jobs", TopicConfig::default()).unwrap();
        engine.create_queue("workers", config("jobs")).unwrap();
        let records: Vec<_> = (0..10).map(|i| record("k", &format!("v{i}"))).collect();
        engine.produce("jobs", records).await.unwrap();
        let leased = engine.lease("workers", "w", 10, Duration::ZERO).await.unwrap();
        assert_eq!(leased.len(), 10);
        let acks = leased[..5].iter().map(|d| (d.id.clone(), Action::Ack)).collect();
        engine.settle("workers", acks).await.unwrap();
        ids = leased[5..].iter().map(|d| d.id.clone()).collect::<Vec<_>>();
        // No shutdown: what is journaled is what counts.
    }
    let engine = Sluice::open(dir.path()).unwrap();
    // Leases survive the restart: their ids still ack.
    let outcome = engine.settle("workers", vec![(ids[0].clone(), Action::Ack)]).await.unwrap();
    outcome[0].as_ref().unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let leased = engine.lease("workers", "w", 10, Duration::from_secs(1)).await.unwrap();
    let offsets: Vec<u64> = leased.iter().map(|d| d.record.offset).collect();
    assert_eq!(offsets, vec![6, 7, 8, 9]);
    assert!(leased.iter().all(|d| d.deliveries == 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_sent_with_the_next_lease_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = Sluice::open(dir.path()).unwrap();
        engine.create_topic("jobs", TopicConfig::default()).unwrap();
        engine.create_queue("workers", config("jobs")).unwrap();
        let records: Vec<_> = (0..10).map(|i| record(&format!("k{i}"), "v")).collect();
        engine.produce("jobs", records).await.unwrap();
        let mut leased = engine.lease("workers", "w", 4, Duration::ZERO).await.unwrap();
        let mut seen = Vec::new();
        // The last round acks offsets 8 and 9 and finds nothing left to lease.
        for expected in [vec![4, 5, 6, 7], vec![8, 9], vec![]] {
            seen.extend(leased.iter().map(|d| d.record.offset));
            let acks = leased.iter().map(|d| (d.id.clone(), Action::Ack)).collect();
            let (outcomes, next) =
                engine.settle_and_lease("workers", acks, "w", 4, Duration::ZERO).await.unwrap();
            assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
            assert_eq!(next.iter().map(|d| d.record.offset).collect::<Vec<_>>(), expected);
            leased = next;
        }
        assert_eq!(seen, (0..10).collect::<Vec<u64>>());
        // Lease arguments out of range refuse the call before anything is settled.
        let refused = engine.settle_and_lease("workers", vec![], "w", 0, Duration::ZERO).await;
        assert!(matches!(refused, Err(QueueError::Invalid(_))), "{refused:?}");
        // No shutdown: what is journaled is what counts.
    }
    let engine = Sluice::open(dir.path()).unwrap();
    let described = engine.describe_queue("workers").unwrap();
    assert_eq!(described.totals.acked, 10);
    assert_eq!(described.counts.leased, 0);
    // The floor counts the acks the journal named, before the group reads its topic again.
    assert!(
        described.partitions.iter().all(|part| part.ack_floor == part.high_watermark),
        "{:?}",
        described.partitions
    );
    // Past every ack deadline, nothing comes back, and the group has read past all ten.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(engine.lease("workers", "w", 10, Duration::ZERO).await.unwrap().is_empty());
    let described = engine.describe_queue("workers").unwrap();
    assert!(described.partitions.iter().all(|part| part.ack_floor == part.high_watermark));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_checkpoints_into_a_new_generation_and_reopens_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let total = 30_000u64;
    let (kept, nacked);
    {
        let engine = Sluice::open(dir.path()).unwrap();
        engine
            .create_topic("jobs", TopicConfig { partitions: 2, ..TopicConfig::default() })
            .unwrap();
        let config = QueueConfig {
            max_in_flight: 100_000,
            member_max_in_flight: 100_000,
            ack_wait_ms: 600_000,
            backoff_initial_ms: 600_000,
            backoff_max_ms: 600_000,
            ..config("jobs")
        };
        engine.create_queue("workers", config).unwrap();
        for chunk in 0..(total / 1000) {
            let records =
                (0..1000).map(|i| record("k", &format!("{}", chunk * 1000 + i))).collect();
            engine.produce("jobs", records).await.unwrap();
        }
        let mut leased = Vec::new();
        loop {
            let batch = engine.lease("workers", "w", 1000, Duration::ZERO).await.unwrap();
            if batch.is_empty() {
                break;
            }
            leased.extend(batch);
        }
        assert_eq!(leased.len() as u64, total);
        // Ack all but 10 (kept leased) and 5 (nacked, waiting ten minutes): 60,000 events, past
        // one checkpoint.
        kept = leased[100..110].iter().map(|d| (d.id.clone(), d.record.offset)).collect::<Vec<_>>();
        nacked = leased[200..205].iter().map(|d| d.id.clone()).collect::<Vec<_>>();
        let acks: Vec<_> = leased
            .iter()
            .enumerate()
            .filter(|(index, _)| !(100..110).contains(index) && !(200..205).contains(index))
            .map(|(_, d)| (d.id.clone(), Action::Ack))
            .collect();
        for chunk in acks.chunks(5000) {
            for outcome in engine.settle("workers", chunk.to_vec()).await.unwrap() {
                outcome.unwrap();
            }
        }
        let nacks = nacked
            .iter()
            .map(|id| {
                (id.clone(), Action::Nack { delay_ms: None, error: Some("later".to_owned()) })
            })
            .collect();
        engine.settle("workers", nacks).await.unwrap();
    }
    let generations: Vec<String> = std::fs::read_dir(dir.path().join("queues/workers"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(generations.len(), 1, "the old generation is removed: {generations:?}");
    assert_ne!(
        generations[0],
        format!("journal-{:020}", 0),
        "a checkpoint started a new generation"
    );

    let engine = Sluice::open(dir.path()).unwrap();
    let described = engine.describe_queue("workers").unwrap();
    assert_eq!(described.counts.leased, 10, "{described:?}");
    assert_eq!(described.counts.waiting, 5, "{described:?}");
    assert_eq!(described.counts.in_flight, 15, "{described:?}");
    // The kept leases still ack after the restart; nothing else is deliverable.
    let acks = kept.iter().map(|(id, _)| (id.clone(), Action::Ack)).collect();
    for outcome in engine.settle("workers", acks).await.unwrap() {
        outcome.unwrap();
    }
    assert!(engine.lease("workers", "w", 1000, Duration::ZERO).await.unwrap().is_empty());
    let described = engine.describe_queue("workers").unwrap();
    assert_eq!(described.counts.in_flight, 5, "only the nacked ones wait: {described:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_of_megabytes_of_errors_is_journaled_and_the_group_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Sluice::open(dir.path()).unwrap();
    engine.create_topic("jobs", TopicConfig::default()).unwrap();
    let config = QueueConfig {
        ack_wait_ms: 600_000,
        backoff_initial_ms: 100_000,
        backoff_max_ms: 100_000,
        max_in_flight: 10_000,
        member_max_in_flight: 10_000,
        ..config("jobs")
    };
    engine.create_queue("workers", config).unwrap();
    for _ in 0..3 {
        let records = (0..1000).map(|i| record(&format!("k{i}"), "v")).collect();
        engine.produce("jobs", records).await.unwrap();
    }
    let mut leased = Vec::new();
    while leased.len() < 3000 {
        leased.extend(engine.lease("workers", "w", 1000, Duration::ZERO).await.unwrap());
    }
    // 3,000 nacks, each with an error longer than the 4 KiB kept: about 12 MiB of events in one
    // request. (The split of a request past one journal batch is `journal.rs`'s unit test.)
    let error = "x".repeat(10_000);
    let nacks = leased
        .iter()
        .map(|d| (d.id.clone(), Action::Nack { delay_ms: None, error: Some(error.clone()) }))
        .collect();
    for outcome in engine.settle("workers", nacks).await.unwrap() {
        outcome.unwrap();
    }
    let described = engine.describe_queue("workers").unwrap();
    assert_eq!(described.counts.waiting, 3000);
    engine.produce("jobs", vec![record("new", "v")]).await.unwrap();
    let more = engine.lease("workers", "w", 10, Duration::from_secs(2)).await.unwrap();
    assert_eq!(more.len(), 1, "the group still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_again_with_other_settings_names_them_and_bad_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Sluice::open(dir.path()).unwrap();
    engine.create_topic("jobs", TopicConfig::default()).unwrap();
    engine.create_queue("workers", config("jobs")).unwrap();
    engine.create_queue("workers", config("jobs")).unwrap();
    let other = QueueConfig { deliveries_max: 9, ..config("jobs") };
    let error = engine.create_queue("workers", other).unwrap_err();
    assert!(matches!(error, QueueError::Exists { .. }), "{error}");
    assert!(error.to_string().contains("deliveries_max is 3, asked 9"), "{error}");
    let error = engine.create_queue(".deleted-x", config("jobs")).unwrap_err();
    assert!(error.to_string().contains("starts with '.'"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_topic_created_again_does_not_inherit_replay_marks() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Sluice::open(dir.path()).unwrap();
    engine.create_topic("jobs", TopicConfig::default()).unwrap();
    engine.create_queue("workers", QueueConfig { deliveries_max: 1, ..config("jobs") }).unwrap();
    engine.produce("jobs", vec![record("a", "1")]).await.unwrap();
    let leased = engine.lease("workers", "w", 1, Duration::from_secs(1)).await.unwrap();
    let reject = Action::Reject { error: None };
    engine.settle("workers", vec![(leased[0].id.clone(), reject)]).await.unwrap()[0]
        .as_ref()
        .unwrap();
    let replay = sluice_engine::queue::dlq::ReplaySelection::All;
    assert_eq!(engine.replay_dead_letters("jobs.dlq", replay).await.unwrap().len(), 1);
    engine.delete_topic("jobs.dlq").unwrap();
    // The replayed message fails again: its dead letter lands at offset 0 of the new topic.
    let leased = engine.lease("workers", "w", 1, Duration::from_secs(1)).await.unwrap();
    let reject = Action::Reject { error: None };
    engine.settle("workers", vec![(leased[0].id.clone(), reject)]).await.unwrap()[0]
        .as_ref()
        .unwrap();
    let letters = engine.dead_letters("jobs.dlq", 0, 10, false).unwrap();
    assert_eq!(letters.len(), 1, "the new letter at offset 0 is not taken as replayed");
    assert_eq!(letters[0].record.offset, 0);
}
