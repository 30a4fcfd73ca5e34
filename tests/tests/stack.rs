//! Proves the local stack is real: a Kafka broker that keeps what an idempotent `acks=all`
//! producer wrote, and a MongoDB wire-protocol server that enforces unique indexes.
//!
//! Both tests fail, never skip, when a server is missing: start the stack with `make up`.

#![allow(clippy::unwrap_used, reason = "a test reports a failure by panicking")]

use std::time::Duration;

use fieldforce_kafka::client::{consumer_config, producer_config};
use fieldforce_runtime::config::Config;
use futures::StreamExt;
use mongodb::bson::{Document, doc};
use mongodb::options::IndexOptions;
use mongodb::{Client, IndexModel};
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

const RECORDS: usize = 100;

#[tokio::test]
async fn kafka_keeps_records_of_idempotent_producer() {
    let config = Config::load(None).expect("configuration loads");
    let topic = format!("test-stack-{}", uuid::Uuid::new_v4());

    let admin: AdminClient<DefaultClientContext> =
        fieldforce_kafka::client::base_config(&config.kafka)
            .create()
            .expect("admin client");
    let created = admin
        .create_topics(
            &[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("Kafka answers on 127.0.0.1:9092; run `make up` if it does not");
    assert!(
        created[0].is_ok(),
        "topic creation failed: {:?}",
        created[0]
    );

    let producer: FutureProducer = producer_config(&config.kafka).create().expect("producer");
    for index in 0..RECORDS {
        let key = format!("key-{index}");
        let payload = format!("payload-{index}");
        producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .expect("the broker acknowledges every record");
    }

    let group = format!("test-stack-{}", uuid::Uuid::new_v4());
    let consumer: StreamConsumer = consumer_config(&config.kafka, &group)
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let mut received = Vec::new();
    let mut stream = consumer.stream();
    while received.len() < RECORDS {
        let message = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .expect("records arrive within 60 s")
            .expect("the stream stays open")
            .expect("no consumer error");
        let payload = String::from_utf8(message.payload().expect("payload").to_vec()).unwrap();
        consumer
            .store_offset_from_message(&message)
            .expect("offset stored");
        received.push(payload);
    }

    consumer
        .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
        .expect("the group commits its offsets");
    let wrapper =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../stack/bin/kafka-consumer-groups");
    let described = std::process::Command::new(wrapper)
        .args([
            "--bootstrap-server",
            &config.kafka.bootstrap_servers,
            "--describe",
            "--group",
            &group,
        ])
        .output()
        .expect("the kafka-consumer-groups wrapper runs");
    let table = String::from_utf8_lossy(&described.stdout);
    assert!(
        described.status.success(),
        "{}",
        String::from_utf8_lossy(&described.stderr)
    );
    assert!(
        table.contains(&topic),
        "the wrapper describes the group's partitions: {table}"
    );

    received.sort();
    let mut expected: Vec<String> = (0..RECORDS)
        .map(|index| format!("payload-{index}"))
        .collect();
    expected.sort();
    assert_eq!(
        received, expected,
        "every record once, none lost or doubled"
    );
}

#[tokio::test]
async fn mongodb_unique_index_rejects_duplicate() {
    let config = Config::load(None).expect("configuration loads");
    let client = Client::with_uri_str(&config.mongodb.uri)
        .await
        .expect("client");
    let database = client.database(&format!("test_stack_{}", uuid::Uuid::new_v4().simple()));

    let build_info = database
        .run_command(doc! { "buildInfo": 1 })
        .await
        .expect("the MongoDB server on 127.0.0.1:27017 answers; run `make up` if it does not");
    println!(
        "store reports version {:?}, ferretdb {:?}",
        build_info.get_str("version").ok(),
        build_info.get_document("ferretdb").ok()
    );

    let submissions = database.collection::<Document>("submissions");
    submissions
        .create_index(
            IndexModel::builder()
                .keys(doc! { "form_id": 1, "instance_id": 1 })
                .options(IndexOptions::builder().unique(true).build())
                .build(),
        )
        .await
        .expect("unique index created");

    let documents = (0..10).map(|index| {
        doc! { "_id": format!("sub-{index}"), "form_id": "household", "instance_id": format!("uuid:{index}") }
    });
    submissions.insert_many(documents).await.expect("insert");
    let stored = submissions.count_documents(doc! {}).await.expect("count");
    assert_eq!(stored, 10);

    let read_back = submissions
        .find_one(doc! { "_id": "sub-3" })
        .await
        .expect("find")
        .expect("sub-3 stored");
    assert_eq!(read_back.get_str("instance_id").unwrap(), "uuid:3");

    let duplicate = submissions
        .insert_one(doc! { "_id": "other", "form_id": "household", "instance_id": "uuid:3" })
        .await
        .expect_err("the unique index rejects a second document with the same identity");
    assert!(
        duplicate.to_string().contains("E11000") || duplicate.to_string().contains("duplicate"),
        "{duplicate}"
    );

    database.drop().await.expect("drop test database");
}
