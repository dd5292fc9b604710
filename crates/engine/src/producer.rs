//! Kafka-style producer idempotence: a batch that carries a producer id (≥ 0), an epoch and a
//! base sequence is checked against what that producer last appended to the partition.
//!
//! Rules (as Kafka's, per partition and producer id):
//! - an epoch lower than the newest seen is fenced (a newer instance of the producer exists);
//! - a newer epoch must start at sequence 0;
//! - within an epoch, a batch equal to one of the last [`BATCHES_REMEMBERED`] batches is a
//!   duplicate: nothing is appended and the original offsets are returned;
//! - otherwise the base sequence must follow the last one (wrapping past `i32::MAX` to 0).
//! - a producer the partition does not know may start at any sequence (its state may have aged
//!   out, as Kafka's does after `producer.id.expiration.ms`).
//!
//! The state is derived: at start-up it is rebuilt from the batches inside the topic's dedup
//! window, so a retry within the window is recognised across a restart too.

use std::collections::{BTreeMap, VecDeque};

use sluice_format::BatchHeader;

/// Recent batches remembered per producer, as Kafka's five in-flight requests.
pub const BATCHES_REMEMBERED: usize = 5;
/// Most producers remembered per partition; past it the least recently seen is forgotten.
pub const PRODUCERS_MAX: usize = 100_000;

/// One appended batch of a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Appended {
    base_sequence: i32,
    last_sequence: i32,
    base_offset: u64,
    last_offset: u64,
}

#[derive(Debug, Default)]
struct ProducerState {
    epoch: i16,
    recent: VecDeque<Appended>,
    last_seen_offset: u64,
}

/// What the check says about a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Append it.
    Append,
    /// Already appended at these offsets (base, last).
    Duplicate {
        /// The original batch's first offset.
        base_offset: u64,
        /// The original batch's last offset.
        last_offset: u64,
    },
}

/// Why a batch is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    /// A newer epoch of this producer id has written.
    #[error("producer {producer_id} epoch {epoch} is fenced: epoch {current} has written since")]
    Fenced {
        /// The producer id.
        producer_id: i64,
        /// The batch's epoch.
        epoch: i16,
        /// The newest epoch seen.
        current: i16,
    },
    /// The sequence does not follow on.
    #[error("producer {producer_id} sent sequence {got}; the partition expects {expected}")]
    OutOfOrder {
        /// The producer id.
        producer_id: i64,
        /// The sequence expected.
        expected: i32,
        /// The batch's base sequence.
        got: i32,
    },
}

/// The producers of one partition.
#[derive(Debug, Default)]
pub struct ProducerStates {
    producers: BTreeMap<i64, ProducerState>,
}

fn last_sequence(header: &BatchHeader) -> i32 {
    // Kafka's sequences wrap at i32::MAX back to 0.
    let span = i64::from(header.last_offset_delta);
    i32::try_from((i64::from(header.base_sequence) + span) % (i64::from(i32::MAX) + 1))
        .expect("below i32::MAX")
}

fn next_after(sequence: i32) -> i32 {
    if sequence == i32::MAX {
        0
    } else {
        sequence + 1
    }
}

impl ProducerStates {
    /// Checks a batch before it is appended. Batches without a producer id always pass.
    ///
    /// # Errors
    /// [`SequenceError`] as the module docs say.
    pub fn check(&self, header: &BatchHeader) -> Result<Verdict, SequenceError> {
        if header.producer_id < 0 {
            return Ok(Verdict::Append);
        }
        let producer_id = header.producer_id;
        let Some(state) = self.producers.get(&producer_id) else { return Ok(Verdict::Append) };
        if header.producer_epoch < state.epoch {
            return Err(SequenceError::Fenced {
                producer_id,
                epoch: header.producer_epoch,
                current: state.epoch,
            });
        }
        if header.producer_epoch > state.epoch {
            return match header.base_sequence {
                0 => Ok(Verdict::Append),
                got => Err(SequenceError::OutOfOrder { producer_id, expected: 0, got }),
            };
        }
        let last = last_sequence(header);
        if let Some(original) = state.recent.iter().find(|batch| {
            batch.base_sequence == header.base_sequence && batch.last_sequence == last
        }) {
            return Ok(Verdict::Duplicate {
                base_offset: original.base_offset,
                last_offset: original.last_offset,
            });
        }
        let expected = state
            .recent
            .back()
            .map_or(header.base_sequence, |batch| next_after(batch.last_sequence));
        if header.base_sequence == expected {
            Ok(Verdict::Append)
        } else {
            Err(SequenceError::OutOfOrder { producer_id, expected, got: header.base_sequence })
        }
    }

    /// Records an appended batch (from a produce, or from the log at start-up).
    pub fn record(&mut self, header: &BatchHeader, base_offset: u64) {
        if header.producer_id < 0 {
            return;
        }
        if !self.producers.contains_key(&header.producer_id)
            && self.producers.len() >= PRODUCERS_MAX
        {
            let oldest = self
                .producers
                .iter()
                .min_by_key(|(_, state)| state.last_seen_offset)
                .map(|(id, _)| *id);
            if let Some(oldest) = oldest {
                self.producers.remove(&oldest);
            }
        }
        let state = self.producers.entry(header.producer_id).or_default();
        if header.producer_epoch != state.epoch {
            state.epoch = header.producer_epoch;
            state.recent.clear();
        }
        let last_offset = base_offset + u64::try_from(header.last_offset_delta).unwrap_or(0);
        state.recent.push_back(Appended {
            base_sequence: header.base_sequence,
            last_sequence: last_sequence(header),
            base_offset,
            last_offset,
        });
        while state.recent.len() > BATCHES_REMEMBERED {
            state.recent.pop_front();
        }
        state.last_seen_offset = last_offset;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(
        producer_id: i64,
        epoch: i16,
        base_sequence: i32,
        last_offset_delta: i32,
    ) -> BatchHeader {
        let mut builder =
            sluice_format::BatchBuilder::new(0).producer(producer_id, epoch, base_sequence);
        for _ in 0..=last_offset_delta {
            builder.push(&sluice_format::NewRecord {
                key: None,
                value: None,
                headers: &[],
                timestamp_ms: 0,
            });
        }
        BatchHeader::parse(&builder.build()).unwrap()
    }

    #[test]
    fn sequences_wrap_past_i32_max_to_zero() {
        // Kafka producers wrap their sequence; the check must follow them across the wrap.
        let mut states = ProducerStates::default();
        let near_end = header(1, 0, i32::MAX - 1, 1);
        assert_eq!(last_sequence(&near_end), i32::MAX);
        states.record(&near_end, 0);
        assert_eq!(states.check(&header(1, 0, 0, 0)), Ok(Verdict::Append));
        assert!(states.check(&header(1, 0, 1, 0)).is_err());
        let across = header(1, 0, i32::MAX, 1);
        assert_eq!(last_sequence(&across), 0);
    }
}
