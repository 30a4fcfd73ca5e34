//! The FieldForce topic catalog and the Kafka plumbing every service shares.
//!
//! - [`catalog`]: the topics in `kafka/topics.toml`, embedded at build time, and their names.
//! - [`compacted`]: reading a whole compacted topic once, up to its current end.
//! - [`client`]: librdkafka configurations for producers and consumers, built from the shared
//!   [`fieldforce_runtime::config::KafkaConfig`] so that SASL and TLS settings pass through.
//! - [`admin`]: creating the catalog's topics and reporting drift from it.
//! - [`offsets`]: which offset of a partition may be committed, given the records whose
//!   output is durable.
//! - [`dead_letter`]: building a dead-letter record that keeps the original bytes.
//! - [`trace_context`]: the W3C trace context carried in record headers from stage to stage.
//! - [`lag`]: consumer-group lag in records and seconds, and a status per group; the lag gauges
//!   every consumer service exports, and their sampling inside the service.

#![deny(missing_docs)]

pub mod admin;
pub mod catalog;
pub mod client;
pub mod compacted;
pub mod dead_letter;
pub mod lag;
pub mod offsets;
pub mod trace_context;
