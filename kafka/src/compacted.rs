//! Reading a whole compacted topic once: every partition from its beginning up to the end
//! offsets seen at the start, keeping the latest value per key. A tombstone removes its key.
//!
//! This suits small topics that a request must see whole and current, such as a project's
//! webhook subscriptions: a record whose produce was acknowledged before the read started is
//! always included.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fieldforce_runtime::config::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::client::reader_config;

/// Failure to read a compacted topic; the caller may retry later.
#[derive(Debug, thiserror::Error)]
pub enum CompactedReadError {
    /// The client could not be created or a request failed.
    #[error("reading topic {topic} failed: {source}")]
    Kafka {
        /// Full topic name.
        topic: String,
        /// librdkafka error.
        source: KafkaError,
    },
    /// The end offsets were not reached before the deadline.
    #[error("reading topic {topic} did not finish within {timeout:?}")]
    TimedOut {
        /// Full topic name.
        topic: String,
        /// The deadline given.
        timeout: Duration,
    },
    /// The blocking read task panicked.
    #[error("the read task of topic {0} panicked")]
    TaskPanicked(String),
}

/// Reads `topic` to its current end and returns the latest value of every key that has one.
/// The read blocks on librdkafka, so it runs on a blocking thread.
pub async fn read_to_end(
    kafka: &KafkaConfig,
    topic: &str,
    timeout: Duration,
) -> Result<HashMap<String, Vec<u8>>, CompactedReadError> {
    let kafka = kafka.clone();
    let owned_topic = topic.to_owned();
    tokio::task::spawn_blocking(move || read_blocking(&kafka, &owned_topic, timeout))
        .await
        .map_err(|_| CompactedReadError::TaskPanicked(topic.to_owned()))?
}

fn read_blocking(
    kafka: &KafkaConfig,
    topic: &str,
    timeout: Duration,
) -> Result<HashMap<String, Vec<u8>>, CompactedReadError> {
    let failed = |source| CompactedReadError::Kafka {
        topic: topic.to_owned(),
        source,
    };
    let deadline = Instant::now() + timeout;
    let consumer: BaseConsumer = reader_config(kafka).create().map_err(failed)?;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(failed)?;

    let mut assignment = TopicPartitionList::new();
    // Next offset to be written per partition: the read is done when it reaches it.
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    for found in metadata
        .topics()
        .iter()
        .filter(|found| found.name() == topic)
    {
        for partition in found.partitions() {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition.id(), timeout)
                .map_err(failed)?;
            if high > low {
                assignment
                    .add_partition_offset(topic, partition.id(), Offset::Beginning)
                    .map_err(failed)?;
                remaining.insert(partition.id(), high);
            }
        }
    }

    let mut values = HashMap::new();
    if remaining.is_empty() {
        return Ok(values);
    }
    consumer.assign(&assignment).map_err(failed)?;
    while !remaining.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(CompactedReadError::TimedOut {
                topic: topic.to_owned(),
                timeout,
            });
        }
        let Some(result) = consumer.poll(left.min(Duration::from_millis(200))) else {
            continue;
        };
        let message = result.map_err(failed)?;
        if let Some(key) = message.key().and_then(|key| std::str::from_utf8(key).ok()) {
            match message.payload() {
                Some(payload) => values.insert(key.to_owned(), payload.to_vec()),
                None => values.remove(key),
            };
        }
        if remaining
            .get(&message.partition())
            .is_some_and(|&end| message.offset() + 1 >= end)
        {
            remaining.remove(&message.partition());
        }
    }
    Ok(values)
}
