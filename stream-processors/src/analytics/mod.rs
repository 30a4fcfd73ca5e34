//! The analytics aggregator: reads `submissions.processed` in its own consumer group and keeps
//! the daily figures per project and per enumerator in MongoDB (`analytics_daily`, shape in
//! [`fieldforce_schemas::analytics`]).
//!
//! The figures stay exact under restarts by idempotent recomputation rather than by counting.
//! Each batch stores one contribution per submission ([`figures::Contribution`], latest
//! revision wins), then recomputes every daily document the batch touched from all the stored
//! contributions of its day, and only then stores the Kafka offsets. Replaying any suffix of
//! the topic after a crash therefore converges to the same documents. A replayed record finds
//! its contribution already stored and only triggers the same recomputation again. An edit
//! replaces its submission's contribution, so it moves the submission to its new day or
//! enumerator instead of adding it twice. The alternative, Kafka transactions with a
//! changelog topic, makes the offsets and the changelog atomic, but not the write to MongoDB,
//! which would still need this idempotence to survive a crash between the two.
//!
//! - [`figures`]: a submission's contribution, and the figures of a set of contributions.
//! - [`store`]: the collections, the revision rule and the recomputation.

pub mod figures;
pub mod store;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use fieldforce_kafka::catalog::SUBMISSIONS_PROCESSED;
use fieldforce_kafka::client::consumer_config;
use fieldforce_kafka::offsets::{OffsetTracker, Ticket, TopicPartition};
use fieldforce_runtime::config::{AnalyticsConfig, Config};
use fieldforce_runtime::shutdown::Shutdown;
use fieldforce_schemas::submission::ProcessedSubmission;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::ProcessorError;
use crate::metrics::{AnalyticsMetrics, Metrics};
use crate::pipeline::{GroupConsumer, RebalanceContext, decode_value, fill_batch};
use figures::{Contribution, contribution};
use store::{Applied, Store};

/// Consumer group of the aggregator, after `processors.group_id_prefix`.
pub const GROUP_ID: &str = "fieldforce-analytics";

/// Stage name in metric labels and logs.
pub const STAGE: &str = "analytics";

/// Runs the aggregator until shutdown, then lets the open batch finish within the drain
/// deadline and commits.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), ProcessorError> {
    let group_id = format!("{}{GROUP_ID}", config.processors.group_id_prefix);
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry, STAGE, &group_id);
    let counters = AnalyticsMetrics::register(&mut registry);
    let ready = crate::admin::start(&config, registry, shutdown.clone()).await?;
    let settings = &config.analytics;

    let store = Store::connect(&config.mongodb, settings)
        .await
        .map_err(ProcessorError::AnalyticsStore)?;
    if !ensure_indexes(&store, settings, shutdown.clone()).await {
        return Ok(());
    }

    let tracker = Arc::new(Mutex::new(OffsetTracker::new()));
    let context = RebalanceContext::new(Arc::clone(&tracker), metrics.clone(), STAGE);
    let consumer: Arc<GroupConsumer> =
        Arc::new(consumer_config(&config.kafka, &group_id).create_with_context(context)?);
    let input = config.kafka.topic(SUBMISSIONS_PROCESSED);
    consumer.subscribe(&[&input])?;
    ready.set();
    tracing::info!(stage = STAGE, group = %group_id, input = %input, database = %config.mongodb.database, "aggregator started");

    let linger = Duration::from_millis(settings.batch_linger_ms);
    let mut stopping = shutdown.clone();
    loop {
        let first = tokio::select! {
            biased;
            _ = stopping.wait() => break,
            first = consumer.recv() => first,
        };
        let first = match first {
            Ok(message) => message.detach(),
            Err(error) => {
                tracing::warn!(stage = STAGE, %error, "consume failed, continuing");
                continue;
            }
        };
        let batch = fill_batch(&consumer, first, settings.batch_max_records, linger, STAGE).await;
        metrics.records_in.inc_by(batch.len() as u64);
        metrics.batch_size.observe(batch.len() as f64);
        metrics.in_flight.set(batch.len() as i64);
        let tickets: Vec<Ticket> = {
            let mut tracker = tracker.lock().unwrap_or_else(PoisonError::into_inner);
            batch
                .iter()
                .map(|message| {
                    tracker.start(
                        (message.topic().to_owned(), message.partition()),
                        message.offset(),
                        message.timestamp().to_millis(),
                    )
                })
                .collect()
        };

        let started = Instant::now();
        let contributions = contributions(batch, &counters).await?;
        // Cancelling the apply at the drain deadline is safe, because the next consumer of
        // these records writes the same documents again.
        let applied = tokio::select! {
            applied = apply_with_retry(&store, contributions, settings, &counters) => applied,
            _ = drain_deadline(shutdown.clone(), settings.shutdown_drain_timeout_ms) => {
                tracing::warn!(stage = STAGE, records = tickets.len(), "open batch not applied before the drain deadline, it will be read again");
                break;
            }
        };
        metrics
            .processing_seconds
            .observe(started.elapsed().as_secs_f64());
        counters
            .contributions_written
            .inc_by(applied.contributions_written);
        counters.daily_written.inc_by(applied.daily_written);
        counters.races.inc_by(applied.races);
        store_offsets(&consumer, &tracker, &tickets);
        metrics.in_flight.set(0);
    }

    // The final commit blocks on a broker round trip.
    let committing = Arc::clone(&consumer);
    let committed =
        tokio::task::spawn_blocking(move || committing.commit_consumer_state(CommitMode::Sync))
            .await
            .map_err(|_| ProcessorError::TaskPanicked)?;
    match committed {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(error) => {
            metrics.commit_failures.inc();
            tracing::warn!(stage = STAGE, %error, "final commit failed, the next run replays from the last commit");
        }
    }
    tracing::info!(stage = STAGE, "aggregator stopped");
    Ok(())
}

/// Creates the indexes, retrying while the store is unreachable. Returns false when shutdown
/// started first.
async fn ensure_indexes(store: &Store, settings: &AnalyticsConfig, mut shutdown: Shutdown) -> bool {
    let mut backoff = Duration::from_millis(settings.retry_initial_backoff_ms);
    loop {
        match store.ensure_indexes().await {
            Ok(()) => return true,
            Err(error) => {
                tracing::warn!(stage = STAGE, %error, "creating indexes failed, retrying");
            }
        }
        tokio::select! {
            _ = shutdown.wait() => return false,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_millis(settings.retry_max_backoff_ms));
    }
}

/// Decodes a batch into contributions on a blocking thread, because JSON decoding of a
/// thousand records takes milliseconds. A record that is not a processed submission is
/// skipped: the sink reads the same record and dead-letters it, so a second dead-letter from
/// here would only duplicate it.
async fn contributions(
    batch: Vec<OwnedMessage>,
    counters: &AnalyticsMetrics,
) -> Result<Vec<Contribution>, ProcessorError> {
    let skipped = counters.records_skipped.clone();
    tokio::task::spawn_blocking(move || {
        batch
            .iter()
            .filter_map(
                |message| match decode_value::<ProcessedSubmission>(message) {
                    Ok(processed) => Some(contribution(&processed)),
                    Err(reason) => {
                        skipped.inc();
                        tracing::warn!(
                            stage = STAGE,
                            topic = message.topic(),
                            partition = message.partition(),
                            offset = message.offset(),
                            code = reason.code,
                            detail = %reason.detail,
                            "record skipped"
                        );
                        None
                    }
                },
            )
            .collect()
    })
    .await
    .map_err(|_| ProcessorError::TaskPanicked)
}

/// Applies a batch, retrying with capped exponential backoff until the store accepts it.
///
/// NOTE: the consumer is not polled while a batch is retried. A store outage longer than
/// librdkafka's `max.poll.interval.ms` (300 s by default) makes this member leave the group.
/// It rejoins once the batch is applied, and the records it held are replayed harmlessly.
async fn apply_with_retry(
    store: &Store,
    contributions: Vec<Contribution>,
    settings: &AnalyticsConfig,
    counters: &AnalyticsMetrics,
) -> Applied {
    let mut backoff = Duration::from_millis(settings.retry_initial_backoff_ms);
    let max_backoff = Duration::from_millis(settings.retry_max_backoff_ms);
    loop {
        match store.apply(contributions.clone()).await {
            Ok(applied) => return applied,
            Err(error) => {
                counters.batch_retries.inc();
                tracing::warn!(
                    stage = STAGE,
                    %error,
                    contributions = contributions.len(),
                    backoff_ms = backoff.as_millis() as u64,
                    "applying batch failed, retrying"
                );
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(max_backoff);
    }
}

/// Completes when shutdown started and the drain deadline passed since.
async fn drain_deadline(mut shutdown: Shutdown, timeout_ms: u64) {
    shutdown.wait().await;
    tokio::time::sleep(Duration::from_millis(timeout_ms)).await;
}

/// Completes the tickets of an applied batch and stores the offsets that moved, for the
/// background auto-commit to send.
fn store_offsets(consumer: &GroupConsumer, tracker: &Mutex<OffsetTracker>, tickets: &[Ticket]) {
    let mut moved: BTreeMap<TopicPartition, i64> = BTreeMap::new();
    {
        let mut tracker = tracker.lock().unwrap_or_else(PoisonError::into_inner);
        for ticket in tickets {
            if let Some(next) = tracker.complete(ticket) {
                moved.insert(ticket.partition.clone(), next);
            }
        }
    }
    if moved.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::with_capacity(moved.len());
    for ((topic, partition), next) in moved {
        // The tracker returns the next offset to read (last applied + 1), which is what
        // Kafka commits.
        if let Err(error) = list.add_partition_offset(&topic, partition, Offset::Offset(next)) {
            tracing::warn!(stage = STAGE, topic, partition, %error, "building the offset list failed");
        }
    }
    if let Err(error) = consumer.store_offsets(&list) {
        // A partition was revoked since the batch was read; its new owner replays it.
        tracing::debug!(stage = STAGE, %error, "storing offsets failed");
    }
}
