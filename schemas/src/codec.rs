//! JSON encoding of the contracts on internal topics.
//!
//! JSON rather than Avro on the hot path: serde_json encodes a submission several times faster
//! than apache-avro, and the Avro schemas under `schemas/avro/` describe the same records for
//! partners.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Value of the `content-type` header for JSON records.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// A record value that could not be decoded. The record is dead-lettered, never retried.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not JSON of the expected contract.
    #[error("invalid {contract} record: {source}")]
    Invalid {
        /// Contract that was expected.
        contract: &'static str,
        /// What serde_json found.
        source: serde_json::Error,
    },
    /// The record was written with a newer contract version than this build reads.
    #[error("{contract} version {found} is newer than the supported version {supported}")]
    UnsupportedVersion {
        /// Contract that was expected.
        contract: &'static str,
        /// Version in the record.
        found: u32,
        /// Newest version this build reads.
        supported: u32,
    },
}

/// A contract carried on a topic: its name and the newest version this build reads.
pub trait Contract: Serialize + DeserializeOwned {
    /// Contract name, as written in the schema header (`raw-submission`).
    const NAME: &'static str;
    /// Newest version this build writes and reads.
    const VERSION: u32;
    /// Version stored in the record itself.
    fn schema_version(&self) -> u32;

    /// Returns the schema header value, such as `raw-submission/1`.
    fn schema_header() -> String {
        format!("{}/{}", Self::NAME, Self::VERSION)
    }
}

impl Contract for crate::submission::RawSubmission {
    const NAME: &'static str = "raw-submission";
    const VERSION: u32 = crate::submission::RAW_SUBMISSION_VERSION;
    fn schema_version(&self) -> u32 {
        self.schema_version
    }
}

impl Contract for crate::submission::ProcessedSubmission {
    const NAME: &'static str = "processed-submission";
    const VERSION: u32 = crate::submission::PROCESSED_SUBMISSION_VERSION;
    fn schema_version(&self) -> u32 {
        self.schema_version
    }
}

impl Contract for crate::form::FormDefinition {
    const NAME: &'static str = "form-definition";
    const VERSION: u32 = crate::form::FORM_DEFINITION_VERSION;
    fn schema_version(&self) -> u32 {
        self.schema_version
    }
}

impl Contract for crate::project::ProjectSettings {
    const NAME: &'static str = "project-settings";
    const VERSION: u32 = crate::project::PROJECT_SETTINGS_VERSION;
    fn schema_version(&self) -> u32 {
        self.schema_version
    }
}

impl Contract for crate::webhook::SubmissionStored {
    const NAME: &'static str = "submission-stored";
    const VERSION: u32 = crate::webhook::SUBMISSION_STORED_VERSION;
    fn schema_version(&self) -> u32 {
        self.schema_version
    }
}

impl Contract for crate::webhook::WebhookSubscription {
    const NAME: &'static str = "webhook-subscription";
    const VERSION: u32 = crate::webhook::WEBHOOK_SUBSCRIPTION_VERSION;
    fn schema_version(&self) -> u32 {
        self.schema_version
    }
}

impl Contract for crate::webhook::WebhookDelivery {
    const NAME: &'static str = "webhook-delivery";
    const VERSION: u32 = crate::webhook::WEBHOOK_DELIVERY_VERSION;
    fn schema_version(&self) -> u32 {
        self.schema_version
    }
}

/// Encodes a record value as JSON.
pub fn encode<T: Contract>(record: &T) -> Vec<u8> {
    // serde_json fails only on non-string map keys and on custom Serialize errors, and the
    // contracts have neither.
    serde_json::to_vec(record).expect("contract types always serialize to JSON")
}

/// Decodes a record value, rejecting versions newer than this build reads.
pub fn decode<T: Contract>(bytes: &[u8]) -> Result<T, DecodeError> {
    let record: T = serde_json::from_slice(bytes).map_err(|source| DecodeError::Invalid {
        contract: T::NAME,
        source,
    })?;
    if record.schema_version() > T::VERSION {
        return Err(DecodeError::UnsupportedVersion {
            contract: T::NAME,
            found: record.schema_version(),
            supported: T::VERSION,
        });
    }
    Ok(record)
}
