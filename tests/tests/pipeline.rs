//! The whole pipeline in one process against the real local stack: the gateway, the three
//! processors and the sink, each started through its library `run`, with topics and a
//! database of their own. Submissions go in as clients send them; the test then reads the
//! store and the dead-letter topic.
//!
//! Needs the local stack and the boundary set (`make test` provides both); fails when a
//! server is missing.

#![allow(clippy::unwrap_used, reason = "a test reports a failure by panicking")]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fieldforce_kafka::catalog::{self, Catalog};
use fieldforce_kafka::client::{producer_config, reader_config};
use fieldforce_kafka::dead_letter::header_str;
use fieldforce_replay::client::GatewayClient;
use fieldforce_replay::geofences;
use fieldforce_runtime::config::Config;
use fieldforce_runtime::shutdown::{self, ShutdownTrigger};
use fieldforce_schemas::headers;
use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::task::JoinHandle;

const DEV_TOKEN: &str = "fieldforce-dev-token";
const PROJECT: &str = "e2e";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn samples() -> PathBuf {
    repo_root().join("tools/replay/samples")
}

/// Returns the real boundary set, fetching it into `.stack/` when missing.
fn boundaries() -> PathBuf {
    let output = std::process::Command::new(repo_root().join("stack/fetch-boundaries"))
        .output()
        .expect("stack/fetch-boundaries runs");
    assert!(
        output.status.success(),
        "stack/fetch-boundaries failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

struct Pipeline {
    config: Config,
    client: GatewayClient,
    trigger: ShutdownTrigger,
    tasks: Vec<JoinHandle<()>>,
    _blobs: tempfile::TempDir,
}

impl Pipeline {
    async fn start() -> Self {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let blobs = tempfile::tempdir().unwrap();
        let mut config = Config::load(None).expect("configuration loads");
        config.kafka.topic_prefix = format!("test-e2e-{suffix}.");
        config.mongodb.database = format!("test_e2e_{suffix}");
        config.gateway.blob_dir = blobs.path().display().to_string();
        config.gateway.index_collection = "submission_index".into();

        fieldforce_kafka::admin::apply(&config.kafka, &Catalog::embedded(), true)
            .await
            .expect("Kafka answers on 127.0.0.1:9092; run `make up` if it does not");

        let (trigger, shutdown) = shutdown::channel();
        let mut tasks = Vec::new();
        let sink = fieldforce_sink_mongodb::run(config.clone(), shutdown.clone());
        tasks.push(tokio::spawn(async move { sink.await.expect("sink runs") }));
        let quality = fieldforce_processors::quality::run(config.clone(), shutdown.clone());
        tasks.push(tokio::spawn(
            async move { quality.await.expect("quality runs") },
        ));
        let geo = fieldforce_processors::geo::run(config.clone(), shutdown.clone());
        tasks.push(tokio::spawn(async move { geo.await.expect("geo runs") }));
        let validate = fieldforce_processors::validate::run(config.clone(), shutdown.clone());
        tasks.push(tokio::spawn(async move {
            validate.await.expect("validation runs")
        }));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let gateway = fieldforce_gateway::run(config.clone(), listener, shutdown.clone());
        tasks.push(tokio::spawn(
            async move { gateway.await.expect("gateway runs") },
        ));

        let client = GatewayClient::new(&format!("http://{address}"), DEV_TOKEN);
        Self {
            config,
            client,
            trigger,
            tasks,
            _blobs: blobs,
        }
    }

    async fn submissions(&self) -> mongodb::Collection<Document> {
        mongodb::Client::with_uri_str(&self.config.mongodb.uri)
            .await
            .unwrap()
            .database(&self.config.mongodb.database)
            .collection("submissions")
    }

    /// Waits until the store holds `count` documents, then a little longer to catch extras.
    async fn wait_for_documents(&self, count: u64) -> Vec<Document> {
        let submissions = self.submissions().await;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let stored = submissions.count_documents(doc! {}).await.unwrap();
            if stored >= count {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "only {stored} of {count} documents stored in 120 s"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        submissions
            .find(doc! {})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.trigger.trigger();
        for task in self.tasks {
            tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .expect("every service stops within 60 s")
                .expect("no service panicked");
        }
        let client = mongodb::Client::with_uri_str(&self.config.mongodb.uri)
            .await
            .unwrap();
        let _ = client.database(&self.config.mongodb.database).drop().await;
    }
}

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

fn read(path: &Path) -> Bytes {
    Bytes::from(std::fs::read(path).unwrap())
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
    let consumer: BaseConsumer = reader_config(&pipeline.config.kafka).create().unwrap();
    let metadata = consumer
        .fetch_metadata(Some(&dead_letters), Duration::from_secs(10))
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        assignment
            .add_partition_offset(&dead_letters, partition.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let record = loop {
        assert!(Instant::now() < deadline, "no dead-letter record in 30 s");
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(500)) {
            break message.detach();
        }
    };
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
