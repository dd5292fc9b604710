//! Server-side partition assignment for stream-mode groups: balanced (member partition counts
//! differ by at most one) and sticky (a partition moves only if its owner left or holds more
//! than its share), so a member joining or leaving moves as few partitions as possible.

use std::collections::{BTreeMap, BTreeSet};

/// A partition of a topic.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct TopicPartition {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
}

/// Assigns every partition to exactly one member. `previous` maps partitions to their former
/// owners. Members and partitions are taken in sorted order, so the result is deterministic.
pub fn assign(
    partitions: &BTreeSet<TopicPartition>,
    members: &BTreeSet<String>,
    previous: &BTreeMap<TopicPartition, String>,
) -> BTreeMap<String, BTreeSet<TopicPartition>> {
    let mut assignment: BTreeMap<String, BTreeSet<TopicPartition>> =
        members.iter().map(|member| (member.clone(), BTreeSet::new())).collect();
    if members.is_empty() {
        return assignment;
    }
    let base = partitions.len() / members.len();
    let mut extra_slots = partitions.len() % members.len();
    // 1. Members keep what they had, up to base + 1.
    for partition in partitions {
        if let Some(kept) = previous.get(partition).and_then(|owner| assignment.get_mut(owner)) {
            if kept.len() < base + 1 {
                kept.insert(partition.clone());
            }
        }
    }
    // 2. Only `extra_slots` members may hold base + 1; the rest give back their last ones.
    for kept in assignment.values_mut() {
        if kept.len() == base + 1 && extra_slots > 0 {
            extra_slots -= 1;
        } else {
            while kept.len() > base {
                let last = kept.iter().next_back().cloned().expect("non-empty above base");
                kept.remove(&last);
            }
        }
    }
    // 3. Everything unowned goes to the members with the fewest, up to their quota.
    let owned: BTreeSet<&TopicPartition> = assignment.values().flatten().collect();
    let mut unowned: Vec<TopicPartition> =
        partitions.iter().filter(|partition| !owned.contains(partition)).cloned().collect();
    unowned.sort();
    for partition in unowned {
        let (_, fewest) = assignment
            .iter_mut()
            .filter(|(_, held)| held.len() < base || (held.len() == base && extra_slots > 0))
            .min_by_key(|(member, held)| (held.len(), (*member).clone()))
            .expect("quotas add up to the partition count");
        if fewest.len() == base {
            extra_slots -= 1;
        }
        fewest.insert(partition);
    }
    assignment
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn partitions(topics: &[(&str, u32)]) -> BTreeSet<TopicPartition> {
        topics
            .iter()
            .flat_map(|(topic, count)| {
                (0..*count)
                    .map(|partition| TopicPartition { topic: (*topic).to_owned(), partition })
            })
            .collect()
    }

    fn owners(
        assignment: &BTreeMap<String, BTreeSet<TopicPartition>>,
    ) -> BTreeMap<TopicPartition, String> {
        assignment
            .iter()
            .flat_map(|(member, held)| {
                held.iter().map(|partition| (partition.clone(), member.clone()))
            })
            .collect()
    }

    #[test]
    fn a_joining_member_takes_only_its_share() {
        let all = partitions(&[("a", 6)]);
        let one: BTreeSet<String> = ["m1".to_owned()].into();
        let first = assign(&all, &one, &BTreeMap::new());
        let two: BTreeSet<String> = ["m1".to_owned(), "m2".to_owned()].into();
        let second = assign(&all, &two, &owners(&first));
        assert_eq!(second["m1"].len(), 3);
        assert_eq!(second["m2"].len(), 3);
        assert!(second["m1"].is_subset(&first["m1"]), "m1 keeps three of its six");
    }

    proptest! {
        #[test]
        fn every_partition_once_balanced_and_sticky(
            counts in prop::collection::vec(1u32..8, 1..4),
            before in prop::collection::btree_set("m[0-9]", 1..6),
            after in prop::collection::btree_set("m[0-9]", 1..6),
        ) {
            let topics: Vec<(String, u32)> = counts.iter().enumerate().map(|(index, count)| (format!("t{index}"), *count)).collect();
            let topic_refs: Vec<(&str, u32)> = topics.iter().map(|(name, count)| (name.as_str(), *count)).collect();
            let all = partitions(&topic_refs);
            let first = assign(&all, &before, &BTreeMap::new());
            let second = assign(&all, &after, &owners(&first));
            for assignment in [&first, &second] {
                let held: Vec<&TopicPartition> = assignment.values().flatten().collect();
                prop_assert_eq!(held.len(), all.len());
                prop_assert_eq!(held.iter().copied().cloned().collect::<BTreeSet<_>>(), all.clone());
                let sizes: Vec<usize> = assignment.values().map(BTreeSet::len).collect();
                prop_assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
            }
            // Stickiness: a partition whose owner stayed moves only if that owner had more than
            // its new share.
            let share_max = all.len().div_ceil(after.len());
            let previous = owners(&first);
            let now = owners(&second);
            for (partition, owner) in &previous {
                if after.contains(owner) && now[partition] != *owner {
                    prop_assert!(first[owner].len() > share_max - 1, "{partition:?} moved off {owner}");
                }
            }
        }
    }
}
