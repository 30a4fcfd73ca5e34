//! The analytics aggregator against the local stack. An edit moves its submission's
//! contribution and a late older revision changes nothing. After `kill -9` three times
//! mid-stream, the stored daily figures equal the figures computed here from the input.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bson::doc;
use fieldforce_kafka::catalog::SUBMISSIONS_PROCESSED;
use fieldforce_processors::analytics::{self, GROUP_ID};
use fieldforce_runtime::config::Config;
use fieldforce_runtime::shutdown;
use fieldforce_schemas::analytics::{
    CONTRIBUTIONS_COLLECTION, DAILY_COLLECTION, DailyDocument, DailyFigures, Enumerator,
    EnumeratorSource, daily_id,
};
use fieldforce_schemas::codec::encode;
use fieldforce_schemas::submission::{
    GeofenceResult, Location, ProcessedSubmission, Quality, QualityFlag, RawSubmission,
    SubmissionSource,
};
use futures::TryStreamExt;
use futures::future::join_all;
use mongodb::Collection;

const ORG: &str = "org-test";
const PROJECT: &str = "survey";
/// 2024-05-05T12:00:00Z, after every interview below, in milliseconds.
const RECEIVED_AT_MS: i64 = 1_714_910_400_000;

/// What the test decides a submission revision contributes, from which it builds the record
/// and computes the expected figures on its own.
#[derive(Debug, Clone)]
struct Facts {
    submission_id: String,
    revision: u32,
    /// Day of month in May 2024, of the interview start at UTC+3.
    day: u32,
    submitter: Option<String>,
    device: String,
    score: u8,
    flags: Vec<&'static str>,
    outside: bool,
    /// Interview length in seconds; `None` leaves the end out.
    duration_s: Option<i64>,
}

impl Facts {
    fn day_text(&self) -> String {
        format!("2024-05-{:02}", self.day)
    }

    fn enumerator(&self) -> Enumerator {
        match &self.submitter {
            Some(user) => Enumerator {
                source: EnumeratorSource::Submitter,
                id: user.clone(),
            },
            None => Enumerator {
                source: EnumeratorSource::Device,
                id: self.device.clone(),
            },
        }
    }

    fn record(&self) -> ProcessedSubmission {
        // Half past midnight at UTC+3 is still the day before in UTC, so a day taken in UTC
        // instead of device time would put every submission on the wrong day.
        let start = format!("2024-05-{:02}T00:30:00.000+03:00", self.day);
        let mut fields = serde_json::Map::new();
        fields.insert("start".into(), start.clone().into());
        if let Some(duration) = self.duration_s {
            let start = fieldforce_schemas::odk::parse_datetime(&start).expect("valid start");
            let end = start + chrono::Duration::seconds(duration);
            fields.insert("end".into(), end.to_rfc3339().into());
        }
        fields.insert("household".into(), self.submission_id.clone().into());
        let mut processed = ProcessedSubmission::from_raw(RawSubmission {
            schema_version: 1,
            submission_id: self.submission_id.clone(),
            revision: self.revision,
            org_id: ORG.into(),
            project_id: PROJECT.into(),
            form_id: "household".into(),
            form_version: None,
            instance_id: None,
            deprecated_id: None,
            source: SubmissionSource::Json,
            received_at_ms: RECEIVED_AT_MS,
            content_sha256: "0".repeat(64),
            submitter: self.submitter.clone(),
            device_id: Some(self.device.clone()),
            fields,
            attachments: Vec::new(),
            missing_attachments: Vec::new(),
            encrypted: None,
        });
        processed.quality = Some(Quality {
            score: self.score,
            flags: self
                .flags
                .iter()
                .map(|check| QualityFlag {
                    check: (*check).to_owned(),
                    penalty: 10,
                    reason: String::new(),
                })
                .collect(),
        });
        processed.location = Some(Location {
            point: None,
            accuracy_m: Some(5.0),
            source_field: None,
            geometries: Vec::new(),
            geofence: Some(GeofenceResult {
                inside: !self.outside,
                geofence_id: "zone".into(),
                distance_m: if self.outside { 250.0 } else { 0.0 },
            }),
            problems: Vec::new(),
        });
        processed
    }
}

/// Facts for submission `index` at `revision`, varied with simple arithmetic so that every
/// figure has several distinct inputs.
fn facts(index: usize, revision: u32) -> Facts {
    let seed = index * 7 + revision as usize * 13;
    let flags: &[&'static str] = match seed % 5 {
        0 => &["too_fast"],
        1 => &["too_fast", "gps_inaccurate"],
        2 => &["outside_geofence"],
        _ => &[],
    };
    Facts {
        submission_id: format!("uuid:analytics-{index:05}"),
        revision,
        day: 1 + (seed % 3) as u32,
        // Every fourth submission has no user name and counts under its device.
        submitter: (!seed.is_multiple_of(4)).then(|| format!("enumerator-{}", seed % 6)),
        device: format!("phone-{}", seed % 5),
        score: (40 + seed % 61) as u8,
        flags: flags.to_vec(),
        outside: seed % 5 == 2,
        duration_s: (!seed.is_multiple_of(9)).then_some(60 + (seed % 1_500) as i64),
    }
}

/// Computes the expected daily documents, by id, from the newest revision of each submission.
fn expected_figures(latest: &[Facts]) -> BTreeMap<String, DailyFigures> {
    let mut groups: BTreeMap<String, Vec<&Facts>> = BTreeMap::new();
    for facts in latest {
        let day = facts.day_text();
        groups
            .entry(daily_id(ORG, PROJECT, &day, None))
            .or_default()
            .push(facts);
        groups
            .entry(daily_id(ORG, PROJECT, &day, Some(&facts.enumerator())))
            .or_default()
            .push(facts);
    }
    groups
        .into_iter()
        .map(|(id, members)| {
            let submissions = members.len() as i64;
            let score_sum: i64 = members.iter().map(|facts| i64::from(facts.score)).sum();
            let mut quality_flags: BTreeMap<String, i64> = BTreeMap::new();
            for facts in &members {
                for check in &facts.flags {
                    *quality_flags.entry((*check).to_owned()).or_default() += 1;
                }
            }
            let mut durations: Vec<i64> = members.iter().filter_map(|f| f.duration_s).collect();
            durations.sort_unstable();
            let middle = durations.len() / 2;
            let median = match durations.len() {
                0 => None,
                count if count % 2 == 1 => Some(durations[middle] as f64),
                _ => Some((durations[middle - 1] + durations[middle]) as f64 / 2.0),
            };
            let figures = DailyFigures {
                submissions,
                scored_submissions: submissions,
                mean_quality_score: Some(score_sum as f64 / submissions as f64),
                quality_flags,
                outside_geofence: members.iter().filter(|facts| facts.outside).count() as i64,
                timed_submissions: durations.len() as i64,
                median_interview_duration_s: median,
            };
            (id, figures)
        })
        .collect()
}

async fn collections(config: &Config) -> (Collection<DailyDocument>, Collection<bson::Document>) {
    let client = mongodb::Client::with_uri_str(&config.mongodb.uri)
        .await
        .expect("mongodb client");
    let database = client.database(&config.mongodb.database);
    (
        database.collection(DAILY_COLLECTION),
        database.collection(CONTRIBUTIONS_COLLECTION),
    )
}

async fn test_config(name: &str) -> Config {
    let mut config = common::fresh_config().await;
    config.mongodb.database = format!(
        "test_analytics_{name}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    config.analytics.batch_linger_ms = 20;
    config
}

async fn drop_database(config: &Config) {
    let client = mongodb::Client::with_uri_str(&config.mongodb.uri)
        .await
        .expect("mongodb client");
    let _ = client.database(&config.mongodb.database).drop().await;
}

/// Returns the stored submissions count of a daily document, zero when it does not exist.
async fn submissions(daily: &Collection<DailyDocument>, id: &str) -> i64 {
    daily
        .find_one(doc! { "_id": id })
        .await
        .expect("mongodb on 127.0.0.1:27017 must be running (make up)")
        .map_or(0, |document| document.figures.submissions)
}

/// Polls until the document has `expected` submissions or 60 s pass.
async fn wait_for_submissions(daily: &Collection<DailyDocument>, id: &str, expected: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut found = submissions(daily, id).await;
    while found != expected && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        found = submissions(daily, id).await;
    }
    assert_eq!(found, expected, "{id}");
}

/// Produces the record of `facts` to partition 0 and returns its offset.
async fn send_to_partition_zero(config: &Config, facts: &Facts) -> i64 {
    let producer = common::producer(config);
    let topic = config.kafka.topic(SUBMISSIONS_PROCESSED);
    let (_, offset) = common::send_bytes(
        &producer,
        &topic,
        &facts.submission_id,
        &encode(&facts.record()),
        Some(0),
    )
    .await;
    offset
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edit_moves_contribution() {
    let config = test_config("edit").await;
    let (trigger, shutdown) = shutdown::channel();
    let running = tokio::spawn(analytics::run(config.clone(), shutdown));
    let (daily, contributions) = collections(&config).await;

    let original = Facts {
        submission_id: "uuid:edited".into(),
        revision: 0,
        day: 1,
        submitter: Some("ama".into()),
        device: "phone-1".into(),
        score: 80,
        flags: vec!["too_fast"],
        outside: false,
        duration_s: Some(300),
    };
    let edit = Facts {
        revision: 1,
        day: 2,
        submitter: Some("kofi".into()),
        score: 100,
        flags: Vec::new(),
        ..original.clone()
    };
    let ama_day_one = daily_id(ORG, PROJECT, "2024-05-01", Some(&original.enumerator()));
    let kofi_day_two = daily_id(ORG, PROJECT, "2024-05-02", Some(&edit.enumerator()));
    let day_one = daily_id(ORG, PROJECT, "2024-05-01", None);
    let day_two = daily_id(ORG, PROJECT, "2024-05-02", None);

    // A batch writes its daily documents concurrently, so each one is polled. One document
    // with the new figures does not mean the others of the batch are written yet.
    send_to_partition_zero(&config, &original).await;
    wait_for_submissions(&daily, &ama_day_one, 1).await;
    wait_for_submissions(&daily, &day_one, 1).await;

    // The edit moves the submission to another day and enumerator, so the old day and the
    // old enumerator drop it.
    send_to_partition_zero(&config, &edit).await;
    wait_for_submissions(&daily, &kofi_day_two, 1).await;
    wait_for_submissions(&daily, &day_two, 1).await;
    wait_for_submissions(&daily, &day_one, 0).await;
    wait_for_submissions(&daily, &ama_day_one, 0).await;

    // The original again, late, then a marker on the same partition. Once the group commits
    // past the marker, the batches that contain both are applied in full.
    send_to_partition_zero(&config, &original).await;
    let marker = Facts {
        submission_id: "uuid:marker".into(),
        day: 3,
        ..original.clone()
    };
    let marker_offset = send_to_partition_zero(&config, &marker).await;
    wait_for_committed_end(
        &config,
        &config.processors.group_id_prefix,
        &BTreeMap::from([(0, marker_offset + 1)]),
    )
    .await;
    assert_eq!(
        submissions(&daily, &daily_id(ORG, PROJECT, "2024-05-03", None)).await,
        1
    );
    assert_eq!(
        submissions(&daily, &day_one).await,
        0,
        "late original ignored"
    );
    assert_eq!(submissions(&daily, &ama_day_one).await, 0);
    assert_eq!(submissions(&daily, &day_two).await, 1);
    let stored = daily
        .find_one(doc! { "_id": &kofi_day_two })
        .await
        .expect("daily document readable")
        .expect("daily document exists");
    assert_eq!(stored.figures.mean_quality_score, Some(100.0));
    assert!(stored.figures.quality_flags.is_empty());
    assert_eq!(stored.figures.median_interview_duration_s, Some(300.0));

    let edited = contributions
        .find_one(doc! { "_id": format!("{ORG}/uuid:edited") })
        .await
        .expect("contribution readable")
        .expect("contribution exists");
    assert_eq!(edited.get_i64("revision").ok(), Some(1));
    assert_eq!(
        edited.get_array("pending").map(Vec::len).ok(),
        Some(0),
        "pending slots are cleared once recomputed"
    );

    trigger.trigger();
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the aggregator stops within 30 s")
        .expect("the aggregator task did not panic")
        .expect("the aggregator stops cleanly");
    drop_database(&config).await;
}

/// Kills the child when the test ends, whether it passes or panics.
struct Aggregator(Child);

impl Drop for Aggregator {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL on Unix: no drain, no final commit.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_aggregator(config: &Config) -> Aggregator {
    let child = Command::new(env!("CARGO_BIN_EXE_fieldforce-analytics"))
        .env(
            "FIELDFORCE_KAFKA__BOOTSTRAP_SERVERS",
            &config.kafka.bootstrap_servers,
        )
        .env("FIELDFORCE_KAFKA__TOPIC_PREFIX", &config.kafka.topic_prefix)
        .env(
            "FIELDFORCE_PROCESSORS__GROUP_ID_PREFIX",
            &config.processors.group_id_prefix,
        )
        .env("FIELDFORCE_MONGODB__DATABASE", &config.mongodb.database)
        .env("FIELDFORCE_ANALYTICS__BATCH_MAX_RECORDS", "50")
        .env("FIELDFORCE_ANALYTICS__BATCH_LINGER_MS", "20")
        .env("FIELDFORCE_TELEMETRY__LOG_FILTER", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the analytics binary starts");
    Aggregator(child)
}

/// Builds a stream of `count` originals followed by edits: every 7th submission gets
/// revision 1 (a new day, enumerator and score), every 21st also revision 2, and every 77th
/// gets its original again, late. Returns the stream and the expected daily figures.
fn edited_stream(count: usize) -> (Vec<Facts>, BTreeMap<String, DailyFigures>) {
    let mut stream: Vec<Facts> = (0..count).map(|index| facts(index, 0)).collect();
    for index in (0..count).step_by(7) {
        stream.push(facts(index, 1));
        if index % 3 == 0 {
            stream.push(facts(index, 2));
        }
        if index % 11 == 0 {
            stream.push(facts(index, 0));
        }
    }

    let mut latest: HashMap<String, Facts> = HashMap::new();
    for facts in &stream {
        let newer = latest
            .get(&facts.submission_id)
            .is_none_or(|kept| kept.revision < facts.revision);
        if newer {
            latest.insert(facts.submission_id.clone(), facts.clone());
        }
    }
    let latest: Vec<Facts> = latest.into_values().collect();
    let expected = expected_figures(&latest);
    (stream, expected)
}

/// Produces the stream in order, a chunk at a time, so each submission's revisions keep their
/// order on its partition. Returns, per partition written to, the offset after the last
/// record produced.
async fn produce(config: &Config, stream: &[Facts]) -> BTreeMap<i32, i64> {
    let producer = common::producer(config);
    let topic = config.kafka.topic(SUBMISSIONS_PROCESSED);
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    for chunk in stream.chunks(500) {
        let sends = chunk.iter().map(|facts| {
            let producer = producer.clone();
            let topic = topic.clone();
            let value = encode(&facts.record());
            async move {
                common::send_bytes(&producer, &topic, &facts.submission_id, &value, None).await
            }
        });
        for (partition, offset) in join_all(sends).await {
            let end = ends.entry(partition).or_default();
            *end = (*end).max(offset + 1);
        }
    }
    ends
}

/// Polls the committed offsets of the aggregator's group under `group_id_prefix` until every
/// partition in `ends` has a committed offset at or past its end, for at most 240 s.
///
/// The aggregator commits an offset only after the batch before it is applied, so once every
/// produced partition is committed to its end, every record has been applied. The total lag
/// is not enough, because a sample whose topic metadata lists no partition sums to zero lag
/// too.
async fn wait_for_committed_end(config: &Config, group_id_prefix: &str, ends: &BTreeMap<i32, i64>) {
    let group = format!("{group_id_prefix}{GROUP_ID}");
    let topic = config.kafka.topic(SUBMISSIONS_PROCESSED);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    let mut behind: BTreeMap<i32, (Option<i64>, i64)> = BTreeMap::new();
    loop {
        let kafka = config.kafka.clone();
        let (sampled_group, sampled_topic) = (group.clone(), topic.clone());
        let sample = tokio::task::spawn_blocking(move || {
            fieldforce_kafka::lag::sample(&kafka, &sampled_group, &[sampled_topic])
        })
        .await
        .expect("lag sampling did not panic");
        if let Ok(sample) = sample {
            let committed: BTreeMap<i32, Option<i64>> = sample
                .partitions
                .iter()
                .map(|partition| (partition.partition, partition.committed))
                .collect();
            behind = ends
                .iter()
                .map(|(partition, end)| {
                    (
                        *partition,
                        (committed.get(partition).copied().flatten(), *end),
                    )
                })
                .filter(|(_, (committed, end))| committed.is_none_or(|offset| offset < *end))
                .collect();
            if behind.is_empty() {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{group} did not commit to the end within 240 s; (committed, end) by partition: {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Compares every stored daily document with the expected figures.
async fn assert_stored_figures(config: &Config, expected: &BTreeMap<String, DailyFigures>) {
    let (daily, contributions) = collections(config).await;
    let stored: Vec<DailyDocument> = daily
        .find(doc! {})
        .await
        .expect("daily documents readable")
        .try_collect()
        .await
        .expect("daily documents decode");
    let mut found: BTreeMap<String, DailyFigures> = BTreeMap::new();
    for document in stored {
        if document.figures.submissions == 0 {
            assert!(
                !expected.contains_key(&document.id),
                "{} is empty but should count submissions",
                document.id
            );
            continue;
        }
        found.insert(document.id, document.figures);
    }

    let missing: Vec<&String> = expected
        .keys()
        .filter(|id| !found.contains_key(*id))
        .collect();
    if !missing.is_empty() {
        let stored_contributions = contributions
            .count_documents(doc! {})
            .await
            .expect("contributions readable");
        panic!(
            "daily documents missing: {missing:?}; stored with submissions: {:?}; \
             {stored_contributions} contributions stored",
            found.keys().collect::<Vec<_>>()
        );
    }
    let unexpected: Vec<&String> = found
        .keys()
        .filter(|id| !expected.contains_key(*id))
        .collect();
    assert!(
        unexpected.is_empty(),
        "daily documents not expected: {unexpected:?}"
    );
    for (id, figures) in expected {
        assert_eq!(found.get(id), Some(figures), "{id}");
    }

    let pending = contributions
        .count_documents(doc! { "pending.0": { "$exists": true } })
        .await
        .expect("contributions readable");
    assert_eq!(
        pending, 0,
        "pending slots left after every record was applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_nine_three_times_keeps_figures_exact() {
    const SUBMISSIONS: usize = 3_000;
    let config = test_config("crash").await;
    let (stream, expected) = edited_stream(SUBMISSIONS);
    let total: i64 = expected
        .iter()
        .filter(|(id, _)| id.ends_with("/project"))
        .map(|(_, figures)| figures.submissions)
        .sum();
    assert_eq!(
        total, SUBMISSIONS as i64,
        "the expectation counts each submission once"
    );
    let ends = produce(&config, &stream).await;

    let (_, contributions) = collections(&config).await;
    let started = std::time::Instant::now();
    let mut aggregator = spawn_aggregator(&config);
    for kill in 1..=3u64 {
        let threshold = SUBMISSIONS as u64 * kill / 4;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        let mut stored = 0;
        while stored < threshold && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            stored = contributions
                .count_documents(doc! {})
                .await
                .expect("mongodb on 127.0.0.1:27017 must be running (make up)");
        }
        assert!(
            stored >= threshold,
            "run {kill} stored {stored} contributions, expected at least {threshold}"
        );
        drop(aggregator);
        eprintln!("analytics crash test: kill -9 number {kill} at {stored} contributions");
        aggregator = spawn_aggregator(&config);
    }

    wait_for_committed_end(&config, &config.processors.group_id_prefix, &ends).await;
    drop(aggregator);
    eprintln!(
        "analytics crash test: {} records, {} daily documents, committed to the end after {:.1} s",
        stream.len(),
        expected.len(),
        started.elapsed().as_secs_f64()
    );
    assert_stored_figures(&config, &expected).await;
    drop_database(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_converge() {
    // Two aggregators in separate consumer groups both read every record and write the same
    // documents at once, a harder race than two members of one group sharing partitions.
    let config = test_config("race").await;
    let (stream, expected) = edited_stream(1_500);
    let ends = produce(&config, &stream).await;

    let mut runs = Vec::new();
    let mut prefixes = Vec::new();
    for writer in ["a", "b"] {
        let mut own = config.clone();
        own.processors.group_id_prefix = format!("{}{writer}-", config.processors.group_id_prefix);
        own.analytics.batch_max_records = 100;
        prefixes.push(own.processors.group_id_prefix.clone());
        let (trigger, shutdown) = shutdown::channel();
        runs.push((trigger, tokio::spawn(analytics::run(own, shutdown))));
    }
    for prefix in &prefixes {
        wait_for_committed_end(&config, prefix, &ends).await;
    }
    for (trigger, running) in runs {
        trigger.trigger();
        tokio::time::timeout(Duration::from_secs(30), running)
            .await
            .expect("the aggregator stops within 30 s")
            .expect("the aggregator task did not panic")
            .expect("the aggregator stops cleanly");
    }

    assert_stored_figures(&config, &expected).await;
    drop_database(&config).await;
}
