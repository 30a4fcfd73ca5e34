//! W3C trace context (`traceparent`, `tracestate`) in Kafka record headers, so that the spans
//! of one submission share a trace from the gateway request to the sink's write.
//!
//! A stage reads the context of each input record into the parent of that record's span and
//! writes the span's own context into the output record. When a span records nothing (trace
//! export is off in that service), the input's trace headers are copied through unchanged,
//! so a service without export does not cut the trace of the services around it.

use fieldforce_schemas::headers::{TRACEPARENT, TRACESTATE};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::dead_letter::header_str;

/// Reads trace headers for the propagator.
struct HeaderExtractor<'a, H>(&'a H);

impl<H: Headers> Extractor for HeaderExtractor<'_, H> {
    fn get(&self, key: &str) -> Option<&str> {
        header_str(self.0, key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|header| header.key).collect()
    }
}

/// Collects the header values the propagator writes.
#[derive(Default)]
struct HeaderInjector(Vec<(String, String)>);

impl Injector for HeaderInjector {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}

/// Makes the trace context in `headers` the parent of `span`, which must not have been
/// entered yet. A record without a valid `traceparent` leaves the span where it was created,
/// so a span created with `parent: None` starts a new trace.
pub fn set_parent<H: Headers>(span: &Span, headers: Option<&H>) {
    if span.is_disabled() {
        return;
    }
    let Some(headers) = headers else {
        return;
    };
    let context = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if !context.span().span_context().is_valid() {
        return;
    }
    // The only failures are a span already started or a subscriber without the
    // OpenTelemetry layer, and both leave the span where it was created.
    let _ = span.set_parent(context);
}

/// Adds the trace context of `span` to `headers`. Returns the headers unchanged as `Err` when
/// the span carries no valid context (trace export is off).
pub fn inject(span: &Span, headers: OwnedHeaders) -> Result<OwnedHeaders, OwnedHeaders> {
    if span.is_disabled() {
        return Err(headers);
    }
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return Err(headers);
    }
    let mut injector = HeaderInjector::default();
    TraceContextPropagator::new().inject_context(&context, &mut injector);
    let mut headers = headers;
    for (key, value) in &injector.0 {
        headers = headers.insert(Header {
            key: key.as_str(),
            value: Some(value.as_str()),
        });
    }
    Ok(headers)
}

/// Adds the trace context of `span` to `headers`, or, when the span carries none, copies
/// the trace headers of the input record so that the trace continues downstream.
pub fn propagate<H: Headers>(
    span: &Span,
    input: Option<&H>,
    headers: OwnedHeaders,
) -> OwnedHeaders {
    match inject(span, headers) {
        Ok(headers) => headers,
        Err(headers) => copy_trace_headers(input, headers),
    }
}

/// Copies `traceparent` and `tracestate` from `input` into `headers`.
pub fn copy_trace_headers<H: Headers>(
    input: Option<&H>,
    mut headers: OwnedHeaders,
) -> OwnedHeaders {
    let Some(input) = input else {
        return headers;
    };
    for name in [TRACEPARENT, TRACESTATE] {
        if let Some(found) = input.iter().find(|header| header.key == name) {
            headers = headers.insert(Header {
                key: name,
                value: found.value,
            });
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn disabled_span_copies_input_context() {
        let input = OwnedHeaders::new()
            .insert(Header {
                key: TRACEPARENT,
                value: Some(PARENT),
            })
            .insert(Header {
                key: TRACESTATE,
                value: Some("vendor=1"),
            })
            .insert(Header {
                key: "content-type",
                value: Some("application/json"),
            });
        // No subscriber is installed in this test, so every span is disabled.
        let span = tracing::info_span!("record");
        let output = propagate(&span, Some(&input), OwnedHeaders::new());
        assert_eq!(header_str(&output, TRACEPARENT), Some(PARENT));
        assert_eq!(header_str(&output, TRACESTATE), Some("vendor=1"));
        assert_eq!(header_str(&output, "content-type"), None);
    }

    #[test]
    fn extractor_reads_traceparent() {
        let input = OwnedHeaders::new().insert(Header {
            key: TRACEPARENT,
            value: Some(PARENT),
        });
        let context = TraceContextPropagator::new().extract(&HeaderExtractor(&input));
        let span_context = context.span().span_context().clone();
        assert!(span_context.is_valid());
        assert_eq!(
            span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(span_context.is_sampled());
    }
}
