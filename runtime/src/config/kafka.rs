use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Kafka connection settings and topic naming, shared by every service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list of brokers to bootstrap from. Default `127.0.0.1:9092`.
    pub bootstrap_servers: String,
    /// Prefix put before every catalog topic name, so that several deployments (or test runs)
    /// can share a cluster. Default `fieldforce.`, giving `fieldforce.submissions.raw`.
    pub topic_prefix: String,
    /// librdkafka properties passed through unchanged to every client, for SASL and TLS
    /// against a remote cluster (`security.protocol`, `sasl.mechanisms`, `sasl.username`,
    /// `ssl.ca.location`, ...). Keys set through the environment write dots as underscores
    /// (`FIELDFORCE_KAFKA__CLIENT__SECURITY_PROTOCOL`), because librdkafka property names
    /// contain no underscores. Numbers and booleans are taken as their text, because the
    /// environment and TOML give `6000` and `true` as typed values. Default empty.
    #[serde(deserialize_with = "scalars_as_text")]
    pub client: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".to_owned(),
            topic_prefix: "fieldforce.".to_owned(),
            client: BTreeMap::new(),
        }
    }
}

/// A librdkafka property value as the configuration layers may type it.
#[derive(Deserialize)]
#[serde(untagged)]
enum PropertyValue {
    Text(String),
    Integer(i64),
    Float(f64),
    Flag(bool),
}

fn scalars_as_text<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let typed = BTreeMap::<String, PropertyValue>::deserialize(deserializer)?;
    Ok(typed
        .into_iter()
        .map(|(key, value)| {
            let text = match value {
                PropertyValue::Text(text) => text,
                PropertyValue::Integer(number) => number.to_string(),
                PropertyValue::Float(number) => number.to_string(),
                PropertyValue::Flag(flag) => flag.to_string(),
            };
            (key, text)
        })
        .collect())
}

impl KafkaConfig {
    /// Returns the pass-through librdkafka properties with their dotted names.
    pub fn client_properties(&self) -> Vec<(String, String)> {
        self.client
            .iter()
            .map(|(key, value)| (key.replace('_', "."), value.clone()))
            .collect()
    }

    /// Returns the full name of a catalog topic, such as `submissions.raw`.
    pub fn topic(&self, catalog_name: &str) -> String {
        format!("{}{}", self.topic_prefix, catalog_name)
    }

    pub(super) fn validate(&self, problems: &mut Vec<String>) {
        if self.bootstrap_servers.trim().is_empty() {
            problems.push("kafka.bootstrap_servers is empty: set at least one host:port".into());
        }
        for (key, _) in self.client_properties() {
            if key == "bootstrap.servers" {
                problems.push(
                    "kafka.client must not set bootstrap.servers: use kafka.bootstrap_servers"
                        .into(),
                );
            }
        }
    }
}
