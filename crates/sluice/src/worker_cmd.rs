//! `sluice worker GROUP --exec CMD`: takes messages of a queue group and runs `sh -c CMD` once
//! per message.
//!
//! The command gets the record's value on stdin (JSON values as compact JSON text, other bytes
//! as they are) and these variables: `SLUICE_GROUP`, `SLUICE_TOPIC`, `SLUICE_PARTITION`,
//! `SLUICE_OFFSET`, `SLUICE_KEY` (or `SLUICE_KEY_BASE64` for a key that is not UTF-8; unset
//! without a key), `SLUICE_DELIVERY_ID`, `SLUICE_DELIVERIES` (1 on the first delivery),
//! `SLUICE_HEADERS` (the headers as JSON) and `SLUICE_HEADER_<NAME>` per text header (name upper-
//! cased, characters other than letters and digits as `_`). Its stdout is the worker's; its
//! stderr is copied to the worker's stderr and its tail kept.
//!
//! Exit 0 acks the message. Any other exit, or a command that cannot be started, nacks it with
//! the exit status and the last [`ERROR_TAIL_BYTES`] of stderr as the error, so the group's
//! backoff and dead-letter rules apply. While the command runs past half the group's ack
//! deadline, the lease is extended every half deadline. `--concurrency N` runs N loops, each
//! leasing one message at a time; a worker killed mid-command leaves its messages leased, and
//! the server delivers them again when their leases expire.
//!
//! An ack asks for the loop's next message in the same request (`ack-next`, no wait), unless
//! the loop is to stop (`--max-messages` reached); when it brings none, the loop long-polls a
//! lease. A retried ack (after a transport failure) acks alone, so a lost answer cannot leave a
//! message leased to nobody.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::cli::WorkerArgs;
use crate::client::{path_segment, Client, ClientError};
use sluice_engine::queue::dlq::tail as tail_of;

use crate::queue_cmd::queue_path;

/// Bytes of a failed command's stderr kept as the nack's error text.
pub const ERROR_TAIL_BYTES: usize = 4096;
/// How long one lease request waits for a message.
const LEASE_WAIT_MS: u64 = 5_000;
/// Longest pause between retries of a failing request to the server.
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, Deserialize)]
struct Leased {
    messages: Vec<Value>,
}

/// One leased message, as the worker needs it.
#[derive(Debug)]
struct Message {
    id: String,
    topic: String,
    partition: u64,
    offset: u64,
    deliveries: u64,
    key: Option<(bool, String)>,
    value: Vec<u8>,
    headers: Value,
}

impl Message {
    fn from_json(message: &Value) -> anyhow::Result<Self> {
        let text = |name: &str| message.get(name).and_then(Value::as_str).map(str::to_owned);
        let number = |name: &str| message.get(name).and_then(Value::as_u64);
        let id = text("delivery_id").context("a leased message without delivery_id")?;
        let key = match (text("key"), text("key_base64")) {
            (Some(key), _) => Some((true, key)),
            (None, Some(encoded)) => Some((false, encoded)),
            (None, None) => None,
        };
        let value = match (text("value_base64"), message.get("value")) {
            (Some(encoded), _) => BASE64.decode(encoded).context("a message's value_base64")?,
            (None, None | Some(Value::Null)) => Vec::new(),
            (None, Some(value)) => serde_json::to_vec(value).context("a message's value")?,
        };
        Ok(Self {
            id,
            topic: text("topic").unwrap_or_default(),
            partition: number("partition").unwrap_or(0),
            offset: number("offset").unwrap_or(0),
            deliveries: number("deliveries").unwrap_or(0),
            key,
            value,
            headers: message.get("headers").cloned().unwrap_or(Value::Null),
        })
    }
}

/// Runs the worker until `--max-messages` are handled, or forever.
///
/// # Errors
/// The group does not exist or the server cannot be reached at start.
pub fn run(server: &str, args: &WorkerArgs) -> anyhow::Result<()> {
    let client = Client::new(server);
    let described: Value = client.get_json(&queue_path(&args.group))?;
    let ack_wait_ms = described
        .pointer("/config/ack_wait_ms")
        .and_then(Value::as_u64)
        .context("the group's description has no config.ack_wait_ms")?;
    let member = args.member.clone().unwrap_or_else(|| format!("worker-{}", std::process::id()));
    let shared = Arc::new(Shared {
        server: server.to_owned(),
        group: args.group.clone(),
        exec: args.exec.clone(),
        member,
        extend_every: Duration::from_millis((ack_wait_ms / 2).max(1)),
        handled: AtomicU64::new(0),
        max_messages: args.max_messages,
        stop: AtomicBool::new(false),
    });
    tracing::info!(group = %args.group, concurrency = args.concurrency, "worker started");
    let loops: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || shared.run_loop())
        })
        .collect();
    let mut first_error = None;
    for handle in loops {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                first_error.get_or_insert(error);
            }
            Err(_) => bail!("a worker loop panicked"),
        }
    }
    first_error.map_or(Ok(()), Err)
}

struct Shared {
    server: String,
    group: String,
    exec: String,
    member: String,
    extend_every: Duration,
    handled: AtomicU64,
    max_messages: Option<u64>,
    stop: AtomicBool,
}

impl Shared {
    fn run_loop(&self) -> anyhow::Result<()> {
        let client = Client::new(&self.server);
        let path = format!(
            "{}/messages?max=1&wait_ms={LEASE_WAIT_MS}&member={}",
            queue_path(&self.group),
            path_segment(&self.member)
        );
        let mut pause = Duration::from_millis(100);
        // A message the last ack brought, its slot already claimed.
        let mut next: Option<Message> = None;
        while !self.stop.load(Ordering::Relaxed) || next.is_some() {
            if let Some(message) = next.take() {
                next = self.handle(&client, &message);
                continue;
            }
            if !self.claim() {
                break;
            }
            let leased: Leased = match client.get_json(&path) {
                Ok(leased) => {
                    pause = Duration::from_millis(100);
                    leased
                }
                Err(error @ ClientError::Api { .. }) => return Err(error.into()),
                Err(error) => {
                    tracing::warn!(%error, "leasing failed; retrying");
                    self.unclaim();
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(RETRY_PAUSE_MAX);
                    continue;
                }
            };
            if leased.messages.is_empty() {
                self.unclaim();
                continue;
            }
            for message in &leased.messages {
                let message = Message::from_json(message)?;
                next = self.handle(&client, &message);
            }
        }
        Ok(())
    }

    /// Claims a slot for one more message, so N loops never handle more than `--max-messages`;
    /// `false` (and the worker stops) once they are all taken.
    fn claim(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        if let Some(max) = self.max_messages {
            let claimed = self.handled.fetch_add(1, Ordering::SeqCst);
            if claimed >= max {
                self.handled.fetch_sub(1, Ordering::SeqCst);
                self.stop.store(true, Ordering::Relaxed);
                return false;
            }
        }
        true
    }

    fn unclaim(&self) {
        if self.max_messages.is_some() {
            self.handled.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Runs the command for `message` and settles it; returns the next message if the ack
    /// brought one (its slot claimed).
    fn handle(&self, client: &Client, message: &Message) -> Option<Message> {
        let outcome = self.execute(client, message);
        let (mut action, mut body) = match outcome {
            Ok(()) if self.claim() => (
                "ack-next",
                json!({ "ids": [message.id], "max": 1, "wait_ms": 0, "member": self.member }),
            ),
            Ok(()) => ("ack", json!({ "ids": [message.id] })),
            Err(error) => {
                tracing::info!(delivery = %message.id, %error, "command failed; nacking");
                ("nack", json!({ "ids": [message.id], "error": error }))
            }
        };
        let mut pause = Duration::from_millis(100);
        let answer = loop {
            let path = format!("{}/{action}", queue_path(&self.group));
            match client.post_json::<Value>(&path, &body.to_string()) {
                Ok(answer) => {
                    let result = answer.pointer("/results/0");
                    if result.and_then(|result| result.get("ok")).and_then(Value::as_bool)
                        != Some(true)
                    {
                        tracing::warn!(delivery = %message.id, answer = %answer, "{action} refused");
                    }
                    break Some(answer);
                }
                Err(error @ ClientError::Api { .. }) => {
                    tracing::warn!(delivery = %message.id, %error, "{action} refused");
                    break None;
                }
                Err(error) => {
                    // The lease expires if the server stays away; the message is then redelivered.
                    tracing::warn!(delivery = %message.id, %error, "{action} failed; retrying");
                    if action == "ack-next" {
                        // The first attempt may have leased a message whose answer is lost.
                        self.unclaim();
                        (action, body) = ("ack", json!({ "ids": [message.id] }));
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(RETRY_PAUSE_MAX);
                }
            }
        };
        if action != "ack-next" {
            return None;
        }
        let next = answer
            .as_ref()
            .and_then(|answer| answer.pointer("/messages/0"))
            .map(Message::from_json)
            .transpose();
        match next {
            Ok(Some(next)) => Some(next),
            Ok(None) => {
                self.unclaim();
                None
            }
            Err(error) => {
                // Leased but unreadable: it is redelivered when its lease ends.
                tracing::warn!(%error, "the message an ack brought could not be read");
                self.unclaim();
                None
            }
        }
    }

    /// Runs the command for one message; `Err` carries the nack's error text.
    fn execute(&self, client: &Client, message: &Message) -> Result<(), String> {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(&self.exec)
            .stdin(Stdio::piped())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .env("SLUICE_GROUP", &self.group)
            .env("SLUICE_TOPIC", &message.topic)
            .env("SLUICE_PARTITION", message.partition.to_string())
            .env("SLUICE_OFFSET", message.offset.to_string())
            .env("SLUICE_DELIVERY_ID", &message.id)
            .env("SLUICE_DELIVERIES", message.deliveries.to_string())
            .env("SLUICE_HEADERS", message.headers.to_string());
        match &message.key {
            Some((true, key)) => {
                command.env("SLUICE_KEY", key);
            }
            Some((false, encoded)) => {
                command.env("SLUICE_KEY_BASE64", encoded);
            }
            None => {}
        }
        if let Some(headers) = message.headers.as_object() {
            for (name, value) in headers {
                if let Some(text) = value.as_str() {
                    command.env(header_variable(name), text);
                }
            }
        }
        let mut child = command
            .spawn()
            .map_err(|error| format!("cannot start `sh -c {}`: {error}", self.exec))?;
        let stdin = child.stdin.take();
        let value = message.value.clone();
        let feeder = std::thread::spawn(move || {
            if let Some(mut stdin) = stdin {
                // A command that does not read its stdin closes it early; that is its business.
                let _ = stdin.write_all(&value);
            }
        });
        let stderr = child.stderr.take();
        let collector = std::thread::spawn(move || {
            let mut tail = Vec::new();
            if let Some(mut stderr) = stderr {
                let mut buffer = [0u8; 8192];
                while let Ok(read) = stderr.read(&mut buffer) {
                    if read == 0 {
                        break;
                    }
                    let _ = std::io::stderr().write_all(&buffer[..read]);
                    tail.extend_from_slice(&buffer[..read]);
                    if tail.len() > 2 * ERROR_TAIL_BYTES {
                        tail.drain(..tail.len() - ERROR_TAIL_BYTES);
                    }
                }
            }
            tail
        });
        // The exit is awaited on a thread of its own, so it is seen at once (no polling); this
        // thread wakes only to extend the lease every half ack deadline.
        let (exited, exit) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let _ = exited.send(child.wait());
        });
        let mut next_extend = Instant::now() + self.extend_every;
        let status = loop {
            let wait = next_extend.saturating_duration_since(Instant::now());
            match exit.recv_timeout(wait) {
                Ok(Ok(status)) => break status,
                Ok(Err(error)) => return Err(format!("waiting for the command: {error}")),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    let path = format!("{}/extend", queue_path(&self.group));
                    let body = json!({ "ids": [message.id] }).to_string();
                    if let Err(error) = client.post_json::<Value>(&path, &body) {
                        tracing::warn!(delivery = %message.id, %error, "extending the lease failed");
                    }
                    next_extend = Instant::now() + self.extend_every;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("waiting for the command: its waiter stopped".to_owned());
                }
            }
        };
        let _ = waiter.join();
        let _ = feeder.join();
        let tail = collector.join().unwrap_or_default();
        if status.success() {
            return Ok(());
        }
        let tail = String::from_utf8_lossy(&tail);
        let tail = tail_of(tail.trim_end(), ERROR_TAIL_BYTES);
        let status = match status.code() {
            Some(code) => format!("exit status {code}"),
            None => format!("{status}"),
        };
        Err(if tail.is_empty() { status } else { format!("{status}: {tail}") })
    }
}

/// `SLUICE_HEADER_<NAME>`: the name upper-cased, characters other than ASCII letters and digits
/// as `_`.
fn header_variable(name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' })
        .collect();
    format!("SLUICE_HEADER_{name}")
}

#[cfg(test)]
mod tests {
    use super::{header_variable, tail_of, Message};

    #[test]
    fn header_names_become_variable_names() {
        assert_eq!(header_variable("ce_type"), "SLUICE_HEADER_CE_TYPE");
        assert_eq!(header_variable("content-type"), "SLUICE_HEADER_CONTENT_TYPE");
    }

    #[test]
    fn tails_cut_at_character_boundaries() {
        assert_eq!(tail_of("abcdef", 3), "def");
        assert_eq!(tail_of("ab", 3), "ab");
        assert_eq!(tail_of("aé", 1), "");
    }

    #[test]
    fn messages_decode_json_and_binary_values() {
        let json: serde_json::Value = serde_json::from_str(
            r#"{"delivery_id": "t/0/1/1", "topic": "t", "partition": 0, "offset": 1,
                "deliveries": 1, "key": "k", "value": {"a": 1}, "headers": {}}"#,
        )
        .unwrap();
        let message = Message::from_json(&json).unwrap();
        assert_eq!(message.value, br#"{"a":1}"#);
        assert_eq!(message.key, Some((true, "k".to_owned())));
        let binary: serde_json::Value = serde_json::from_str(
            r#"{"delivery_id": "t/0/2/1", "value_base64": "AAE=", "key_base64": "/w=="}"#,
        )
        .unwrap();
        let message = Message::from_json(&binary).unwrap();
        assert_eq!(message.value, vec![0, 1]);
        assert_eq!(message.key, Some((false, "/w==".to_owned())));
    }
}
