//! One configuration layer for every FieldForce service.
//!
//! Precedence, lowest first: the defaults written on each field, then a TOML file, then
//! environment variables. The file is the one named by `--config` or by `FIELDFORCE_CONFIG`;
//! without either, no file is read. An environment variable names a field by its section and
//! key joined with a double underscore, after the `FIELDFORCE_` prefix:
//! `FIELDFORCE_KAFKA__BOOTSTRAP_SERVERS` sets `[kafka] bootstrap_servers`. Only variables with
//! a double underscore are read, so other `FIELDFORCE_*` variables (used by scripts) never
//! collide with configuration keys. Unknown keys are rejected in the file and in the
//! environment alike.
//!
//! Every service reads the whole configuration and uses the sections it needs, so one file
//! can serve a whole deployment. [`Config::validate`] checks the values without any IO and
//! reports every problem at once; connectivity is checked when the service starts.

mod analytics;
mod gateway;
mod kafka;
mod mongodb;
mod ops;
mod processors;
mod sink;
mod telemetry;
mod webhooks;

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use analytics::AnalyticsConfig;
pub use gateway::{GatewayConfig, GatewayToken, S3BlobUrl};
pub use kafka::KafkaConfig;
pub use mongodb::MongoConfig;
pub use ops::OpsConfig;
pub use processors::ProcessorsConfig;
pub use sink::{MONGODB_MAX_DOCUMENT_BYTES, SinkConfig};
pub use telemetry::{LogFormat, TelemetryConfig};
pub use webhooks::{AllowedEndpoint, WebhooksConfig};

/// Prefix of every environment variable read as configuration.
pub const ENV_PREFIX: &str = "FIELDFORCE_";

/// Environment variable that names the configuration file when `--config` is not given.
pub const CONFIG_FILE_ENV: &str = "FIELDFORCE_CONFIG";

/// The configuration of a FieldForce deployment: the sections every service shares and one
/// section per service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Kafka connection and topic naming, shared by every service.
    pub kafka: KafkaConfig,
    /// MongoDB connection, used by the sink and by the gateway's submission lookups.
    pub mongodb: MongoConfig,
    /// Logging and trace export.
    pub telemetry: TelemetryConfig,
    /// The ingest gateway.
    pub gateway: GatewayConfig,
    /// The stream processors.
    pub processors: ProcessorsConfig,
    /// The MongoDB sink.
    pub sink: SinkConfig,
    /// The operations page.
    pub ops: OpsConfig,
    /// The webhook dispatcher.
    pub webhooks: WebhooksConfig,
    /// The analytics aggregator.
    pub analytics: AnalyticsConfig,
}

/// Configuration that could not be loaded or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is unreadable or not TOML, a key is unknown, or a value has the wrong type.
    /// Figment names the key and where it came from (file or environment variable).
    #[error("invalid configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    /// Values parsed but break a rule; every broken rule is listed.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

impl Config {
    /// Loads the configuration from the defaults, the file (when given) and the environment,
    /// then validates it.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let config: Config = Self::figment(file).extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Loads the configuration from the file named by [`CONFIG_FILE_ENV`], if set.
    pub fn load_from_env() -> Result<Self, ConfigError> {
        let file = std::env::var_os(CONFIG_FILE_ENV).map(PathBuf::from);
        Self::load(file.as_deref())
    }

    /// Builds the layered provider; exposed so that tests can add layers.
    pub fn figment(file: Option<&Path>) -> Figment {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment.merge(
            Env::prefixed(ENV_PREFIX)
                .filter(|key| key.as_str().contains("__"))
                .split("__"),
        )
    }

    /// Checks every rule that needs no IO and reports all broken ones together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        self.kafka.validate(&mut problems);
        self.mongodb.validate(&mut problems);
        self.gateway.validate(&mut problems);
        self.processors.validate(&mut problems);
        self.sink.validate(&mut problems);
        self.ops.validate(&mut problems);
        self.webhooks.validate(&mut problems);
        self.telemetry.validate(&mut problems);
        self.analytics.validate(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::result_large_err,
    reason = "figment::Jail fixes the closure's error type to figment::Error"
)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn environment_overrides_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "fieldforce.toml",
                "[kafka]\nbootstrap_servers = \"file:9092\"\n[mongodb]\ndatabase = \"from_file\"\n",
            )?;
            jail.set_env("FIELDFORCE_KAFKA__BOOTSTRAP_SERVERS", "env:9092");
            let config = Config::load(Some(Path::new("fieldforce.toml"))).unwrap();
            assert_eq!(config.kafka.bootstrap_servers, "env:9092");
            assert_eq!(config.mongodb.database, "from_file");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_rejected() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "fieldforce.toml",
                "[kafka]\nbootstrap_server = \"typo:9092\"\n",
            )?;
            let error = Config::load(Some(Path::new("fieldforce.toml"))).unwrap_err();
            assert!(error.to_string().contains("bootstrap_server"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn script_variables_without_section_are_ignored() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("FIELDFORCE_STORE_BACKEND", "sqlite");
            Config::load(None).unwrap();
            Ok(())
        });
    }

    #[test]
    fn librdkafka_properties_pass_through_from_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("FIELDFORCE_KAFKA__CLIENT__SECURITY_PROTOCOL", "SASL_SSL");
            jail.set_env("FIELDFORCE_KAFKA__CLIENT__SASL_MECHANISMS", "SCRAM-SHA-512");
            let config = Config::load(None).unwrap();
            let properties = config.kafka.client_properties();
            assert!(properties.contains(&("security.protocol".into(), "SASL_SSL".into())));
            assert!(properties.contains(&("sasl.mechanisms".into(), "SCRAM-SHA-512".into())));
            Ok(())
        });
    }

    #[test]
    fn numeric_librdkafka_properties_become_text() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "fieldforce.toml",
                "[kafka.client]\n\"fetch.wait.max.ms\" = 50\n\"enable.partition.eof\" = false\n",
            )?;
            jail.set_env("FIELDFORCE_KAFKA__CLIENT__SESSION_TIMEOUT_MS", "6000");
            let config = Config::load(Some(Path::new("fieldforce.toml"))).unwrap();
            let properties = config.kafka.client_properties();
            assert!(properties.contains(&("session.timeout.ms".into(), "6000".into())));
            assert!(properties.contains(&("fetch.wait.max.ms".into(), "50".into())));
            assert!(properties.contains(&("enable.partition.eof".into(), "false".into())));
            Ok(())
        });
    }

    #[test]
    fn validation_reports_every_problem() {
        let mut config = Config::default();
        config.kafka.bootstrap_servers.clear();
        config.mongodb.uri = "http://wrong".to_owned();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("bootstrap_servers"), "{error}");
        assert!(error.contains("mongodb.uri"), "{error}");
    }
}
