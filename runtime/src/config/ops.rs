use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Settings of the operations service (`fieldforce-ops`): the page that shows topics,
/// consumer lag, throughput, dead letters and service health.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpsConfig {
    /// Address the page, `/api/overview`, `/healthz` and `/metrics` are served on. Port 0
    /// picks a free port. Default `127.0.0.1:9400`.
    pub listen_addr: String,
    /// Time between two samples of lag, topic offsets and service health, in milliseconds.
    /// Default 5000.
    pub sample_interval_ms: u64,
    /// How far back the page's charts reach; older samples are dropped, in seconds.
    /// Default 900 (15 minutes).
    pub history_s: u64,
    /// How far apart the two samples are that a group's status compares, in milliseconds: a
    /// group whose committed offsets did not move over this window while it has lag is
    /// stalled. Keep it above the consumers' commit interval (1 s). Default 15000.
    pub status_window_ms: u64,
    /// Records of lag above which a group whose offsets move counts as lagging. Default 1000.
    pub lagging_records: i64,
    /// Seconds of lag above which a group whose offsets move counts as lagging. Default 30.
    pub lagging_seconds: f64,
    /// Admin base URL of each service whose `/healthz` the page shows, by service name, such
    /// as `sink = "http://fieldforce-sink:9100"`. Plain HTTP only, as the admin ports serve. From the environment:
    /// `FIELDFORCE_OPS__SERVICES__SINK=http://fieldforce-sink:9100`. Default empty.
    pub services: BTreeMap<String, String>,
    /// How long one `/healthz` request may take before the service counts as down, in
    /// milliseconds. Default 2000.
    pub health_timeout_ms: u64,
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            listen_addr: "127.0.0.1:9400".to_owned(),
            sample_interval_ms: 5_000,
            history_s: 900,
            status_window_ms: 15_000,
            lagging_records: 1_000,
            lagging_seconds: 30.0,
            services: BTreeMap::new(),
            health_timeout_ms: 2_000,
        }
    }
}

impl OpsConfig {
    pub(super) fn validate(&self, problems: &mut Vec<String>) {
        if self.listen_addr.parse::<std::net::SocketAddr>().is_err() {
            problems.push(format!(
                "ops.listen_addr {:?} is not an ip:port address",
                self.listen_addr
            ));
        }
        for (name, value) in [
            ("sample_interval_ms", self.sample_interval_ms),
            ("history_s", self.history_s),
            ("health_timeout_ms", self.health_timeout_ms),
        ] {
            if value == 0 {
                problems.push(format!("ops.{name} is 0: set at least 1"));
            }
        }
        if self.history_s.saturating_mul(1_000) < self.sample_interval_ms {
            problems.push(format!(
                "ops.history_s {} keeps less than one sample of ops.sample_interval_ms {}",
                self.history_s, self.sample_interval_ms
            ));
        }
        // NaN fails the check too, because it is not a usable threshold.
        if self.lagging_records < 0 || self.lagging_seconds.is_nan() || self.lagging_seconds < 0.0 {
            problems.push(format!(
                "ops.lagging_records {} and ops.lagging_seconds {} must not be negative",
                self.lagging_records, self.lagging_seconds
            ));
        }
        for (name, url) in &self.services {
            if !url.starts_with("http://") {
                problems.push(format!("ops.services.{name} {url:?} is not an http:// URL"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_interval_and_bad_urls_are_reported() {
        let config = OpsConfig {
            sample_interval_ms: 0,
            services: BTreeMap::from([("sink".to_owned(), "fieldforce-sink:9100".to_owned())]),
            ..OpsConfig::default()
        };
        let mut problems = Vec::new();
        config.validate(&mut problems);
        let text = problems.join("\n");
        assert!(text.contains("ops.sample_interval_ms is 0"), "{text}");
        assert!(text.contains("ops.services.sink"), "{text}");
    }
}
