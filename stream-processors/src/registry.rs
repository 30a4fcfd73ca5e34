//! Forms and project settings, read at run time from their compacted topics.
//!
//! A [`CompactedReader`] assigns every partition of its topic from the beginning, without a
//! consumer group, and keeps the latest value per key in a shared map. It keeps following new
//! records, so a changed geofence or a newly registered form takes effect without a restart.
//! A tombstone (a record without a value) removes its key.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use fieldforce_kafka::client::reader_config;
use fieldforce_runtime::config::{Config, KafkaConfig};
use fieldforce_runtime::shutdown::Shutdown;
use fieldforce_schemas::codec::{Contract, decode};
use fieldforce_schemas::form::{FormDefinition, form_topic_key};
use fieldforce_schemas::project::{ProjectSettings, project_topic_key};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::ProcessorError;

/// How long a metadata or watermark request may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// The latest value of every key of a compacted topic, shared between the reader and the
/// transforms.
#[derive(Debug)]
pub struct Registry<T> {
    entries: RwLock<HashMap<String, Arc<T>>>,
}

impl<T> Default for Registry<T> {
    fn default() -> Self {
        Self {
            entries: RwLock::new(HashMap::new()),
        }
    }
}

impl<T> Registry<T> {
    /// Returns the latest value stored under `key`.
    pub fn get(&self, key: &str) -> Option<Arc<T>> {
        // A poisoned lock only means a writer panicked between two whole-value writes, so the
        // map is still consistent.
        let entries = self
            .entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries.get(key).cloned()
    }

    /// Returns every value for which `keep` holds, in no particular order.
    pub fn values_where(&self, keep: impl Fn(&T) -> bool) -> Vec<Arc<T>> {
        let entries = self
            .entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries
            .values()
            .filter(|value| keep(value))
            .cloned()
            .collect()
    }

    /// Stores `value` under `key`, or removes the key when `value` is `None`.
    pub fn put(&self, key: String, value: Option<T>) {
        let mut entries = self
            .entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match value {
            Some(value) => entries.insert(key, Arc::new(value)),
            None => entries.remove(&key),
        };
    }
}

impl Registry<FormDefinition> {
    /// Returns the registered form version. A submission without a version (JSON clients
    /// often send none) gets the form registered without a version, or else the version
    /// registered last.
    pub fn form(
        &self,
        org_id: &str,
        project_id: &str,
        form_id: &str,
        version: Option<&str>,
    ) -> Option<Arc<FormDefinition>> {
        if let Some(version) = version {
            return self.get(&form_topic_key(org_id, project_id, form_id, version));
        }
        if let Some(unversioned) = self.get(&form_topic_key(org_id, project_id, form_id, "")) {
            return Some(unversioned);
        }
        // A scan, but only for unversioned submissions, over a map of registered forms that
        // holds hundreds of entries, not millions.
        self.values_where(|form| {
            form.org_id == org_id && form.project_id == project_id && form.form_id == form_id
        })
        .into_iter()
        .max_by_key(|form| form.registered_at_ms)
    }
}

impl Registry<ProjectSettings> {
    /// Returns the settings of a project.
    pub fn project(&self, org_id: &str, project_id: &str) -> Option<Arc<ProjectSettings>> {
        self.get(&project_topic_key(org_id, project_id))
    }
}

/// A running reader of one compacted topic.
#[derive(Debug)]
pub struct CompactedReader<T> {
    /// The map the reader keeps current.
    pub registry: Arc<Registry<T>>,
    caught_up: watch::Receiver<bool>,
    topic: String,
}

impl<T: Contract + Send + Sync + 'static> CompactedReader<T> {
    /// Starts reading `topic` from the beginning of every partition. The reader runs until
    /// shutdown.
    pub async fn start(
        kafka: &KafkaConfig,
        topic: String,
        mut shutdown: Shutdown,
    ) -> Result<Self, ProcessorError> {
        let consumer: StreamConsumer = reader_config(kafka).create()?;
        let consumer = Arc::new(consumer);

        let ends = end_offsets(&consumer, &topic).await?;

        let mut assignment = TopicPartitionList::new();
        for (partition, _) in &ends {
            assignment.add_partition_offset(&topic, *partition, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;

        let registry = Arc::new(Registry::default());
        let (caught_up_sender, caught_up) = watch::channel(false);
        let mut remaining: HashMap<i32, i64> = ends
            .into_iter()
            .filter(|(_, (low, high))| high > low)
            .map(|(partition, (_, high))| (partition, high))
            .collect();
        if remaining.is_empty() {
            caught_up_sender.send_replace(true);
        }

        let task_registry = Arc::clone(&registry);
        let task_topic = topic.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    _ = shutdown.wait() => break,
                    message = consumer.recv() => message,
                };
                let message = match message {
                    Ok(message) => message,
                    Err(error) => {
                        tracing::warn!(topic = %task_topic, %error, "compacted topic read failed");
                        continue;
                    }
                };
                apply_record(&task_registry, &task_topic, &message);

                if remaining.is_empty() {
                    continue;
                }
                // The end offset is the next offset to be written, so the record just before
                // it is the last one present when the reader started.
                if let Some(&end) = remaining.get(&message.partition())
                    && message.offset() + 1 >= end
                {
                    remaining.remove(&message.partition());
                    if remaining.is_empty() {
                        caught_up_sender.send_replace(true);
                    }
                }
            }
        });

        Ok(Self {
            registry,
            caught_up,
            topic,
        })
    }

    /// Waits until every record present at start has been read, or until `timeout` passes;
    /// returns whether the reader caught up.
    pub async fn wait_caught_up(&mut self, timeout: Duration) -> bool {
        let caught_up = tokio::time::timeout(timeout, self.caught_up.wait_for(|done| *done))
            .await
            .is_ok_and(|result| result.is_ok());
        if !caught_up {
            tracing::warn!(
                topic = %self.topic,
                timeout_ms = timeout.as_millis() as u64,
                "compacted topic not read to its end in time, processing with what was read"
            );
        }
        caught_up
    }
}

/// Starts a reader of the catalog topic `catalog_name` and waits, up to
/// `processors.catch_up_timeout_ms`, until it has read to the end offsets seen at start, so a
/// processor never judges its first records against settings it has not read yet.
pub async fn caught_up_registry<T: Contract + Send + Sync + 'static>(
    config: &Config,
    catalog_name: &str,
    shutdown: Shutdown,
) -> Result<Arc<Registry<T>>, ProcessorError> {
    let mut reader =
        CompactedReader::<T>::start(&config.kafka, config.kafka.topic(catalog_name), shutdown)
            .await?;
    reader
        .wait_caught_up(Duration::from_millis(config.processors.catch_up_timeout_ms))
        .await;
    Ok(reader.registry)
}

/// Low and high watermark of each partition of a topic.
type Watermarks = Vec<(i32, (i64, i64))>;

/// Reads the watermarks of every partition, retrying while the topic's leaders are still
/// being elected (a topic created moments ago returns `NotLeaderForPartition`).
async fn end_offsets(
    consumer: &Arc<StreamConsumer>,
    topic: &str,
) -> Result<Watermarks, ProcessorError> {
    let deadline = tokio::time::Instant::now() + METADATA_TIMEOUT;
    loop {
        // Metadata and watermark requests block the calling thread.
        let result = {
            let consumer = Arc::clone(consumer);
            let topic = topic.to_owned();
            tokio::task::spawn_blocking(move || try_end_offsets(&consumer, &topic))
                .await
                .map_err(|_| ProcessorError::TaskPanicked)?
        };
        let retry = tokio::time::Instant::now() < deadline;
        match result {
            Ok(ends) if !ends.is_empty() || !retry => return Ok(ends),
            Ok(_) => {}
            Err(error) if retry => {
                tracing::debug!(topic, %error, "watermarks not available yet, retrying")
            }
            Err(error) => return Err(error),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn try_end_offsets(consumer: &StreamConsumer, topic: &str) -> Result<Watermarks, ProcessorError> {
    let metadata = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
    let mut ends = Vec::new();
    for found in metadata
        .topics()
        .iter()
        .filter(|found| found.name() == topic)
    {
        for partition in found.partitions() {
            let watermarks = consumer.fetch_watermarks(topic, partition.id(), METADATA_TIMEOUT)?;
            ends.push((partition.id(), watermarks));
        }
    }
    Ok(ends)
}

fn apply_record<T: Contract, M: Message>(registry: &Registry<T>, topic: &str, message: &M) {
    let Some(key) = message.key().and_then(|key| std::str::from_utf8(key).ok()) else {
        tracing::warn!(
            topic,
            offset = message.offset(),
            "compacted record without a UTF-8 key skipped"
        );
        return;
    };
    let Some(payload) = message.payload() else {
        registry.put(key.to_owned(), None);
        return;
    };
    match decode::<T>(payload) {
        Ok(value) => registry.put(key.to_owned(), Some(value)),
        Err(error) => tracing::warn!(
            topic,
            key,
            offset = message.offset(),
            %error,
            "undecodable compacted record skipped, the previous value is kept"
        ),
    }
}

#[cfg(test)]
mod tests {
    use fieldforce_schemas::form::FORM_DEFINITION_VERSION;

    use super::*;

    fn form(version: &str, registered_at_ms: i64) -> FormDefinition {
        FormDefinition {
            schema_version: FORM_DEFINITION_VERSION,
            org_id: "org".into(),
            project_id: "project".into(),
            form_id: "household".into(),
            version: version.into(),
            title: None,
            fields: Vec::new(),
            registered_at_ms,
            xform_sha256: String::new(),
        }
    }

    fn registry(forms: &[FormDefinition]) -> Registry<FormDefinition> {
        let registry = Registry::default();
        for form in forms {
            registry.put(form.topic_key(), Some(form.clone()));
        }
        registry
    }

    #[test]
    fn versioned_lookup_is_exact() {
        let registry = registry(&[form("1", 10), form("2", 20)]);
        let found = registry
            .form("org", "project", "household", Some("1"))
            .unwrap();
        assert_eq!(found.version, "1");
        assert!(
            registry
                .form("org", "project", "household", Some("3"))
                .is_none()
        );
    }

    #[test]
    fn unversioned_submission_gets_latest_registration() {
        let registry = registry(&[form("2", 20), form("10", 30), form("3", 25)]);
        let found = registry.form("org", "project", "household", None).unwrap();
        assert_eq!(found.version, "10");
        assert!(registry.form("org", "other", "household", None).is_none());
    }

    #[test]
    fn unversioned_form_wins_for_unversioned_submission() {
        let registry = registry(&[form("", 5), form("2", 20)]);
        let found = registry.form("org", "project", "household", None).unwrap();
        assert_eq!(found.version, "");
    }
}
