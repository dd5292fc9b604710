//! The per-topic window of recently appended record ids, so a retried produce is not appended
//! twice (NATS JetStream's duplicate window; CloudEvents `id`).
//!
//! The window is derived state: at start-up it is rebuilt by reading each partition back from
//! the first record inside the window. While a produce carrying an id is in flight its id is
//! *pending*: a concurrent produce of the same id waits for the outcome instead of appending.
//! Entries leave the window when older than the topic's `dedup_window_ms`, or, past
//! [`DEDUP_IDS_MAX`], oldest first.

use std::collections::{HashMap, VecDeque};

use tokio::sync::watch;

/// Most ids one topic's window holds; past it the oldest are forgotten early.
pub const DEDUP_IDS_MAX: usize = 1_000_000;

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The partition.
    pub partition: u32,
    /// The offset.
    pub offset: u64,
}

/// The outcome of an in-flight produce of an id: `None` while pending, then `Some(Some(_))`
/// where it landed or `Some(None)` if its append failed.
pub type Outcome = Option<Option<Position>>;

#[derive(Debug)]
enum Entry {
    Pending(watch::Receiver<Outcome>),
    Done(Position),
}

/// What the window says about an id a producer is about to append.
#[derive(Debug)]
pub enum Lookup {
    /// Not seen: the caller appends it and must report back with [`DedupWindow::finish`].
    Fresh(watch::Sender<Outcome>),
    /// Already appended here.
    Duplicate(Position),
    /// Being appended by another request; wait for its outcome.
    InFlight(watch::Receiver<Outcome>),
}

/// One topic's recent ids.
#[derive(Debug)]
pub struct DedupWindow {
    window_ms: i64,
    entries: HashMap<String, (Entry, i64)>,
    /// Ids in the order they entered, with their time, for expiry.
    order: VecDeque<(i64, String)>,
}

impl DedupWindow {
    /// An empty window of `window_ms` milliseconds.
    pub fn new(window_ms: u64) -> Self {
        Self {
            window_ms: i64::try_from(window_ms).unwrap_or(i64::MAX),
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Whether the window is off (a zero window deduplicates nothing).
    pub fn is_disabled(&self) -> bool {
        self.window_ms == 0
    }

    /// Records an id already in the log (start-up rebuild).
    pub fn remember(&mut self, id: String, position: Position, timestamp_ms: i64) {
        self.insert(id, Entry::Done(position), timestamp_ms);
    }

    /// Looks `id` up at `now_ms`, claiming it if it is fresh.
    pub fn lookup(&mut self, id: &str, now_ms: i64) -> Lookup {
        self.expire(now_ms);
        match self.entries.get(id) {
            Some((Entry::Done(position), _)) => Lookup::Duplicate(*position),
            Some((Entry::Pending(receiver), _)) => Lookup::InFlight(receiver.clone()),
            None => {
                let (sender, receiver) = watch::channel(None);
                self.insert(id.to_owned(), Entry::Pending(receiver), now_ms);
                Lookup::Fresh(sender)
            }
        }
    }

    /// Reports where a claimed id landed (`None`: its append failed, so the id is released).
    pub fn finish(
        &mut self,
        id: &str,
        sender: &watch::Sender<Outcome>,
        position: Option<Position>,
    ) {
        match position {
            Some(position) => {
                if let Some((entry, _)) = self.entries.get_mut(id) {
                    *entry = Entry::Done(position);
                }
            }
            None => {
                self.entries.remove(id);
            }
        }
        sender.send_replace(Some(position));
    }

    fn insert(&mut self, id: String, entry: Entry, timestamp_ms: i64) {
        if self.entries.len() >= DEDUP_IDS_MAX {
            self.evict_oldest();
        }
        self.order.push_back((timestamp_ms, id.clone()));
        self.entries.insert(id, (entry, timestamp_ms));
    }

    fn expire(&mut self, now_ms: i64) {
        let horizon = now_ms.saturating_sub(self.window_ms);
        while self.order.front().is_some_and(|(time, _)| *time < horizon) {
            self.evict_oldest();
        }
    }

    fn evict_oldest(&mut self) {
        if let Some((time, id)) = self.order.pop_front() {
            // Only remove the entry this queue slot created (an id can re-enter after expiry).
            let same = self.entries.get(&id).is_some_and(|(_, entered)| *entered == time);
            if same {
                self.entries.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_a_duplicate_until_it_leaves_the_window() {
        let mut window = DedupWindow::new(1000);
        let Lookup::Fresh(sender) = window.lookup("a", 0) else { panic!("fresh") };
        assert!(matches!(window.lookup("a", 1), Lookup::InFlight(_)));
        let position = Position { partition: 1, offset: 7 };
        window.finish("a", &sender, Some(position));
        assert!(matches!(window.lookup("a", 999), Lookup::Duplicate(found) if found == position));
        assert!(matches!(window.lookup("a", 1001), Lookup::Fresh(_)));
    }

    #[test]
    fn a_failed_append_releases_the_id_and_wakes_waiters() {
        let mut window = DedupWindow::new(1000);
        let Lookup::Fresh(sender) = window.lookup("a", 0) else { panic!("fresh") };
        let Lookup::InFlight(receiver) = window.lookup("a", 0) else { panic!("in flight") };
        window.finish("a", &sender, None);
        assert_eq!(*receiver.borrow(), Some(None));
        assert!(matches!(window.lookup("a", 0), Lookup::Fresh(_)));
    }
}
