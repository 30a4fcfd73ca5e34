//! Avro layouts of the form definition and project settings contracts, and their
//! conversions to the Rust types.

use serde::{Deserialize, Serialize};

use super::{PartnerDecodeError, json_text, narrow, parse_json_text};
use crate::form::{FormDefinition, FormField};
use crate::project::{Geofence, ProjectSettings, QualityThresholds};

/// The Avro field layout of a form definition.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct AvroFormDefinition {
    schema_version: i32,
    org_id: String,
    project_id: String,
    form_id: String,
    version: String,
    title: Option<String>,
    fields: Vec<AvroFormField>,
    registered_at_ms: i64,
    xform_sha256: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct AvroFormField {
    path: String,
    data_type: String,
    required: bool,
    choices: Vec<String>,
    repeat: bool,
}

impl From<&FormDefinition> for AvroFormDefinition {
    fn from(form: &FormDefinition) -> Self {
        Self {
            schema_version: form.schema_version as i32,
            org_id: form.org_id.clone(),
            project_id: form.project_id.clone(),
            form_id: form.form_id.clone(),
            version: form.version.clone(),
            title: form.title.clone(),
            fields: form
                .fields
                .iter()
                .map(|field| AvroFormField {
                    path: field.path.clone(),
                    data_type: field.data_type.clone(),
                    required: field.required,
                    choices: field.choices.clone(),
                    repeat: field.repeat,
                })
                .collect(),
            registered_at_ms: form.registered_at_ms,
            xform_sha256: form.xform_sha256.clone(),
        }
    }
}

impl TryFrom<AvroFormDefinition> for FormDefinition {
    type Error = PartnerDecodeError;

    fn try_from(avro: AvroFormDefinition) -> Result<Self, Self::Error> {
        Ok(Self {
            schema_version: narrow("schema_version", avro.schema_version)?,
            org_id: avro.org_id,
            project_id: avro.project_id,
            form_id: avro.form_id,
            version: avro.version,
            title: avro.title,
            fields: avro
                .fields
                .into_iter()
                .map(|field| FormField {
                    path: field.path,
                    data_type: field.data_type,
                    required: field.required,
                    choices: field.choices,
                    repeat: field.repeat,
                })
                .collect(),
            registered_at_ms: avro.registered_at_ms,
            xform_sha256: avro.xform_sha256,
        })
    }
}

/// The Avro field layout of project settings; geofence geometries travel as GeoJSON text.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct AvroProjectSettings {
    schema_version: i32,
    org_id: String,
    project_id: String,
    geofences: Vec<AvroGeofence>,
    quality: AvroQualityThresholds,
}

#[derive(Debug, Serialize, Deserialize)]
struct AvroGeofence {
    id: String,
    name: String,
    geometry_json: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct AvroQualityThresholds {
    min_duration_s: i64,
    max_duration_s: i64,
    max_gps_accuracy_m: f64,
    max_clock_skew_s: i64,
    min_completeness: f64,
    working_hours_start: i32,
    working_hours_end: i32,
    utc_offset_minutes: i32,
}

impl From<&ProjectSettings> for AvroProjectSettings {
    fn from(settings: &ProjectSettings) -> Self {
        let quality = &settings.quality;
        Self {
            schema_version: settings.schema_version as i32,
            org_id: settings.org_id.clone(),
            project_id: settings.project_id.clone(),
            geofences: settings
                .geofences
                .iter()
                .map(|geofence| AvroGeofence {
                    id: geofence.id.clone(),
                    name: geofence.name.clone(),
                    geometry_json: json_text(&geofence.geometry),
                })
                .collect(),
            // Thresholds beyond i64::MAX seconds are meaningless, so saturating is lossless
            // in practice.
            quality: AvroQualityThresholds {
                min_duration_s: i64::try_from(quality.min_duration_s).unwrap_or(i64::MAX),
                max_duration_s: i64::try_from(quality.max_duration_s).unwrap_or(i64::MAX),
                max_gps_accuracy_m: quality.max_gps_accuracy_m,
                max_clock_skew_s: i64::try_from(quality.max_clock_skew_s).unwrap_or(i64::MAX),
                min_completeness: quality.min_completeness,
                working_hours_start: i32::from(quality.working_hours_start),
                working_hours_end: i32::from(quality.working_hours_end),
                utc_offset_minutes: quality.utc_offset_minutes,
            },
        }
    }
}

impl TryFrom<AvroProjectSettings> for ProjectSettings {
    type Error = PartnerDecodeError;

    fn try_from(avro: AvroProjectSettings) -> Result<Self, Self::Error> {
        let geofences = avro
            .geofences
            .into_iter()
            .map(|geofence| {
                Ok(Geofence {
                    geometry: parse_json_text("geofences.geometry_json", &geofence.geometry_json)?,
                    id: geofence.id,
                    name: geofence.name,
                })
            })
            .collect::<Result<_, PartnerDecodeError>>()?;
        let quality = avro.quality;
        Ok(Self {
            schema_version: narrow("schema_version", avro.schema_version)?,
            org_id: avro.org_id,
            project_id: avro.project_id,
            geofences,
            quality: QualityThresholds {
                min_duration_s: narrow("quality.min_duration_s", quality.min_duration_s)?,
                max_duration_s: narrow("quality.max_duration_s", quality.max_duration_s)?,
                max_gps_accuracy_m: quality.max_gps_accuracy_m,
                max_clock_skew_s: narrow("quality.max_clock_skew_s", quality.max_clock_skew_s)?,
                min_completeness: quality.min_completeness,
                working_hours_start: narrow(
                    "quality.working_hours_start",
                    quality.working_hours_start,
                )?,
                working_hours_end: narrow("quality.working_hours_end", quality.working_hours_end)?,
                utc_offset_minutes: quality.utc_offset_minutes,
            },
        })
    }
}
