//! The sink against the shared Kafka and FerretDB: one document per submission at its newest
//! revision, offsets committed only after the store acknowledged, and dead-letters.

mod common;

use std::time::Duration;

use bson::doc;
use common::*;
use fieldforce_kafka::catalog::SUBMISSIONS_STORED;
use fieldforce_kafka::client::base_config;
use fieldforce_kafka::dead_letter::header_str;
use fieldforce_schemas::codec::decode;
use fieldforce_schemas::headers;
use fieldforce_schemas::webhook::SubmissionStored;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};

#[tokio::test]
async fn stores_newest_revision_once_per_submission() {
    let config = test_config();
    create_topics(&config).await;

    // 40 originals, each sent twice; 10 of them edited with revisions 2, then 1 (out of
    // order), then 2 again.
    let mut records = Vec::new();
    for index in 0..40 {
        let id = format!("sub-{index:03}");
        records.push(submission(&id, 0));
        if index < 10 {
            records.push(submission(&id, 2));
            records.push(submission(&id, 1));
        }
        records.push(submission(&id, 0));
        if index < 10 {
            records.push(submission(&id, 2));
        }
    }
    produce(&config, &records).await;

    let (trigger, shutdown) = fieldforce_runtime::shutdown::channel();
    let sink = tokio::spawn(fieldforce_sink_mongodb::run(config.clone(), shutdown));
    let collection = collection(&config).await;
    let total = records.len() as i64;
    let caught_up = wait_until(Duration::from_secs(60), || async {
        committed_and_end(&config).0 == total
    })
    .await;
    trigger.trigger();
    sink.await.expect("sink task").expect("sink run");

    assert!(
        caught_up,
        "committed offsets {:?}",
        committed_and_end(&config)
    );
    assert_eq!(count(&collection).await, 40);
    for index in 0..40 {
        let id = format!("sub-{index:03}");
        let stored = collection
            .find_one(doc! {"submission_id": &id})
            .await
            .expect("find")
            .expect("document stored");
        let expected = if index < 10 { 2 } else { 0 };
        assert_eq!(
            stored.get_i64("revision").expect("revision"),
            expected,
            "{id}"
        );
        assert_eq!(
            stored.get_str("instance_id").expect("instance_id"),
            format!("{id}-r{expected}")
        );
    }
    drop_database(&config).await;
}

#[tokio::test]
async fn announces_every_stored_submission() {
    let config = test_config();
    create_topics(&config).await;
    let mut records: Vec<_> = (0..5)
        .map(|index| submission(&format!("event-{index}"), 0))
        .collect();
    records.push(submission("event-0", 1));
    produce(&config, &records).await;

    let (trigger, shutdown) = fieldforce_runtime::shutdown::channel();
    let sink = tokio::spawn(fieldforce_sink_mongodb::run(config.clone(), shutdown));
    let total = records.len() as i64;
    let caught_up = wait_until(Duration::from_secs(60), || async {
        committed_and_end(&config).0 == total
    })
    .await;
    trigger.trigger();
    sink.await.expect("sink task").expect("sink run");
    assert!(
        caught_up,
        "committed offsets {:?}",
        committed_and_end(&config)
    );

    // Offsets are committed, so the event of every record was acknowledged before.
    let consumer: StreamConsumer = base_config(&config.kafka)
        .set("group.id", format!("{}reader", config.kafka.topic_prefix))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer
        .subscribe(&[&config.kafka.topic(SUBMISSIONS_STORED)])
        .expect("subscribe");
    let mut announced = std::collections::BTreeMap::new();
    while announced.len() < 5 || announced.get("event-0") != Some(&1) {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("every stored submission is announced")
            .expect("event record");
        assert_eq!(
            header_str(message.headers().expect("headers"), headers::SCHEMA),
            Some("submission-stored/1")
        );
        let event: SubmissionStored = decode(message.payload().expect("value")).expect("event");
        assert_eq!(message.key(), Some(event.submission_id.as_bytes()));
        assert!(event.stored_at_ms > 0);
        assert_eq!(event.quality_score, Some(100));
        let newest = announced.entry(event.submission_id.clone()).or_insert(0);
        *newest = event.revision.max(*newest);
    }
    let ids: Vec<&String> = announced.keys().collect();
    assert_eq!(
        ids,
        ["event-0", "event-1", "event-2", "event-3", "event-4"]
            .iter()
            .collect::<Vec<_>>()
    );
    drop_database(&config).await;
}

#[tokio::test]
async fn commits_offset_only_after_bulk_write() {
    let mut config = test_config();
    create_topics(&config).await;
    let records: Vec<_> = (0..20)
        .map(|index| submission(&format!("s-{index}"), 0))
        .collect();
    produce(&config, &records).await;

    // A closed loopback port: every write fails as unreachable.
    let unreachable_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let reachable_uri = std::mem::replace(
        &mut config.mongodb.uri,
        format!("mongodb://127.0.0.1:{unreachable_port}/"),
    );
    let (trigger, shutdown) = fieldforce_runtime::shutdown::channel();
    let sink = tokio::spawn(fieldforce_sink_mongodb::run(config.clone(), shutdown));
    tokio::time::sleep(Duration::from_secs(8)).await;
    trigger.trigger();
    sink.await.expect("sink task").expect("sink run");
    assert_eq!(committed_and_end(&config).0, 0, "nothing may be committed");

    config.mongodb.uri = reachable_uri;
    let (trigger, shutdown) = fieldforce_runtime::shutdown::channel();
    let sink = tokio::spawn(fieldforce_sink_mongodb::run(config.clone(), shutdown));
    let caught_up = wait_until(Duration::from_secs(60), || async {
        committed_and_end(&config).0 == 20
    })
    .await;
    trigger.trigger();
    sink.await.expect("sink task").expect("sink run");

    assert!(
        caught_up,
        "committed offsets {:?}",
        committed_and_end(&config)
    );
    assert_eq!(count(&collection(&config).await).await, 20);
    drop_database(&config).await;
}

#[tokio::test]
async fn dead_letters_too_large_document_and_stores_batch_mates() {
    let mut config = test_config();
    config.sink.max_document_bytes = 64 * 1024;
    config.sink.batch_linger_ms = 1_000;
    create_topics(&config).await;

    let mut records: Vec<_> = (0..10)
        .map(|index| submission(&format!("ok-{index}"), 0))
        .collect();
    let mut large = submission("too-large", 0);
    large
        .submission
        .fields
        .insert("notes".into(), serde_json::json!("x".repeat(100 * 1024)));
    records.insert(5, large);
    produce(&config, &records).await;
    produce_bytes(&config, "garbage", b"{not json").await;

    let (trigger, shutdown) = fieldforce_runtime::shutdown::channel();
    let sink = tokio::spawn(fieldforce_sink_mongodb::run(config.clone(), shutdown));
    let caught_up = wait_until(Duration::from_secs(60), || async {
        committed_and_end(&config).0 == 12
    })
    .await;
    trigger.trigger();
    sink.await.expect("sink task").expect("sink run");
    assert!(
        caught_up,
        "committed offsets {:?}",
        committed_and_end(&config)
    );

    let collection = collection(&config).await;
    assert_eq!(count(&collection).await, 10);
    assert!(
        collection
            .find_one(doc! {"submission_id": "too-large"})
            .await
            .expect("find")
            .is_none()
    );

    let consumer = dead_letter_reader(&config);
    let mut reasons = std::collections::BTreeMap::new();
    while reasons.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("dead-letters arrive")
            .expect("message");
        let headers = message.headers().expect("headers");
        assert_eq!(
            header_str(headers, headers::DEAD_LETTER_STAGE),
            Some("sink")
        );
        let key = String::from_utf8(message.key().expect("key").to_vec()).expect("utf-8 key");
        let reason = header_str(headers, headers::DEAD_LETTER_REASON).map(str::to_owned);
        if key == "garbage" {
            assert_eq!(
                message.payload(),
                Some(&b"{not json"[..]),
                "original bytes kept"
            );
        }
        reasons.insert(key, reason);
    }
    assert_eq!(reasons["too-large"].as_deref(), Some("document_too_large"));
    assert_eq!(reasons["garbage"].as_deref(), Some("undecodable"));
    drop_database(&config).await;
}

#[tokio::test]
async fn dead_letters_conflicting_revision() {
    let mut config = test_config();
    config.sink.batch_linger_ms = 1_000;
    create_topics(&config).await;

    // The same revision of a submission with other content: after a gateway crash, a client's
    // resend with changed answers can be acknowledged as new.
    let conflicting = |id: &str| {
        let mut changed = submission(id, 0);
        changed.submission.content_sha256 = "ff".repeat(32);
        changed
            .submission
            .fields
            .insert("question_00".into(), serde_json::json!("changed answer"));
        changed
    };
    produce(&config, &[submission("across-batches", 0)]).await;
    let (trigger, shutdown) = fieldforce_runtime::shutdown::channel();
    let sink = tokio::spawn(fieldforce_sink_mongodb::run(config.clone(), shutdown));
    let first_stored = wait_until(Duration::from_secs(60), || async {
        committed_and_end(&config).0 == 1
    })
    .await;
    assert!(first_stored, "offsets {:?}", committed_and_end(&config));

    produce(
        &config,
        &[
            conflicting("across-batches"),
            submission("across-batches", 0),
            submission("in-one-batch", 0),
            conflicting("in-one-batch"),
        ],
    )
    .await;
    let caught_up = wait_until(Duration::from_secs(60), || async {
        committed_and_end(&config).0 == 5
    })
    .await;
    trigger.trigger();
    sink.await.expect("sink task").expect("sink run");
    assert!(caught_up, "offsets {:?}", committed_and_end(&config));

    let collection = collection(&config).await;
    assert_eq!(count(&collection).await, 2);
    for id in ["across-batches", "in-one-batch"] {
        let stored = collection
            .find_one(doc! {"submission_id": id})
            .await
            .expect("find")
            .expect("document stored");
        assert_eq!(
            stored
                .get_document("fields")
                .expect("fields")
                .get_str("question_00")
                .expect("answer"),
            format!("answer 0 of {id}"),
            "{id}: the first version stays"
        );
    }

    let consumer = dead_letter_reader(&config);
    let mut dead_lettered = std::collections::BTreeMap::new();
    while dead_lettered.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("dead-letters arrive")
            .expect("message");
        let headers = message.headers().expect("headers");
        let key = String::from_utf8(message.key().expect("key").to_vec()).expect("utf-8 key");
        assert_eq!(
            header_str(headers, headers::DEAD_LETTER_REASON),
            Some("conflicting_revision"),
            "{key}"
        );
        assert_eq!(
            message.payload().map(<[u8]>::to_vec),
            Some(fieldforce_schemas::codec::encode(&conflicting(&key))),
            "{key}: original bytes kept"
        );
        dead_lettered.insert(key, ());
    }
    assert!(dead_lettered.contains_key("across-batches"));
    assert!(dead_lettered.contains_key("in-one-batch"));
    drop_database(&config).await;
}
