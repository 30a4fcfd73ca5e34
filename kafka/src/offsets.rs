//! Which offset of each partition may be committed.
//!
//! A consumer hands out a [`Ticket`] for every record it starts on and completes the ticket
//! once the record's output is durable (a delivery report, a store acknowledgement).
//! Completions may arrive in any order; the committable offset only moves past a record once
//! every earlier record of its partition is complete. Kafka's committed offset is the next
//! offset to read, so the committable offset is the smallest offset still in flight, or the
//! last offset started plus one when nothing is in flight.
//!
//! Each assignment of a partition gets a new epoch. Tickets from before a revocation carry the
//! old epoch and are ignored, so stale work from a revoked partition is never committed.

use std::collections::{BTreeMap, HashMap};

/// A topic and partition.
pub type TopicPartition = (String, i32);

/// Proof that a record was started under a given assignment of its partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// Topic and partition of the record.
    pub partition: TopicPartition,
    /// Offset of the record.
    pub offset: i64,
    epoch: u64,
}

#[derive(Debug)]
struct PartitionState {
    epoch: u64,
    /// Offsets in flight and the timestamp of each record, in milliseconds since the epoch.
    in_flight: BTreeMap<i64, Option<i64>>,
    last_started: Option<i64>,
    last_committable: Option<i64>,
}

/// In-flight records and committable offsets of every assigned partition.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<TopicPartition, PartitionState>,
    next_epoch: u64,
}

impl OffsetTracker {
    /// Creates a tracker with no partitions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that a partition was assigned, starting a new epoch for it.
    pub fn assign(&mut self, partition: TopicPartition) {
        self.next_epoch += 1;
        self.partitions.insert(
            partition,
            PartitionState {
                epoch: self.next_epoch,
                in_flight: BTreeMap::new(),
                last_started: None,
                last_committable: None,
            },
        );
    }

    /// Forgets a revoked partition; tickets issued for it before now are ignored.
    pub fn revoke(&mut self, partition: &TopicPartition) {
        self.partitions.remove(partition);
    }

    /// Starts a record and returns its ticket. The record's timestamp (milliseconds since the
    /// epoch) is kept for the lag in seconds. A partition that was never assigned (a consumer
    /// that subscribes without a rebalance callback) is assigned on first use.
    pub fn start(
        &mut self,
        partition: TopicPartition,
        offset: i64,
        timestamp_ms: Option<i64>,
    ) -> Ticket {
        if !self.partitions.contains_key(&partition) {
            self.assign(partition.clone());
        }
        let state = self
            .partitions
            .get_mut(&partition)
            .expect("the partition was assigned above");
        state.in_flight.insert(offset, timestamp_ms);
        // Reading started here, so committing this offset would move nothing.
        state.last_committable.get_or_insert(offset);
        state.last_started = Some(state.last_started.map_or(offset, |last| last.max(offset)));
        Ticket {
            partition,
            offset,
            epoch: state.epoch,
        }
    }

    /// Completes a record. Returns the partition's new committable offset (the next offset to
    /// read) when it moved, or `None` when it did not or the ticket is stale.
    pub fn complete(&mut self, ticket: &Ticket) -> Option<i64> {
        let state = self.partitions.get_mut(&ticket.partition)?;
        if state.epoch != ticket.epoch || state.in_flight.remove(&ticket.offset).is_none() {
            return None;
        }
        let committable = match state.in_flight.first_key_value() {
            Some((&oldest_in_flight, _)) => oldest_in_flight,
            // Kafka commits the next offset to read, hence the +1.
            None => state.last_started? + 1,
        };
        if state
            .last_committable
            .is_some_and(|last| committable <= last)
        {
            return None;
        }
        state.last_committable = Some(committable);
        Some(committable)
    }

    /// Returns whether the ticket belongs to the current assignment of its partition: false
    /// once the partition was revoked, even if it was assigned again since.
    pub fn is_current(&self, ticket: &Ticket) -> bool {
        self.partitions
            .get(&ticket.partition)
            .is_some_and(|state| state.epoch == ticket.epoch)
    }

    /// Returns the offset and timestamp of the oldest record of a partition still in flight.
    pub fn oldest_in_flight(&self, partition: &TopicPartition) -> Option<(i64, Option<i64>)> {
        let state = self.partitions.get(partition)?;
        state
            .in_flight
            .first_key_value()
            .map(|(&offset, &timestamp_ms)| (offset, timestamp_ms))
    }

    /// Returns the number of records in flight across all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions
            .values()
            .map(|state| state.in_flight.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(number: i32) -> TopicPartition {
        ("raw".to_owned(), number)
    }

    #[test]
    fn commits_only_contiguous_completions() {
        let mut tracker = OffsetTracker::new();
        let first = tracker.start(partition(0), 10, None);
        let second = tracker.start(partition(0), 11, None);
        let third = tracker.start(partition(0), 12, None);

        assert_eq!(
            tracker.complete(&third),
            None,
            "10 and 11 are still in flight"
        );
        assert_eq!(tracker.complete(&first), Some(11));
        assert_eq!(tracker.complete(&second), Some(13));
        assert_eq!(tracker.in_flight(), 0);
    }

    #[test]
    fn partitions_are_independent() {
        let mut tracker = OffsetTracker::new();
        let slow = tracker.start(partition(0), 5, None);
        let fast = tracker.start(partition(1), 7, None);
        assert_eq!(tracker.complete(&fast), Some(8));
        assert_eq!(tracker.complete(&slow), Some(6));
    }

    #[test]
    fn revoked_partition_tickets_are_ignored() {
        let mut tracker = OffsetTracker::new();
        let stale = tracker.start(partition(0), 3, None);
        tracker.revoke(&partition(0));
        tracker.assign(partition(0));
        assert_eq!(tracker.complete(&stale), None);
        assert!(!tracker.is_current(&stale));

        let fresh = tracker.start(partition(0), 3, None);
        assert!(tracker.is_current(&fresh));
        assert_eq!(tracker.complete(&fresh), Some(4));
    }

    #[test]
    fn oldest_in_flight_follows_completions() {
        let mut tracker = OffsetTracker::new();
        let first = tracker.start(partition(0), 20, Some(1_000));
        let _second = tracker.start(partition(0), 21, Some(2_000));
        assert_eq!(
            tracker.oldest_in_flight(&partition(0)),
            Some((20, Some(1_000)))
        );

        tracker.complete(&first);
        assert_eq!(
            tracker.oldest_in_flight(&partition(0)),
            Some((21, Some(2_000)))
        );
        assert_eq!(tracker.oldest_in_flight(&partition(1)), None);
    }

    #[test]
    fn completing_twice_changes_nothing() {
        let mut tracker = OffsetTracker::new();
        let ticket = tracker.start(partition(0), 0, None);
        assert_eq!(tracker.complete(&ticket), Some(1));
        assert_eq!(tracker.complete(&ticket), None);
    }
}
