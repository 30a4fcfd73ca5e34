//! The in-memory side of the submission index: recently used entries, capped at a number of
//! entries (the least recently used goes first) and dropped once idle for a set time. The
//! map and the queue give their memory back when they empty, so a gateway that had a burst
//! does not keep the burst's peak for good.
//!
//! An entry awaiting its stored document is the only copy of its key until the sink stores
//! the submission. Such an entry that leaves the cache before then is kept aside for the
//! index collection, and the owner takes it with [`IndexCache::take_unsaved`].

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::IndexEntry;

/// Capacity that the map and the queue keep however few entries remain, so that a quiet
/// gateway does not reallocate them for every few requests.
const MIN_RETAINED_CAPACITY: usize = 1024;

/// A cached entry and its latest use.
#[derive(Debug)]
struct Slot {
    entry: IndexEntry,
    last_used: Instant,
    /// Sequence number of the key's latest record in the queue. Records with another
    /// number are stale.
    use_number: u64,
    /// Whether the entry waits for the sink to store its submission.
    awaiting_store: bool,
}

/// Recently used index entries, capped at a number of entries and dropped after an idle time.
#[derive(Debug)]
pub(super) struct IndexCache {
    slots: HashMap<String, Slot>,
    /// Keys in the order of their latest use, oldest first. A key used again gets a new
    /// record at the back, and its older record is skipped once it reaches the front.
    order: VecDeque<(u64, String)>,
    next_use_number: u64,
    max_entries: usize,
    idle_limit: Duration,
    /// Entries removed while awaiting their stored document.
    unsaved: Vec<(String, IndexEntry)>,
}

impl IndexCache {
    /// Creates an empty cache of at most `max_entries` entries, each dropped after
    /// `idle_limit` without a read or a write.
    pub(super) fn new(max_entries: usize, idle_limit: Duration) -> Self {
        Self {
            slots: HashMap::new(),
            order: VecDeque::new(),
            next_use_number: 0,
            max_entries,
            idle_limit,
            unsaved: Vec::new(),
        }
    }

    /// Returns the entry of `key` unless it is absent or idle past the limit, and counts the
    /// read as a use.
    pub(super) fn get(&mut self, key: &str, now: Instant) -> Option<IndexEntry> {
        let slot = self.slots.get(key)?;
        if now.saturating_duration_since(slot.last_used) >= self.idle_limit {
            // Until the next sweep removes it, an idle entry reads as absent.
            return None;
        }
        let entry = slot.entry.clone();
        self.record_use(key.to_owned(), now);
        Some(entry)
    }

    /// Stores the entry of `key`, replacing an older one, and evicts the least recently used
    /// entries past the cap. `awaiting_store` marks an entry whose only other copy will be
    /// the sink's stored document.
    pub(super) fn insert(
        &mut self,
        key: String,
        entry: IndexEntry,
        now: Instant,
        awaiting_store: bool,
    ) {
        self.slots.insert(
            key.clone(),
            Slot {
                entry,
                last_used: now,
                use_number: 0,
                awaiting_store,
            },
        );
        self.record_use(key, now);
        while self.slots.len() > self.max_entries && self.front_last_used().is_some() {
            self.remove_front();
        }
    }

    /// Removes up to `max_removed` entries idle since before `now - idle_limit`, oldest
    /// first. Returns true when every idle entry is gone, and then also shrinks the map and
    /// the queue if they are well below their capacity.
    pub(super) fn remove_idle(&mut self, now: Instant, max_removed: usize) -> bool {
        for _ in 0..max_removed {
            let Some(last_used) = self.front_last_used() else {
                break;
            };
            if now.saturating_duration_since(last_used) < self.idle_limit {
                break;
            }
            self.remove_front();
        }
        let done = self
            .front_last_used()
            .is_none_or(|last_used| now.saturating_duration_since(last_used) < self.idle_limit);
        if done {
            self.shrink();
        }
        done
    }

    /// Number of entries, idle ones not yet removed included.
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Ends the wait of the entry of `key` once the sink has stored `revision` or a newer
    /// one of its submission.
    pub(super) fn confirm_stored(&mut self, key: &str, revision: u32) {
        if let Some(slot) = self.slots.get_mut(key)
            && slot.entry.revision <= revision
        {
            slot.awaiting_store = false;
        }
    }

    /// Returns the entries removed while awaiting their stored document since the last call.
    pub(super) fn take_unsaved(&mut self) -> Vec<(String, IndexEntry)> {
        std::mem::take(&mut self.unsaved)
    }

    /// Returns those entries and every cached one still awaiting its stored document, which
    /// no longer counts as awaiting.
    pub(super) fn take_awaiting(&mut self) -> Vec<(String, IndexEntry)> {
        let mut awaiting = self.take_unsaved();
        for (key, slot) in &mut self.slots {
            if slot.awaiting_store {
                slot.awaiting_store = false;
                awaiting.push((key.clone(), slot.entry.clone()));
            }
        }
        awaiting
    }

    /// Marks the use of a key that has a slot and queues its record.
    fn record_use(&mut self, key: String, now: Instant) {
        let use_number = self.next_use_number;
        self.next_use_number += 1;
        if let Some(slot) = self.slots.get_mut(&key) {
            slot.last_used = now;
            slot.use_number = use_number;
        }
        self.order.push_back((use_number, key));

        // Reads of the same few keys add records without adding entries, so stale records
        // are cleared out before they outnumber the live ones.
        if self.order.len() > 2 * self.slots.len() + MIN_RETAINED_CAPACITY {
            let slots = &self.slots;
            self.order
                .retain(|(use_number, key)| is_latest(slots, key, *use_number));
        }
    }

    /// Drops stale records from the front of the queue and returns the latest use of the
    /// least recently used entry, or `None` when the cache is empty.
    fn front_last_used(&mut self) -> Option<Instant> {
        while let Some((use_number, key)) = self.order.front() {
            if is_latest(&self.slots, key, *use_number) {
                return self.slots.get(key).map(|slot| slot.last_used);
            }
            self.order.pop_front();
        }
        None
    }

    /// Removes the entry of the front record, which [`Self::front_last_used`] has checked.
    fn remove_front(&mut self) {
        let Some((_, key)) = self.order.pop_front() else {
            return;
        };
        if let Some(slot) = self.slots.remove(&key)
            && slot.awaiting_store
        {
            self.unsaved.push((key, slot.entry));
        }
    }

    /// Gives memory back once the map or the queue uses under a quarter of its capacity,
    /// keeping twice the current length so that a new burst does not reallocate at once.
    fn shrink(&mut self) {
        let keep = (2 * self.slots.len()).max(MIN_RETAINED_CAPACITY);
        if self.slots.capacity() > 2 * keep {
            self.slots.shrink_to(keep);
        }
        let keep = (2 * self.order.len()).max(MIN_RETAINED_CAPACITY);
        if self.order.capacity() > 2 * keep {
            self.order.shrink_to(keep);
        }
    }

    #[cfg(test)]
    fn capacities(&self) -> (usize, usize) {
        (self.slots.capacity(), self.order.capacity())
    }
}

/// Returns true when the record numbered `use_number` is the latest of `key`.
fn is_latest(slots: &HashMap<String, Slot>, key: &str, use_number: u64) -> bool {
    slots
        .get(key)
        .is_some_and(|slot| slot.use_number == use_number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::tests::entry;

    const IDLE: Duration = Duration::from_secs(60);

    #[test]
    fn full_cache_evicts_least_recently_used() {
        let start = Instant::now();
        let mut cache = IndexCache::new(2, IDLE);
        cache.insert("a".into(), entry(0), start, false);
        cache.insert("b".into(), entry(0), start, false);
        assert_eq!(cache.get("a", start), Some(entry(0)));
        cache.insert("c".into(), entry(0), start, false);

        assert_eq!(cache.len(), 2);
        assert!(cache.get("b", start).is_none());
        assert!(cache.get("a", start).is_some());
        assert!(cache.get("c", start).is_some());
    }

    #[test]
    fn insert_replaces_entry() {
        let start = Instant::now();
        let mut cache = IndexCache::new(2, IDLE);
        cache.insert("a".into(), entry(0), start, false);
        cache.insert("a".into(), entry(1), start, false);
        cache.insert("b".into(), entry(0), start, false);

        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get("a", start), Some(entry(1)));
    }

    #[test]
    fn idle_entries_expire() {
        let start = Instant::now();
        let mut cache = IndexCache::new(10, IDLE);
        cache.insert("read".into(), entry(0), start, false);
        cache.insert("written".into(), entry(0), start, false);
        cache.insert("untouched".into(), entry(0), start, false);
        let later = start + IDLE / 2;
        assert!(cache.get("read", later).is_some());
        cache.insert("written".into(), entry(1), later, false);

        let expired = start + IDLE;
        assert!(cache.get("untouched", expired).is_none());
        assert!(cache.remove_idle(expired, usize::MAX));
        assert_eq!(cache.len(), 2);
        assert!(cache.get("read", expired).is_some());
        assert_eq!(cache.get("written", expired), Some(entry(1)));
    }

    #[test]
    fn idle_removal_stops_at_limit() {
        let start = Instant::now();
        let mut cache = IndexCache::new(10, IDLE);
        for key in ["a", "b", "c"] {
            cache.insert(key.into(), entry(0), start, false);
        }

        let expired = start + IDLE;
        assert!(!cache.remove_idle(expired, 2));
        assert_eq!(cache.len(), 1);
        assert!(cache.remove_idle(expired, 2));
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn emptied_cache_shrinks() {
        let start = Instant::now();
        let entries = 50_000;
        let mut cache = IndexCache::new(entries, IDLE);
        for number in 0..entries {
            cache.insert(format!("org/uuid:{number}"), entry(0), start, false);
        }
        let (full_map, full_queue) = cache.capacities();
        assert!(full_map >= entries);
        assert!(full_queue >= entries);

        assert!(cache.remove_idle(start + IDLE, usize::MAX));
        let (map, queue) = cache.capacities();
        assert_eq!(cache.len(), 0);
        assert!(map < full_map / 8, "map capacity {map} of {full_map}");
        assert!(
            queue < full_queue / 8,
            "queue capacity {queue} of {full_queue}"
        );
    }

    #[test]
    fn awaiting_entry_kept_aside_when_removed() {
        let start = Instant::now();
        let mut cache = IndexCache::new(2, IDLE);
        cache.insert("evicted".into(), entry(0), start, true);
        cache.insert("idle".into(), entry(0), start, true);
        cache.insert("saved".into(), entry(0), start + IDLE / 2, false);
        assert_eq!(cache.take_unsaved(), vec![("evicted".to_owned(), entry(0))]);

        assert!(cache.remove_idle(start + IDLE, usize::MAX));
        assert_eq!(cache.take_unsaved(), vec![("idle".to_owned(), entry(0))]);
        assert!(cache.take_unsaved().is_empty());
    }

    #[test]
    fn confirmed_entry_not_kept_aside() {
        let start = Instant::now();
        let mut cache = IndexCache::new(10, IDLE);
        cache.insert("stored".into(), entry(1), start, true);
        cache.insert("older revision stored".into(), entry(2), start, true);
        cache.confirm_stored("stored", 1);
        cache.confirm_stored("older revision stored", 1);
        cache.confirm_stored("never cached", 0);

        assert!(cache.remove_idle(start + IDLE, usize::MAX));
        assert_eq!(
            cache.take_unsaved(),
            vec![("older revision stored".to_owned(), entry(2))]
        );
    }

    #[test]
    fn take_awaiting_returns_each_entry_once() {
        let start = Instant::now();
        let mut cache = IndexCache::new(1, IDLE);
        cache.insert("evicted".into(), entry(0), start, true);
        cache.insert("cached".into(), entry(0), start, true);

        let mut awaiting = cache.take_awaiting();
        awaiting.sort_by(|left, right| left.0.cmp(&right.0));
        assert_eq!(
            awaiting,
            vec![
                ("cached".to_owned(), entry(0)),
                ("evicted".to_owned(), entry(0)),
            ]
        );
        assert!(cache.take_awaiting().is_empty());
        assert_eq!(cache.get("cached", start), Some(entry(0)));
    }

    #[test]
    fn repeated_reads_keep_queue_bounded() {
        let start = Instant::now();
        let mut cache = IndexCache::new(10, IDLE);
        cache.insert("a".into(), entry(0), start, false);
        for _ in 0..100_000 {
            assert!(cache.get("a", start).is_some());
        }
        assert!(cache.order.len() <= 2 + MIN_RETAINED_CAPACITY);
    }
}
