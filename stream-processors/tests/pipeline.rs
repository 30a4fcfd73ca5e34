//! End-to-end tests of the three processors against the local Kafka: every submission comes
//! out once with the hand-checked flags, a poison record is dead-lettered, and a geofence
//! change applies without a restart.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use fieldforce_kafka::catalog::{
    FORMS, PROJECT_SETTINGS, SUBMISSIONS_DEADLETTER, SUBMISSIONS_PROCESSED, SUBMISSIONS_RAW,
    SUBMISSIONS_VALIDATED,
};
use fieldforce_kafka::dead_letter::header_str;
use fieldforce_processors::{geo, quality, validate};
use fieldforce_runtime::config::Config;
use fieldforce_runtime::shutdown::{self, ShutdownTrigger};
use fieldforce_schemas::codec::decode;
use fieldforce_schemas::form::FormDefinition;
use fieldforce_schemas::headers;
use fieldforce_schemas::project::{ProjectSettings, QualityThresholds};
use fieldforce_schemas::submission::{
    EncryptedSubmission, ProcessedSubmission, RawSubmission, SubmissionSource,
};
use rdkafka::Message;
use serde_json::{Map, Value};
use tokio::task::JoinHandle;

const ORG: &str = "org-test";
const PROJECT: &str = "household-survey";

fn fixture() -> Value {
    serde_json::from_str(include_str!("fixtures/cases.json")).expect("the fixture is JSON")
}

fn settings(geofences: Vec<fieldforce_schemas::project::Geofence>) -> ProjectSettings {
    ProjectSettings {
        schema_version: 1,
        org_id: ORG.into(),
        project_id: PROJECT.into(),
        geofences,
        quality: QualityThresholds {
            utc_offset_minutes: 180,
            ..QualityThresholds::default()
        },
    }
}

/// Starts the given processors in this process; the trigger stops them.
fn start(config: &Config, stages: &[&str]) -> (ShutdownTrigger, Vec<JoinHandle<()>>) {
    let (trigger, shutdown) = shutdown::channel();
    let handles = stages
        .iter()
        .map(|stage| {
            let config = config.clone();
            let shutdown = shutdown.clone();
            let stage = (*stage).to_owned();
            tokio::spawn(async move {
                let result = match stage.as_str() {
                    "validation" => validate::run(config, shutdown).await,
                    "geo" => geo::run(config, shutdown).await,
                    _ => quality::run(config, shutdown).await,
                };
                result.expect("processor runs until shutdown");
            })
        })
        .collect();
    (trigger, handles)
}

async fn stop(trigger: ShutdownTrigger, handles: Vec<JoinHandle<()>>) {
    trigger.trigger();
    for handle in handles {
        tokio::time::timeout(Duration::from_secs(30), handle)
            .await
            .expect("processor stops within its drain deadline")
            .expect("processor task does not panic");
    }
}

fn raw_submission(fixture: &Value, case: &Value) -> RawSubmission {
    let name = case["name"].as_str().expect("case has a name");
    let fields: Map<String, Value> = match case.get("replace_fields") {
        Some(Value::Object(fields)) => fields.clone(),
        _ => {
            let mut fields = fixture["base_fields"]
                .as_object()
                .expect("base fields")
                .clone();
            for (key, value) in case["fields"].as_object().expect("case fields") {
                fields.insert(key.clone(), value.clone());
            }
            fields
        }
    };
    let text = |key: &str, default: &str| case[key].as_str().unwrap_or(default).to_owned();
    RawSubmission {
        schema_version: 1,
        submission_id: format!("uuid:{name}"),
        revision: 0,
        org_id: ORG.into(),
        project_id: text("project_id", PROJECT),
        form_id: text("form_id", "household"),
        form_version: Some(text("form_version", "3")),
        instance_id: Some(format!("uuid:{name}")),
        deprecated_id: None,
        source: SubmissionSource::OpenRosa,
        received_at_ms: case["received_at_ms"]
            .as_i64()
            .or_else(|| fixture["received_at_ms"].as_i64())
            .expect("a receive time"),
        content_sha256: "0".repeat(64),
        submitter: Some("enumerator-1".into()),
        device_id: Some(text("device_id", &format!("phone-{name}"))),
        fields,
        attachments: Vec::new(),
        missing_attachments: case["missing_attachments"]
            .as_array()
            .map(|names| {
                names
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        encrypted: case["encrypted"]
            .as_bool()
            .unwrap_or(false)
            .then(|| EncryptedSubmission {
                base64_encrypted_key: "c2VjcmV0LWtleQ==".into(),
                encrypted_signature: None,
                encrypted_xml_file: "submission.xml.enc".into(),
            }),
    }
}

async fn await_processed(config: &Config, ids: &HashSet<String>) -> Vec<ProcessedSubmission> {
    let topic = config.kafka.topic(SUBMISSIONS_PROCESSED);
    let records = common::collect(config, &topic, Duration::from_secs(90), |records| {
        let seen: HashSet<String> = common::by_key(records).into_keys().collect();
        ids.is_subset(&seen)
    })
    .await;
    records
        .iter()
        .map(|record| {
            decode(record.payload().expect("processed records have values"))
                .expect("processed records decode")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_submission_comes_out_with_expected_flags() {
    let fixture = fixture();
    let config = common::fresh_config().await;
    let producer = common::producer(&config);

    let form: FormDefinition =
        serde_json::from_value(fixture["form"].clone()).expect("fixture form");
    common::send(
        &producer,
        &config.kafka.topic(FORMS),
        &form.topic_key(),
        &form,
    )
    .await;
    let project = settings(vec![common::country_fence("KEN")]);
    common::send(
        &producer,
        &config.kafka.topic(PROJECT_SETTINGS),
        &project.topic_key(),
        &project,
    )
    .await;

    let (trigger, handles) = start(&config, &["validation", "geo", "quality"]);
    let cases = fixture["cases"].as_array().expect("cases").clone();
    let raw_topic = config.kafka.topic(SUBMISSIONS_RAW);

    // The duplicate's second copy goes in only once the first is out, so the quality
    // processor has seen the first whichever partitions they land on.
    let mut outputs = Vec::new();
    let mut ids = HashSet::new();
    for second_phase in [false, true] {
        let phase: Vec<&Value> = cases
            .iter()
            .filter(|case| case["second_phase"].as_bool().unwrap_or(false) == second_phase)
            .collect();
        for case in &phase {
            let submission = raw_submission(&fixture, case);
            ids.insert(submission.submission_id.clone());
            common::send(
                &producer,
                &raw_topic,
                &submission.submission_id,
                &submission,
            )
            .await;
        }
        outputs = await_processed(&config, &ids).await;
    }
    stop(trigger, handles).await;

    assert_eq!(
        outputs.len(),
        cases.len(),
        "one processed record per submission"
    );
    for case in &cases {
        let name = case["name"].as_str().expect("case name");
        let id = format!("uuid:{name}");
        let output = outputs
            .iter()
            .find(|output| output.submission.submission_id == id)
            .unwrap_or_else(|| panic!("{name}: no processed record"));

        let mut flags: Vec<&str> = output
            .quality
            .as_ref()
            .expect("quality set")
            .flags
            .iter()
            .map(|flag| flag.check.as_str())
            .collect();
        flags.sort_unstable();
        let expected: Vec<&str> = case["flags"]
            .as_array()
            .expect("flags")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(flags, expected, "{name}: flags");

        let status = serde_json::to_value(output.processing_status).expect("status serializes");
        assert_eq!(status, case["status"], "{name}: status");

        assert!(output.validation.is_some(), "{name}: validation set");
        let location = output.location.as_ref().expect("location set");
        if let Some(inside) = case["inside"].as_bool() {
            let geofence = location
                .geofence
                .as_ref()
                .unwrap_or_else(|| panic!("{name}: geofence result"));
            assert_eq!(geofence.inside, inside, "{name}: inside");
            assert_eq!(geofence.geofence_id, "KEN", "{name}: fence id");
            if !inside {
                assert!(
                    geofence.distance_m > 1_000.0,
                    "{name}: distance {}",
                    geofence.distance_m
                );
            }
        }
    }

    let unknown = outputs
        .iter()
        .find(|o| o.submission.submission_id == "uuid:unknown-form")
        .expect("unknown form kept");
    let validation = unknown.validation.as_ref().expect("validation set");
    assert!(!validation.form_known);
    assert_eq!(validation.issues[0].code, "unknown_form");

    let commcare = outputs
        .iter()
        .find(|o| o.submission.submission_id == "uuid:commcare-across-midnight")
        .expect("commcare case");
    let location = commcare.location.as_ref().expect("location set");
    assert_eq!(location.source_field.as_deref(), Some("/meta/location"));
    assert_eq!(location.accuracy_m, Some(886.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_record_dead_lettered_then_skipped() {
    let fixture = fixture();
    let config = common::fresh_config().await;
    let producer = common::producer(&config);
    let raw_topic = config.kafka.topic(SUBMISSIONS_RAW);

    let before = raw_submission(
        &fixture,
        &serde_json::json!({"name": "before-poison", "fields": {}}),
    );
    let after = raw_submission(
        &fixture,
        &serde_json::json!({"name": "after-poison", "fields": {}}),
    );
    let poison: &[u8] = b"{\"schema_version\": 1, \"submission_id\": \xff not json";
    common::send_bytes(
        &producer,
        &raw_topic,
        &before.submission_id,
        &fieldforce_schemas::codec::encode(&before),
        Some(0),
    )
    .await;
    common::send_bytes(&producer, &raw_topic, "poison", poison, Some(0)).await;
    common::send_bytes(
        &producer,
        &raw_topic,
        &after.submission_id,
        &fieldforce_schemas::codec::encode(&after),
        Some(0),
    )
    .await;

    let (trigger, handles) = start(&config, &["validation"]);
    let validated = common::collect(
        &config,
        &config.kafka.topic(SUBMISSIONS_VALIDATED),
        Duration::from_secs(60),
        |records| records.len() >= 2,
    )
    .await;
    let dead = common::collect(
        &config,
        &config.kafka.topic(SUBMISSIONS_DEADLETTER),
        Duration::from_secs(60),
        |records| !records.is_empty(),
    )
    .await;
    stop(trigger, handles).await;

    // The two keys may land on different partitions, which are read in no fixed order.
    let mut keys: Vec<String> = validated
        .iter()
        .map(|r| String::from_utf8_lossy(r.key().unwrap_or_default()).into_owned())
        .collect();
    keys.sort();
    let mut expected = vec![before.submission_id.clone(), after.submission_id.clone()];
    expected.sort();
    assert_eq!(keys, expected);

    assert_eq!(dead.len(), 1, "one dead-letter record");
    let record = &dead[0];
    assert_eq!(record.payload(), Some(poison), "original bytes kept");
    assert_eq!(record.key(), Some(&b"poison"[..]));
    let found = record.headers().expect("dead-letter headers");
    assert_eq!(
        header_str(found, headers::DEAD_LETTER_STAGE),
        Some("validation")
    );
    assert_eq!(
        header_str(found, headers::DEAD_LETTER_REASON),
        Some("undecodable")
    );
    assert_eq!(
        header_str(found, headers::DEAD_LETTER_TOPIC),
        Some(raw_topic.as_str())
    );
    assert_eq!(header_str(found, headers::DEAD_LETTER_OFFSET), Some("1"));
    assert_eq!(
        header_str(found, "test-origin"),
        Some("integration-test"),
        "original headers kept"
    );
    assert!(
        header_str(found, headers::DEAD_LETTER_DETAIL).is_some_and(|detail| !detail.is_empty())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn geofence_update_applies_without_restart() {
    let fixture = fixture();
    let config = common::fresh_config().await;
    let producer = common::producer(&config);
    let settings_topic = config.kafka.topic(PROJECT_SETTINGS);
    let validated_topic = config.kafka.topic(SUBMISSIONS_VALIDATED);
    let located_topic = config
        .kafka
        .topic(fieldforce_kafka::catalog::SUBMISSIONS_LOCATED);

    let kenya = settings(vec![common::country_fence("KEN")]);
    common::send(&producer, &settings_topic, &kenya.topic_key(), &kenya).await;
    let (trigger, handles) = start(&config, &["geo"]);

    // Kampala lies in Uganda, outside the Kenyan fence.
    let kampala = serde_json::json!({"gps": "0.3476 32.5825 1190.0 4.0"});
    let first = raw_submission(
        &fixture,
        &serde_json::json!({"name": "kampala-before", "fields": kampala}),
    );
    common::send(
        &producer,
        &validated_topic,
        &first.submission_id,
        &ProcessedSubmission::from_raw(first.clone()),
    )
    .await;
    let records = common::collect(
        &config,
        &located_topic,
        Duration::from_secs(60),
        |records| !records.is_empty(),
    )
    .await;
    let before: ProcessedSubmission =
        decode(records[0].payload().expect("value")).expect("decodes");
    let geofence = before
        .location
        .and_then(|location| location.geofence)
        .expect("geofence result");
    assert!(!geofence.inside);
    assert_eq!(geofence.geofence_id, "KEN");

    let uganda = settings(vec![common::country_fence("UGA")]);
    common::send(&producer, &settings_topic, &uganda.topic_key(), &uganda).await;

    // The reader applies the new settings shortly after they are written; send probes until
    // one is located against them.
    let mut applied = None;
    for attempt in 0..30 {
        let probe = raw_submission(
            &fixture,
            &serde_json::json!({"name": format!("kampala-after-{attempt}"), "fields": kampala}),
        );
        common::send(
            &producer,
            &validated_topic,
            &probe.submission_id,
            &ProcessedSubmission::from_raw(probe.clone()),
        )
        .await;
        let records = common::collect(
            &config,
            &located_topic,
            Duration::from_secs(30),
            |records| common::by_key(records).contains_key(&probe.submission_id),
        )
        .await;
        let located: ProcessedSubmission = records
            .iter()
            .filter(|record| record.key() == Some(probe.submission_id.as_bytes()))
            .map(|record| decode(record.payload().expect("value")).expect("decodes"))
            .next()
            .expect("probe located");
        let geofence = located
            .location
            .and_then(|location| location.geofence)
            .expect("geofence result");
        if geofence.geofence_id == "UGA" {
            applied = Some(geofence);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop(trigger, handles).await;

    let geofence = applied.expect("the Ugandan fence applied without a restart");
    assert!(geofence.inside);
    assert_eq!(geofence.distance_m, 0.0);
}
