//! Per-record cost of the trace context in record headers, as the processors pay it.
//!
//! Three cases over the same records, each carrying a `traceparent`:
//! - `copy only`: the headers copied through with no span, which is what a stage did before
//!   it had spans.
//! - `export off`: a DEBUG record span under a log subscriber that filters at INFO (the
//!   default), then `set_parent` and `propagate`, which copy the headers because the span is
//!   disabled.
//! - `export on`: the same under a subscriber with the OpenTelemetry layer and a batch
//!   exporter that drops every batch, so span creation, injection and the end of the span
//!   are counted but no network.
//!
//! Run: `cargo bench -p fieldforce-kafka --bench trace_context`

use std::time::{Duration, Instant};

use fieldforce_kafka::trace_context::{copy_trace_headers, propagate, set_parent};
use fieldforce_schemas::headers::TRACEPARENT;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use rdkafka::message::{Header, OwnedHeaders};
use tracing::{Level, Span};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Layer};

const RECORDS: usize = 200_000;
const ROUNDS: usize = 5;

/// An exporter that drops every batch.
#[derive(Debug)]
struct DroppingExporter;

impl SpanExporter for DroppingExporter {
    async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
        Ok(())
    }
}

fn input_headers() -> OwnedHeaders {
    OwnedHeaders::new()
        .insert(Header {
            key: "content-type",
            value: Some("application/json"),
        })
        .insert(Header {
            key: TRACEPARENT,
            value: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        })
}

fn output_headers() -> OwnedHeaders {
    OwnedHeaders::new()
        .insert(Header {
            key: "content-type",
            value: Some("application/json"),
        })
        .insert(Header {
            key: "fieldforce-schema",
            value: Some("processed-submission/1"),
        })
}

/// Creates a span with the fields of the processors' record span.
fn record_span(topic: &str, partition: i32, offset: i64) -> Span {
    tracing::debug_span!(
        parent: None,
        "process record",
        otel.name = %format_args!("process {topic}"),
        otel.kind = "consumer",
        fieldforce.service = "validate",
        fieldforce.stage = "validation",
        fieldforce.outcome = tracing::field::Empty,
        messaging.system = "kafka",
        messaging.destination.name = topic,
        messaging.destination.partition.id = partition,
        messaging.kafka.offset = offset,
    )
}

/// Returns the median over `ROUNDS` of the time per record of `work`.
fn per_record(inputs: &[OwnedHeaders], work: impl Fn(usize, &OwnedHeaders) -> usize) -> Duration {
    let mut rounds: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let started = Instant::now();
            let mut header_count = 0;
            for (index, input) in inputs.iter().enumerate() {
                header_count += work(index, input);
            }
            std::hint::black_box(header_count);
            started.elapsed() / inputs.len() as u32
        })
        .collect();
    rounds.sort();
    rounds[ROUNDS / 2]
}

fn with_span(index: usize, input: &OwnedHeaders) -> usize {
    let span = record_span("fieldforce.submissions.raw", 0, index as i64);
    set_parent(&span, Some(input));
    let output = propagate(&span, Some(input), output_headers());
    span.record("fieldforce.outcome", "produced");
    rdkafka::message::Headers::count(&output)
}

fn main() {
    let inputs: Vec<OwnedHeaders> = (0..RECORDS).map(|_| input_headers()).collect();

    let copy_only = per_record(&inputs, |_, input| {
        let output = copy_trace_headers(Some(input), output_headers());
        rdkafka::message::Headers::count(&output)
    });
    println!("copy only   {:>8.0} ns per record", copy_only.as_nanos());

    // Built before the export-on subscriber exists, so the span's callsite is disabled once
    // for all, as in a service with a single subscriber.
    let logs_only = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::sink)
            .with_filter(EnvFilter::new("info")),
    );
    let export_off =
        tracing::subscriber::with_default(logs_only, || per_record(&inputs, with_span));
    println!("export off  {:>8.0} ns per record", export_off.as_nanos());

    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(DroppingExporter)
        .build();
    let exporting = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::sink)
                .with_filter(EnvFilter::new("info")),
        )
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("bench"))
                .with_filter(tracing_subscriber::filter::filter_fn(|metadata| {
                    if metadata.is_span() {
                        *metadata.level() <= Level::DEBUG
                    } else {
                        *metadata.level() <= Level::INFO
                    }
                })),
        );
    let export_on = tracing::subscriber::with_default(exporting, || per_record(&inputs, with_span));
    println!("export on   {:>8.0} ns per record", export_on.as_nanos());
    let _ = provider.shutdown();
}
