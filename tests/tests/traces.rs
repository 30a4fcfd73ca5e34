//! One submission's trace, received end to end. The test runs an OTLP/HTTP receiver on
//! loopback and points trace export at it. It starts the gateway, the three processors and
//! the sink in this process against the real local stack and posts one JSON submission. The
//! spans of every service must arrive in one trace, each the child of the one before.
//!
//! All services share this process and so one `service.name`; the test tells them apart by
//! the `fieldforce.service` attribute that every service's spans carry (`gateway`,
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
use common::{PROJECT, Pipeline, read, samples};
use fieldforce_runtime::config::TelemetryConfig;
use fieldforce_runtime::telemetry;
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

/// Waits until the sink's span of a stored document arrived, then returns every span of its
/// trace received by then.
async fn trace_of_stored_submission(received: &Received) -> Vec<ReceivedSpan> {
    // The batch exporter sends every few seconds, and the spans of the earlier services may
    // come in an export after the sink's, so the wait goes on until all five are in.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let spans = received.lock().unwrap().clone();
        let sink = spans.iter().find(|span| {
            span.service() == Some("sink")
                && span
                    .attributes
                    .get("fieldforce.outcome")
                    .map(String::as_str)
                    == Some("written")
        });
        if let Some(sink) = sink {
            let trace: Vec<ReceivedSpan> = spans
                .iter()
                .filter(|span| span.trace_id == sink.trace_id)
                .cloned()
                .collect();
            let complete = SERVICES
                .iter()
                .all(|service| trace.iter().any(|span| span.service() == Some(service)));
            if complete {
                return trace;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no complete trace in 90 s; spans received: {:#?}",
            spans
                .iter()
                .map(|span| (&span.name, span.service(), &span.trace_id))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
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

    let trace = trace_of_stored_submission(&received).await;
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

    pipeline.stop().await;
    telemetry.shutdown().await;
}
