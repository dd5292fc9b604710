//! A topic's configuration: how many partitions, how durable, how long records are kept, and
//! the limits on what producers may send. Persisted as JSON in the internal `__topics` log.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_log::{Durability, LogConfig};

/// Smallest `segment_bytes` a topic may set.
pub const SEGMENT_BYTES_MIN: u64 = 1024 * 1024;
/// Most partitions a topic may have.
pub const PARTITIONS_MAX: u32 = 1024;
/// Default largest record (key + value + headers), as Kafka's `max.message.bytes` (~1 MiB).
pub const RECORD_BYTES_DEFAULT: u32 = 1024 * 1024;
/// Largest `record_bytes_max` a topic may set; a batch of one record must fit the log's limit.
pub const RECORD_BYTES_LIMIT: u32 = 8 * 1024 * 1024;
/// Default dedup window for record ids, as NATS JetStream's duplicate window (2 minutes).
pub const DEDUP_WINDOW_DEFAULT: Duration = Duration::from_secs(120);
/// Longest dedup window: the window is rebuilt from the log at start-up by reading it back.
pub const DEDUP_WINDOW_MAX: Duration = Duration::from_secs(24 * 60 * 60);

/// How a topic's partitions acknowledge writes, as stored and as the doors spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum DurabilityConfig {
    /// Acknowledge after fdatasync (group commit). The default.
    #[default]
    Fsync,
    /// Acknowledge after the write; fdatasync every `interval_ms`.
    Interval {
        /// Milliseconds between syncs.
        interval_ms: u64,
    },
    /// Acknowledge after the write; sync only at segment rolls and shutdown.
    None,
}

impl DurabilityConfig {
    /// Parses `fsync`, `interval:MS` or `none`.
    ///
    /// # Errors
    /// A message naming the accepted forms.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "fsync" => Ok(Self::Fsync),
            "none" => Ok(Self::None),
            other => other
                .strip_prefix("interval:")
                .and_then(|ms| ms.parse().ok())
                .filter(|ms| *ms >= 1)
                .map(|interval_ms| Self::Interval { interval_ms })
                .ok_or_else(|| {
                    format!("durability '{text}' is not one of fsync, interval:MS (MS >= 1), none")
                }),
        }
    }

    fn to_log(self) -> Durability {
        match self {
            Self::Fsync => Durability::Fsync,
            Self::Interval { interval_ms } => {
                Durability::Interval(Duration::from_millis(interval_ms))
            }
            Self::None => Durability::None,
        }
    }
}

/// Everything configurable about a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Number of partitions, 1..=[`PARTITIONS_MAX`]. Fixed at creation.
    pub partitions: u32,
    /// When produces are acknowledged.
    #[serde(default)]
    pub durability: DurabilityConfig,
    /// Delete closed segments whose newest record is older than this (milliseconds); `None`
    /// keeps records forever. Default 7 days.
    #[serde(default = "default_retention_age_ms")]
    pub retention_age_ms: Option<u64>,
    /// Delete the oldest closed segments while a partition holds more than this; `None` for no
    /// limit (the default).
    #[serde(default)]
    pub retention_bytes: Option<u64>,
    /// Keep only the newest record per key in closed segments.
    #[serde(default)]
    pub compact: bool,
    /// For event topics: maintenance removes, in closed segments, every record of a key older
    /// than the key's newest tombstone, so a soft-deleted stream's events are deleted for good
    /// while every other stream keeps its history (the tombstone stays). Not with `compact`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hard_delete_streams: bool,
    /// Largest record (key + value + header keys and values) a producer may send.
    #[serde(default = "default_record_bytes_max")]
    pub record_bytes_max: u32,
    /// A record whose id was already appended to the topic within this many milliseconds is
    /// not appended again.
    #[serde(default = "default_dedup_window_ms")]
    pub dedup_window_ms: u64,
    /// Roll a partition's active segment once it holds this many bytes (Kafka's
    /// `segment.bytes`); `None` for the log's default (1 GiB). Retention, compaction and the
    /// key index work per closed segment. At least [`SEGMENT_BYTES_MIN`] and at least
    /// `record_bytes_max` plus 64 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_bytes: Option<u64>,
}

fn default_retention_age_ms() -> Option<u64> {
    Some(7 * 24 * 60 * 60 * 1000)
}

fn default_record_bytes_max() -> u32 {
    RECORD_BYTES_DEFAULT
}

fn default_dedup_window_ms() -> u64 {
    u64::try_from(DEDUP_WINDOW_DEFAULT.as_millis()).expect("two minutes fit")
}

impl Default for TopicConfig {
    fn default() -> Self {
        Self {
            partitions: 1,
            durability: DurabilityConfig::Fsync,
            retention_age_ms: default_retention_age_ms(),
            retention_bytes: None,
            compact: false,
            hard_delete_streams: false,
            record_bytes_max: RECORD_BYTES_DEFAULT,
            dedup_window_ms: default_dedup_window_ms(),
            segment_bytes: None,
        }
    }
}

/// A topic setting out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid topic configuration: {field} is {value}; {rule}")]
pub struct TopicConfigError {
    /// The setting.
    pub field: &'static str,
    /// The value given.
    pub value: String,
    /// What is allowed.
    pub rule: String,
}

impl TopicConfig {
    /// Checks every setting.
    ///
    /// # Errors
    /// The first setting out of range, with its rule.
    pub fn validate(&self) -> Result<(), TopicConfigError> {
        let fail =
            |field, value: String, rule: String| Err(TopicConfigError { field, value, rule });
        if !(1..=PARTITIONS_MAX).contains(&self.partitions) {
            return fail(
                "partitions",
                self.partitions.to_string(),
                format!("allowed is 1..={PARTITIONS_MAX}"),
            );
        }
        if !(1..=RECORD_BYTES_LIMIT).contains(&self.record_bytes_max) {
            let rule = format!("allowed is 1..={RECORD_BYTES_LIMIT} bytes");
            return fail("record_bytes_max", self.record_bytes_max.to_string(), rule);
        }
        let dedup_max = u64::try_from(DEDUP_WINDOW_MAX.as_millis()).expect("a day fits");
        if self.dedup_window_ms > dedup_max {
            let rule = format!("allowed is 0..={dedup_max} ms (one day)");
            return fail("dedup_window_ms", self.dedup_window_ms.to_string(), rule);
        }
        if let DurabilityConfig::Interval { interval_ms: 0 } = self.durability {
            return fail(
                "durability",
                "interval:0".to_owned(),
                "the interval must be at least 1 ms".to_owned(),
            );
        }
        if let Some(segment_bytes) = self.segment_bytes {
            let least = SEGMENT_BYTES_MIN.max(u64::from(self.batch_bytes_max()));
            if !(least..=sluice_log::SEGMENT_BYTES_LIMIT).contains(&segment_bytes) {
                let rule = format!(
                    "allowed is {least}..={} bytes (at least 1 MiB and record_bytes_max + 64 KiB)",
                    sluice_log::SEGMENT_BYTES_LIMIT
                );
                return fail("segment_bytes", segment_bytes.to_string(), rule);
            }
        }
        if self.compact && self.hard_delete_streams {
            return fail(
                "hard_delete_streams",
                "true".to_owned(),
                "not with compact: compaction keeps only each key's newest record, which would delete every stream's history".to_owned(),
            );
        }
        if self.retention_age_ms == Some(0) {
            return fail(
                "retention_age_ms",
                "0".to_owned(),
                "must be at least 1 ms, or absent to keep records forever".to_owned(),
            );
        }
        Ok(())
    }

    /// The dedup window.
    pub fn dedup_window(&self) -> Duration {
        Duration::from_millis(self.dedup_window_ms)
    }

    /// The partition-log configuration for this topic's partitions.
    pub fn log_config(&self) -> LogConfig {
        // A batch carries at least one whole record plus its framing; allow a little over
        // record_bytes_max (bounded by the log's own limit) so one record always fits.
        let batch_bytes_max = self.batch_bytes_max();
        let defaults = LogConfig::default();
        LogConfig {
            segment_bytes_max: self.segment_bytes.unwrap_or(defaults.segment_bytes_max),
            durability: self.durability.to_log(),
            retention_age: self.retention_age_ms.map(Duration::from_millis),
            retention_bytes: self.retention_bytes,
            compact: self.compact,
            purge_before_tombstones: self.hard_delete_streams,
            batch_bytes_max,
            ..defaults
        }
    }

    /// The largest batch a partition takes: one whole record of `record_bytes_max` and its
    /// framing always fits.
    fn batch_bytes_max(&self) -> u32 {
        self.record_bytes_max.saturating_add(64 * 1024).max(SEGMENT_BYTES_MIN as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_parses_the_three_forms_and_names_them_on_error() {
        assert_eq!(DurabilityConfig::parse("fsync"), Ok(DurabilityConfig::Fsync));
        assert_eq!(
            DurabilityConfig::parse("interval:50"),
            Ok(DurabilityConfig::Interval { interval_ms: 50 })
        );
        assert_eq!(DurabilityConfig::parse("none"), Ok(DurabilityConfig::None));
        let error = DurabilityConfig::parse("interval:0").unwrap_err();
        assert!(error.contains("fsync, interval:MS"), "{error}");
    }

    #[test]
    fn settings_out_of_range_are_named() {
        let config = TopicConfig { partitions: 0, ..TopicConfig::default() };
        assert!(config.validate().unwrap_err().to_string().contains("partitions is 0"));
        let config =
            TopicConfig { record_bytes_max: RECORD_BYTES_LIMIT + 1, ..TopicConfig::default() };
        assert!(config.validate().unwrap_err().to_string().contains("record_bytes_max"));
        assert!(TopicConfig::default().validate().is_ok());
        assert!(TopicConfig::default().log_config().validate().is_ok());
        let largest =
            TopicConfig { record_bytes_max: RECORD_BYTES_LIMIT, ..TopicConfig::default() };
        assert!(largest.log_config().validate().is_ok());
    }

    #[test]
    fn stored_json_fills_defaults_and_refuses_unknown_fields() {
        let config: TopicConfig = serde_json::from_str(r#"{"partitions":3}"#).unwrap();
        assert_eq!(config, TopicConfig { partitions: 3, ..TopicConfig::default() });
        assert!(serde_json::from_str::<TopicConfig>(r#"{"partitions":3,"bogus":1}"#).is_err());
        let round = serde_json::to_string(&TopicConfig::default()).unwrap();
        assert_eq!(serde_json::from_str::<TopicConfig>(&round).unwrap(), TopicConfig::default());
    }
}
