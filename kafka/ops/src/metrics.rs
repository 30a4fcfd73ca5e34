//! The operations service's own metrics, declared once. Names follow
//! `fieldforce_ops_<name>_<unit>[_total]`; the only label is `service`, whose values are the
//! names configured in `ops.services`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label set of the service health gauge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    /// Service name from `ops.services`.
    pub service: String,
}

/// Every metric of the operations service.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Samples taken.
    pub samples: Counter,
    /// Samples whose Kafka part failed.
    pub sample_failures: Counter,
    /// Time to take one sample, in seconds.
    pub sample_duration_seconds: Histogram,
    /// 1 while a service's `/healthz` returns 2xx, else 0.
    pub service_up: Family<ServiceLabel, Gauge>,
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            samples: Counter::default(),
            sample_failures: Counter::default(),
            sample_duration_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            service_up: Family::default(),
        };
        // prometheus-client appends `_total` to counters.
        registry.register(
            "fieldforce_ops_samples",
            "Samples of lag, topic offsets and service health taken",
            metrics.samples.clone(),
        );
        registry.register(
            "fieldforce_ops_sample_failures",
            "Samples whose Kafka part failed",
            metrics.sample_failures.clone(),
        );
        registry.register(
            "fieldforce_ops_sample_duration_seconds",
            "Time to take one sample",
            metrics.sample_duration_seconds.clone(),
        );
        registry.register(
            "fieldforce_ops_service_up",
            "1 while the service's /healthz returns 2xx, else 0",
            metrics.service_up.clone(),
        );
        metrics
    }
}
