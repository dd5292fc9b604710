//! Sluice's Kafka wire-protocol front door (see `docs/kafka.md`).
//!
//! Existing Kafka producers and consumers (librdkafka, the Java client, kafka-python) talk to
//! the engine through it: ApiVersions, Metadata, Produce, Fetch, ListOffsets, InitProducerId,
//! and the consumer-group requests over the engine's groups (`groups`). The server is one
//! broker (node 0) leading every partition. Batches are
//! stored as the producer built them and served as they lie on disk. Like every door, this one
//! translates and holds no rules: idempotence, limits and durability are the engine's.
//!
//! One task reads a connection's requests in order and does the synchronous part of each at
//! once (a produce writes its batches); a second task awaits the answers in the same order and
//! writes them. So a client may pipeline requests (Kafka's `max.in.flight`), later produce
//! requests are written while earlier ones wait for their fsync, and answers keep the order of
//! the requests, as the protocol requires.

mod api_versions;
mod codec;
mod errors;
mod fetch;
mod groups;
mod init_producer_id;
mod list_offsets;
mod metadata;
mod produce;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use sluice_engine::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

pub use codec::DecodeError;

/// Largest request accepted (Kafka's `socket.request.max.bytes` default); a larger size
/// prefix closes the connection.
pub const REQUEST_BYTES_MAX: usize = 100 * 1024 * 1024;
/// Requests of one connection read ahead of their answers (a client pipelining more waits).
pub const IN_FLIGHT_REQUESTS_MAX: usize = 16;
/// Open Kafka connections at once; one more is closed as soon as it is accepted (and a
/// warning logged), so idle clients cannot exhaust the server's file descriptors.
pub const CONNECTIONS_MAX: usize = 1024;

/// Where clients are told to connect (Metadata's broker address): Kafka's
/// `advertised.listeners`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertised {
    pub host: String,
    pub port: u16,
}

impl Advertised {
    /// The address a listener is bound to, with an unspecified IP (0.0.0.0, ::) given as
    /// 127.0.0.1, which a client can at least reach from this machine.
    pub fn from_bound(address: SocketAddr) -> Self {
        let host = if address.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            address.ip().to_string()
        };
        Advertised { host, port: address.port() }
    }
}

/// Serves Kafka clients on `listener` until `shutdown` completes; then stops accepting and
/// drops open connections (requests already written are synced by the engine's shutdown;
/// their answers are not sent, so clients retry them, and idempotent producers are answered
/// as duplicates).
pub async fn serve(
    listener: TcpListener,
    engine: Engine,
    advertised: Advertised,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(listener, engine, advertised, CONNECTIONS_MAX, shutdown).await;
}

/// [`serve`] with another bound on open connections than [`CONNECTIONS_MAX`].
pub async fn serve_with(
    listener: TcpListener,
    engine: Engine,
    advertised: Advertised,
    connections_max: usize,
    shutdown: impl Future<Output = ()>,
) {
    let advertised = Arc::new(advertised);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) if connections.len() >= connections_max => {
                    tracing::warn!(%peer, connections_max, "kafka: too many open connections; closing the new one");
                    drop(stream);
                }
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(connection(stream, peer, engine.clone(), Arc::clone(&advertised)));
                }
                Err(error) => {
                    tracing::warn!(%error, "kafka: accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

/// An answer on its way: the correlation id and the future that builds the body. Every
/// response header here is v0 (ApiVersions keeps v0 even at v3; no other flexible version is
/// offered).
struct Pending {
    correlation_id: i32,
    body: produce::Answer,
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    engine: Engine,
    advertised: Arc<Advertised>,
) {
    let (read, write) = stream.into_split();
    let (sender, receiver) = mpsc::channel(IN_FLIGHT_REQUESTS_MAX);
    let writer = tokio::spawn(write_answers(BufWriter::new(write), receiver));
    if let Err(error) = read_requests(BufReader::new(read), &engine, &advertised, sender).await {
        tracing::debug!(%peer, %error, "kafka: connection closed");
    }
    let _ = writer.await;
}

async fn read_requests(
    mut read: BufReader<tokio::net::tcp::OwnedReadHalf>,
    engine: &Engine,
    advertised: &Advertised,
    answers: mpsc::Sender<Pending>,
) -> Result<(), String> {
    loop {
        let size = match read.read_i32().await {
            Ok(size) => size,
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(error) => return Err(error.to_string()),
        };
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if !(8..=REQUEST_BYTES_MAX).contains(&size) {
            return Err(format!(
                "a request of {size} bytes; allowed is 8 to {REQUEST_BYTES_MAX} (REQUEST_BYTES_MAX)"
            ));
        }
        let mut frame = vec![0; size];
        read.read_exact(&mut frame).await.map_err(|error| error.to_string())?;
        let pending = match handle(engine, advertised, &frame) {
            Ok(Some(pending)) => pending,
            Ok(None) => continue,
            Err(error) => return Err(error),
        };
        if answers.send(pending).await.is_err() {
            return Ok(()); // the writer is gone: the peer stopped reading
        }
    }
}

/// Parses one request's header and does what can be done at once. `Ok(None)`: nothing to
/// answer (a produce with `acks` 0). An error closes the connection, as Kafka does for a
/// request it cannot parse or a version it did not offer.
fn handle(
    engine: &Engine,
    advertised: &Advertised,
    frame: &[u8],
) -> Result<Option<Pending>, String> {
    let mut reader = codec::Reader::new(frame);
    let api_key = reader.i16("api_key").map_err(|e| e.to_string())?;
    let version = reader.i16("api_version").map_err(|e| e.to_string())?;
    let correlation_id = reader.i32("correlation_id").map_err(|e| e.to_string())?;
    let client_id = reader.nullable_string("client_id").map_err(|e| e.to_string())?.unwrap_or("");
    let supported = api_versions::range(api_key);
    if api_key != api_versions::API_VERSIONS {
        match supported {
            Some((min, max)) if (min..=max).contains(&version) => {}
            Some((min, max)) => {
                return Err(format!(
                    "client '{client_id}' sent request {api_key} version {version}; this server answers versions {min} to {max}"
                ))
            }
            None => {
                return Err(format!(
                    "client '{client_id}' sent request {api_key}, which this server does not answer (ApiVersions lists those it does)"
                ))
            }
        }
    } else if version >= 3 {
        reader.tagged_fields("request header tagged fields").map_err(|e| e.to_string())?;
    }
    let body = &frame[frame.len() - reader.remaining()..];
    let answer = answer(engine, advertised, api_key, version, body).map_err(|e| e.to_string())?;
    Ok(answer.map(|body| Pending { correlation_id, body }))
}

/// The answer to one request whose header is checked: built now, or a future for it (a
/// produce's fsync, a fetch's wait, a commit). `None`: nothing to answer.
fn answer(
    engine: &Engine,
    advertised: &Advertised,
    api_key: i16,
    version: i16,
    body: &[u8],
) -> Result<Option<produce::Answer>, DecodeError> {
    let ready =
        |bytes: Vec<u8>| -> Option<produce::Answer> { Some(Box::pin(async move { bytes })) };
    Ok(match api_key {
        api_versions::API_VERSIONS => ready(api_versions::handle(version, body)?),
        api_versions::METADATA => ready(metadata::handle(engine, advertised, version, body)?),
        api_versions::PRODUCE => produce::handle(engine, version, body)?,
        api_versions::FETCH => Some(fetch::handle(engine, version, body)?),
        api_versions::LIST_OFFSETS => ready(list_offsets::handle(engine, version, body)?),
        api_versions::INIT_PRODUCER_ID => ready(init_producer_id::handle(engine, body)?),
        api_versions::FIND_COORDINATOR => {
            ready(groups::find_coordinator(advertised, version, body)?)
        }
        api_versions::JOIN_GROUP => ready(groups::join_group(engine, version, body)?),
        api_versions::SYNC_GROUP => ready(groups::sync_group(engine, version, body)?),
        api_versions::HEARTBEAT => ready(groups::heartbeat(engine, version, body)?),
        api_versions::LEAVE_GROUP => ready(groups::leave_group(engine, version, body)?),
        api_versions::OFFSET_COMMIT => Some(groups::offset_commit(engine, version, body)?),
        api_versions::OFFSET_FETCH => ready(groups::offset_fetch(engine, version, body)?),
        _ => unreachable!("the header check lets only supported keys through"),
    })
}

async fn write_answers(
    mut write: BufWriter<tokio::net::tcp::OwnedWriteHalf>,
    mut pending: mpsc::Receiver<Pending>,
) {
    while let Some(Pending { correlation_id, body }) = pending.recv().await {
        let body = body.await;
        let size = i32::try_from(body.len() + 4).unwrap_or(i32::MAX);
        let written = async {
            write.write_i32(size).await?;
            write.write_i32(correlation_id).await?;
            write.write_all(&body).await?;
            if pending.is_empty() {
                write.flush().await?;
            }
            std::io::Result::Ok(())
        };
        if written.await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A small deterministic generator (xorshift64*), so a failure reproduces.
    struct Noise(u64);

    impl Noise {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound.max(1)
        }
    }

    fn header(api_key: i16, version: i16) -> Vec<u8> {
        let mut writer = codec::Writer::new();
        writer.i16(api_key).i16(version).i32(7).string("noise");
        if api_key == api_versions::API_VERSIONS && version >= 3 {
            writer.empty_tagged_fields();
        }
        writer.bytes
    }

    /// A valid Produce v8 body for topic "t" partition 0, to mutate.
    fn produce_body() -> Vec<u8> {
        let mut builder = sluice_format::BatchBuilder::new(0);
        builder.push(&sluice_format::NewRecord {
            key: Some(b"k"),
            value: Some(b"value"),
            headers: &[],
            timestamp_ms: 1,
        });
        let batch = builder.build();
        let mut writer = codec::Writer::new();
        writer.nullable_string(None).i16(-1).i32(1000).array_length(1).string("t");
        writer.array_length(1).i32(0).nullable_bytes(Some(&batch));
        writer.bytes
    }

    /// Random and mutated requests of every key and version never panic the door: each one
    /// is refused (the connection would close) or answered, and the server state stays
    /// usable (a valid produce still lands afterwards).
    #[test]
    fn random_and_mutated_requests_are_refused_or_answered_never_a_panic() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let engine = Engine::open(dir.path()).expect("the engine opens");
        engine
            .create_topic("t", sluice_engine::TopicConfig::default())
            .expect("the topic is created");
        let advertised = Advertised { host: "127.0.0.1".to_owned(), port: 9092 };
        let valid_produce = produce_body();
        let mut noise = Noise(0x5eed_1234_abcd_0001);
        let (mut refused, mut answered) = (0, 0);
        runtime.block_on(async {
            for case in 0..4000 {
                let (api_key, min, max) = api_versions::SUPPORTED
                    [noise.below(api_versions::SUPPORTED.len() as u64) as usize];
                let version = min + noise.below((max - min + 1) as u64) as i16;
                let mut body = if api_key == api_versions::PRODUCE && case % 2 == 0 {
                    valid_produce.clone()
                } else {
                    (0..noise.below(256)).map(|_| noise.next() as u8).collect()
                };
                if !body.is_empty() {
                    for _ in 0..=noise.below(4) {
                        let at = noise.below(body.len() as u64) as usize;
                        body[at] = noise.next() as u8;
                    }
                }
                let mut frame = header(api_key, version);
                frame.extend_from_slice(&body);
                match handle(&engine, &advertised, &frame) {
                    Err(_) => refused += 1,
                    Ok(None) => answered += 1,
                    Ok(Some(pending)) => {
                        // A fetch may wait for records; its answer is not the point here.
                        let _ = tokio::time::timeout(Duration::from_millis(20), pending.body).await;
                        answered += 1;
                    }
                }
            }
            let mut frame = header(api_versions::PRODUCE, 8);
            frame.extend_from_slice(&valid_produce);
            let pending = handle(&engine, &advertised, &frame).expect("parses").expect("acks -1");
            let answer = pending.body.await;
            let mut reader = codec::Reader::new(&answer);
            reader.array_length("topics", 1).expect("one topic");
            reader.string("name").expect("the name");
            reader.array_length("partitions", 1).expect("one partition");
            reader.i32("index").expect("the index");
            assert_eq!(reader.i16("error").expect("the error code"), errors::NONE);
        });
        assert!(refused > 100 && answered > 100, "refused {refused}, answered {answered}");
    }
}
