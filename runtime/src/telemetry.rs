//! Structured logging and OpenTelemetry trace export, set up once per process.
//!
//! Logs go to standard output through the `fmt` layer, filtered by
//! [`TelemetryConfig::log_filter`]. When [`TelemetryConfig::otlp_endpoint`] is set, a second
//! layer turns `tracing` spans into OpenTelemetry spans and a batch exporter posts them over
//! OTLP/HTTP from its own thread. That layer has a filter of its own. It takes the spans of
//! FieldForce crates from DEBUG up, and events from INFO up, which become events of the span
//! they happen in. The per-request and per-record spans are DEBUG, so the log filter drops
//! them while export is off. `kafka/benches/trace_context.rs` measures what a record's span
//! costs either way.
//!
//! Every span that stands for a service's work carries a `fieldforce.service` attribute
//! (`gateway`, `validate`, `geo`, `quality`, `sink`), because services that share a process
//! (as in the end-to-end tests) also share one `service.name`.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, TelemetryConfig};

/// Prefix of the `tracing` targets (module paths) of FieldForce crates.
const TARGET_PREFIX: &str = "fieldforce";

/// The trace exporter could not be built; the service stops.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter rejected its settings.
    #[error("building the OTLP trace exporter for {url} failed: {source}")]
    Exporter {
        /// The URL spans would be posted to.
        url: String,
        /// The exporter's reason.
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// The process's telemetry. Call [`Telemetry::shutdown`] before the process exits, so that
/// the spans still queued are exported.
#[derive(Debug)]
#[must_use = "dropping it without shutdown may lose queued spans"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Installs the global subscriber: the log layer, and the trace export layer when an OTLP
/// endpoint is configured. `binary` names the service when `service_name` is empty.
/// `RUST_LOG` overrides the configured log filter. Calling it again (as tests that start
/// several services in one process do) keeps the first subscriber.
pub fn init(config: &TelemetryConfig, binary: &str) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let log_layer = match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer().boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .boxed(),
    };
    let provider = tracer_provider(config, binary)?;
    let trace_layer = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("fieldforce"))
            .with_filter(filter_fn(|metadata| {
                if metadata.is_span() {
                    metadata.target().starts_with(TARGET_PREFIX)
                        && *metadata.level() <= Level::DEBUG
                } else {
                    *metadata.level() <= Level::INFO
                }
            }))
    });

    let installed = tracing_subscriber::registry()
        .with(log_layer.with_filter(filter))
        .with(trace_layer)
        .try_init();
    if installed.is_err() {
        // The first subscriber stays, so this provider would never receive a span.
        if let Some(provider) = provider {
            let _ = provider.shutdown();
        }
        return Ok(Telemetry { provider: None });
    }
    if let Some(url) = config.otlp_traces_url() {
        tracing::info!(
            url,
            sample_ratio = config.trace_sample_ratio,
            "trace export on"
        );
    }
    Ok(Telemetry { provider })
}

fn tracer_provider(
    config: &TelemetryConfig,
    binary: &str,
) -> Result<Option<SdkTracerProvider>, TelemetryError> {
    let Some(url) = config.otlp_traces_url() else {
        return Ok(None);
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(&url)
        .build()
        .map_err(|source| TelemetryError::Exporter {
            url: url.clone(),
            source,
        })?;
    let service_name = if config.service_name.is_empty() {
        binary.to_owned()
    } else {
        config.service_name.clone()
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        // A record or request with a parent follows the parent's decision, so a submission
        // is traced in every service or in none.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.trace_sample_ratio,
        ))))
        .with_resource(Resource::builder().with_service_name(service_name).build())
        .build();
    Ok(Some(provider))
}

impl Telemetry {
    /// Returns whether spans are exported.
    pub fn is_exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still queued and stops the exporter. The export blocks on HTTP, so
    /// it runs off the async workers.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        let result = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        match result {
            Ok(Ok(())) => tracing::debug!("trace exporter flushed"),
            Ok(Err(error)) => {
                tracing::warn!(%error, "trace exporter shutdown failed, queued spans may be lost")
            }
            Err(error) => tracing::warn!(%error, "trace exporter shutdown task failed"),
        }
    }
}
