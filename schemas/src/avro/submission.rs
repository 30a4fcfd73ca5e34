//! Avro layouts of the submission contracts and their conversions to the Rust types.

use serde::{Deserialize, Serialize};

use super::{PartnerDecodeError, json_text, narrow, parse_json_text};
use crate::submission::{
    Attachment, GeofenceResult, GeometryField, Location, ProcessedSubmission, ProcessingStatus,
    Quality, QualityFlag, RawSubmission, SubmissionSource, Validation, ValidationIssue,
};

/// The Avro field layout of a raw submission; `fields` travels as JSON text because Avro has
/// no type for an arbitrary tree.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct AvroRawSubmission {
    schema_version: i32,
    submission_id: String,
    revision: i32,
    org_id: String,
    project_id: String,
    form_id: String,
    form_version: Option<String>,
    instance_id: Option<String>,
    deprecated_id: Option<String>,
    source: SubmissionSource,
    received_at_ms: i64,
    content_sha256: String,
    submitter: Option<String>,
    device_id: Option<String>,
    fields_json: String,
    attachments: Vec<AvroAttachment>,
    missing_attachments: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct AvroAttachment {
    name: String,
    size_bytes: i64,
    sha256: String,
    content_type: String,
    blob_uri: String,
}

impl From<&RawSubmission> for AvroRawSubmission {
    fn from(raw: &RawSubmission) -> Self {
        Self {
            schema_version: raw.schema_version as i32,
            submission_id: raw.submission_id.clone(),
            revision: raw.revision as i32,
            org_id: raw.org_id.clone(),
            project_id: raw.project_id.clone(),
            form_id: raw.form_id.clone(),
            form_version: raw.form_version.clone(),
            instance_id: raw.instance_id.clone(),
            deprecated_id: raw.deprecated_id.clone(),
            source: raw.source,
            received_at_ms: raw.received_at_ms,
            content_sha256: raw.content_sha256.clone(),
            submitter: raw.submitter.clone(),
            device_id: raw.device_id.clone(),
            fields_json: serde_json::Value::Object(raw.fields.clone()).to_string(),
            attachments: raw
                .attachments
                .iter()
                .map(|attachment| AvroAttachment {
                    name: attachment.name.clone(),
                    size_bytes: attachment.size_bytes as i64,
                    sha256: attachment.sha256.clone(),
                    content_type: attachment.content_type.clone(),
                    blob_uri: attachment.blob_uri.clone(),
                })
                .collect(),
            missing_attachments: raw.missing_attachments.clone(),
        }
    }
}

impl TryFrom<AvroRawSubmission> for RawSubmission {
    type Error = PartnerDecodeError;

    fn try_from(avro: AvroRawSubmission) -> Result<Self, Self::Error> {
        let fields = match serde_json::from_str(&avro.fields_json) {
            Ok(serde_json::Value::Object(fields)) => fields,
            Ok(other) => return Err(PartnerDecodeError::InvalidFields(other.to_string())),
            Err(error) => return Err(PartnerDecodeError::InvalidFields(error.to_string())),
        };
        Ok(Self {
            schema_version: avro.schema_version.max(0) as u32,
            submission_id: avro.submission_id,
            revision: avro.revision.max(0) as u32,
            org_id: avro.org_id,
            project_id: avro.project_id,
            form_id: avro.form_id,
            form_version: avro.form_version,
            instance_id: avro.instance_id,
            deprecated_id: avro.deprecated_id,
            source: avro.source,
            received_at_ms: avro.received_at_ms,
            content_sha256: avro.content_sha256,
            submitter: avro.submitter,
            device_id: avro.device_id,
            fields,
            attachments: avro
                .attachments
                .into_iter()
                .map(|attachment| Attachment {
                    name: attachment.name,
                    size_bytes: attachment.size_bytes.max(0) as u64,
                    sha256: attachment.sha256,
                    content_type: attachment.content_type,
                    blob_uri: attachment.blob_uri,
                })
                .collect(),
            missing_attachments: avro.missing_attachments,
            // NOTE: the Avro form has no field for the encryption manifest, so an encrypted
            // submission loses it on the way through Avro.
            encrypted: None,
        })
    }
}

/// The Avro field layout of a processed submission. GeoJSON objects travel as JSON text.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct AvroProcessedSubmission {
    schema_version: i32,
    submission: AvroRawSubmission,
    validation: Option<AvroValidation>,
    location: Option<AvroLocation>,
    quality: Option<AvroQuality>,
    processing_status: Option<ProcessingStatus>,
}

#[derive(Debug, Serialize, Deserialize)]
struct AvroValidation {
    valid: bool,
    form_known: bool,
    form_version: Option<String>,
    issues: Vec<AvroValidationIssue>,
}

#[derive(Debug, Serialize, Deserialize)]
struct AvroValidationIssue {
    path: String,
    code: String,
    message: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct AvroLocation {
    point_json: Option<String>,
    accuracy_m: Option<f64>,
    source_field: Option<String>,
    geometries: Vec<AvroGeometryField>,
    geofence: Option<AvroGeofenceResult>,
    problems: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct AvroGeometryField {
    path: String,
    geometry_json: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct AvroGeofenceResult {
    inside: bool,
    geofence_id: String,
    distance_m: f64,
}

#[derive(Debug, Serialize, Deserialize)]
struct AvroQuality {
    score: i32,
    flags: Vec<AvroQualityFlag>,
}

#[derive(Debug, Serialize, Deserialize)]
struct AvroQualityFlag {
    check: String,
    penalty: i32,
    reason: String,
}

impl From<&ProcessedSubmission> for AvroProcessedSubmission {
    fn from(processed: &ProcessedSubmission) -> Self {
        Self {
            schema_version: processed.schema_version as i32,
            submission: AvroRawSubmission::from(&processed.submission),
            validation: processed
                .validation
                .as_ref()
                .map(|validation| AvroValidation {
                    valid: validation.valid,
                    form_known: validation.form_known,
                    form_version: validation.form_version.clone(),
                    issues: validation
                        .issues
                        .iter()
                        .map(|issue| AvroValidationIssue {
                            path: issue.path.clone(),
                            code: issue.code.clone(),
                            message: issue.message.clone(),
                        })
                        .collect(),
                }),
            location: processed.location.as_ref().map(AvroLocation::from),
            quality: processed.quality.as_ref().map(|quality| AvroQuality {
                score: i32::from(quality.score),
                flags: quality
                    .flags
                    .iter()
                    .map(|flag| AvroQualityFlag {
                        check: flag.check.clone(),
                        penalty: i32::from(flag.penalty),
                        reason: flag.reason.clone(),
                    })
                    .collect(),
            }),
            processing_status: processed.processing_status,
        }
    }
}

impl From<&Location> for AvroLocation {
    fn from(location: &Location) -> Self {
        Self {
            point_json: location.point.as_ref().map(json_text),
            accuracy_m: location.accuracy_m,
            source_field: location.source_field.clone(),
            geometries: location
                .geometries
                .iter()
                .map(|geometry| AvroGeometryField {
                    path: geometry.path.clone(),
                    geometry_json: json_text(&geometry.geometry),
                })
                .collect(),
            geofence: location
                .geofence
                .as_ref()
                .map(|geofence| AvroGeofenceResult {
                    inside: geofence.inside,
                    geofence_id: geofence.geofence_id.clone(),
                    distance_m: geofence.distance_m,
                }),
            problems: location.problems.clone(),
        }
    }
}

impl TryFrom<AvroProcessedSubmission> for ProcessedSubmission {
    type Error = PartnerDecodeError;

    fn try_from(avro: AvroProcessedSubmission) -> Result<Self, Self::Error> {
        let validation = avro.validation.map(|validation| Validation {
            valid: validation.valid,
            form_known: validation.form_known,
            form_version: validation.form_version,
            issues: validation
                .issues
                .into_iter()
                .map(|issue| ValidationIssue {
                    path: issue.path,
                    code: issue.code,
                    message: issue.message,
                })
                .collect(),
        });
        let quality = avro.quality.map(Quality::try_from).transpose()?;
        Ok(Self {
            schema_version: narrow("schema_version", avro.schema_version)?,
            submission: avro.submission.try_into()?,
            validation,
            location: avro.location.map(Location::try_from).transpose()?,
            quality,
            processing_status: avro.processing_status,
        })
    }
}

impl TryFrom<AvroLocation> for Location {
    type Error = PartnerDecodeError;

    fn try_from(avro: AvroLocation) -> Result<Self, Self::Error> {
        let point = avro
            .point_json
            .as_deref()
            .map(|text| parse_json_text("location.point_json", text))
            .transpose()?;
        let geometries = avro
            .geometries
            .into_iter()
            .map(|geometry| {
                Ok(GeometryField {
                    geometry: parse_json_text(
                        "location.geometries.geometry_json",
                        &geometry.geometry_json,
                    )?,
                    path: geometry.path,
                })
            })
            .collect::<Result<_, PartnerDecodeError>>()?;
        Ok(Self {
            point,
            accuracy_m: avro.accuracy_m,
            source_field: avro.source_field,
            geometries,
            geofence: avro.geofence.map(|geofence| GeofenceResult {
                inside: geofence.inside,
                geofence_id: geofence.geofence_id,
                distance_m: geofence.distance_m,
            }),
            problems: avro.problems,
        })
    }
}

impl TryFrom<AvroQuality> for Quality {
    type Error = PartnerDecodeError;

    fn try_from(avro: AvroQuality) -> Result<Self, Self::Error> {
        let flags = avro
            .flags
            .into_iter()
            .map(|flag| {
                Ok(QualityFlag {
                    penalty: narrow("quality.flags.penalty", flag.penalty)?,
                    check: flag.check,
                    reason: flag.reason,
                })
            })
            .collect::<Result<_, PartnerDecodeError>>()?;
        Ok(Self {
            score: narrow("quality.score", avro.score)?,
            flags,
        })
    }
}
