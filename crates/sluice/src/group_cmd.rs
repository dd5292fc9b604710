//! `sluice group list|describe|reset`: consumer-group administration over the HTTP API, and the
//! group types the API returns (shared with [`crate::consume_group`]).
//!
//! `--output json` prints the server's JSON exactly as it came; `--output table` reads it and
//! prints aligned columns. A reset's `--to` is passed on as the server takes it, a plain number as
//! a JSON number and anything else as a string; the server checks it and words the refusal.

use std::io::Write;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cli::{GroupCommand, GroupResetArgs, OutputFormat};
use crate::client::{path_segment, Client};
use crate::table;
use crate::topic_cmd::one_line;

/// One partition of one topic, as the group endpoints name it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: u32,
}

/// A group as the API describes it (`GET /v1/groups/{group}`).
#[derive(Debug, Deserialize)]
struct Group {
    name: String,
    generation: u64,
    /// Empty while the group has no members.
    topics: Vec<String>,
    members: Vec<GroupMember>,
    partitions: Vec<PartitionLag>,
}

#[derive(Debug, Deserialize)]
struct GroupMember {
    member_id: String,
    assignment: Vec<TopicPartition>,
    /// Milliseconds since its last fetch or heartbeat.
    idle_ms: u64,
}

#[derive(Debug, Deserialize)]
struct PartitionLag {
    topic: String,
    partition: u32,
    /// The next offset the group reads; `None` before its first commit.
    committed: Option<u64>,
    high_watermark: u64,
    lag: u64,
}

/// A reset's answer: the committed offsets it wrote.
#[derive(Debug, Deserialize)]
struct Committed {
    committed: Vec<CommittedOffset>,
}

#[derive(Debug, Deserialize)]
struct CommittedOffset {
    topic: String,
    partition: u32,
    offset: u64,
}

/// `POST /v1/groups/{group}/reset` body.
#[derive(Debug, Serialize)]
struct ResetBody<'a> {
    to: Value,
    /// Left out without `--topic`: the server then resets every topic the group committed.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    topics: &'a [String],
}

/// The path of one group.
pub fn group_path(name: &str) -> String {
    format!("/v1/groups/{}", path_segment(name))
}

/// Runs one `sluice group` subcommand against `server`.
///
/// # Errors
/// The server refused or could not be reached; stdout could not be written.
pub fn run(server: &str, command: GroupCommand) -> anyhow::Result<()> {
    let client = Client::new(server);
    let output = match command {
        GroupCommand::List(args) => list(&client, args.output)?,
        GroupCommand::Describe(args) => describe(&client, &args.name, args.output.output)?,
        GroupCommand::Reset(args) => reset(&client, &args)?,
    };
    std::io::stdout().lock().write_all(output.as_bytes()).context("writing to stdout")
}

fn list(client: &Client, output: OutputFormat) -> anyhow::Result<String> {
    let text = client.get_text("/v1/groups")?;
    match output {
        OutputFormat::Json => Ok(one_line(&text)),
        OutputFormat::Table => {
            let names: Vec<String> =
                serde_json::from_str(&text).context("reading the server's group list")?;
            let mut rows = vec![vec!["NAME".to_owned()]];
            rows.extend(names.into_iter().map(|name| vec![name]));
            Ok(table::render(&rows))
        }
    }
}

fn describe(client: &Client, name: &str, output: OutputFormat) -> anyhow::Result<String> {
    let text = client.get_text(&group_path(name))?;
    match output {
        OutputFormat::Json => Ok(one_line(&text)),
        OutputFormat::Table => {
            let group: Group = serde_json::from_str(&text)
                .with_context(|| format!("reading the server's description of group {name}"))?;
            Ok(describe_table(&group))
        }
    }
}

fn reset(client: &Client, args: &GroupResetArgs) -> anyhow::Result<String> {
    let path = format!("{}/reset", group_path(&args.name));
    let text = client.post_text(&path, &reset_body(&args.to, &args.topics))?;
    match args.output.output {
        OutputFormat::Json => Ok(one_line(&text)),
        OutputFormat::Table => {
            let committed: Committed =
                serde_json::from_str(&text).context("reading the server's reset answer")?;
            Ok(reset_table(&committed))
        }
    }
}

fn reset_body(to: &str, topics: &[String]) -> String {
    let is_offset = !to.is_empty() && to.bytes().all(|byte| byte.is_ascii_digit());
    let to = match to.parse::<u64>() {
        Ok(offset) if is_offset => Value::from(offset),
        _ => Value::from(to),
    };
    serde_json::to_string(&ResetBody { to, topics }).expect("strings and numbers serialize")
}

fn describe_table(group: &Group) -> String {
    let topics = if group.topics.is_empty() { "-".to_owned() } else { group.topics.join(",") };
    let lag: u64 = group.partitions.iter().map(|partition| partition.lag).sum();
    let settings = [
        vec!["name".to_owned(), group.name.clone()],
        vec!["generation".to_owned(), group.generation.to_string()],
        vec!["topics".to_owned(), topics],
        vec!["members".to_owned(), group.members.len().to_string()],
        vec!["lag".to_owned(), lag.to_string()],
    ];
    let mut members = vec![["MEMBER", "PARTITIONS", "IDLE_MS"].map(String::from).to_vec()];
    for member in &group.members {
        let partitions: Vec<String> = member
            .assignment
            .iter()
            .map(|held| format!("{}/{}", held.topic, held.partition))
            .collect();
        let partitions = if partitions.is_empty() { "-".to_owned() } else { partitions.join(",") };
        members.push(vec![member.member_id.clone(), partitions, member.idle_ms.to_string()]);
    }
    let header = ["TOPIC", "PARTITION", "COMMITTED", "HIGH_WATERMARK", "LAG"];
    let mut partitions = vec![header.map(String::from).to_vec()];
    for partition in &group.partitions {
        partitions.push(vec![
            partition.topic.clone(),
            partition.partition.to_string(),
            partition.committed.map_or_else(|| "-".to_owned(), |offset| offset.to_string()),
            partition.high_watermark.to_string(),
            partition.lag.to_string(),
        ]);
    }
    let settings = table::render(&settings);
    format!("{settings}\n{}\n{}", table::render(&members), table::render(&partitions))
}

fn reset_table(committed: &Committed) -> String {
    let mut rows = vec![["TOPIC", "PARTITION", "COMMITTED"].map(String::from).to_vec()];
    for offset in &committed.committed {
        rows.push(vec![
            offset.topic.clone(),
            offset.partition.to_string(),
            offset.offset.to_string(),
        ]);
    }
    table::render(&rows)
}

#[cfg(test)]
mod tests {
    use super::{describe_table, reset_body, Group};

    #[test]
    fn reset_sends_plain_numbers_as_numbers_and_everything_else_as_text() {
        assert_eq!(reset_body("42", &[]), r#"{"to":42}"#);
        assert_eq!(
            reset_body("earliest", &["a".to_owned()]),
            r#"{"to":"earliest","topics":["a"]}"#
        );
        assert_eq!(reset_body("@2026-11-23T18:30:00Z", &[]), r#"{"to":"@2026-11-23T18:30:00Z"}"#);
        for text in ["-1", "+5", "1.5", "", "18446744073709551616"] {
            assert_eq!(reset_body(text, &[]), format!(r#"{{"to":"{text}"}}"#));
        }
    }

    #[test]
    fn describe_table_shows_members_partitions_and_total_lag() {
        let described = r#"{"name": "g", "generation": 3, "topics": ["t"],
            "members": [{"member_id": "m1", "assignment": [{"topic": "t", "partition": 0},
                         {"topic": "t", "partition": 1}], "idle_ms": 12}],
            "partitions": [
              {"topic": "t", "partition": 0, "committed": 5, "high_watermark": 7, "lag": 2},
              {"topic": "t", "partition": 1, "committed": null, "high_watermark": 4, "lag": 4}]}"#;
        let group: Group = serde_json::from_str(described).unwrap();
        let table = describe_table(&group);
        assert!(table.contains("lag         6\n"), "{table}");
        assert!(table.contains("m1      t/0,t/1     12\n"), "{table}");
        assert!(table.contains("t      1          -          4               4\n"), "{table}");
    }
}
