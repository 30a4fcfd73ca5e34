//! Contracts for every FieldForce topic.
//!
//! Each topic carries one record type, defined here once and shared by the gateway, the
//! stream processors, the sink and partner systems that produce to Kafka directly:
//!
//! - [`submission::RawSubmission`]: the raw topic, written by the gateway and by partners.
//! - [`submission::ProcessedSubmission`]: the validated, located and processed topics; each
//!   processor fills in its own part and passes the rest through unchanged.
//! - [`form::FormDefinition`] and [`project::ProjectSettings`]: compacted topics that the
//!   processors read at run time.
//! - [`webhook::SubmissionStored`]: the stored-submissions topic, written by the sink once the
//!   store acknowledged a submission; [`webhook::WebhookSubscription`] and
//!   [`webhook::WebhookDelivery`]: the webhook dispatcher's subscriptions, retries and
//!   dead-letters.
//! - [`headers`]: the Kafka header names every producer sets, including the dead-letter ones.
//! - [`dead_letter::DeadLetterEnvelope`]: a dead-lettered record as one value, for export tools.
//!
//! Records travel as JSON with a `content-type` header; [`codec`] encodes and decodes them,
//! and [`avro`] encodes and decodes the Avro form of each contract, whose schemas live
//! under `schemas/avro/`.
//! [`odk`] parses the value formats that OpenRosa clients write (geopoints, timestamps).
//! [`analytics`] is the stored shape of the daily figures, written by the analytics
//! aggregator and read by the gateway.

#![deny(missing_docs)]

pub mod analytics;
pub mod avro;
pub mod codec;
pub mod dead_letter;
pub mod form;
pub mod headers;
pub mod odk;
pub mod project;
pub mod submission;
pub mod webhook;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_keys_join_with_slashes() {
        assert_eq!(
            form::form_topic_key("org", "project", "household", "3"),
            "org/project/household/3"
        );
        assert_eq!(
            form::form_topic_key("org", "project", "household", ""),
            "org/project/household/"
        );
        assert_eq!(project::project_topic_key("org", "project"), "org/project");
    }
}
