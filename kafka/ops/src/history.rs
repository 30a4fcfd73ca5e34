//! The samples of the last minutes, in a bounded ring, and the overview the page shows.
//! The overview holds the latest lag per group and partition with each group's status,
//! throughput per topic from the change of its end offsets, dead-letter counts, service
//! health, and the series the charts draw.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use fieldforce_kafka::lag::{self, GroupLag, GroupStatus, Thresholds};
use serde::Serialize;

/// Offsets of one partition of a topic.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionOffsets {
    /// Partition number.
    pub partition: i32,
    /// Offset of the oldest record retention kept.
    pub log_start: i64,
    /// Offset the next record written will get.
    pub log_end: i64,
}

/// Offsets of every partition of one topic.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopicOffsets {
    /// Full topic name.
    pub name: String,
    /// Name in the topic catalog, without the deployment's prefix.
    pub catalog_name: String,
    /// Every partition; empty when the topic is missing from the cluster.
    pub partitions: Vec<PartitionOffsets>,
}

impl TopicOffsets {
    /// Returns the sum of the partitions' log end offsets: every record ever written.
    pub fn end_offset(&self) -> i64 {
        self.partitions
            .iter()
            .map(|partition| partition.log_end)
            .sum()
    }

    /// Returns the records retention still keeps.
    pub fn retained(&self) -> i64 {
        self.partitions
            .iter()
            .map(|partition| partition.log_end - partition.log_start)
            .sum()
    }
}

/// Result of one `/healthz` request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceHealth {
    /// Service name from `ops.services`.
    pub name: String,
    /// Admin base URL.
    pub url: String,
    /// Whether `/healthz` returned 2xx in time.
    pub healthy: bool,
    /// HTTP status, when a response came.
    pub status: Option<u16>,
    /// Response body or the failure, shortened.
    pub detail: String,
    /// Time to the response, in milliseconds.
    pub latency_ms: u64,
}

/// Everything one sample read.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When the sample was taken, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// Lag of every pipeline group.
    pub groups: Vec<GroupLag>,
    /// Offsets of every catalog topic.
    pub topics: Vec<TopicOffsets>,
    /// Health of every configured service.
    pub services: Vec<ServiceHealth>,
    /// Why the Kafka part of the sample failed, if it did; groups and topics are then empty.
    pub kafka_error: Option<String>,
}

/// Settings that shape the overview.
#[derive(Debug, Clone)]
pub struct OverviewSettings {
    /// Time between samples.
    pub sample_interval: Duration,
    /// Age of the oldest sample kept.
    pub history: Duration,
    /// Distance between the two samples a status compares.
    pub status_window: Duration,
    /// When a moving group counts as lagging.
    pub thresholds: Thresholds,
    /// Full name of the dead-letter topic.
    pub dead_letter_topic: String,
}

/// The last samples, oldest first, dropped by age.
#[derive(Debug)]
pub struct History {
    samples: VecDeque<Sample>,
    history_ms: i64,
    /// Bound on the ring, so that a clock jump cannot make it grow without limit.
    capacity: usize,
}

impl History {
    /// Creates an empty history keeping `history` worth of samples taken every `interval`.
    pub fn new(history: Duration, interval: Duration) -> Self {
        let capacity = (history.as_millis() / interval.as_millis().max(1)) as usize + 2;
        Self {
            samples: VecDeque::with_capacity(capacity),
            history_ms: history.as_millis() as i64,
            capacity,
        }
    }

    /// Adds a sample and drops those older than the history.
    pub fn push(&mut self, sample: Sample) {
        let oldest_kept = sample.at_ms - self.history_ms;
        self.samples.push_back(sample);
        while self.samples.len() > self.capacity
            || self
                .samples
                .front()
                .is_some_and(|front| front.at_ms < oldest_kept)
        {
            self.samples.pop_front();
        }
    }

    /// Returns the number of samples kept.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Returns whether no sample was taken yet.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Returns the latest sample.
    pub fn latest(&self) -> Option<&Sample> {
        self.samples.back()
    }

    /// Builds the overview of the latest sample against the earlier ones.
    pub fn overview(&self, settings: &OverviewSettings) -> Overview {
        let Some(latest) = self.samples.back() else {
            return Overview::empty(settings);
        };
        let previous = self
            .samples
            .len()
            .checked_sub(2)
            .and_then(|index| self.samples.get(index));

        let groups = latest
            .groups
            .iter()
            .map(|group| self.group_overview(latest, group, settings))
            .collect();

        let topics = latest
            .topics
            .iter()
            .map(|topic| TopicOverview {
                name: topic.name.clone(),
                catalog_name: topic.catalog_name.clone(),
                partitions: topic.partitions.clone(),
                end_offset: topic.end_offset(),
                retained_records: topic.retained(),
                records_per_second: previous.and_then(|earlier| rate(earlier, latest, &topic.name)),
            })
            .collect();

        let dead_letters = latest
            .topics
            .iter()
            .find(|topic| topic.name == settings.dead_letter_topic)
            .map(|topic| {
                let oldest = self.samples.front().and_then(|front| {
                    front
                        .topics
                        .iter()
                        .find(|candidate| candidate.name == topic.name)
                });
                DeadLetterOverview {
                    topic: topic.name.clone(),
                    retained_records: topic.retained(),
                    new_in_history: oldest
                        .map_or(0, |oldest| topic.end_offset() - oldest.end_offset()),
                    records_per_second: previous
                        .and_then(|earlier| rate(earlier, latest, &topic.name)),
                }
            });

        Overview {
            generated_at_ms: latest.at_ms,
            sample_interval_ms: settings.sample_interval.as_millis() as u64,
            history_s: settings.history.as_secs(),
            thresholds: ThresholdsOverview {
                records: settings.thresholds.records,
                seconds: settings.thresholds.seconds,
            },
            kafka_error: latest.kafka_error.clone(),
            groups,
            topics,
            dead_letters,
            services: latest.services.clone(),
            series: self.series(),
        }
    }

    fn group_overview(
        &self,
        latest: &Sample,
        group: &GroupLag,
        settings: &OverviewSettings,
    ) -> GroupOverview {
        let window_ms = settings.status_window.as_millis() as i64;
        let samples_of_group = || {
            self.samples.iter().filter_map(|sample| {
                let found = sample
                    .groups
                    .iter()
                    .find(|candidate| candidate.group == group.group)?;
                Some((sample.at_ms, found))
            })
        };
        // The newest sample at least a window old, or else the oldest one there is.
        let covered = samples_of_group().rfind(|(at_ms, _)| *at_ms <= latest.at_ms - window_ms);
        let status = match covered {
            Some((_, earlier)) => Some(lag::classify(earlier, group, settings.thresholds)),
            None => {
                let oldest = samples_of_group().next().map(|(_, oldest)| oldest);
                match lag::classify(oldest.unwrap_or(group), group, settings.thresholds) {
                    // Offsets may still move within the window, so standing still over a
                    // shorter span proves nothing yet.
                    GroupStatus::Stalled => None,
                    status => Some(status),
                }
            }
        };

        GroupOverview {
            group: group.group.clone(),
            topics: group
                .partitions
                .iter()
                .map(|partition| partition.topic.clone())
                .fold(Vec::new(), |mut topics, topic| {
                    if !topics.contains(&topic) {
                        topics.push(topic);
                    }
                    topics
                }),
            missing_topics: group.missing_topics.clone(),
            state: group.state.clone(),
            members: group.members,
            status: status.map(|status| status.to_string()),
            lag_records: group.lag_records(),
            lag_seconds: group.lag_seconds(),
            partitions: group
                .partitions
                .iter()
                .map(|partition| PartitionLagOverview {
                    topic: partition.topic.clone(),
                    partition: partition.partition,
                    committed: partition.committed,
                    log_end: partition.log_end,
                    lag_records: partition.lag_records,
                    lag_seconds: partition.lag_seconds,
                })
                .collect(),
        }
    }

    fn series(&self) -> Series {
        let mut series = Series::default();
        let mut previous: Option<&Sample> = None;
        for sample in &self.samples {
            let index = series.at_ms.len();
            series.at_ms.push(sample.at_ms);
            for group in &sample.groups {
                let values = series
                    .lag_records
                    .entry(group.group.clone())
                    .or_insert_with(|| vec![None; index]);
                values.push(Some(group.lag_records()));
            }
            for topic in &sample.topics {
                let values = series
                    .records_per_second
                    .entry(topic.name.clone())
                    .or_insert_with(|| vec![None; index]);
                values.push(previous.and_then(|earlier| rate(earlier, sample, &topic.name)));
            }
            // A group or topic missing from this sample gets a gap, so every series lines up
            // with `at_ms`.
            for values in series.lag_records.values_mut() {
                values.resize(index + 1, None);
            }
            for values in series.records_per_second.values_mut() {
                values.resize(index + 1, None);
            }
            previous = Some(sample);
        }
        series
    }
}

/// Records written to a topic per second between two samples.
fn rate(earlier: &Sample, later: &Sample, topic: &str) -> Option<f64> {
    let find = |sample: &Sample| {
        sample
            .topics
            .iter()
            .find(|candidate| candidate.name == topic && !candidate.partitions.is_empty())
            .map(TopicOffsets::end_offset)
    };
    let elapsed_ms = later.at_ms - earlier.at_ms;
    if elapsed_ms <= 0 {
        return None;
    }
    let written = find(later)? - find(earlier)?;
    // A recreated topic starts its offsets again; a negative rate would mean nothing.
    Some((written.max(0) as f64) * 1000.0 / elapsed_ms as f64)
}

/// The JSON of `/api/overview`.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// When the latest sample was taken, in milliseconds since the Unix epoch; 0 before the
    /// first sample.
    pub generated_at_ms: i64,
    /// Time between samples, in milliseconds.
    pub sample_interval_ms: u64,
    /// How far back the series reach, in seconds.
    pub history_s: u64,
    /// When a moving group counts as lagging.
    pub thresholds: ThresholdsOverview,
    /// Why the latest Kafka sample failed, if it did.
    pub kafka_error: Option<String>,
    /// Every pipeline group, in pipeline order.
    pub groups: Vec<GroupOverview>,
    /// Every catalog topic.
    pub topics: Vec<TopicOverview>,
    /// The dead-letter topic, once sampled.
    pub dead_letters: Option<DeadLetterOverview>,
    /// Health of every configured service.
    pub services: Vec<ServiceHealth>,
    /// Values over the kept samples, for the charts.
    pub series: Series,
}

impl Overview {
    fn empty(settings: &OverviewSettings) -> Self {
        Self {
            generated_at_ms: 0,
            sample_interval_ms: settings.sample_interval.as_millis() as u64,
            history_s: settings.history.as_secs(),
            thresholds: ThresholdsOverview {
                records: settings.thresholds.records,
                seconds: settings.thresholds.seconds,
            },
            kafka_error: None,
            groups: Vec::new(),
            topics: Vec::new(),
            dead_letters: None,
            services: Vec::new(),
            series: Series::default(),
        }
    }
}

/// Lagging thresholds, as configured.
#[derive(Debug, Clone, Serialize)]
pub struct ThresholdsOverview {
    /// Records of lag above which a moving group is lagging.
    pub records: i64,
    /// Seconds of lag above which a moving group is lagging.
    pub seconds: f64,
}

/// Lag and status of one consumer group.
#[derive(Debug, Clone, Serialize)]
pub struct GroupOverview {
    /// Consumer group id.
    pub group: String,
    /// Topics the group reads.
    pub topics: Vec<String>,
    /// Topics the group reads that have no partitions in the cluster's metadata.
    pub missing_topics: Vec<String>,
    /// Group state as the coordinator reports it.
    pub state: String,
    /// Consumers in the group.
    pub members: usize,
    /// `OK`, `LAGGING`, `STALLED`, `STOPPED` or `UNKNOWN` (a topic is missing); `null` while the samples do not yet span the
    /// status window and offsets have not moved.
    pub status: Option<String>,
    /// Total lag in records.
    pub lag_records: i64,
    /// Largest lag in seconds over the partitions.
    pub lag_seconds: f64,
    /// Lag of every partition.
    pub partitions: Vec<PartitionLagOverview>,
}

/// Lag of one partition for one group.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionLagOverview {
    /// Full topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
    /// Committed offset, `null` when the group committed nothing.
    pub committed: Option<i64>,
    /// Log end offset.
    pub log_end: i64,
    /// Lag in records.
    pub lag_records: i64,
    /// Age of the oldest unprocessed record, in seconds.
    pub lag_seconds: f64,
}

/// Offsets and throughput of one topic.
#[derive(Debug, Clone, Serialize)]
pub struct TopicOverview {
    /// Full topic name.
    pub name: String,
    /// Name in the catalog.
    pub catalog_name: String,
    /// Offsets of every partition.
    pub partitions: Vec<PartitionOffsets>,
    /// Sum of the log end offsets.
    pub end_offset: i64,
    /// Records retention still keeps.
    pub retained_records: i64,
    /// Records written per second since the previous sample.
    pub records_per_second: Option<f64>,
}

/// Counts of the dead-letter topic.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterOverview {
    /// Full topic name.
    pub topic: String,
    /// Dead letters retention still keeps.
    pub retained_records: i64,
    /// Dead letters written since the oldest kept sample.
    pub new_in_history: i64,
    /// Dead letters written per second since the previous sample.
    pub records_per_second: Option<f64>,
}

/// Chart series, each aligned with `at_ms`; `null` marks a gap.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Series {
    /// Sample times, in milliseconds since the Unix epoch.
    pub at_ms: Vec<i64>,
    /// Total lag in records per group.
    pub lag_records: BTreeMap<String, Vec<Option<i64>>>,
    /// Records written per second per topic.
    pub records_per_second: BTreeMap<String, Vec<Option<f64>>>,
}

#[cfg(test)]
mod tests {
    use fieldforce_kafka::lag::PartitionLag;

    use super::*;

    const DEAD_LETTERS: &str = "fieldforce.submissions.deadletter";

    fn settings() -> OverviewSettings {
        OverviewSettings {
            sample_interval: Duration::from_secs(5),
            history: Duration::from_secs(60),
            status_window: Duration::from_secs(10),
            thresholds: Thresholds {
                records: 100,
                seconds: 30.0,
            },
            dead_letter_topic: DEAD_LETTERS.into(),
        }
    }

    fn sample(at_s: i64, committed: i64, log_end: i64, raw_end: i64) -> Sample {
        Sample {
            at_ms: at_s * 1000,
            groups: vec![GroupLag {
                group: "fieldforce-sink".into(),
                state: "Stable".into(),
                members: 1,
                partitions: vec![PartitionLag {
                    topic: "fieldforce.submissions.processed".into(),
                    partition: 0,
                    committed: Some(committed),
                    log_end,
                    lag_records: log_end - committed,
                    lag_seconds: 2.0,
                }],
                missing_topics: Vec::new(),
            }],
            topics: vec![
                TopicOffsets {
                    name: "fieldforce.submissions.raw".into(),
                    catalog_name: "submissions.raw".into(),
                    partitions: vec![PartitionOffsets {
                        partition: 0,
                        log_start: 0,
                        log_end: raw_end,
                    }],
                },
                TopicOffsets {
                    name: DEAD_LETTERS.into(),
                    catalog_name: "submissions.deadletter".into(),
                    partitions: vec![PartitionOffsets {
                        partition: 0,
                        log_start: 0,
                        log_end: at_s,
                    }],
                },
            ],
            services: Vec::new(),
            kafka_error: None,
        }
    }

    #[test]
    fn status_waits_for_the_window() {
        let mut history = History::new(Duration::from_secs(60), Duration::from_secs(5));
        history.push(sample(0, 10, 500, 0));
        history.push(sample(5, 10, 600, 0));
        let overview = history.overview(&settings());
        assert_eq!(overview.groups[0].status, None);

        history.push(sample(10, 10, 700, 0));
        let overview = history.overview(&settings());
        assert_eq!(overview.groups[0].status.as_deref(), Some("STALLED"));
    }

    #[test]
    fn moving_group_over_threshold_is_lagging() {
        let mut history = History::new(Duration::from_secs(60), Duration::from_secs(5));
        history.push(sample(0, 10, 500, 0));
        history.push(sample(5, 40, 600, 0));
        let overview = history.overview(&settings());
        assert_eq!(overview.groups[0].status.as_deref(), Some("LAGGING"));
        assert_eq!(overview.groups[0].lag_records, 560);
    }

    #[test]
    fn throughput_is_the_end_offset_change_per_second() {
        let mut history = History::new(Duration::from_secs(60), Duration::from_secs(5));
        history.push(sample(0, 0, 0, 100));
        history.push(sample(5, 0, 0, 600));
        let overview = history.overview(&settings());
        assert_eq!(overview.topics[0].records_per_second, Some(100.0));
        assert_eq!(
            overview.series.records_per_second["fieldforce.submissions.raw"],
            vec![None, Some(100.0)]
        );
        let dead_letters = overview.dead_letters.unwrap();
        assert_eq!(dead_letters.new_in_history, 5);
        assert_eq!(dead_letters.retained_records, 5);
    }

    #[test]
    fn old_samples_are_dropped() {
        let mut history = History::new(Duration::from_secs(60), Duration::from_secs(5));
        for at_s in (0..=120).step_by(5) {
            history.push(sample(at_s, 0, 0, 0));
        }
        assert_eq!(
            history.len(),
            13,
            "60 s of samples 5 s apart, both ends kept"
        );
        assert_eq!(history.overview(&settings()).series.at_ms[0], 60_000);
    }
}
