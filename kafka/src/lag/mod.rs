//! Consumer-group lag as operators read it: per partition the committed offset, the log end,
//! the lag in records and in seconds (the age of the oldest record not yet processed), and a
//! status per group computed from two samples taken some seconds apart.
//!
//! This module samples a group from the outside, through its committed offsets, as the
//! `fieldforce-lag` command and the operations page do. [`metrics`] declares the lag gauges
//! every consumer service exports, and [`consumer`] samples them from inside the service,
//! where records read but not yet durable are known.

pub mod consumer;
pub mod metrics;

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use fieldforce_runtime::config::{Config, KafkaConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::catalog::{PIPELINE_GROUPS, SIDE_GROUPS, SINK_GROUP};
use crate::client::{consumer_config, reader_config};
use crate::offsets::TopicPartition;

/// How long one metadata, offsets or fetch request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Lag of one partition at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionLag {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
    /// Next offset the group will read, or `None` when it has committed nothing.
    pub committed: Option<i64>,
    /// Offset the next record written to the partition will get.
    pub log_end: i64,
    /// Records between the committed offset (or the log start) and the log end.
    pub lag_records: i64,
    /// Age of the oldest record not yet processed, in seconds; 0 without lag.
    pub lag_seconds: f64,
}

/// Lag of one consumer group at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupLag {
    /// Consumer group id.
    pub group: String,
    /// Group state as the coordinator reports it (`Stable`, `Empty`, ...).
    pub state: String,
    /// Consumers in the group.
    pub members: usize,
    /// Every partition of the topics the group reads.
    pub partitions: Vec<PartitionLag>,
    /// Topics the group reads that the cluster's metadata lists with no partitions: deleted,
    /// never created, or not yet known to the broker. Their lag cannot be read.
    pub missing_topics: Vec<String>,
}

impl GroupLag {
    /// Returns the total lag in records.
    pub fn lag_records(&self) -> i64 {
        self.partitions
            .iter()
            .map(|partition| partition.lag_records)
            .sum()
    }

    /// Returns the largest lag in seconds over the partitions.
    pub fn lag_seconds(&self) -> f64 {
        self.partitions
            .iter()
            .map(|partition| partition.lag_seconds)
            .fold(0.0, f64::max)
    }
}

/// Health of a consumer group, from two samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GroupStatus {
    /// Lag under the thresholds.
    Ok,
    /// Lag over a threshold, but offsets are moving.
    Lagging,
    /// Lag present, consumers present, and no committed offset moved between the samples.
    Stalled,
    /// Lag present and no consumer in the group.
    Stopped,
    /// A topic the group reads has no partitions in the cluster's metadata, so the group's
    /// lag is not known.
    Unknown,
}

impl std::fmt::Display for GroupStatus {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.pad(match self {
            GroupStatus::Ok => "OK",
            GroupStatus::Lagging => "LAGGING",
            GroupStatus::Stalled => "STALLED",
            GroupStatus::Stopped => "STOPPED",
            GroupStatus::Unknown => "UNKNOWN",
        })
    }
}

/// When a group with lag counts as lagging.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Records of lag above which the group is lagging.
    pub records: i64,
    /// Seconds of lag above which the group is lagging.
    pub seconds: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            records: 1_000,
            seconds: 30.0,
        }
    }
}

/// Classifies a group from an earlier and a later sample of it.
pub fn classify(earlier: &GroupLag, later: &GroupLag, thresholds: Thresholds) -> GroupStatus {
    // Zero records of lag on a topic with no partitions would read as healthy.
    if !later.missing_topics.is_empty() {
        return GroupStatus::Unknown;
    }
    let lag = later.lag_records();
    if lag == 0 {
        return GroupStatus::Ok;
    }
    if later.members == 0 {
        return GroupStatus::Stopped;
    }
    let committed = |sample: &GroupLag| -> BTreeMap<(String, i32), Option<i64>> {
        sample
            .partitions
            .iter()
            .map(|partition| {
                (
                    (partition.topic.clone(), partition.partition),
                    partition.committed,
                )
            })
            .collect()
    };
    let moved = committed(earlier) != committed(later);
    if !moved {
        return GroupStatus::Stalled;
    }
    if lag > thresholds.records || later.lag_seconds() > thresholds.seconds {
        return GroupStatus::Lagging;
    }
    GroupStatus::Ok
}

/// Failure to read lag from the cluster; the caller retries on its next sample.
#[derive(Debug, thiserror::Error)]
#[error("reading consumer lag failed: {0}")]
pub struct LagError(#[from] rdkafka::error::KafkaError);

/// Returns every consumer group of the deployment with its full id and the full name of the
/// topic it reads: the pipeline's in pipeline order, then the side groups (analytics,
/// webhooks). Group ids get the prefix their service adds
/// (`processors.group_id_prefix`, `sink.group_id_prefix`).
pub fn pipeline_groups(config: &Config) -> Vec<(String, String)> {
    PIPELINE_GROUPS
        .iter()
        .chain(&SIDE_GROUPS)
        .map(|(group, topic)| {
            let prefix = if *group == SINK_GROUP {
                &config.sink.group_id_prefix
            } else {
                &config.processors.group_id_prefix
            };
            (format!("{prefix}{group}"), config.kafka.topic(topic))
        })
        .collect()
}

/// Samples the lag of a group on the given topics with clients made for this one sample.
pub fn sample(kafka: &KafkaConfig, group: &str, topics: &[String]) -> Result<GroupLag, LagError> {
    GroupSampler::new(kafka)?.sample(group, topics)
}

/// Samples group lag again and again over the same clients, so a sampler that runs every few
/// seconds does not open new broker connections each time. Every method blocks on broker
/// requests, so async callers run it on a blocking thread.
pub struct GroupSampler {
    kafka: KafkaConfig,
    reader: BaseConsumer,
    /// One client per group id: committed offsets are read with the group's id, without
    /// joining the group, because these clients never subscribe.
    group_readers: HashMap<String, BaseConsumer>,
}

impl GroupSampler {
    /// Creates the sampler's reader; group readers are created on first use.
    pub fn new(kafka: &KafkaConfig) -> Result<Self, LagError> {
        Ok(Self {
            kafka: kafka.clone(),
            reader: reader_config(kafka).create()?,
            group_readers: HashMap::new(),
        })
    }

    /// Returns the reader, for watermark and metadata requests of the caller's own.
    pub fn reader(&self) -> &BaseConsumer {
        &self.reader
    }

    /// Samples the lag of a group on the given topics.
    pub fn sample(&mut self, group: &str, topics: &[String]) -> Result<GroupLag, LagError> {
        let reader = &self.reader;
        let (state, members) = match reader
            .fetch_group_list(Some(group), REQUEST_TIMEOUT)?
            .groups()
            .first()
        {
            Some(found) => (found.state().to_owned(), found.members().len()),
            None => ("Dead".to_owned(), 0),
        };

        let mut wanted = TopicPartitionList::new();
        let mut missing_topics = Vec::new();
        for topic in topics {
            let metadata = reader.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
            let before = wanted.count();
            for partition in metadata
                .topics()
                .iter()
                .flat_map(|found| found.partitions())
            {
                wanted.add_partition(topic, partition.id());
            }
            if wanted.count() == before {
                missing_topics.push(topic.clone());
            }
        }
        let group_reader = match self.group_readers.entry(group.to_owned()) {
            Entry::Occupied(found) => found.into_mut(),
            Entry::Vacant(empty) => empty.insert(consumer_config(&self.kafka, group).create()?),
        };
        let committed = group_reader.committed_offsets(wanted, REQUEST_TIMEOUT)?;

        let mut partitions = Vec::new();
        for element in committed.elements() {
            let (log_start, log_end) =
                reader.fetch_watermarks(element.topic(), element.partition(), REQUEST_TIMEOUT)?;
            let committed = match element.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            };
            let position = committed.unwrap_or(log_start).max(log_start);
            partitions.push(PartitionLag {
                topic: element.topic().to_owned(),
                partition: element.partition(),
                committed,
                log_end,
                lag_records: (log_end - position).max(0),
                lag_seconds: 0.0,
            });
        }

        let lagging: Vec<(TopicPartition, i64)> = partitions
            .iter()
            .filter(|partition| partition.lag_records > 0)
            .map(|partition| {
                (
                    (partition.topic.clone(), partition.partition),
                    partition.log_end - partition.lag_records,
                )
            })
            .collect();
        let timestamps = record_timestamps(reader, &lagging)?;
        let now_ms = now_ms();
        for partition in &mut partitions {
            let key = (partition.topic.clone(), partition.partition);
            if let Some(timestamp_ms) = timestamps.get(&key) {
                partition.lag_seconds = age_seconds(now_ms, *timestamp_ms);
            }
        }
        Ok(GroupLag {
            group: group.to_owned(),
            state,
            members,
            partitions,
            missing_topics,
        })
    }
}

/// Returns the milliseconds since the Unix epoch on this host's clock.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or_default()
}

/// Returns how old a record with the given timestamp is, in seconds; never negative, because
/// producers' clocks may run ahead of this host's.
pub(crate) fn age_seconds(now_ms: i64, timestamp_ms: i64) -> f64 {
    ((now_ms - timestamp_ms).max(0) as f64) / 1000.0
}

/// Reads the record at the given offset of each partition for its timestamp, in milliseconds.
/// A partition whose record does not arrive within the request timeout (deleted by retention
/// meanwhile, or a transaction marker) is left out of the result.
pub(crate) fn record_timestamps(
    reader: &BaseConsumer,
    positions: &[(TopicPartition, i64)],
) -> Result<HashMap<TopicPartition, i64>, LagError> {
    let mut found = HashMap::new();
    if positions.is_empty() {
        return Ok(found);
    }
    let mut assignment = TopicPartitionList::new();
    for ((topic, partition), offset) in positions {
        assignment.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    reader.assign(&assignment)?;

    let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
    while found.len() < positions.len() && std::time::Instant::now() < deadline {
        let Some(Ok(message)) = reader.poll(Duration::from_millis(200)) else {
            continue;
        };
        let key = (message.topic().to_owned(), message.partition());
        if found.contains_key(&key) {
            continue;
        }
        if let Some(timestamp_ms) = message.timestamp().to_millis() {
            found.insert(key, timestamp_ms);
        }
    }
    // Later samples assign other offsets; dropping this assignment stops the fetches now.
    reader.unassign()?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(members: usize, partitions: &[(Option<i64>, i64, f64)]) -> GroupLag {
        GroupLag {
            group: "fieldforce-sink".into(),
            state: if members == 0 { "Empty" } else { "Stable" }.into(),
            members,
            partitions: partitions
                .iter()
                .enumerate()
                .map(|(index, (committed, log_end, seconds))| PartitionLag {
                    topic: "processed".into(),
                    partition: index as i32,
                    committed: *committed,
                    log_end: *log_end,
                    lag_records: log_end - committed.unwrap_or(0),
                    lag_seconds: *seconds,
                })
                .collect(),
            missing_topics: Vec::new(),
        }
    }

    #[test]
    fn topic_without_partitions_is_unknown_not_ok() {
        let mut idle = group(1, &[]);
        idle.missing_topics.push("processed".into());
        assert_eq!(idle.lag_records(), 0);
        assert_eq!(
            classify(&idle, &idle, Thresholds::default()),
            GroupStatus::Unknown
        );
    }

    #[test]
    fn no_lag_is_ok_even_without_consumers() {
        let idle = group(0, &[(Some(10), 10, 0.0)]);
        assert_eq!(
            classify(&idle, &idle, Thresholds::default()),
            GroupStatus::Ok
        );
    }

    #[test]
    fn lag_without_consumers_is_stopped() {
        let stopped = group(0, &[(Some(10), 500, 40.0)]);
        assert_eq!(
            classify(&stopped, &stopped, Thresholds::default()),
            GroupStatus::Stopped
        );
    }

    #[test]
    fn lag_with_offsets_standing_still_is_stalled() {
        let stuck = group(2, &[(Some(10), 20, 1.0)]);
        assert_eq!(
            classify(&stuck, &stuck, Thresholds::default()),
            GroupStatus::Stalled
        );
    }

    #[test]
    fn moving_offsets_over_threshold_is_lagging() {
        let earlier = group(1, &[(Some(10), 5_000, 90.0)]);
        let later = group(1, &[(Some(400), 5_200, 80.0)]);
        assert_eq!(
            classify(&earlier, &later, Thresholds::default()),
            GroupStatus::Lagging
        );
    }

    #[test]
    fn moving_offsets_under_threshold_is_ok() {
        let earlier = group(1, &[(Some(10), 40, 0.5)]);
        let later = group(1, &[(Some(30), 45, 0.2)]);
        assert_eq!(
            classify(&earlier, &later, Thresholds::default()),
            GroupStatus::Ok
        );
    }
}
