//! Crash and restart of the geo processor as a child process: after `kill -9` mid-stream and a
//! restart, every submission comes out, and a submission that comes out twice is an exact
//! replay (byte-identical value).

mod common;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fieldforce_kafka::catalog::{SUBMISSIONS_LOCATED, SUBMISSIONS_VALIDATED};
use fieldforce_runtime::config::Config;
use fieldforce_schemas::codec::encode;
use fieldforce_schemas::submission::{ProcessedSubmission, RawSubmission, SubmissionSource};
use futures::future::join_all;
use rdkafka::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;

const SUBMISSIONS: usize = 10_000;

/// Kills the child when the test ends, whether it passes or panics.
struct Processor(Child);

impl Drop for Processor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_geo(config: &Config) -> Processor {
    let child = Command::new(env!("CARGO_BIN_EXE_fieldforce-geo"))
        .env(
            "FIELDFORCE_KAFKA__BOOTSTRAP_SERVERS",
            &config.kafka.bootstrap_servers,
        )
        .env("FIELDFORCE_KAFKA__TOPIC_PREFIX", &config.kafka.topic_prefix)
        .env(
            "FIELDFORCE_PROCESSORS__GROUP_ID_PREFIX",
            &config.processors.group_id_prefix,
        )
        .env("FIELDFORCE_PROCESSORS__BATCH_MAX_RECORDS", "64")
        .env("FIELDFORCE_PROCESSORS__CATCH_UP_TIMEOUT_MS", "15000")
        .env("FIELDFORCE_TELEMETRY__LOG_FILTER", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the geo processor binary starts");
    Processor(child)
}

fn submission(index: usize) -> ProcessedSubmission {
    let mut fields = serde_json::Map::new();
    // Points spread over a few degrees, so the records differ in their geometry.
    let latitude = -1.0 - (index % 100) as f64 * 0.01;
    let longitude = 36.0 + (index % 37) as f64 * 0.01;
    fields.insert(
        "gps".into(),
        format!("{latitude} {longitude} 1650.0 5.0").into(),
    );
    fields.insert("household".into(), index.to_string().into());
    ProcessedSubmission::from_raw(RawSubmission {
        schema_version: 1,
        submission_id: format!("uuid:crash-{index:05}"),
        revision: 0,
        org_id: "org-test".into(),
        project_id: "crash".into(),
        form_id: "household".into(),
        form_version: None,
        instance_id: None,
        deprecated_id: None,
        source: SubmissionSource::Json,
        received_at_ms: 1_714_546_800_000 + index as i64,
        content_sha256: "0".repeat(64),
        submitter: None,
        device_id: Some(format!("phone-{index}")),
        fields,
        attachments: Vec::new(),
        missing_attachments: Vec::new(),
        encrypted: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_nine_mid_stream_loses_nothing() {
    let config = common::fresh_config().await;
    let producer = common::producer(&config);
    let input = config.kafka.topic(SUBMISSIONS_VALIDATED);
    let output = config.kafka.topic(SUBMISSIONS_LOCATED);

    for chunk in (0..SUBMISSIONS).collect::<Vec<_>>().chunks(1_000) {
        let sends = chunk.iter().map(|index| {
            let record = submission(*index);
            let key = record.submission.submission_id.clone();
            let value = encode(&record);
            let producer = producer.clone();
            let topic = input.clone();
            async move {
                producer
                    .send(
                        FutureRecord::to(&topic).key(&key).payload(&value),
                        Timeout::After(Duration::from_secs(30)),
                    )
                    .await
                    .map_err(|(error, _)| error)
                    .expect("the local Kafka accepts the record");
            }
        });
        join_all(sends).await;
    }

    let first = spawn_geo(&config);
    let partial = common::collect(&config, &output, Duration::from_secs(120), |records| {
        records.len() >= SUBMISSIONS / 10
    })
    .await;
    assert!(
        partial.len() >= SUBMISSIONS / 10,
        "the first run produced {} records",
        partial.len()
    );
    drop(first); // SIGKILL: no drain, no final commit.

    let second = spawn_geo(&config);
    let expected: HashSet<String> = (0..SUBMISSIONS)
        .map(|index| format!("uuid:crash-{index:05}"))
        .collect();
    let mut distinct = HashSet::new();
    let mut counted = 0;
    let records = common::collect(&config, &output, Duration::from_secs(240), |records| {
        // Only the records added since the last call are counted, to keep the check linear.
        for record in &records[counted..] {
            distinct.insert(record.key().unwrap_or_default().to_vec());
        }
        counted = records.len();
        distinct.len() >= SUBMISSIONS
    })
    .await;
    drop(second);

    let grouped = common::by_key(&records);
    let seen: HashSet<String> = grouped.keys().cloned().collect();
    let missing: Vec<&String> = expected.difference(&seen).take(5).collect();
    assert!(
        missing.is_empty(),
        "missing after restart, first few: {missing:?}"
    );
    assert_eq!(seen.len(), SUBMISSIONS, "no unexpected keys");
    for (key, values) in &grouped {
        assert!(
            values.windows(2).all(|pair| pair[0] == pair[1]),
            "{key}: a replay differs from the first output"
        );
    }
    let replays = records.len() - SUBMISSIONS;
    eprintln!(
        "crash test: {} records out, {replays} exact replays",
        records.len()
    );
}
