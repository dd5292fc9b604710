//! Consumer groups in stream mode, in-process: members split partitions and together see every
//! record once; a member that stops heartbeating loses its partitions to the other, which
//! resumes from the committed offset; stale-generation commits are refused; committed offsets
//! survive a restart; resets need an empty group.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use sluice_engine::{
    Engine, ErrorCode, GroupError, JoinRequest, ProduceRecord, ResetTo, StartFrom, TopicConfig,
};

fn join(engine: &Engine, group: &str, session_timeout: Duration) -> String {
    let request = JoinRequest {
        topics: vec!["t".to_owned()],
        session_timeout: Some(session_timeout),
        start: StartFrom::Earliest,
        ..JoinRequest::default()
    };
    engine.join_group(group, request).unwrap().member_id
}

async fn produce_values(engine: &Engine, values: std::ops::Range<u64>) {
    let records = values
        .map(|value| ProduceRecord {
            key: Some(format!("k{value}").into_bytes()),
            value: Some(value.to_string().into_bytes()),
            ..ProduceRecord::default()
        })
        .collect();
    engine.produce("t", records).await.unwrap();
}

/// Fetches until nothing more arrives within `wait`; commits after each fetch.
async fn drain(engine: &Engine, group: &str, member: &str) -> Vec<u64> {
    let mut values = Vec::new();
    loop {
        let fetched = engine
            .fetch_group(group, member, 50, 1 << 20, Duration::from_millis(50))
            .await
            .unwrap();
        if fetched.records.is_empty() {
            return values;
        }
        for record in &fetched.records {
            values.push(
                String::from_utf8(record.record.value.clone().unwrap()).unwrap().parse().unwrap(),
            );
        }
        engine.commit_group(group, member, fetched.membership.generation, None).unwrap();
    }
}

fn open_with_topic(dir: &std::path::Path) -> Engine {
    let engine = Engine::open(dir).unwrap();
    if engine.describe_topic("t").is_err() {
        engine.create_topic("t", TopicConfig { partitions: 4, ..TopicConfig::default() }).unwrap();
    }
    engine
}

#[tokio::test]
async fn two_members_split_the_partitions_and_together_see_every_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_with_topic(dir.path());
    produce_values(&engine, 0..400).await;
    let first = join(&engine, "g", Duration::from_secs(30));
    let second = join(&engine, "g", Duration::from_secs(30));
    let one = engine.heartbeat("g", &first).unwrap();
    let two = engine.heartbeat("g", &second).unwrap();
    assert_eq!(one.generation, two.generation);
    assert_eq!(one.assignment.len(), 2);
    assert_eq!(two.assignment.len(), 2);
    let overlap: BTreeSet<_> =
        one.assignment.iter().filter(|partition| two.assignment.contains(partition)).collect();
    assert!(overlap.is_empty());
    let mut seen = drain(&engine, "g", &first).await;
    seen.extend(drain(&engine, "g", &second).await);
    seen.sort_unstable();
    assert_eq!(seen, (0..400).collect::<Vec<_>>());
    let description = engine.describe_group("g").unwrap();
    assert_eq!(description.members.len(), 2);
    assert!(
        description.partitions.iter().all(|partition| partition.lag == 0),
        "{:?}",
        description.partitions
    );
}

#[tokio::test]
async fn a_silent_member_loses_its_partitions_and_the_other_resumes_from_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_with_topic(dir.path());
    produce_values(&engine, 0..200).await;
    let quiet = join(&engine, "g", Duration::from_secs(1));
    let steady = join(&engine, "g", Duration::from_secs(30));
    // The quiet member reads and commits once, then falls silent.
    let seen_by_quiet = drain(&engine, "g", &quiet).await;
    assert!(!seen_by_quiet.is_empty());
    let mut seen = drain(&engine, "g", &steady).await;
    produce_values(&engine, 200..300).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let membership = engine.heartbeat("g", &steady).unwrap();
        if membership.assignment.len() == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "the silent member was never removed");
        tokio::time::sleep(Duration::from_millis(20)).await; // polling the session clock, not waiting on work
    }
    seen.extend(drain(&engine, "g", &steady).await);
    seen.extend(seen_by_quiet);
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..300).collect::<Vec<_>>(),
        "resumed from the committed offsets: nothing lost or repeated"
    );
    let error = engine.heartbeat("g", &quiet).unwrap_err();
    assert_eq!(error.code(), ErrorCode::UnknownMember);
}

#[tokio::test]
async fn a_commit_from_a_stale_generation_or_for_anothers_partition_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_with_topic(dir.path());
    produce_values(&engine, 0..40).await;
    let first = join(&engine, "g", Duration::from_secs(30));
    let old =
        engine.fetch_group("g", &first, 10, 1 << 20, Duration::ZERO).await.unwrap().membership;
    let second = join(&engine, "g", Duration::from_secs(30));
    let error = engine.commit_group("g", &first, old.generation, None).unwrap_err();
    assert!(
        matches!(error, GroupError::StaleGeneration { given, current, .. } if current == given + 1),
        "{error}"
    );
    assert!(error.to_string().contains("stale"));
    let current = engine.heartbeat("g", &first).unwrap();
    let theirs = engine.heartbeat("g", &second).unwrap().assignment[0].clone();
    let error =
        engine.commit_group("g", &first, current.generation, Some(vec![(theirs, 1)])).unwrap_err();
    assert_eq!(error.code(), ErrorCode::NotAssigned);
    engine.commit_group("g", &first, current.generation, None).unwrap();
}

#[tokio::test]
async fn committed_offsets_survive_a_restart_and_reset_needs_an_empty_group() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_with_topic(dir.path());
    produce_values(&engine, 0..100).await;
    let member = join(&engine, "g", Duration::from_secs(30));
    assert_eq!(drain(&engine, "g", &member).await.len(), 100);
    let error = engine.reset_group("g", None, ResetTo::Earliest).unwrap_err();
    assert_eq!(error.code(), ErrorCode::GroupActive);
    engine.shutdown().unwrap();
    drop(engine);

    let engine = open_with_topic(dir.path());
    assert_eq!(engine.list_groups(), ["g"]);
    let lag: u64 =
        engine.describe_group("g").unwrap().partitions.iter().map(|partition| partition.lag).sum();
    assert_eq!(lag, 0, "commits were durable");
    // The old member id is unknown after a restart; a new member starts at the commits.
    assert_eq!(engine.heartbeat("g", &member).unwrap_err().code(), ErrorCode::UnknownMember);
    produce_values(&engine, 100..110).await;
    let member = join(&engine, "g", Duration::from_secs(30));
    let mut after = drain(&engine, "g", &member).await;
    after.sort_unstable();
    assert_eq!(after, (100..110).collect::<Vec<_>>());
    engine.leave_group("g", &member).unwrap();

    let reset = engine.reset_group("g", None, ResetTo::Earliest).unwrap();
    assert_eq!(reset.len(), 4);
    let lag: u64 =
        engine.describe_group("g").unwrap().partitions.iter().map(|partition| partition.lag).sum();
    assert_eq!(lag, 110);
    let member = join(&engine, "g", Duration::from_secs(30));
    assert_eq!(drain(&engine, "g", &member).await.len(), 110);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_fetch_waits_for_records_on_any_of_its_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_with_topic(dir.path());
    let member = join(&engine, "g", Duration::from_secs(30));
    let started = Instant::now();
    let waiting = {
        let (engine, member) = (engine.clone(), member.clone());
        tokio::spawn(async move {
            engine.fetch_group("g", &member, 10, 1 << 20, Duration::from_secs(20)).await.unwrap()
        })
    };
    tokio::task::yield_now().await;
    produce_values(&engine, 0..1).await;
    let fetched = waiting.await.unwrap();
    assert_eq!(fetched.records.len(), 1);
    // Not a speed check: a fetch that missed the wake-up would sit out its 20 s.
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn joins_with_bad_parameters_are_refused_with_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_with_topic(dir.path());
    let bad = |request: JoinRequest| engine.join_group("g", request).unwrap_err();
    let error = bad(JoinRequest { topics: vec![], ..JoinRequest::default() });
    assert!(error.to_string().contains("1..="), "{error}");
    let error = bad(JoinRequest { topics: vec!["nope".to_owned()], ..JoinRequest::default() });
    assert_eq!(error.code(), ErrorCode::UnknownTopic);
    let error = bad(JoinRequest {
        topics: vec!["t".to_owned()],
        session_timeout: Some(Duration::from_millis(5)),
        ..JoinRequest::default()
    });
    assert!(error.to_string().contains("session timeout"), "{error}");
    let error = engine
        .join_group(
            "bad group",
            JoinRequest { topics: vec!["t".to_owned()], ..JoinRequest::default() },
        )
        .unwrap_err();
    assert_eq!(error.code(), ErrorCode::InvalidName);
    engine.create_topic("other", TopicConfig::default()).unwrap();
    join(&engine, "g", Duration::from_secs(30));
    let error = bad(JoinRequest { topics: vec!["other".to_owned()], ..JoinRequest::default() });
    assert_eq!(error.code(), ErrorCode::TopicsMismatch);
}

#[tokio::test]
async fn a_group_survives_its_topic_being_deleted_and_created_again() {
    // Old commits point past the new topic's end; the member must carry on from its start.
    let dir = tempfile::tempdir().unwrap();
    let engine = open_with_topic(dir.path());
    produce_values(&engine, 0..100).await;
    let member = join(&engine, "g", Duration::from_secs(30));
    assert_eq!(drain(&engine, "g", &member).await.len(), 100);
    engine.leave_group("g", &member).unwrap();
    engine.delete_topic("t").unwrap();
    engine.create_topic("t", TopicConfig { partitions: 4, ..TopicConfig::default() }).unwrap();
    produce_values(&engine, 1000..1010).await;
    let member = join(&engine, "g", Duration::from_secs(30));
    let mut values = drain(&engine, "g", &member).await;
    values.sort_unstable();
    assert_eq!(values, (1000..1010).collect::<Vec<_>>());
}

#[tokio::test]
async fn active_members_survive_their_topic_shrinking_under_them() {
    // Pins a bug: members kept partitions that no longer existed, so fetches failed (or the
    // start-offset lookup panicked) until membership changed.
    let dir = tempfile::tempdir().unwrap();
    let engine = open_with_topic(dir.path());
    produce_values(&engine, 0..40).await;
    let first = join(&engine, "g", Duration::from_secs(30));
    let second = join(&engine, "g", Duration::from_secs(30));
    drain(&engine, "g", &first).await;
    engine.delete_topic("t").unwrap();
    engine.create_topic("t", TopicConfig { partitions: 1, ..TopicConfig::default() }).unwrap();
    produce_values(&engine, 100..105).await;
    let mut seen = drain(&engine, "g", &first).await;
    seen.extend(drain(&engine, "g", &second).await);
    seen.sort_unstable();
    assert_eq!(seen, (100..105).collect::<Vec<_>>());
    let owned: usize = [&first, &second]
        .iter()
        .map(|member| engine.heartbeat("g", member).unwrap().assignment.len())
        .sum();
    assert_eq!(owned, 1, "the one partition left is assigned once");
}
