//! The sink's Prometheus metrics, declared once. The only label is `reason` on dead-letters,
//! whose values are the fixed reason codes of [`crate::error`]. The consumer-lag gauges shared
//! with the processors are declared in [`fieldforce_kafka::lag::metrics`] and registered here.

use fieldforce_kafka::lag::metrics::LagMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label set of the dead-letter counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Dead-letter reason code.
    pub reason: &'static str,
}

/// Every metric the sink exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Records read from the processed topic.
    pub records_in: Counter,
    /// Documents the store acknowledged.
    pub documents_written: Counter,
    /// Documents the store already held at this or a newer revision.
    pub documents_already_stored: Counter,
    /// Records sent to the dead-letter topic, by reason.
    pub dead_lettered: Family<ReasonLabel, Counter>,
    /// Documents per bulk write.
    pub batch_documents: Histogram,
    /// Duration of one bulk write attempt, in seconds.
    pub write_duration_seconds: Histogram,
    /// Bulk writes retried after a transient store failure.
    pub write_retries: Counter,
    /// Partition assignments and revocations seen.
    pub rebalances: Counter,
    /// Offset commits that failed.
    pub commit_failures: Counter,
    /// Consumer lag per assigned partition.
    pub lag: LagMetrics,
    /// Stored-submission events Kafka acknowledged.
    pub events_published: Counter,
}

impl Metrics {
    /// Creates the metrics of the sink in consumer group `group_id` and registers them.
    pub fn new(registry: &mut Registry, group_id: &str) -> Self {
        let metrics = Self {
            records_in: Counter::default(),
            documents_written: Counter::default(),
            documents_already_stored: Counter::default(),
            dead_lettered: Family::default(),
            batch_documents: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            write_duration_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            write_retries: Counter::default(),
            rebalances: Counter::default(),
            commit_failures: Counter::default(),
            lag: LagMetrics::register(registry, group_id),
            events_published: Counter::default(),
        };
        // prometheus-client appends `_total` to counters.
        registry.register(
            "fieldforce_sink_records_in",
            "Records read from the processed topic",
            metrics.records_in.clone(),
        );
        registry.register(
            "fieldforce_sink_documents_written",
            "Documents the store acknowledged",
            metrics.documents_written.clone(),
        );
        registry.register(
            "fieldforce_sink_documents_already_stored",
            "Documents the store already held at this or a newer revision",
            metrics.documents_already_stored.clone(),
        );
        registry.register(
            "fieldforce_sink_dead_lettered_documents",
            "Records sent to the dead-letter topic, by reason",
            metrics.dead_lettered.clone(),
        );
        registry.register(
            "fieldforce_sink_batch_documents",
            "Documents per bulk write",
            metrics.batch_documents.clone(),
        );
        registry.register(
            "fieldforce_sink_write_duration_seconds",
            "Duration of one bulk write attempt",
            metrics.write_duration_seconds.clone(),
        );
        registry.register(
            "fieldforce_sink_write_retries",
            "Bulk writes retried after a transient store failure",
            metrics.write_retries.clone(),
        );
        registry.register(
            "fieldforce_sink_rebalances",
            "Partition assignments and revocations",
            metrics.rebalances.clone(),
        );
        registry.register(
            "fieldforce_sink_commit_failures",
            "Offset commits that failed",
            metrics.commit_failures.clone(),
        );
        registry.register(
            "fieldforce_sink_events_published",
            "Stored-submission events Kafka acknowledged",
            metrics.events_published.clone(),
        );
        metrics
    }
}
