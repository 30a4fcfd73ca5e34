//! Kafka header names. Every FieldForce producer sets [`CONTENT_TYPE`] and [`SCHEMA`]; the
//! dead-letter headers are added to the original record's own headers, which are kept.

/// Media type of the record value: [`crate::codec::JSON_CONTENT_TYPE`] for internal topics.
pub const CONTENT_TYPE: &str = "content-type";
/// Contract name and version of the value, such as `raw-submission/1`.
pub const SCHEMA: &str = "fieldforce-schema";
/// Processing stage that dead-lettered the record (`validation`, `geo`, `quality`, `sink`).
pub const DEAD_LETTER_STAGE: &str = "fieldforce-dlq-stage";
/// Machine-readable reason code of the dead-letter, such as `undecodable`.
pub const DEAD_LETTER_REASON: &str = "fieldforce-dlq-reason";
/// Human-readable detail of the dead-letter reason.
pub const DEAD_LETTER_DETAIL: &str = "fieldforce-dlq-detail";
/// Topic the dead-lettered record was read from.
pub const DEAD_LETTER_TOPIC: &str = "fieldforce-dlq-topic";
/// Partition the dead-lettered record was read from, in decimal.
pub const DEAD_LETTER_PARTITION: &str = "fieldforce-dlq-partition";
/// Offset of the dead-lettered record, in decimal.
pub const DEAD_LETTER_OFFSET: &str = "fieldforce-dlq-offset";
/// W3C trace context of the submission, carried from the gateway to the sink.
pub const TRACEPARENT: &str = "traceparent";
/// Vendor-specific W3C trace state that travels with [`TRACEPARENT`].
pub const TRACESTATE: &str = "tracestate";
