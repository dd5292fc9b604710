//! A queue group's settings, as created and as stored in its journal.

use serde::{Deserialize, Serialize};

/// Most deliveries a queue group may allow per message.
pub const DELIVERIES_MAX_LIMIT: u32 = 1000;
/// Longest ack deadline (ms): a lease longer than this is a lost worker, not a slow one.
pub const ACK_WAIT_MS_MAX: u64 = 12 * 60 * 60 * 1000;
/// Shortest ack deadline (ms).
pub const ACK_WAIT_MS_MIN: u64 = 10;
/// Longest backoff or nack delay (ms): one day.
pub const BACKOFF_MS_MAX: u64 = 24 * 60 * 60 * 1000;
/// Largest `max_in_flight` of a group.
pub const MAX_IN_FLIGHT_LIMIT: u32 = 100_000;
/// Most messages a group keeps between its ack floor and its read position (loaded, waiting
/// behind a key, or waiting for a retry); past it the group stops reading ahead until the
/// oldest settle.
pub const WINDOW_RECORDS_MAX: usize = 100_000;
/// Most record bytes a group keeps loaded in its window.
pub const WINDOW_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Whether messages of one key are delivered one at a time, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// Any message may be delivered as soon as a worker asks: the fastest.
    #[default]
    None,
    /// A message is not delivered while an earlier message of its key in its partition is
    /// leased, waiting to be retried, or parked after going to the dead-letter topic.
    Key,
}

/// Where a new queue group starts reading its topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum QueueStart {
    /// Every stored message (NATS's `DeliverAll`).
    #[default]
    Earliest,
    /// Only messages produced after the group was created (a RabbitMQ queue bound now).
    Latest,
}

/// Everything configurable about a queue group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// The topics the group consumes (1..=100).
    pub topics: Vec<String>,
    /// How long a delivery is leased before it is redelivered (ms).
    pub ack_wait_ms: u64,
    /// Deliveries after which a failing message goes to the dead-letter topic (1..=1000).
    pub deliveries_max: u32,
    /// Delay before the first redelivery (ms).
    pub backoff_initial_ms: u64,
    /// Factor the delay grows by with each further delivery (1.0..=10.0).
    pub backoff_multiplier: f64,
    /// Longest delay between deliveries (ms).
    pub backoff_max_ms: u64,
    /// Fraction of each delay taken off at random (0.0..=1.0), so retries of many messages do
    /// not arrive in lockstep: a delay `d` becomes uniform in `[d * (1 - jitter), d]`.
    pub backoff_jitter: f64,
    /// Per-key ordering.
    pub ordering: Ordering,
    /// Most messages of the group leased or waiting for a retry at once.
    pub max_in_flight: u32,
    /// Most messages one member may hold leased at once.
    pub member_max_in_flight: u32,
    /// Where dead letters go; `None` is `<topic>.dlq` for each topic.
    pub dead_letter_topic: Option<String>,
    /// Where a new group starts.
    pub start: QueueStart,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            topics: Vec::new(),
            ack_wait_ms: 30_000,
            deliveries_max: 5,
            backoff_initial_ms: 1_000,
            backoff_multiplier: 2.0,
            backoff_max_ms: 60_000,
            backoff_jitter: 0.2,
            ordering: Ordering::None,
            max_in_flight: 1_000,
            member_max_in_flight: 1_000,
            dead_letter_topic: None,
            start: QueueStart::Earliest,
        }
    }
}

impl QueueConfig {
    /// Checks every setting against its allowed range.
    ///
    /// # Errors
    /// A message naming the setting, the value and what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        if self.topics.is_empty() || self.topics.len() > crate::group::GROUP_TOPICS_MAX {
            return Err(format!(
                "topics has {} entries; allowed is 1..={}",
                self.topics.len(),
                crate::group::GROUP_TOPICS_MAX
            ));
        }
        let range = |name: &str, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(format!("{name} is {value}; allowed is {min}..={max}"))
            }
        };
        range("ack_wait_ms", self.ack_wait_ms, ACK_WAIT_MS_MIN, ACK_WAIT_MS_MAX)?;
        range("deliveries_max", self.deliveries_max.into(), 1, DELIVERIES_MAX_LIMIT.into())?;
        range("backoff_initial_ms", self.backoff_initial_ms, 0, BACKOFF_MS_MAX)?;
        range("backoff_max_ms", self.backoff_max_ms, self.backoff_initial_ms, BACKOFF_MS_MAX)
            .map_err(|error| format!("{error} (at least backoff_initial_ms)"))?;
        range("max_in_flight", self.max_in_flight.into(), 1, MAX_IN_FLIGHT_LIMIT.into())?;
        range(
            "member_max_in_flight",
            self.member_max_in_flight.into(),
            1,
            MAX_IN_FLIGHT_LIMIT.into(),
        )?;
        if !(1.0..=10.0).contains(&self.backoff_multiplier) {
            return Err(format!(
                "backoff_multiplier is {}; allowed is 1.0..=10.0",
                self.backoff_multiplier
            ));
        }
        if !(0.0..=1.0).contains(&self.backoff_jitter) {
            return Err(format!("backoff_jitter is {}; allowed is 0.0..=1.0", self.backoff_jitter));
        }
        Ok(())
    }

    /// The dead-letter topic of `topic` under this configuration.
    pub fn dead_letter_topic_for(&self, topic: &str) -> String {
        self.dead_letter_topic.clone().unwrap_or_else(|| format!("{topic}.dlq"))
    }

    /// The delay before redelivering a message that failed its `deliveries`-th delivery,
    /// before jitter: `initial * multiplier^(deliveries - 1)`, at most `backoff_max_ms`.
    pub fn backoff_ms(&self, deliveries: u32) -> u64 {
        let exponent = i32::try_from(deliveries.saturating_sub(1)).unwrap_or(i32::MAX);
        let delay = self.backoff_initial_ms as f64 * self.backoff_multiplier.powi(exponent);
        if delay >= self.backoff_max_ms as f64 {
            self.backoff_max_ms
        } else {
            delay as u64
        }
    }

    /// [`Self::backoff_ms`] with jitter applied; `unit` is a uniform random number in `[0, 1)`.
    pub fn jittered_backoff_ms(&self, deliveries: u32, unit: f64) -> u64 {
        let delay = self.backoff_ms(deliveries) as f64;
        (delay * (1.0 - self.backoff_jitter * unit)) as u64
    }
}
