//! `fieldforce-replay`: a client-side tool for the gateway, and the client library the
//! end-to-end tests and benchmarks share.
//!
//! - `replay` posts a folder of real submissions the way the clients that made them would:
//!   XForms are registered first, loose XML files and ODK Collect instance folders go as
//!   OpenRosa multipart posts with their attachments, JSON files go to the JSON API.
//! - `load` drives the gateway open-loop at a target rate with generated submissions
//!   modelled on real ones, and reports latency percentiles and errors.
//! - `summary` waits until every accepted submission is stored, then reports what the
//!   pipeline did with them: stored, dead-lettered by reason, flagged by quality check,
//!   outside a geofence, accepted-to-stored latency and the lag of every consumer group.
//! - `find` prints stored submissions as JSON.
//! - `encode` writes a raw submission in an encoding partners produce to Kafka (Avro
//!   single-object, Confluent framing, JSON), for `kcat` or any other client to send.

pub mod client;
pub mod encode;
pub mod find;
pub mod generate;
pub mod geofences;
pub mod input;
pub mod ledger;
pub mod load;
pub mod replay;
pub mod report;
pub mod summary;
