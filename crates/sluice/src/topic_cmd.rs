//! `sluice topic create|list|describe|delete`: topic administration over the HTTP API.
//!
//! `--output json` prints the server's JSON exactly as it came (a listing is one JSON array);
//! `--output table` reads it into [`Topic`] and prints aligned columns. Settings the user leaves
//! out are left out of the request, so the server's defaults apply.

use std::io::Write;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::cli::{OutputFormat, TopicCommand, TopicCreateArgs};
use crate::client::{path_segment, Client};
use crate::table;

/// A topic as the API describes it (`GET /v1/topics/{topic}`).
#[derive(Debug, Deserialize)]
pub struct Topic {
    pub name: String,
    pub partitions: u32,
    pub durability: String,
    pub retention_age_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
    pub compact: bool,
    pub record_bytes_max: u32,
    pub dedup_window_ms: u64,
    pub partition_offsets: Vec<PartitionOffsets>,
}

/// Where one partition's log starts and ends.
#[derive(Debug, Deserialize)]
pub struct PartitionOffsets {
    pub partition: u32,
    pub log_start_offset: u64,
    pub high_watermark: u64,
    pub size_bytes: u64,
}

/// `POST /v1/topics` body: only what the user set.
#[derive(Debug, Serialize)]
struct CreateTopic<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    partitions: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    durability: Option<&'a str>,
    /// `Some(None)` is sent as `null`: keep records forever.
    #[serde(skip_serializing_if = "Option::is_none")]
    retention_age_ms: Option<Option<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retention_bytes: Option<u64>,
    compact: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    hard_delete_streams: bool,
}

/// The path of one topic.
pub fn topic_path(name: &str) -> String {
    format!("/v1/topics/{}", path_segment(name))
}

/// Runs one `sluice topic` subcommand against `server`.
///
/// # Errors
/// The server refused or could not be reached; stdout could not be written.
pub fn run(server: &str, command: TopicCommand) -> anyhow::Result<()> {
    let client = Client::new(server);
    let output = match command {
        TopicCommand::Create(args) => create(&client, &args)?,
        TopicCommand::List(args) => list(&client, args.output)?,
        TopicCommand::Describe(args) => describe(&client, &args.name, args.output.output)?,
        TopicCommand::Delete(args) => {
            client.delete(&topic_path(&args.name))?;
            format!("deleted topic {}\n", args.name)
        }
    };
    std::io::stdout().lock().write_all(output.as_bytes()).context("writing to stdout")
}

fn create(client: &Client, args: &TopicCreateArgs) -> anyhow::Result<String> {
    let body = CreateTopic {
        name: &args.name,
        partitions: args.partitions,
        durability: args.durability.as_deref(),
        retention_age_ms: args.retention_age_ms.map(|age| age.0),
        retention_bytes: args.retention_bytes,
        compact: args.compact,
        hard_delete_streams: args.hard_delete_streams,
    };
    let body = serde_json::to_string(&body).expect("a struct of strings and numbers serializes");
    let topic: Topic = client.post_json("/v1/topics", &body)?;
    let partitions = topic.partitions;
    Ok(format!("created topic {} ({partitions} partitions, {})\n", topic.name, topic.durability))
}

fn list(client: &Client, output: OutputFormat) -> anyhow::Result<String> {
    let text = client.get_text("/v1/topics")?;
    match output {
        OutputFormat::Json => Ok(one_line(&text)),
        OutputFormat::Table => Ok(list_table(&parse_topics(&text)?)),
    }
}

fn describe(client: &Client, name: &str, output: OutputFormat) -> anyhow::Result<String> {
    let text = client.get_text(&topic_path(name))?;
    match output {
        OutputFormat::Json => Ok(one_line(&text)),
        OutputFormat::Table => {
            let topic: Topic = serde_json::from_str(&text)
                .with_context(|| format!("reading the server's description of {name}"))?;
            Ok(describe_table(&topic))
        }
    }
}

fn parse_topics(text: &str) -> anyhow::Result<Vec<Topic>> {
    serde_json::from_str(text).context("reading the server's topic list")
}

/// The server's JSON, ending in exactly one newline.
pub fn one_line(text: &str) -> String {
    format!("{}\n", text.trim_end())
}

fn list_table(topics: &[Topic]) -> String {
    let header = [
        "NAME",
        "PARTITIONS",
        "DURABILITY",
        "RETENTION_AGE",
        "RETENTION_BYTES",
        "COMPACT",
        "SIZE_BYTES",
    ];
    let mut rows = vec![header.map(String::from).to_vec()];
    for topic in topics {
        let size_bytes: u64 = topic.partition_offsets.iter().map(|p| p.size_bytes).sum();
        rows.push(vec![
            topic.name.clone(),
            topic.partitions.to_string(),
            topic.durability.clone(),
            or_dash(topic.retention_age_ms.map(format_duration_ms)),
            or_dash(topic.retention_bytes.map(|bytes| bytes.to_string())),
            topic.compact.to_string(),
            size_bytes.to_string(),
        ]);
    }
    table::render(&rows)
}

fn describe_table(topic: &Topic) -> String {
    let settings = [
        vec!["name".to_owned(), topic.name.clone()],
        vec!["partitions".to_owned(), topic.partitions.to_string()],
        vec!["durability".to_owned(), topic.durability.clone()],
        vec!["retention_age".to_owned(), or_dash(topic.retention_age_ms.map(format_duration_ms))],
        vec!["retention_bytes".to_owned(), or_dash(topic.retention_bytes.map(|b| b.to_string()))],
        vec!["compact".to_owned(), topic.compact.to_string()],
        vec!["record_bytes_max".to_owned(), topic.record_bytes_max.to_string()],
        vec!["dedup_window".to_owned(), format_duration_ms(topic.dedup_window_ms)],
    ];
    let header = ["PARTITION", "LOG_START_OFFSET", "HIGH_WATERMARK", "SIZE_BYTES"];
    let mut partitions = vec![header.map(String::from).to_vec()];
    for partition in &topic.partition_offsets {
        partitions.push(vec![
            partition.partition.to_string(),
            partition.log_start_offset.to_string(),
            partition.high_watermark.to_string(),
            partition.size_bytes.to_string(),
        ]);
    }
    format!("{}\n{}", table::render(&settings), table::render(&partitions))
}

/// A setting's text, or `-` when it is unset.
fn or_dash(value: Option<String>) -> String {
    value.unwrap_or_else(|| "-".to_owned())
}

/// Milliseconds in the largest unit of `--retention-age` that divides them: `7d`, `90m`, `1500ms`.
fn format_duration_ms(milliseconds: u64) -> String {
    const UNITS: [(&str, u64); 4] =
        [("d", 24 * 60 * 60 * 1000), ("h", 60 * 60 * 1000), ("m", 60 * 1000), ("s", 1000)];
    for (unit, unit_ms) in UNITS {
        if milliseconds != 0 && milliseconds.is_multiple_of(unit_ms) {
            return format!("{}{unit}", milliseconds / unit_ms);
        }
    }
    format!("{milliseconds}ms")
}

#[cfg(test)]
mod tests {
    use super::format_duration_ms;
    use crate::cli::parse_duration_ms;

    #[test]
    fn durations_print_in_the_largest_exact_unit_and_parse_back() {
        let cases = [
            (0, "0ms"),
            (1500, "1500ms"),
            (30_000, "30s"),
            (5_400_000, "90m"),
            (604_800_000, "7d"),
        ];
        for (milliseconds, text) in cases {
            assert_eq!(format_duration_ms(milliseconds), text);
            assert_eq!(parse_duration_ms(text), Ok(milliseconds));
        }
    }
}
