//! The dead-letter envelope: a dead-lettered record in one value, for tools that export the
//! dead-letter topic to files or other systems. On the topic itself a dead letter is the
//! original record with extra headers; the envelope carries the same facts as fields.

use std::collections::BTreeMap;

/// A dead-lettered record with the reason it was given up on and where it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterEnvelope {
    /// Original key, if the record had one.
    pub key: Option<Vec<u8>>,
    /// Original value, if the record had one.
    pub value: Option<Vec<u8>>,
    /// Original headers by name. Kafka allows a name to repeat and a header to have no
    /// value, but the envelope keeps only the last value of a repeated name. A header
    /// without a value becomes an empty byte string.
    pub headers: BTreeMap<String, Vec<u8>>,
    /// Processing stage that gave up: `validation`, `geo`, `quality`, `sink`, ...
    pub stage: String,
    /// Machine-readable reason code, such as `undecodable`.
    pub reason: String,
    /// Detail for the operator, such as the decoder's message.
    pub detail: String,
    /// Topic the record was read from.
    pub source_topic: String,
    /// Partition the record was read from.
    pub partition: i32,
    /// Offset of the record in its partition.
    pub offset: i64,
}
