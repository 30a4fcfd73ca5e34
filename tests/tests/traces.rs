//! One submission's trace, received end to end. The test runs an OTLP/HTTP receiver on
//! loopback and points trace export at it. It starts the gateway, the three processors and
//! the sink in this process against the real local stack and posts one JSON submission. The
//! spans of every service must arrive in one trace, each the child of the one before. A
//! partner record produced straight to the raw topic, with no trace context, must start a
//! trace of its own at validation.
//!
//! All services share this process and so one `service.name`, so the test distinguishes them
//! by the `fieldforce.service` attribute that every service's spans carry (`gateway`,
//! `validate`, `geo`, `quality`, `sink`).
//!
//! Needs the local stack (`make test` provides it); fails when a server is missing.

#![allow(clippy::unwrap_used, reason = "a test reports a failure by panicking")]

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{PROJECT, Pipeline, read, repo_root, samples};
use fieldforce_kafka::catalog;
use fieldforce_kafka::client::producer_config;
use fieldforce_runtime::config::{Config, TelemetryConfig};
use fieldforce_runtime::telemetry;
use fieldforce_schemas::submission::RawSubmission;
use fieldforce_schemas::{codec, headers};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// The services of one submission's path, in the order its spans nest.
const SERVICES: [&str; 5] = ["gateway", "validate", "geo", "quality", "sink"];

/// What the test needs of one received span.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    attributes: HashMap<String, String>,
}

impl ReceivedSpan {
    fn service(&self) -> Option<&str> {
        self.attributes
            .get("fieldforce.service")
            .map(String::as_str)
    }
}

type Received = Arc<Mutex<Vec<ReceivedSpan>>>;

/// Serves `POST /v1/traces` on a loopback port, decoding every export request into `received`.
async fn start_receiver(received: Received) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let received = Arc::clone(&received);
            let service = service_fn(move |request| receive(Arc::clone(&received), request));
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    address
}

async fn receive(
    received: Received,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() != "/v1/traces" {
        return Ok(Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::new()))
            .unwrap());
    }
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let export = ExportTraceServiceRequest::decode(body).expect("the body is an OTLP export");
    let mut spans = Vec::new();
    for resource_spans in export.resource_spans {
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                let attributes = span
                    .attributes
                    .iter()
                    .map(|pair| (pair.key.clone(), attribute_text(pair)))
                    .collect();
                spans.push(ReceivedSpan {
                    trace_id: hex_string(&span.trace_id),
                    span_id: hex_string(&span.span_id),
                    parent_span_id: hex_string(&span.parent_span_id),
                    name: span.name,
                    attributes,
                });
            }
        }
    }
    received.lock().unwrap().extend(spans);
    let answer = ExportTraceServiceResponse::default().encode_to_vec();
    Ok(Response::builder()
        .header("content-type", "application/x-protobuf")
        .body(Full::new(Bytes::from(answer)))
        .unwrap())
}

fn attribute_text(pair: &opentelemetry_proto::tonic::common::v1::KeyValue) -> String {
    match pair.value.as_ref().and_then(|value| value.value.as_ref()) {
        Some(any_value::Value::StringValue(text)) => text.clone(),
        Some(any_value::Value::IntValue(number)) => number.to_string(),
        Some(any_value::Value::BoolValue(flag)) => flag.to_string(),
        Some(any_value::Value::DoubleValue(number)) => number.to_string(),
        _ => String::new(),
    }
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Waits for a trace whose root span belongs to `root_service` and that contains spans of
/// every one of `services`, the sink's write of a stored document among them, and returns it.
async fn wait_for_trace(
    received: &Received,
    root_service: &str,
    services: &[&str],
) -> Vec<ReceivedSpan> {
    // The batch exporter sends every few seconds, and the spans of the earlier services may
    // come in an export after the sink's, so the wait goes on until all of them are in.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let spans = received.lock().unwrap().clone();
        let roots = spans
            .iter()
            .filter(|span| span.parent_span_id.is_empty() && span.service() == Some(root_service));
        for root in roots {
            let trace: Vec<ReceivedSpan> = spans
                .iter()
                .filter(|span| span.trace_id == root.trace_id)
                .cloned()
                .collect();
            let stored = trace.iter().any(|span| {
                span.service() == Some("sink")
                    && span
                        .attributes
                        .get("fieldforce.outcome")
                        .map(String::as_str)
                        == Some("written")
            });
            let complete = services
                .iter()
                .all(|service| trace.iter().any(|span| span.service() == Some(service)));
            if stored && complete {
                return trace;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no complete trace rooted in {root_service} in 90 s; spans received: {:#?}",
            spans
                .iter()
                .map(|span| (
                    &span.name,
                    span.service(),
                    &span.trace_id,
                    &span.parent_span_id
                ))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Produces a raw submission straight to the raw topic as a partner system does, without
/// any trace context.
async fn produce_partner_record(config: &Config) {
    let text = std::fs::read(repo_root().join("schemas/examples/raw-submission.json")).unwrap();
    let mut raw: RawSubmission = serde_json::from_slice(&text).unwrap();
    raw.submission_id = "uuid:partner-untraced".to_owned();
    raw.instance_id = Some(raw.submission_id.clone());
    raw.project_id = PROJECT.to_owned();

    let producer: FutureProducer = producer_config(&config.kafka).create().unwrap();
    let topic = config.kafka.topic(catalog::SUBMISSIONS_RAW);
    let value = codec::encode(&raw);
    producer
        .send(
            FutureRecord::to(&topic)
                .key(&raw.submission_id)
                .payload(&value)
                .headers(OwnedHeaders::new().insert(Header {
                    key: headers::CONTENT_TYPE,
                    value: Some(codec::JSON_CONTENT_TYPE),
                })),
            Duration::from_secs(30),
        )
        .await
        .expect("the broker takes the partner record");
}

fn only<'a>(trace: &'a [ReceivedSpan], service: &str, name_prefix: &str) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = trace
        .iter()
        .filter(|span| span.service() == Some(service) && span.name.starts_with(name_prefix))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {service} span named {name_prefix}...: {trace:#?}"
    );
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn submission_trace_spans_every_service() {
    let received: Received = Arc::default();
    let receiver = start_receiver(Arc::clone(&received)).await;
    let telemetry_config = TelemetryConfig {
        log_filter: "warn".to_owned(),
        otlp_endpoint: format!("http://{receiver}"),
        ..TelemetryConfig::default()
    };
    let telemetry = telemetry::init(&telemetry_config, "fieldforce-e2e").unwrap();
    assert!(
        telemetry.is_exporting(),
        "this test binary installs the only subscriber"
    );

    let pipeline = Pipeline::start().await;
    let outcome = pipeline
        .client
        .post_json(
            &format!("/v1/projects/{PROJECT}/submissions"),
            read(&samples().join("visit-009.json")),
        )
        .await;
    assert_eq!(outcome.status, 201, "{}", outcome.body);
    pipeline.wait_for_documents(1).await;

    let trace = wait_for_trace(&received, "gateway", &SERVICES).await;
    let request = only(&trace, "gateway", "POST ");
    let send = only(&trace, "gateway", "send ");
    let validate = only(&trace, "validate", "process ");
    let geo = only(&trace, "geo", "process ");
    let quality = only(&trace, "quality", "process ");
    let sink = only(&trace, "sink", "write ");

    assert_eq!(request.parent_span_id, "", "the request starts the trace");
    assert_eq!(
        request
            .attributes
            .get("http.response.status_code")
            .map(String::as_str),
        Some("201")
    );
    assert_eq!(send.parent_span_id, request.span_id);
    assert!(
        send.name.ends_with("submissions.raw"),
        "the gateway sends to the raw topic: {}",
        send.name
    );
    assert_eq!(validate.parent_span_id, send.span_id);
    assert_eq!(geo.parent_span_id, validate.span_id);
    assert_eq!(quality.parent_span_id, geo.span_id);
    assert_eq!(sink.parent_span_id, quality.span_id);
    for span in [validate, geo, quality] {
        assert_eq!(
            span.attributes
                .get("fieldforce.outcome")
                .map(String::as_str),
            Some("produced"),
            "{span:#?}"
        );
    }

    // A partner record carries no trace context, so its trace starts at validation.
    produce_partner_record(&pipeline.config).await;
    pipeline.wait_for_documents(2).await;
    let partner = wait_for_trace(&received, "validate", &SERVICES[1..]).await;
    assert_ne!(partner[0].trace_id, request.trace_id);
    assert!(
        partner.iter().all(|span| span.service() != Some("gateway")),
        "{partner:#?}"
    );
    let validate = only(&partner, "validate", "process ");
    let geo = only(&partner, "geo", "process ");
    let quality = only(&partner, "quality", "process ");
    let sink = only(&partner, "sink", "write ");
    assert_eq!(
        validate.parent_span_id, "",
        "the partner record starts a trace"
    );
    assert_eq!(geo.parent_span_id, validate.span_id);
    assert_eq!(quality.parent_span_id, geo.span_id);
    assert_eq!(sink.parent_span_id, quality.span_id);

    pipeline.stop().await;
    telemetry.shutdown().await;
}
