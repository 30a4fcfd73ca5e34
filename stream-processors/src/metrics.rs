//! Every metric of the stream processors, declared once. Names follow
//! `fieldforce_processor_<name>_<unit>[_total]`, with the label `stage` (`validation`, `geo`,
//! `quality`, `webhooks`, `analytics`), a fixed list. The webhook dispatcher adds
//! `fieldforce_webhooks_<name>_<unit>[_total]` with the label `outcome`, whose values are the
//! fixed [`DeliveryOutcome`] names. The analytics aggregator adds its own counters, named
//! `fieldforce_analytics_<name>_total` and without labels. The consumer-lag gauges shared
//! with the sink are declared in [`fieldforce_kafka::lag::metrics`] and registered here.

use fieldforce_kafka::lag::metrics::LagMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The label set of every processor metric.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    /// Processing stage: `validation`, `geo`, `quality`, `webhooks` or `analytics`.
    pub stage: &'static str,
}

/// Handles to every metric of one processor, already labelled with its stage.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Records read from the input topic.
    pub records_in: Counter,
    /// Records produced to the output topic and acknowledged.
    pub records_out: Counter,
    /// Records produced to the dead-letter topic and acknowledged.
    pub records_dead_lettered: Counter,
    /// Delivery attempts that failed and were retried.
    pub produce_retries: Counter,
    /// Records per transformed batch.
    pub batch_size: Histogram,
    /// Time to transform one batch on the rayon pool, in seconds.
    pub processing_seconds: Histogram,
    /// Partition assignments and revocations seen.
    pub rebalances: Counter,
    /// Offset commits that failed.
    pub commit_failures: Counter,
    /// Records read and not yet acknowledged.
    pub in_flight: Gauge,
    /// Consumer lag per assigned partition.
    pub lag: LagMetrics,
}

impl Metrics {
    /// Registers every metric under `registry` for one stage and its consumer group.
    pub fn register(registry: &mut Registry, stage: &'static str, group_id: &str) -> Self {
        let label = StageLabel { stage };
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<StageLabel, Counter>::default();
            registry.register(name, help, family.clone());
            family.get_or_create(&label).clone()
        };
        let records_in = counter(
            registry,
            "fieldforce_processor_records_in",
            "Records read from the input topic",
        );
        let records_out = counter(
            registry,
            "fieldforce_processor_records_out",
            "Records produced to the output topic and acknowledged",
        );
        let records_dead_lettered = counter(
            registry,
            "fieldforce_processor_records_dead_lettered",
            "Records produced to the dead-letter topic and acknowledged",
        );
        let produce_retries = counter(
            registry,
            "fieldforce_processor_produce_retries",
            "Failed delivery attempts that were retried",
        );
        let rebalances = counter(
            registry,
            "fieldforce_processor_rebalances",
            "Partition assignments and revocations",
        );
        let commit_failures = counter(
            registry,
            "fieldforce_processor_commit_failures",
            "Offset commits that failed",
        );

        let batch_family = Family::<StageLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(1.0, 2.0, 12))
        });
        registry.register(
            "fieldforce_processor_batch_size_records",
            "Records per transformed batch",
            batch_family.clone(),
        );
        let latency_family = Family::<StageLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_01, 2.0, 20))
        });
        registry.register(
            "fieldforce_processor_batch_processing_seconds",
            "Time to transform one batch",
            latency_family.clone(),
        );
        let in_flight_family = Family::<StageLabel, Gauge>::default();
        registry.register(
            "fieldforce_processor_in_flight_records",
            "Records read and not yet acknowledged",
            in_flight_family.clone(),
        );

        Self {
            records_in,
            records_out,
            records_dead_lettered,
            produce_retries,
            batch_size: batch_family.get_or_create(&label).clone(),
            processing_seconds: latency_family.get_or_create(&label).clone(),
            rebalances,
            commit_failures,
            in_flight: in_flight_family.get_or_create(&label).clone(),
            lag: LagMetrics::register(registry, group_id),
        }
    }
}

/// How one webhook delivery attempt, or a delivery as a whole, ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The endpoint answered 2xx.
    Delivered,
    /// The attempt failed and the delivery went to a retry topic.
    Retried,
    /// The endpoint's queue was full, so the delivery went to the first retry topic without
    /// an attempt.
    Deferred,
    /// The last attempt failed and the delivery went to the dead-letter topic.
    DeadLettered,
    /// The address guard rejected the endpoint and the delivery went to the dead-letter topic.
    Rejected,
    /// The subscription was deleted before the attempt, so the delivery was dropped.
    Dropped,
}

impl DeliveryOutcome {
    /// Returns the label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retried => "retried",
            Self::Deferred => "deferred",
            Self::DeadLettered => "dead_lettered",
            Self::Rejected => "rejected",
            Self::Dropped => "dropped",
        }
    }
}

/// The label set of the webhook delivery metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// A [`DeliveryOutcome`] name.
    pub outcome: &'static str,
}

/// Metrics of the webhook dispatcher beyond the shared processor ones.
#[derive(Debug, Clone)]
pub struct WebhookMetrics {
    /// Deliveries settled, by outcome.
    pub deliveries: Family<OutcomeLabel, Counter>,
    /// Duration of one HTTP attempt, from resolving the host to reading the answer, in seconds.
    pub attempt_seconds: Histogram,
    /// Deliveries started and not yet settled.
    pub in_flight: Gauge,
    /// Retry records held until they fall due.
    pub waiting: Gauge,
}

impl WebhookMetrics {
    /// Registers the webhook metrics under `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            deliveries: Family::default(),
            attempt_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            in_flight: Gauge::default(),
            waiting: Gauge::default(),
        };
        registry.register(
            "fieldforce_webhooks_deliveries",
            "Webhook deliveries settled, by outcome",
            metrics.deliveries.clone(),
        );
        registry.register(
            "fieldforce_webhooks_attempt_duration_seconds",
            "Duration of one webhook HTTP attempt",
            metrics.attempt_seconds.clone(),
        );
        registry.register(
            "fieldforce_webhooks_in_flight_deliveries",
            "Webhook deliveries started and not yet settled",
            metrics.in_flight.clone(),
        );
        registry.register(
            "fieldforce_webhooks_waiting_retry_records",
            "Retry records held until they fall due",
            metrics.waiting.clone(),
        );
        metrics
    }

    /// Counts a settled delivery.
    pub fn settled(&self, outcome: DeliveryOutcome) {
        self.deliveries
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            })
            .inc();
    }
}

/// Counters of the analytics aggregator, next to the stage metrics it shares with the other
/// processors.
#[derive(Debug, Clone, Default)]
pub struct AnalyticsMetrics {
    /// Records skipped because they are not a processed submission this build reads.
    pub records_skipped: Counter,
    /// Contributions inserted or replaced.
    pub contributions_written: Counter,
    /// Daily documents recomputed and replaced.
    pub daily_written: Counter,
    /// Batches applied again after a store failure.
    pub batch_retries: Counter,
    /// Contribution writes and recomputations repeated because another writer changed the
    /// same document first.
    pub races: Counter,
}

impl AnalyticsMetrics {
    /// Registers every analytics counter under `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        for (name, help, counter) in [
            (
                "fieldforce_analytics_records_skipped",
                "Records skipped because they could not be decoded",
                &metrics.records_skipped,
            ),
            (
                "fieldforce_analytics_contributions_written",
                "Contributions inserted or replaced",
                &metrics.contributions_written,
            ),
            (
                "fieldforce_analytics_daily_documents_written",
                "Daily documents recomputed and replaced",
                &metrics.daily_written,
            ),
            (
                "fieldforce_analytics_batch_retries",
                "Batches applied again after a store failure",
                &metrics.batch_retries,
            ),
            (
                "fieldforce_analytics_races",
                "Writes repeated because another writer changed the same document first",
                &metrics.races,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        metrics
    }
}
