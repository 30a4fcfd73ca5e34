//! Helpers shared by the integration tests: a configuration with its own topics on the local
//! broker, producing and collecting records, and the real boundary set.

#![allow(
    dead_code,
    reason = "each test file uses a different subset of the helpers"
)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use fieldforce_kafka::catalog::Catalog;
use fieldforce_kafka::client::{base_config, producer_config};
use fieldforce_runtime::config::Config;
use fieldforce_schemas::codec::{Contract, encode};
use fieldforce_schemas::project::Geofence;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

/// Returns a configuration whose topics have a fresh random prefix, created on the broker.
pub async fn fresh_config() -> Config {
    let mut config = Config::default();
    config.kafka.topic_prefix = format!("test-{}.", uuid::Uuid::new_v4().simple());
    // Groups are per test too: a member of a killed test process would otherwise hold up
    // the rebalances of every later run until its session times out.
    config.processors.group_id_prefix = config.kafka.topic_prefix.clone();
    config.processors.catch_up_timeout_ms = 15_000;
    config.telemetry.log_filter = "warn".to_owned();
    // Export is off in these tests, so there is nothing to flush at the end.
    let _telemetry = fieldforce_runtime::telemetry::init(&config.telemetry, "processor-tests")
        .expect("telemetry without export starts");
    config.processors.batch_linger_ms = 2;
    fieldforce_kafka::admin::apply(&config.kafka, &Catalog::embedded(), true)
        .await
        .expect("the local Kafka at 127.0.0.1:9092 must be running: run `make up` first");
    config
}

/// Returns a producer for test input.
pub fn producer(config: &Config) -> FutureProducer {
    producer_config(&config.kafka)
        .create()
        .expect("producer configuration is valid")
}

/// Produces a record and waits for its acknowledgement. Returns the partition and offset
/// the record was written at.
pub async fn send_bytes(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    value: &[u8],
    partition: Option<i32>,
) -> (i32, i64) {
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: fieldforce_schemas::headers::CONTENT_TYPE,
            value: Some(fieldforce_schemas::codec::JSON_CONTENT_TYPE),
        })
        .insert(Header {
            key: "test-origin",
            value: Some("integration-test"),
        });
    let mut record = FutureRecord::to(topic)
        .key(key)
        .payload(value)
        .headers(headers);
    if let Some(partition) = partition {
        record = record.partition(partition);
    }
    let delivery = producer
        .send(record, Timeout::After(Duration::from_secs(30)))
        .await
        .map_err(|(error, _)| error)
        .expect("the local Kafka accepts the record");
    (delivery.partition, delivery.offset)
}

/// Produces a contract record keyed by `key`.
pub async fn send<T: Contract>(producer: &FutureProducer, topic: &str, key: &str, value: &T) {
    send_bytes(producer, topic, key, &encode(value), None).await;
}

/// Reads a topic from the beginning, without a group, until `done` holds for the records
/// read so far or `timeout` passes. Returns every record read.
pub async fn collect(
    config: &Config,
    topic: &str,
    timeout: Duration,
    mut done: impl FnMut(&[OwnedMessage]) -> bool,
) -> Vec<OwnedMessage> {
    let consumer: StreamConsumer = base_config(&config.kafka)
        .set(
            "group.id",
            format!("test-reader-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer configuration is valid");
    consumer.subscribe(&[topic]).expect("subscribe works");
    let mut records = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while !done(&records) {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(message)) => records.push(message.detach()),
            Ok(Err(error)) => panic!("reading {topic} failed: {error}"),
            Err(_) => break,
        }
    }
    records
}

/// Groups record values by key.
pub fn by_key(records: &[OwnedMessage]) -> HashMap<String, Vec<Vec<u8>>> {
    let mut grouped: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    for record in records {
        let key = String::from_utf8_lossy(record.key().unwrap_or_default()).into_owned();
        grouped
            .entry(key)
            .or_default()
            .push(record.payload().unwrap_or_default().to_vec());
    }
    grouped
}

/// Path of the real country borders installed by `stack/fetch-boundaries`.
pub fn boundaries_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../.stack/boundaries/countries-land-10km-0.6.0/map.geo.json")
}

/// Loads the real border of one country (ISO 3166-1 alpha-3 code) as a geofence.
pub fn country_fence(code: &str) -> Geofence {
    let path = boundaries_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| {
        panic!(
            "boundary data {} is missing ({error}): run `make up` (or stack/fetch-boundaries) first",
            path.display()
        )
    });
    let collection: serde_json::Value =
        serde_json::from_str(&text).expect("the boundary set is JSON");
    let feature = collection["features"]
        .as_array()
        .expect("the boundary set is a FeatureCollection")
        .iter()
        .find(|feature| feature["properties"]["A3"] == code)
        .unwrap_or_else(|| panic!("country {code} is missing from the boundary set"));
    Geofence {
        id: code.to_owned(),
        name: code.to_owned(),
        geometry: feature["geometry"].clone(),
    }
}
