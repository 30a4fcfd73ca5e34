//! Keys that other replicas accepted, learned from the sink's stored-submission events.
//!
//! The store keeps most originals in the sink's stored documents alone (see the parent
//! module), so a replica's Bloom filter contains the originals stored before its full read
//! and the ones it accepted itself. To learn the rest, every replica reads every partition of
//! the stored-submissions topic, outside any consumer group and without committing, and adds
//! the keys of each event to its filter. The same events end the wait of the originals this
//! replica accepted, which then need no entry of their own in the index collection. It
//! starts [`START_OVERLAP`] before its own start, so that submissions stored while its full
//! read of the store ran are not missed.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fieldforce_kafka::client::reader_config;
use fieldforce_runtime::config::KafkaConfig;
use fieldforce_runtime::shutdown::Shutdown;
use fieldforce_schemas::codec::decode;
use fieldforce_schemas::webhook::SubmissionStored;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::{StoredKeys, SubmissionIndex};

/// How far before its start a replica begins reading the events.
pub const START_OVERLAP: Duration = Duration::from_secs(60);
/// Maximum duration of a metadata or offset request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before the reader is set up again after a failure.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Time after the start during which failures are retried after [`STARTUP_RETRY_AFTER`]
/// and logged at debug level.
const STARTUP_GRACE: Duration = Duration::from_secs(10);
/// Pause before a retry during [`STARTUP_GRACE`].
const STARTUP_RETRY_AFTER: Duration = Duration::from_millis(200);
/// Bytes a fetch waits for before the broker replies: a few hundred events, since an event
/// is about 300 bytes of JSON before compression.
const FETCH_MIN_BYTES: usize = 64 * 1024;
/// Maximum time the broker keeps a fetch with less than [`FETCH_MIN_BYTES`] waiting.
const FETCH_WAIT_MAX: Duration = Duration::from_millis(500);

/// The reader could not be set up; it is set up again after [`RETRY_AFTER`].
#[derive(Debug, thiserror::Error)]
enum FollowError {
    /// The consumer could not be created or a request failed.
    #[error("reading topic {topic} failed: {source}")]
    Kafka {
        /// Full topic name.
        topic: String,
        /// librdkafka error.
        source: KafkaError,
    },
    /// The cluster lists the topic without partitions, or not at all.
    #[error("topic {0} has no partitions")]
    NoPartitions(String),
    /// The blocking offset lookup panicked.
    #[error("the offset lookup of topic {0} panicked")]
    TaskPanicked(String),
}

/// Adds the keys of every stored-submission event on `topic` to the index's filter, until
/// shutdown or until the index is dropped.
pub async fn follow(kafka: KafkaConfig, topic: String, keys: StoredKeys, mut shutdown: Shutdown) {
    let started = Instant::now();
    loop {
        let error = match read_events(&kafka, &topic, &keys, &mut shutdown).await {
            Ok(()) => return,
            Err(error) => error,
        };
        // Offset requests on a topic created moments ago fail with `NotLeaderForPartition`
        // until its leaders are elected, so early failures are retried soon and quietly.
        let retry_after = if started.elapsed() < STARTUP_GRACE {
            tracing::debug!(topic, %error, "stored-submission events not readable yet, retrying");
            STARTUP_RETRY_AFTER
        } else {
            tracing::warn!(
                %error,
                retry_after_ms = RETRY_AFTER.as_millis() as u64,
                "reading stored-submission events failed, keys stored by other replicas reach the filter only at its refresh"
            );
            RETRY_AFTER
        };
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(retry_after) => {}
        }
    }
}

async fn read_events(
    kafka: &KafkaConfig,
    topic: &str,
    keys: &StoredKeys,
    shutdown: &mut Shutdown,
) -> Result<(), FollowError> {
    let kafka_error = |source| FollowError::Kafka {
        topic: topic.to_owned(),
        source,
    };
    let mut client_config = reader_config(kafka);
    // librdkafka's default has the broker reply as soon as one record is there, which at
    // thousands of events a second costs it CPU. A filter update or an ended wait may come
    // half a second late, so fewer, larger fetches are asked for.
    client_config
        .set("fetch.min.bytes", FETCH_MIN_BYTES.to_string())
        .set("fetch.wait.max.ms", FETCH_WAIT_MAX.as_millis().to_string());
    let consumer: StreamConsumer = client_config.create().map_err(kafka_error)?;
    let consumer = Arc::new(consumer);

    let start_ms = SystemTime::now()
        .checked_sub(START_OVERLAP)
        .and_then(|start| start.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |since_epoch| since_epoch.as_millis() as i64);
    // Metadata and offset requests block the calling thread.
    let assignment = {
        let consumer = Arc::clone(&consumer);
        let owned_topic = topic.to_owned();
        tokio::task::spawn_blocking(move || start_offsets(&consumer, &owned_topic, start_ms))
            .await
            .map_err(|_| FollowError::TaskPanicked(topic.to_owned()))??
    };
    consumer.assign(&assignment).map_err(kafka_error)?;
    tracing::info!(
        topic,
        partitions = assignment.count(),
        "reading stored-submission events"
    );

    loop {
        let message = tokio::select! {
            _ = shutdown.wait() => return Ok(()),
            message = consumer.recv() => message,
        };
        // librdkafka reports broker trouble here and keeps fetching on its own.
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                tracing::debug!(topic, %error, "stored-submission event read failed");
                continue;
            }
        };
        let Some(payload) = message.payload() else {
            continue;
        };
        let event = match decode::<SubmissionStored>(payload) {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(
                    topic,
                    partition = message.partition(),
                    offset = message.offset(),
                    %error,
                    "undecodable stored-submission event skipped"
                );
                continue;
            }
        };
        if !add_event_keys(keys, &event) {
            return Ok(());
        }
    }
}

/// Returns the offset of every partition's first record at or after `start_ms`, or, when it
/// has none, its high watermark as read before the lookup.
fn start_offsets(
    consumer: &StreamConsumer,
    topic: &str,
    start_ms: i64,
) -> Result<TopicPartitionList, FollowError> {
    let kafka_error = |source| FollowError::Kafka {
        topic: topic.to_owned(),
        source,
    };
    let metadata = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .map_err(kafka_error)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|found| found.name() == topic)
        .flat_map(|found| found.partitions())
        .map(|partition| partition.id())
        .collect();
    if partitions.is_empty() {
        return Err(FollowError::NoPartitions(topic.to_owned()));
    }

    // A partition without a record since `start_ms` comes back from the time lookup as the
    // logical end, which librdkafka resolves only at the first fetch, so the events written
    // until then would be skipped. Its high watermark read before the lookup is a real offset
    // that misses nothing: a later event is at or after it, and an earlier one the lookup
    // finds.
    let mut highs = Vec::with_capacity(partitions.len());
    let mut by_time = TopicPartitionList::new();
    for &partition in &partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
            .map_err(kafka_error)?;
        highs.push((partition, high));
        by_time
            .add_partition_offset(topic, partition, Offset::Offset(start_ms))
            .map_err(kafka_error)?;
    }
    let mut offsets = consumer
        .offsets_for_times(by_time, REQUEST_TIMEOUT)
        .map_err(kafka_error)?;
    for (partition, high) in highs {
        let found = offsets
            .find_partition(topic, partition)
            .map(|element| element.offset());
        if !matches!(found, Some(Offset::Offset(_))) {
            offsets
                .set_partition_offset(topic, partition, Offset::Offset(high))
                .map_err(kafka_error)?;
        }
    }
    Ok(offsets)
}

/// Adds the keys under which a gateway looks the stored submission up: the submission's own
/// id and, for an edit, its instanceID. Returns false once the index is gone.
fn add_event_keys(keys: &StoredKeys, event: &SubmissionStored) -> bool {
    if !keys.add_stored(
        &SubmissionIndex::key(&event.org_id, &event.submission_id),
        event.revision,
    ) {
        return false;
    }
    match &event.instance_id {
        Some(instance_id) if *instance_id != event.submission_id => {
            keys.add(&SubmissionIndex::key(&event.org_id, instance_id))
        }
        _ => true,
    }
}
