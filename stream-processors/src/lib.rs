//! The FieldForce stream processors: three services chained through Kafka topics, each its
//! own binary and consumer group.
//!
//! - [`validate`]: `submissions.raw` to `submissions.validated`, checking answers against the
//!   registered form version.
//! - [`geo`]: `submissions.validated` to `submissions.located`, converting geometry answers to
//!   GeoJSON and testing the primary point against the project's geofences ([`geofence`]).
//! - [`quality`]: `submissions.located` to `submissions.processed`, scoring the submission and
//!   setting its processing status.
//! - [`webhooks`]: `submissions.stored` to the projects' webhook endpoints, with retry topics
//!   and a dead-letter topic of its own.
//! - [`analytics`]: `submissions.processed` to the daily figures in MongoDB, exact under
//!   restarts and edits.
//!
//! They share [`pipeline`] (consume, transform batches on rayon, produce, store offsets after
//! delivery, dead-letter what cannot be processed), [`registry`] (forms and project settings
//! read at run time from the compacted topics), [`admin`] (the `/healthz` and `/metrics`
//! server) and [`metrics`] (every metric name, declared once).

#![deny(missing_docs)]

pub mod admin;
pub mod analytics;
pub mod error;
pub mod fields;
pub mod geo;
pub mod geofence;
pub mod metrics;
pub mod pipeline;
pub mod quality;
pub mod record;
pub mod registry;
pub mod validate;
pub mod webhooks;

pub use error::ProcessorError;
