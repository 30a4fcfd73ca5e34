//! Creating the catalog's topics and reporting where the cluster differs from the catalog.

use std::time::Duration;

use fieldforce_runtime::config::KafkaConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::metadata::Metadata;
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
        match partition_count(&metadata, &name) {
            Some(mut partitions) => {
                if partitions == 0 {
                    partitions = wait_for_partitions(&admin, &name).await?;
                }
                check_partitions(&name, partitions, spec.partitions, &mut report);
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
        let mut raced = Vec::new();
        for result in admin.create_topics(&new_topics, &options).await? {
            match result {
                Ok(topic) => report.created.push(topic),
                // Created by another process after our metadata read, or so recently that the
                // metadata did not show it yet: check it against the catalog like the others.
                Err((topic, TopicAlreadyExists)) => raced.push(topic),
                Err((topic, code)) => return Err(AdminError::Create { topic, code }),
            }
        }
        for (name, spec) in missing.iter().filter(|(name, _)| raced.contains(name)) {
            let partitions = wait_for_partitions(&admin, name).await?;
            check_partitions(name, partitions, spec.partitions, &mut report);
            report.existing.push(name.clone());
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

/// Returns the partition count of a topic that exists, waiting for the broker's metadata to
/// show it: a topic created a moment ago can be missing from it or have no partitions yet.
async fn wait_for_partitions(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
) -> Result<i32, AdminError> {
    let mut last = 0;
    for _ in 0..50 {
        let metadata = admin.inner().fetch_metadata(Some(topic), ADMIN_TIMEOUT)?;
        last = partition_count(&metadata, topic).unwrap_or(0);
        if last > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(last)
}

fn partition_count(metadata: &Metadata, topic: &str) -> Option<i32> {
    metadata
        .topics()
        .iter()
        .find(|candidate| candidate.name() == topic)
        .map(|found| found.partitions().len() as i32)
}

fn check_partitions(topic: &str, found: i32, expected: i32, report: &mut ApplyReport) {
    if found != expected {
        report.drift.push(format!(
            "{topic}: {found} partitions, catalog says {expected}"
        ));
    }
}
