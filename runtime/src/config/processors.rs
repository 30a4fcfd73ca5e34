use serde::{Deserialize, Serialize};

/// Settings of the stream processors (validation, geo, quality). Each processor reads the
/// whole section, so one file serves all three.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessorsConfig {
    /// Address of the admin server (`/healthz`, `/metrics`). Port 0 picks a free port.
    /// Default `127.0.0.1:0`.
    pub admin_listen_addr: String,
    /// Most records transformed together in one batch on the rayon pool. Default 256.
    pub batch_max_records: usize,
    /// How long a batch waits for more records after its first one, in milliseconds. Default 5.
    pub batch_linger_ms: u64,
    /// Most batches being transformed at once. While the rayon pool transforms them, the
    /// processor reads the next batch and produces the outputs of finished ones. Outputs are
    /// still produced in the order their batches were read. Default 4.
    pub max_batches_in_transform: usize,
    /// Most records read but not yet acknowledged by Kafka, over all partitions. Intake stops
    /// at this count until deliveries complete. Default 10000.
    pub max_in_flight_records: usize,
    /// Most records of one partition read but not yet acknowledged. While a partition has
    /// this many, intake waits for deliveries. The partition is not paused, because a pause
    /// drops the records the consumer already fetched for it. Default 2000.
    pub max_in_flight_per_partition: usize,
    /// First wait before producing a record again after a failed delivery, in milliseconds;
    /// it doubles on each failure up to `retry_backoff_max_ms`. Default 100.
    pub retry_backoff_initial_ms: u64,
    /// Maximum wait between delivery attempts of one record, in milliseconds. Default 10000.
    pub retry_backoff_max_ms: u64,
    /// How long shutdown waits for in-flight deliveries before committing what is stored and
    /// exiting, in milliseconds. Default 10000.
    pub shutdown_drain_timeout_ms: u64,
    /// How long a processor waits at start to read the forms and project-settings topics up
    /// to their end before it processes anyway with a warning, in milliseconds. Default 30000.
    pub catch_up_timeout_ms: u64,
    /// Recent submissions the quality processor remembers per process to find the same
    /// answers sent again from one device. Older entries are forgotten first. Default 100000.
    pub duplicate_memory_entries: usize,
    /// Text put before each processor's consumer group id (`fieldforce-validation`,
    /// `fieldforce-geo`, `fieldforce-quality`, `fieldforce-analytics`), so that deployments
    /// or test runs sharing a cluster never join each other's groups. Default empty.
    pub group_id_prefix: String,
    /// How often each processor samples its consumer lag per assigned partition for the
    /// `fieldforce_consumer_lag_*` gauges, in milliseconds. Every sample asks the broker for
    /// the log end of each partition. Default 5000.
    pub lag_sample_interval_ms: u64,
}

impl Default for ProcessorsConfig {
    fn default() -> Self {
        Self {
            admin_listen_addr: "127.0.0.1:0".to_owned(),
            batch_max_records: 256,
            batch_linger_ms: 5,
            max_batches_in_transform: 4,
            max_in_flight_records: 10_000,
            max_in_flight_per_partition: 2_000,
            retry_backoff_initial_ms: 100,
            retry_backoff_max_ms: 10_000,
            shutdown_drain_timeout_ms: 10_000,
            catch_up_timeout_ms: 30_000,
            duplicate_memory_entries: 100_000,
            group_id_prefix: String::new(),
            lag_sample_interval_ms: 5_000,
        }
    }
}

impl ProcessorsConfig {
    pub(super) fn validate(&self, problems: &mut Vec<String>) {
        if self
            .admin_listen_addr
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            problems.push(format!(
                "processors.admin_listen_addr {:?} is not an ip:port address",
                self.admin_listen_addr
            ));
        }
        for (name, value) in [
            ("batch_max_records", self.batch_max_records),
            ("max_batches_in_transform", self.max_batches_in_transform),
            ("max_in_flight_records", self.max_in_flight_records),
            (
                "max_in_flight_per_partition",
                self.max_in_flight_per_partition,
            ),
            ("duplicate_memory_entries", self.duplicate_memory_entries),
        ] {
            if value == 0 {
                problems.push(format!("processors.{name} is 0: set at least 1"));
            }
        }
        if self.max_in_flight_per_partition > self.max_in_flight_records {
            problems.push(format!(
                "processors.max_in_flight_per_partition {} exceeds max_in_flight_records {}",
                self.max_in_flight_per_partition, self.max_in_flight_records
            ));
        }
        if self.batch_max_records > self.max_in_flight_records {
            problems.push(format!(
                "processors.batch_max_records {} exceeds max_in_flight_records {}",
                self.batch_max_records, self.max_in_flight_records
            ));
        }
        if self.retry_backoff_initial_ms == 0 {
            problems.push("processors.retry_backoff_initial_ms is 0: set at least 1".into());
        }
        if self.lag_sample_interval_ms == 0 {
            problems.push("processors.lag_sample_interval_ms is 0: set at least 1".into());
        }
        if self.retry_backoff_max_ms < self.retry_backoff_initial_ms {
            problems.push(format!(
                "processors.retry_backoff_max_ms {} is below retry_backoff_initial_ms {}",
                self.retry_backoff_max_ms, self.retry_backoff_initial_ms
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_inverted_limits_are_reported() {
        let config = ProcessorsConfig {
            batch_max_records: 0,
            max_in_flight_per_partition: 20_000,
            retry_backoff_max_ms: 1,
            ..ProcessorsConfig::default()
        };
        let mut problems = Vec::new();
        config.validate(&mut problems);
        let text = problems.join("\n");
        assert!(text.contains("batch_max_records is 0"), "{text}");
        assert!(text.contains("max_in_flight_per_partition"), "{text}");
        assert!(text.contains("retry_backoff_max_ms"), "{text}");
    }
}
