//! `sluice consume TOPIC --group G`: consumes as one member of a consumer group (`docs/http-api.md`,
//! "Consumer groups"). The server assigns the member its share of the topic's partitions; the
//! command joins, then loops: fetch from its partitions, print each record (the lines of
//! [`crate::consume_cmd`]), commit.
//!
//! Invariants:
//! - Only printed records are committed. A batch is committed by generation alone (the server
//!   commits the positions the member's fetches reached, and every fetched record was printed),
//!   except when `--max` stops within a batch: then by explicit offsets, one past the last printed
//!   record of each partition printed since the last commit.
//! - A commit refused because the group rebalanced (stale generation) is retried after the next
//!   fetch, which brings the new generation. Records of a partition that moved meanwhile are
//!   printed again by its new owner: delivery is at-least-once.
//! - A member the server no longer knows (expired session, restarted server) joins again, once in
//!   a row, and continues; what it printed but had not committed is delivered again.
//! - The member leaves the group on every way out, errors included, so its partitions move on at
//!   once rather than after the session timeout. Ctrl-C and SIGTERM stop the loop between requests.
//!
//! There is no separate heartbeat: every fetch is one, and fetches wait at most 1 s. A reader that
//! stops reading stdout for longer than the session timeout makes the member expire.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::cli::{ConsumeArgs, StartPosition};
use crate::client::{path_segment, Client, ClientError};
use crate::consume_cmd::{wait_ms, FetchedRecord, Output};
use crate::group_cmd::{group_path, TopicPartition};
use crate::stop_signal::StopSignal;

/// Without `--follow`, the group has caught up when a fetch waiting this long finds nothing.
const CAUGHT_UP_WAIT_MS: u64 = 500;

/// Most times the commit before exiting follows a rebalance before giving up.
const EXIT_COMMIT_ATTEMPTS_MAX: u32 = 3;

/// Error codes of the group endpoints that the loop handles rather than reports.
const UNKNOWN_GROUP: u64 = 1009;
const UNKNOWN_MEMBER: u64 = 1010;
const STALE_GENERATION: u64 = 1011;
const NOT_ASSIGNED: u64 = 1012;

/// A join's or heartbeat's answer.
#[derive(Debug, Deserialize)]
struct Membership {
    member_id: String,
    generation: u64,
    assignment: Vec<TopicPartition>,
}

/// A member fetch's answer.
#[derive(Debug, Deserialize)]
struct MemberFetch {
    records: Vec<MemberRecord>,
    generation: u64,
    assignment: Vec<TopicPartition>,
}

/// A record as a member fetch returns it: a topic fetch's record with its topic and partition.
#[derive(Debug, Deserialize)]
struct MemberRecord {
    topic: String,
    partition: u32,
    #[serde(flatten)]
    record: FetchedRecord,
}

#[derive(Debug, Serialize)]
struct JoinBody<'a> {
    topics: [&'a str; 1],
    from: &'a str,
}

#[derive(Debug, Serialize)]
struct CommitBody<'a> {
    generation: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    offsets: Option<Vec<CommitOffset<'a>>>,
}

#[derive(Debug, Serialize)]
struct CommitOffset<'a> {
    topic: &'a str,
    partition: u32,
    /// The next offset to read.
    offset: u64,
}

/// Consumes `args.topic` from `server` as a member of `group`.
///
/// # Errors
/// `--from` is an offset; the join was refused (unknown topic, bad group name, other topics);
/// a fetch or commit failed other than by a rebalance or one lost membership; stdout failed.
pub fn run(server: &str, args: &ConsumeArgs, group: &str) -> anyhow::Result<()> {
    let from = match args.from {
        StartPosition::Earliest => "earliest",
        StartPosition::Latest => "latest",
        StartPosition::Offset(_) | StartPosition::Time(_) => bail!(
            "--from with --group is earliest or latest; to start the group at an offset or a \
             time, use `sluice group reset {group} --to OFFSET|@TIME` while it has no members"
        ),
    };
    let stop = StopSignal::listen()?;
    let member = Member::join(Client::new(server), group, &args.topic, from)?;
    let mut consumer = Consumer {
        member,
        output: Output::new(args.max),
        uncommitted: BTreeMap::new(),
        stopped_mid_batch: false,
        rejoined: false,
    };
    let consumed = consumer.consume(args, &stop).and_then(|()| consumer.commit_before_exit());
    consumer.member.leave();
    consumed
}

/// The command's membership in its group.
struct Member<'a> {
    client: Client,
    group: &'a str,
    topic: &'a str,
    /// The join's `from`: `earliest` or `latest`.
    from: &'a str,
    id: String,
    /// The generation of the last answer; commits carry it.
    generation: u64,
    /// The partitions the last answer gave this member.
    assignment: Vec<TopicPartition>,
}

impl<'a> Member<'a> {
    fn join(
        client: Client,
        group: &'a str,
        topic: &'a str,
        from: &'a str,
    ) -> Result<Self, ClientError> {
        let mut member = Self {
            client,
            group,
            topic,
            from,
            id: String::new(),
            generation: 0,
            assignment: Vec::new(),
        };
        member.rejoin()?;
        Ok(member)
    }

    /// Joins as a new member.
    fn rejoin(&mut self) -> Result<(), ClientError> {
        let body = JoinBody { topics: [self.topic], from: self.from };
        let body = serde_json::to_string(&body).expect("strings serialize");
        let path = format!("{}/members", group_path(self.group));
        let membership: Membership = self.client.post_json(&path, &body)?;
        self.id = membership.member_id;
        self.update(membership.generation, membership.assignment);
        tracing::debug!(group = self.group, member = %self.id, "consuming from the group");
        Ok(())
    }

    fn update(&mut self, generation: u64, assignment: Vec<TopicPartition>) {
        if generation != self.generation {
            let partitions: Vec<String> = assignment
                .iter()
                .map(|held| format!("{}/{}", held.topic, held.partition))
                .collect();
            tracing::debug!(generation, ?partitions, "assignment");
        }
        self.generation = generation;
        self.assignment = assignment;
    }

    fn path(&self) -> String {
        format!("{}/members/{}", group_path(self.group), path_segment(&self.id))
    }

    /// Up to `max_records` records from the member's partitions, waiting up to `wait_ms` for one.
    fn fetch(&mut self, max_records: u64, wait_ms: u64) -> Result<Vec<MemberRecord>, ClientError> {
        let path = format!("{}/records?max_records={max_records}&wait_ms={wait_ms}", self.path());
        let fetched: MemberFetch = self.client.get_json(&path)?;
        self.update(fetched.generation, fetched.assignment);
        Ok(fetched.records)
    }

    /// Learns the group's current generation and this member's partitions.
    fn heartbeat(&mut self) -> Result<(), ClientError> {
        let membership: Membership =
            self.client.post_json(&format!("{}/heartbeat", self.path()), "{}")?;
        self.update(membership.generation, membership.assignment);
        Ok(())
    }

    /// Commits the positions the member's fetches reached, or `offsets` where it still owns them.
    fn commit(&self, offsets: Option<&BTreeMap<TopicPartition, u64>>) -> Result<(), ClientError> {
        let body = commit_body(self.generation, offsets, &self.assignment);
        let _: serde_json::Value =
            self.client.post_json(&format!("{}/commit", self.path()), &body)?;
        Ok(())
    }

    /// Leaves the group. A failure only delays the partitions' move to the session timeout, so
    /// it is logged rather than returned.
    fn leave(&self) {
        match self.client.delete(&self.path()) {
            Ok(()) => {}
            Err(error) if is_unknown_member(&error) => {}
            Err(error) => tracing::warn!(
                %error,
                "could not leave the group; its partitions move on when the session times out"
            ),
        }
    }
}

/// A commit's body: by generation alone, or naming `offsets` of the partitions in `assignment`
/// (the server refuses the rest; those records go to their new owner anyway).
fn commit_body(
    generation: u64,
    offsets: Option<&BTreeMap<TopicPartition, u64>>,
    assignment: &[TopicPartition],
) -> String {
    let offsets = offsets.map(|offsets| {
        offsets
            .iter()
            .filter(|(partition, _)| assignment.contains(partition))
            .map(|(partition, offset)| CommitOffset {
                topic: &partition.topic,
                partition: partition.partition,
                offset: *offset,
            })
            .collect()
    });
    serde_json::to_string(&CommitBody { generation, offsets }).expect("numbers serialize")
}

/// The consuming loop's state.
struct Consumer<'a> {
    member: Member<'a>,
    output: Output,
    /// One past the last printed record, per partition printed since the last commit.
    uncommitted: BTreeMap<TopicPartition, u64>,
    /// Whether `--max` left records of a fetch unprinted: the server's positions are then past
    /// what was printed, so the last commit names offsets.
    stopped_mid_batch: bool,
    /// Whether the member joined again and has not fetched since: the server forgetting it a
    /// second time in a row is an error, not a loop.
    rejoined: bool,
}

impl Consumer<'_> {
    /// Fetches, prints and commits until caught up (or idle, with `--follow`), `--max` records,
    /// or a stop signal.
    fn consume(&mut self, args: &ConsumeArgs, stop: &StopSignal) -> anyhow::Result<()> {
        let idle_timeout = args.idle_timeout_ms.map(Duration::from_millis);
        let mut last_record_at = Instant::now();
        while !stop.is_received() {
            let wait_ms = if args.follow {
                match wait_ms(false, idle_timeout, last_record_at) {
                    Some(wait_ms) => wait_ms,
                    None => return Ok(()),
                }
            } else {
                CAUGHT_UP_WAIT_MS
            };
            let records = self.fetch(wait_ms)?;
            if records.is_empty() && !args.follow {
                return Ok(());
            }
            if !records.is_empty() {
                last_record_at = Instant::now();
            }
            self.print(&records)?;
            if self.output.is_done() {
                return Ok(());
            }
            self.commit_printed()?;
        }
        Ok(())
    }

    /// Fetches as many records as `--max` still allows, joining again if the server forgot the
    /// member.
    fn fetch(&mut self, wait_ms: u64) -> anyhow::Result<Vec<MemberRecord>> {
        let max_records = self.output.wanted(u64::MAX);
        loop {
            match self.member.fetch(max_records, wait_ms) {
                Ok(records) => {
                    self.rejoined = false;
                    return Ok(records);
                }
                Err(error) if is_unknown_member(&error) => self.rejoin(error)?,
                Err(error) => return Err(error.into()),
            }
        }
    }

    fn rejoin(&mut self, error: ClientError) -> anyhow::Result<()> {
        if self.rejoined {
            return Err(error.into());
        }
        tracing::warn!(
            %error,
            uncommitted_partitions = self.uncommitted.len(),
            "joining the group again; records printed since the last commit will be delivered again"
        );
        self.uncommitted.clear();
        self.member.rejoin()?;
        self.rejoined = true;
        Ok(())
    }

    /// Prints `records`, as many as `--max` allows, and notes them for the next commit.
    fn print(&mut self, records: &[MemberRecord]) -> anyhow::Result<()> {
        for record in records {
            if !self.output.write_record(&record.topic, record.partition, &record.record)? {
                self.stopped_mid_batch = true;
                break;
            }
            let partition =
                TopicPartition { topic: record.topic.clone(), partition: record.partition };
            self.uncommitted.insert(partition, record.record.offset + 1);
        }
        self.output.flush()
    }

    /// Commits what was printed since the last commit, if anything. A refusal because the group
    /// rebalanced is left to the next round, whose fetch brings the new generation.
    fn commit_printed(&mut self) -> anyhow::Result<()> {
        if self.uncommitted.is_empty() {
            return Ok(());
        }
        match self.commit() {
            Ok(()) => Ok(()),
            Err(error) if is_rebalance(&error) => {
                tracing::debug!(%error, "commit refused by a rebalance; retrying after the next fetch");
                Ok(())
            }
            Err(error) if is_unknown_member(&error) => self.rejoin(error),
            Err(error) => Err(error.into()),
        }
    }

    /// Commits what is left before the command exits, following a few rebalances.
    fn commit_before_exit(&mut self) -> anyhow::Result<()> {
        let mut attempts = 1;
        while !self.uncommitted.is_empty() {
            match self.commit() {
                Ok(()) => {}
                Err(error) if is_rebalance(&error) && attempts < EXIT_COMMIT_ATTEMPTS_MAX => {
                    attempts += 1;
                    self.member.heartbeat().context("committing before leaving the group")?;
                }
                Err(error) => {
                    return Err(error).context(
                        "committing before leaving the group (the records printed since the \
                         last commit will be delivered again)",
                    )
                }
            }
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<(), ClientError> {
        let offsets = self.stopped_mid_batch.then_some(&self.uncommitted);
        self.member.commit(offsets)?;
        self.uncommitted.clear();
        Ok(())
    }
}

fn api_code(error: &ClientError) -> Option<u64> {
    match error {
        ClientError::Api { error_code, .. } => Some(*error_code),
        _ => None,
    }
}

/// The group rebalanced since the member's last answer: a fetch or heartbeat catches up.
fn is_rebalance(error: &ClientError) -> bool {
    matches!(api_code(error), Some(STALE_GENERATION | NOT_ASSIGNED))
}

/// The server no longer knows the member (or, after a restart, the group): join again.
fn is_unknown_member(error: &ClientError) -> bool {
    matches!(api_code(error), Some(UNKNOWN_MEMBER | UNKNOWN_GROUP))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::{commit_body, MemberRecord, TopicPartition};

    fn partition(topic: &str, partition: u32) -> TopicPartition {
        TopicPartition { topic: topic.to_owned(), partition }
    }

    #[test]
    fn commits_name_offsets_only_of_partitions_still_owned() {
        assert_eq!(commit_body(7, None, &[]), r#"{"generation":7}"#);
        let printed = BTreeMap::from([(partition("t", 0), 10), (partition("t", 3), 4)]);
        let owned = [partition("t", 0), partition("t", 1)];
        assert_eq!(
            commit_body(8, Some(&printed), &owned),
            r#"{"generation":8,"offsets":[{"topic":"t","partition":0,"offset":10}]}"#
        );
    }

    #[test]
    fn member_records_carry_topic_partition_and_the_fetch_fields() {
        let fetched = r#"{"topic": "t", "partition": 2, "offset": 5, "timestamp": 9,
                          "key": "k", "value_base64": "/w==", "headers": {}}"#;
        let record: MemberRecord = serde_json::from_str(fetched).unwrap();
        assert_eq!((record.topic.as_str(), record.partition), ("t", 2));
        assert_eq!((record.record.offset, record.record.key.as_deref()), (5, Some("k")));
    }
}
