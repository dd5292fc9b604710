//! `sluice stream append|read|subscribe`: event streams from the command line, over the HTTP API
//! (`/v1/streams/...`, see `docs/streams.md`). Events print as one JSON object per line, as the
//! API returns them. A version conflict on append exits with [`CONFLICT_EXIT`] and the server's
//! message (`expected version 3, stream account-42 is at version 5`), so scripts can tell a
//! lost race from a failure.

use std::io::{Read, Write};

use anyhow::Context;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::cli::{StreamAppendArgs, StreamCommand, StreamReadArgs, StreamSubscribeArgs};
use crate::client::{path_segment, Client, ClientError};

/// Exit status of an append refused for its expected version.
pub const CONFLICT_EXIT: u8 = 3;
/// The server's code for a wrong expected version.
const WRONG_EXPECTED_VERSION: u64 = 1021;
/// Most events asked for per read request (the server's limit).
const READ_PAGE_MAX: u64 = 4096;

/// An append refused because the stream's version was not the expected one.
#[derive(Debug)]
pub struct Conflict(String);

impl std::fmt::Display for Conflict {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for Conflict {}

/// Runs one `sluice stream` subcommand against `server`.
///
/// # Errors
/// The server refused or could not be reached ([`Conflict`] for a version conflict); stdin or
/// stdout failed.
pub fn run(server: &str, command: StreamCommand) -> anyhow::Result<()> {
    let client = Client::new(server);
    match command {
        StreamCommand::Append(args) => append(&client, &args),
        StreamCommand::Read(args) => read(&client, &args),
        StreamCommand::Subscribe(args) => subscribe(&client, &args),
    }
}

fn stream_path(topic: &str, stream: &str) -> String {
    format!("/v1/streams/{}/{}", path_segment(topic), path_segment(stream))
}

fn append(client: &Client, args: &StreamAppendArgs) -> anyhow::Result<()> {
    let mut event = json!({ "type": args.event_type });
    match &args.data {
        Some(text) => {
            let data: Value = serde_json::from_str(text)
                .with_context(|| format!("--data is not JSON: {text}"))?;
            event["data"] = data;
        }
        None => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("reading the event's data from stdin")?;
            match serde_json::from_slice::<Value>(&bytes) {
                Ok(data) => event["data"] = data,
                Err(_) => {
                    event["data_base64"] = json!(BASE64.encode(&bytes));
                    event["content_type"] = json!("application/octet-stream");
                }
            }
        }
    }
    if let Some(id) = &args.id {
        event["id"] = json!(id);
    }
    if !args.headers.is_empty() {
        let headers: serde_json::Map<String, Value> =
            args.headers.iter().map(|(name, value)| (name.clone(), json!(value))).collect();
        event["headers"] = Value::Object(headers);
    }
    let expected = match args.expected_version.parse::<u64>() {
        Ok(version) => json!(version),
        Err(_) => json!(args.expected_version),
    };
    let body = json!({ "expected_version": expected, "events": [event] }).to_string();
    let appended: Value = match client.post_json(&stream_path(&args.topic, &args.stream), &body) {
        Ok(appended) => appended,
        Err(ClientError::Api { error_code: WRONG_EXPECTED_VERSION, message }) => {
            return Err(Conflict(message).into())
        }
        Err(error) => return Err(error.into()),
    };
    let offset = appended["offsets"][0].as_u64().unwrap_or_default();
    let line = format!(
        "appended to {} at version {} (partition {}, offset {offset})\n",
        args.stream, appended["version"], appended["partition"]
    );
    std::io::stdout().lock().write_all(line.as_bytes()).context("writing to stdout")
}

fn read(client: &Client, args: &StreamReadArgs) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    let mut from = args.from;
    let mut left = args.count.unwrap_or(u64::MAX);
    while left > 0 {
        let mut query = vec![format!("count={}", left.min(READ_PAGE_MAX))];
        if let Some(from) = from {
            query.push(format!("from={from}"));
        }
        if args.backward {
            query.push("direction=backward".to_owned());
        }
        if let Some(as_of) = &args.as_of {
            query.push(format!("as_of={}", path_segment(as_of)));
        }
        let path = format!("{}?{}", stream_path(&args.topic, &args.stream), query.join("&"));
        let slice: Value = client.get_json(&path)?;
        let events = slice["events"].as_array().map(Vec::as_slice).unwrap_or_default();
        for event in events {
            writeln!(stdout, "{event}").context("writing to stdout")?;
        }
        left = left.saturating_sub(events.len() as u64);
        match slice["next"].as_u64() {
            Some(next) if !events.is_empty() => from = Some(next),
            _ => break,
        }
    }
    stdout.flush().context("writing to stdout")
}

fn subscribe(client: &Client, args: &StreamSubscribeArgs) -> anyhow::Result<()> {
    let mut path = match &args.stream {
        Some(stream) => format!("{}/events", stream_path(&args.topic, stream)),
        None => format!("/v1/streams/{}", path_segment(&args.topic)),
    };
    if let Some(from) = &args.from {
        path.push_str(&format!("?from={}", path_segment(from)));
    }
    let mut stdout = std::io::stdout().lock();
    let mut printed = 0;
    let mut id = String::new();
    if args.max == Some(0) {
        return Ok(());
    }
    for line in client.get_lines(&path)? {
        let line = line.context("reading the subscription")?;
        if let Some(value) = line.strip_prefix("id:") {
            id = value.trim_start().to_owned();
        } else if let Some(data) = line.strip_prefix("data:") {
            let mut event: Value = serde_json::from_str(data.trim_start())
                .with_context(|| format!("the server sent an event that is not JSON: {data}"))?;
            if args.stream.is_none() {
                event["position"] = json!(id);
            }
            writeln!(stdout, "{event}").context("writing to stdout")?;
            stdout.flush().context("writing to stdout")?;
            printed += 1;
            if args.max.is_some_and(|max| printed >= max) {
                return Ok(());
            }
        }
    }
    anyhow::bail!("the server ended the subscription (topic deleted, or the server stopped)")
}
