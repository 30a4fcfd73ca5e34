//! Draining a backlog: the subjects (the bare loop, each processor, the whole chain), the
//! observer that times a drain and samples resident memory, and the cleanup of a run's
//! topics and groups.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fieldforce_kafka::catalog::{
    Catalog, SUBMISSIONS_DEADLETTER, SUBMISSIONS_LOCATED, SUBMISSIONS_PROCESSED,
    SUBMISSIONS_VALIDATED,
};
use fieldforce_kafka::client::{base_config, consumer_config, producer_config};
use fieldforce_kafka::offsets::{OffsetTracker, Ticket};
use fieldforce_processors::pipeline::{StageSpec, group_id};
use fieldforce_processors::{geo, quality, validate};
use fieldforce_runtime::config::Config;
use fieldforce_runtime::shutdown::{self, Shutdown};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::backlog::Stage;

/// Group of the bare loop, after the run's group prefix.
const BARE_GROUP: &str = "bench-bare";
/// How long a broker request of the observer or the cleanup may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the observer looks for the first output record. Start-up (group join, reading
/// the compacted topics) takes seconds, so this bounds the error on the start of the timing.
const FIRST_OUTPUT_POLL: Duration = Duration::from_millis(10);
/// Maximum wait for the first output record after the subject starts.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Maximum drain time before the run is abandoned.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3_600);

/// The consumer that drains a backlog: the bare loop, one processor or the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// Copies each record of a backlog at the given stage unchanged to the next stage's
    /// topic, with the processors' client settings and offset handling but no decoding,
    /// transform or batching. Over the raw backlog it is the peer of every processor. Over a
    /// later stage's backlog it reads the same records as the processor of that stage.
    Bare(Stage),
    /// The validation processor.
    Validate,
    /// The geo processor.
    Geo,
    /// The quality processor.
    Quality,
    /// The three processors chained in one process, from raw to processed records.
    Chain,
}

impl Subject {
    /// Parses the name used on the command line.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "bare" => Some(Self::Bare(Stage::Raw)),
            "bare-validated" => Some(Self::Bare(Stage::Validated)),
            "bare-located" => Some(Self::Bare(Stage::Located)),
            "validate" => Some(Self::Validate),
            "geo" => Some(Self::Geo),
            "quality" => Some(Self::Quality),
            "chain" => Some(Self::Chain),
            _ => None,
        }
    }

    /// Returns the name used on the command line and in the output.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bare(Stage::Raw) => "bare",
            Self::Bare(Stage::Validated) => "bare-validated",
            Self::Bare(Stage::Located) => "bare-located",
            Self::Validate => "validate",
            Self::Geo => "geo",
            Self::Quality => "quality",
            Self::Chain => "chain",
        }
    }

    /// Returns the stage of the backlog the subject reads.
    pub fn backlog(self) -> Stage {
        match self {
            Self::Bare(stage) => stage,
            Self::Validate | Self::Chain => Stage::Raw,
            Self::Geo => Stage::Validated,
            Self::Quality => Stage::Located,
        }
    }

    /// Returns the consumer group whose committed offsets end the drain, and the catalog
    /// name of the topic it reads.
    fn finishing_group(self, config: &Config) -> (String, &'static str) {
        let processor = |spec: StageSpec| (group_id(config, &spec), spec.input);
        match self {
            Self::Bare(stage) => (bare_group(config), stage.topic()),
            Self::Validate => processor(validate::SPEC),
            Self::Geo => processor(geo::SPEC),
            Self::Quality | Self::Chain => processor(quality::SPEC),
        }
    }

    /// Returns the catalog name of the topic the drained records end up in.
    fn output(self) -> &'static str {
        match self {
            Self::Bare(stage) => bare_output(stage),
            Self::Validate => validate::SPEC.output,
            Self::Geo => geo::SPEC.output,
            Self::Quality | Self::Chain => SUBMISSIONS_PROCESSED,
        }
    }

    /// Returns every consumer group the subject joins.
    fn groups(self, config: &Config) -> Vec<String> {
        match self {
            Self::Bare(_) => vec![bare_group(config)],
            Self::Validate => vec![group_id(config, &validate::SPEC)],
            Self::Geo => vec![group_id(config, &geo::SPEC)],
            Self::Quality => vec![group_id(config, &quality::SPEC)],
            Self::Chain => [validate::SPEC, geo::SPEC, quality::SPEC]
                .iter()
                .map(|spec| group_id(config, spec))
                .collect(),
        }
    }

    /// Starts the subject in this process; it runs until `shutdown`.
    fn spawn(
        self,
        config: &Config,
        shutdown: &Shutdown,
    ) -> Vec<tokio::task::JoinHandle<anyhow::Result<()>>> {
        let start = |runner: fn(Config, Shutdown) -> BoxedRun| {
            tokio::spawn(runner(config.clone(), shutdown.clone()))
        };
        match self {
            Self::Bare(stage) => vec![tokio::spawn(Box::pin(bare_loop(
                config.clone(),
                shutdown.clone(),
                stage,
            )))],
            Self::Validate => vec![start(run_validate)],
            Self::Geo => vec![start(run_geo)],
            Self::Quality => vec![start(run_quality)],
            Self::Chain => vec![start(run_validate), start(run_geo), start(run_quality)],
        }
    }
}

type BoxedRun = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

fn run_validate(config: Config, shutdown: Shutdown) -> BoxedRun {
    Box::pin(async move { Ok(validate::run(config, shutdown).await?) })
}

fn run_geo(config: Config, shutdown: Shutdown) -> BoxedRun {
    Box::pin(async move { Ok(geo::run(config, shutdown).await?) })
}

fn run_quality(config: Config, shutdown: Shutdown) -> BoxedRun {
    Box::pin(async move { Ok(quality::run(config, shutdown).await?) })
}

/// Returns the catalog name of the topic the bare loop copies a stage's records to: the one the
/// processor of that stage writes.
fn bare_output(stage: Stage) -> &'static str {
    match stage {
        Stage::Raw => SUBMISSIONS_VALIDATED,
        Stage::Validated => SUBMISSIONS_LOCATED,
        Stage::Located => SUBMISSIONS_PROCESSED,
    }
}

fn bare_group(config: &Config) -> String {
    format!("{}{BARE_GROUP}", config.processors.group_id_prefix)
}

/// The bare consume-and-produce loop. It uses the processors' consumer and producer
/// settings, caps records in flight at `processors.max_in_flight_records` as they do, and
/// stores an offset only after Kafka acknowledged the copy and every earlier record of its
/// partition, for the background commit to send. It leaves out what the processors add:
/// decoding, the transform, rayon batches, spans, and pausing partitions.
async fn bare_loop(config: Config, mut shutdown: Shutdown, stage: Stage) -> anyhow::Result<()> {
    let consumer: StreamConsumer = consumer_config(&config.kafka, &bare_group(&config)).create()?;
    consumer.subscribe(&[&config.kafka.topic(stage.topic())])?;
    let producer: FutureProducer = producer_config(&config.kafka).create()?;
    let output: Arc<str> = config.kafka.topic(bare_output(stage)).into();
    let in_flight_max = config.processors.max_in_flight_records;
    let mut tracker = OffsetTracker::new();
    let mut deliveries = FuturesUnordered::new();

    loop {
        let room = deliveries.len() < in_flight_max;
        tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            Some(delivered) = deliveries.next(), if !deliveries.is_empty() => {
                store_offset(&consumer, &mut tracker, delivered?)?;
            }
            received = consumer.recv(), if room => {
                let message = received?.detach();
                let ticket = tracker.start(
                    (message.topic().to_owned(), message.partition()),
                    message.offset(),
                    message.timestamp().to_millis(),
                );
                let producer = producer.clone();
                let output = Arc::clone(&output);
                deliveries.push(async move {
                    let mut record = FutureRecord::to(&output);
                    if let Some(key) = message.key() {
                        record = record.key(key);
                    }
                    if let Some(value) = message.payload() {
                        record = record.payload(value);
                    }
                    if let Some(headers) = message.headers() {
                        record = record.headers(headers.clone());
                    }
                    if let Some(timestamp) = message.timestamp().to_millis() {
                        record = record.timestamp(timestamp);
                    }
                    producer
                        .send(record, Timeout::After(Duration::from_secs(5)))
                        .await
                        .map(|_| ticket)
                        .map_err(|(error, _)| error)
                });
            }
        }
    }

    while let Some(delivered) = deliveries.next().await {
        store_offset(&consumer, &mut tracker, delivered?)?;
    }
    // A sync commit waits for the broker, which a bench may do on its async worker.
    match tokio::task::block_in_place(|| consumer.commit_consumer_state(CommitMode::Sync)) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

fn store_offset(
    consumer: &StreamConsumer,
    tracker: &mut OffsetTracker,
    ticket: Ticket,
) -> anyhow::Result<()> {
    let Some(next_offset) = tracker.complete(&ticket) else {
        return Ok(());
    };
    let mut list = TopicPartitionList::new();
    // The tracker returns the next offset to read, which is what Kafka commits.
    list.add_partition_offset(
        &ticket.partition.0,
        ticket.partition.1,
        Offset::Offset(next_offset),
    )?;
    consumer.store_offsets(&list)?;
    Ok(())
}

/// One resident-memory sample taken while a backlog drains.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Time since the first output record.
    pub at: Duration,
    /// Input records committed by the finishing group.
    pub committed: i64,
    /// VmRSS of this process, in KiB.
    pub rss_kib: u64,
}

/// The timing and memory of one drain.
#[derive(Debug, Clone)]
pub struct Drain {
    /// Records in the backlog.
    pub records: usize,
    /// From starting the subject to the first output record: group join, reading the
    /// compacted topics, the first fetch.
    pub start_up: Duration,
    /// From the first output record until every output record was acknowledged.
    pub to_last_output: Duration,
    /// From the first output record until the finishing group's committed offsets reached
    /// the end of the backlog. This is the timed part.
    pub to_committed: Duration,
    /// VmRSS of this process just before the subject started, in KiB.
    pub rss_before_kib: u64,
    /// Samples taken every sampling interval during the timed part.
    pub samples: Vec<Sample>,
}

impl Drain {
    /// Returns records per second over the timed part.
    pub fn rate(&self) -> f64 {
        self.records as f64 / self.to_committed.as_secs_f64()
    }

    /// Returns records per second up to the acknowledgement of the last output record, which
    /// leaves out the wait for the next background commit.
    pub fn rate_to_last_output(&self) -> f64 {
        self.records as f64 / self.to_last_output.as_secs_f64()
    }
}

/// Runs `subject` over a backlog of `records` already in Kafka until its finishing group has
/// committed them all, sampling VmRSS every `sample_interval`, then stops it and checks that
/// every record came out once and none was dead-lettered.
pub async fn drain(
    config: &Config,
    subject: Subject,
    records: usize,
    sample_interval: Duration,
) -> anyhow::Result<Drain> {
    let rss_before_kib = resident_kib();
    let (trigger, shutdown) = shutdown::channel();
    let started = Instant::now();
    let running = subject.spawn(config, &shutdown);
    let observed = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            observe(&config, subject, records as i64, started, sample_interval)
        })
        .await?
    };

    trigger.trigger();
    for handle in running {
        handle
            .await?
            .with_context(|| format!("{} stopped with an error", subject.name()))?;
    }
    let (start_up, to_last_output, to_committed, samples) = observed?;

    let reader = reader(config, "bench-check")?;
    let output = config.kafka.topic(subject.output());
    let written = tokio::task::block_in_place(|| end_total(&reader, &output))?;
    let dead_letters = tokio::task::block_in_place(|| {
        end_total(&reader, &config.kafka.topic(SUBMISSIONS_DEADLETTER))
    })?;
    if written != records as i64 || dead_letters != 0 {
        bail!(
            "{} wrote {written} records to {output} and {dead_letters} to the dead-letter topic \
             for a backlog of {records}",
            subject.name()
        );
    }
    Ok(Drain {
        records,
        start_up,
        to_last_output,
        to_committed,
        rss_before_kib,
        samples,
    })
}

type Observed = (Duration, Duration, Duration, Vec<Sample>);

/// Waits for the first output record, then samples committed offsets, output and VmRSS until
/// the finishing group has committed `records` input records. Runs on a blocking thread,
/// because every request waits for the broker.
#[allow(
    clippy::disallowed_methods,
    reason = "runs on a blocking thread from spawn_blocking, never on an async worker"
)]
fn observe(
    config: &Config,
    subject: Subject,
    records: i64,
    started: Instant,
    sample_interval: Duration,
) -> anyhow::Result<Observed> {
    let (group, input) = subject.finishing_group(config);
    let input = config.kafka.topic(input);
    let output = config.kafka.topic(subject.output());
    // The group id only addresses the committed offsets; this consumer never subscribes, so
    // it never joins the group.
    let offsets = reader(config, &group)?;

    while end_total(&offsets, &output)? == 0 {
        if started.elapsed() > START_TIMEOUT {
            bail!("{} wrote nothing in {START_TIMEOUT:?}", subject.name());
        }
        std::thread::sleep(FIRST_OUTPUT_POLL);
    }
    let first_output = Instant::now();
    let start_up = first_output - started;

    let mut samples = Vec::new();
    let mut to_last_output = None;
    loop {
        std::thread::sleep(sample_interval);
        let committed = committed_total(&offsets, &input)?;
        samples.push(Sample {
            at: first_output.elapsed(),
            committed,
            rss_kib: resident_kib(),
        });
        if to_last_output.is_none() && end_total(&offsets, &output)? >= records {
            to_last_output = Some(first_output.elapsed());
        }
        if committed >= records {
            let to_committed = first_output.elapsed();
            return Ok((
                start_up,
                to_last_output.unwrap_or(to_committed),
                to_committed,
                samples,
            ));
        }
        if first_output.elapsed() > DRAIN_TIMEOUT {
            bail!(
                "{} committed {committed} of {records} records in {DRAIN_TIMEOUT:?}",
                subject.name()
            );
        }
    }
}

fn reader(config: &Config, group: &str) -> anyhow::Result<BaseConsumer> {
    Ok(base_config(&config.kafka)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?)
}

fn partitions(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<Vec<i32>> {
    let metadata = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|found| found.partitions().iter().map(|partition| partition.id()))
        .collect();
    if partitions.is_empty() {
        bail!("topic {topic} has no partitions");
    }
    Ok(partitions)
}

/// Returns the sum of the high watermarks of a topic: the records written to it, as long as
/// nothing was deleted.
fn end_total(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<i64> {
    let mut total = 0;
    for partition in partitions(consumer, topic)? {
        let (_, high) = consumer.fetch_watermarks(topic, partition, REQUEST_TIMEOUT)?;
        total += high;
    }
    Ok(total)
}

/// Returns the sum of the consumer's group's committed offsets on a topic, counting a
/// partition without a commit as 0.
fn committed_total(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<i64> {
    let mut list = TopicPartitionList::new();
    for partition in partitions(consumer, topic)? {
        list.add_partition(topic, partition);
    }
    let committed = consumer.committed_offsets(list, REQUEST_TIMEOUT)?;
    Ok(committed
        .elements()
        .iter()
        .map(|element| match element.offset() {
            Offset::Offset(offset) => offset,
            _ => 0,
        })
        .sum())
}

/// Returns this process's resident set size in KiB, from `/proc/self/status`.
pub fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|value| value.split_whitespace().next())
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

/// Deletes every catalog topic under the run's prefix and the subject's groups, so that runs
/// leave nothing on the shared broker's disk.
pub async fn clean_up(config: &Config, subject: Subject) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = base_config(&config.kafka).create()?;
    let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
    let groups = subject.groups(config);
    let group_names: Vec<&str> = groups.iter().map(String::as_str).collect();
    for result in admin.delete_groups(&group_names, &options).await? {
        if let Err((group, code)) = result
            && code != RDKafkaErrorCode::GroupIdNotFound
        {
            eprintln!("deleting group {group} failed: {code}");
        }
    }
    let topics: Vec<String> = Catalog::embedded()
        .topics
        .iter()
        .map(|spec| config.kafka.topic(&spec.name))
        .collect();
    let topic_names: Vec<&str> = topics.iter().map(String::as_str).collect();
    for result in admin.delete_topics(&topic_names, &options).await? {
        if let Err((topic, code)) = result {
            eprintln!("deleting topic {topic} failed: {code}");
        }
    }
    Ok(())
}
