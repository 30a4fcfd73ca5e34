use serde::{Deserialize, Serialize};

/// Largest BSON document MongoDB stores (`maxBsonObjectSize`), in bytes.
pub const MONGODB_MAX_DOCUMENT_BYTES: u64 = 16 * 1024 * 1024;

/// Settings of the MongoDB sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SinkConfig {
    /// Address of the admin server (`/healthz`, `/metrics`). Port 0 picks a free port.
    /// Default `127.0.0.1:0`.
    pub admin_listen_addr: String,
    /// Documents in one bulk write at most. A batch is written as soon as it reaches this
    /// count. Default 1000.
    pub batch_max_documents: usize,
    /// Encoded BSON bytes in one bulk write at most. A batch is written as soon as it reaches
    /// this size. Default 8388608 (8 MiB).
    pub batch_max_bytes: usize,
    /// How long the first document of a batch may wait for more before the batch is written,
    /// in milliseconds. Default 200.
    pub batch_linger_ms: u64,
    /// Largest encoded BSON document the sink writes, in bytes; a larger one is dead-lettered
    /// with reason `document_too_large`. At most 16777216 (16 MiB, MongoDB's own limit),
    /// which is also the default.
    pub max_document_bytes: u64,
    /// First pause before retrying a batch after a transient store failure, in milliseconds.
    /// Each retry doubles it up to `retry_max_backoff_ms`. Default 200.
    pub retry_initial_backoff_ms: u64,
    /// Longest pause between two retries of a batch, in milliseconds. Default 10000.
    pub retry_max_backoff_ms: u64,
    /// How long a store request may wait to find a server or connect before it fails and is
    /// retried, in milliseconds. Default 5000.
    pub store_timeout_ms: u64,
    /// How long shutdown may spend writing the open batch and committing offsets, in
    /// milliseconds. Work left after it is read again by the next consumer. Default 10000.
    pub shutdown_drain_timeout_ms: u64,
    /// Text put before the sink's consumer group id (`fieldforce-sink`), so that deployments
    /// or test runs sharing a cluster never join each other's group. Default empty.
    pub group_id_prefix: String,
    /// How often the sink samples its consumer lag per assigned partition for the
    /// `fieldforce_consumer_lag_*` gauges, in milliseconds. Every sample asks the broker for
    /// the log end of each partition. Default 5000.
    pub lag_sample_interval_ms: u64,
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            admin_listen_addr: "127.0.0.1:0".to_owned(),
            batch_max_documents: 1000,
            batch_max_bytes: 8 * 1024 * 1024,
            batch_linger_ms: 200,
            max_document_bytes: MONGODB_MAX_DOCUMENT_BYTES,
            retry_initial_backoff_ms: 200,
            retry_max_backoff_ms: 10_000,
            store_timeout_ms: 5_000,
            shutdown_drain_timeout_ms: 10_000,
            group_id_prefix: String::new(),
            lag_sample_interval_ms: 5_000,
        }
    }
}

impl SinkConfig {
    pub(super) fn validate(&self, problems: &mut Vec<String>) {
        if self
            .admin_listen_addr
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            problems.push(format!(
                "sink.admin_listen_addr {:?} is not an ip:port address",
                self.admin_listen_addr
            ));
        }
        if self.batch_max_documents == 0 {
            problems.push("sink.batch_max_documents must be at least 1".into());
        }
        if self.batch_max_bytes == 0 {
            problems.push("sink.batch_max_bytes must be at least 1".into());
        }
        if self.max_document_bytes == 0 || self.max_document_bytes > MONGODB_MAX_DOCUMENT_BYTES {
            problems.push(format!(
                "sink.max_document_bytes {} must be between 1 and {MONGODB_MAX_DOCUMENT_BYTES}",
                self.max_document_bytes
            ));
        }
        if self.retry_initial_backoff_ms == 0 {
            problems.push("sink.retry_initial_backoff_ms must be at least 1".into());
        }
        if self.retry_max_backoff_ms < self.retry_initial_backoff_ms {
            problems.push(format!(
                "sink.retry_max_backoff_ms {} is below sink.retry_initial_backoff_ms {}",
                self.retry_max_backoff_ms, self.retry_initial_backoff_ms
            ));
        }
        if self.store_timeout_ms == 0 {
            problems.push("sink.store_timeout_ms must be at least 1".into());
        }
        if self.lag_sample_interval_ms == 0 {
            problems.push("sink.lag_sample_interval_ms must be at least 1".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_limits_are_all_reported() {
        let config = SinkConfig {
            batch_max_documents: 0,
            max_document_bytes: MONGODB_MAX_DOCUMENT_BYTES + 1,
            retry_initial_backoff_ms: 500,
            retry_max_backoff_ms: 100,
            ..SinkConfig::default()
        };
        let mut problems = Vec::new();
        config.validate(&mut problems);
        assert_eq!(problems.len(), 3, "{problems:?}");
    }
}
