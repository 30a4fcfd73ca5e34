//! The consumer side: the rebalance callbacks that keep the offset tracker and the lag gauges
//! in step with the assignment, and the storing of committable offsets.

use std::sync::{Arc, Mutex, MutexGuard};

use fieldforce_kafka::offsets::{OffsetTracker, Ticket, TopicPartition};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::metrics::Metrics;

/// Consumer context whose rebalance callbacks update the shared offset tracker and the lag
/// gauges, and whose commit callbacks count failed commits.
#[derive(Debug, Clone)]
pub struct SinkContext {
    tracker: Arc<Mutex<OffsetTracker>>,
    metrics: Metrics,
}

impl SinkContext {
    /// Creates a context with an empty tracker that reports to `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            tracker: Arc::default(),
            metrics,
        }
    }

    /// Returns a handle to the tracker, for the lag sampler.
    pub fn shared_tracker(&self) -> Arc<Mutex<OffsetTracker>> {
        Arc::clone(&self.tracker)
    }

    /// Locks the tracker. A panic while holding the lock leaves the tracker consistent
    /// (each method is a few map updates), so a poisoned lock is still used.
    pub fn tracker(&self) -> MutexGuard<'_, OffsetTracker> {
        self.tracker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ClientContext for SinkContext {}

impl ConsumerContext for SinkContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else {
            return;
        };
        self.metrics.rebalances.inc();
        // Offsets stored so far belong to durable writes; committing them now saves the next
        // owner from writing those documents again.
        commit_sync(consumer, "revoke");
        // Documents of these partitions still in a batch may be written, which is harmless
        // because writes are idempotent, but their tickets become stale and never commit.
        let mut tracker = self.tracker();
        for element in revoked.elements() {
            tracker.revoke(&(element.topic().to_owned(), element.partition()));
            self.metrics
                .lag
                .revoke(element.topic(), element.partition());
        }
        tracing::info!(partitions = revoked.count(), "partitions revoked");
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(assigned) => {
                self.metrics.rebalances.inc();
                let mut tracker = self.tracker();
                for element in assigned.elements() {
                    tracker.assign((element.topic().to_owned(), element.partition()));
                    self.metrics
                        .lag
                        .assign(element.topic(), element.partition());
                }
                tracing::info!(partitions = assigned.count(), "partitions assigned");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance failed"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            // "No offset" means nothing was stored since the last commit.
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => {
                self.metrics.commit_failures.inc();
                tracing::warn!(%error, "background offset commit failed");
            }
        }
    }
}

/// Commits the stored offsets synchronously. "No offset" means nothing was stored since the
/// last commit, which is not a failure.
pub fn commit_sync<C: Consumer<SinkContext>>(consumer: &C, when: &'static str) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::debug!(when, "offsets committed"),
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(error) => {
            consumer.context().metrics.commit_failures.inc();
            tracing::warn!(when, %error, "offset commit failed");
        }
    }
}

/// Commits the stored offsets without waiting for the broker; the commit callback counts a
/// failure.
pub fn commit_async<C: Consumer<SinkContext>>(consumer: &C) {
    match consumer.commit_consumer_state(CommitMode::Async) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(error) => {
            consumer.context().metrics.commit_failures.inc();
            tracing::warn!(%error, "offset commit failed");
        }
    }
}

/// Completes the tickets of durable records and stores the offsets that moved. Returns
/// whether any offset was stored.
pub fn complete<'a, C: Consumer<SinkContext>>(
    consumer: &C,
    tickets: impl IntoIterator<Item = &'a Ticket>,
) -> bool {
    let mut moved: Vec<(TopicPartition, i64)> = Vec::new();
    {
        let mut tracker = consumer.context().tracker();
        for ticket in tickets {
            if let Some(next) = tracker.complete(ticket) {
                match moved
                    .iter_mut()
                    .find(|(partition, _)| *partition == ticket.partition)
                {
                    Some(entry) => entry.1 = next,
                    None => moved.push((ticket.partition.clone(), next)),
                }
            }
        }
    }
    if moved.is_empty() {
        return false;
    }

    let mut list = TopicPartitionList::with_capacity(moved.len());
    for ((topic, partition), next) in moved {
        // The tracker already returns the next offset to read (last durable offset + 1),
        // which is what Kafka commits, so it is stored as is.
        if let Err(error) = list.add_partition_offset(&topic, partition, Offset::Offset(next)) {
            tracing::warn!(topic, partition, %error, "offset not stored");
        }
    }
    if let Err(error) = consumer.store_offsets(&list) {
        // The partition was revoked meanwhile; its new owner resumes from the last commit.
        tracing::debug!(%error, "storing offsets failed");
        return false;
    }
    true
}
