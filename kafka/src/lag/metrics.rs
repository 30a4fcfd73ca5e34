//! The consumer-lag gauges every consumer service exports, declared once here so that the
//! processors, the sink and the alert rules agree on names and labels:
//!
//! - `fieldforce_consumer_lag_records{group,topic,partition}`: records between the oldest
//!   record the service has not finished and the partition's log end.
//! - `fieldforce_consumer_lag_seconds{group,topic,partition}`: age of that oldest record.
//!
//! A series exists only while its partition is assigned to the service: it appears (at 0) on
//! assignment and is removed on revocation, so a partition that moved to another member is
//! never reported twice.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::offsets::TopicPartition;

/// Name of the lag gauge in records.
pub const LAG_RECORDS: &str = "fieldforce_consumer_lag_records";
/// Name of the lag gauge in seconds.
pub const LAG_SECONDS: &str = "fieldforce_consumer_lag_seconds";

/// Labels of both lag gauges. Values come from the assignment: a consumer group id, a topic
/// name and a partition number, all bounded by the topic catalog.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    /// Consumer group id.
    pub group: String,
    /// Full topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
}

/// Handle to the lag gauges of one consumer group in one service. Clones share the gauges and
/// the set of assigned partitions.
#[derive(Debug, Clone)]
pub struct LagMetrics {
    group: Arc<str>,
    records: Family<PartitionLabels, Gauge>,
    seconds: Family<PartitionLabels, Gauge<f64, AtomicU64>>,
    /// Partitions assigned now. Writes to the gauges happen under this lock, so a sample
    /// taken before a revocation cannot bring the revoked partition's series back.
    assigned: Arc<Mutex<BTreeSet<TopicPartition>>>,
}

impl LagMetrics {
    /// Registers both gauges under `registry` for the consumer group `group`.
    pub fn register(registry: &mut Registry, group: &str) -> Self {
        let metrics = Self {
            group: group.into(),
            records: Family::default(),
            seconds: Family::default(),
            assigned: Arc::default(),
        };
        registry.register(
            LAG_RECORDS,
            "Records between the oldest record not yet processed and the log end",
            metrics.records.clone(),
        );
        registry.register(
            LAG_SECONDS,
            "Age of the oldest record not yet processed, in seconds",
            metrics.seconds.clone(),
        );
        metrics
    }

    /// Returns the consumer group id the gauges are labelled with.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Adds the series of a newly assigned partition, at 0 until the next sample.
    pub fn assign(&self, topic: &str, partition: i32) {
        let mut assigned = self.lock();
        assigned.insert((topic.to_owned(), partition));
        let labels = self.labels(topic, partition);
        self.records.get_or_create(&labels).set(0);
        self.seconds.get_or_create(&labels).set(0.0);
    }

    /// Removes the series of a revoked partition.
    pub fn revoke(&self, topic: &str, partition: i32) {
        let mut assigned = self.lock();
        assigned.remove(&(topic.to_owned(), partition));
        let labels = self.labels(topic, partition);
        self.records.remove(&labels);
        self.seconds.remove(&labels);
    }

    /// Returns the partitions assigned now.
    pub fn assigned(&self) -> Vec<TopicPartition> {
        self.lock().iter().cloned().collect()
    }

    /// Sets the lag of a partition, unless it was revoked since the sample began.
    pub fn set(&self, topic: &str, partition: i32, records: i64, seconds: f64) {
        let assigned = self.lock();
        if !assigned.contains(&(topic.to_owned(), partition)) {
            return;
        }
        let labels = self.labels(topic, partition);
        self.records.get_or_create(&labels).set(records);
        self.seconds.get_or_create(&labels).set(seconds);
    }

    fn labels(&self, topic: &str, partition: i32) -> PartitionLabels {
        PartitionLabels {
            group: self.group.to_string(),
            topic: topic.to_owned(),
            partition,
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeSet<TopicPartition>> {
        // The set is updated in single calls, so it is consistent even after a panic.
        self.assigned.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).expect("encodes");
        text
    }

    #[test]
    fn series_follow_the_assignment() {
        let mut registry = Registry::default();
        let metrics = LagMetrics::register(&mut registry, "fieldforce-sink");
        metrics.assign("fieldforce.submissions.processed", 0);
        metrics.assign("fieldforce.submissions.processed", 1);
        metrics.set("fieldforce.submissions.processed", 1, 42, 3.5);

        let text = encoded(&registry);
        assert!(
            text.contains(
                "fieldforce_consumer_lag_records{group=\"fieldforce-sink\",topic=\"fieldforce.submissions.processed\",partition=\"1\"} 42"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "fieldforce_consumer_lag_seconds{group=\"fieldforce-sink\",topic=\"fieldforce.submissions.processed\",partition=\"0\"} 0.0"
            ),
            "{text}"
        );

        metrics.revoke("fieldforce.submissions.processed", 1);
        let text = encoded(&registry);
        assert!(!text.contains("partition=\"1\""), "{text}");
        assert!(text.contains("partition=\"0\""), "{text}");
    }

    #[test]
    fn sample_after_revoke_is_dropped() {
        let mut registry = Registry::default();
        let metrics = LagMetrics::register(&mut registry, "fieldforce-geo");
        metrics.assign("fieldforce.submissions.validated", 3);
        metrics.revoke("fieldforce.submissions.validated", 3);
        metrics.set("fieldforce.submissions.validated", 3, 10, 1.0);

        assert!(!encoded(&registry).contains("partition=\"3\""));
        assert!(metrics.assigned().is_empty());
    }
}
