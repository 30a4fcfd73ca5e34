//! The gateway's Prometheus metrics, declared once. Labels take values only from the fixed
//! lists below, never from ids, users or devices.

use std::time::Duration;

use http::Method;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label of request counters: the endpoint (`openrosa`, `openrosa_head`, `json`,
/// `json_batch`, `forms`, `settings`, `health`, `metrics`, `unknown`) and the status class
/// (`2xx`, `4xx`, `5xx`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Endpoint name.
    pub endpoint: &'static str,
    /// Status class.
    pub status: &'static str,
}

/// Labels of the request duration histogram: the route (the endpoint names of
/// [`RequestLabels`]), the method (`GET`, `HEAD`, `POST`, `PUT`, or `OTHER`) and the status
/// class (`2xx`, `4xx`, `5xx`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    /// Endpoint name.
    pub route: &'static str,
    /// HTTP method, or `OTHER`.
    pub method: &'static str,
    /// Status class.
    pub status_class: &'static str,
}

/// Upper bounds of the request duration buckets, in seconds. 0.2 is a bound, so the 200 ms
/// latency objective reads straight from the histogram.
const REQUEST_DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Label of acceptance counters: the source (`openrosa`, `json`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// Submission source.
    pub source: &'static str,
}

/// Label of rejection counters: the reason code of [`crate::error::GatewayError::reason`].
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Rejection reason.
    pub reason: &'static str,
}

/// Label of the in-flight body gauge: the budget (`document`, `multipart`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// Body kind.
    pub kind: &'static str,
}

/// Every gateway metric.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<DurationLabels, Histogram>,
    accepted: Family<SourceLabels, Counter>,
    rejections: Family<ReasonLabels, Counter>,
    produce_latency: Histogram,
    in_flight_body_bytes: Family<KindLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "fieldforce_gateway_requests",
            "HTTP requests by endpoint and status class",
            requests.clone(),
        );
        let request_duration = Family::<DurationLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(REQUEST_DURATION_BUCKETS)
        });
        registry.register(
            "fieldforce_gateway_request_duration_seconds",
            "Time from reading a request's head to building its response",
            request_duration.clone(),
        );
        let accepted = Family::<SourceLabels, Counter>::default();
        registry.register(
            "fieldforce_gateway_submissions_accepted",
            "Submissions made durable in Kafka, resends excluded",
            accepted.clone(),
        );
        let rejections = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "fieldforce_gateway_rejections",
            "Requests answered with an error, by reason",
            rejections.clone(),
        );
        // From 0.5 ms up to about 16 s, doubling.
        let produce_latency = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "fieldforce_gateway_produce_latency_seconds",
            "Time from producing a record to its delivery report",
            produce_latency.clone(),
        );
        let in_flight_body_bytes = Family::<KindLabels, Gauge>::default();
        registry.register(
            "fieldforce_gateway_in_flight_body_bytes",
            "Body bytes that submission requests hold against gateway.max_in_flight_document_bytes and gateway.max_in_flight_multipart_bytes, by budget",
            in_flight_body_bytes.clone(),
        );
        Self {
            registry,
            requests,
            request_duration,
            accepted,
            rejections,
            produce_latency,
            in_flight_body_bytes,
        }
    }

    /// Counts a finished request and records its duration.
    pub fn request(&self, endpoint: &'static str, method: &Method, status: u16, elapsed: Duration) {
        let status = match status {
            200..=299 => "2xx",
            300..=499 => "4xx",
            _ => "5xx",
        };
        self.requests
            .get_or_create(&RequestLabels { endpoint, status })
            .inc();
        let method = match *method {
            Method::GET => "GET",
            Method::HEAD => "HEAD",
            Method::POST => "POST",
            Method::PUT => "PUT",
            _ => "OTHER",
        };
        self.request_duration
            .get_or_create(&DurationLabels {
                route: endpoint,
                method,
                status_class: status,
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a submission made durable.
    pub fn accepted(&self, source: &'static str) {
        self.accepted.get_or_create(&SourceLabels { source }).inc();
    }

    /// Counts a rejection.
    pub fn rejected(&self, reason: &'static str) {
        self.rejections
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Records the time a record took to be acknowledged.
    pub fn produce_latency(&self, elapsed: Duration) {
        self.produce_latency.observe(elapsed.as_secs_f64());
    }

    /// Returns the gauge of body bytes that submission requests hold against the budget
    /// `kind` (`document` or `multipart`), for that budget to keep current.
    pub fn in_flight_body_bytes(&self, kind: &'static str) -> Gauge {
        self.in_flight_body_bytes
            .get_or_create(&KindLabels { kind })
            .clone()
    }

    /// Renders the text exposition format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
