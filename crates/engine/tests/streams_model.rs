//! Property test: event-stream appends, soft deletes, metadata and reads (forward, backward, as
//! of a time) on a real engine, against a simple in-memory model, across restarts.
//!
//! The model keeps, per stream, every event ever appended (index = version: versions are
//! contiguous from 0 and carry on after a soft delete), whether the stream is deleted now, and
//! its metadata. From that it predicts every outcome: which appends and deletes the expected
//! version lets through (and the error's fields when not), and for every read the error or the
//! exact slice: the versions returned (and each event's id, type, data, partition and
//! timestamp), `version`, `first_visible` and `next`. After a restart and at the end of each
//! case every stream is read in full both ways and its metadata compared.
//!
//! Time: after every append the runner takes a mark (the wall clock, right after the append
//! returns) and sleeps 2 ms, so an event appended before mark `m` is stamped at or before it and
//! one appended after it later than it; a read as of mark `m` must show exactly the appends up
//! to it. Each case may start with ballast (plain records of another key) just under the 1 MiB
//! segment size, and appends may carry 2 KB or 30 KB payloads, so segments roll mid-case and
//! reads cross closed segments and their key index. Plain records keyed by a stream's name (no
//! version) are produced too: reads and heads must skip them.
//!
//! Not modelled: `max_age_ms` hiding events (it is set, long enough never to hide anything, so
//! only its storage is checked), idempotent retries (every event has a fresh id, so a failed
//! append's retry lookup must never find it), subscriptions, snapshots.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use sluice_engine::partitioner::partition_for_key;
use sluice_engine::streams::{
    Direction, ExpectedVersion, NewEvent, ReadStream, StreamAppended, StreamMetadata, StreamSlice,
    StreamWrite, READ_COUNT_MAX,
};
use sluice_engine::{ProduceRecord, Sluice, StreamError, TopicConfig};

const TOPIC: &str = "ledger";
/// With two partitions, the first two share one and the third has the other (checked below).
const STREAMS: [&str; 3] = ["account-1", "account-2", "account-3"];
const SEGMENT_BYTES: u64 = 1024 * 1024;
const MEDIUM_BYTES: usize = 2_000;
/// Four of these still fit one append (a batch of at most `record_bytes_max` + 64 KiB).
const LARGE_BYTES: usize = 30_000;
const BALLAST_RECORD_BYTES: usize = 50_000;

fn now_ms() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(since_epoch.as_millis()).unwrap()
}

fn topic_config(partitions: u32) -> TopicConfig {
    TopicConfig {
        partitions,
        retention_age_ms: None,
        segment_bytes: Some(SEGMENT_BYTES),
        record_bytes_max: 65_536,
        ..TopicConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Operations.

/// An expected version, resolved against the model when the op runs.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Any,
    NoStream,
    StreamExists,
    /// `Exact` of the stream's version (0 for a stream without events).
    Head,
    /// `Exact` of the stream's version plus this (at least 0): usually wrong.
    Off(i8),
}

#[derive(Debug, Clone, Copy)]
enum Size {
    Small,
    Medium,
    Large,
}

impl Size {
    fn bytes(self) -> usize {
        match self {
            Self::Small => 0,
            Self::Medium => MEDIUM_BYTES,
            Self::Large => LARGE_BYTES,
        }
    }
}

/// A read's `from`, resolved against the model when the op runs.
#[derive(Debug, Clone, Copy)]
enum Start {
    /// Absent.
    Default,
    /// Somewhere in `0..version + 3`.
    Pick(u8),
    /// Far past the end.
    Far,
}

#[derive(Debug, Clone, Copy)]
struct ReadSpec {
    stream: usize,
    from: Start,
    backward: bool,
    count: usize,
}

#[derive(Debug, Clone)]
enum Op {
    Append {
        stream: usize,
        events: usize,
        size: Size,
        expected: Expect,
    },
    /// One atomic append to several streams: (stream, events (0: a condition only), expected).
    AppendMany {
        writes: Vec<(usize, usize, Expect)>,
    },
    /// Appends of four large events each, with whichever expected version succeeds.
    Fill {
        stream: usize,
        appends: usize,
    },
    /// A plain record keyed by the stream's name: not an event.
    Foreign {
        stream: usize,
    },
    Delete {
        stream: usize,
        expected: Expect,
    },
    /// `truncate_before` is picked in `0..version + 3`.
    SetMetadata {
        stream: usize,
        truncate_before: Option<u8>,
        max_count: Option<u64>,
        max_age: bool,
    },
    Read(ReadSpec),
    /// A read as of a mark taken earlier (any index, taken modulo the marks).
    ReadAsOf {
        read: ReadSpec,
        mark: usize,
    },
    Reopen,
}

fn expect() -> impl Strategy<Value = Expect> {
    prop_oneof![
        4 => Just(Expect::Any),
        2 => Just(Expect::NoStream),
        1 => Just(Expect::StreamExists),
        4 => Just(Expect::Head),
        2 => prop_oneof![Just(-2i8), Just(-1), Just(1), Just(2)].prop_map(Expect::Off),
    ]
}

fn size() -> impl Strategy<Value = Size> {
    prop_oneof![6 => Just(Size::Small), 3 => Just(Size::Medium), 1 => Just(Size::Large)]
}

fn read_spec() -> impl Strategy<Value = ReadSpec> {
    let from = prop_oneof![
        3 => Just(Start::Default),
        6 => any::<u8>().prop_map(Start::Pick),
        1 => Just(Start::Far),
    ];
    (0..STREAMS.len(), from, any::<bool>(), 1usize..=6)
        .prop_map(|(stream, from, backward, count)| ReadSpec { stream, from, backward, count })
}

fn op() -> impl Strategy<Value = Op> {
    let stream = || 0..STREAMS.len();
    prop_oneof![
        10 => (stream(), 1usize..=4, size(), expect()).prop_map(
            |(stream, events, size, expected)| Op::Append { stream, events, size, expected }
        ),
        2 => prop::collection::vec((stream(), 0usize..3, expect()), 1..=3)
            .prop_map(|writes| Op::AppendMany { writes }),
        1 => (stream(), 1usize..=3).prop_map(|(stream, appends)| Op::Fill { stream, appends }),
        1 => stream().prop_map(|stream| Op::Foreign { stream }),
        2 => (stream(), expect()).prop_map(|(stream, expected)| Op::Delete { stream, expected }),
        3 => (
            stream(),
            prop::option::of(any::<u8>()),
            prop::option::of(0u64..6),
            prop::bool::weighted(0.2),
        )
            .prop_map(|(stream, truncate_before, max_count, max_age)| Op::SetMetadata {
                stream,
                truncate_before,
                max_count,
                max_age,
            }),
        10 => read_spec().prop_map(Op::Read),
        6 => (read_spec(), any::<usize>()).prop_map(|(read, mark)| Op::ReadAsOf { read, mark }),
        1 => Just(Op::Reopen),
    ]
}

// ---------------------------------------------------------------------------------------------
// The model.

#[derive(Debug, Clone)]
struct ModelEvent {
    id: String,
    event_type: String,
    data: Vec<u8>,
    /// How many marks were taken before its append: it is stamped after mark `seq - 1` and at
    /// or before mark `seq`.
    seq: usize,
}

#[derive(Debug, Default)]
struct ModelStream {
    /// Every event ever appended; index = version.
    events: Vec<ModelEvent>,
    /// Soft-deleted, and nothing appended since.
    deleted: bool,
    /// As the engine should store it (`deleted_at` = the version at the last delete).
    metadata: StreamMetadata,
}

/// A read's expected answer: the versions it returns, `version`, `first_visible`, `next`.
#[derive(Debug, PartialEq, Eq)]
struct Expected {
    versions: Vec<u64>,
    version: i64,
    first_visible: u64,
    next: Option<u64>,
}

impl ModelStream {
    /// The version of the last event (-1: none), deleted or not.
    fn head(&self) -> i64 {
        self.events.len() as i64 - 1
    }

    fn exists(&self) -> bool {
        !self.events.is_empty() && !self.deleted
    }

    /// Whether an append with this expected version goes through.
    fn holds(&self, expected: ExpectedVersion) -> bool {
        match expected {
            ExpectedVersion::Any => !self.deleted,
            ExpectedVersion::NoStream => !self.exists(),
            ExpectedVersion::StreamExists => self.exists(),
            ExpectedVersion::Exact(version) => self.exists() && self.head() == version as i64,
        }
    }

    /// The deleted-at version the engine's errors name: only while the stream is deleted.
    fn deleted_at(&self) -> Option<u64> {
        self.deleted.then(|| self.metadata.deleted_at.unwrap())
    }

    /// The oldest version reads may show: truncation, the last soft delete, the max count
    /// (counted back from the current version).
    fn first_visible(&self) -> u64 {
        let metadata = &self.metadata;
        let truncated = metadata.truncate_before.unwrap_or(0);
        let deleted = metadata.deleted_at.map_or(0, |version| version + 1);
        let counted =
            metadata.max_count.map_or(0, |max| (self.events.len() as u64).saturating_sub(max));
        truncated.max(deleted).max(counted)
    }

    /// What a read answers, counting only events with `seq < until` (the appends up to a mark;
    /// `usize::MAX` for a read of now). `Err` is a stream-not-found with its `deleted_at`.
    fn read(&self, read: &ReadStream, until: usize) -> Result<Expected, Option<u64>> {
        if !self.exists() {
            return Err(self.deleted_at());
        }
        // Visibility is today's (whether the stream is found, its metadata, the max count
        // against the current version); a time only cuts off the newer events.
        let first_visible = self.first_visible();
        let version =
            self.events.iter().rposition(|event| event.seq < until).map_or(-1, |v| v as i64);
        let mut expected = Expected { versions: Vec::new(), version, first_visible, next: None };
        if version < first_visible as i64 {
            return Ok(expected);
        }
        let head = version as u64;
        let count = read.count;
        match read.direction {
            Direction::Forward => {
                let start = read.from.unwrap_or(0).max(first_visible);
                expected.versions = (start..=head).take(count).collect();
                let last = expected.versions.last().copied();
                // A next page only if this one is full and did not reach the end.
                let more = last.filter(|last| expected.versions.len() == count && *last < head);
                expected.next = more.map(|last| last + 1);
            }
            Direction::Backward => {
                let start = read.from.unwrap_or(u64::MAX).min(head);
                expected.versions = (first_visible..=start).rev().take(count).collect();
                let last = expected.versions.last().copied();
                let more =
                    last.filter(|last| expected.versions.len() == count && *last > first_visible);
                expected.next = more.map(|last| last - 1);
            }
        }
        Ok(expected)
    }
}

// ---------------------------------------------------------------------------------------------
// The runner: each op on the engine and the model, then the comparison.

struct Runner {
    dir: tempfile::TempDir,
    engine: Option<Sluice>,
    partitions: u32,
    streams: Vec<ModelStream>,
    /// Wall-clock times taken right after each append returned.
    marks: Vec<i64>,
    /// Events made so far: makes every id and payload unique.
    made: usize,
}

/// Why the engine must refuse an append.
#[derive(Debug)]
enum Refusal {
    Invalid,
    /// The write at this index is the first whose expected version does not hold.
    Wrong(usize),
}

impl Runner {
    /// A fresh engine with the topic, and `ballast_kb` of plain records in every partition.
    async fn new(partitions: u32, ballast_kb: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let engine = Sluice::open(dir.path()).unwrap();
        engine.create_topic(TOPIC, topic_config(partitions)).unwrap();
        for partition in 0..partitions {
            let mut left = ballast_kb * 1024;
            while left > 0 {
                let bytes = left.min(BALLAST_RECORD_BYTES);
                left -= bytes;
                let record = ProduceRecord {
                    key: Some(b"ballast".to_vec()),
                    value: Some(vec![b'b'; bytes]),
                    partition: Some(partition),
                    ..ProduceRecord::default()
                };
                engine.produce(TOPIC, vec![record]).await.unwrap();
            }
        }
        let streams = STREAMS.iter().map(|_| ModelStream::default()).collect();
        Self { dir, engine: Some(engine), partitions, streams, marks: Vec::new(), made: 0 }
    }

    fn engine(&self) -> &Sluice {
        self.engine.as_ref().unwrap()
    }

    fn partition(&self, stream: usize) -> u32 {
        partition_for_key(STREAMS[stream].as_bytes(), self.partitions)
    }

    fn expected(&self, stream: usize, expect: Expect) -> ExpectedVersion {
        let head = self.streams[stream].head();
        match expect {
            Expect::Any => ExpectedVersion::Any,
            Expect::NoStream => ExpectedVersion::NoStream,
            Expect::StreamExists => ExpectedVersion::StreamExists,
            Expect::Head => ExpectedVersion::Exact(head.max(0) as u64),
            Expect::Off(off) => ExpectedVersion::Exact((head + i64::from(off)).max(0) as u64),
        }
    }

    fn from(&self, stream: usize, from: Start) -> Option<u64> {
        match from {
            Start::Default => None,
            Start::Pick(pick) => Some(u64::from(pick) % (self.streams[stream].head() + 3) as u64),
            Start::Far => Some(u64::MAX),
        }
    }

    /// A new event whose id and payload are unique (the payload names its stream).
    fn event(&mut self, stream: usize, size: Size) -> NewEvent {
        self.made += 1;
        let mut data = format!("{}#{}", STREAMS[stream], self.made).into_bytes();
        let fill = b'a' + (self.made % 26) as u8;
        data.resize(data.len().max(size.bytes()), fill);
        NewEvent {
            event_type: format!("Kind{}", self.made % 5),
            data,
            id: Some(format!("event-{}", self.made)),
            ..NewEvent::default()
        }
    }

    /// After an append: the mark, then a pause so later appends are stamped after it.
    async fn mark(&mut self) {
        self.marks.push(now_ms());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    async fn run(&mut self, op: &Op) {
        match op {
            Op::Append { stream, events, size, expected } => {
                let expected = self.expected(*stream, *expected);
                let events = (0..*events).map(|_| self.event(*stream, *size)).collect();
                self.append(vec![(*stream, expected, events)]).await;
            }
            Op::AppendMany { writes } => {
                let writes = writes
                    .iter()
                    .map(|&(stream, events, expect)| {
                        let expected = self.expected(stream, expect);
                        let events = (0..events).map(|_| self.event(stream, Size::Small)).collect();
                        (stream, expected, events)
                    })
                    .collect();
                self.append(writes).await;
            }
            Op::Fill { stream, appends } => {
                for _ in 0..*appends {
                    let expected = if self.streams[*stream].deleted {
                        ExpectedVersion::NoStream
                    } else {
                        ExpectedVersion::Any
                    };
                    let events = (0..4).map(|_| self.event(*stream, Size::Large)).collect();
                    self.append(vec![(*stream, expected, events)]).await;
                }
            }
            Op::Foreign { stream } => {
                let record = ProduceRecord {
                    key: Some(STREAMS[*stream].as_bytes().to_vec()),
                    value: Some(b"not an event".to_vec()),
                    ..ProduceRecord::default()
                };
                let produced = self.engine().produce(TOPIC, vec![record]).await.unwrap();
                assert_eq!(produced[0].partition, self.partition(*stream));
            }
            Op::Delete { stream, expected } => {
                let expected = self.expected(*stream, *expected);
                self.delete(*stream, expected).await;
            }
            Op::SetMetadata { stream, truncate_before, max_count, max_age } => {
                let head = self.streams[*stream].head();
                let metadata = StreamMetadata {
                    max_count: *max_count,
                    max_age_ms: max_age.then_some(3_600_000),
                    truncate_before: truncate_before
                        .map(|pick| u64::from(pick) % (head + 3) as u64),
                    // Ignored: only a delete sets it.
                    deleted_at: Some(7),
                };
                self.set_metadata(*stream, metadata).await;
            }
            Op::Read(spec) => {
                let read = self.read_of(spec, None);
                self.check_read(spec.stream, read, usize::MAX).await;
            }
            Op::ReadAsOf { read: spec, mark } => {
                // Without marks yet: as of the epoch, before everything.
                let (as_of, until) = match self.marks.len() {
                    0 => (0, 0),
                    marks => (self.marks[mark % marks], mark % marks + 1),
                };
                let read = self.read_of(spec, Some(as_of));
                self.check_read(spec.stream, read, until).await;
            }
            Op::Reopen => {
                let engine = self.engine.take().unwrap();
                engine.shutdown().unwrap();
                drop(engine);
                self.engine = Some(Sluice::open(self.dir.path()).unwrap());
                self.check_all().await;
            }
        }
    }

    fn read_of(&self, spec: &ReadSpec, as_of_ms: Option<i64>) -> ReadStream {
        ReadStream {
            from: self.from(spec.stream, spec.from),
            direction: if spec.backward { Direction::Backward } else { Direction::Forward },
            count: spec.count,
            as_of_ms,
        }
    }

    /// One append: of one stream (`append_stream`) or of several at once (`append_streams`).
    async fn append(&mut self, writes: Vec<(usize, ExpectedVersion, Vec<NewEvent>)>) {
        let requests: Vec<StreamWrite> = writes
            .iter()
            .map(|(stream, expected, events)| StreamWrite {
                stream: STREAMS[*stream].to_owned(),
                expected: *expected,
                events: events.clone(),
            })
            .collect();
        let what = format!(
            "append {:?}",
            requests.iter().map(|w| (&w.stream, w.expected, w.events.len())).collect::<Vec<_>>()
        );
        let got = if let [request] = &requests[..] {
            let (stream, expected, events) = (&request.stream, request.expected, &request.events);
            let appended = self.engine().append_stream(TOPIC, stream, expected, events.clone());
            appended.await.map(|appended| vec![appended])
        } else {
            self.engine().append_streams(TOPIC, requests).await
        };
        match self.predict_append(&writes) {
            Err(Refusal::Invalid) => {
                assert!(matches!(got, Err(StreamError::Invalid(_))), "{what}: {got:?}");
            }
            Err(Refusal::Wrong(index)) => {
                let (stream, expected, _) = &writes[index];
                let model = &self.streams[*stream];
                match got {
                    Err(StreamError::WrongExpectedVersion {
                        stream: name,
                        expected: named,
                        actual,
                        deleted_at,
                        ..
                    }) => {
                        assert_eq!(name, STREAMS[*stream], "{what}");
                        assert_eq!(named, *expected, "{what}");
                        assert_eq!(actual, model.head(), "{what}");
                        assert_eq!(deleted_at, model.deleted_at(), "{what}");
                    }
                    other => panic!("{what}: expected a wrong expected version, got {other:?}"),
                }
            }
            Ok(()) => {
                let appended = got.unwrap_or_else(|error| panic!("{what}: {error}"));
                assert_eq!(appended.len(), writes.len(), "{what}");
                let seq = self.marks.len();
                for ((stream, _, events), appended) in writes.into_iter().zip(appended) {
                    self.apply_append(stream, events, seq, &appended);
                }
            }
        }
        self.mark().await;
    }

    /// Whether the engine must refuse an append, and why: the request's shape first (one
    /// partition, each stream once, some events), then the writes' expected versions in order.
    fn predict_append(
        &self,
        writes: &[(usize, ExpectedVersion, Vec<NewEvent>)],
    ) -> Result<(), Refusal> {
        let partition = self.partition(writes[0].0);
        let mut seen = Vec::new();
        for (stream, _, _) in writes {
            if seen.contains(stream) || self.partition(*stream) != partition {
                return Err(Refusal::Invalid);
            }
            seen.push(*stream);
        }
        if writes.iter().all(|(_, _, events)| events.is_empty()) {
            return Err(Refusal::Invalid);
        }
        let holds = |(stream, expected, _): &(usize, ExpectedVersion, Vec<NewEvent>)| {
            self.streams[*stream].holds(*expected)
        };
        match writes.iter().position(|write| !holds(write)) {
            Some(index) => Err(Refusal::Wrong(index)),
            None => Ok(()),
        }
    }

    /// Adds one write's events to the model and checks what the engine said it did.
    fn apply_append(
        &mut self,
        stream: usize,
        events: Vec<NewEvent>,
        seq: usize,
        appended: &StreamAppended,
    ) {
        let partition = self.partition(stream);
        let model = &mut self.streams[stream];
        let count = events.len();
        // Events bring a deleted stream back (a condition-only write does not).
        if count > 0 {
            model.deleted = false;
        }
        model.events.extend(events.into_iter().map(|event| ModelEvent {
            id: event.id.unwrap(),
            event_type: event.event_type,
            data: event.data,
            seq,
        }));
        let name = STREAMS[stream];
        assert_eq!(appended.stream, name);
        assert_eq!(appended.version, model.head(), "version after appending to {name}");
        assert_eq!(appended.partition, partition);
        assert_eq!(appended.offsets.len(), count);
        assert!(appended.offsets.windows(2).all(|pair| pair[1] == pair[0] + 1), "{appended:?}");
    }

    async fn delete(&mut self, stream: usize, expected: ExpectedVersion) {
        let got = self.engine().delete_stream(TOPIC, STREAMS[stream], expected).await;
        let what = format!("delete {} expecting {expected}", STREAMS[stream]);
        let model = &mut self.streams[stream];
        // A stream without events, or deleted already, is not found whatever is expected.
        if !model.exists() {
            match got {
                Err(StreamError::StreamNotFound { deleted_at, .. }) => {
                    assert_eq!(deleted_at, model.deleted_at(), "{what}");
                }
                other => panic!("{what}: expected stream not found, got {other:?}"),
            }
            return;
        }
        if model.holds(expected) {
            let head = model.head() as u64;
            assert_eq!(got.unwrap_or_else(|error| panic!("{what}: {error}")), head, "{what}");
            model.deleted = true;
            model.metadata.deleted_at = Some(head);
        } else {
            match got {
                Err(StreamError::WrongExpectedVersion { actual, deleted_at: None, .. }) => {
                    assert_eq!(actual, model.head(), "{what}");
                }
                other => panic!("{what}: expected a wrong expected version, got {other:?}"),
            }
        }
    }

    async fn set_metadata(&mut self, stream: usize, metadata: StreamMetadata) {
        let got = self.engine().set_stream_metadata(TOPIC, STREAMS[stream], metadata.clone()).await;
        let what = format!("set metadata of {} to {metadata:?}", STREAMS[stream]);
        let model = &mut self.streams[stream];
        if metadata.max_count == Some(0) {
            assert!(matches!(got, Err(StreamError::Invalid(_))), "{what}: {got:?}");
            return;
        }
        // Stored as given, but `deleted_at` stays what the last delete made it.
        let stored = StreamMetadata { deleted_at: model.metadata.deleted_at, ..metadata };
        assert_eq!(got.unwrap_or_else(|error| panic!("{what}: {error}")), stored, "{what}");
        model.metadata = stored;
    }

    /// Reads on the engine and compares with the model's answer.
    async fn check_read(&self, stream: usize, read: ReadStream, until: usize) {
        let got = self.engine().read_stream(TOPIC, STREAMS[stream], read.clone()).await;
        let what = format!("read {} {read:?} (marks {})", STREAMS[stream], self.marks.len());
        let model = &self.streams[stream];
        let slice = match (model.read(&read, until), got) {
            (Err(deleted), Err(StreamError::StreamNotFound { deleted_at, .. })) => {
                assert_eq!(deleted_at, deleted, "{what}");
                return;
            }
            (Ok(expected), Ok(slice)) => {
                assert_eq!(summary(&slice), expected, "{what}");
                slice
            }
            (expected, got) => panic!("{what}: expected {expected:?}, got {got:?}"),
        };
        let partition = self.partition(stream);
        for event in &slice.events {
            let stored = &model.events[event.version as usize];
            let version = event.version;
            assert_eq!(event.stream, STREAMS[stream], "{what}");
            assert_eq!(event.partition, partition, "{what}");
            assert_eq!(event.id, stored.id, "{what}: id of {version}");
            assert_eq!(event.event_type, stored.event_type, "{what}: type of {version}");
            assert!(event.data == stored.data, "{what}: data of {version}");
            // Stamped after the mark before its append, at or before the one after.
            let after = stored.seq.checked_sub(1).map_or(i64::MIN, |seq| self.marks[seq]);
            let time = event.timestamp_ms;
            assert!(after < time && time <= self.marks[stored.seq], "{what}: time of {version}");
        }
    }

    /// Every stream in full, both ways, and its metadata.
    async fn check_all(&self) {
        for (stream, name) in STREAMS.iter().enumerate() {
            for direction in [Direction::Forward, Direction::Backward] {
                let read =
                    ReadStream { from: None, direction, count: READ_COUNT_MAX, as_of_ms: None };
                self.check_read(stream, read, usize::MAX).await;
            }
            let metadata = self.engine().stream_metadata(TOPIC, name).unwrap();
            assert_eq!(metadata, self.streams[stream].metadata, "metadata of {name}");
        }
    }

    /// Closed segments per partition (each has a key index file).
    fn closed_segments(&self) -> Vec<usize> {
        let topic = self.dir.path().join("topics").join(TOPIC);
        (0..self.partitions)
            .map(|partition| keys_files(&topic.join(partition.to_string())))
            .collect()
    }
}

fn summary(slice: &StreamSlice) -> Expected {
    Expected {
        versions: slice.events.iter().map(|event| event.version).collect(),
        version: slice.version,
        first_visible: slice.first_visible,
        next: slice.next,
    }
}

fn keys_files(dir: &Path) -> usize {
    let name = |entry: std::io::Result<std::fs::DirEntry>| entry.unwrap().file_name();
    std::fs::read_dir(dir)
        .unwrap()
        .map(name)
        .filter(|name| name.to_string_lossy().ends_with(".keys"))
        .count()
}

/// Runs ops from a fresh engine, then checks every stream; returns the closed segments per
/// partition.
fn run(partitions: u32, ballast_kb: usize, ops: &[Op]) -> Vec<usize> {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let mut runner = Runner::new(partitions, ballast_kb).await;
        for op in ops {
            runner.run(op).await;
        }
        runner.check_all().await;
        runner.closed_segments()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn stream_reads_match_the_model(
        partitions in 1u32..=2,
        ballast_kb in prop_oneof![1 => Just(0usize), 3 => 900usize..1020],
        ops in prop::collection::vec(op(), 1..80),
    ) {
        run(partitions, ballast_kb, &ops);
    }
}

#[test]
fn two_streams_share_a_partition_of_two() {
    let partitions: Vec<u32> =
        STREAMS.iter().map(|name| partition_for_key(name.as_bytes(), 2)).collect();
    assert_eq!(partitions[0], partitions[1]);
    assert_ne!(partitions[0], partitions[2]);
}

/// A fixed run that surely rolls segments in both partitions: a stream deleted and brought
/// back across the roll, reads (now and as of every mark) on both sides of it and after a
/// restart.
#[test]
fn reads_cross_closed_segments() {
    let read = |stream, from, backward, count| ReadSpec { stream, from, backward, count };
    let append = |stream, events, size, expected| Op::Append { stream, events, size, expected };
    let mut ops = vec![
        append(0, 3, Size::Medium, Expect::NoStream),
        append(1, 2, Size::Small, Expect::Any),
        append(2, 4, Size::Large, Expect::NoStream),
        Op::Foreign { stream: 0 },
        Op::Delete { stream: 0, expected: Expect::Head },
        append(0, 2, Size::Small, Expect::NoStream),
        Op::Fill { stream: 0, appends: 2 },
        Op::Fill { stream: 2, appends: 2 },
        Op::AppendMany { writes: vec![(0, 1, Expect::Head), (1, 2, Expect::StreamExists)] },
        Op::SetMetadata { stream: 1, truncate_before: Some(1), max_count: None, max_age: false },
        Op::SetMetadata { stream: 2, truncate_before: None, max_count: Some(5), max_age: true },
    ];
    for backward in [false, true] {
        for stream in 0..STREAMS.len() {
            ops.push(Op::Read(read(stream, Start::Default, backward, 3)));
            ops.push(Op::Read(read(stream, Start::Pick(4), backward, 2)));
            for mark in 0..8 {
                ops.push(Op::ReadAsOf { read: read(stream, Start::Default, backward, 6), mark });
            }
        }
    }
    ops.push(Op::Reopen);
    ops.push(Op::ReadAsOf { read: read(0, Start::Pick(1), false, 6), mark: 5 });
    let closed = run(2, 1000, &ops);
    assert!(closed.iter().all(|&segments| segments > 0), "closed segments {closed:?}");
}
