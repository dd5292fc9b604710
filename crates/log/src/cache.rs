//! The bounded set of closed segments held open for reading (`open_segments_max`).
//!
//! A closed segment's data file and indexes are opened on first read and kept until the least
//! recently used one has to make room. Eviction only drops the partition's reference: a read that
//! already holds the segment keeps its handle until it finishes.

use std::collections::HashMap;
use std::sync::Arc;

use crate::segment::LoadedSegment;

/// Closed segments open for reading, least recently used evicted first.
#[derive(Debug)]
pub struct SegmentCache {
    entries: HashMap<u64, (Arc<LoadedSegment>, u64)>,
    tick: u64,
    capacity: usize,
}

impl SegmentCache {
    /// An empty cache holding at most `capacity` segments.
    pub fn new(capacity: u32) -> Self {
        assert!(capacity > 0, "open_segments_max is validated to be at least 1");
        Self { entries: HashMap::new(), tick: 0, capacity: capacity as usize }
    }

    /// The open segment at `base_offset`, marked as just used.
    pub fn get(&mut self, base_offset: u64) -> Option<Arc<LoadedSegment>> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(&base_offset).map(|(segment, used)| {
            *used = tick;
            Arc::clone(segment)
        })
    }

    /// Keeps `segment` open, closing the least recently used one if the cache is full.
    pub fn insert(&mut self, base_offset: u64, segment: Arc<LoadedSegment>) {
        if !self.entries.contains_key(&base_offset) && self.entries.len() >= self.capacity {
            let oldest =
                self.entries.iter().min_by_key(|(_, (_, used))| *used).map(|(base, _)| *base);
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        self.tick += 1;
        self.entries.insert(base_offset, (segment, self.tick));
    }

    /// Forgets the segment at `base_offset` (deleted or rewritten).
    pub fn remove(&mut self, base_offset: u64) {
        self.entries.remove(&base_offset);
    }

    /// How many segments are open.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}
