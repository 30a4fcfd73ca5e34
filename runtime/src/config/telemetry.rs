use serde::{Deserialize, Serialize};

/// Logging and trace export settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Log filter in `tracing_subscriber::EnvFilter` syntax. `RUST_LOG` overrides it when set.
    /// Default `info`.
    pub log_filter: String,
    /// Log line format: `text` for people, `json` for log collectors. Default `text`.
    pub log_format: LogFormat,
    /// Base URL of an OpenTelemetry collector's OTLP/HTTP receiver, such as
    /// `http://otel-collector:4318`; spans are posted as protobuf to `<url>/v1/traces`. Plain
    /// `http` only, because no TLS stack is built in. Empty turns trace export off, which is
    /// the default.
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans. Empty uses the binary's own name, such as
    /// `fieldforce-gateway`. Default empty.
    pub service_name: String,
    /// Share of new traces that are sampled, from 0.0 to 1.0. A record or request that
    /// carries a trace context follows its parent's decision instead, so a submission is
    /// traced in every service or in none. Default 1.0.
    pub trace_sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_filter: "info".to_owned(),
            log_format: LogFormat::Text,
            otlp_endpoint: String::new(),
            service_name: String::new(),
            trace_sample_ratio: 1.0,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines with fields as `key=value`.
    Text,
    /// One JSON object per line.
    Json,
}

impl TelemetryConfig {
    /// The URL spans are posted to, or `None` when export is off.
    pub fn otlp_traces_url(&self) -> Option<String> {
        if self.otlp_endpoint.is_empty() {
            return None;
        }
        Some(format!(
            "{}/v1/traces",
            self.otlp_endpoint.trim_end_matches('/')
        ))
    }

    pub(super) fn validate(&self, problems: &mut Vec<String>) {
        if !self.otlp_endpoint.is_empty() && !self.otlp_endpoint.starts_with("http://") {
            problems.push(format!(
                "telemetry.otlp_endpoint {:?} must be an http:// URL (no TLS is built in) or empty",
                self.otlp_endpoint
            ));
        }
        if !(0.0..=1.0).contains(&self.trace_sample_ratio) {
            problems.push(format!(
                "telemetry.trace_sample_ratio {} must be between 0.0 and 1.0",
                self.trace_sample_ratio
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_url_appends_signal_path() {
        let config = TelemetryConfig {
            otlp_endpoint: "http://collector:4318/".to_owned(),
            ..TelemetryConfig::default()
        };
        assert_eq!(
            config.otlp_traces_url().as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(TelemetryConfig::default().otlp_traces_url(), None);
    }

    #[test]
    fn invalid_export_settings_rejected() {
        let config = TelemetryConfig {
            otlp_endpoint: "https://collector:4318".to_owned(),
            trace_sample_ratio: 1.5,
            ..TelemetryConfig::default()
        };
        let mut problems = Vec::new();
        config.validate(&mut problems);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("otlp_endpoint"), "{problems:?}");
        assert!(problems[1].contains("trace_sample_ratio"), "{problems:?}");
    }
}
