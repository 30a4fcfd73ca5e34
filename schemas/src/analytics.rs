//! The stored shape of the daily analytics: one document per organisation, project, day and
//! enumerator (or the whole project) in the `analytics_daily` collection. The analytics
//! aggregator writes these documents and the gateway's stats endpoint reads them, so the
//! shape is defined here once.
//!
//! The day of a submission is the calendar date of its interview start in the device's own
//! UTC offset, because that is the day the enumerator did the work. The receive time only
//! shows when the device found a connection, which can be days later for offline field work.
//! A submission without a readable start, or whose start is after the gateway received it
//! (a device clock running ahead), falls back to the UTC date of its receive time.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Collection of the daily figures, in the configured database.
pub const DAILY_COLLECTION: &str = "analytics_daily";

/// Collection of the per-submission contributions the daily figures are computed from.
pub const CONTRIBUTIONS_COLLECTION: &str = "analytics_contributions";

/// Coverage of a daily document's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Every submission of the project on that day.
    Project,
    /// The submissions of one enumerator on that day.
    Enumerator,
}

/// Origin of the enumerator id of a submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnumeratorSource {
    /// The user name of the credentials the submission was sent with.
    Submitter,
    /// The device id, for a submission sent without a user name.
    Device,
    /// Neither a user name nor a device id was sent; the id is empty.
    Unknown,
}

impl EnumeratorSource {
    /// Returns the name used in document ids and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submitter => "submitter",
            Self::Device => "device",
            Self::Unknown => "unknown",
        }
    }
}

/// An enumerator: the submitter's user name, falling back to the device id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Enumerator {
    /// Origin of the id. A user and a device with the same name stay apart.
    pub source: EnumeratorSource,
    /// User name or device id; empty when the source is `unknown`.
    pub id: String,
}

/// The figures of one project or enumerator on one day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DailyFigures {
    /// Submissions counted, the latest revision of each.
    pub submissions: i64,
    /// Submissions with a quality score, the ones the mean is taken over.
    pub scored_submissions: i64,
    /// Mean quality score (0 to 100) of the scored submissions; absent when none is scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_quality_score: Option<f64>,
    /// Submissions per quality check that fired on them, by check name. A check that fired
    /// twice on one submission counts once.
    #[serde(default)]
    pub quality_flags: BTreeMap<String, i64>,
    /// Submissions whose point lies outside every geofence of the project.
    pub outside_geofence: i64,
    /// Submissions with a recorded interview start and end, end not before start: the ones
    /// the median is taken over.
    pub timed_submissions: i64,
    /// Median interview duration of the timed submissions, in seconds; the mean of the two
    /// middle values for an even count, absent when none is timed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub median_interview_duration_s: Option<f64>,
}

/// One document of [`DAILY_COLLECTION`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DailyDocument {
    /// Deterministic id from [`daily_id`].
    #[serde(rename = "_id")]
    pub id: String,
    /// Organisation.
    pub org_id: String,
    /// Project.
    pub project_id: String,
    /// Day as `YYYY-MM-DD`, so that a string range is a date range.
    pub day: String,
    /// Whether the figures cover the project or one enumerator.
    pub scope: Scope,
    /// The enumerator, for [`Scope::Enumerator`] documents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enumerator: Option<Enumerator>,
    /// The figures. A document whose every submission moved away by an edit keeps zero
    /// submissions rather than being deleted, so that its version counter stays.
    #[serde(flatten)]
    pub figures: DailyFigures,
    /// Recomputation counter: raised before every recomputation, and a recomputation writes
    /// only while the counter still contains the value it read.
    pub version: i64,
}

/// Returns the `_id` of a daily document. Each part is escaped, so that no two keys share an
/// id even when an organisation, project or user name contains the separator.
pub fn daily_id(
    org_id: &str,
    project_id: &str,
    day: &str,
    enumerator: Option<&Enumerator>,
) -> String {
    let scope = match enumerator {
        None => "project".to_owned(),
        Some(enumerator) => format!("{}:{}", enumerator.source.as_str(), escape(&enumerator.id)),
    };
    format!(
        "{}/{}/{}/{scope}",
        escape(org_id),
        escape(project_id),
        escape(day)
    )
}

fn escape(part: &str) -> String {
    part.replace('%', "%25").replace('/', "%2F")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daily_id_keeps_keys_apart() {
        let user = Enumerator {
            source: EnumeratorSource::Submitter,
            id: "a/b".into(),
        };
        let device = Enumerator {
            source: EnumeratorSource::Device,
            id: "a/b".into(),
        };
        assert_eq!(
            daily_id("org", "p", "2024-05-01", Some(&user)),
            "org/p/2024-05-01/submitter:a%2Fb"
        );
        assert_ne!(
            daily_id("org", "p", "2024-05-01", Some(&user)),
            daily_id("org", "p", "2024-05-01", Some(&device))
        );
        assert_ne!(
            daily_id("o/p", "q", "2024-05-01", None),
            daily_id("o", "p/q", "2024-05-01", None)
        );
        assert_eq!(
            daily_id("org", "p", "2024-05-01", None),
            "org/p/2024-05-01/project"
        );
    }
}
