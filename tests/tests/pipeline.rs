//! The whole pipeline in one process against the real local stack: the gateway, the three
//! processors and the sink, each started through its library `run`, with topics and a
//! database of their own. Submissions go in as clients send them; the test then reads the
//! store and the dead-letter topic.
//!
//! Needs the local stack and the boundary set (`make test` provides both); fails when a
//! server is missing.

#![allow(clippy::unwrap_used, reason = "a test reports a failure by panicking")]

mod common;

use std::time::Duration;

use common::{DEV_TOKEN, PROJECT, Pipeline, boundaries, first_record, read, samples};
use fieldforce_kafka::catalog;
use fieldforce_kafka::client::producer_config;
use fieldforce_kafka::dead_letter::header_str;
use fieldforce_replay::client::GatewayClient;
use fieldforce_replay::geofences;
use fieldforce_schemas::headers;
use mongodb::bson::Document;
use rdkafka::Message;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

fn find<'a>(documents: &'a [Document], instance_suffix: &str) -> &'a Document {
    documents
        .iter()
        .find(|document| {
            document
                .get_str("_id")
                .is_ok_and(|id| id.ends_with(instance_suffix))
        })
        .unwrap_or_else(|| panic!("no stored document for {instance_suffix}"))
}

fn flags(document: &Document) -> Vec<String> {
    document
        .get_document("quality")
        .and_then(|quality| quality.get_array("flags"))
        .map(|flags| {
            flags
                .iter()
                .filter_map(|flag| flag.as_document()?.get_str("check").ok().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn accepted_submissions_stored_exactly_once() {
    let pipeline = Pipeline::start().await;
    let client = &pipeline.client;

    let form = client
        .register_form(PROJECT, read(&samples().join("clinic_visit.form.xml")))
        .await;
    assert!(
        form.accepted(),
        "form registration: {} {}",
        form.status,
        form.body
    );
    let fences = geofences::read_geofences(&boundaries()).unwrap();
    let kenya = fences
        .iter()
        .find(|fence| fence.name == "KEN")
        .expect("Kenya in the boundary set");
    geofences::assign(client, PROJECT, kenya).await.unwrap();
    // Processors follow the settings topic; give them a moment to see the new geofence.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let post = |name: &str| {
        let xml = read(&samples().join(name));
        async move {
            client
                .submit_openrosa(PROJECT, "enumerator-7", xml, &[], true)
                .await
        }
    };
    let original = post("visit-001.xml").await;
    assert_eq!(original.status, 201, "{}", original.body);
    let resend = post("visit-002-resend.xml").await;
    assert_eq!(
        resend.status, 201,
        "an identical resend is acknowledged: {}",
        resend.body
    );
    let conflict = post("visit-003-conflict.xml").await;
    assert_eq!(conflict.status, 409, "{}", conflict.body);
    let edit = post("visit-004-edit.xml").await;
    assert_eq!(edit.status, 201, "{}", edit.body);
    for name in [
        "visit-005-rushed-outside-area.xml",
        "visit-006-empty-answers.xml",
        "visit-007-wrong-types.xml",
    ] {
        let outcome = post(name).await;
        assert_eq!(outcome.status, 201, "{name}: {}", outcome.body);
    }
    let doctype = post("visit-008-doctype.xml").await;
    assert_eq!(doctype.status, 400, "{}", doctype.body);
    assert!(!doctype.message().is_empty(), "a rejection says why");

    let folder = samples().join("clinic_visit_2026-11-03_09-12-44");
    let photo = fieldforce_replay::client::AttachmentFile {
        name: "1762150364318.jpg".into(),
        bytes: read(&folder.join("1762150364318.jpg")),
    };
    let with_photo = client
        .submit_openrosa(
            PROJECT,
            "enumerator-7",
            read(&folder.join("clinic_visit_2026-11-03_09-12-44.xml")),
            &[photo],
            true,
        )
        .await;
    assert_eq!(with_photo.status, 201, "{}", with_photo.body);

    let json = client
        .post_json(
            "/v1/projects/e2e/submissions",
            read(&samples().join("visit-009.json")),
        )
        .await;
    assert_eq!(json.status, 201, "{}", json.body);
    let no_id = client
        .post_json(
            "/v1/projects/e2e/submissions",
            read(&samples().join("visit-010-missing-id.json")),
        )
        .await;
    assert_eq!(no_id.status, 400, "{}", no_id.body);
    assert!(
        no_id.message().to_lowercase().contains("id"),
        "{}",
        no_id.body
    );

    // 001 (edited by 004), 005, 006, 007, the instance folder and the JSON one.
    let documents = pipeline.wait_for_documents(6).await;
    assert_eq!(documents.len(), 6, "one document per accepted submission");

    let edited = find(&documents, "0f1e2b3c4d01");
    assert_eq!(
        edited
            .get_i32("revision")
            .or_else(|_| edited.get_i64("revision").map(|r| r as i32))
            .unwrap(),
        1
    );
    assert_eq!(
        edited
            .get_document("fields")
            .unwrap()
            .get_str("patient_age")
            .unwrap(),
        "28"
    );
    let geofence = edited
        .get_document("location")
        .unwrap()
        .get_document("geofence")
        .unwrap();
    assert!(
        geofence.get_bool("inside").unwrap(),
        "Nairobi is inside Kenya"
    );
    assert!(
        edited
            .get_document("quality")
            .unwrap()
            .contains_key("score")
    );
    assert!(
        edited.get_datetime("stored_at").is_ok(),
        "the sink records when it stored"
    );

    let rushed = find(&documents, "7e9f0a1b2c05");
    let rushed_flags = flags(rushed);
    for check in [
        "too_fast",
        "across_midnight",
        "gps_inaccurate",
        "outside_geofence",
    ] {
        assert!(
            rushed_flags.contains(&check.to_owned()),
            "{check} missing from {rushed_flags:?}"
        );
    }
    let outside = rushed
        .get_document("location")
        .unwrap()
        .get_document("geofence")
        .unwrap();
    assert!(
        !outside.get_bool("inside").unwrap(),
        "Dar es Salaam is outside Kenya"
    );
    assert!(outside.get_f64("distance_m").unwrap() > 1_000.0);

    let empty = find(&documents, "5c4d3e2f1a06");
    assert!(
        flags(empty).contains(&"gps_missing".to_owned()),
        "{:?}",
        flags(empty)
    );
    assert!(
        !empty
            .get_document("fields")
            .unwrap()
            .contains_key("patient_age"),
        "empty answers are absent"
    );

    let wrong = find(&documents, "6d5c4b3a2907");
    assert!(
        !wrong
            .get_document("validation")
            .unwrap()
            .get_bool("valid")
            .unwrap()
    );

    let photographed = find(&documents, "7f8091a2b310");
    let attachment = photographed.get_array("attachments").unwrap()[0]
        .as_document()
        .unwrap()
        .clone();
    assert_eq!(attachment.get_str("name").unwrap(), "1762150364318.jpg");
    assert_eq!(attachment.get_str("content_type").unwrap(), "image/jpeg");

    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_record_dead_lettered_with_original_bytes() {
    let pipeline = Pipeline::start().await;
    let raw_topic = pipeline.config.kafka.topic(catalog::SUBMISSIONS_RAW);
    let poison: &[u8] = b"{\"submission_id\": \"poison\", truncated \xff";

    let producer: FutureProducer = producer_config(&pipeline.config.kafka).create().unwrap();
    producer
        .send(
            FutureRecord::to(&raw_topic)
                .key("poison")
                .payload(poison)
                .headers(OwnedHeaders::new().insert(Header {
                    key: headers::CONTENT_TYPE,
                    value: Some("application/json"),
                })),
            Duration::from_secs(30),
        )
        .await
        .expect("the broker takes the poison record");

    // A good submission after the poison one must still come through.
    let good = pipeline
        .client
        .submit_openrosa(
            PROJECT,
            "enumerator-7",
            read(&samples().join("visit-001.xml")),
            &[],
            false,
        )
        .await;
    assert_eq!(good.status, 201, "{}", good.body);
    let documents = pipeline.wait_for_documents(1).await;
    assert_eq!(documents.len(), 1);

    let dead_letters = pipeline.config.kafka.topic(catalog::SUBMISSIONS_DEADLETTER);
    let record = first_record(&pipeline.config, &dead_letters);
    assert_eq!(
        record.payload(),
        Some(poison),
        "the original bytes are kept"
    );
    let record_headers = record.headers().expect("dead-letter headers");
    assert_eq!(
        header_str(record_headers, headers::DEAD_LETTER_STAGE),
        Some("validation")
    );
    assert!(header_str(record_headers, headers::DEAD_LETTER_REASON).is_some());
    assert_eq!(
        header_str(record_headers, headers::DEAD_LETTER_TOPIC),
        Some(raw_topic.as_str())
    );

    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stored_original_recognised_by_new_gateway() {
    let pipeline = Pipeline::start().await;
    let form = pipeline
        .client
        .register_form(PROJECT, read(&samples().join("clinic_visit.form.xml")))
        .await;
    assert!(form.accepted(), "{} {}", form.status, form.body);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let xml = |name: &str| read(&samples().join(name));
    let original = pipeline
        .client
        .submit_openrosa(PROJECT, "enumerator-7", xml("visit-001.xml"), &[], true)
        .await;
    assert_eq!(original.status, 201, "{}", original.body);
    pipeline.wait_for_documents(1).await;

    // A gateway that never saw the original, and no index entry for it either, as after a
    // crash of the gateway that accepted it: only the stored document can recognise it.
    let database = mongodb::Client::with_uri_str(&pipeline.config.mongodb.uri)
        .await
        .unwrap()
        .database(&pipeline.config.mongodb.database);
    database
        .collection::<Document>(&pipeline.config.gateway.index_collection)
        .drop()
        .await
        .unwrap();
    let (trigger, shutdown) = fieldforce_runtime::shutdown::channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let gateway = tokio::spawn(fieldforce_gateway::run(
        pipeline.config.clone(),
        listener,
        shutdown,
    ));
    let client = GatewayClient::new(&format!("http://{address}"), DEV_TOKEN);
    let post = |name: &str| client.submit_openrosa(PROJECT, "enumerator-7", xml(name), &[], true);

    let resend = post("visit-002-resend.xml").await;
    assert_eq!(resend.status, 201, "{}", resend.body);
    assert!(resend.body.contains("already received"), "{}", resend.body);
    let conflict = post("visit-003-conflict.xml").await;
    assert_eq!(conflict.status, 409, "{}", conflict.body);
    let edit = post("visit-004-edit.xml").await;
    assert_eq!(edit.status, 201, "{}", edit.body);

    let submissions = pipeline.submissions().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let stored = submissions
            .find_one(mongodb::bson::doc! { "revision": { "$gte": 1 } })
            .await
            .unwrap();
        if stored.is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the edit accepted by the new gateway was not stored within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        submissions
            .count_documents(mongodb::bson::doc! {})
            .await
            .unwrap(),
        1,
        "the resend and the edit stay one submission"
    );

    trigger.trigger();
    tokio::time::timeout(Duration::from_secs(60), gateway)
        .await
        .expect("the second gateway stops within 60 s")
        .unwrap()
        .unwrap();
    pipeline.stop().await;
}
