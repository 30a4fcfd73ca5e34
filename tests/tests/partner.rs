//! The partner path: records produced straight to the raw topic with `kcat` (Debian's plain
//! Kafka client), in every encoding FieldForce reads, end up stored; undecodable ones are
//! dead-lettered with their reasons and original bytes.
//!
//! Needs the local stack and kcat (`make test` installs and starts both).

#![allow(clippy::unwrap_used, reason = "a test reports a failure by panicking")]

mod common;

use std::path::Path;
use std::process::Command;

use common::{Pipeline, records, repo_root};
use fieldforce_kafka::catalog;
use fieldforce_kafka::dead_letter::header_str;
use fieldforce_schemas::submission::RawSubmission;
use fieldforce_schemas::{avro, codec, headers};
use mongodb::bson::doc;
use rdkafka::Message;

/// Produces one record with kcat, the file's bytes as the value.
fn kcat_produce(bootstrap: &str, topic: &str, key: &str, headers: &[&str], file: &Path) {
    let mut command = Command::new("kcat");
    command.args(["-P", "-b", bootstrap, "-t", topic, "-k", key]);
    for header in headers {
        command.args(["-H", header]);
    }
    let output = command
        .arg(file)
        .output()
        .expect("kcat runs; `make up` installs it from Debian's packages");
    assert!(
        output.status.success(),
        "kcat failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// An encoder of raw submissions, with the kcat headers its records need.
type Encoding = (
    &'static str,
    fn(&RawSubmission) -> Vec<u8>,
    &'static [&'static str],
);

fn example_submission(id: &str) -> RawSubmission {
    let text = std::fs::read(repo_root().join("schemas/examples/raw-submission.json")).unwrap();
    let mut raw: RawSubmission = serde_json::from_slice(&text).unwrap();
    raw.submission_id = id.to_owned();
    raw.instance_id = Some(id.to_owned());
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_partner_encoding_is_stored() {
    let pipeline = Pipeline::start().await;
    let raw_topic = pipeline.config.kafka.topic(catalog::SUBMISSIONS_RAW);
    let bootstrap = pipeline.config.kafka.bootstrap_servers.clone();
    let folder = tempfile::tempdir().unwrap();

    let encodings: [Encoding; 3] = [
        ("single-object", avro::encode_single_object, &[]),
        ("confluent", avro::encode_confluent, &[]),
        (
            "json",
            |raw| codec::encode(raw),
            &["content-type=application/json"],
        ),
    ];
    for (name, encode, record_headers) in encodings {
        let id = format!("uuid:partner-{name}");
        let file = folder.path().join(name);
        std::fs::write(&file, encode(&example_submission(&id))).unwrap();
        kcat_produce(&bootstrap, &raw_topic, &id, record_headers, &file);
    }

    let documents = pipeline.wait_for_documents(3).await;
    assert_eq!(documents.len(), 3);
    for (name, _, _) in encodings {
        let id = format!("uuid:partner-{name}");
        let stored = documents
            .iter()
            .find(|document| document.get_str("submission_id") == Ok(id.as_str()))
            .unwrap_or_else(|| panic!("{name}: {id} not stored"));
        assert_eq!(stored.get_str("source").unwrap(), "partner", "{name}");
        let fields = stored.get_document("fields").unwrap();
        assert_eq!(fields.get_str("patient_age").unwrap(), "34", "{name}");
        assert!(
            stored
                .get_document("quality")
                .unwrap()
                .contains_key("score"),
            "{name}"
        );
    }
    let none_dead = pipeline
        .submissions()
        .await
        .count_documents(doc! { "source": { "$ne": "partner" } })
        .await
        .unwrap();
    assert_eq!(none_dead, 0);

    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn undecodable_partner_records_are_dead_lettered() {
    let pipeline = Pipeline::start().await;
    let raw_topic = pipeline.config.kafka.topic(catalog::SUBMISSIONS_RAW);
    let bootstrap = pipeline.config.kafka.bootstrap_servers.clone();
    let folder = tempfile::tempdir().unwrap();

    let mut unknown_id = avro::encode_confluent(&example_submission("uuid:unknown-id"));
    unknown_id[1..5].copy_from_slice(&4242u32.to_be_bytes());
    let mut unknown_fingerprint =
        avro::encode_single_object(&example_submission("uuid:unknown-fp"));
    unknown_fingerprint[2..10].copy_from_slice(&[0xAB; 8]);
    let mut truncated = avro::encode_confluent(&example_submission("uuid:truncated"));
    truncated.truncate(20);
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "plain-text",
            b"hello, this is not a submission".to_vec(),
            "unknown encoding",
        ),
        ("unknown-id", unknown_id, "unknown Confluent schema id 4242"),
        (
            "unknown-fingerprint",
            unknown_fingerprint,
            "unknown Avro schema fingerprint",
        ),
        ("truncated", truncated, "invalid Avro datum"),
    ];
    for (name, bytes, _) in &cases {
        let file = folder.path().join(name);
        std::fs::write(&file, bytes).unwrap();
        kcat_produce(&bootstrap, &raw_topic, name, &[], &file);
    }

    let dead_letters = pipeline.config.kafka.topic(catalog::SUBMISSIONS_DEADLETTER);
    let found = records(&pipeline.config, &dead_letters, cases.len());
    for (name, bytes, reason) in &cases {
        let record = found
            .iter()
            .find(|record| record.key() == Some(name.as_bytes()))
            .unwrap_or_else(|| panic!("{name} not dead-lettered"));
        assert_eq!(
            record.payload(),
            Some(bytes.as_slice()),
            "{name}: original bytes kept"
        );
        let record_headers = record.headers().unwrap();
        let detail = header_str(record_headers, headers::DEAD_LETTER_DETAIL).unwrap_or_default();
        assert!(
            detail.contains(reason),
            "{name}: detail {detail:?} lacks {reason:?}"
        );
        assert_eq!(
            header_str(record_headers, headers::DEAD_LETTER_STAGE),
            Some("validation")
        );
    }

    pipeline.stop().await;
}
