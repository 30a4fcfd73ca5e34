//! The contribution of one submission to the daily figures, and the figures of a set of
//! contributions. Pure functions without IO.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
use fieldforce_schemas::analytics::{DailyFigures, Enumerator, EnumeratorSource};
use fieldforce_schemas::submission::ProcessedSubmission;
use serde::{Deserialize, Serialize};

use crate::fields::Answer;
use crate::quality::interview_times;

/// The project, day and enumerator a contribution counts under. The organisation is not part
/// of it because it is part of the contribution's id, so no revision can change it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Slot {
    /// Project.
    pub project_id: String,
    /// Day as `YYYY-MM-DD`.
    pub day: String,
    /// Enumerator.
    pub enumerator: Enumerator,
}

/// One submission's part of the daily figures: a document of the contributions collection,
/// one per submission, holding its latest revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contribution {
    /// `org/submission_id`, the same key the submissions collection uses.
    #[serde(rename = "_id")]
    pub id: String,
    /// Organisation.
    pub org_id: String,
    /// Submission id.
    pub submission_id: String,
    /// Revision this contribution was computed from.
    pub revision: i64,
    /// Project, day and enumerator it counts under.
    #[serde(flatten)]
    pub slot: Slot,
    /// Quality score, when the quality processor scored the submission.
    pub quality_score: Option<i64>,
    /// Names of the quality checks that fired, each once, sorted.
    pub quality_flags: Vec<String>,
    /// Whether the point lies outside every geofence of the project.
    pub outside_geofence: bool,
    /// Interview duration in seconds, when start and end are recorded and in order.
    pub interview_duration_s: Option<i64>,
    /// Slots an earlier revision was counted in, whose figures may not have been recomputed
    /// since this revision replaced it. Cleared once they are.
    #[serde(default)]
    pub pending: Vec<Slot>,
}

/// Builds the contribution of a processed submission.
pub fn contribution(processed: &ProcessedSubmission) -> Contribution {
    let submission = &processed.submission;
    let (start, end) = interview_times(&Answer::group_of(&submission.fields));
    let day = day_of(start, submission.received_at_ms);
    let interview_duration_s = match (start, end) {
        (Some(start), Some(end)) if end >= start => Some((end - start).num_seconds()),
        _ => None,
    };
    let quality_flags: BTreeSet<String> = processed
        .quality
        .iter()
        .flat_map(|quality| quality.flags.iter().map(|flag| flag.check.clone()))
        .collect();
    let outside_geofence = processed
        .location
        .as_ref()
        .and_then(|location| location.geofence.as_ref())
        .is_some_and(|geofence| !geofence.inside);

    Contribution {
        id: format!("{}/{}", submission.org_id, submission.submission_id),
        org_id: submission.org_id.clone(),
        submission_id: submission.submission_id.clone(),
        revision: i64::from(submission.revision),
        slot: Slot {
            project_id: submission.project_id.clone(),
            day: day.format("%Y-%m-%d").to_string(),
            enumerator: enumerator_of(
                submission.submitter.as_deref(),
                submission.device_id.as_deref(),
            ),
        },
        quality_score: processed
            .quality
            .as_ref()
            .map(|quality| i64::from(quality.score)),
        quality_flags: quality_flags.into_iter().collect(),
        outside_geofence,
        interview_duration_s,
        pending: Vec::new(),
    }
}

/// Returns the day a submission counts on: the date of the interview start in the device's
/// own offset. Without a start, or with a start after the receive time (a device clock
/// running ahead), it is the UTC date of the receive time.
pub fn day_of(start: Option<DateTime<FixedOffset>>, received_at_ms: i64) -> NaiveDate {
    match start {
        Some(start) if start.timestamp_millis() <= received_at_ms => start.date_naive(),
        _ => DateTime::<Utc>::from_timestamp_millis(received_at_ms)
            .unwrap_or_default()
            .date_naive(),
    }
}

/// Returns the enumerator of a submission: the submitter's user name, else the device id.
pub fn enumerator_of(submitter: Option<&str>, device_id: Option<&str>) -> Enumerator {
    if let Some(user) = present(submitter) {
        return Enumerator {
            source: EnumeratorSource::Submitter,
            id: user.to_owned(),
        };
    }
    if let Some(device) = present(device_id) {
        return Enumerator {
            source: EnumeratorSource::Device,
            id: device.to_owned(),
        };
    }
    Enumerator {
        source: EnumeratorSource::Unknown,
        id: String::new(),
    }
}

fn present(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|value| !value.is_empty())
}

/// Computes the figures of a set of contributions. The result depends only on the set, not on
/// its order, so every recomputation of the same set writes the same figures.
pub fn figures<'a>(contributions: impl IntoIterator<Item = &'a Contribution>) -> DailyFigures {
    let mut submissions = 0;
    let mut score_sum = 0;
    let mut scored_submissions = 0;
    let mut quality_flags: BTreeMap<String, i64> = BTreeMap::new();
    let mut outside_geofence = 0;
    let mut durations = Vec::new();

    for contribution in contributions {
        submissions += 1;
        if let Some(score) = contribution.quality_score {
            score_sum += score;
            scored_submissions += 1;
        }
        for check in &contribution.quality_flags {
            *quality_flags.entry(check.clone()).or_default() += 1;
        }
        if contribution.outside_geofence {
            outside_geofence += 1;
        }
        durations.extend(contribution.interview_duration_s);
    }

    // The sum is an integer, so the mean does not depend on the order of addition.
    let mean_quality_score =
        (scored_submissions > 0).then(|| score_sum as f64 / scored_submissions as f64);
    DailyFigures {
        submissions,
        scored_submissions,
        mean_quality_score,
        quality_flags,
        outside_geofence,
        timed_submissions: durations.len() as i64,
        median_interview_duration_s: median(&mut durations),
    }
}

/// Returns the median, the mean of the two middle values for an even count, or `None` for no
/// values. Sorts `values` in place.
pub fn median(values: &mut [i64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        Some(values[middle] as f64)
    } else {
        Some((values[middle - 1] as f64 + values[middle] as f64) / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use fieldforce_schemas::odk::parse_datetime;
    use fieldforce_schemas::submission::{
        GeofenceResult, Location, Quality, QualityFlag, RawSubmission, SubmissionSource,
    };
    use serde_json::json;

    use super::*;

    /// 2024-05-01T10:00:00Z in milliseconds.
    const MAY_FIRST_10H: i64 = 1_714_557_600_000;

    fn processed(fields: serde_json::Value) -> ProcessedSubmission {
        ProcessedSubmission::from_raw(RawSubmission {
            schema_version: 1,
            submission_id: "s1".into(),
            revision: 2,
            org_id: "org".into(),
            project_id: "p".into(),
            form_id: "f".into(),
            form_version: None,
            instance_id: None,
            deprecated_id: None,
            source: SubmissionSource::Json,
            received_at_ms: MAY_FIRST_10H,
            content_sha256: String::new(),
            submitter: Some("ama".into()),
            device_id: Some("phone-1".into()),
            fields: fields.as_object().expect("fixture is an object").clone(),
            attachments: Vec::new(),
            missing_attachments: Vec::new(),
            encrypted: None,
        })
    }

    fn flag(check: &str) -> QualityFlag {
        QualityFlag {
            check: check.into(),
            penalty: 10,
            reason: String::new(),
        }
    }

    fn with(
        score: Option<i64>,
        flags: &[&str],
        outside: bool,
        duration: Option<i64>,
    ) -> Contribution {
        let mut contribution = contribution(&processed(json!({})));
        contribution.quality_score = score;
        contribution.quality_flags = flags.iter().map(|check| (*check).to_owned()).collect();
        contribution.outside_geofence = outside;
        contribution.interview_duration_s = duration;
        contribution
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [7]), Some(7.0));
        assert_eq!(median(&mut [9, 1, 5]), Some(5.0));
        assert_eq!(median(&mut [10, 1, 4, 3]), Some(3.5));
        assert_eq!(median(&mut [600, 600]), Some(600.0));
    }

    #[test]
    fn figures_count_mean_and_flags() {
        let set = [
            with(Some(100), &[], false, Some(600)),
            with(Some(75), &["too_fast", "outside_geofence"], true, Some(40)),
            with(Some(50), &["too_fast"], false, None),
            with(None, &[], false, Some(1200)),
        ];
        let figures = figures(&set);
        assert_eq!(figures.submissions, 4);
        assert_eq!(figures.scored_submissions, 3);
        assert_eq!(figures.mean_quality_score, Some(75.0));
        assert_eq!(figures.quality_flags.get("too_fast"), Some(&2));
        assert_eq!(figures.quality_flags.get("outside_geofence"), Some(&1));
        assert_eq!(figures.quality_flags.len(), 2);
        assert_eq!(figures.outside_geofence, 1);
        assert_eq!(figures.timed_submissions, 3);
        assert_eq!(figures.median_interview_duration_s, Some(600.0));
    }

    #[test]
    fn figures_of_nothing_have_no_mean_or_median() {
        let figures = figures(&[]);
        assert_eq!(figures.submissions, 0);
        assert_eq!(figures.mean_quality_score, None);
        assert_eq!(figures.median_interview_duration_s, None);
    }

    #[test]
    fn day_is_interview_start_in_device_time() {
        // 23:30 on 30 April at UTC-5 is already 1 May in UTC.
        let start = parse_datetime("2024-04-30T23:30:00.000-05:00").ok();
        assert_eq!(
            day_of(start, MAY_FIRST_10H + 86_400_000),
            NaiveDate::from_ymd_opt(2024, 4, 30).expect("valid date")
        );
    }

    #[test]
    fn day_falls_back_to_receive_time() {
        let may_first = NaiveDate::from_ymd_opt(2024, 5, 1).expect("valid date");
        assert_eq!(day_of(None, MAY_FIRST_10H), may_first);
        // A start after the server received the submission comes from a wrong clock.
        let ahead = parse_datetime("2024-05-03T09:00:00Z").ok();
        assert_eq!(day_of(ahead, MAY_FIRST_10H), may_first);
    }

    #[test]
    fn enumerator_falls_back_to_device() {
        let user = enumerator_of(Some("ama"), Some("phone-1"));
        assert_eq!(user.source, EnumeratorSource::Submitter);
        assert_eq!(user.id, "ama");
        let device = enumerator_of(Some("  "), Some("phone-1"));
        assert_eq!(device.source, EnumeratorSource::Device);
        assert_eq!(device.id, "phone-1");
        let unknown = enumerator_of(None, None);
        assert_eq!(unknown.source, EnumeratorSource::Unknown);
        assert_eq!(unknown.id, "");
    }

    #[test]
    fn contribution_reads_the_processed_sections() {
        let mut submission = processed(json!({
            "start": "2024-05-01T08:00:00.000+03:00",
            "end": "2024-05-01T08:25:30.000+03:00",
        }));
        submission.quality = Some(Quality {
            score: 60,
            flags: vec![
                flag("gps_impossible"),
                flag("gps_impossible"),
                flag("clock_skew"),
            ],
        });
        submission.location = Some(Location {
            point: None,
            accuracy_m: None,
            source_field: None,
            geometries: Vec::new(),
            geofence: Some(GeofenceResult {
                inside: false,
                geofence_id: "zone".into(),
                distance_m: 300.0,
            }),
            problems: Vec::new(),
        });

        let contribution = contribution(&submission);
        assert_eq!(contribution.id, "org/s1");
        assert_eq!(contribution.revision, 2);
        assert_eq!(contribution.slot.day, "2024-05-01");
        assert_eq!(contribution.slot.enumerator.id, "ama");
        assert_eq!(contribution.quality_score, Some(60));
        assert_eq!(
            contribution.quality_flags,
            vec!["clock_skew", "gps_impossible"]
        );
        assert!(contribution.outside_geofence);
        assert_eq!(contribution.interview_duration_s, Some(1530));
    }

    #[test]
    fn reversed_interview_has_no_duration() {
        let contribution = contribution(&processed(json!({
            "start": "2024-05-01T09:30:00Z",
            "end": "2024-05-01T09:00:00Z",
        })));
        assert_eq!(contribution.interview_duration_s, None);
    }
}
