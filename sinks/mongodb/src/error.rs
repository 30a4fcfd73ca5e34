//! Failures that stop the sink. Everything else is handled where it happens: a transient
//! store or Kafka failure is retried with backoff, and a record that can never be stored is
//! dead-lettered with one of the reason codes below.

/// Dead-letter reason: the record value is not a processed submission this build reads.
pub const REASON_UNDECODABLE: &str = "undecodable";
/// Dead-letter reason: the submission has no BSON form.
pub const REASON_INVALID_DOCUMENT: &str = "invalid_document";
/// Dead-letter reason: the encoded document is above `sink.max_document_bytes`.
pub const REASON_DOCUMENT_TOO_LARGE: &str = "document_too_large";
/// Dead-letter reason: the store rejected the document for its content.
pub const REASON_REJECTED_BY_STORE: &str = "rejected_by_store";
/// Dead-letter reason: the store, or an earlier record of the same batch, has another
/// version of the same submission revision, with different content.
pub const REASON_CONFLICTING_REVISION: &str = "conflicting_revision";

/// A failure that stops the sink: its settings are unusable or a local resource is missing.
/// Restarting with the same configuration fails the same way, so an operator must act.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The Kafka consumer or producer could not be created or subscribed.
    #[error("kafka client setup failed: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The MongoDB settings are unusable.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The admin server could not bind its address.
    #[error("binding the admin server to {address} failed: {source}")]
    AdminBind {
        /// Configured address.
        address: String,
        /// Operating system error.
        source: std::io::Error,
    },
}
