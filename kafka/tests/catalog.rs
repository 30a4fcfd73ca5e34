//! The topic catalog against the real broker: `apply` creates what is missing and reports
//! drift. Needs the local stack (`make up`); fails when the broker is missing.

use std::time::Duration;

use fieldforce_kafka::admin::apply;
use fieldforce_kafka::catalog::{Catalog, SUBMISSIONS_RAW};
use fieldforce_kafka::client::base_config;
use fieldforce_runtime::config::KafkaConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

fn isolated_config() -> KafkaConfig {
    KafkaConfig {
        topic_prefix: format!("test-catalog-{}.", uuid::Uuid::new_v4().simple()),
        ..KafkaConfig::default()
    }
}

#[tokio::test]
async fn apply_creates_every_topic_once() {
    let kafka = isolated_config();
    let catalog = Catalog::embedded();

    let first = apply(&kafka, &catalog, true)
        .await
        .expect("Kafka answers on 127.0.0.1:9092; run `make up` if it does not");
    assert_eq!(first.created.len(), catalog.topics.len(), "{first:?}");
    assert!(first.drift.is_empty(), "{first:?}");

    let second = apply(&kafka, &catalog, true).await.unwrap();
    assert!(second.created.is_empty(), "{second:?}");
    assert_eq!(second.existing.len(), catalog.topics.len());
    assert!(second.drift.is_empty(), "{second:?}");
}

#[tokio::test]
async fn check_reports_missing_topics_without_creating() {
    let kafka = isolated_config();
    let catalog = Catalog::embedded();

    let report = apply(&kafka, &catalog, false).await.unwrap();

    assert!(report.created.is_empty());
    assert_eq!(report.drift.len(), catalog.topics.len(), "{report:?}");
    assert!(
        report
            .drift
            .iter()
            .all(|line| line.ends_with("missing from the cluster"))
    );
}

#[tokio::test]
async fn partition_count_differing_from_catalog_is_drift() {
    let kafka = isolated_config();
    let catalog = Catalog::embedded();
    let raw = kafka.topic(SUBMISSIONS_RAW);
    let admin: AdminClient<DefaultClientContext> = base_config(&kafka).create().unwrap();
    let created = admin
        .create_topics(
            &[NewTopic::new(&raw, 2, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap();
    assert!(created[0].is_ok(), "{created:?}");

    let report = apply(&kafka, &catalog, true).await.unwrap();

    let expected = catalog.topic(SUBMISSIONS_RAW).unwrap().partitions;
    assert_eq!(
        report.drift,
        vec![format!("{raw}: 2 partitions, catalog says {expected}")]
    );
    assert_eq!(report.created.len(), catalog.topics.len() - 1);
}
