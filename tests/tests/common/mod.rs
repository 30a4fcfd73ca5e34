//! The whole pipeline in one process, shared by the end-to-end tests: the gateway, the three
//! processors and the sink, each started through its library `run`, with topics and a
//! database of their own.

#![allow(
    dead_code,
    reason = "each test file uses a different part of this module"
)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fieldforce_kafka::catalog::Catalog;
use fieldforce_kafka::client::reader_config;
use fieldforce_replay::client::GatewayClient;
use fieldforce_runtime::config::Config;
use fieldforce_runtime::shutdown::{self, ShutdownTrigger};
use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Offset, TopicPartitionList};
use tokio::task::JoinHandle;

pub const DEV_TOKEN: &str = "fieldforce-dev-token";
pub const PROJECT: &str = "e2e";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn samples() -> PathBuf {
    repo_root().join("tools/replay/samples")
}

/// Returns the real boundary set, fetching it into `.stack/` when missing.
pub fn boundaries() -> PathBuf {
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

pub struct Pipeline {
    pub config: Config,
    pub client: GatewayClient,
    trigger: ShutdownTrigger,
    tasks: Vec<JoinHandle<()>>,
    _blobs: tempfile::TempDir,
}

impl Pipeline {
    pub async fn start() -> Self {
        Self::start_with(|_| {}, true).await
    }

    /// Starts the pipeline with its own topics, groups and database, after `configure` has
    /// adjusted the configuration; without the sink when `with_sink` is false, for a test that
    /// runs the sink itself.
    pub async fn start_with(configure: impl FnOnce(&mut Config), with_sink: bool) -> Self {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let blobs = tempfile::tempdir().unwrap();
        let mut config = Config::load(None).expect("configuration loads");
        config.kafka.topic_prefix = format!("test-e2e-{suffix}.");
        config.processors.group_id_prefix = config.kafka.topic_prefix.clone();
        config.sink.group_id_prefix = config.kafka.topic_prefix.clone();
        config.mongodb.database = format!("test_e2e_{suffix}");
        config.gateway.blob_dir = blobs.path().display().to_string();
        config.gateway.index_collection = "submission_index".into();
        configure(&mut config);

        fieldforce_kafka::admin::apply(&config.kafka, &Catalog::embedded(), true)
            .await
            .expect("Kafka answers on 127.0.0.1:9092; run `make up` if it does not");

        let (trigger, shutdown) = shutdown::channel();
        let mut tasks = Vec::new();
        if with_sink {
            let sink = fieldforce_sink_mongodb::run(config.clone(), shutdown.clone());
            tasks.push(tokio::spawn(async move { sink.await.expect("sink runs") }));
        }
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

    pub async fn submissions(&self) -> mongodb::Collection<Document> {
        mongodb::Client::with_uri_str(&self.config.mongodb.uri)
            .await
            .unwrap()
            .database(&self.config.mongodb.database)
            .collection("submissions")
    }

    /// Waits until the store holds `count` documents, then a little longer to catch extras.
    pub async fn wait_for_documents(&self, count: u64) -> Vec<Document> {
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

    pub async fn stop(self) {
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

pub fn read(path: &Path) -> Bytes {
    Bytes::from(std::fs::read(path).unwrap())
}

/// Reads the first record of a topic, waiting up to 30 seconds for one.
pub fn first_record(config: &Config, topic: &str) -> OwnedMessage {
    records(config, topic, 1).remove(0)
}

/// Reads `count` records of a topic from the beginning, waiting up to 30 seconds for them.
pub fn records(config: &Config, topic: &str, count: usize) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = reader_config(&config.kafka).create().unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        assignment
            .add_partition_offset(topic, partition.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut found = Vec::new();
    while found.len() < count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} records on {topic} in 30 s",
            found.len()
        );
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(500)) {
            found.push(message.detach());
        }
    }
    found
}
