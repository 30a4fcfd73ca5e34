//! The submission contracts: what the gateway and partners produce, and what each stream
//! processor adds on its way to the store.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Version of [`RawSubmission`] written by this build. Readers accept every version up to it.
pub const RAW_SUBMISSION_VERSION: u32 = 1;

/// Version of [`ProcessedSubmission`] written by this build.
pub const PROCESSED_SUBMISSION_VERSION: u32 = 1;

/// Collection, in the configured database, that contains one document per stored submission
/// under the `_id` `{org_id}/{submission_id}`. The sink writes it and the gateway's submission
/// index reads it, so the name is defined here once.
pub const STORED_COLLECTION: &str = "submissions";

/// A submission as received, before any processing: the value of a record on the raw topic,
/// keyed by [`RawSubmission::submission_id`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawSubmission {
    /// Contract version the producer wrote, [`RAW_SUBMISSION_VERSION`] for this build.
    pub schema_version: u32,
    /// Identity of the submission and the Kafka record key: the instanceID for OpenRosa
    /// submissions, the client's own id for JSON ones. An edit keeps the id of the
    /// submission it edits, so that every version lands on the same partition, in order.
    pub submission_id: String,
    /// 0 for an original, then 1, 2, ... for each edit. A store keeps the highest revision,
    /// so a late replay of an older version never overwrites a newer one.
    #[serde(default)]
    pub revision: u32,
    /// Organisation that owns the submission, always taken from the credentials used.
    pub org_id: String,
    /// Project inside the organisation.
    pub project_id: String,
    /// Form identifier: the XForm root's `id` attribute, or its `xmlns` for CommCare forms.
    pub form_id: String,
    /// Form version from the root's `version` attribute, when the client sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form_version: Option<String>,
    /// `meta/instanceID` as the client wrote it (with its `uuid:` prefix, if any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// `meta/deprecatedID`: the instanceID of the version this edit supersedes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecated_id: Option<String>,
    /// Channel the submission arrived through.
    pub source: SubmissionSource,
    /// Gateway clock when the submission was accepted, in milliseconds since the Unix epoch.
    /// Device times stay inside [`RawSubmission::fields`].
    pub received_at_ms: i64,
    /// Hex SHA-256 of the submission's content (the instance XML or the canonical JSON), so
    /// that an identical resend is recognised and a different one is a conflict.
    pub content_sha256: String,
    /// User name of the enumerator or app user that sent it, from the credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitter: Option<String>,
    /// Device identifier (`meta/deviceID` or `deviceid`), when the client sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// The answers, as a tree of groups and repeats. Leaf values are the strings the client
    /// sent, trimmed; empty answers are absent. Field names are encoded with
    /// [`crate::odk::encode_field_name`] so that they are safe as MongoDB field names.
    pub fields: Map<String, Value>,
    /// Attachments received and stored in the blob store, in the order they arrived.
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    /// File names the submission refers to that have not been received yet.
    #[serde(default)]
    pub missing_attachments: Vec<String>,
    /// Present when the client sent an encrypted submission: its content stays encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<EncryptedSubmission>,
}

/// Channel a submission arrives through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubmissionSource {
    /// OpenRosa multipart POST, as ODK Collect and compatible apps send.
    OpenRosa,
    /// The gateway's JSON API.
    Json,
    /// Produced to Kafka directly by a partner system.
    Partner,
}

/// A file that belongs to a submission, stored in the blob store before the record that
/// refers to it was produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// File name as the client named it (UTF-8, as received).
    pub name: String,
    /// Size in bytes; zero-byte attachments are kept.
    pub size_bytes: u64,
    /// Hex SHA-256 of the content.
    pub sha256: String,
    /// Content type sniffed from the bytes, falling back to the one the client declared.
    pub content_type: String,
    /// Location in the blob store (`file:///...` or `s3://bucket/key`).
    pub blob_uri: String,
}

/// An encrypted OpenRosa submission: the manifest's clear fields plus the encrypted parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedSubmission {
    /// The RSA-wrapped AES key from the manifest, base64 as sent.
    pub base64_encrypted_key: String,
    /// The manifest's signature element, base64 as sent, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted_signature: Option<String>,
    /// Name of the attachment that contains the encrypted instance XML.
    pub encrypted_xml_file: String,
}

/// Outcome of a submission's way through the processors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessingStatus {
    /// Passed every stage; quality flags may still have fired.
    Processed,
    /// Stored, but validation found problems (unknown form, wrong types).
    NeedsReview,
    /// Stored, but attachments it names have not arrived yet.
    AwaitingAttachments,
    /// Stored encrypted; no content checks could run.
    Encrypted,
}

/// A submission on its way through the stream processors and into the store. Each processor
/// sets its own section and leaves the others as they came.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessedSubmission {
    /// Contract version the producer wrote, [`PROCESSED_SUBMISSION_VERSION`] for this build.
    pub schema_version: u32,
    /// The submission as received.
    pub submission: RawSubmission,
    /// Result of validation against the registered form, set by the validation processor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<Validation>,
    /// Location and geofence result, set by the geo processor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// Quality score and flags, set by the quality processor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<Quality>,
    /// Overall status; the last processor sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing_status: Option<ProcessingStatus>,
}

impl ProcessedSubmission {
    /// Wraps a raw submission before any processor has looked at it.
    pub fn from_raw(submission: RawSubmission) -> Self {
        Self {
            schema_version: PROCESSED_SUBMISSION_VERSION,
            submission,
            validation: None,
            location: None,
            quality: None,
            processing_status: None,
        }
    }
}

/// Result of validating a submission against its registered form version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    /// Whether the submission matches its form; false when any issue was found.
    pub valid: bool,
    /// Whether the form and version were found in the registry.
    pub form_known: bool,
    /// Form version validated against, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form_version: Option<String>,
    /// Every problem found, one per field.
    #[serde(default)]
    pub issues: Vec<ValidationIssue>,
}

/// One validation problem on one field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationIssue {
    /// Slash-separated path of the field in the form (`/data/group/field`).
    pub path: String,
    /// Machine-readable code: `unknown_form`, `required_missing`, `invalid_int`, ...
    pub code: String,
    /// Explanation a reviewer can read.
    pub message: String,
}

/// The submission's location and where it falls against the project's geofences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Location {
    /// GeoJSON Point (`[lon, lat]`) of the primary geopoint, ready for a 2dsphere index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<serde_json::Value>,
    /// Reported accuracy of the primary geopoint, in metres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_m: Option<f64>,
    /// Slash-separated path of the field the primary geopoint came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_field: Option<String>,
    /// Every geometry answer (geopoint, geotrace, geoshape) as GeoJSON, by field path.
    #[serde(default)]
    pub geometries: Vec<GeometryField>,
    /// Geofence result, when the project has geofences and the submission has a point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geofence: Option<GeofenceResult>,
    /// GPS problems found: `gps_missing`, `gps_out_of_range`, `gps_null_island`.
    #[serde(default)]
    pub problems: Vec<String>,
}

/// One geometry answer converted to GeoJSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeometryField {
    /// Slash-separated path of the field.
    pub path: String,
    /// The GeoJSON geometry object.
    pub geometry: serde_json::Value,
}

/// Position of a point relative to a project's geofences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeofenceResult {
    /// Whether the point is inside at least one of the project's geofences.
    pub inside: bool,
    /// Id of the geofence that contains the point, or the nearest one when outside.
    pub geofence_id: String,
    /// Distance to the nearest geofence boundary in metres; zero when inside.
    pub distance_m: f64,
}

/// Quality score and the checks that fired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    /// Score from 0 (unusable) to 100 (no check fired).
    pub score: u8,
    /// Every check that fired, with its reason.
    #[serde(default)]
    pub flags: Vec<QualityFlag>,
}

/// One quality check that fired on a submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityFlag {
    /// Stable name of the check: `too_fast`, `gps_inaccurate`, `outside_geofence`, ...
    pub check: String,
    /// Points taken off the score.
    pub penalty: u8,
    /// Reason it fired, with the measured value and the threshold.
    pub reason: String,
}
