//! The stored shape of a submission: one BSON document per submission, `_id` = submission id,
//! with every field a review screen filters on (organisation, project, form, status, quality,
//! geofence, attachment metadata) at a fixed path rather than inside an opaque blob.
//!
//! The document holds nothing that changes between two writes of the same record (no
//! "stored at" clock), so a replay writes a byte-identical document.

use bson::{Bson, DateTime, Document, RawDocumentBuf, doc};
use fieldforce_schemas::submission::{Location, ProcessedSubmission};

/// A submission ready for the store.
#[derive(Debug, Clone)]
pub struct StoredDocument {
    /// Submission id, the document's `_id`.
    pub id: String,
    /// Revision: 0 for an original, higher for each edit.
    pub revision: u32,
    /// Hex SHA-256 of the submission's content, as the gateway computed it.
    pub content_sha256: String,
    /// The encoded document.
    pub raw: RawDocumentBuf,
}

impl StoredDocument {
    /// Encoded size in bytes.
    pub fn size_bytes(&self) -> usize {
        self.raw.as_bytes().len()
    }
}

/// A submission that cannot become a document. The record is dead-lettered.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// A value has no BSON form, such as an integer above `i64::MAX`.
    #[error("submission {id} has no BSON form: {detail}")]
    Unencodable {
        /// Submission id.
        id: String,
        /// What the BSON encoder found.
        detail: String,
    },
    /// The encoded document is larger than the configured maximum.
    #[error("submission {id} encodes to {size_bytes} bytes, above the maximum of {max_bytes}")]
    TooLarge {
        /// Submission id.
        id: String,
        /// Encoded size.
        size_bytes: usize,
        /// Configured maximum.
        max_bytes: u64,
    },
}

impl DocumentError {
    /// Dead-letter reason code.
    pub fn reason_code(&self) -> &'static str {
        match self {
            DocumentError::Unencodable { .. } => "invalid_document",
            DocumentError::TooLarge { .. } => "document_too_large",
        }
    }
}

/// Builds the stored document of a processed submission and checks its size.
pub fn to_document(
    processed: &ProcessedSubmission,
    max_bytes: u64,
) -> Result<StoredDocument, DocumentError> {
    let id = stored_id(
        &processed.submission.org_id,
        &processed.submission.submission_id,
    );
    let unencodable = |detail: String| DocumentError::Unencodable {
        id: id.clone(),
        detail,
    };
    let document = build(processed).map_err(|error| unencodable(error.to_string()))?;
    // Encoding fails only on documents the BSON format cannot hold, such as keys with NUL.
    let raw =
        RawDocumentBuf::from_document(&document).map_err(|error| unencodable(error.to_string()))?;

    let size_bytes = raw.as_bytes().len();
    if size_bytes as u64 > max_bytes {
        return Err(DocumentError::TooLarge {
            id,
            size_bytes,
            max_bytes,
        });
    }
    Ok(StoredDocument {
        id,
        revision: processed.submission.revision,
        content_sha256: processed.submission.content_sha256.clone(),
        raw,
    })
}

/// Returns the `_id` of a stored submission. Submission ids are unique only within an
/// organisation (JSON clients choose their own, and some instanceIDs are plain words), so the
/// organisation is part of the key and one tenant's submission never shadows another's.
pub fn stored_id(org_id: &str, submission_id: &str) -> String {
    format!("{org_id}/{submission_id}")
}

fn build(processed: &ProcessedSubmission) -> Result<Document, bson::ser::Error> {
    let submission = &processed.submission;
    // The gateway's clock; device times stay inside `fields`.
    let received_at = DateTime::from_millis(submission.received_at_ms);

    let mut document = doc! {
        "_id": stored_id(&submission.org_id, &submission.submission_id),
        "submission_id": &submission.submission_id,
        "schema_version": processed.schema_version as i64,
        "org_id": &submission.org_id,
        "project_id": &submission.project_id,
        "form_id": &submission.form_id,
        "revision": submission.revision as i64,
        "source": bson::to_bson(&submission.source)?,
        "content_sha256": &submission.content_sha256,
        "received_at": received_at,
        "submitted_at": received_at,
    };
    for (key, value) in [
        ("form_version", &submission.form_version),
        ("instance_id", &submission.instance_id),
        ("deprecated_id", &submission.deprecated_id),
        ("submitter", &submission.submitter),
        ("device_id", &submission.device_id),
    ] {
        if let Some(value) = value {
            document.insert(key, value);
        }
    }

    document.insert("fields", bson::to_bson(&submission.fields)?);
    document.insert("attachments", bson::to_bson(&submission.attachments)?);
    document.insert(
        "missing_attachments",
        bson::to_bson(&submission.missing_attachments)?,
    );
    if let Some(encrypted) = &submission.encrypted {
        document.insert("encrypted", bson::to_bson(encrypted)?);
    }
    if let Some(validation) = &processed.validation {
        document.insert("validation", bson::to_bson(validation)?);
    }
    if let Some(location) = &processed.location {
        document.insert("location", location_document(location)?);
    }
    if let Some(quality) = &processed.quality {
        document.insert("quality", bson::to_bson(quality)?);
    }
    if let Some(status) = &processed.processing_status {
        document.insert("processing_status", bson::to_bson(status)?);
    }
    Ok(document)
}

fn location_document(location: &Location) -> Result<Bson, bson::ser::Error> {
    let mut document = doc! {
        "geometries": bson::to_bson(&location.geometries)?,
        "problems": bson::to_bson(&location.problems)?,
    };
    // Absent rather than null: a 2dsphere index rejects a null `point` on MongoDB, but skips
    // documents without one.
    if let Some(point) = &location.point {
        document.insert("point", bson::to_bson(point)?);
    }
    if let Some(accuracy_m) = location.accuracy_m {
        document.insert("accuracy_m", accuracy_m);
    }
    if let Some(source_field) = &location.source_field {
        document.insert("source_field", source_field);
    }
    if let Some(geofence) = &location.geofence {
        document.insert("geofence", bson::to_bson(geofence)?);
    }
    Ok(Bson::Document(document))
}

#[cfg(test)]
mod tests {
    use fieldforce_schemas::submission::{
        Attachment, GeofenceResult, ProcessingStatus, Quality, QualityFlag, RawSubmission,
        SubmissionSource,
    };
    use serde_json::json;

    use super::*;

    fn processed() -> ProcessedSubmission {
        let fields = json!({"household": {"members": "4"}, "consent": "yes"});
        let mut processed = ProcessedSubmission::from_raw(RawSubmission {
            schema_version: 1,
            submission_id: "uuid:1".into(),
            revision: 2,
            org_id: "org".into(),
            project_id: "project".into(),
            form_id: "household_survey".into(),
            form_version: Some("3".into()),
            instance_id: Some("uuid:1b".into()),
            deprecated_id: None,
            source: SubmissionSource::OpenRosa,
            received_at_ms: 1_700_000_000_123,
            content_sha256: "ab".repeat(32),
            submitter: Some("enumerator1".into()),
            device_id: None,
            fields: fields.as_object().cloned().unwrap_or_default(),
            attachments: vec![Attachment {
                name: "photo.jpg".into(),
                size_bytes: 2048,
                sha256: "cd".repeat(32),
                content_type: "image/jpeg".into(),
                blob_uri: "file:///blobs/photo.jpg".into(),
            }],
            missing_attachments: vec![],
            encrypted: None,
        });
        processed.location = Some(Location {
            point: Some(json!({"type": "Point", "coordinates": [36.8, -1.28]})),
            accuracy_m: Some(4.5),
            source_field: Some("/data/gps".into()),
            geometries: vec![],
            geofence: Some(GeofenceResult {
                inside: false,
                geofence_id: "ward-7".into(),
                distance_m: 120.0,
            }),
            problems: vec![],
        });
        processed.quality = Some(Quality {
            score: 80,
            flags: vec![QualityFlag {
                check: "outside_geofence".into(),
                penalty: 20,
                reason: "120 m outside ward-7".into(),
            }],
        });
        processed.processing_status = Some(ProcessingStatus::NeedsReview);
        processed
    }

    #[test]
    fn same_submission_id_in_two_organisations_gets_two_ids() {
        let first = processed();
        let mut second = processed();
        second.submission.org_id = "another-org".into();

        let first = to_document(&first, u64::MAX).unwrap();
        let second = to_document(&second, u64::MAX).unwrap();

        assert_ne!(first.id, second.id);
        assert!(second.id.starts_with("another-org/"), "{}", second.id);
    }

    #[test]
    fn review_fields_are_top_level_and_typed() {
        let stored = to_document(&processed(), 16 * 1024 * 1024).unwrap();
        let document = stored.raw.to_document().unwrap();

        assert_eq!(document.get_str("submission_id").unwrap(), "uuid:1");
        let org = document.get_str("org_id").unwrap();
        assert_eq!(document.get_str("_id").unwrap(), format!("{org}/uuid:1"));
        assert_eq!(document.get_i64("revision").unwrap(), 2);
        assert_eq!(
            document.get_str("processing_status").unwrap(),
            "needs_review"
        );
        assert_eq!(document.get_str("source").unwrap(), "open_rosa");
        assert_eq!(
            document
                .get_datetime("submitted_at")
                .unwrap()
                .timestamp_millis(),
            1_700_000_000_123
        );
        assert_eq!(
            document
                .get_document("quality")
                .unwrap()
                .get_i32("score")
                .unwrap(),
            80
        );
        let geofence = document
            .get_document("location")
            .and_then(|location| location.get_document("geofence"))
            .unwrap();
        assert!(!geofence.get_bool("inside").unwrap());
        let attachment = document.get_array("attachments").unwrap()[0]
            .as_document()
            .unwrap();
        assert_eq!(attachment.get_i64("size_bytes").unwrap(), 2048);
        assert!(!document.contains_key("device_id"), "absent, not null");
    }

    #[test]
    fn same_submission_encodes_to_same_bytes() {
        let first = to_document(&processed(), u64::MAX).unwrap();
        let second = to_document(&processed(), u64::MAX).unwrap();
        assert_eq!(first.raw.as_bytes(), second.raw.as_bytes());
    }

    #[test]
    fn document_above_maximum_is_rejected() {
        let error = to_document(&processed(), 100).unwrap_err();
        assert_eq!(error.reason_code(), "document_too_large");
    }
}
