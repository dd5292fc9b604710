//! The group operations on [`Engine`]: join, heartbeat, leave, fetch as a member, commit,
//! describe (with lag), list and reset.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::engine::Engine;
use crate::error::{FetchError, GroupError};
use crate::group::assignment::TopicPartition;
use crate::group::{
    lock, Group, Member, GROUP_TOPICS_MAX, MEMBERS_MAX, SESSION_TIMEOUT_DEFAULT,
    SESSION_TIMEOUT_MAX, SESSION_TIMEOUT_MIN,
};
use crate::names::validate_group_name;
use crate::records::StoredRecord;

/// Where a member starts in a partition the group has no committed offset for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// The first stored offset.
    Earliest,
    /// The high watermark at the time (Kafka's `auto.offset.reset` default).
    #[default]
    Latest,
}

/// A join.
#[derive(Debug, Clone, Default)]
pub struct JoinRequest {
    /// Rejoin as this member (keeps its partitions); `None` joins as a new member.
    pub member_id: Option<String>,
    /// The topics to consume; every member of a group consumes the same ones.
    pub topics: Vec<String>,
    /// Removed from the group after this long without a heartbeat or fetch.
    pub session_timeout: Option<Duration>,
    /// Where to start without a committed offset.
    pub start: StartFrom,
}

/// A member's view of its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The member's id.
    pub member_id: String,
    /// The group's generation; commits must carry it.
    pub generation: u64,
    /// The partitions this member owns.
    pub assignment: Vec<TopicPartition>,
}

/// A record delivered to a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    /// Its topic.
    pub topic: String,
    /// Its partition.
    pub partition: u32,
    /// The record.
    pub record: StoredRecord,
}

/// What a member's fetch returns.
#[derive(Debug, Clone)]
pub struct GroupFetch {
    /// The member's view after the fetch (it counts as a heartbeat).
    pub membership: Membership,
    /// Records from the member's partitions, at most the number asked for.
    pub records: Vec<GroupRecord>,
}

/// A group as described to operators.
#[derive(Debug, Clone)]
pub struct GroupDescription {
    /// The group's name.
    pub name: String,
    /// Its generation.
    pub generation: u64,
    /// The topics it consumes (empty without members).
    pub topics: Vec<String>,
    /// Its members.
    pub members: Vec<MemberDescription>,
    /// Committed offset and lag per partition.
    pub partitions: Vec<PartitionLag>,
}

/// One member, described.
#[derive(Debug, Clone)]
pub struct MemberDescription {
    /// Its id.
    pub member_id: String,
    /// Its partitions.
    pub assignment: Vec<TopicPartition>,
    /// Milliseconds since its last heartbeat or fetch.
    pub idle_ms: u64,
}

/// Committed offset and lag of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The committed offset (next to read), if any.
    pub committed: Option<u64>,
    /// The partition's high watermark.
    pub high_watermark: u64,
    /// High watermark minus committed offset (minus log start when nothing is committed), as
    /// kafka_exporter's `kafka_consumergroup_lag`.
    pub lag: u64,
}

/// Where a reset moves a group's committed offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    /// Each partition's log start.
    Earliest,
    /// Each partition's high watermark.
    Latest,
    /// This offset, clamped to each partition's range.
    Offset(u64),
    /// The first record at or after this time (ms), or the high watermark.
    Timestamp(i64),
}

impl Engine {
    /// Every partition of `topics` that exists now.
    fn partitions_of(&self, topics: &BTreeSet<String>) -> BTreeSet<TopicPartition> {
        topics
            .iter()
            .filter_map(|topic| self.topic(topic))
            .flat_map(|topic| {
                (0..topic.partition_count())
                    .map(move |partition| TopicPartition { topic: topic.name.clone(), partition })
            })
            .collect()
    }

    /// The group named `name`, which must exist.
    fn existing_group(
        &self,
        name: &str,
    ) -> Result<std::sync::Arc<std::sync::Mutex<Group>>, GroupError> {
        self.inner.groups.get(name, false).ok_or_else(|| GroupError::UnknownGroup(name.to_owned()))
    }

    /// Expires dead members and rebalances if any left.
    /// Expires dead members, and rebalances if any left or if the group's topics no longer
    /// have the partitions it assigned (a topic deleted, or re-created with fewer or more).
    fn refresh(&self, group: &mut Group) {
        let expired = group.expire(Instant::now());
        let partitions = self.partitions_of(&group.topics);
        let assigned: std::collections::BTreeSet<&TopicPartition> =
            group.assignment.values().flatten().collect();
        let changed = !group.members.is_empty() && assigned != partitions.iter().collect();
        if expired || changed {
            group.rebalance(&partitions);
        }
    }

    /// Joins `group` (created if new) as a new member, or rejoins as `request.member_id`.
    ///
    /// # Errors
    /// A bad group name or session timeout, unknown topics, topics that differ from the
    /// group's, an unknown member id on rejoin, or a full group.
    pub fn join_group(&self, name: &str, request: JoinRequest) -> Result<Membership, GroupError> {
        validate_group_name(name)?;
        let session_timeout = request.session_timeout.unwrap_or(SESSION_TIMEOUT_DEFAULT);
        if !(SESSION_TIMEOUT_MIN..=SESSION_TIMEOUT_MAX).contains(&session_timeout) {
            return Err(GroupError::Invalid(format!(
                "session timeout is {} ms; allowed is {}..={} ms",
                session_timeout.as_millis(),
                SESSION_TIMEOUT_MIN.as_millis(),
                SESSION_TIMEOUT_MAX.as_millis()
            )));
        }
        let topics: BTreeSet<String> = request.topics.iter().cloned().collect();
        if topics.is_empty() || topics.len() > GROUP_TOPICS_MAX {
            return Err(GroupError::Invalid(format!(
                "a join names {} topics; allowed is 1..={GROUP_TOPICS_MAX}",
                topics.len()
            )));
        }
        if let Some(missing) = topics.iter().find(|topic| self.topic(topic).is_none()) {
            return Err(GroupError::UnknownTopic(missing.clone()));
        }
        let group = self.inner.groups.get(name, true).expect("created on demand");
        let mut group = lock(&group);
        self.refresh(&mut group);
        if !group.members.is_empty() && group.topics != topics {
            return Err(GroupError::TopicsMismatch {
                group: name.to_owned(),
                expected: group.topics.iter().cloned().collect(),
                given: topics.into_iter().collect(),
            });
        }
        if let Some(member_id) = request.member_id {
            let member = group.members.get_mut(&member_id).ok_or_else(|| {
                GroupError::UnknownMember { group: name.to_owned(), member: member_id.clone() }
            })?;
            member.last_seen = Instant::now();
            member.session_timeout = session_timeout;
            return Ok(group.membership(&member_id));
        }
        if group.members.len() >= MEMBERS_MAX {
            return Err(GroupError::Full { group: name.to_owned(), members_max: MEMBERS_MAX });
        }
        let member_id = self.inner.groups.new_member_id(name);
        let member = Member {
            last_seen: Instant::now(),
            session_timeout,
            start: request.start,
            positions: Default::default(),
        };
        group.members.insert(member_id.clone(), member);
        group.topics = topics;
        let partitions = self.partitions_of(&group.topics);
        group.rebalance(&partitions);
        tracing::info!(group = name, member = %member_id, generation = group.generation, "member joined");
        Ok(group.membership(&member_id))
    }

    /// Keeps a member alive and returns its current view.
    ///
    /// # Errors
    /// [`GroupError::UnknownGroup`], [`GroupError::UnknownMember`] (rejoin).
    pub fn heartbeat(&self, name: &str, member_id: &str) -> Result<Membership, GroupError> {
        let group = self.existing_group(name)?;
        let mut group = lock(&group);
        self.refresh(&mut group);
        let member =
            group.members.get_mut(member_id).ok_or_else(|| unknown_member(name, member_id))?;
        member.last_seen = Instant::now();
        Ok(group.membership(member_id))
    }

    /// Removes a member; its partitions go to the others at once.
    ///
    /// # Errors
    /// [`GroupError::UnknownGroup`], [`GroupError::UnknownMember`].
    pub fn leave_group(&self, name: &str, member_id: &str) -> Result<(), GroupError> {
        let group = self.existing_group(name)?;
        let mut group = lock(&group);
        group.members.remove(member_id).ok_or_else(|| unknown_member(name, member_id))?;
        let partitions = self.partitions_of(&group.topics);
        group.rebalance(&partitions);
        tracing::info!(
            group = name,
            member = member_id,
            generation = group.generation,
            "member left"
        );
        Ok(())
    }

    /// Delivers up to `max_records` records from the member's partitions, from its positions
    /// (the committed offsets at first), waiting up to `wait` for some to arrive. Counts as a
    /// heartbeat. Positions advance past what is returned; commit to make them durable.
    ///
    /// # Errors
    /// [`GroupError::UnknownGroup`], [`GroupError::UnknownMember`], storage failures.
    pub async fn fetch_group(
        &self,
        name: &str,
        member_id: &str,
        max_records: usize,
        max_bytes: u32,
        wait: Duration,
    ) -> Result<GroupFetch, GroupError> {
        let deadline = Instant::now() + wait.min(crate::FETCH_WAIT_MAX);
        let mut appended = self.inner.appended.subscribe();
        loop {
            appended.borrow_and_update();
            let (membership, plan) = self.plan_fetch(name, member_id)?;
            let mut records = Vec::new();
            // `max_bytes` bounds the whole answer, not each partition's share of it.
            let mut bytes_left = max_bytes;
            for (partition, position) in plan {
                if records.len() >= max_records || bytes_left == 0 {
                    break;
                }
                let budget = max_records - records.len();
                let read = self.read_for_member(&partition, position, bytes_left, budget).await?;
                let read_bytes: usize = read.iter().map(|record| record.record.size_bytes()).sum();
                bytes_left =
                    bytes_left.saturating_sub(u32::try_from(read_bytes).unwrap_or(u32::MAX));
                self.advance(name, member_id, membership.generation, &partition, &read);
                records.extend(read);
            }
            if !records.is_empty() || Instant::now() >= deadline {
                let membership = self.heartbeat(name, member_id).unwrap_or(membership);
                return Ok(GroupFetch { membership, records });
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let _ = tokio::time::timeout(remaining, appended.changed()).await;
        }
    }

    /// The member's partitions and where it reads each, resolving new positions.
    fn plan_fetch(
        &self,
        name: &str,
        member_id: &str,
    ) -> Result<(Membership, Vec<(TopicPartition, u64)>), GroupError> {
        let group = self.existing_group(name)?;
        let mut group = lock(&group);
        self.refresh(&mut group);
        // Borrow the fields apart so neither the assignment nor the commits are copied.
        let Group { members, assignment, committed, .. } = &mut *group;
        let member = members.get_mut(member_id).ok_or_else(|| unknown_member(name, member_id))?;
        member.last_seen = Instant::now();
        let mut plan = Vec::new();
        for partition in assignment.get(member_id).into_iter().flatten().cloned() {
            let position = match member.positions.get(&partition) {
                Some(position) => *position,
                None => {
                    let start = committed.get(&partition).map(|committed| committed.offset);
                    let position =
                        start.unwrap_or_else(|| self.start_offset(&partition, member.start));
                    member.positions.insert(partition.clone(), position);
                    position
                }
            };
            plan.push((partition, position));
        }
        Ok((group.membership(member_id), plan))
    }

    fn start_offset(&self, partition: &TopicPartition, start: StartFrom) -> u64 {
        let Some(topic) = self.topic(&partition.topic) else { return 0 };
        let Some(handle) = topic.partitions.get(partition.partition as usize) else { return 0 };
        let log = &handle.log;
        match start {
            StartFrom::Earliest => log.log_start_offset(),
            StartFrom::Latest => log.high_watermark(),
        }
    }

    async fn read_for_member(
        &self,
        partition: &TopicPartition,
        position: u64,
        max_bytes: u32,
        budget: usize,
    ) -> Result<Vec<GroupRecord>, GroupError> {
        let mut start = position;
        let fetched = match self
            .fetch(&partition.topic, partition.partition, position, max_bytes, Duration::ZERO)
            .await
        {
            Ok(fetched) => fetched,
            // The position is outside the partition: retention passed it, or the topic was
            // deleted and created again. Carry on from the log start (Kafka's "earliest").
            Err(FetchError::Read {
                source:
                    sluice_log::ReadError::OffsetOutOfRange { log_start_offset, high_watermark, .. },
                ..
            }) => {
                tracing::warn!(
                    topic = %partition.topic, partition = partition.partition, position, log_start_offset, high_watermark,
                    "group position out of range; continuing from the log start"
                );
                start = log_start_offset;
                self.fetch(&partition.topic, partition.partition, start, max_bytes, Duration::ZERO)
                    .await?
            }
            // Deleted or shrunk since the plan was made: the next refresh rebalances.
            Err(FetchError::UnknownTopic(_) | FetchError::UnknownPartition { .. }) => {
                return Ok(Vec::new())
            }
            Err(error) => return Err(error.into()),
        };
        let records =
            fetched.records_from(start).map_err(|error| GroupError::Storage(error.to_string()))?;
        Ok(records
            .into_iter()
            .take(budget)
            .map(|record| GroupRecord {
                topic: partition.topic.clone(),
                partition: partition.partition,
                record,
            })
            .collect())
    }

    /// Moves the member's position past `read`, if it still owns the partition.
    fn advance(
        &self,
        name: &str,
        member_id: &str,
        generation: u64,
        partition: &TopicPartition,
        read: &[GroupRecord],
    ) {
        let Some(last) = read.last() else { return };
        let Some(group) = self.inner.groups.get(name, false) else { return };
        let mut group = lock(&group);
        if group.generation != generation {
            return;
        }
        if let Some(member) = group.members.get_mut(member_id) {
            if member.positions.contains_key(partition) {
                member.positions.insert(partition.clone(), last.record.offset + 1);
            }
        }
    }

    /// Durably commits offsets (the next offset to read) for the member's partitions; with
    /// `None`, commits the positions its fetches reached. Blocks on the fsync.
    ///
    /// # Errors
    /// [`GroupError::StaleGeneration`] for a generation that is not the group's current one,
    /// [`GroupError::NotAssigned`] for a partition the member does not own,
    /// [`GroupError::UnknownMember`], [`GroupError::UnknownGroup`], [`GroupError::Storage`].
    pub fn commit_group(
        &self,
        name: &str,
        member_id: &str,
        generation: u64,
        offsets: Option<Vec<(TopicPartition, u64)>>,
    ) -> Result<Vec<(TopicPartition, u64)>, GroupError> {
        let group = self.existing_group(name)?;
        let mut group = lock(&group);
        self.refresh(&mut group);
        let member = group.members.get(member_id).ok_or_else(|| unknown_member(name, member_id))?;
        if generation != group.generation {
            return Err(GroupError::StaleGeneration {
                group: name.to_owned(),
                given: generation,
                current: group.generation,
            });
        }
        let offsets = offsets.unwrap_or_else(|| {
            member
                .positions
                .iter()
                .map(|(partition, offset)| (partition.clone(), *offset))
                .collect()
        });
        let owned = group.assignment.get(member_id).cloned().unwrap_or_default();
        if let Some((partition, _)) =
            offsets.iter().find(|(partition, _)| !owned.contains(partition))
        {
            return Err(GroupError::NotAssigned {
                group: name.to_owned(),
                member: member_id.to_owned(),
                topic: partition.topic.clone(),
                partition: partition.partition,
            });
        }
        if offsets.is_empty() {
            return Ok(offsets);
        }
        self.store_commits(name, &mut group, generation, &offsets)?;
        Ok(offsets)
    }

    fn store_commits(
        &self,
        name: &str,
        group: &mut Group,
        generation: u64,
        offsets: &[(TopicPartition, u64)],
    ) -> Result<(), GroupError> {
        let committed = self
            .inner
            .groups
            .offsets_log
            .commit(name, generation, offsets)
            .map_err(|error| GroupError::Storage(error.to_string()))?;
        for ((partition, _), committed) in offsets.iter().zip(committed) {
            group.committed.insert(partition.clone(), committed);
        }
        Ok(())
    }

    /// The group's members, assignment, committed offsets and lag.
    ///
    /// # Errors
    /// [`GroupError::UnknownGroup`].
    pub fn describe_group(&self, name: &str) -> Result<GroupDescription, GroupError> {
        let group = self.existing_group(name)?;
        let mut group = lock(&group);
        self.refresh(&mut group);
        let now = Instant::now();
        let members = group
            .members
            .iter()
            .map(|(member_id, member)| MemberDescription {
                member_id: member_id.clone(),
                assignment: group
                    .assignment
                    .get(member_id)
                    .map(|held| held.iter().cloned().collect())
                    .unwrap_or_default(),
                idle_ms: u64::try_from(now.duration_since(member.last_seen).as_millis())
                    .unwrap_or(u64::MAX),
            })
            .collect();
        let mut partitions: BTreeSet<TopicPartition> = group.committed.keys().cloned().collect();
        partitions.extend(self.partitions_of(&group.topics));
        let partitions = partitions
            .into_iter()
            .filter_map(|partition| {
                let topic = self.topic(&partition.topic)?;
                let log = &topic.partitions.get(partition.partition as usize)?.log;
                let committed = group.committed.get(&partition).map(|committed| committed.offset);
                let high_watermark = log.high_watermark();
                let from = committed.unwrap_or_else(|| log.log_start_offset());
                Some(PartitionLag {
                    lag: high_watermark.saturating_sub(from),
                    topic: partition.topic,
                    partition: partition.partition,
                    committed,
                    high_watermark,
                })
            })
            .collect();
        Ok(GroupDescription {
            name: name.to_owned(),
            generation: group.generation,
            topics: group.topics.iter().cloned().collect(),
            members,
            partitions,
        })
    }

    /// Every group's name.
    pub fn list_groups(&self) -> Vec<String> {
        self.inner.groups.names()
    }

    /// Moves a group's committed offsets (for `topics`, or every topic it has committed for).
    /// Refused while the group has members, as in Kafka. Blocks on the fsync.
    ///
    /// # Errors
    /// [`GroupError::GroupActive`], [`GroupError::UnknownTopic`], [`GroupError::Storage`].
    pub fn reset_group(
        &self,
        name: &str,
        topics: Option<Vec<String>>,
        to: ResetTo,
    ) -> Result<Vec<(TopicPartition, u64)>, GroupError> {
        validate_group_name(name)?;
        let group = self.inner.groups.get(name, true).expect("created on demand");
        let mut group = lock(&group);
        self.refresh(&mut group);
        if !group.members.is_empty() {
            return Err(GroupError::GroupActive {
                group: name.to_owned(),
                members: group.members.len(),
            });
        }
        let topics: BTreeSet<String> = match topics {
            Some(topics) => topics.into_iter().collect(),
            None => group.committed.keys().map(|partition| partition.topic.clone()).collect(),
        };
        if let Some(missing) = topics.iter().find(|topic| self.topic(topic).is_none()) {
            return Err(GroupError::UnknownTopic(missing.clone()));
        }
        let mut offsets = Vec::new();
        for partition in self.partitions_of(&topics) {
            offsets.push((partition.clone(), self.reset_offset(&partition, to)?));
        }
        let generation = group.generation;
        self.store_commits(name, &mut group, generation, &offsets)?;
        Ok(offsets)
    }

    fn reset_offset(&self, partition: &TopicPartition, to: ResetTo) -> Result<u64, GroupError> {
        let topic = self
            .topic(&partition.topic)
            .ok_or_else(|| GroupError::UnknownTopic(partition.topic.clone()))?;
        let handle = topic.partitions.get(partition.partition as usize).ok_or_else(|| {
            GroupError::Fetch(crate::error::FetchError::UnknownPartition {
                topic: partition.topic.clone(),
                partition: partition.partition,
                partitions: topic.partition_count(),
            })
        })?;
        let log = &handle.log;
        let (start, end) = (log.log_start_offset(), log.high_watermark());
        Ok(match to {
            ResetTo::Earliest => start,
            ResetTo::Latest => end,
            ResetTo::Offset(offset) => offset.clamp(start, end),
            ResetTo::Timestamp(timestamp_ms) => log
                .offset_for_timestamp(timestamp_ms)
                .map_err(|error| GroupError::Storage(error.to_string()))?
                .unwrap_or(end),
        })
    }
}

fn unknown_member(group: &str, member: &str) -> GroupError {
    GroupError::UnknownMember { group: group.to_owned(), member: member.to_owned() }
}
