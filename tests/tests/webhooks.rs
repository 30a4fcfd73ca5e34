//! Webhooks against the real stack: the sink stores processed submissions and announces them,
//! the dispatcher delivers them to loopback receivers started here, and the gateway manages
//! the subscriptions. Needs the local stack (`make up`); fails when Kafka or MongoDB is missing.

#![allow(clippy::unwrap_used, reason = "a test reports a failure by panicking")]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fieldforce_kafka::catalog::{
    Catalog, SUBMISSIONS_PROCESSED, WEBHOOKS_DEADLETTER, WEBHOOKS_SUBSCRIPTIONS,
};
use fieldforce_kafka::client::{base_config, producer_config};
use fieldforce_kafka::compacted::read_to_end;
use fieldforce_kafka::dead_letter::header_str;
use fieldforce_processors::webhooks::delivery::verify_signature;
use fieldforce_runtime::config::Config;
use fieldforce_runtime::shutdown::{self, ShutdownTrigger};
use fieldforce_schemas::codec::{Contract, decode, encode};
use fieldforce_schemas::headers;
use fieldforce_schemas::submission::{
    ProcessedSubmission, ProcessingStatus, Quality, QualityFlag, RawSubmission,
};
use fieldforce_schemas::webhook::{
    WEBHOOK_SUBSCRIPTION_VERSION, WebhookDelivery, WebhookEvent, WebhookSubscription,
};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::task::JoinHandle;

const ORG: &str = "demo";
const PROJECT: &str = "demo";
const DEV_TOKEN: &str = "fieldforce-dev-token";
const WAIT: Duration = Duration::from_secs(90);

/// Orders requests across every receiver of the test process.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Received {
    sequence: u64,
    delivery_id: String,
    event: String,
    signature: String,
    body: String,
}

/// The way a receiver responds.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    Healthy,
    FailFirst(usize),
    AlwaysFail,
}

/// A loopback HTTP server, or HTTPS when started with a TLS acceptor, that records every
/// request.
struct Receiver {
    address: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
    scheme: &'static str,
}

impl Receiver {
    async fn start(behaviour: Behaviour) -> Self {
        Self::start_with(behaviour, None).await
    }

    /// Starts an HTTPS receiver that presents the acceptor's certificate.
    async fn start_tls(behaviour: Behaviour, acceptor: tokio_rustls::TlsAcceptor) -> Self {
        Self::start_with(behaviour, Some(acceptor)).await
    }

    async fn start_with(behaviour: Behaviour, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let count = Arc::new(AtomicUsize::new(0));
        let log = Arc::clone(&received);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let log = Arc::clone(&log);
                let count = Arc::clone(&count);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request: http::Request<hyper::body::Incoming>| {
                            let log = Arc::clone(&log);
                            let count = Arc::clone(&count);
                            async move {
                                let header = |name: &str| {
                                    request
                                        .headers()
                                        .get(name)
                                        .and_then(|value| value.to_str().ok())
                                        .unwrap_or_default()
                                        .to_owned()
                                };
                                let delivery_id = header("x-fieldforce-delivery");
                                let event = header("x-fieldforce-event");
                                let signature = header("x-fieldforce-signature");
                                let body = request.into_body().collect().await.unwrap().to_bytes();
                                log.lock().unwrap().push(Received {
                                    sequence: SEQUENCE.fetch_add(1, Ordering::SeqCst),
                                    delivery_id,
                                    event,
                                    signature,
                                    body: String::from_utf8(body.to_vec()).unwrap(),
                                });
                                let seen = count.fetch_add(1, Ordering::SeqCst);
                                let (status, text) = match behaviour {
                                    Behaviour::Healthy => (200, "ok"),
                                    Behaviour::FailFirst(failures) if seen < failures => {
                                        (500, "not yet")
                                    }
                                    Behaviour::FailFirst(_) => (200, "ok"),
                                    Behaviour::AlwaysFail => (503, "maintenance window"),
                                };
                                let mut response =
                                    http::Response::new(Full::new(Bytes::from(text)));
                                *response.status_mut() =
                                    http::StatusCode::from_u16(status).unwrap();
                                Ok::<_, std::convert::Infallible>(response)
                            }
                        });
                    let Some(acceptor) = tls else {
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                        return;
                    };
                    // A client that rejects the certificate ends the handshake here, so the
                    // request log stays empty.
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                });
            }
        });
        Self {
            address,
            received,
            task,
            scheme,
        }
    }

    fn url(&self) -> String {
        format!("{}://{}/hooks", self.scheme, self.address)
    }

    fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until the receiver got at least `count` requests.
    async fn wait_for(&self, count: usize) -> Vec<Received> {
        let deadline = Instant::now() + WAIT;
        loop {
            let requests = self.requests();
            if requests.len() >= count {
                return requests;
            }
            assert!(
                Instant::now() < deadline,
                "receiver {} got {} of {count} requests",
                self.address,
                requests.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Returns a loopback address where nothing listens.
async fn closed_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// The sink and the dispatcher of one test, on topics and a database of their own.
struct Stack {
    config: Config,
    producer: FutureProducer,
    trigger: ShutdownTrigger,
    shutdown: shutdown::Shutdown,
    tasks: Vec<JoinHandle<()>>,
}

impl Stack {
    /// Creates the topics and starts the sink. `allowed` are the loopback endpoints the
    /// dispatcher may reach.
    async fn start(allowed: &[SocketAddr]) -> Self {
        Self::start_with(allowed, |_| {}).await
    }

    /// Like [`Stack::start`], with `adjust` applied to the test configuration last.
    async fn start_with(allowed: &[SocketAddr], adjust: impl FnOnce(&mut Config)) -> Self {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let mut config = Config::default();
        config.kafka.topic_prefix = format!("test-webhooks-{suffix}.");
        config.processors.group_id_prefix = config.kafka.topic_prefix.clone();
        config.processors.catch_up_timeout_ms = 15_000;
        config.mongodb.database = format!("test_webhooks_{suffix}");
        config.sink.batch_linger_ms = 20;
        config.telemetry.log_filter = "warn".to_owned();
        config.webhooks.allow_list = allowed.iter().map(ToString::to_string).collect();
        config.webhooks.default_timeout_ms = 5_000;
        config.webhooks.max_attempts = 4;
        config.webhooks.retry_initial_backoff_ms = 1_000;
        config.webhooks.retry_backoff_multiplier = 2;
        config.webhooks.retry_max_backoff_ms = 4_000;
        adjust(&mut config);
        config.validate().unwrap();
        // Export is off in these tests, so there is nothing to flush at the end.
        let _telemetry = fieldforce_runtime::telemetry::init(&config.telemetry, "webhook-tests")
            .expect("telemetry without export starts");
        fieldforce_kafka::admin::apply(&config.kafka, &Catalog::embedded(), true)
            .await
            .expect("Kafka answers on 127.0.0.1:9092; run `make up` if it does not");

        let (trigger, shutdown) = shutdown::channel();
        let sink = fieldforce_sink_mongodb::run(config.clone(), shutdown.clone());
        let tasks = vec![tokio::spawn(async move { sink.await.expect("sink runs") })];
        let producer = producer_config(&config.kafka).create().unwrap();
        Self {
            config,
            producer,
            trigger,
            shutdown,
            tasks,
        }
    }

    /// Starts the dispatcher; it reads the subscriptions written so far before it consumes.
    fn start_dispatcher(&mut self) {
        let dispatcher =
            fieldforce_processors::webhooks::run(self.config.clone(), self.shutdown.clone());
        self.tasks.push(tokio::spawn(async move {
            dispatcher.await.expect("dispatcher runs")
        }));
    }

    async fn subscribe(&self, id: &str, url: &str, secret: &str, events: &[WebhookEvent]) {
        let subscription = WebhookSubscription {
            schema_version: WEBHOOK_SUBSCRIPTION_VERSION,
            org_id: ORG.into(),
            project_id: PROJECT.into(),
            id: id.into(),
            url: url.into(),
            secret: secret.into(),
            events: events.to_vec(),
            timeout_ms: None,
            max_concurrency: Some(2),
            updated_at_ms: 0,
        };
        self.send(
            WEBHOOKS_SUBSCRIPTIONS,
            &subscription.topic_key(),
            &encode(&subscription),
            &WebhookSubscription::schema_header(),
        )
        .await;
    }

    async fn submit(&self, processed: &ProcessedSubmission) {
        self.send(
            SUBMISSIONS_PROCESSED,
            &processed.submission.submission_id,
            &encode(processed),
            &ProcessedSubmission::schema_header(),
        )
        .await;
    }

    async fn send(&self, catalog_name: &str, key: &str, value: &[u8], schema: &str) {
        let record_headers = OwnedHeaders::new()
            .insert(Header {
                key: headers::CONTENT_TYPE,
                value: Some("application/json"),
            })
            .insert(Header {
                key: headers::SCHEMA,
                value: Some(schema),
            });
        let topic = self.config.kafka.topic(catalog_name);
        self.producer
            .send(
                FutureRecord::to(&topic)
                    .key(key)
                    .payload(value)
                    .headers(record_headers),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(error, _)| error)
            .unwrap();
    }

    /// Reads the webhook dead-letter topic until `count` records arrived.
    async fn dead_letters(&self, count: usize) -> Vec<OwnedMessage> {
        read_records(&self.config, WEBHOOKS_DEADLETTER, count).await
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

/// Reads a topic from the beginning until `count` records arrived.
async fn read_records(config: &Config, catalog_name: &str, count: usize) -> Vec<OwnedMessage> {
    let topic = config.kafka.topic(catalog_name);
    let consumer: StreamConsumer = base_config(&config.kafka)
        .set(
            "group.id",
            format!("test-reader-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut records = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while records.len() < count {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(message)) => records.push(message.detach()),
            Ok(Err(error)) => panic!("reading {topic} failed: {error}"),
            Err(_) => panic!("{} of {count} records arrived on {topic}", records.len()),
        }
    }
    records
}

/// Builds a processed submission; `flags` are the quality checks that fired.
fn processed(id: &str, status: ProcessingStatus, flags: &[&str]) -> ProcessedSubmission {
    let mut raw: RawSubmission =
        serde_json::from_str(include_str!("../../schemas/examples/raw-submission.json")).unwrap();
    raw.submission_id = format!("uuid:{id}");
    raw.instance_id = Some(format!("uuid:{id}"));
    raw.org_id = ORG.into();
    raw.project_id = PROJECT.into();
    let mut processed = ProcessedSubmission::from_raw(raw);
    processed.processing_status = Some(status);
    processed.quality = Some(Quality {
        score: 100 - 10 * flags.len() as u8,
        flags: flags
            .iter()
            .map(|check| QualityFlag {
                check: (*check).to_owned(),
                penalty: 10,
                reason: "fired in a test".to_owned(),
            })
            .collect(),
    });
    processed
}

fn body_json(received: &Received) -> serde_json::Value {
    serde_json::from_str(&received.body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_get_every_signed_event() {
    let everything = Receiver::start(Behaviour::Healthy).await;
    let flags_only = Receiver::start(Behaviour::Healthy).await;
    let mut stack = Stack::start(&[everything.address, flags_only.address]).await;
    stack
        .subscribe(
            "all",
            &everything.url(),
            "secret-of-all-events",
            &WebhookEvent::ALL,
        )
        .await;
    stack
        .subscribe(
            "flags",
            &flags_only.url(),
            "secret-of-flags-only",
            &[WebhookEvent::SubmissionFlagged],
        )
        .await;
    stack.start_dispatcher();

    stack
        .submit(&processed("clean", ProcessingStatus::Processed, &[]))
        .await;
    stack
        .submit(&processed(
            "rushed",
            ProcessingStatus::Processed,
            &["too_fast"],
        ))
        .await;
    stack
        .submit(&processed("invalid", ProcessingStatus::NeedsReview, &[]))
        .await;

    // Three stored events and two flagged ones.
    let all = everything.wait_for(5).await;
    let flagged = flags_only.wait_for(2).await;

    let mut seen = HashSet::new();
    for received in &all {
        assert!(
            verify_signature(
                "secret-of-all-events",
                received.body.as_bytes(),
                &received.signature
            ),
            "signature of {received:?}"
        );
        let body = body_json(received);
        assert_eq!(body["delivery_id"], received.delivery_id.as_str());
        assert_eq!(body["event"], received.event.as_str());
        assert_eq!(body["submission"]["org_id"], ORG);
        let submission = body["submission"]["submission_id"]
            .as_str()
            .unwrap()
            .to_owned();
        seen.insert((received.event.clone(), submission));
    }
    let expected: HashSet<(String, String)> = [
        ("submission.stored", "uuid:clean"),
        ("submission.stored", "uuid:rushed"),
        ("submission.stored", "uuid:invalid"),
        ("submission.flagged", "uuid:rushed"),
        ("submission.flagged", "uuid:invalid"),
    ]
    .into_iter()
    .map(|(event, id)| (event.to_owned(), id.to_owned()))
    .collect();
    assert_eq!(seen, expected);
    let ids: HashSet<&str> = all.iter().map(|r| r.delivery_id.as_str()).collect();
    assert_eq!(ids.len(), 5, "every delivery has its own id");

    for received in &flagged {
        assert_eq!(received.event, "submission.flagged");
        assert!(verify_signature(
            "secret-of-flags-only",
            received.body.as_bytes(),
            &received.signature
        ));
    }

    // A resend of a stored submission is announced again under the same delivery id.
    let first_clean = all
        .iter()
        .find(|r| body_json(r)["submission"]["submission_id"] == "uuid:clean")
        .unwrap()
        .delivery_id
        .clone();
    stack
        .submit(&processed("clean", ProcessingStatus::Processed, &[]))
        .await;
    let again = everything.wait_for(6).await;
    assert_eq!(again[5].delivery_id, first_clean);

    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovering_receiver_keeps_delivery_id() {
    let receiver = Receiver::start(Behaviour::FailFirst(3)).await;
    let mut stack = Stack::start(&[receiver.address]).await;
    stack
        .subscribe(
            "flaky",
            &receiver.url(),
            "secret-of-the-flaky-one",
            &[WebhookEvent::SubmissionStored],
        )
        .await;
    stack.start_dispatcher();
    stack
        .submit(&processed("retried", ProcessingStatus::Processed, &[]))
        .await;

    let requests = receiver.wait_for(4).await;
    let first = &requests[0];
    for attempt in &requests[1..] {
        assert_eq!(attempt.delivery_id, first.delivery_id);
        assert_eq!(attempt.body, first.body, "the body is sent unchanged");
        assert_eq!(attempt.signature, first.signature);
    }
    assert!(verify_signature(
        "secret-of-the-flaky-one",
        first.body.as_bytes(),
        &first.signature
    ));

    let dead_letters = read_to_end(
        &stack.config.kafka,
        &stack.config.kafka.topic(WEBHOOKS_DEADLETTER),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert!(dead_letters.is_empty(), "{dead_letters:?}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_endpoints_dead_letter_without_delaying_healthy_one() {
    let healthy = Receiver::start(Behaviour::Healthy).await;
    let failing = Receiver::start(Behaviour::AlwaysFail).await;
    let not_allowed = Receiver::start(Behaviour::Healthy).await;
    let down = closed_port().await;
    let mut stack = Stack::start(&[healthy.address, failing.address, down]).await;
    let stored = [WebhookEvent::SubmissionStored];
    stack
        .subscribe(
            "healthy",
            &healthy.url(),
            "secret-healthy-endpoint",
            &stored,
        )
        .await;
    stack
        .subscribe(
            "failing",
            &failing.url(),
            "secret-failing-endpoint",
            &stored,
        )
        .await;
    stack
        .subscribe(
            "down",
            &format!("http://{down}/hooks"),
            "secret-down-endpoint",
            &stored,
        )
        .await;
    stack
        .subscribe(
            "private",
            &not_allowed.url(),
            "secret-private-endpoint",
            &stored,
        )
        .await;
    stack.start_dispatcher();
    let submissions = 5;
    for number in 0..submissions {
        stack
            .submit(&processed(
                &format!("load-{number}"),
                ProcessingStatus::Processed,
                &[],
            ))
            .await;
    }

    // Every failing delivery gets four attempts; the rejected ones none.
    let dead_letters = stack.dead_letters(3 * submissions).await;
    let healthy_requests = healthy.wait_for(submissions).await;
    let failing_requests = failing.wait_for(4 * submissions).await;
    assert_eq!(healthy_requests.len(), submissions);
    assert!(
        not_allowed.requests().is_empty(),
        "no request reaches an address outside the allow-list"
    );

    // The healthy endpoint had all its events before the failing one saw its first retry:
    // only the first five requests to the failing endpoint can be first attempts.
    let healthy_last = healthy_requests.iter().map(|r| r.sequence).max().unwrap();
    let mut failing_sequences: Vec<u64> = failing_requests.iter().map(|r| r.sequence).collect();
    failing_sequences.sort_unstable();
    assert!(
        healthy_last < failing_sequences[submissions],
        "healthy deliveries waited for the failing endpoint's retries"
    );

    let mut attempts_per_delivery: HashMap<String, usize> = HashMap::new();
    for request in &failing_requests {
        *attempts_per_delivery
            .entry(request.delivery_id.clone())
            .or_default() += 1;
    }
    assert_eq!(attempts_per_delivery.len(), submissions);
    assert!(attempts_per_delivery.values().all(|&count| count == 4));

    let mut by_subscription: HashMap<String, Vec<(WebhookDelivery, String)>> = HashMap::new();
    for record in &dead_letters {
        let delivery: WebhookDelivery = decode(record.payload().unwrap()).unwrap();
        let reason = header_str(record.headers().unwrap(), headers::DEAD_LETTER_REASON)
            .unwrap()
            .to_owned();
        by_subscription
            .entry(delivery.subscription_key.clone())
            .or_default()
            .push((delivery, reason));
    }

    let failing_letters = &by_subscription["demo/demo/failing"];
    assert_eq!(failing_letters.len(), submissions);
    for (delivery, reason) in failing_letters {
        assert_eq!(reason, "attempts_exhausted");
        assert_eq!(delivery.attempts, 4);
        let answer = delivery.last_response.as_ref().unwrap();
        assert_eq!(answer.status, Some(503));
        assert_eq!(answer.body_prefix, "maintenance window");
        assert!(attempts_per_delivery.contains_key(&delivery.delivery_id));
    }

    let down_letters = &by_subscription["demo/demo/down"];
    assert_eq!(down_letters.len(), submissions);
    for (delivery, reason) in down_letters {
        assert_eq!(reason, "attempts_exhausted");
        assert_eq!(delivery.attempts, 4);
        let answer = delivery.last_response.as_ref().unwrap();
        assert_eq!(answer.status, None);
        assert!(
            answer
                .error
                .contains(&format!("connecting to {down} failed")),
            "{answer:?}"
        );
    }

    let rejected_letters = &by_subscription["demo/demo/private"];
    assert_eq!(rejected_letters.len(), submissions);
    for (delivery, reason) in rejected_letters {
        assert_eq!(reason, "endpoint_rejected");
        assert_eq!(delivery.attempts, 1, "a rejected endpoint is never retried");
        let error = &delivery.last_response.as_ref().unwrap().error;
        assert!(
            error.contains("loopback address not in webhooks.allow_list"),
            "{error}"
        );
    }
    stack.stop().await;
}

/// A certificate authority made for one test.
struct TestCa {
    certificate: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        Self {
            certificate,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// Writes the CA certificate as PEM into `dir` and returns the file's path.
    fn write_pem(&self, dir: &std::path::Path) -> String {
        let path = dir.join("webhook-test-ca.pem");
        std::fs::write(&path, self.certificate.pem()).unwrap();
        path.display().to_string()
    }

    /// Returns a TLS acceptor whose server certificate this CA issued for 127.0.0.1.
    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        let private_key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certificate.der().clone()], private_key)
            .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_trusts_only_configured_ca() {
    let trusted_ca = TestCa::new("fieldforce webhook test CA");
    let unknown_ca = TestCa::new("fieldforce unknown test CA");
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_file = trusted_ca.write_pem(ca_dir.path());
    let trusted = Receiver::start_tls(Behaviour::Healthy, trusted_ca.acceptor()).await;
    let untrusted = Receiver::start_tls(Behaviour::Healthy, unknown_ca.acceptor()).await;
    let mut stack = Stack::start_with(&[trusted.address, untrusted.address], |config| {
        config.webhooks.extra_ca_certificate_files = vec![ca_file];
        config.webhooks.max_attempts = 2;
        config.webhooks.retry_initial_backoff_ms = 500;
    })
    .await;
    let stored = [WebhookEvent::SubmissionStored];
    stack
        .subscribe(
            "trusted",
            &trusted.url(),
            "secret-of-the-trusted-one",
            &stored,
        )
        .await;
    stack
        .subscribe(
            "untrusted",
            &untrusted.url(),
            "secret-of-the-untrusted-one",
            &stored,
        )
        .await;
    stack.start_dispatcher();
    stack
        .submit(&processed("over-tls", ProcessingStatus::Processed, &[]))
        .await;

    let requests = trusted.wait_for(1).await;
    let received = &requests[0];
    assert!(trusted.url().starts_with("https://"), "{}", trusted.url());
    assert!(
        verify_signature(
            "secret-of-the-trusted-one",
            received.body.as_bytes(),
            &received.signature
        ),
        "signature of {received:?}"
    );
    let body = body_json(received);
    assert_eq!(body["delivery_id"], received.delivery_id.as_str());
    assert_eq!(body["submission"]["submission_id"], "uuid:over-tls");

    let dead_letters = stack.dead_letters(1).await;
    let delivery: WebhookDelivery = decode(dead_letters[0].payload().unwrap()).unwrap();
    let reason = header_str(
        dead_letters[0].headers().unwrap(),
        headers::DEAD_LETTER_REASON,
    )
    .unwrap();
    assert_eq!(delivery.subscription_key, "demo/demo/untrusted");
    assert_eq!(reason, "attempts_exhausted");
    assert_eq!(delivery.attempts, 2);
    let answer = delivery.last_response.as_ref().unwrap();
    assert_eq!(answer.status, None, "{answer:?}");
    assert!(
        answer.error.contains("TLS handshake with 127.0.0.1 failed"),
        "{answer:?}"
    );
    assert!(
        answer.error.contains("invalid peer certificate"),
        "{answer:?}"
    );
    assert!(
        untrusted.requests().is_empty(),
        "no request is sent over a connection whose certificate was rejected"
    );
    assert_eq!(
        trusted.requests().len(),
        1,
        "the trusted receiver gets one delivery"
    );
    stack.stop().await;
}

/// A minimal client of the gateway's JSON API.
struct Api {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Api {
    async fn call(&self, method: http::Method, path: &str, body: &str) -> (u16, String) {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {DEV_TOKEN}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let response = self.client.request(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_manages_subscriptions() {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let blobs = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.kafka.topic_prefix = format!("test-webhooks-api-{suffix}.");
    config.mongodb.database = format!("test_webhooks_api_{suffix}");
    config.gateway.blob_dir = blobs.path().display().to_string();
    fieldforce_kafka::admin::apply(&config.kafka, &Catalog::embedded(), true)
        .await
        .expect("Kafka answers on 127.0.0.1:9092; run `make up` if it does not");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = Api {
        base: format!("http://{}", listener.local_addr().unwrap()),
        client: Client::builder(TokioExecutor::new()).build_http(),
    };
    let (trigger, shutdown) = shutdown::channel();
    let gateway = tokio::spawn(fieldforce_gateway::run(config.clone(), listener, shutdown));
    let path = "/v1/projects/census/webhooks";

    let (status, body) = api
        .call(
            http::Method::PUT,
            &format!("{path}/crm"),
            r#"{"url": "https://crm.example/hooks", "secret": "a-long-shared-secret",
                "events": ["submission.stored", "submission.flagged"], "timeout_ms": 3000}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("a-long-shared-secret"), "{body}");
    let created: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(created["id"], "crm");
    assert_eq!(created["timeout_ms"], 3000);

    let (status, body) = api.call(http::Method::GET, path, "").await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("secret"), "{body}");
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listed["webhooks"].as_array().unwrap().len(), 1);
    assert_eq!(listed["webhooks"][0]["url"], "https://crm.example/hooks");
    assert_eq!(
        listed["webhooks"][0]["events"],
        serde_json::json!(["submission.stored", "submission.flagged"])
    );

    let (status, body) = api
        .call(http::Method::GET, &format!("{path}/crm"), "")
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("secret"), "{body}");

    let (status, body) = api
        .call(
            http::Method::PUT,
            &format!("{path}/bad"),
            r#"{"url": "ftp://crm.example/hooks", "secret": "a-long-shared-secret",
                "events": ["submission.stored"]}"#,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("scheme \\\"ftp\\\" is not http or https"),
        "{body}"
    );

    let (status, body) = api
        .call(
            http::Method::PUT,
            &format!("{path}/bad"),
            r#"{"url": "http:///no-host", "secret": "a-long-shared-secret",
                "events": ["submission.stored"]}"#,
        )
        .await;
    assert_eq!(status, 422, "{body}");

    let (status, body) = api
        .call(http::Method::PUT, &format!("{path}/bad"), "{\"url\": 5}")
        .await;
    assert_eq!(status, 400, "{body}");

    let (status, body) = api
        .call(http::Method::DELETE, &format!("{path}/crm"), "")
        .await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = api.call(http::Method::GET, path, "").await;
    assert_eq!(status, 200);
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(listed["webhooks"].as_array().unwrap().is_empty(), "{body}");
    let (status, _) = api
        .call(http::Method::GET, &format!("{path}/crm"), "")
        .await;
    assert_eq!(status, 404);

    // The delete is a tombstone on the compacted topic, after the subscription record.
    let records = read_records(&config, WEBHOOKS_SUBSCRIPTIONS, 2).await;
    assert_eq!(records[0].key(), Some("demo/census/crm".as_bytes()));
    assert!(records[0].payload().is_some());
    assert_eq!(records[1].key(), Some("demo/census/crm".as_bytes()));
    assert!(records[1].payload().is_none(), "the delete is a tombstone");

    trigger.trigger();
    tokio::time::timeout(Duration::from_secs(30), gateway)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
