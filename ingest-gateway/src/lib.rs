//! The ingest gateway: OpenRosa and JSON submissions to Kafka, acknowledged only once durable.
//!
//! Layout, in the order a submission meets it:
//!
//! - [`server`]: [`run`] serves HTTP on a listener until shutdown, then drains and flushes.
//! - [`routes`]: routing and the endpoint handlers; [`response`] builds OpenRosa and JSON
//!   answers; [`auth`] maps tokens to an organisation and its projects; [`admission`]
//!   limits submission requests to a budget of body bytes in flight.
//! - [`xml`]: the hardened XML reader (no DOCTYPE, no entity expansion, depth cap) under
//!   [`instance`] (OpenRosa submissions and encrypted manifests) and [`xform`] (form
//!   definitions); [`json_submission`] reads the JSON shapes.
//! - [`intake`]: resend, conflict, edit and split-upload decisions through [`index`] (with
//!   the Bloom [`filter`] of known keys in front of its store),
//!   attachments to [`blob`], then the record through [`producer`], awaited.
//! - [`stats`]: the daily figures of a project, read from the analytics collection.
//! - [`webhooks`]: the webhook subscription API, on its compacted topic.
//! - [`error`]: every failure with its status and message; [`metrics`]: Prometheus metrics.

#![deny(missing_docs)]

pub mod admission;
pub mod auth;
pub mod blob;
pub mod error;
pub mod filter;
pub mod index;
pub mod instance;
pub mod intake;
pub mod json_submission;
pub mod metrics;
pub mod producer;
pub mod response;
pub mod routes;
pub mod server;
pub mod stats;
pub mod webhooks;
pub mod xform;
pub mod xml;

pub use server::{StartError, run};
