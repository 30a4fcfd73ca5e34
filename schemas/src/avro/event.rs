//! Avro layout of the stored-submission event and its conversions to the Rust type.

use serde::{Deserialize, Serialize};

use super::{PartnerDecodeError, narrow};
use crate::submission::ProcessingStatus;
use crate::webhook::SubmissionStored;

/// The Avro field layout of a stored-submission event.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct AvroSubmissionStored {
    schema_version: i32,
    org_id: String,
    project_id: String,
    form_id: String,
    submission_id: String,
    instance_id: Option<String>,
    revision: i32,
    processing_status: Option<ProcessingStatus>,
    quality_score: Option<i32>,
    quality_flags: Vec<String>,
    stored_at_ms: i64,
}

impl From<&SubmissionStored> for AvroSubmissionStored {
    fn from(event: &SubmissionStored) -> Self {
        Self {
            schema_version: event.schema_version as i32,
            org_id: event.org_id.clone(),
            project_id: event.project_id.clone(),
            form_id: event.form_id.clone(),
            submission_id: event.submission_id.clone(),
            instance_id: event.instance_id.clone(),
            // A revision above i32::MAX would need two billion edits of one submission.
            revision: i32::try_from(event.revision).unwrap_or(i32::MAX),
            processing_status: event.processing_status,
            quality_score: event.quality_score.map(i32::from),
            quality_flags: event.quality_flags.clone(),
            stored_at_ms: event.stored_at_ms,
        }
    }
}

impl TryFrom<AvroSubmissionStored> for SubmissionStored {
    type Error = PartnerDecodeError;

    fn try_from(avro: AvroSubmissionStored) -> Result<Self, Self::Error> {
        Ok(Self {
            schema_version: narrow("schema_version", avro.schema_version)?,
            org_id: avro.org_id,
            project_id: avro.project_id,
            form_id: avro.form_id,
            submission_id: avro.submission_id,
            instance_id: avro.instance_id,
            revision: narrow("revision", avro.revision)?,
            processing_status: avro.processing_status,
            quality_score: avro
                .quality_score
                .map(|score| narrow("quality_score", score))
                .transpose()?,
            quality_flags: avro.quality_flags,
            stored_at_ms: avro.stored_at_ms,
        })
    }
}
