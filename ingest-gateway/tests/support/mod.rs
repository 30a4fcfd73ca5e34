//! Starting a gateway in-process against the local stack, with its own topics, database and
//! blob folder, and talking to it as a client would.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the support code"
)]
#![allow(
    clippy::unwrap_used,
    reason = "support code of tests, where a failure should fail the test"
)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fieldforce_kafka::catalog::Catalog;
use fieldforce_runtime::config::{Config, GatewayToken};
use fieldforce_runtime::shutdown::{self, ShutdownTrigger};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{Offset, TopicPartitionList};

/// Token of the development principal (organisation `demo`, every project).
pub const DEV_TOKEN: &str = "fieldforce-dev-token";
/// A configured token that grants only project `census` of organisation `acme`.
pub const CENSUS_TOKEN: &str = "census-only-token";

/// A running gateway and what it writes to.
pub struct Gateway {
    pub base: String,
    pub config: Config,
    pub blob_dir: PathBuf,
    trigger: ShutdownTrigger,
    task: tokio::task::JoinHandle<()>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: String,
    pub value: serde_json::Value,
    pub headers: Vec<(String, String)>,
    pub timestamp_ms: Option<i64>,
}

/// Returns a configuration with its own topic prefix, database and blob folder.
pub fn test_config() -> Config {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut config = Config::default();
    config.kafka.topic_prefix = format!("test-gw-{id}.");
    config.mongodb.database = format!("test_gw_{id}");
    config.gateway.blob_dir = std::env::temp_dir()
        .join(format!("fieldforce-gw-{id}"))
        .display()
        .to_string();
    config.gateway.tokens.push(GatewayToken {
        sha256: fieldforce_gateway::auth::digest(CENSUS_TOKEN),
        org_id: "acme".into(),
        projects: vec!["census".into()],
        user: "census-app".into(),
    });
    config
}

impl Gateway {
    /// Creates the topics and starts a gateway on a free loopback port.
    pub async fn start(config: Config) -> Self {
        fieldforce_kafka::admin::apply(&config.kafka, &Catalog::embedded(), true)
            .await
            .expect("creating test topics failed: is the local stack up (make up)?");
        Self::start_without_topics(config).await
    }

    /// Starts a gateway without creating topics, for a configuration whose broker is down.
    pub async fn start_without_topics(config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (trigger, shutdown) = shutdown::channel();
        let run_config = config.clone();
        let task = tokio::spawn(async move {
            fieldforce_gateway::run(run_config, listener, shutdown)
                .await
                .unwrap();
        });
        let blob_dir = PathBuf::from(&config.gateway.blob_dir);
        let client = Client::builder(TokioExecutor::new()).build_http();
        Self {
            base,
            config,
            blob_dir,
            trigger,
            task,
            client,
        }
    }

    /// Stops the gateway and waits for it to drain.
    pub async fn stop(self) {
        self.trigger.trigger();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("gateway did not stop within 30 s")
            .unwrap();
    }

    /// Sends a request.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: impl Into<Bytes>,
    ) -> Answer {
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request.body(Full::new(body.into())).unwrap();
        let response = self.client.request(request).await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// Posts an OpenRosa multipart submission with HTTP Basic credentials.
    pub async fn post_openrosa(
        &self,
        path: &str,
        token: Option<&str>,
        xml: &str,
        files: &[(&str, &[u8])],
    ) -> Answer {
        let (content_type, body) = multipart(xml, files);
        let mut headers = vec![
            ("content-type", content_type),
            ("x-openrosa-version", "1.0".to_owned()),
        ];
        if let Some(token) = token {
            headers.push(("authorization", basic("enumerator", token)));
        }
        self.send("POST", path, &headers, body).await
    }

    /// Posts JSON with a Bearer token.
    pub async fn post_json(&self, path: &str, token: &str, value: &serde_json::Value) -> Answer {
        let headers = [
            ("content-type", "application/json".to_owned()),
            ("authorization", format!("Bearer {token}")),
        ];
        self.send("POST", path, &headers, value.to_string()).await
    }

    /// Returns the full name of a catalog topic.
    pub fn topic(&self, name: &str) -> String {
        self.config.kafka.topic(name)
    }
}

/// Returns an HTTP Basic header value.
pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// Builds an OpenRosa multipart body: the XML part, then one part per file named after it,
/// with UTF-8 names written raw as OkHttp (ODK Collect's client) writes them.
pub fn multipart(xml: &str, files: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = format!("----fieldforce{}", uuid::Uuid::new_v4().simple());
    let mut body = Vec::new();
    body.extend_from_slice(format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"xml_submission_file\"; filename=\"submission.xml\"\r\nContent-Type: text/xml\r\n\r\n"
    ).as_bytes());
    body.extend_from_slice(xml.as_bytes());
    body.extend_from_slice(b"\r\n");
    for (name, content) in files {
        body.extend_from_slice(format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        ).as_bytes());
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Reads a fixture, replacing `INSTANCE` and `EDIT` with fresh ids so tests never collide.
pub fn fixture(name: &str, instance: &str, edit: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap()
        .replace("INSTANCE", instance)
        .replace("EDIT", edit)
}

/// Returns a fresh id.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Reads every record of a topic: waits until `expected` arrived (or 15 s passed), then
/// keeps reading for `quiet` more so that unexpected extra records are seen too.
pub async fn read_records(
    config: &Config,
    topic: &str,
    expected: usize,
    quiet: Duration,
) -> Vec<Record> {
    let kafka = config.kafka.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = fieldforce_kafka::client::consumer_config(
            &kafka,
            &format!("test-reader-{}", uuid::Uuid::new_v4()),
        )
        .create()
        .unwrap();
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        for partition in metadata.topics()[0].partitions() {
            assignment
                .add_partition_offset(&topic, partition.id(), Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&assignment).unwrap();

        let mut records = Vec::new();
        let started = Instant::now();
        let mut complete_at: Option<Instant> = None;
        loop {
            if let Some(at) = complete_at
                && at.elapsed() >= quiet
            {
                break;
            }
            if complete_at.is_none() && started.elapsed() > Duration::from_secs(15) {
                break;
            }
            if let Some(message) = consumer.poll(Duration::from_millis(200)) {
                let message = message.unwrap();
                let headers = message
                    .headers()
                    .map(|headers| {
                        headers
                            .iter()
                            .map(|header| {
                                (
                                    header.key.to_owned(),
                                    String::from_utf8_lossy(header.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                records.push(Record {
                    key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                    value: serde_json::from_slice(message.payload().unwrap_or_default()).unwrap(),
                    headers,
                    timestamp_ms: message.timestamp().to_millis(),
                });
            }
            if complete_at.is_none() && records.len() >= expected {
                complete_at = Some(Instant::now());
            }
        }
        records
    })
    .await
    .unwrap()
}
