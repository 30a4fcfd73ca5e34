//! The quality processor: scores each located submission from 0 to 100 with named,
//! explainable flags, sets its processing status, and writes it to `submissions.processed`.
//!
//! Thresholds come from the project's settings (`ProjectSettings.quality`), read at run time,
//! and fall back to [`QualityThresholds::default`]. Every time used is taken from the record
//! (answers and `received_at_ms`), never from the wall clock, so a replay scores the same.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, FixedOffset, Timelike};
use fieldforce_kafka::catalog::{
    FORMS, PROJECT_SETTINGS, SUBMISSIONS_LOCATED, SUBMISSIONS_PROCESSED,
};
use fieldforce_runtime::config::Config;
use fieldforce_runtime::shutdown::Shutdown;
use fieldforce_schemas::codec::Contract;
use fieldforce_schemas::form::FormDefinition;
use fieldforce_schemas::odk;
use fieldforce_schemas::project::{ProjectSettings, QualityThresholds};
use fieldforce_schemas::submission::{ProcessedSubmission, ProcessingStatus, Quality, QualityFlag};
use foldhash::fast::RandomState;
use rdkafka::message::OwnedMessage;
use xxhash_rust::xxh3::{Xxh3, xxh3_128};

use crate::ProcessorError;
use crate::error::Unprocessable;
use crate::fields::{Answer, first_text, for_each_leaf, has_text_at, leaf_text};
use crate::geo::{GPS_MISSING, GPS_NULL_ISLAND, GPS_OUT_OF_RANGE};
use crate::pipeline::{self, Output, StageSpec, Transform};
use crate::record::{OwnSections, ProcessedView, encode_output};
use crate::registry::{Registry, caught_up_registry};

/// Topics and consumer group of the quality processor.
pub const SPEC: StageSpec = StageSpec {
    stage: "quality",
    service: "quality",
    group_id: "fieldforce-quality",
    input: SUBMISSIONS_LOCATED,
    output: SUBMISSIONS_PROCESSED,
};

/// Points each check takes off the score.
mod penalty {
    pub const INCOMPLETE: u8 = 20;
    pub const TOO_FAST: u8 = 25;
    pub const TOO_LONG: u8 = 10;
    pub const ACROSS_MIDNIGHT: u8 = 5;
    pub const GPS_MISSING: u8 = 15;
    pub const GPS_INACCURATE: u8 = 10;
    pub const GPS_IMPOSSIBLE: u8 = 25;
    pub const OUTSIDE_GEOFENCE: u8 = 20;
    pub const CLOCK_SKEW: u8 = 20;
    pub const DUPLICATE: u8 = 30;
    pub const OUTSIDE_WORKING_HOURS: u8 = 5;
}

/// Answers that describe the interview rather than the interviewee, left out of completeness
/// and of the duplicate-answers hash.
const BOOKKEEPING_ROOTS: [&str; 4] = ["meta", "start", "end", "today"];
/// Paths of the interview start and end times: ODK forms write `start` and `end`, CommCare
/// writes `meta/timeStart` and `meta/timeEnd`.
const START_PATHS: [&str; 2] = ["start", "meta/timeStart"];
const END_PATHS: [&str; 2] = ["end", "meta/timeEnd"];

/// XXH3-128 of a device id and a submission's answers: equal for the same answers sent from
/// the same device. A hash that is not cryptographic is enough, because a collision can only
/// join two submissions of one device, and it is cheap on the short input of one answer.
type Fingerprint = u128;

/// Bounded memory of recent submissions, to find the same answers sent again from a device.
///
/// It stays full for the life of the process, so an entry is kept small: each submission id
/// is allocated once and shared, and answers are remembered by their fixed-size fingerprint.
/// The maps are sized for `capacity` at the start, so memory does not grow as they fill.
#[derive(Debug)]
struct RecentAnswers {
    capacity: usize,
    /// Submission id to its fingerprint; the ids are in `order`, oldest first.
    by_submission: HashMap<Arc<str>, Fingerprint, RandomState>,
    /// Fingerprint to the remembered submissions with it and their receive times.
    by_answers: HashMap<Fingerprint, Vec<(Arc<str>, i64)>, RandomState>,
    order: VecDeque<Arc<str>>,
}

impl RecentAnswers {
    fn new(capacity: usize) -> Self {
        // One more than the capacity, because an entry is added before the oldest is dropped.
        Self {
            capacity,
            by_submission: HashMap::with_capacity_and_hasher(capacity + 1, RandomState::default()),
            by_answers: HashMap::with_capacity_and_hasher(capacity + 1, RandomState::default()),
            order: VecDeque::with_capacity(capacity + 1),
        }
    }

    /// Remembers a submission and returns an earlier one (by receive time, then id) with the
    /// same device and answers. A replay of the same submission id is never a duplicate.
    fn observe(
        &mut self,
        submission_id: &str,
        fingerprint: Fingerprint,
        received_at_ms: i64,
    ) -> Option<String> {
        let earlier = self.by_answers.get(&fingerprint).and_then(|seen| {
            seen.iter()
                .filter(|(id, at)| {
                    **id != *submission_id && (*at, &**id) < (received_at_ms, submission_id)
                })
                .min_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)))
                .map(|(id, _)| id.to_string())
        });
        if !self.by_submission.contains_key(submission_id) {
            let id: Arc<str> = Arc::from(submission_id);
            self.by_submission.insert(Arc::clone(&id), fingerprint);
            // Most answers are remembered once, so a list starts with room for one.
            self.by_answers
                .entry(fingerprint)
                .or_insert_with(|| Vec::with_capacity(1))
                .push((Arc::clone(&id), received_at_ms));
            self.order.push_back(id);
            while self.order.len() > self.capacity {
                self.forget_oldest();
            }
        }
        earlier
    }

    fn forget_oldest(&mut self) {
        let Some(oldest) = self.order.pop_front() else {
            return;
        };
        let Some(fingerprint) = self.by_submission.remove(&oldest) else {
            return;
        };
        if let Some(seen) = self.by_answers.get_mut(&fingerprint) {
            seen.retain(|(id, _)| *id != oldest);
            if seen.is_empty() {
                self.by_answers.remove(&fingerprint);
            }
        }
    }
}

/// The quality transform.
#[derive(Debug)]
pub struct Scorer {
    forms: Arc<Registry<FormDefinition>>,
    projects: Arc<Registry<ProjectSettings>>,
    // NOTE: the memory is per process and starts empty. A duplicate whose first copy was read
    // before a restart, or by another instance of the group, is not flagged, so a replay
    // after a restart can differ from the first output in this flag.
    recent: Mutex<RecentAnswers>,
}

impl Scorer {
    /// Creates a scorer that remembers `memory_entries` recent submissions.
    pub fn new(
        forms: Arc<Registry<FormDefinition>>,
        projects: Arc<Registry<ProjectSettings>>,
        memory_entries: usize,
    ) -> Self {
        Self {
            forms,
            projects,
            recent: Mutex::new(RecentAnswers::new(memory_entries)),
        }
    }

    /// Scores a located submission: its quality section and processing status.
    pub fn assess(&self, view: &ProcessedView<'_>) -> (Quality, ProcessingStatus) {
        let submission = &view.submission;
        let settings = self
            .projects
            .project(&submission.org_id, &submission.project_id);
        let default_thresholds = QualityThresholds::default();
        let thresholds = settings
            .as_deref()
            .map_or(&default_thresholds, |settings| &settings.quality);
        let form = self.forms.form(
            &submission.org_id,
            &submission.project_id,
            &submission.form_id,
            submission.form_version.as_deref(),
        );

        let encrypted = submission.encrypted.is_some();
        let mut flags = if encrypted {
            vec![QualityFlag {
                check: "encrypted".to_owned(),
                penalty: 0,
                reason: "content is encrypted, so no content check ran".to_owned(),
            }]
        } else {
            content_flags(view, form.as_deref(), thresholds)
        };

        if !encrypted && let Some(device) = &submission.device_id {
            let fingerprint = answers_fingerprint(device, &submission.fields);
            let earlier = self
                .recent
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .observe(
                    &submission.submission_id,
                    fingerprint,
                    submission.received_at_ms,
                );
            if let Some(earlier) = earlier {
                flags.push(QualityFlag {
                    check: "duplicate_answers".to_owned(),
                    penalty: penalty::DUPLICATE,
                    reason: format!(
                        "device {device:?} sent the same answers in submission {earlier:?}"
                    ),
                });
            }
        }

        let lost: u32 = flags.iter().map(|flag| u32::from(flag.penalty)).sum();
        let score = 100u32.saturating_sub(lost) as u8;
        (Quality { score, flags }, status(view))
    }
}

impl Transform for Scorer {
    fn transform(&self, message: &OwnedMessage) -> Result<Output, Unprocessable> {
        let view = ProcessedView::decode(message)?;
        let (quality, status) = self.assess(&view);
        // The contract types have no map with non-string keys and no fallible Serialize.
        let quality_json = serde_json::to_vec(&quality).expect("quality always serializes");
        let status_json = serde_json::to_vec(&status).expect("status always serializes");
        // A record that was scored before, such as a replay from another topic, gets its
        // sections replaced in place.
        let value = encode_output(
            message,
            !view.has_quality && !view.has_processing_status,
            &[
                ("quality", &quality_json),
                ("processing_status", &status_json),
            ],
            OwnSections::QualityAndStatus,
            |processed| {
                processed.quality = Some(quality);
                processed.processing_status = Some(status);
            },
        )?;
        Ok(Output {
            value,
            key: view.submission.submission_id.into_owned(),
            schema: ProcessedSubmission::schema_header(),
        })
    }
}

/// Runs the quality processor until shutdown.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), ProcessorError> {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = crate::metrics::Metrics::register(
        &mut registry,
        SPEC.stage,
        &pipeline::group_id(&config, &SPEC),
    );
    let ready = crate::admin::start(&config, registry, shutdown.clone()).await?;

    let forms = caught_up_registry::<FormDefinition>(&config, FORMS, shutdown.clone()).await?;
    let projects =
        caught_up_registry::<ProjectSettings>(&config, PROJECT_SETTINGS, shutdown.clone()).await?;
    ready.set();

    let transform = Arc::new(Scorer::new(
        forms,
        projects,
        config.processors.duplicate_memory_entries,
    ));
    pipeline::run(&config, SPEC, transform, metrics, shutdown).await
}

/// Returns the overall status, deciding by encryption first, then missing attachments, then
/// validation.
pub fn status(view: &ProcessedView<'_>) -> ProcessingStatus {
    if view.submission.encrypted.is_some() {
        ProcessingStatus::Encrypted
    } else if !view.submission.missing_attachments.is_empty() {
        ProcessingStatus::AwaitingAttachments
    } else if view
        .validation
        .as_ref()
        .is_some_and(|validation| !validation.valid)
    {
        ProcessingStatus::NeedsReview
    } else {
        ProcessingStatus::Processed
    }
}

fn flag(check: &str, penalty: u8, reason: String) -> QualityFlag {
    QualityFlag {
        check: check.to_owned(),
        penalty,
        reason,
    }
}

/// Returns whether `path` is a bookkeeping root or lies under one. It runs twice per answer,
/// and splitting the path took seven times the instructions of a prefix test per root.
fn is_bookkeeping(path: &str) -> bool {
    BOOKKEEPING_ROOTS.iter().any(|root| {
        path.strip_prefix(root)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// Runs every check that reads the answers and the location.
fn content_flags(
    view: &ProcessedView<'_>,
    form: Option<&FormDefinition>,
    thresholds: &QualityThresholds,
) -> Vec<QualityFlag> {
    let submission = &view.submission;
    let mut flags = Vec::new();

    let (answered, total) = completeness(&submission.fields, form);
    let share = if total == 0 {
        0.0
    } else {
        answered as f64 / total as f64
    };
    if share < thresholds.min_completeness {
        flags.push(flag(
            "incomplete",
            penalty::INCOMPLETE,
            format!(
                "{answered} of {total} fields answered ({:.0}%), minimum {:.0}%",
                share * 100.0,
                thresholds.min_completeness * 100.0
            ),
        ));
    }

    let (start, end) = interview_times(&submission.fields);
    flags.extend(timing_flags(
        start,
        end,
        submission.received_at_ms,
        thresholds,
    ));

    if let Some(Some(location)) = &view.location {
        if location
            .problems
            .iter()
            .any(|problem| problem == GPS_MISSING)
        {
            flags.push(flag(
                "gps_missing",
                penalty::GPS_MISSING,
                "no geopoint answer".to_owned(),
            ));
        }
        for problem in [GPS_OUT_OF_RANGE, GPS_NULL_ISLAND] {
            if location.problems.iter().any(|found| found == problem) {
                let reason = if problem == GPS_NULL_ISLAND {
                    "the point is exactly 0,0, which devices report without a fix".to_owned()
                } else {
                    "a latitude or longitude is outside -90..90 or -180..180".to_owned()
                };
                flags.push(flag("gps_impossible", penalty::GPS_IMPOSSIBLE, reason));
            }
        }
        if let Some(accuracy) = location.accuracy_m
            && accuracy > thresholds.max_gps_accuracy_m
        {
            flags.push(flag(
                "gps_inaccurate",
                penalty::GPS_INACCURATE,
                format!(
                    "accuracy {accuracy} m is worse than the threshold {} m",
                    thresholds.max_gps_accuracy_m
                ),
            ));
        }
        if let Some(geofence) = &location.geofence
            && !geofence.inside
        {
            flags.push(flag(
                "outside_geofence",
                penalty::OUTSIDE_GEOFENCE,
                format!(
                    "{:.0} m outside the nearest geofence {:?}",
                    geofence.distance_m, geofence.geofence_id
                ),
            ));
        }
    }
    flags
}

/// Returns the interview's start and end as the device recorded them, each with the device's
/// own UTC offset, or `None` where the field is missing or not a dateTime.
pub fn interview_times(
    fields: &Answer<'_>,
) -> (Option<DateTime<FixedOffset>>, Option<DateTime<FixedOffset>>) {
    let read =
        |paths: &[&str]| first_text(fields, paths).and_then(|text| odk::parse_datetime(&text).ok());
    (read(&START_PATHS), read(&END_PATHS))
}

/// Counts answered and expected fields: the form's input fields when the form is known,
/// otherwise the leaves present in the submission. Bookkeeping answers do not count.
fn completeness(fields: &Answer<'_>, form: Option<&FormDefinition>) -> (usize, usize) {
    match form {
        Some(form) => {
            let (mut answered, mut total) = (0, 0);
            for field in &form.fields {
                if field.repeat || is_bookkeeping(&field.path) {
                    continue;
                }
                total += 1;
                if has_text_at(fields, &field.path) {
                    answered += 1;
                }
            }
            (answered, total)
        }
        None => {
            let (mut answered, mut total) = (0, 0);
            for_each_leaf(fields, |path, answer| {
                if !is_bookkeeping(path) {
                    total += 1;
                    if leaf_text(answer).is_some() {
                        answered += 1;
                    }
                }
            });
            (answered, total)
        }
    }
}

/// Interview duration, midnight, clock skew and working-hours checks.
fn timing_flags(
    start: Option<DateTime<FixedOffset>>,
    end: Option<DateTime<FixedOffset>>,
    received_at_ms: i64,
    thresholds: &QualityThresholds,
) -> Vec<QualityFlag> {
    let mut flags = Vec::new();
    let local_offset = FixedOffset::east_opt(thresholds.utc_offset_minutes * 60)
        .unwrap_or(FixedOffset::east_opt(0).expect("zero offset is valid"));

    if let (Some(start), Some(end)) = (start, end) {
        let seconds = (end - start).num_seconds();
        if seconds < 0 {
            flags.push(flag(
                "clock_skew",
                penalty::CLOCK_SKEW,
                format!(
                    "end {} is {} s before start {}",
                    end.to_rfc3339(),
                    -seconds,
                    start.to_rfc3339()
                ),
            ));
        } else if (seconds as u64) < thresholds.min_duration_s {
            flags.push(flag(
                "too_fast",
                penalty::TOO_FAST,
                format!(
                    "interview took {seconds} s, minimum {} s",
                    thresholds.min_duration_s
                ),
            ));
        } else if seconds as u64 > thresholds.max_duration_s {
            flags.push(flag(
                "too_long",
                penalty::TOO_LONG,
                format!(
                    "interview took {seconds} s, maximum {} s",
                    thresholds.max_duration_s
                ),
            ));
        }
        // Midnight is the enumerator's: the device writes its own UTC offset into the
        // timestamps, which is better evidence of local time than the project's setting.
        let device_offset = *start.offset();
        let (start_day, end_day) = (
            start.date_naive(),
            end.with_timezone(&device_offset).date_naive(),
        );
        if seconds >= 0 && start_day != end_day {
            flags.push(flag(
                "across_midnight",
                penalty::ACROSS_MIDNIGHT,
                format!(
                    "started on {start_day} and ended on {end_day}, device time (UTC{device_offset})"
                ),
            ));
        }
    }

    if let Some(end) = end {
        let ahead_s = (end.timestamp_millis() - received_at_ms) / 1000;
        if ahead_s > 0 && ahead_s as u64 > thresholds.max_clock_skew_s {
            flags.push(flag(
                "clock_skew",
                penalty::CLOCK_SKEW,
                format!(
                    "end is {ahead_s} s after the server received the submission, maximum {} s",
                    thresholds.max_clock_skew_s
                ),
            ));
        }
    }

    // The interview time, when recorded, shows when the enumerator worked, while the
    // receive time only shows when the device found a connection.
    let worked_at = end
        .or(start)
        .map(|time| time.with_timezone(&local_offset))
        .or_else(|| {
            DateTime::from_timestamp_millis(received_at_ms)
                .map(|time| time.with_timezone(&local_offset))
        });
    if let Some(worked_at) = worked_at {
        let hour = worked_at.hour();
        let (first, last) = (
            u32::from(thresholds.working_hours_start),
            u32::from(thresholds.working_hours_end),
        );
        if hour < first || hour >= last {
            flags.push(flag(
                "outside_working_hours",
                penalty::OUTSIDE_WORKING_HOURS,
                format!(
                    "worked at {hour:02}:{:02} local time, working hours {first:02}:00 to {last:02}:00",
                    worked_at.minute()
                ),
            ));
        }
    }
    flags
}

/// Returns the fingerprint of the device id and the answers without bookkeeping fields,
/// whatever their order. Each answer is hashed with its path and the hashes are added, which
/// keeps repeated answers apart where XOR would cancel them. Sorting the answers and hashing
/// them in that order took about 8 % of the transform's CPU time.
fn answers_fingerprint(device: &str, fields: &Answer<'_>) -> Fingerprint {
    let mut answer_hashes: u128 = 0;
    let mut entry = String::new();
    for_each_leaf(fields, |path, answer| {
        if is_bookkeeping(path) {
            return;
        }
        if let Some(text) = leaf_text(answer) {
            entry.clear();
            entry.push_str(path);
            entry.push('\0');
            entry.push_str(&text);
            answer_hashes = answer_hashes.wrapping_add(xxh3_128(entry.as_bytes()));
        }
    });
    let mut hasher = Xxh3::new();
    hasher.update(device.as_bytes());
    hasher.update(&[0]);
    hasher.update(&answer_hashes.to_le_bytes());
    hasher.digest128()
}

#[cfg(test)]
mod tests {
    use fieldforce_schemas::codec::{decode, encode};
    use fieldforce_schemas::submission::{
        GeofenceResult, Location, RawSubmission, SubmissionSource, Validation,
    };
    use rdkafka::Timestamp;
    use serde_json::{Value, json};

    use super::*;

    /// 2024-05-01T10:00:00Z in milliseconds.
    const MAY_FIRST_10H: i64 = 1_714_557_600_000;

    fn processed(fields: Value) -> ProcessedSubmission {
        ProcessedSubmission::from_raw(RawSubmission {
            schema_version: 1,
            submission_id: "s1".into(),
            revision: 0,
            org_id: "org".into(),
            project_id: "p".into(),
            form_id: "f".into(),
            form_version: None,
            instance_id: None,
            deprecated_id: None,
            source: SubmissionSource::OpenRosa,
            received_at_ms: MAY_FIRST_10H,
            content_sha256: String::new(),
            submitter: None,
            device_id: Some("phone-1".into()),
            fields: match fields {
                Value::Object(map) => map,
                _ => panic!("fixture is an object"),
            },
            attachments: Vec::new(),
            missing_attachments: Vec::new(),
            encrypted: None,
        })
    }

    fn checks(processed: &ProcessedSubmission) -> Vec<&str> {
        processed
            .quality
            .as_ref()
            .expect("scored")
            .flags
            .iter()
            .map(|flag| flag.check.as_str())
            .collect()
    }

    fn scorer() -> Scorer {
        Scorer::new(Arc::default(), Arc::default(), 10)
    }

    impl Scorer {
        /// Scores a submission through the transform and sets its quality section and
        /// processing status from the output record.
        fn score(&self, processed: &mut ProcessedSubmission) {
            let message = OwnedMessage::new(
                Some(encode(processed)),
                None,
                "submissions.located".to_owned(),
                Timestamp::NotAvailable,
                0,
                0,
                None,
            );
            let output = self.transform(&message).expect("transforms");
            let scored: ProcessedSubmission = decode(&output.value).expect("output decodes");
            assert_eq!(
                ProcessedSubmission {
                    quality: None,
                    processing_status: None,
                    ..scored.clone()
                },
                ProcessedSubmission {
                    quality: None,
                    processing_status: None,
                    ..processed.clone()
                },
                "only the quality sections change"
            );
            *processed = scored;
        }
    }

    fn located(mut submission: ProcessedSubmission, location: Location) -> ProcessedSubmission {
        submission.location = Some(location);
        submission
    }

    fn location(
        problems: &[&str],
        accuracy_m: Option<f64>,
        geofence: Option<GeofenceResult>,
    ) -> Location {
        Location {
            point: None,
            accuracy_m,
            source_field: None,
            geometries: Vec::new(),
            geofence,
            problems: problems.iter().map(|p| (*p).to_owned()).collect(),
        }
    }

    fn interview(start: &str, end: &str) -> Value {
        json!({"start": start, "end": end, "name": "Ama", "age": "31"})
    }

    #[test]
    fn clean_submission_scores_full() {
        let mut submission = processed(interview("2024-05-01T09:00:00Z", "2024-05-01T09:20:00Z"));
        scorer().score(&mut submission);
        assert_eq!(checks(&submission), Vec::<&str>::new());
        assert_eq!(submission.quality.as_ref().map(|q| q.score), Some(100));
        assert_eq!(
            submission.processing_status,
            Some(ProcessingStatus::Processed)
        );
    }

    #[test]
    fn short_interview_is_too_fast() {
        let mut submission = processed(interview("2024-05-01T09:00:00Z", "2024-05-01T09:00:45Z"));
        scorer().score(&mut submission);
        assert_eq!(checks(&submission), vec!["too_fast"]);
        let quality = submission.quality.expect("scored");
        assert_eq!(quality.score, 100 - penalty::TOO_FAST);
        assert!(
            quality.flags[0].reason.contains("45 s"),
            "{}",
            quality.flags[0].reason
        );
    }

    #[test]
    fn long_interview_is_too_long() {
        let mut submission = processed(interview("2024-05-01T01:00:00Z", "2024-05-01T09:30:00Z"));
        scorer().score(&mut submission);
        assert_eq!(checks(&submission), vec!["too_long"]);
    }

    #[test]
    fn interview_across_midnight_is_flagged() {
        let mut submission = processed(json!({
            "meta": {"timeStart": "2013-07-19T21:21:31.188Z", "timeEnd": "2013-07-20T00:02:27.493Z"},
            "q": "1"
        }));
        submission.submission.received_at_ms = MAY_FIRST_10H;
        scorer().score(&mut submission);
        assert!(
            checks(&submission).contains(&"across_midnight"),
            "{:?}",
            checks(&submission)
        );
        assert!(
            checks(&submission).contains(&"outside_working_hours"),
            "{:?}",
            checks(&submission)
        );
    }

    #[test]
    fn midnight_is_taken_in_device_time() {
        let mut submission = processed(json!({
            "start": "2026-11-03T23:59:20.000+03:00",
            "end": "2026-11-04T00:00:05.000+03:00",
            "q": "1"
        }));
        submission.submission.received_at_ms = MAY_FIRST_10H;
        scorer().score(&mut submission);
        assert!(
            checks(&submission).contains(&"across_midnight"),
            "{:?}",
            checks(&submission)
        );
    }

    #[test]
    fn clock_skew_both_directions() {
        let mut backwards = processed(interview("2024-05-01T09:30:00Z", "2024-05-01T09:00:00Z"));
        scorer().score(&mut backwards);
        assert_eq!(checks(&backwards), vec!["clock_skew"]);

        let mut future = processed(interview("2024-05-01T11:00:00Z", "2024-05-01T11:30:00Z"));
        scorer().score(&mut future);
        assert_eq!(checks(&future), vec!["clock_skew"]);
        assert!(
            future.quality.expect("scored").flags[0]
                .reason
                .contains("5400 s")
        );
    }

    #[test]
    fn gps_checks_follow_location_problems() {
        let base = interview("2024-05-01T09:00:00Z", "2024-05-01T09:20:00Z");
        let cases = [
            (location(&[GPS_MISSING], None, None), vec!["gps_missing"]),
            (location(&[], Some(886.0), None), vec!["gps_inaccurate"]),
            (
                location(&[GPS_NULL_ISLAND], Some(5.0), None),
                vec!["gps_impossible"],
            ),
            (
                location(&[GPS_OUT_OF_RANGE], None, None),
                vec!["gps_impossible"],
            ),
            (
                location(
                    &[],
                    Some(5.0),
                    Some(GeofenceResult {
                        inside: false,
                        geofence_id: "zone".into(),
                        distance_m: 1500.0,
                    }),
                ),
                vec!["outside_geofence"],
            ),
            (
                location(
                    &[],
                    Some(5.0),
                    Some(GeofenceResult {
                        inside: true,
                        geofence_id: "zone".into(),
                        distance_m: 0.0,
                    }),
                ),
                vec![],
            ),
        ];
        for (location, expected) in cases {
            let mut submission = located(processed(base.clone()), location.clone());
            scorer().score(&mut submission);
            assert_eq!(checks(&submission), expected, "{location:?}");
        }
    }

    #[test]
    fn empty_answers_are_incomplete() {
        let mut submission = processed(json!({"meta": {"instanceID": "uuid:1"}}));
        submission.submission.device_id = None;
        scorer().score(&mut submission);
        let found = checks(&submission);
        assert!(found.contains(&"incomplete"), "{found:?}");
    }

    #[test]
    fn duplicate_answers_except_replays() {
        let scorer = scorer();
        let mut first = processed(interview("2024-05-01T09:00:00Z", "2024-05-01T09:20:00Z"));
        scorer.score(&mut first);
        let mut replay = first.clone();
        scorer.score(&mut replay);
        assert_eq!(checks(&replay), Vec::<&str>::new());

        // Different start and end, same answers: still a duplicate.
        let mut second = processed(interview("2024-05-01T09:30:00Z", "2024-05-01T09:50:00Z"));
        second.submission.submission_id = "s2".into();
        second.submission.received_at_ms += 1000;
        scorer.score(&mut second);
        assert_eq!(checks(&second), vec!["duplicate_answers"]);

        let mut other_device = second.clone();
        other_device.submission.submission_id = "s3".into();
        other_device.submission.device_id = Some("phone-2".into());
        scorer.score(&mut other_device);
        assert!(!checks(&other_device).contains(&"duplicate_answers"));
    }

    #[test]
    fn fingerprint_ignores_answer_order() {
        let tree = |json: &'static str| -> Answer<'static> {
            serde_json::from_str(json).expect("fixture is JSON")
        };
        let first = tree(r#"{"name": "Ama", "age": "4", "start": "09:00"}"#);
        let reordered = tree(r#"{"age": "4", "name": "Ama", "start": "10:00"}"#);
        let changed = tree(r#"{"age": "5", "name": "Ama"}"#);
        assert_eq!(
            answers_fingerprint("phone-1", &first),
            answers_fingerprint("phone-1", &reordered)
        );
        assert_ne!(
            answers_fingerprint("phone-1", &first),
            answers_fingerprint("phone-1", &changed)
        );
        assert_ne!(
            answers_fingerprint("phone-1", &first),
            answers_fingerprint("phone-2", &first)
        );
        // Two equal repeat instances must not cancel out, as they would in an XOR.
        assert_ne!(
            answers_fingerprint("phone-1", &tree(r#"{"r": [{"n": "A"}, {"n": "A"}]}"#)),
            answers_fingerprint("phone-1", &tree(r#"{"r": [{"n": "B"}, {"n": "B"}]}"#))
        );
    }

    #[test]
    fn duplicate_memory_is_bounded() {
        let mut recent = RecentAnswers::new(2);
        for (index, id) in ["a", "b", "c"].into_iter().enumerate() {
            recent.observe(id, index as u128, 0);
        }
        assert_eq!(recent.by_submission.len(), 2);
        assert!(!recent.by_submission.contains_key("a"));
        assert!(!recent.by_answers.contains_key(&0));
        assert_eq!(recent.order.len(), 2);
    }

    #[test]
    fn status_prefers_encryption_then_attachments_then_validation() {
        let scorer = scorer();
        let status_of = |submission: &ProcessedSubmission| {
            let mut submission = submission.clone();
            scorer.score(&mut submission);
            submission.processing_status.expect("scored")
        };
        let mut submission = processed(json!({}));
        assert_eq!(status_of(&submission), ProcessingStatus::Processed);
        submission.validation = Some(Validation {
            valid: false,
            form_known: false,
            form_version: None,
            issues: Vec::new(),
        });
        assert_eq!(status_of(&submission), ProcessingStatus::NeedsReview);
        submission.submission.missing_attachments = vec!["photo.jpg".into()];
        assert_eq!(
            status_of(&submission),
            ProcessingStatus::AwaitingAttachments
        );
        submission.submission.encrypted =
            Some(fieldforce_schemas::submission::EncryptedSubmission {
                base64_encrypted_key: "a2V5".into(),
                encrypted_signature: None,
                encrypted_xml_file: "submission.xml.enc".into(),
            });
        assert_eq!(status_of(&submission), ProcessingStatus::Encrypted);
    }

    #[test]
    fn scored_record_rescored_in_place() {
        let mut submission = processed(interview("2024-05-01T09:00:00Z", "2024-05-01T09:00:45Z"));
        scorer().score(&mut submission);
        let first = submission.clone();
        submission.submission.submission_id = "s9".into();
        submission.quality = Some(Quality {
            score: 1,
            flags: Vec::new(),
        });
        // A fresh scorer, so that the same answers under a new id are not a duplicate.
        scorer().score(&mut submission);
        assert_eq!(submission.quality, first.quality);
        assert_eq!(submission.processing_status, first.processing_status);
    }

    #[test]
    fn appended_sections_match_full_encoding() {
        let mut submission = processed(interview("2024-05-01T09:00:00Z", "2024-05-01T09:00:45Z"));
        scorer().score(&mut submission);
        let message = OwnedMessage::new(
            Some(encode(&ProcessedSubmission {
                quality: None,
                processing_status: None,
                ..submission.clone()
            })),
            None,
            "submissions.located".to_owned(),
            Timestamp::NotAvailable,
            0,
            0,
            None,
        );
        let output = scorer().transform(&message).expect("transforms");
        assert_eq!(
            String::from_utf8_lossy(&output.value),
            String::from_utf8_lossy(&encode(&submission))
        );
    }

    #[test]
    fn working_hours_use_project_offset() {
        let thresholds = QualityThresholds {
            utc_offset_minutes: 180,
            ..QualityThresholds::default()
        };
        // 18:30 UTC is 21:30 at UTC+3, after the default end of 20:00.
        let end = odk::parse_datetime("2024-05-01T18:30:00Z").ok();
        let flags = timing_flags(None, end, MAY_FIRST_10H + 10 * 3_600_000, &thresholds);
        let names: Vec<&str> = flags.iter().map(|f| f.check.as_str()).collect();
        assert_eq!(names, vec!["outside_working_hours"]);
    }
}
