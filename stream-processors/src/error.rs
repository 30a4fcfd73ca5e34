//! Errors of the stream processors, each classified once: retry, dead-letter, or stop.

use fieldforce_kafka::dead_letter::DeadLetterReason;

/// A record that a transform cannot turn into output. The record is dead-lettered with this
/// reason and its partition moves on; retrying would fail the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct Unprocessable {
    /// Machine-readable reason code, such as `undecodable`.
    pub code: &'static str,
    /// Detail for the operator.
    pub detail: String,
}

impl Unprocessable {
    /// Builds the dead-letter reason for the given stage.
    pub fn reason(&self, stage: &'static str) -> DeadLetterReason {
        DeadLetterReason {
            stage,
            code: self.code,
            detail: self.detail.clone(),
        }
    }
}

/// A failure that stops a processor. Each variant is fatal: the process exits and its
/// supervisor restarts it, resuming from the last committed offsets.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    /// A Kafka client could not be created or subscribed.
    #[error("kafka client setup failed: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The admin server could not bind its address.
    #[error("admin server cannot listen on {addr}: {source}")]
    AdminBind {
        /// Configured address.
        addr: String,
        /// What the OS reported.
        source: std::io::Error,
    },
    /// A blocking task or a rayon batch ended without an answer, which means it panicked.
    #[error("a background task panicked")]
    TaskPanicked,
    /// The analytics aggregator's MongoDB settings are unusable.
    #[error("analytics store setup failed: {0}")]
    AnalyticsStore(#[source] crate::analytics::store::StoreError),
    /// A file of `webhooks.extra_ca_certificate_files` is unreadable or contains no usable CA
    /// certificate. Fix the file or the setting before restarting.
    #[error("loading CA certificates from {path} failed: {reason}")]
    CaCertificates {
        /// Configured path.
        path: String,
        /// Cause of the failure.
        reason: String,
    },
}
