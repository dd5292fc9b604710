//! The command-line surface: every subcommand and option, as clap derive types.
//!
//! Only definitions and argument parsers live here; each subcommand's work lives in its own
//! module. New top-level subcommands (`serve`, `topic`, `produce`, ...) are new variants of
//! [`Command`]; new benchmarks are new variants of [`BenchCommand`]. Checks that need the server
//! (does the topic exist, is the name allowed) are left to the server, which words them.

use std::path::PathBuf;

use clap::builder::NonEmptyStringValueParser;
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::bench::workload::Workload;

/// Most records `sluice produce --batch` allows in one request: the server's limit.
const PRODUCE_BATCH_MAX: i64 = 10_000;
const _: () = assert!(PRODUCE_BATCH_MAX as usize == sluice_engine::PRODUCE_RECORDS_MAX);
/// Most concurrent producers or consumers `sluice bench produce|consume --concurrency` runs.
const BENCH_CONCURRENCY_MAX: i64 = 256;

/// Sluice: the event backbone in one binary.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
pub struct Cli {
    /// The server the client subcommands (`topic`, `produce`, `consume`, `group`, `queue`,
    /// `worker`, `dlq`, `stream`) talk to. `bench produce|consume|queue|streams` measure it only
    /// when it is given on the command line (they start a server of their own otherwise, and
    /// ignore SLUICE_SERVER).
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "SLUICE_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,

    /// Whether `--server` was given on the command line (not by SLUICE_SERVER or the default);
    /// set by [`Cli::parse_args`].
    #[arg(skip)]
    pub server_on_command_line: bool,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the process's arguments as [`Parser::parse`] does (exiting on a usage error),
    /// and records where `--server` came from.
    pub fn parse_args() -> Cli {
        let matches = Cli::command().get_matches();
        let mut cli = Cli::from_arg_matches(&matches)
            .unwrap_or_else(|error| error.format(&mut Cli::command()).exit());
        cli.server_on_command_line =
            matches.value_source("server") == Some(ValueSource::CommandLine);
        cli
    }
}

/// The top-level subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the Sluice server on the embedded engine: the HTTP API on one data directory.
    Serve(ServeArgs),
    /// Measure Sluice, and the disk under it in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Create, list, describe and delete topics on a running server.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Send the lines of stdin to a topic, one record per line.
    Produce(ProduceArgs),
    /// Print a topic's records, one JSON object per line, alone or as a member of a group.
    Consume(ConsumeArgs),
    /// List, describe and reset consumer groups on a running server.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Create, list, describe and delete queue groups (work queues with leases and retries).
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Run a command once per message of a queue group: exit 0 acks, anything else nacks.
    Worker(WorkerArgs),
    /// List, replay and purge a topic's dead letters.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Append to, read and subscribe to event streams (event sourcing).
    #[command(subcommand)]
    Stream(StreamCommand),
}

/// What `sluice stream` can do.
#[derive(Debug, Subcommand)]
pub enum StreamCommand {
    /// Append one event to a stream if its version is as expected (a conflict exits with 3).
    Append(StreamAppendArgs),
    /// Print a stream's events, one JSON object per line.
    Read(StreamReadArgs),
    /// Print the events of a topic (or one stream) as they are appended: stored ones first.
    Subscribe(StreamSubscribeArgs),
}

/// Options of `sluice stream append`.
#[derive(Debug, Args)]
pub struct StreamAppendArgs {
    /// The event topic.
    pub topic: String,
    /// The stream (the records' key), e.g. `account-42`.
    pub stream: String,
    /// The event type (CloudEvents `type`), e.g. `Deposited`.
    #[arg(long = "type", value_name = "TYPE")]
    pub event_type: String,
    /// `any` (default), `no_stream`, `stream_exists` or the stream's current version.
    #[arg(long, value_name = "VERSION", default_value = "any")]
    pub expected_version: String,
    /// The event's data as JSON; without it, stdin is read (JSON, or any bytes).
    #[arg(long, value_name = "JSON")]
    pub data: Option<String>,
    /// The event's id; a retry with the same id and expected version is not appended twice.
    #[arg(long)]
    pub id: Option<String>,
    /// A header `NAME=VALUE` (repeatable), e.g. a `traceparent`.
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
}

/// Options of `sluice stream read`.
#[derive(Debug, Args)]
pub struct StreamReadArgs {
    /// The event topic.
    pub topic: String,
    /// The stream.
    pub stream: String,
    /// First version to print (default: the first, or the newest with --backward).
    #[arg(long, value_name = "VERSION")]
    pub from: Option<u64>,
    /// Newest first.
    #[arg(long)]
    pub backward: bool,
    /// Most events to print (default: all).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// The stream as it was at this time (RFC 3339, e.g. 2026-11-23T18:30:00Z).
    #[arg(long, value_name = "TIME")]
    pub as_of: Option<String>,
}

/// Options of `sluice stream subscribe`.
#[derive(Debug, Args)]
pub struct StreamSubscribeArgs {
    /// The event topic.
    pub topic: String,
    /// Follow one stream only.
    #[arg(long)]
    pub stream: Option<String>,
    /// `start` (default), `end`, a version (with --stream), or a position `P:O,...` printed
    /// by an earlier subscribe (as each line's `position`).
    #[arg(long, value_name = "POSITION")]
    pub from: Option<String>,
    /// Stop after this many events.
    #[arg(long, value_name = "N")]
    pub max: Option<u64>,
}

/// What `sluice queue` can do.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Create a queue group; unset settings take the server's defaults.
    Create(QueueCreateArgs),
    /// List every queue group.
    List(OutputArgs),
    /// Show a queue group's settings, counts and partitions.
    Describe(QueueDescribeArgs),
    /// Delete a queue group (its dead-letter topics stay).
    Delete(QueueNameArgs),
}

/// Options of `sluice queue create`.
#[derive(Debug, Args)]
pub struct QueueCreateArgs {
    /// The group's name.
    pub group: String,

    /// A topic the group consumes; repeat for more.
    #[arg(long = "topic", value_name = "TOPIC", required = true)]
    pub topics: Vec<String>,

    /// How long a delivery is leased before it is redelivered.
    #[arg(long, value_name = "MS")]
    pub ack_wait_ms: Option<u64>,

    /// Deliveries after which a failing message goes to the dead-letter topic.
    #[arg(long, value_name = "N")]
    pub deliveries_max: Option<u32>,

    /// Redelivery backoff: first delay, growth factor, longest delay, e.g. `1000:2:60000`.
    #[arg(long, value_name = "INITIAL_MS:MULTIPLIER:MAX_MS", value_parser = parse_backoff)]
    pub backoff: Option<(u64, f64, u64)>,

    /// Fraction of each backoff delay taken off at random (0 to 1).
    #[arg(long, value_name = "FRACTION")]
    pub backoff_jitter: Option<f64>,

    /// `key`: messages of one key are delivered one at a time, in order; `none`: any order.
    #[arg(long, value_name = "ORDERING", value_parser = ["key", "none"])]
    pub ordering: Option<String>,

    /// Most messages of the group leased or waiting for a retry at once.
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<u32>,

    /// Most messages one worker may hold at once.
    #[arg(long, value_name = "N")]
    pub member_max_in_flight: Option<u32>,

    /// Where dead letters go (default: `<topic>.dlq` for each topic).
    #[arg(long, value_name = "TOPIC")]
    pub dead_letter_topic: Option<String>,

    /// Where a new group starts: `earliest` (every stored message) or `latest`.
    #[arg(long, value_name = "FROM", value_parser = ["earliest", "latest"])]
    pub start: Option<String>,

    #[command(flatten)]
    pub output: OutputArgs,
}

/// Options of `sluice queue describe`.
#[derive(Debug, Args)]
pub struct QueueDescribeArgs {
    /// The group's name.
    pub group: String,

    #[command(flatten)]
    pub output: OutputArgs,
}

/// Options of `sluice queue delete`.
#[derive(Debug, Args)]
pub struct QueueNameArgs {
    /// The group's name.
    pub group: String,
}

/// Options of `sluice worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The queue group to take messages from.
    pub group: String,

    /// The command to run per message, through `sh -c`, with the record's value on stdin and
    /// `SLUICE_*` variables in its environment.
    #[arg(long, value_name = "CMD")]
    pub exec: String,

    /// Messages handled at once (one command each).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: u32,

    /// This worker's name in the group (default: `worker-<pid>`).
    #[arg(long, value_name = "NAME")]
    pub member: Option<String>,

    /// Stop after handling this many messages (default: run until interrupted).
    #[arg(long, value_name = "N")]
    pub max_messages: Option<u64>,
}

/// What `sluice dlq` can do.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List a topic's dead letters with their history.
    List(DlqListArgs),
    /// Publish dead letters to their original topic again and release the keys they parked.
    Replay(DlqReplayArgs),
    /// Remove every dead letter of a topic.
    Purge(DlqTopicArgs),
}

/// Options of `sluice dlq list`.
#[derive(Debug, Args)]
pub struct DlqListArgs {
    /// The topic (or its dead-letter topic).
    pub topic: String,

    /// Include dead letters replayed already.
    #[arg(long)]
    pub all: bool,

    #[command(flatten)]
    pub output: OutputArgs,
}

/// Options of `sluice dlq replay`.
#[derive(Debug, Args)]
pub struct DlqReplayArgs {
    /// The topic (or its dead-letter topic).
    pub topic: String,

    /// Replay the dead letter at this offset of the dead-letter topic; repeat for more.
    #[arg(long = "offset", value_name = "N", conflicts_with = "key")]
    pub offsets: Vec<u64>,

    /// Replay every dead letter with this key.
    #[arg(long, value_name = "K")]
    pub key: Option<String>,
}

/// Options of `sluice dlq purge`.
#[derive(Debug, Args)]
pub struct DlqTopicArgs {
    /// The topic (or its dead-letter topic).
    pub topic: String,
}

/// Parses `INITIAL_MS:MULTIPLIER:MAX_MS`.
fn parse_backoff(text: &str) -> Result<(u64, f64, u64), String> {
    let parts: Vec<&str> = text.split(':').collect();
    let malformed =
        || format!("backoff '{text}' is not INITIAL_MS:MULTIPLIER:MAX_MS, e.g. 1000:2:60000");
    let [initial, multiplier, max] = parts.as_slice() else { return Err(malformed()) };
    Ok((
        initial.parse().map_err(|_| malformed())?,
        multiplier.parse().map_err(|_| malformed())?,
        max.parse().map_err(|_| malformed())?,
    ))
}

/// Options of `sluice serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory holding every topic's data; created if missing.
    #[arg(long, value_name = "DIR", default_value = "./sluice-data", env = "SLUICE_DATA")]
    pub data: PathBuf,

    /// Address the HTTP API listens on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080", env = "SLUICE_HTTP")]
    pub http: std::net::SocketAddr,

    /// Address the Kafka wire protocol listens on (Kafka clients' bootstrap server), or `off`.
    #[arg(long, value_name = "ADDR|off", default_value = "127.0.0.1:9092", env = "SLUICE_KAFKA")]
    pub kafka: KafkaListen,

    /// The HOST:PORT Kafka clients are told to connect to (Kafka's `advertised.listeners`).
    /// Default: the address the Kafka listener is bound to (127.0.0.1 for 0.0.0.0).
    #[arg(long, value_name = "HOST:PORT", env = "SLUICE_KAFKA_ADVERTISED")]
    pub kafka_advertised: Option<String>,

    /// Close a connection that has not sent complete request headers within this many ms.
    #[arg(long, value_name = "MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub header_timeout_ms: u64,

    /// Answer 408 to a request not done within this many ms (uploads and long-polls included;
    /// fetches wait at most 30,000). Also the grace period for in-flight requests at shutdown.
    #[arg(long, value_name = "MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub request_timeout_ms: u64,
}

/// Where the Kafka door listens, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaListen {
    /// No Kafka listener.
    Off,
    /// Listen on this address.
    On(std::net::SocketAddr),
}

impl std::str::FromStr for KafkaListen {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "off" {
            return Ok(KafkaListen::Off);
        }
        text.parse().map(KafkaListen::On).map_err(|_| {
            format!("'{text}' is not an address; give IP:PORT (e.g. 127.0.0.1:9092) or 'off'")
        })
    }
}

/// What `sluice bench` can measure.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Append to and read from one partition log, next to raw disk writes and fdatasyncs.
    Log(LogBenchArgs),
    /// Produce to a topic, with the engine in this process and through a server over HTTP:
    /// records/s, MB/s and latency per request.
    Produce(TopicBenchArgs),
    /// Consume a filled topic as a consumer group and by plain partition reads, with the engine
    /// in this process and through a server over HTTP.
    Consume(TopicBenchArgs),
    /// Queue-group deliver+ack throughput with 1, 4 and 16 workers, and produce→ack latency,
    /// with the engine in this process and through a server over HTTP.
    Queue(QueueBenchArgs),
    /// Event-store appends with exact expected versions (one event per append with 1 and 64
    /// writers over 10,000 streams, and 100 events per append), and the latency of loading a
    /// 1,000-event stream with and without a snapshot; the engine in this process and a server
    /// over HTTP, next to the raw disk.
    Streams(StreamsBenchArgs),
}

/// Options of `sluice bench streams`.
#[derive(Debug, Args)]
pub struct StreamsBenchArgs {
    /// Directory to work in: the engine's data, the started server's and the disk baseline's.
    /// Default: `./sluice-bench-<pid>`, created fresh and removed at the end.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// What to measure: the engine in this process, a server over HTTP (started by the bench
    /// unless `--server` is given), or both.
    #[arg(long, value_name = "TARGET", value_enum, default_value_t = BenchTarget::Both)]
    pub target: BenchTarget,

    /// Concurrent writers of the one-event appends; a comma-separated list runs each.
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "1,64",
          value_parser = clap::value_parser!(u32).range(1..=BENCH_CONCURRENCY_MAX))]
    pub concurrency: Vec<u32>,

    /// Streams each append workload writes to, shared out between its writers.
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub streams: u64,

    /// Timed one-event appends per concurrency (all writers together).
    #[arg(long, value_name = "N", default_value_t = 20_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub appends: u64,

    /// Timed appends of 100 events each in the batch workload (all writers together).
    #[arg(long, value_name = "N", default_value_t = 2_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_appends: u64,

    /// Concurrent writers of the batch workload. Default 1, as in the PostgreSQL comparison of
    /// `bench/peers` (100 events per transaction on one connection).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=BENCH_CONCURRENCY_MAX))]
    pub batch_writers: u32,

    /// Events of the stream the load workload loads; its snapshot is at this minus 10.
    #[arg(long, value_name = "N", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(11..=1_000_000))]
    pub load_events: u64,

    /// Timed loads of each kind (all events; snapshot and the events after it).
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub loads: u64,

    /// Most events one read asks for while loading (the loader follows `next` until the end);
    /// the default is the most a read returns, which is also the server's default.
    #[arg(long, value_name = "N", default_value_t = 4096,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub read_count: u64,

    /// Bytes of the raw-disk sequential write (and of the untimed warm-up write before it) at
    /// the start of each round; at least 4K. The 4 KiB write+fdatasync row makes 2000 pairs, or
    /// one per 4 KiB of this if fewer.
    #[arg(long, value_name = "N", default_value = "256M", value_parser = parse_bytes)]
    pub disk_bytes: u64,

    /// Bytes of each event's payload: a JSON object `{"payload":"..."}` of exactly this size.
    #[arg(long, value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(16..=8192))]
    pub event_bytes: u32,

    /// Rounds to run; the round with the median throughput is reported per workload.
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=15))]
    pub repeat: u32,

    /// Print one JSON object per workload and line instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Options of `sluice bench queue`.
#[derive(Debug, Args)]
pub struct QueueBenchArgs {
    /// Directory to work in. Default: `./sluice-bench-<pid>`, created fresh and removed at the end.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// What to measure: the engine in this process, a server over HTTP, or both.
    #[arg(long, value_name = "TARGET", value_enum, default_value_t = BenchTarget::Both)]
    pub target: BenchTarget,

    /// Concurrent workers; a comma-separated list runs each.
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "1,4,16",
          value_parser = clap::value_parser!(u32).range(1..=BENCH_CONCURRENCY_MAX))]
    pub concurrency: Vec<u32>,

    /// Messages each throughput workload delivers and acks.
    #[arg(long, value_name = "N", default_value_t = 20_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub messages: u64,

    /// Messages the latency workload sends, at 500 per second.
    #[arg(long, value_name = "N", default_value_t = 2_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub latency_messages: u64,

    /// Bytes of each message's value as stored (a JSON string, quotes included).
    #[arg(long, value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(2..=1_000_000))]
    pub record_bytes: u32,

    /// Messages a worker leases (and then acks) per round trip.
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub batch: u32,

    /// Rounds to run; the round with the median throughput is reported per workload.
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=15))]
    pub repeat: u32,

    /// Print one JSON object per workload and line instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Options of `sluice bench log`.
#[derive(Debug, Args)]
pub struct LogBenchArgs {
    /// Directory to work in; each workload uses a new subdirectory of it, removed afterwards.
    /// Default: `./sluice-bench-<pid>`, created fresh and removed at the end.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Records per appended batch (the single-record workloads always use 1).
    #[arg(long, value_name = "N", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_records: u32,

    /// Bytes of each record's value.
    #[arg(long, value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub record_bytes: u32,

    /// Payload bytes each workload writes: an integer, optionally with a binary suffix K, M or G.
    #[arg(long, value_name = "N", default_value = "256M", value_parser = parse_bytes)]
    pub total_bytes: u64,

    /// Rounds to run; every workload runs once per round (rounds interleave, so a slow spell of
    /// a shared machine hits all workloads alike) and the round with the median throughput is
    /// reported.
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=15))]
    pub repeat: u32,

    /// Print one JSON object per workload and line instead of the table.
    #[arg(long)]
    pub json: bool,

    /// Comma-separated workloads to run (default: all); an unknown name lists the valid ones.
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = parse_workload)]
    pub workloads: Vec<Workload>,
}

/// Options of `sluice bench produce` and `sluice bench consume`.
#[derive(Debug, Args)]
pub struct TopicBenchArgs {
    /// Directory to work in: the engine's data and the started server's. Default:
    /// `./sluice-bench-<pid>`, created fresh and removed at the end.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// What to measure: the engine in this process, a server over HTTP (started by the bench
    /// unless `--server` is given), or both.
    #[arg(long, value_name = "TARGET", value_enum, default_value_t = BenchTarget::Both)]
    pub target: BenchTarget,

    /// Bytes of each record's value as stored: a JSON string, its quotes included.
    #[arg(long, value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(2..))]
    pub record_bytes: u32,

    /// Records per produce request (server) or call (embedded).
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=PRODUCE_BATCH_MAX))]
    pub batch_records: u32,

    /// Concurrent producers, or consumers in the group; a comma-separated list runs each.
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "1,8",
          value_parser = clap::value_parser!(u32).range(1..=BENCH_CONCURRENCY_MAX))]
    pub concurrency: Vec<u32>,

    /// Value bytes each produce workload writes, and that fill the topic the consume workloads
    /// read: an integer, optionally with a binary suffix K, M or G.
    #[arg(long, value_name = "N", default_value = "64M", value_parser = parse_bytes)]
    pub total_bytes: u64,

    /// Rounds to run; the round with the median throughput is reported per workload.
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=15))]
    pub repeat: u32,

    /// Print one JSON object per workload and line instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// What `sluice bench produce|consume` measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchTarget {
    /// The engine, called in the benchmark's process.
    Embedded,
    /// A server, over HTTP.
    Server,
    Both,
}

/// What `sluice topic` can do.
#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic; unset settings take the server's defaults.
    Create(TopicCreateArgs),
    /// List every topic.
    List(OutputArgs),
    /// Show a topic's settings and partitions.
    Describe(TopicDescribeArgs),
    /// Delete a topic and all its records.
    Delete(TopicNameArgs),
}

/// Options of `sluice topic create`.
#[derive(Debug, Args)]
pub struct TopicCreateArgs {
    /// The topic's name.
    pub name: String,

    /// Number of partitions (server default: 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub partitions: Option<u32>,

    /// When a write is acknowledged: `fsync` (durable), `interval:MS` or `none`.
    #[arg(long, value_name = "MODE", value_parser = parse_durability)]
    pub durability: Option<String>,

    /// Delete records older than this, e.g. `500ms`, `30s`, `15m`, `12h`, `7d`; `forever`
    /// keeps them (what an event-store topic wants). Server default: 7 days.
    #[arg(long = "retention-age", value_name = "DUR", value_parser = parse_retention_age)]
    pub retention_age_ms: Option<RetentionAge>,

    /// Delete the oldest records past this size per partition: a count with optional K, M or G.
    #[arg(long, value_name = "N", value_parser = parse_bytes)]
    pub retention_bytes: Option<u64>,

    /// Keep only the newest record per key.
    #[arg(long)]
    pub compact: bool,

    /// Event topics: maintenance deletes a soft-deleted stream's events for good (every record
    /// of a key before its newest tombstone); other streams keep their history.
    #[arg(long, conflicts_with = "compact")]
    pub hard_delete_streams: bool,
}

/// Options of `sluice topic describe`.
#[derive(Debug, Args)]
pub struct TopicDescribeArgs {
    /// The topic's name.
    pub name: String,

    #[command(flatten)]
    pub output: OutputArgs,
}

/// Options of `sluice topic delete`.
#[derive(Debug, Args)]
pub struct TopicNameArgs {
    /// The topic's name.
    pub name: String,
}

/// The output choice of the listing and describing subcommands.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// `table`: aligned columns for people; `json`: the server's JSON as it came.
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// How listings and descriptions are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// Options of `sluice produce`.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// The topic to send to.
    pub topic: String,

    /// The key of every record.
    #[arg(long, value_name = "K", conflicts_with = "key_separator")]
    pub key: Option<String>,

    /// Read each line as `KEY<SEP>VALUE`, split at the first SEP; a line without SEP is an error.
    #[arg(long, value_name = "SEP", value_parser = NonEmptyStringValueParser::new())]
    pub key_separator: Option<String>,

    /// Send every record to this partition instead of placing it by key.
    #[arg(long, value_name = "P")]
    pub partition: Option<u32>,

    /// A header for every record, as `NAME=VALUE`; repeat for more.
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,

    /// Give each record the id PREFIX followed by its line number (from 1), so that sending the
    /// same input again within the topic's dedup window appends nothing twice.
    #[arg(long, value_name = "PREFIX")]
    pub id_prefix: Option<String>,

    /// Print `{"partition":P,"offset":O}` on stdout for every acknowledged record, in input order.
    #[arg(long)]
    pub print_offsets: bool,

    /// Most records per request (requests also stay under the server's body limit).
    #[arg(long, value_name = "N", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=PRODUCE_BATCH_MAX))]
    pub batch: u32,
}

/// Options of `sluice consume`.
#[derive(Debug, Args)]
#[command(after_long_help = CONSUME_GROUP_HELP)]
pub struct ConsumeArgs {
    /// The topic to read.
    pub topic: String,

    /// Read only this partition (default: all of them).
    #[arg(long, value_name = "P", conflicts_with = "group")]
    pub partition: Option<u32>,

    /// Consume as a member of this consumer group: the server shares the topic's partitions
    /// among the group's members and the command commits what it printed (at-least-once).
    #[arg(long, value_name = "G")]
    pub group: Option<String>,

    /// Where to start in each partition: `earliest`, `latest` (the end when the command starts)
    /// or an offset. With `--group`, `earliest` or `latest`, and only in partitions the group
    /// has not committed.
    #[arg(long, value_name = "POSITION", default_value = "earliest",
          value_parser = parse_start_position)]
    pub from: StartPosition,

    /// Stop after this many records.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max: Option<u64>,

    /// Keep waiting for new records instead of stopping at the end seen at the start (with
    /// `--group`: instead of stopping once the group has caught up).
    #[arg(long)]
    pub follow: bool,

    /// With `--follow`: stop once no record has arrived for this many milliseconds.
    #[arg(long, value_name = "N", requires = "follow")]
    pub idle_timeout_ms: Option<u64>,
}

/// The delivery guarantee of `sluice consume --group`, shown by `--help`.
const CONSUME_GROUP_HELP: &str = "\
With --group, delivery is at-least-once: the command commits after printing each batch, so a
record printed just before a rebalance, a crash or an expired session is printed again (by this
or another member). Without --follow it stops once a fetch waiting 500 ms finds nothing (the
group has caught up). With --max it commits exactly the records it printed. On exit, Ctrl-C or
SIGTERM included, it commits and leaves the group, so the partitions move on at once.";

/// What `sluice group` can do.
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List every group's name.
    List(OutputArgs),
    /// Show a group's generation, topics, members and their partitions, and per partition the
    /// committed offset, high watermark and lag.
    Describe(GroupDescribeArgs),
    /// Move a group's committed offsets; refused while the group has members.
    Reset(GroupResetArgs),
}

/// Options of `sluice group describe`.
#[derive(Debug, Args)]
pub struct GroupDescribeArgs {
    /// The group's name.
    pub name: String,

    #[command(flatten)]
    pub output: OutputArgs,
}

/// Options of `sluice group reset`.
#[derive(Debug, Args)]
pub struct GroupResetArgs {
    /// The group's name.
    pub name: String,

    /// Where to: `earliest`, `latest`, an offset (clamped to each partition's range) or
    /// `@TIME`, an RFC 3339 time (the first record at or after it, else the end).
    #[arg(long, value_name = "POSITION")]
    pub to: String,

    /// Reset only this topic; repeat for more (default: every topic the group has committed).
    #[arg(long = "topic", value_name = "T")]
    pub topics: Vec<String>,

    #[command(flatten)]
    pub output: OutputArgs,
}

/// Where `sluice consume` starts in each partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartPosition {
    /// The partition's log start offset.
    Earliest,
    /// The partition's high watermark when the command starts.
    Latest,
    /// This offset, in every partition read.
    Offset(u64),
    /// The first record at or after this RFC 3339 time (checked by the server), in every
    /// partition read; the end where no record is that recent.
    Time(String),
}

fn parse_start_position(text: &str) -> Result<StartPosition, String> {
    match text {
        "earliest" => Ok(StartPosition::Earliest),
        "latest" => Ok(StartPosition::Latest),
        _ if text.starts_with('@') && text.len() > 1 => Ok(StartPosition::Time(text[1..].to_owned())),
        _ => text.parse().map(StartPosition::Offset).map_err(|_| {
            format!("`{text}` is not a start position (expected earliest, latest, an offset or @RFC3339)")
        }),
    }
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("`{text}` is not a header (expected NAME=VALUE)")),
    }
}

/// Accepts what the server does, `fsync`, `interval:MS` or `none`, so typos are usage errors.
fn parse_durability(text: &str) -> Result<String, String> {
    let valid = match text.strip_prefix("interval:") {
        Some(milliseconds) => milliseconds.parse::<u64>().is_ok(),
        None => matches!(text, "fsync" | "none"),
    };
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!("`{text}` is not a durability (expected fsync, interval:MS or none)"))
    }
}

/// A `--retention-age`: milliseconds, or `None` for forever. (A newtype: clap reads a bare
/// `Option<Option<_>>` as a flag with an optional value.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionAge(pub Option<u64>);

/// `forever` or a duration as [`parse_duration_ms`] reads it.
fn parse_retention_age(text: &str) -> Result<RetentionAge, String> {
    match text {
        "forever" => Ok(RetentionAge(None)),
        other => parse_duration_ms(other).map(|ms| RetentionAge(Some(ms))),
    }
}

/// Parses a duration into milliseconds: digits followed by one unit, `ms`, `s`, `m`, `h` or `d`.
/// Refuses a bare number (which unit would it be?) and values that overflow `u64`.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let digits_end = text.find(|character: char| !character.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60 * 1000,
        "h" => 60 * 60 * 1000,
        "d" => 24 * 60 * 60 * 1000,
        _ => 0,
    };
    if digits.is_empty() || unit_ms == 0 {
        return Err(format!("`{text}` is not a duration (expected e.g. 500ms, 30s, 15m, 12h, 7d)"));
    }
    let count: u64 = digits.parse().map_err(|_| format!("`{text}` does not fit in 64 bits"))?;
    count.checked_mul(unit_ms).ok_or_else(|| format!("`{text}` does not fit in 64 bits"))
}

fn parse_workload(name: &str) -> Result<Workload, String> {
    Workload::from_name(name)
}

/// Parses a byte count: digits, optionally followed by `K`, `M` or `G` (powers of 1024, either
/// case). Refuses anything else, and values that overflow `u64`.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let (digits, multiplier) = match text.char_indices().last() {
        Some((at, 'K' | 'k')) => (&text[..at], 1 << 10),
        Some((at, 'M' | 'm')) => (&text[..at], 1 << 20),
        Some((at, 'G' | 'g')) => (&text[..at], 1 << 30),
        _ => (text, 1),
    };
    let invalid = || format!("`{text}` is not a byte count (expected e.g. 4096, 64K, 256M, 1G)");
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(invalid());
    }
    let count: u64 = digits.parse().map_err(|_| invalid())?;
    count.checked_mul(multiplier).ok_or_else(|| format!("`{text}` does not fit in 64 bits"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::{
        parse_bytes, parse_duration_ms, parse_header, parse_start_position, Cli, StartPosition,
    };

    #[test]
    fn command_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parse_bytes_reads_plain_counts_and_binary_suffixes() {
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64K"), Ok(64 * 1024));
        assert_eq!(parse_bytes("2m"), Ok(2 * 1024 * 1024));
        assert_eq!(parse_bytes("256M"), Ok(256 * 1024 * 1024));
        assert_eq!(parse_bytes("1G"), Ok(1024 * 1024 * 1024));
    }

    #[test]
    fn parse_bytes_refuses_malformed_and_overflowing_input() {
        for text in ["", "K", "-1", "1.5M", "1 M", "12T", "M1", "+5", "1KB"] {
            assert!(parse_bytes(text).is_err(), "{text:?} was accepted");
        }
        assert!(parse_bytes("18446744073709551615").is_ok());
        assert!(parse_bytes("18446744073709551616").is_err());
        assert!(parse_bytes("17179869184G").is_err());
    }

    #[test]
    fn parse_duration_ms_reads_every_unit() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("30s"), Ok(30_000));
        assert_eq!(parse_duration_ms("15m"), Ok(900_000));
        assert_eq!(parse_duration_ms("12h"), Ok(43_200_000));
        assert_eq!(parse_duration_ms("7d"), Ok(604_800_000));
        assert_eq!(parse_duration_ms("0s"), Ok(0));
    }

    #[test]
    fn parse_duration_ms_refuses_malformed_and_overflowing_input() {
        for text in ["", "5", "s", "1.5h", "5 s", "-5s", "5S", "5sec", "5w", "h5", "+5s", "5ms5"] {
            assert!(parse_duration_ms(text).is_err(), "{text:?} was accepted");
        }
        assert!(parse_duration_ms("18446744073709551615ms").is_ok());
        assert!(parse_duration_ms("18446744073709551616ms").is_err());
        assert!(parse_duration_ms("213503982335d").is_err());
    }

    #[test]
    fn start_positions_and_headers_parse() {
        assert_eq!(parse_start_position("earliest"), Ok(StartPosition::Earliest));
        assert_eq!(parse_start_position("latest"), Ok(StartPosition::Latest));
        assert_eq!(parse_start_position("42"), Ok(StartPosition::Offset(42)));
        assert_eq!(
            parse_start_position("@2026-01-01T00:00:00Z"),
            Ok(StartPosition::Time("2026-01-01T00:00:00Z".to_owned()))
        );
        assert!(parse_start_position("@").is_err());
        assert!(parse_start_position("-1").is_err());
        assert_eq!(parse_header("a=b=c"), Ok(("a".to_owned(), "b=c".to_owned())));
        assert_eq!(parse_header("a="), Ok(("a".to_owned(), String::new())));
        assert!(parse_header("=b").is_err());
        assert!(parse_header("ab").is_err());
    }
}
