//! Where each stream of a partition is (its last version and offset): the state the expected
//! version is checked against. Held under the partition's stream lock, so check and append
//! are one step. A cache of the log, not a second truth: a stream not in it is looked up in
//! the key index (its newest versioned record), so the cache may forget any stream whose last
//! record is durable, and is bounded.

use std::collections::HashMap;

use sluice_log::Partition;

use super::read::find_head;
use super::Head;
use crate::error::StreamError;

/// Most stream heads a partition keeps in memory; past it, durable ones are forgotten (and
/// looked up in the key index when next appended to).
pub const STREAM_HEADS_CACHED_MAX: usize = 100_000;

/// The heads of a partition's streams that were appended to or looked up recently.
#[derive(Debug, Default)]
pub struct StreamHeads {
    heads: HashMap<String, Head>,
}

impl StreamHeads {
    /// The head of `stream`, from memory or from the log.
    pub(crate) fn head(&mut self, log: &Partition, stream: &str) -> Result<Head, StreamError> {
        if let Some(head) = self.heads.get(stream) {
            return Ok(*head);
        }
        let head = find_head(log, stream)?;
        self.heads.insert(stream.to_owned(), head);
        Ok(head)
    }

    /// The head of `stream` if it is in memory.
    pub(crate) fn cached(&self, stream: &str) -> Option<Head> {
        self.heads.get(stream).copied()
    }

    /// Records a stream's new head (its records are written, maybe not yet durable).
    pub(crate) fn set(&mut self, stream: &str, head: Head) {
        match self.heads.get_mut(stream) {
            Some(known) => *known = head,
            None => {
                self.heads.insert(stream.to_owned(), head);
            }
        }
    }

    /// Forgets heads past the bound, only ever ones whose last record is below the high
    /// watermark (a lookup in the log would find them; it would not find a record that is
    /// written but not yet visible).
    pub(crate) fn trim(&mut self, high_watermark: u64) {
        if self.heads.len() <= STREAM_HEADS_CACHED_MAX {
            return;
        }
        let mut excess = self.heads.len() - STREAM_HEADS_CACHED_MAX * 3 / 4;
        self.heads.retain(|_, head| {
            let durable = head.last_offset.is_none_or(|offset| offset < high_watermark);
            if excess > 0 && durable {
                excess -= 1;
                return false;
            }
            true
        });
    }

    /// How many heads are held (for tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heads.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimming_forgets_only_durable_heads() {
        let mut heads = StreamHeads::default();
        let count = STREAM_HEADS_CACHED_MAX + 10;
        for index in 0..count {
            let head = Head { version: 0, last_offset: Some(index as u64) };
            heads.set(&format!("s{index}"), head);
        }
        // Everything from offset 100 on is written but not yet visible.
        heads.trim(100);
        assert_eq!(heads.len(), count - 100, "only the 100 durable heads could go");
        assert!((100..count).all(|index| heads.heads.contains_key(&format!("s{index}"))));
        heads.trim(u64::MAX);
        assert_eq!(heads.len(), count - 100, "within the bound, nothing is forgotten");
        for index in count..count + 200 {
            heads.set(&format!("s{index}"), Head { version: 0, last_offset: Some(index as u64) });
        }
        heads.trim(u64::MAX);
        assert_eq!(heads.len(), STREAM_HEADS_CACHED_MAX * 3 / 4);
    }
}
