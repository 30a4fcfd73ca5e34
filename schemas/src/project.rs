//! Project settings, published on a compacted topic keyed by `org_id/project_id`: the
//! geofences enumerators are assigned to and the thresholds of the quality checks. Processors
//! apply a new record without restarting.

use serde::{Deserialize, Serialize};

/// Version of [`ProjectSettings`] written by this build.
pub const PROJECT_SETTINGS_VERSION: u32 = 1;

/// Settings of one project.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectSettings {
    /// Contract version the producer wrote.
    pub schema_version: u32,
    /// Organisation that owns the project.
    pub org_id: String,
    /// Project identifier.
    pub project_id: String,
    /// Areas enumerators are assigned to; a point outside all of them is flagged.
    #[serde(default)]
    pub geofences: Vec<Geofence>,
    /// Thresholds of the quality checks.
    #[serde(default)]
    pub quality: QualityThresholds,
}

impl ProjectSettings {
    /// Returns the compacted-topic key.
    pub fn topic_key(&self) -> String {
        project_topic_key(&self.org_id, &self.project_id)
    }
}

/// Builds the compacted-topic key of a project.
pub fn project_topic_key(org_id: &str, project_id: &str) -> String {
    // Joined rather than formatted, as the form key, because it is built for every record.
    [org_id, project_id].join("/")
}

/// One assigned area.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Geofence {
    /// Identifier, unique in the project.
    pub id: String,
    /// Name shown to supervisors.
    #[serde(default)]
    pub name: String,
    /// GeoJSON Polygon or MultiPolygon geometry, `[lon, lat]` positions.
    pub geometry: serde_json::Value,
}

/// Thresholds of the quality checks. Every field has a default that suits household surveys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QualityThresholds {
    /// Interviews shorter than this, in seconds, are flagged as too fast. Default 120.
    pub min_duration_s: u64,
    /// Interviews longer than this, in seconds, are flagged as implausibly long. Default 14400.
    pub max_duration_s: u64,
    /// GPS accuracy worse than this, in metres, is flagged. Default 50.
    pub max_gps_accuracy_m: f64,
    /// End times further than this in the future of the gateway clock, in seconds, are
    /// flagged as clock skew. Default 300.
    pub max_clock_skew_s: u64,
    /// Share of answered fields below which a submission is flagged incomplete, 0 to 1.
    /// Default 0.5.
    pub min_completeness: f64,
    /// First hour (0 to 23, local to `utc_offset_minutes`) of working time. Default 6.
    pub working_hours_start: u8,
    /// Hour (1 to 24) at which working time ends. Default 20.
    pub working_hours_end: u8,
    /// Offset of the project's local time from UTC, in minutes. Default 0.
    pub utc_offset_minutes: i32,
}

impl Default for QualityThresholds {
    fn default() -> Self {
        Self {
            min_duration_s: 120,
            max_duration_s: 4 * 3600,
            max_gps_accuracy_m: 50.0,
            max_clock_skew_s: 300,
            min_completeness: 0.5,
            working_hours_start: 6,
            working_hours_end: 20,
            utc_offset_minutes: 0,
        }
    }
}
