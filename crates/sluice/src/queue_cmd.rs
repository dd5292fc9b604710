//! `sluice queue create|list|describe|delete` and `sluice dlq list|replay|purge`: queue-group
//! and dead-letter administration over the HTTP API (`docs/http-api.md`, `docs/queues.md`).
//!
//! `--output json` prints the server's JSON as it came; `table` reads it and prints columns.
//! Settings left out of `queue create` are left out of the request, so the server's defaults
//! apply; the server checks every value and words the refusal.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Context;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::cli::{DlqCommand, DlqReplayArgs, OutputFormat, QueueCommand, QueueCreateArgs};
use crate::client::{path_segment, Client};
use crate::table;
use crate::topic_cmd::one_line;

/// A queue group as the API describes it (`GET /v1/queues/{group}`).
#[derive(Debug, Deserialize)]
struct Queue {
    group: String,
    config: Value,
    counts: BTreeMap<String, u64>,
    totals: BTreeMap<String, u64>,
    partitions: Vec<QueuePartition>,
    #[serde(default)]
    members: BTreeMap<String, u64>,
}

#[derive(Debug, Deserialize)]
struct QueuePartition {
    topic: String,
    partition: u32,
    ack_floor: u64,
    read_position: u64,
    high_watermark: u64,
    open: u64,
    #[serde(default)]
    parked_keys: Vec<String>,
}

/// The path of one queue group.
pub fn queue_path(group: &str) -> String {
    format!("/v1/queues/{}", path_segment(group))
}

/// The path of a topic's dead letters.
fn dlq_path(topic: &str) -> String {
    format!("/v1/topics/{}/dlq", path_segment(topic))
}

/// Runs one `sluice queue` subcommand against `server`.
///
/// # Errors
/// The server refused or could not be reached; stdout could not be written.
pub fn run(server: &str, command: QueueCommand) -> anyhow::Result<()> {
    let client = Client::new(server);
    let output = match command {
        QueueCommand::Create(args) => {
            let text = client.post_text("/v1/queues", &create_body(&args).to_string())?;
            render_queue(&text, args.output.output)?
        }
        QueueCommand::List(args) => {
            let text = client.get_text("/v1/queues")?;
            match args.output {
                OutputFormat::Json => one_line(&text),
                OutputFormat::Table => {
                    #[derive(Deserialize)]
                    struct Listing {
                        queues: Vec<Queue>,
                    }
                    let listing: Listing =
                        serde_json::from_str(&text).context("reading the server's queue list")?;
                    list_table(&listing.queues)
                }
            }
        }
        QueueCommand::Describe(args) => {
            render_queue(&client.get_text(&queue_path(&args.group))?, args.output.output)?
        }
        QueueCommand::Delete(args) => {
            client.delete(&queue_path(&args.group))?;
            String::new()
        }
    };
    std::io::stdout().lock().write_all(output.as_bytes()).context("writing to stdout")
}

fn create_body(args: &QueueCreateArgs) -> Value {
    let mut body = Map::new();
    body.insert("group".to_owned(), json!(args.group));
    body.insert("topics".to_owned(), json!(args.topics));
    let mut set = |name: &str, value: Option<Value>| {
        if let Some(value) = value {
            body.insert(name.to_owned(), value);
        }
    };
    set("ack_wait_ms", args.ack_wait_ms.map(Value::from));
    set("deliveries_max", args.deliveries_max.map(Value::from));
    if let Some((initial, multiplier, max)) = args.backoff {
        set("backoff_initial_ms", Some(Value::from(initial)));
        set("backoff_multiplier", Some(Value::from(multiplier)));
        set("backoff_max_ms", Some(Value::from(max)));
    }
    set("backoff_jitter", args.backoff_jitter.map(Value::from));
    set("ordering", args.ordering.clone().map(Value::from));
    set("max_in_flight", args.max_in_flight.map(Value::from));
    set("member_max_in_flight", args.member_max_in_flight.map(Value::from));
    set("dead_letter_topic", args.dead_letter_topic.clone().map(Value::from));
    set("start", args.start.clone().map(Value::from));
    Value::Object(body)
}

fn render_queue(text: &str, output: OutputFormat) -> anyhow::Result<String> {
    match output {
        OutputFormat::Json => Ok(one_line(text)),
        OutputFormat::Table => {
            let queue: Queue =
                serde_json::from_str(text).context("reading the server's queue description")?;
            Ok(describe_table(&queue))
        }
    }
}

fn list_table(queues: &[Queue]) -> String {
    let header = ["GROUP", "TOPICS", "LEASED", "WAITING", "IN_FLIGHT", "PARKED_KEYS", "BACKLOG"];
    let mut rows = vec![header.map(String::from).to_vec()];
    for queue in queues {
        let topics = queue.config.get("topics").map(topics_text).unwrap_or_default();
        rows.push(vec![
            queue.group.clone(),
            topics,
            count(&queue.counts, "leased"),
            count(&queue.counts, "waiting"),
            count(&queue.counts, "in_flight"),
            count(&queue.counts, "parked_keys"),
            backlog(queue).to_string(),
        ]);
    }
    table::render(&rows)
}

fn topics_text(topics: &Value) -> String {
    topics
        .as_array()
        .map(|topics| topics.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
        .unwrap_or_default()
}

fn count(counts: &BTreeMap<String, u64>, name: &str) -> String {
    counts.get(name).copied().unwrap_or(0).to_string()
}

/// Messages not yet acked or dead-lettered: from each partition's ack floor to its end.
fn backlog(queue: &Queue) -> u64 {
    queue.partitions.iter().map(|part| part.high_watermark.saturating_sub(part.ack_floor)).sum()
}

fn describe_table(queue: &Queue) -> String {
    let mut settings = vec![vec!["group".to_owned(), queue.group.clone()]];
    if let Some(config) = queue.config.as_object() {
        for (name, value) in config {
            let text = match value {
                Value::Array(_) => topics_text(value),
                Value::Null => "-".to_owned(),
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            settings.push(vec![name.clone(), text]);
        }
    }
    settings.push(vec!["backlog".to_owned(), backlog(queue).to_string()]);
    for (name, value) in queue.counts.iter().chain(&queue.totals) {
        settings.push(vec![name.clone(), value.to_string()]);
    }
    let header = [
        "TOPIC",
        "PARTITION",
        "ACK_FLOOR",
        "READ_POSITION",
        "HIGH_WATERMARK",
        "OPEN",
        "PARKED_KEYS",
    ];
    let mut partitions = vec![header.map(String::from).to_vec()];
    for part in &queue.partitions {
        let parked =
            if part.parked_keys.is_empty() { "-".to_owned() } else { part.parked_keys.join(",") };
        partitions.push(vec![
            part.topic.clone(),
            part.partition.to_string(),
            part.ack_floor.to_string(),
            part.read_position.to_string(),
            part.high_watermark.to_string(),
            part.open.to_string(),
            parked,
        ]);
    }
    let mut members = vec![["MEMBER", "LEASED"].map(String::from).to_vec()];
    for (member, leased) in &queue.members {
        members.push(vec![member.clone(), leased.to_string()]);
    }
    format!(
        "{}\n{}\n{}",
        table::render(&settings),
        table::render(&partitions),
        table::render(&members)
    )
}

/// Runs one `sluice dlq` subcommand against `server`.
///
/// # Errors
/// The server refused or could not be reached; stdout could not be written.
pub fn run_dlq(server: &str, command: DlqCommand) -> anyhow::Result<()> {
    let client = Client::new(server);
    let output = match command {
        DlqCommand::List(args) => {
            let path = format!("{}?max=10000&include_replayed={}", dlq_path(&args.topic), args.all);
            let text = client.get_text(&path)?;
            match args.output.output {
                OutputFormat::Json => one_line(&text),
                OutputFormat::Table => dlq_table(&text)?,
            }
        }
        DlqCommand::Replay(args) => {
            let path = format!("{}/replay", dlq_path(&args.topic));
            one_line(&client.post_text(&path, &replay_body(&args).to_string())?)
        }
        DlqCommand::Purge(args) => {
            let path = format!("{}/purge", dlq_path(&args.topic));
            one_line(&client.post_text(&path, "{}")?)
        }
    };
    std::io::stdout().lock().write_all(output.as_bytes()).context("writing to stdout")
}

fn replay_body(args: &DlqReplayArgs) -> Value {
    if let Some(key) = &args.key {
        json!({ "key": key })
    } else if !args.offsets.is_empty() {
        json!({ "offsets": args.offsets })
    } else {
        json!({})
    }
}

fn dlq_table(text: &str) -> anyhow::Result<String> {
    #[derive(Deserialize)]
    struct Listing {
        dead_letter_topic: String,
        dead_letters: Vec<Map<String, Value>>,
    }
    let listing: Listing =
        serde_json::from_str(text).context("reading the server's dead-letter list")?;
    let header =
        ["OFFSET", "KEY", "FROM", "GROUP", "DELIVERIES", "LAST_FAILURE_MS", "REPLAYED", "ERROR"];
    let mut rows = vec![header.map(String::from).to_vec()];
    for letter in &listing.dead_letters {
        let field = |name: &str| match letter.get(name) {
            None | Some(Value::Null) => "-".to_owned(),
            Some(Value::String(text)) => text.clone(),
            Some(other) => other.to_string(),
        };
        let origin = letter
            .get("origin")
            .and_then(Value::as_object)
            .map(|origin| {
                let part = |name| origin.get(name).map(ToString::to_string).unwrap_or_default();
                format!(
                    "{}/{}/{}",
                    origin.get("topic").and_then(Value::as_str).unwrap_or("?"),
                    part("partition"),
                    part("offset")
                )
            })
            .unwrap_or_else(|| "-".to_owned());
        let replayed =
            if letter.get("replayed").is_some_and(|value| !value.is_null()) { "yes" } else { "no" };
        let error: String = field("last_error").replace('\n', " ").chars().take(60).collect();
        rows.push(vec![
            field("offset"),
            field("key"),
            origin,
            field("group"),
            field("deliveries"),
            field("last_failure_ms"),
            replayed.to_owned(),
            error,
        ]);
    }
    Ok(format!("dead-letter topic: {}\n{}", listing.dead_letter_topic, table::render(&rows)))
}
