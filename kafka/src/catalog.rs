//! The topic catalog: `kafka/topics.toml`, embedded at build time so every binary agrees on it.

use serde::Deserialize;

/// The catalog file as shipped with this build.
pub const CATALOG_TOML: &str = include_str!("../topics.toml");

/// Catalog name of the raw submissions topic.
pub const SUBMISSIONS_RAW: &str = "submissions.raw";
/// Catalog name of the validated submissions topic.
pub const SUBMISSIONS_VALIDATED: &str = "submissions.validated";
/// Catalog name of the located submissions topic.
pub const SUBMISSIONS_LOCATED: &str = "submissions.located";
/// Catalog name of the processed submissions topic, read by the sink.
pub const SUBMISSIONS_PROCESSED: &str = "submissions.processed";
/// Catalog name of the dead-letter topic.
pub const SUBMISSIONS_DEADLETTER: &str = "submissions.deadletter";
/// Catalog name of the compacted form definitions topic.
pub const FORMS: &str = "forms";
/// Catalog name of the compacted project settings topic.
pub const PROJECT_SETTINGS: &str = "project-settings";
/// Catalog name of the topic of submissions the store has acknowledged, written by the sink.
pub const SUBMISSIONS_STORED: &str = "submissions.stored";
/// Catalog name of the compacted webhook subscriptions topic.
pub const WEBHOOKS_SUBSCRIPTIONS: &str = "webhooks.subscriptions";
/// Catalog names of the webhook retry topics, shortest delay first. Every record of one
/// tier waits the same delay, so the records of a partition fall due in offset order.
pub const WEBHOOKS_RETRY_TIERS: [&str; 3] =
    ["webhooks.retry.1", "webhooks.retry.2", "webhooks.retry.3"];
/// Catalog name of the webhook dead-letter topic: deliveries that ran out of attempts or
/// whose endpoint is not allowed.
pub const WEBHOOKS_DEADLETTER: &str = "webhooks.deadletter";

/// Consumer group of the sink, before the deployment's `sink.group_id_prefix`.
pub const SINK_GROUP: &str = "fieldforce-sink";

/// Consumer groups of the pipeline and the catalog topic each one reads, in pipeline order.
pub const PIPELINE_GROUPS: [(&str, &str); 4] = [
    ("fieldforce-validation", SUBMISSIONS_RAW),
    ("fieldforce-geo", SUBMISSIONS_VALIDATED),
    ("fieldforce-quality", SUBMISSIONS_LOCATED),
    (SINK_GROUP, SUBMISSIONS_PROCESSED),
];

/// Consumer groups beside the pipeline, which read its output and feed nothing back, and the
/// catalog topic each one reads.
pub const SIDE_GROUPS: [(&str, &str); 2] = [
    ("fieldforce-analytics", SUBMISSIONS_PROCESSED),
    ("fieldforce-webhooks", SUBMISSIONS_STORED),
];

/// The parsed catalog.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// Version of the catalog file, raised on every change to it.
    pub catalog_version: u32,
    /// Settings every topic gets unless it overrides them.
    pub defaults: TopicDefaults,
    /// Every topic.
    #[serde(rename = "topic")]
    pub topics: Vec<TopicSpec>,
}

/// Settings shared by every topic of the catalog.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicDefaults {
    /// Copies of each partition.
    pub replication_factor: i32,
    /// Replicas that must acknowledge an `acks=all` write.
    pub min_insync_replicas: u32,
    /// Topic `compression.type`.
    pub compression: String,
}

/// One topic of the catalog.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    /// Name without the deployment's prefix.
    pub name: String,
    /// What the topic carries and its key.
    pub description: String,
    /// Partition count.
    pub partitions: i32,
    /// `retention.ms`; -1 keeps records forever.
    pub retention_ms: i64,
    /// `cleanup.policy`: `delete` or `compact`.
    pub cleanup_policy: String,
}

impl TopicSpec {
    /// Returns the topic-level configuration the broker should hold for this topic.
    pub fn configs(&self, defaults: &TopicDefaults) -> Vec<(&'static str, String)> {
        vec![
            ("retention.ms", self.retention_ms.to_string()),
            ("cleanup.policy", self.cleanup_policy.clone()),
            (
                "min.insync.replicas",
                defaults.min_insync_replicas.to_string(),
            ),
            ("compression.type", defaults.compression.clone()),
        ]
    }
}

impl Catalog {
    /// Parses the catalog embedded in this build.
    pub fn embedded() -> Self {
        // The file is part of the build and a unit test parses it, so a broken catalog never
        // reaches a release.
        Self::parse(CATALOG_TOML).expect("kafka/topics.toml is valid")
    }

    /// Parses a catalog file.
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Returns the topic with the given catalog name.
    pub fn topic(&self, name: &str) -> Option<&TopicSpec> {
        self.topics.iter().find(|topic| topic.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_catalog_names_every_topic_constant() {
        let catalog = Catalog::embedded();
        for name in [
            SUBMISSIONS_RAW,
            SUBMISSIONS_VALIDATED,
            SUBMISSIONS_LOCATED,
            SUBMISSIONS_PROCESSED,
            SUBMISSIONS_DEADLETTER,
            FORMS,
            PROJECT_SETTINGS,
            SUBMISSIONS_STORED,
            WEBHOOKS_SUBSCRIPTIONS,
            WEBHOOKS_DEADLETTER,
        ]
        .into_iter()
        .chain(WEBHOOKS_RETRY_TIERS)
        {
            assert!(
                catalog.topic(name).is_some(),
                "{name} missing from the catalog"
            );
        }
    }

    #[test]
    fn compacted_topics_keep_records_forever() {
        let catalog = Catalog::embedded();
        for topic in catalog
            .topics
            .iter()
            .filter(|t| t.cleanup_policy == "compact")
        {
            assert_eq!(topic.retention_ms, -1, "{}", topic.name);
        }
    }
}
