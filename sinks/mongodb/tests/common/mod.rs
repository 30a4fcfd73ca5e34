//! Helpers shared by the sink's integration tests: a fresh topic prefix and database per
//! test, submissions, producing, and reading committed offsets back.

#![allow(
    dead_code,
    reason = "each test file uses a different subset of the helpers"
)]

use std::time::Duration;

use bson::{Document, doc};
use fieldforce_kafka::catalog::{Catalog, SUBMISSIONS_DEADLETTER, SUBMISSIONS_PROCESSED};
use fieldforce_kafka::client::{base_config, producer_config};
use fieldforce_runtime::config::Config;
use fieldforce_schemas::codec::encode;
use fieldforce_schemas::submission::{
    ProcessedSubmission, ProcessingStatus, Quality, RawSubmission, SubmissionSource,
};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;

/// Returns a configuration with its own topics, consumer group and database, and short
/// timings.
pub fn test_config() -> Config {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut config = Config::default();
    config.kafka.topic_prefix = format!("test-sink-{run}.");
    config.sink.group_id_prefix = config.kafka.topic_prefix.clone();
    config.mongodb.database = format!("sink_test_{}", &run[..12]);
    config.sink.batch_linger_ms = 50;
    config.sink.retry_initial_backoff_ms = 50;
    config.sink.retry_max_backoff_ms = 1_000;
    config.sink.store_timeout_ms = 1_000;
    config
}

/// Creates every catalog topic under the configuration's prefix.
pub async fn create_topics(config: &Config) {
    fieldforce_kafka::admin::apply(&config.kafka, &Catalog::embedded(), true)
        .await
        .expect("kafka on 127.0.0.1:9092 must be running (make up)");
}

/// Builds a processed submission of about 1.5 KB.
pub fn submission(id: &str, revision: u32) -> ProcessedSubmission {
    let mut fields = serde_json::Map::new();
    for index in 0..20 {
        fields.insert(
            format!("question_{index:02}"),
            json!(format!("answer {index} of {id}")),
        );
    }
    fields.insert(
        "household".into(),
        json!({"members": "5", "head": "respondent"}),
    );
    let mut processed = ProcessedSubmission::from_raw(RawSubmission {
        schema_version: 1,
        submission_id: id.to_owned(),
        revision,
        org_id: "org-1".into(),
        project_id: "project-1".into(),
        form_id: "household_survey".into(),
        form_version: Some("2024060101".into()),
        instance_id: Some(format!("{id}-r{revision}")),
        deprecated_id: (revision > 0).then(|| format!("{id}-r{}", revision - 1)),
        source: SubmissionSource::OpenRosa,
        received_at_ms: 1_717_200_000_000 + i64::from(revision),
        content_sha256: format!("{:064x}", revision),
        submitter: Some("enumerator-7".into()),
        device_id: Some("collect:abc123".into()),
        fields,
        attachments: vec![],
        missing_attachments: vec![],
        encrypted: None,
    });
    processed.quality = Some(Quality {
        score: 100,
        flags: vec![],
    });
    processed.processing_status = Some(ProcessingStatus::Processed);
    processed
}

/// Produces processed submissions to the processed topic, keyed by submission id, and waits
/// for every acknowledgement.
pub async fn produce(config: &Config, submissions: &[ProcessedSubmission]) {
    let producer: FutureProducer = producer_config(&config.kafka).create().expect("producer");
    let topic = config.kafka.topic(SUBMISSIONS_PROCESSED);
    let encoded: Vec<(String, Vec<u8>)> = submissions
        .iter()
        .map(|processed| {
            (
                processed.submission.submission_id.clone(),
                encode(processed),
            )
        })
        .collect();
    let sends = encoded.iter().map(|(key, value)| {
        producer.send(
            FutureRecord::to(&topic).key(key).payload(value),
            Duration::from_secs(30),
        )
    });
    for result in futures::future::join_all(sends).await {
        result.expect("record delivered");
    }
}

/// Produces raw bytes (not a submission) under a key.
pub async fn produce_bytes(config: &Config, key: &str, value: &[u8]) {
    let producer: FutureProducer = producer_config(&config.kafka).create().expect("producer");
    let topic = config.kafka.topic(SUBMISSIONS_PROCESSED);
    producer
        .send(
            FutureRecord::to(&topic).key(key).payload(value),
            Duration::from_secs(30),
        )
        .await
        .expect("record delivered");
}

/// Returns (sum of the sink group's committed offsets, sum of the end offsets) over the
/// processed topic's partitions. A partition without a commit counts as 0.
pub fn committed_and_end(config: &Config) -> (i64, i64) {
    let consumer: BaseConsumer = base_config(&config.kafka)
        .set("group.id", fieldforce_sink_mongodb::group_id(config))
        .create()
        .expect("consumer");
    let topic = config.kafka.topic(SUBMISSIONS_PROCESSED);
    let metadata = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions = metadata.topics()[0].partitions().len() as i32;
    let mut list = TopicPartitionList::new();
    let mut end = 0;
    for partition in 0..partitions {
        list.add_partition(&topic, partition);
        let (_, high) = consumer
            .fetch_watermarks(&topic, partition, Duration::from_secs(10))
            .expect("watermarks");
        end += high;
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .expect("committed offsets");
    let sum = committed
        .elements()
        .iter()
        .map(|element| match element.offset() {
            Offset::Offset(offset) => offset,
            _ => 0,
        })
        .sum();
    (sum, end)
}

/// Returns the test's submissions collection on the shared FerretDB.
pub async fn collection(config: &Config) -> mongodb::Collection<Document> {
    let client = mongodb::Client::with_uri_str(&config.mongodb.uri)
        .await
        .expect("mongodb client");
    client
        .database(&config.mongodb.database)
        .collection(fieldforce_sink_mongodb::store::COLLECTION)
}

/// Counts the documents of the collection.
pub async fn count(collection: &mongodb::Collection<Document>) -> u64 {
    collection
        .count_documents(doc! {})
        .await
        .expect("mongodb on 127.0.0.1:27017 must be running (make up)")
}

/// Polls `check` every 200 ms until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    check().await
}

/// Drops the test database.
pub async fn drop_database(config: &Config) {
    let client = mongodb::Client::with_uri_str(&config.mongodb.uri)
        .await
        .expect("mongodb client");
    let _ = client.database(&config.mongodb.database).drop().await;
}

/// Returns a consumer of the dead-letter topic from its first record.
pub fn dead_letter_reader(config: &Config) -> StreamConsumer {
    let consumer: StreamConsumer = base_config(&config.kafka)
        .set("group.id", "dead-letter-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer
        .subscribe(&[&config.kafka.topic(SUBMISSIONS_DEADLETTER)])
        .expect("subscribe");
    consumer
}
