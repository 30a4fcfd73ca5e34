use serde::{Deserialize, Serialize};

/// Settings of the analytics aggregator, which keeps the daily figures per project and
/// enumerator. Its admin server address and consumer group prefix come from `[processors]`
/// (`admin_listen_addr`, `group_id_prefix`), and its database from `[mongodb]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalyticsConfig {
    /// Most records applied together in one batch. Each batch recomputes every day it
    /// touches from all of that day's contributions, so larger batches cost fewer
    /// recomputations under load. Default 1000.
    pub batch_max_records: usize,
    /// How long a batch waits for more records after its first one, in milliseconds.
    /// Default 200.
    pub batch_linger_ms: u64,
    /// Project-days recomputed concurrently within one batch. Default 8.
    pub recompute_concurrency: usize,
    /// How long a store request may wait to find a server or connect before it fails and the
    /// batch is retried, in milliseconds. Default 5000.
    pub store_timeout_ms: u64,
    /// First pause before retrying a batch after a store failure, in milliseconds. Each retry
    /// doubles it up to `retry_max_backoff_ms`. Default 200.
    pub retry_initial_backoff_ms: u64,
    /// Maximum pause between two retries of a batch, in milliseconds. Default 10000.
    pub retry_max_backoff_ms: u64,
    /// How long shutdown may spend finishing the open batch before it commits what is done
    /// and exits, in milliseconds. Records left over are read again by the next consumer.
    /// Default 10000.
    pub shutdown_drain_timeout_ms: u64,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        Self {
            batch_max_records: 1_000,
            batch_linger_ms: 200,
            recompute_concurrency: 8,
            store_timeout_ms: 5_000,
            retry_initial_backoff_ms: 200,
            retry_max_backoff_ms: 10_000,
            shutdown_drain_timeout_ms: 10_000,
        }
    }
}

impl AnalyticsConfig {
    pub(super) fn validate(&self, problems: &mut Vec<String>) {
        for (name, value) in [
            ("batch_max_records", self.batch_max_records as u64),
            ("recompute_concurrency", self.recompute_concurrency as u64),
            ("store_timeout_ms", self.store_timeout_ms),
            ("retry_initial_backoff_ms", self.retry_initial_backoff_ms),
        ] {
            if value == 0 {
                problems.push(format!("analytics.{name} is 0: set at least 1"));
            }
        }
        if self.retry_max_backoff_ms < self.retry_initial_backoff_ms {
            problems.push(format!(
                "analytics.retry_max_backoff_ms {} is below retry_initial_backoff_ms {}",
                self.retry_max_backoff_ms, self.retry_initial_backoff_ms
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_inverted_limits_are_reported() {
        let config = AnalyticsConfig {
            batch_max_records: 0,
            retry_max_backoff_ms: 1,
            ..AnalyticsConfig::default()
        };
        let mut problems = Vec::new();
        config.validate(&mut problems);
        let text = problems.join("\n");
        assert!(text.contains("analytics.batch_max_records is 0"), "{text}");
        assert!(text.contains("retry_max_backoff_ms"), "{text}");
    }
}
