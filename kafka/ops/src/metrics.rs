//! The operations service's own metrics, declared once. Names follow
//! `fieldforce_ops_<name>_<unit>[_total]`. Labels: `service` (the names configured in
//! `ops.services`), `group` (the pipeline's consumer groups) and `status` (`OK`, `LAGGING`,
//! `STALLED`, `STOPPED`, `UNKNOWN`).
//!
//! The group gauges are the broker's view, so unlike the lag gauges that each consumer
//! exports, they keep reporting while a group has no running consumer at all.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::history::GroupOverview;

/// Label set of the service health gauge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    /// Service name from `ops.services`.
    pub service: String,
}

/// Label set of the group gauges.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabel {
    /// Consumer group id.
    pub group: String,
}

/// Label set of the group status gauge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupStatusLabel {
    /// Consumer group id.
    pub group: String,
    /// One of [`GROUP_STATUSES`].
    pub status: &'static str,
}

/// Every status a group can have, as the lag command and the page print it.
pub const GROUP_STATUSES: [&str; 5] = ["OK", "LAGGING", "STALLED", "STOPPED", "UNKNOWN"];

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
    /// Total lag of a group in records, from the committed offsets.
    pub group_lag_records: Family<GroupLabel, Gauge>,
    /// Largest lag of a group in seconds over its partitions.
    pub group_lag_seconds: Family<GroupLabel, Gauge<f64, AtomicU64>>,
    /// 1 for a group's current status and 0 for the others; no series while the status is
    /// still being measured.
    pub group_status: Family<GroupStatusLabel, Gauge>,
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            samples: Counter::default(),
            sample_failures: Counter::default(),
            sample_duration_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            service_up: Family::default(),
            group_lag_records: Family::default(),
            group_lag_seconds: Family::default(),
            group_status: Family::default(),
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
        registry.register(
            "fieldforce_ops_group_lag_records",
            "Total lag of a consumer group in records, from its committed offsets",
            metrics.group_lag_records.clone(),
        );
        registry.register(
            "fieldforce_ops_group_lag_seconds",
            "Largest lag of a consumer group in seconds over its partitions",
            metrics.group_lag_seconds.clone(),
        );
        registry.register(
            "fieldforce_ops_group_status",
            "1 for the consumer group's current status, 0 for the others",
            metrics.group_status.clone(),
        );
        metrics
    }

    /// Sets the group gauges from an overview.
    pub fn set_groups(&self, groups: &[GroupOverview]) {
        for group in groups {
            let label = GroupLabel {
                group: group.group.clone(),
            };
            self.group_lag_records
                .get_or_create(&label)
                .set(group.lag_records);
            self.group_lag_seconds
                .get_or_create(&label)
                .set(group.lag_seconds);
            for status in GROUP_STATUSES {
                let label = GroupStatusLabel {
                    group: group.group.clone(),
                    status,
                };
                match &group.status {
                    Some(current) => {
                        self.group_status
                            .get_or_create(&label)
                            .set(i64::from(current == status));
                    }
                    None => {
                        self.group_status.remove(&label);
                    }
                }
            }
        }
    }
}
