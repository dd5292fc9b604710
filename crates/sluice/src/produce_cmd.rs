//! `sluice produce`: sends the lines of stdin to a topic, one record per line, in requests of up
//! to `--batch` records.
//!
//! A line is its text without the trailing `\n` (or `\r\n`); an empty line is an empty record.
//! A line that parses as JSON is sent as that JSON value, any other line as a JSON string. Lines
//! must be UTF-8. Requests are sent one at a time, in input order, so the records acknowledged
//! before a failure are always the first lines of the input: the error says how many, and the
//! input can be resumed after them. A bad line stops everything at once: the records read
//! before it but not yet sent are not sent.
//!
//! Records are held until a request is full or stdin ends; there is no time-based flush yet.

use std::collections::BTreeMap;
use std::io::{BufRead, BufWriter, IsTerminal, Read, StdoutLock, Write};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_http::REQUEST_BYTES_MAX;

use crate::cli::ProduceArgs;
use crate::client::{path_segment, Client};

/// Longest input line, newline excluded: a longer one could never fit in a request.
const LINE_BYTES_MAX: usize = REQUEST_BYTES_MAX;

/// How often the progress line on a terminal's stderr is redrawn. Standard input has no known
/// length, so progress is a count and a rate, redrawn in place, rather than a percentage bar.
const PROGRESS_REDRAW: std::time::Duration = std::time::Duration::from_millis(200);

/// A request body is `BODY_START`, records separated by commas, `BODY_END`.
const BODY_START: &str = "{\"records\":[";
const BODY_END: &str = "]}";

/// One record of a produce request.
#[derive(Debug, Serialize)]
struct OutgoingRecord<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    value: Value,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    headers: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    partition: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ProduceResponse {
    offsets: Vec<ProducedOffset>,
}

#[derive(Debug, Deserialize)]
struct ProducedOffset {
    partition: u32,
    offset: u64,
}

/// Sends stdin to `args.topic` on `server`.
///
/// # Errors
/// A line is not UTF-8, too long, or lacks the key separator; a request was not acknowledged;
/// stdin or stdout failed. The message says how many records were acknowledged before.
pub fn run(server: &str, args: &ProduceArgs) -> anyhow::Result<()> {
    let mut producer = Producer::new(server, args);
    let result = producer.send_lines(std::io::stdin().lock());
    let acknowledged = producer.acknowledged;
    if let Err(error) = result {
        return Err(anyhow!(
            "{error:#}; {acknowledged} records were acknowledged before the failure"
        ));
    }
    if producer.show_progress {
        producer.draw_progress();
        eprintln!();
    }
    Ok(())
}

/// The state of one `sluice produce`: the request being filled and what was acknowledged.
struct Producer<'a> {
    args: &'a ProduceArgs,
    client: Client,
    /// `/v1/topics/{topic}/records`.
    path: String,
    headers: BTreeMap<String, String>,
    /// The request being filled, without its `BODY_END`.
    body: String,
    body_records: u32,
    acknowledged: u64,
    stdout: BufWriter<StdoutLock<'static>>,
    show_progress: bool,
    /// When the command started, for the rate.
    started: std::time::Instant,
    /// When the progress line was last drawn.
    progress_drawn: std::time::Instant,
}

impl<'a> Producer<'a> {
    fn new(server: &str, args: &'a ProduceArgs) -> Self {
        Self {
            args,
            client: Client::new(server),
            path: format!("/v1/topics/{}/records", path_segment(&args.topic)),
            headers: args.headers.iter().cloned().collect(),
            body: BODY_START.to_owned(),
            body_records: 0,
            acknowledged: 0,
            stdout: BufWriter::new(std::io::stdout().lock()),
            show_progress: std::io::stderr().is_terminal(),
            started: std::time::Instant::now(),
            progress_drawn: std::time::Instant::now(),
        }
    }

    fn send_lines(&mut self, mut input: impl BufRead) -> anyhow::Result<()> {
        let mut line = Vec::new();
        let mut line_number: u64 = 0;
        loop {
            line_number += 1;
            if !read_line(&mut input, &mut line, line_number)? {
                break;
            }
            let record = self.record_json(line_number, &line)?;
            self.push(&record)?;
        }
        self.send()?;
        self.stdout.flush().context("writing to stdout")
    }

    /// The record for one line, as JSON text.
    fn record_json(&self, line_number: u64, line: &[u8]) -> anyhow::Result<String> {
        let line = std::str::from_utf8(line)
            .map_err(|error| anyhow!("line {line_number} is not UTF-8: {error}"))?;
        let (key, value) = match &self.args.key_separator {
            Some(separator) => line
                .split_once(separator.as_str())
                .map(|(k, v)| (Some(k), v))
                .ok_or_else(|| anyhow!("line {line_number} has no key separator `{separator}`"))?,
            None => (self.args.key.as_deref(), line),
        };
        let record = OutgoingRecord {
            key,
            value: serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned())),
            headers: &self.headers,
            partition: self.args.partition,
            id: self.args.id_prefix.as_ref().map(|prefix| format!("{prefix}{line_number}")),
        };
        Ok(serde_json::to_string(&record).expect("strings and JSON values serialize"))
    }

    /// Adds `record` to the request, sending the request first if `record` would take it past
    /// the server's body limit, and after if it is then full.
    fn push(&mut self, record: &str) -> anyhow::Result<()> {
        let bytes_after = self.body.len() + 1 + record.len() + BODY_END.len();
        if self.body_records > 0 && bytes_after > REQUEST_BYTES_MAX {
            self.send()?;
        }
        if self.body_records > 0 {
            self.body.push(',');
        }
        self.body.push_str(record);
        self.body_records += 1;
        if self.body_records == self.args.batch {
            self.send()?;
        }
        Ok(())
    }

    /// Sends the records gathered so far, if any, and waits for their acknowledgement.
    fn send(&mut self) -> anyhow::Result<()> {
        if self.body_records == 0 {
            return Ok(());
        }
        self.body.push_str(BODY_END);
        let response: ProduceResponse = self.client.post_json(&self.path, &self.body)?;
        let sent = self.body_records as usize;
        if response.offsets.len() != sent {
            bail!(
                "the server acknowledged {} records of a request of {sent}",
                response.offsets.len()
            );
        }
        self.body.truncate(BODY_START.len());
        self.body_records = 0;
        if self.args.print_offsets {
            self.print_offsets(&response.offsets)?;
        }
        self.count_acknowledged(response.offsets.len() as u64);
        Ok(())
    }

    fn print_offsets(&mut self, offsets: &[ProducedOffset]) -> anyhow::Result<()> {
        for ProducedOffset { partition, offset } in offsets {
            writeln!(self.stdout, "{{\"partition\":{partition},\"offset\":{offset}}}")
                .context("writing to stdout")?;
        }
        self.stdout.flush().context("writing to stdout")
    }

    fn count_acknowledged(&mut self, records: u64) {
        self.acknowledged += records;
        if self.show_progress && self.progress_drawn.elapsed() >= PROGRESS_REDRAW {
            self.draw_progress();
        }
    }

    /// Redraws `produced N records (R/s)` in place on stderr.
    fn draw_progress(&mut self) {
        let seconds = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = self.acknowledged as f64 / seconds;
        eprint!("\rproduced {} records ({rate:.0}/s)   ", self.acknowledged);
        self.progress_drawn = std::time::Instant::now();
    }
}

/// Reads the next line into `line` without its line ending; false at the end of the input.
fn read_line(
    input: &mut impl BufRead,
    line: &mut Vec<u8>,
    line_number: u64,
) -> anyhow::Result<bool> {
    line.clear();
    let limit = LINE_BYTES_MAX as u64 + 1; // room for the newline
    let read = input.by_ref().take(limit).read_until(b'\n', line).context("reading stdin")?;
    if read == 0 {
        return Ok(false);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    } else if line.len() > LINE_BYTES_MAX {
        bail!(
            "line {line_number} is longer than {LINE_BYTES_MAX} bytes, the server's request limit"
        );
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::read_line;

    #[test]
    fn lines_lose_their_ending_and_empty_lines_stay() {
        let mut input: &[u8] = b"a\n\nb\r\nc";
        let mut line = Vec::new();
        let mut lines = Vec::new();
        while read_line(&mut input, &mut line, 1).unwrap() {
            lines.push(String::from_utf8(line.clone()).unwrap());
        }
        assert_eq!(lines, ["a", "", "b", "c"]);
    }
}
