//! Creating the catalog's topics and reporting where the cluster differs from the catalog.

use std::time::Duration;

use fieldforce_runtime::config::KafkaConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists;

use crate::catalog::Catalog;
use crate::client::base_config;

/// How long an admin request may take before it fails.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Failure to talk to the cluster or to create a topic; the command stops.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The client could not be created or a request failed.
    #[error("kafka admin request failed: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The broker refused to create a topic.
    #[error("creating topic {topic} failed: {code}")]
    Create {
        /// Full topic name.
        topic: String,
        /// Broker error.
        code: RDKafkaErrorCode,
    },
}

/// What `apply` found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    /// Topics created by this run.
    pub created: Vec<String>,
    /// Topics that already existed.
    pub existing: Vec<String>,
    /// Differences between existing topics and the catalog, one line each.
    pub drift: Vec<String>,
}

/// Creates every catalog topic missing from the cluster and reports drift of the others.
/// With `create` false it only reports.
pub async fn apply(
    kafka: &KafkaConfig,
    catalog: &Catalog,
    create: bool,
) -> Result<ApplyReport, AdminError> {
    let admin: AdminClient<DefaultClientContext> = base_config(kafka).create()?;
    let metadata = admin.inner().fetch_metadata(None, ADMIN_TIMEOUT)?;
    let mut report = ApplyReport::default();
    let mut missing = Vec::new();

    for spec in &catalog.topics {
        let name = kafka.topic(&spec.name);
        match metadata.topics().iter().find(|topic| topic.name() == name) {
            Some(existing) => {
                let partitions = existing.partitions().len() as i32;
                if partitions != spec.partitions {
                    report.drift.push(format!(
                        "{name}: {partitions} partitions, catalog says {}",
                        spec.partitions
                    ));
                }
                report.existing.push(name);
            }
            None => missing.push((name, spec)),
        }
    }

    if create && !missing.is_empty() {
        let configs: Vec<Vec<(&str, String)>> = missing
            .iter()
            .map(|(_, spec)| spec.configs(&catalog.defaults))
            .collect();
        let new_topics: Vec<NewTopic> = missing
            .iter()
            .zip(&configs)
            .map(|((name, spec), config)| {
                let mut topic = NewTopic::new(
                    name,
                    spec.partitions,
                    TopicReplication::Fixed(catalog.defaults.replication_factor),
                );
                for (key, value) in config {
                    topic = topic.set(key, value);
                }
                topic
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        for result in admin.create_topics(&new_topics, &options).await? {
            match result {
                Ok(topic) => report.created.push(topic),
                // Another process created it between our metadata read and the request.
                Err((topic, TopicAlreadyExists)) => report.existing.push(topic),
                Err((topic, code)) => return Err(AdminError::Create { topic, code }),
            }
        }
    } else {
        report.drift.extend(
            missing
                .iter()
                .map(|(name, _)| format!("{name}: missing from the cluster")),
        );
    }
    Ok(report)
}
