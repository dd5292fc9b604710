//! Consumer groups in stream mode: members join with a set of topics, each partition is
//! assigned to exactly one member by the server, offsets are committed durably, and the group
//! rebalances when members join, leave or time out.
//!
//! Protocol decisions (see `docs/http-api.md`):
//! - Assignment is done by the server at once when membership changes, sticky and balanced
//!   (`assignment.rs`); every change bumps the group's generation. Members learn the new
//!   generation and assignment from their next heartbeat or fetch.
//! - A commit must carry the current generation and name only partitions assigned to the member;
//!   otherwise it is refused. So a member that lost a partition cannot overwrite the new owner's
//!   progress (records may be delivered twice around a rebalance: at-least-once).
//! - Members of one group consume the same topics; a join with a different set is refused while
//!   the group has members.
//! - Membership is in memory; after a restart members rejoin (their heartbeats get "unknown
//!   member"). Committed offsets are durable in `__consumer_offsets`.
//! - Each group has its own lock, held across the fsync of its commits, so commits of different
//!   groups share fsyncs through the log's group commit.

pub mod assignment;
pub mod offsets;
mod ops;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use assignment::{assign, TopicPartition};
use offsets::{Committed, OffsetsLog};

pub use ops::{
    GroupDescription, GroupFetch, GroupRecord, JoinRequest, MemberDescription, Membership,
    PartitionLag, ResetTo, StartFrom,
};

/// Shortest session timeout a member may ask for.
pub const SESSION_TIMEOUT_MIN: Duration = Duration::from_secs(1);
/// Longest session timeout a member may ask for.
pub const SESSION_TIMEOUT_MAX: Duration = Duration::from_secs(300);
/// Session timeout when a member does not ask for one (NATS and Kafka clients use 30-45 s).
pub const SESSION_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Most members one group may have.
pub const MEMBERS_MAX: usize = 1000;
/// Most topics one group may consume.
pub const GROUP_TOPICS_MAX: usize = 100;

#[derive(Debug)]
pub(crate) struct Member {
    last_seen: Instant,
    session_timeout: Duration,
    start: StartFrom,
    /// Next offset to deliver per owned partition, once known.
    positions: BTreeMap<TopicPartition, u64>,
}

/// One group's state.
#[derive(Debug, Default)]
pub(crate) struct Group {
    topics: BTreeSet<String>,
    generation: u64,
    members: BTreeMap<String, Member>,
    assignment: BTreeMap<String, BTreeSet<TopicPartition>>,
    committed: BTreeMap<TopicPartition, Committed>,
}

impl Group {
    fn membership(&self, member_id: &str) -> Membership {
        Membership {
            member_id: member_id.to_owned(),
            generation: self.generation,
            assignment: self
                .assignment
                .get(member_id)
                .map(|held| held.iter().cloned().collect())
                .unwrap_or_default(),
        }
    }

    /// Removes members whose session expired; returns whether any was removed.
    fn expire(&mut self, now: Instant) -> bool {
        let before = self.members.len();
        self.members.retain(|member_id, member| {
            let alive = now.duration_since(member.last_seen) <= member.session_timeout;
            if !alive {
                tracing::info!(member = %member_id, "member session expired");
            }
            alive
        });
        before != self.members.len()
    }

    /// Reassigns the group's partitions to its members and bumps the generation.
    fn rebalance(&mut self, partitions: &BTreeSet<TopicPartition>) {
        let previous: BTreeMap<TopicPartition, String> = self
            .assignment
            .iter()
            .flat_map(|(member, held)| {
                held.iter().map(|partition| (partition.clone(), member.clone()))
            })
            .collect();
        let members: BTreeSet<String> = self.members.keys().cloned().collect();
        self.assignment = assign(partitions, &members, &previous);
        for (member_id, member) in &mut self.members {
            let held = &self.assignment[member_id];
            member.positions.retain(|partition, _| held.contains(partition));
        }
        if self.members.is_empty() {
            self.topics.clear();
        }
        self.generation += 1;
    }
}

/// Every group, each behind its own lock, and the offsets log.
#[derive(Debug)]
pub(crate) struct Groups {
    pub offsets_log: OffsetsLog,
    groups: Mutex<BTreeMap<String, Arc<Mutex<Group>>>>,
    member_counter: AtomicU64,
}

impl Groups {
    pub fn new(offsets_log: OffsetsLog, committed: offsets::CommittedOffsets) -> Self {
        let groups = committed
            .into_iter()
            .map(|(name, committed)| {
                (name, Arc::new(Mutex::new(Group { committed, ..Group::default() })))
            })
            .collect();
        Self { offsets_log, groups: Mutex::new(groups), member_counter: AtomicU64::new(0) }
    }

    /// The group, created empty if `create` and missing.
    pub fn get(&self, name: &str, create: bool) -> Option<Arc<Mutex<Group>>> {
        let mut groups = lock(&self.groups);
        if create {
            return Some(Arc::clone(groups.entry(name.to_owned()).or_default()));
        }
        groups.get(name).cloned()
    }

    /// Every group's name.
    pub fn names(&self) -> Vec<String> {
        lock(&self.groups).keys().cloned().collect()
    }

    /// A new member id, unique in this process.
    pub fn new_member_id(&self, group: &str) -> String {
        let counter = self.member_counter.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{group}-{}-{counter}", std::process::id())
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
