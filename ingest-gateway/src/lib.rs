//! The ingest gateway: OpenRosa and JSON submissions to Kafka, acknowledged only once durable.

#![deny(missing_docs)]
