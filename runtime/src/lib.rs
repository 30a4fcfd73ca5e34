//! Service plumbing shared by every FieldForce binary.
//!
//! - [`config`]: one configuration layer for every service (defaults, then a TOML file, then
//!   `FIELDFORCE_*` environment variables), with the Kafka and MongoDB connection settings
//!   that all services share and one section per service.
//! - [`telemetry`]: structured logging and OpenTelemetry trace export, set up once per process.
//! - [`shutdown`]: the one signal path every service drains on.

#![deny(missing_docs)]

pub mod config;
pub mod shutdown;
pub mod telemetry;
