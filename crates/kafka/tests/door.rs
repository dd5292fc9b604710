//! The Kafka door end to end: `serve` on a real socket, spoken to in raw Kafka protocol by the
//! small encoder and decoder below (request header v1, or v2 for ApiVersions v3; response
//! header v0).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use sluice_engine::{Engine, TopicConfig};
use sluice_format::{BatchBuilder, Header, NewRecord};
use sluice_kafka::Advertised;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PRODUCE: i16 = 0;
const FETCH: i16 = 1;
const LIST_OFFSETS: i16 = 2;
const METADATA: i16 = 3;
const API_VERSIONS: i16 = 18;
const INIT_PRODUCER_ID: i16 = 22;

const ADVERTISED_HOST: &str = "door.example";
const ADVERTISED_PORT: u16 = 19_092;
const ANSWER_WAIT: Duration = Duration::from_secs(10);

// ---- encoding and decoding -------------------------------------------------------------------

#[derive(Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn i8(&mut self, v: i8) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i16(&mut self, v: i16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i32(&mut self, v: i32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i64(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn string(&mut self, v: &str) -> &mut Self {
        self.i16(i16::try_from(v.len()).unwrap());
        self.0.extend_from_slice(v.as_bytes());
        self
    }
    fn null_string(&mut self) -> &mut Self {
        self.i16(-1)
    }
    fn compact_string(&mut self, v: &str) -> &mut Self {
        self.0.push(u8::try_from(v.len() + 1).unwrap()); // short strings only: one varint byte
        self.0.extend_from_slice(v.as_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.i32(i32::try_from(v.len()).unwrap());
        self.0.extend_from_slice(v);
        self
    }
}

struct Dec<'a>(&'a [u8]);

impl Dec<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        assert!(self.0.len() >= n, "answer ends early: {n} bytes wanted, {} left", self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
    fn i8(&mut self) -> i8 {
        i8::from_be_bytes(self.take(1).try_into().unwrap())
    }
    fn i16(&mut self) -> i16 {
        i16::from_be_bytes(self.take(2).try_into().unwrap())
    }
    fn i32(&mut self) -> i32 {
        i32::from_be_bytes(self.take(4).try_into().unwrap())
    }
    fn i64(&mut self) -> i64 {
        i64::from_be_bytes(self.take(8).try_into().unwrap())
    }
    fn uvarint(&mut self) -> u32 {
        let mut value = 0;
        for shift in (0..35).step_by(7) {
            let byte = self.take(1)[0];
            value |= u32::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return value;
            }
        }
        panic!("varint too long");
    }
    fn nullable_string(&mut self) -> Option<String> {
        let n = self.i16();
        (n >= 0).then(|| String::from_utf8(self.take(n as usize).to_vec()).unwrap())
    }
    fn string(&mut self) -> String {
        self.nullable_string().unwrap()
    }
    fn nullable_bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.i32();
        (n >= 0).then(|| self.take(n as usize).to_vec())
    }
    fn array(&mut self) -> usize {
        usize::try_from(self.i32()).unwrap()
    }
    fn end(&self) {
        assert!(self.0.is_empty(), "{} bytes left over in the answer", self.0.len());
    }
}

// ---- the server and a client ---------------------------------------------------------------

struct Door {
    address: SocketAddr,
    engine: Engine,
    _dir: tempfile::TempDir,
}

async fn door() -> Door {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let advertised = Advertised { host: ADVERTISED_HOST.to_owned(), port: ADVERTISED_PORT };
    tokio::spawn(sluice_kafka::serve(listener, engine.clone(), advertised, std::future::pending()));
    Door { address, engine, _dir: dir }
}

impl Door {
    fn topic(&self, name: &str, partitions: u32) {
        self.engine
            .create_topic(name, TopicConfig { partitions, ..TopicConfig::default() })
            .unwrap();
    }

    async fn client(&self) -> Client {
        Client { stream: TcpStream::connect(self.address).await.unwrap(), next_id: 100 }
    }

    fn high_watermark(&self, topic: &str, partition: usize) -> u64 {
        self.engine.describe_topic(topic).unwrap().partitions[partition].high_watermark
    }
}

struct Client {
    stream: TcpStream,
    next_id: i32,
}

impl Client {
    /// Sends a request with header v1 (v2 if `flexible_header`); returns its correlation id.
    async fn send_with(
        &mut self,
        key: i16,
        version: i16,
        flexible_header: bool,
        body: &[u8],
    ) -> i32 {
        let id = self.next_id;
        self.next_id += 1;
        let mut frame = Enc::default();
        frame.i16(key).i16(version).i32(id).string("door-test");
        if flexible_header {
            frame.i8(0); // no tagged fields
        }
        frame.0.extend_from_slice(body);
        let mut sized = Enc::default();
        sized.bytes(&frame.0);
        self.stream.write_all(&sized.0).await.unwrap();
        id
    }

    async fn send(&mut self, key: i16, version: i16, body: &[u8]) -> i32 {
        self.send_with(key, version, false, body).await
    }

    /// Reads one answer: its correlation id and body.
    async fn receive(&mut self) -> (i32, Vec<u8>) {
        tokio::time::timeout(ANSWER_WAIT, async {
            let size = self.stream.read_i32().await.unwrap();
            let mut frame = vec![0; usize::try_from(size).unwrap()];
            self.stream.read_exact(&mut frame).await.unwrap();
            let body = frame.split_off(4);
            (i32::from_be_bytes(frame.try_into().unwrap()), body)
        })
        .await
        .expect("an answer in time")
    }

    async fn call_with(
        &mut self,
        key: i16,
        version: i16,
        flexible_header: bool,
        body: &[u8],
    ) -> Vec<u8> {
        let id = self.send_with(key, version, flexible_header, body).await;
        let (answered, body) = self.receive().await;
        assert_eq!(answered, id, "correlation id");
        body
    }

    async fn call(&mut self, key: i16, version: i16, body: &[u8]) -> Vec<u8> {
        self.call_with(key, version, false, body).await
    }

    /// Whether the server closed the connection (EOF or reset) within the wait.
    async fn closed(&mut self) -> bool {
        self.closed_within(ANSWER_WAIT).await
    }

    /// Whether the server closes the connection within `wait` (no bytes are expected).
    async fn closed_within(&mut self, wait: Duration) -> bool {
        let mut byte = [0; 1];
        match tokio::time::timeout(wait, self.stream.read(&mut byte)).await {
            Ok(Ok(0) | Err(_)) => true,
            Ok(Ok(_)) | Err(_) => false,
        }
    }
}

// ---- requests and answers ------------------------------------------------------------------

fn batch(values: &[&str], producer: (i64, i16, i32), headers: &[Header<'_>]) -> Vec<u8> {
    let (id, epoch, sequence) = producer;
    let mut builder = BatchBuilder::new(0).producer(id, epoch, sequence);
    for value in values {
        builder.push(&NewRecord {
            key: None,
            value: Some(value.as_bytes()),
            headers,
            timestamp_ms: 1_700_000_000_000,
        });
    }
    builder.build()
}

fn plain(values: &[&str]) -> Vec<u8> {
    batch(values, (-1, -1, -1), &[])
}

/// (offset, value) of every record in concatenated batches.
fn values(batches: &[u8]) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    for split in sluice_format::split_batches(batches) {
        let (_, one) = split.unwrap();
        for record in sluice_format::records(one).unwrap() {
            let record = record.unwrap();
            out.push((record.offset, String::from_utf8(record.value.unwrap().to_vec()).unwrap()));
        }
    }
    out
}

fn produce_request(acks: i16, topic: &str, partition: i32, records: &[u8]) -> Vec<u8> {
    let mut e = Enc::default();
    e.null_string().i16(acks).i32(30_000);
    e.i32(1).string(topic).i32(1).i32(partition).bytes(records);
    e.0
}

/// A Produce v8 answer with one partition: (error code, base offset).
fn produce_answer(body: &[u8], topic: &str, partition: i32) -> (i16, i64) {
    let mut d = Dec(body);
    assert_eq!(d.array(), 1);
    assert_eq!(d.string(), topic);
    assert_eq!(d.array(), 1);
    assert_eq!(d.i32(), partition);
    let code = d.i16();
    let base_offset = d.i64();
    assert_eq!(d.i64(), -1, "log_append_time_ms");
    d.i64(); // log_start_offset
    assert_eq!(d.array(), 0, "record_errors");
    let message = d.nullable_string();
    assert_eq!(message.is_some(), code != 0, "error message {message:?} for code {code}");
    assert_eq!(d.i32(), 0, "throttle_time_ms");
    d.end();
    (code, base_offset)
}

async fn produce(client: &mut Client, topic: &str, partition: i32, records: &[u8]) -> (i16, i64) {
    let body = client.call(PRODUCE, 8, &produce_request(-1, topic, partition, records)).await;
    produce_answer(&body, topic, partition)
}

/// ApiVersions' key list, as (key, min, max).
fn api_keys(d: &mut Dec<'_>, compact: bool) -> Vec<(i16, i16, i16)> {
    let count = if compact { d.uvarint() as usize - 1 } else { d.array() };
    (0..count)
        .map(|_| {
            let key = (d.i16(), d.i16(), d.i16());
            if compact {
                assert_eq!(d.uvarint(), 0, "tagged fields");
            }
            key
        })
        .collect()
}

fn assert_offered(keys: &[(i16, i16, i16)]) {
    for wanted in [(PRODUCE, 3, 8), (FETCH, 4, 11), (METADATA, 1, 8)] {
        assert!(keys.contains(&wanted), "{wanted:?} not in {keys:?}");
    }
}

async fn list_offset(client: &mut Client, topic: &str, timestamp: i64) -> (i16, i64) {
    let mut e = Enc::default();
    e.i32(-1).i8(0).i32(1).string(topic).i32(1).i32(0).i32(-1).i64(timestamp);
    let body = client.call(LIST_OFFSETS, 5, &e.0).await;
    let mut d = Dec(&body);
    assert_eq!(d.i32(), 0, "throttle_time_ms");
    assert_eq!(d.array(), 1);
    assert_eq!(d.string(), topic);
    assert_eq!(d.array(), 1);
    assert_eq!(d.i32(), 0);
    let code = d.i16();
    assert_eq!(d.i64(), -1, "timestamp");
    let offset = d.i64();
    assert_eq!(d.i32(), 0, "leader_epoch");
    d.end();
    (code, offset)
}

// ---- the tests -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_versions_v0_and_v3_list_the_apis_and_v4_is_refused_in_the_v0_layout() {
    let door = door().await;
    let mut client = door.client().await;

    let body = client.call(API_VERSIONS, 0, &[]).await;
    let mut d = Dec(&body);
    assert_eq!(d.i16(), 0);
    assert_offered(&api_keys(&mut d, false));
    d.end();

    let mut e = Enc::default();
    e.compact_string("door-test").compact_string("1.0").i8(0);
    let body = client.call_with(API_VERSIONS, 3, true, &e.0).await;
    let mut d = Dec(&body);
    assert_eq!(d.i16(), 0);
    let keys = api_keys(&mut d, true);
    assert_offered(&keys);
    assert!(keys.contains(&(API_VERSIONS, 0, 3)), "{keys:?}");
    assert_eq!(d.i32(), 0, "throttle_time_ms");
    assert_eq!(d.uvarint(), 0, "tagged fields");
    d.end();

    let body = client.call_with(API_VERSIONS, 4, true, &e.0).await;
    let mut d = Dec(&body);
    assert_eq!(d.i16(), 35, "UNSUPPORTED_VERSION");
    assert_offered(&api_keys(&mut d, false));
    d.end();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_lists_partitions_and_the_advertised_broker_and_does_not_create_topics() {
    let door = door().await;
    door.topic("orders", 2);
    let mut client = door.client().await;
    let mut e = Enc::default();
    e.i32(2).string("orders").string("missing").i8(1).i8(0).i8(0); // auto-create asked for
    let body = client.call(METADATA, 8, &e.0).await;
    let mut d = Dec(&body);
    assert_eq!(d.i32(), 0, "throttle_time_ms");
    assert_eq!(d.array(), 1, "brokers");
    assert_eq!(d.i32(), 0, "node id");
    assert_eq!(d.string(), ADVERTISED_HOST);
    assert_eq!(d.i32(), i32::from(ADVERTISED_PORT));
    assert_eq!(d.nullable_string(), None, "rack");
    assert_eq!(d.nullable_string().as_deref(), Some("sluice"), "cluster id");
    assert_eq!(d.i32(), 0, "controller id");
    assert_eq!(d.array(), 2, "topics");
    // orders
    assert_eq!(d.i16(), 0);
    assert_eq!(d.string(), "orders");
    assert_eq!(d.i8(), 0, "is_internal");
    assert_eq!(d.array(), 2, "partitions");
    for index in 0..2 {
        assert_eq!(d.i16(), 0);
        assert_eq!(d.i32(), index);
        assert_eq!(d.i32(), 0, "leader");
        assert_eq!(d.i32(), 0, "leader epoch");
        assert_eq!((d.array(), d.i32()), (1, 0), "replicas");
        assert_eq!((d.array(), d.i32()), (1, 0), "in-sync replicas");
        assert_eq!(d.array(), 0, "offline replicas");
    }
    d.i32(); // topic_authorized_operations
             // missing
    assert_eq!(d.i16(), 3, "UNKNOWN_TOPIC_OR_PARTITION");
    assert_eq!(d.string(), "missing");
    assert_eq!(d.i8(), 0);
    assert_eq!(d.array(), 0);
    d.i32();
    d.i32(); // cluster_authorized_operations
    d.end();
    assert!(door.engine.describe_topic("missing").is_err(), "asking created the topic");
    assert_eq!(door.engine.list_topics().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produced_batches_get_offsets_and_read_back_through_the_engine_and_fetch() {
    let door = door().await;
    door.topic("t", 1);
    let mut client = door.client().await;
    assert_eq!(produce(&mut client, "t", 0, &plain(&["a", "b", "c"])).await, (0, 0));
    assert_eq!(produce(&mut client, "t", 0, &plain(&["d", "e"])).await, (0, 3));
    let expected: Vec<(i64, String)> = ["a", "b", "c", "d", "e"]
        .iter()
        .enumerate()
        .map(|(i, v)| (i as i64, (*v).to_owned()))
        .collect();

    let read = door.engine.fetch("t", 0, 0, 1 << 20, Duration::ZERO).await.unwrap();
    assert_eq!(read.high_watermark, 5);
    assert_eq!(values(&read.batches), expected);

    let mut e = Enc::default();
    e.i32(-1).i32(500).i32(1).i32(1 << 20).i8(0).i32(0).i32(-1); // to session_epoch
    e.i32(1).string("t").i32(1).i32(0).i32(-1).i64(0).i64(-1).i32(1 << 20);
    e.i32(0).string(""); // forgotten topics, rack id
    let body = client.call(FETCH, 11, &e.0).await;
    let mut d = Dec(&body);
    assert_eq!(d.i32(), 0, "throttle_time_ms");
    assert_eq!((d.i16(), d.i32()), (0, 0), "error code, session id");
    assert_eq!(d.array(), 1);
    assert_eq!(d.string(), "t");
    assert_eq!(d.array(), 1);
    assert_eq!(d.i32(), 0);
    assert_eq!(d.i16(), 0);
    assert_eq!(d.i64(), 5, "high watermark");
    assert_eq!(d.i64(), 5, "last stable offset");
    assert_eq!(d.i64(), 0, "log start offset");
    assert_eq!(d.i32(), -1, "aborted transactions");
    assert_eq!(d.i32(), -1, "preferred read replica");
    let records = d.nullable_bytes().unwrap();
    d.end();
    assert_eq!(values(&records), expected);
    assert_eq!(records, read.batches);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_produces_get_kafka_error_codes_and_append_nothing() {
    let door = door().await;
    door.topic("t", 1);
    let mut client = door.client().await;
    assert_eq!(produce(&mut client, "t", 0, &plain(&["kept"])).await, (0, 0));

    let mut corrupt = plain(&["abc", "def"]);
    let last_value_byte = corrupt.len() - 2; // the last byte is the last record's header count
    assert_eq!(corrupt[last_value_byte], b'f');
    corrupt[last_value_byte] ^= 0x01;
    assert_eq!(produce(&mut client, "t", 0, &corrupt).await, (2, -1), "CORRUPT_MESSAGE");
    assert_eq!(door.high_watermark("t", 0), 1);

    let reserved = [Header { key: b"sluice-stream-version", value: Some(b"1") }];
    let stream_header = batch(&["x"], (-1, -1, -1), &reserved);
    assert_eq!(produce(&mut client, "t", 0, &stream_header).await, (87, -1), "INVALID_RECORD");
    assert_eq!(door.high_watermark("t", 0), 1);

    assert_eq!(produce(&mut client, "t", 7, &plain(&["x"])).await, (3, -1));
    assert_eq!(produce(&mut client, "t", -1, &plain(&["x"])).await, (3, -1));
    assert_eq!(produce(&mut client, "nope", 0, &plain(&["x"])).await, (3, -1));

    let body = client.call(PRODUCE, 8, &produce_request(2, "t", 0, &plain(&["x"]))).await;
    assert_eq!(produce_answer(&body, "t", 0), (21, -1), "INVALID_REQUIRED_ACKS");
    assert_eq!(door.high_watermark("t", 0), 1);
    let read = door.engine.fetch("t", 0, 0, 1 << 20, Duration::ZERO).await.unwrap();
    assert_eq!(values(&read.batches), [(0, "kept".to_owned())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retries_answer_the_original_offset_and_gaps_are_refused() {
    let door = door().await;
    door.topic("t", 1);
    let mut client = door.client().await;
    let mut e = Enc::default();
    e.null_string().i32(60_000);
    let body = client.call(INIT_PRODUCER_ID, 1, &e.0).await;
    let mut d = Dec(&body);
    assert_eq!(d.i32(), 0, "throttle_time_ms");
    assert_eq!(d.i16(), 0);
    let producer_id = d.i64();
    assert_eq!(d.i16(), 0, "epoch");
    d.end();
    assert!(producer_id >= 0, "{producer_id}");

    assert_eq!(produce(&mut client, "t", 0, &plain(&["before"])).await, (0, 0));
    let first = batch(&["a", "b", "c"], (producer_id, 0, 0), &[]);
    assert_eq!(produce(&mut client, "t", 0, &first).await, (0, 1));
    assert_eq!(produce(&mut client, "t", 0, &first).await, (0, 1), "the retry");
    assert_eq!(door.high_watermark("t", 0), 4);
    let next = batch(&["d"], (producer_id, 0, 3), &[]);
    assert_eq!(produce(&mut client, "t", 0, &next).await, (0, 4));
    let gap = batch(&["z"], (producer_id, 0, 9), &[]);
    assert_eq!(produce(&mut client, "t", 0, &gap).await, (45, -1), "OUT_OF_ORDER_SEQUENCE_NUMBER");
    assert_eq!(door.high_watermark("t", 0), 5);
    let read = door.engine.fetch("t", 0, 0, 1 << 20, Duration::ZERO).await.unwrap();
    let read: Vec<String> = values(&read.batches).into_iter().map(|(_, v)| v).collect();
    assert_eq!(read, ["before", "a", "b", "c", "d"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_produces_are_answered_in_request_order() {
    let door = door().await;
    door.topic("t", 1);
    let mut client = door.client().await;
    let mut ids = Vec::new();
    for index in 0..10 {
        let records = plain(&[&format!("{index}-0"), &format!("{index}-1")]);
        ids.push(client.send(PRODUCE, 8, &produce_request(-1, "t", 0, &records)).await);
    }
    for (index, id) in ids.into_iter().enumerate() {
        let (answered, body) = client.receive().await;
        assert_eq!(answered, id);
        assert_eq!(produce_answer(&body, "t", 0), (0, 2 * index as i64));
    }
    assert_eq!(door.high_watermark("t", 0), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_closes_only_its_connection() {
    let door = door().await;

    let mut huge = door.client().await;
    huge.stream.write_all(&(200 * 1024 * 1024_i32).to_be_bytes()).await.unwrap();
    assert!(huge.closed().await, "a 200 MiB size prefix left the connection open");

    let mut unknown = door.client().await;
    unknown.send(99, 0, &[]).await;
    assert!(unknown.closed().await, "api key 99 left the connection open");

    let mut fresh = door.client().await;
    let body = fresh.call(API_VERSIONS, 0, &[]).await;
    let mut d = Dec(&body);
    assert_eq!(d.i16(), 0);
    assert_offered(&api_keys(&mut d, false));
    d.end();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_offsets_gives_the_earliest_and_the_latest_offset() {
    let door = door().await;
    door.topic("t", 1);
    let mut client = door.client().await;
    assert_eq!(list_offset(&mut client, "t", -2).await, (0, 0));
    assert_eq!(list_offset(&mut client, "t", -1).await, (0, 0));
    produce(&mut client, "t", 0, &plain(&["a", "b", "c"])).await;
    produce(&mut client, "t", 0, &plain(&["d"])).await;
    assert_eq!(list_offset(&mut client, "t", -2).await, (0, 0));
    assert_eq!(list_offset(&mut client, "t", -1).await, (0, 4));
    assert_eq!(list_offset(&mut client, "nope", -1).await, (3, -1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed_and_the_rest_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let advertised = Advertised { host: ADVERTISED_HOST.to_owned(), port: ADVERTISED_PORT };
    tokio::spawn(sluice_kafka::serve_with(listener, engine, advertised, 2, std::future::pending()));
    let connect =
        || async { Client { stream: TcpStream::connect(address).await.unwrap(), next_id: 1 } };
    let mut first = connect().await;
    let mut second = connect().await;
    // Both are served (and so counted) before the third arrives.
    first.call(API_VERSIONS, 0, &[]).await;
    second.call(API_VERSIONS, 0, &[]).await;
    let mut third = connect().await;
    assert!(third.closed().await, "a third connection over a limit of 2 stayed open");
    first.call(API_VERSIONS, 0, &[]).await;
    drop(second);
    // Once one is gone, a new one is served again.
    let mut fourth = None;
    for _ in 0..50 {
        let mut client = connect().await;
        if !client.closed_within(Duration::from_millis(100)).await {
            fourth = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut fourth = fourth.expect("no connection was served after one of the two closed");
    let body = fourth.call(API_VERSIONS, 0, &[]).await;
    assert_eq!(Dec(&body).i16(), 0);
}

const OFFSET_COMMIT: i16 = 8;
const FIND_COORDINATOR: i16 = 10;
const JOIN_GROUP: i16 = 11;
const HEARTBEAT: i16 = 12;

/// A JoinGroup v5 body subscribing to `topics` under each strategy named.
fn join_body(member: &str, strategies: &[&str], topics: &[&str]) -> Vec<u8> {
    let mut subscription = Enc::default();
    subscription.i16(0).i32(i32::try_from(topics.len()).unwrap());
    for topic in topics {
        subscription.string(topic);
    }
    subscription.i32(-1); // user data: null
    let mut body = Enc::default();
    body.string("g").i32(10_000).i32(30_000).string(member).null_string().string("consumer");
    body.i32(i32::try_from(strategies.len()).unwrap());
    for strategy in strategies {
        body.string(strategy).bytes(&subscription.0);
    }
    body.0
}

/// JoinGroup v5's answer: (error, generation, protocol, leader, member id).
fn join_answer(body: &[u8]) -> (i16, i32, String, String, String) {
    let mut d = Dec(body);
    d.i32(); // throttle
    let answer = (d.i16(), d.i32(), d.string(), d.string(), d.string());
    assert_eq!(d.array(), 0, "members are only for a leader");
    d.end();
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_are_followers_and_a_stale_generation_is_told_to_rejoin() {
    let door = door().await;
    door.topic("t", 2);
    let mut client = door.client().await;

    let mut find = Enc::default();
    find.string("g").i8(0);
    let body = client.call(FIND_COORDINATOR, 2, &find.0).await;
    let mut d = Dec(&body);
    assert_eq!((d.i32(), d.i16()), (0, 0));
    assert_eq!(d.nullable_string(), None);
    assert_eq!((d.i32(), d.string(), d.i32()), (0, ADVERTISED_HOST.to_owned(), 19_092));
    d.end();

    // Only an incremental (cooperative) strategy: refused, nothing joined.
    let body = client.call(JOIN_GROUP, 5, &join_body("", &["cooperative-sticky"], &["t"])).await;
    assert_eq!(join_answer(&body).0, 23);
    assert!(door.engine.describe_group("g").map_or(true, |g| g.members.is_empty()));

    let body =
        client.call(JOIN_GROUP, 5, &join_body("", &["cooperative-sticky", "range"], &["t"])).await;
    let (error, first_generation, protocol, leader, member) = join_answer(&body);
    assert_eq!((error, protocol.as_str()), (0, "range"));
    assert_ne!(leader, member, "a client named leader would compute the assignment itself");

    let heartbeat = |generation: i32, member: &str| {
        let mut body = Enc::default();
        body.string("g").i32(generation).string(member);
        body.0
    };
    let body = client.call(HEARTBEAT, 3, &heartbeat(first_generation, &member)).await;
    assert_eq!(Dec(&body[4..]).i16(), 0);
    // A second member moves the group on: the first is told to rejoin.
    let mut other = door.client().await;
    let (error, second_generation, ..) =
        join_answer(&other.call(JOIN_GROUP, 5, &join_body("", &["range"], &["t"])).await);
    assert_eq!(error, 0);
    assert!(second_generation > first_generation);
    let body = client.call(HEARTBEAT, 3, &heartbeat(first_generation, &member)).await;
    assert_eq!(Dec(&body[4..]).i16(), 27);
    let body = client.call(HEARTBEAT, 3, &heartbeat(first_generation, "nobody")).await;
    assert_eq!(Dec(&body[4..]).i16(), 25);

    // A commit without a generation (a consumer outside the group) is refused.
    let mut commit = Enc::default();
    commit.string("g").i32(-1).string("").null_string(); // group, generation, member, instance
    commit.i32(1).string("t").i32(1).i32(0).i64(5).i32(-1).null_string();
    let body = client.call(OFFSET_COMMIT, 7, &commit.0).await;
    let mut d = Dec(&body);
    d.i32(); // throttle
    assert_eq!((d.array(), d.string(), d.array(), d.i32(), d.i16()), (1, "t".to_owned(), 1, 0, 25));
    d.end();
}
