//! `sluice consume`: prints a topic's records on stdout, one JSON object per line, with the
//! fields `topic, partition, offset, timestamp, key, value, headers` (`key_base64` and
//! `value_base64` instead of `key` and `value` when the server sends those; `key` is null for a
//! record without one).
//!
//! Start positions are resolved once, from the topic's description, when the command starts.
//! Without `--follow`, each partition is read in turn up to the high watermark seen then, and the
//! command stops. With `--follow`, partitions are polled round-robin, long-polling only once a
//! full round found nothing, until `--max` records or `--idle-timeout-ms` without a record.
//! With `--group` the command hands over to [`crate::consume_group`], which prints the same
//! lines. Time-based start positions are refused: the fetch endpoint takes offsets only, and
//! only a group reset maps a time to an offset.

use std::collections::BTreeMap;
use std::io::{BufWriter, StdoutLock, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cli::{ConsumeArgs, StartPosition};
use crate::client::{path_segment, Client};
use crate::consume_group;
use crate::topic_cmd::{topic_path, Topic};

/// Longest a `--follow` fetch waits at the end of a partition for a record to arrive.
const FOLLOW_WAIT_MS: u64 = 1000;

/// Most records asked for in one fetch: the server's limit.
const FETCH_RECORDS_MAX: u64 = sluice_http::FETCH_RECORDS_MAX as u64;

#[derive(Debug, Deserialize)]
struct FetchResponse {
    records: Vec<FetchedRecord>,
    next_offset: u64,
}

/// A record as a fetch returns it.
#[derive(Debug, Deserialize)]
pub struct FetchedRecord {
    pub offset: u64,
    pub timestamp: i64,
    pub key: Option<String>,
    pub key_base64: Option<String>,
    /// Absent when `value_base64` is given; null for a null value.
    #[serde(default)]
    pub value: Value,
    pub value_base64: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, Value>,
}

/// One line of output, fields in the documented order.
#[derive(Debug, Serialize)]
struct RecordLine<'a> {
    topic: &'a str,
    partition: u32,
    offset: u64,
    timestamp: i64,
    #[serde(flatten)]
    key: KeyField<'a>,
    #[serde(flatten)]
    value: ValueField<'a>,
    headers: &'a BTreeMap<String, Value>,
}

/// Serialized as the one field the server used for the key.
#[derive(Debug, Serialize)]
enum KeyField<'a> {
    #[serde(rename = "key")]
    Text(Option<&'a str>),
    #[serde(rename = "key_base64")]
    Base64(&'a str),
}

/// Serialized as the one field the server used for the value.
#[derive(Debug, Serialize)]
enum ValueField<'a> {
    #[serde(rename = "value")]
    Json(&'a Value),
    #[serde(rename = "value_base64")]
    Base64(&'a str),
}

/// The read position in one partition.
#[derive(Debug)]
struct Cursor {
    partition: u32,
    next_offset: u64,
    /// The high watermark when the command started: where reading stops without `--follow`.
    end_offset: u64,
}

/// Prints `args.topic`'s records from `server`.
///
/// # Errors
/// The topic or partition does not exist; the server refused a fetch (e.g. an offset out of
/// range) or could not be reached; stdout failed.
pub fn run(server: &str, args: &ConsumeArgs) -> anyhow::Result<()> {
    if let Some(group) = &args.group {
        return consume_group::run(server, args, group);
    }
    let client = Client::new(server);
    let topic: Topic = client.get_json(&topic_path(&args.topic))?;
    let mut cursors = cursors(&client, &topic, args)?;
    let positions: Vec<(u32, u64)> = cursors.iter().map(|c| (c.partition, c.next_offset)).collect();
    tracing::debug!(topic = %args.topic, ?positions, "consuming from (partition, offset)");
    let mut output = Output::new(args.max);
    let fetcher = Fetcher { client, topic: &args.topic };
    if args.follow {
        follow(&fetcher, &mut cursors, &mut output, args.idle_timeout_ms.map(Duration::from_millis))
    } else {
        read_to_end(&fetcher, &mut cursors, &mut output)
    }
}

/// A cursor per partition read, at the start position.
fn cursors(client: &Client, topic: &Topic, args: &ConsumeArgs) -> anyhow::Result<Vec<Cursor>> {
    let mut cursors = Vec::new();
    let wanted = topic
        .partition_offsets
        .iter()
        .filter(|offsets| args.partition.is_none_or(|wanted| offsets.partition == wanted));
    for offsets in wanted {
        let next_offset = match &args.from {
            StartPosition::Earliest => offsets.log_start_offset,
            StartPosition::Latest => offsets.high_watermark,
            StartPosition::Offset(offset) => *offset,
            StartPosition::Time(at) => offset_at(client, &topic.name, offsets.partition, at)?,
        };
        cursors.push(Cursor {
            partition: offsets.partition,
            next_offset,
            end_offset: offsets.high_watermark,
        });
    }
    if let (Some(partition), true) = (args.partition, cursors.is_empty()) {
        bail!("topic {} has no partition {partition} (it has {})", topic.name, topic.partitions);
    }
    Ok(cursors)
}

/// The first offset of a partition at or after an RFC 3339 time, from the server.
fn offset_at(client: &Client, topic: &str, partition: u32, at: &str) -> anyhow::Result<u64> {
    #[derive(Deserialize)]
    struct Found {
        offset: u64,
    }
    let path =
        format!("{}/partitions/{partition}/offset?at={}", topic_path(topic), path_segment(at));
    let found: Found = client.get_json(&path)?;
    Ok(found.offset)
}

/// Reads each partition up to its end offset.
fn read_to_end(
    fetcher: &Fetcher,
    cursors: &mut [Cursor],
    output: &mut Output,
) -> anyhow::Result<()> {
    for cursor in cursors {
        while cursor.next_offset < cursor.end_offset && !output.is_done() {
            let max_records = output.wanted(cursor.end_offset - cursor.next_offset);
            let fetched = fetcher.fetch(cursor, max_records, 0)?;
            let records = fetched.records.iter().take_while(|r| r.offset < cursor.end_offset);
            output.write(fetcher.topic, cursor.partition, records)?;
            if fetched.next_offset <= cursor.next_offset {
                break; // nothing is left below the end offset (compacted or deleted meanwhile)
            }
            cursor.next_offset = fetched.next_offset;
        }
    }
    Ok(())
}

/// Polls the partitions round-robin until `--max` records, or `idle_timeout` without one.
fn follow(
    fetcher: &Fetcher,
    cursors: &mut [Cursor],
    output: &mut Output,
    idle_timeout: Option<Duration>,
) -> anyhow::Result<()> {
    let mut last_record_at = Instant::now();
    let mut busy = true; // the first round looks at every partition before waiting on one
    loop {
        let mut delivered = false;
        for cursor in cursors.iter_mut() {
            let Some(wait_ms) = wait_ms(busy || delivered, idle_timeout, last_record_at) else {
                return Ok(());
            };
            let fetched = fetcher.fetch(cursor, output.wanted(u64::MAX), wait_ms)?;
            if !fetched.records.is_empty() {
                delivered = true;
                last_record_at = Instant::now();
            }
            output.write(fetcher.topic, cursor.partition, &fetched.records)?;
            cursor.next_offset = fetched.next_offset;
            if output.is_done() {
                return Ok(());
            }
        }
        busy = delivered;
    }
}

/// How long the next fetch may wait for a record: not at all while records are flowing
/// (`busy`), else up to [`FOLLOW_WAIT_MS`] but not past the idle timeout. `None` once the idle
/// timeout has passed.
pub fn wait_ms(busy: bool, idle_timeout: Option<Duration>, last_record_at: Instant) -> Option<u64> {
    let wait_ms = if busy { 0 } else { FOLLOW_WAIT_MS };
    let Some(idle_timeout) = idle_timeout else {
        return Some(wait_ms);
    };
    let left = idle_timeout.saturating_sub(last_record_at.elapsed());
    let left_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
    (left_ms > 0).then(|| wait_ms.min(left_ms))
}

/// Fetches from one topic's partitions.
struct Fetcher<'a> {
    client: Client,
    topic: &'a str,
}

impl Fetcher<'_> {
    fn fetch(
        &self,
        cursor: &Cursor,
        max_records: u64,
        wait_ms: u64,
    ) -> anyhow::Result<FetchResponse> {
        let path = format!(
            "/v1/topics/{}/partitions/{}/records?offset={}&max_records={max_records}&wait_ms={wait_ms}",
            path_segment(self.topic),
            cursor.partition,
            cursor.next_offset,
        );
        Ok(self.client.get_json(&path)?)
    }
}

/// Writes record lines to stdout and counts them against `--max`.
pub struct Output {
    /// Records still to print under `--max`; `None` without it.
    remaining: Option<u64>,
    stdout: BufWriter<StdoutLock<'static>>,
}

impl Output {
    pub fn new(max: Option<u64>) -> Self {
        Self { remaining: max, stdout: BufWriter::new(std::io::stdout().lock()) }
    }

    /// Whether `--max` records have been printed.
    pub fn is_done(&self) -> bool {
        self.remaining == Some(0)
    }

    /// How many records to ask for when `available` are left to read.
    pub fn wanted(&self, available: u64) -> u64 {
        available.min(self.remaining.unwrap_or(u64::MAX)).clamp(1, FETCH_RECORDS_MAX)
    }

    /// Prints `records` of one partition, as many as `--max` still allows, and flushes them so
    /// a reader sees them at once.
    fn write<'r>(
        &mut self,
        topic: &str,
        partition: u32,
        records: impl IntoIterator<Item = &'r FetchedRecord>,
    ) -> anyhow::Result<()> {
        for record in records {
            if !self.write_record(topic, partition, record)? {
                break;
            }
        }
        self.flush()
    }

    /// Prints one record unless `--max` records have been printed; returns whether it did.
    /// The line reaches stdout at the next [`Output::flush`].
    pub fn write_record(
        &mut self,
        topic: &str,
        partition: u32,
        record: &FetchedRecord,
    ) -> anyhow::Result<bool> {
        if self.is_done() {
            return Ok(false);
        }
        let line = record_line(topic, partition, record);
        serde_json::to_writer(&mut self.stdout, &line).context("writing to stdout")?;
        self.stdout.write_all(b"\n").context("writing to stdout")?;
        self.remaining = self.remaining.map(|remaining| remaining - 1);
        Ok(true)
    }

    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.stdout.flush().context("writing to stdout")
    }
}

fn record_line<'a>(topic: &'a str, partition: u32, record: &'a FetchedRecord) -> RecordLine<'a> {
    RecordLine {
        topic,
        partition,
        offset: record.offset,
        timestamp: record.timestamp,
        key: match &record.key_base64 {
            Some(base64) => KeyField::Base64(base64),
            None => KeyField::Text(record.key.as_deref()),
        },
        value: match &record.value_base64 {
            Some(base64) => ValueField::Base64(base64),
            None => ValueField::Json(&record.value),
        },
        headers: &record.headers,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{record_line, wait_ms, FetchedRecord, FOLLOW_WAIT_MS};

    #[test]
    fn record_lines_keep_the_server_fields_in_the_documented_order() {
        let fetched = r#"{"offset": 4, "timestamp": 9, "key_base64": "AAE=", "value": {"b": 1},
                          "headers": {"h": "v"}}"#;
        let record: FetchedRecord = serde_json::from_str(fetched).unwrap();
        let line = serde_json::to_string(&record_line("t", 2, &record)).unwrap();
        assert_eq!(
            line,
            r#"{"topic":"t","partition":2,"offset":4,"timestamp":9,"key_base64":"AAE=","value":{"b":1},"headers":{"h":"v"}}"#
        );
        let fetched = r#"{"offset": 0, "timestamp": 1, "value_base64": "/w==", "headers": {}}"#;
        let record: FetchedRecord = serde_json::from_str(fetched).unwrap();
        let line = serde_json::to_string(&record_line("t", 0, &record)).unwrap();
        assert!(line.contains(r#""key":null,"value_base64":"/w==""#), "{line}");
    }

    #[test]
    fn follow_waits_only_when_idle_and_never_past_the_idle_timeout() {
        let now = Instant::now();
        assert_eq!(wait_ms(true, None, now), Some(0));
        assert_eq!(wait_ms(false, None, now), Some(FOLLOW_WAIT_MS));
        let waited = wait_ms(false, Some(Duration::from_millis(300)), now).unwrap();
        assert!((1..=300).contains(&waited), "{waited}");
        let long_ago = now.checked_sub(Duration::from_secs(5)).unwrap();
        assert_eq!(wait_ms(false, Some(Duration::from_secs(1)), long_ago), None);
        assert_eq!(wait_ms(true, Some(Duration::from_secs(1)), long_ago), None);
    }
}
