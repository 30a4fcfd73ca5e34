//! The consume, transform, produce loop every processor runs.
//!
//! Records are read from the input topic with a consumer group (cooperative-sticky, offsets
//! stored by this code and committed in the background). They are transformed in small
//! batches on the rayon pool, so the async runtime never blocks, and produced to the output
//! topic. Several batches are transformed at once while the loop reads the next ones and
//! produces finished ones, in the order the batches were read. A record that cannot be
//! transformed is produced to the dead-letter topic instead. Either way the
//! record's offset is stored only after Kafka acknowledged that delivery, and only once every
//! earlier record of its partition is acknowledged too ([`OffsetTracker`]). A failed delivery
//! is retried with backoff while its partition is paused; in-flight records are capped per
//! partition and in total, so a slow broker slows intake instead of growing memory.
//!
//! Each record gets a span (DEBUG, so its callsite is disabled while trace export is off)
//! whose parent is the trace context in the record's headers. The transform runs inside it,
//! its context goes into the output record's headers, and it ends when Kafka acknowledges
//! the output or the dead-letter.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use fieldforce_kafka::catalog::SUBMISSIONS_DEADLETTER;
use fieldforce_kafka::client::{consumer_config, producer_config};
use fieldforce_kafka::dead_letter::dead_letter_record;
use fieldforce_kafka::lag::consumer::ConsumerLagSampler;
use fieldforce_kafka::offsets::{OffsetTracker, Ticket, TopicPartition};
use fieldforce_kafka::trace_context;
use fieldforce_runtime::config::Config;
use fieldforce_runtime::shutdown::Shutdown;
use fieldforce_schemas::codec::{Contract, JSON_CONTENT_TYPE, decode};
use fieldforce_schemas::headers;
use futures::StreamExt;
use futures::stream::{FuturesOrdered, FuturesUnordered};
use rayon::prelude::*;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tracing::Span;

use crate::ProcessorError;
use crate::error::Unprocessable;
use crate::metrics::Metrics;

/// How long `send` may wait for room in the producer queue before the attempt fails and is
/// retried with backoff.
const ENQUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// A record transformation run on the rayon pool.
pub trait Transform: Send + Sync + 'static {
    /// Turns one input record into its output record, or returns why it cannot.
    fn transform(&self, message: &OwnedMessage) -> Result<Output, Unprocessable>;
}

/// The output record of one input record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Record key: the submission id.
    pub key: String,
    /// Record value.
    pub value: Vec<u8>,
    /// Value of the schema header, such as `processed-submission/1`.
    pub schema: String,
}

/// Topics, consumer group and reporting name of a stage.
#[derive(Debug, Clone, Copy)]
pub struct StageSpec {
    /// Stage name used in dead-letter headers, metric labels and logs.
    pub stage: &'static str,
    /// Service name on the stage's spans, in the `fieldforce.service` attribute.
    pub service: &'static str,
    /// Consumer group.
    pub group_id: &'static str,
    /// Catalog name of the input topic.
    pub input: &'static str,
    /// Catalog name of the output topic.
    pub output: &'static str,
}

/// Returns the consumer group id of a stage in this deployment: the configured prefix, then
/// the stage's group.
pub fn group_id(config: &Config, spec: &StageSpec) -> String {
    format!("{}{}", config.processors.group_id_prefix, spec.group_id)
}

/// Decodes a record value of a contract, or classifies it as undecodable.
pub fn decode_value<T: Contract>(message: &OwnedMessage) -> Result<T, Unprocessable> {
    decode::<T>(crate::record::value_of(message)?).map_err(|error| Unprocessable {
        code: "undecodable",
        detail: error.to_string(),
    })
}

/// Consumer context that keeps the offset tracker in step with the group's assignment.
pub(crate) struct RebalanceContext {
    pub(crate) tracker: Arc<Mutex<OffsetTracker>>,
    pub(crate) metrics: Metrics,
    pub(crate) stage: &'static str,
}

impl RebalanceContext {
    pub(crate) fn new(
        tracker: Arc<Mutex<OffsetTracker>>,
        metrics: Metrics,
        stage: &'static str,
    ) -> Self {
        Self {
            tracker,
            metrics,
            stage,
        }
    }
}

impl ClientContext for RebalanceContext {}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else {
            return;
        };
        self.metrics.rebalances.inc();
        // Offsets stored so far are durable output; commit them before another member takes
        // the partitions over, so it does not replay them.
        if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
            // NoOffset means nothing was stored since the last commit.
            if !matches!(
                error,
                KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)
            ) {
                self.metrics.commit_failures.inc();
                tracing::warn!(stage = self.stage, %error, "commit on revoke failed");
            }
        }
        let mut tracker = self.tracker.lock().unwrap_or_else(PoisonError::into_inner);
        for element in revoked.elements() {
            tracing::info!(
                stage = self.stage,
                topic = element.topic(),
                partition = element.partition(),
                "partition revoked"
            );
            tracker.revoke(&(element.topic().to_owned(), element.partition()));
            self.metrics
                .lag
                .revoke(element.topic(), element.partition());
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(assigned) = rebalance else {
            return;
        };
        self.metrics.rebalances.inc();
        let mut tracker = self.tracker.lock().unwrap_or_else(PoisonError::into_inner);
        for element in assigned.elements() {
            tracing::info!(
                stage = self.stage,
                topic = element.topic(),
                partition = element.partition(),
                "partition assigned"
            );
            tracker.assign((element.topic().to_owned(), element.partition()));
            self.metrics
                .lag
                .assign(element.topic(), element.partition());
        }
    }

    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => {
                self.metrics.commit_failures.inc();
                tracing::warn!(stage = self.stage, %error, "background offset commit failed");
            }
        }
    }
}

pub(crate) type GroupConsumer = StreamConsumer<RebalanceContext>;

/// A record ready to produce: the processed output or a dead-letter record.
#[derive(Debug, Clone)]
struct Pending {
    topic: Arc<str>,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    /// Given to the producer with each attempt and taken back from a failed one, so that no
    /// record's headers are copied.
    headers: Option<OwnedHeaders>,
    timestamp_ms: Option<i64>,
    dead_letter: bool,
    /// The input record, kept to dead-letter it if its output is rejected for good.
    original: Arc<OwnedMessage>,
    /// The record's span, which ends when this record is acknowledged.
    span: Span,
}

/// Outcome of one delivery attempt.
enum Delivery {
    Acknowledged {
        ticket: Ticket,
        dead_letter: bool,
    },
    Failed {
        ticket: Ticket,
        /// Boxed, because a failure is rare and the record is far larger than an
        /// acknowledgement.
        pending: Box<Pending>,
        attempt: u32,
        error: KafkaError,
    },
}

async fn deliver(
    producer: FutureProducer,
    mut pending: Pending,
    ticket: Ticket,
    attempt: u32,
    backoff: Duration,
) -> Delivery {
    if !backoff.is_zero() {
        tokio::time::sleep(backoff).await;
    }
    let headers = pending.headers.take();
    let mut record = FutureRecord::to(&pending.topic);
    if let Some(headers) = headers {
        record = record.headers(headers);
    }
    if let Some(key) = &pending.key {
        record = record.key(key);
    }
    if let Some(value) = &pending.value {
        record = record.payload(value);
    }
    if let Some(timestamp) = pending.timestamp_ms {
        record = record.timestamp(timestamp);
    }
    let result = producer.send(record, Timeout::After(ENQUEUE_TIMEOUT)).await;
    match result {
        Ok(_) => {
            let outcome = if pending.dead_letter {
                "dead_lettered"
            } else {
                "produced"
            };
            pending.span.record("fieldforce.outcome", outcome);
            Delivery::Acknowledged {
                ticket,
                dead_letter: pending.dead_letter,
            }
        }
        Err((error, mut returned)) => {
            pending.headers = returned.detach_headers();
            Delivery::Failed {
                ticket,
                pending: Box::new(pending),
                attempt,
                error,
            }
        }
    }
}

/// Whether the broker will reject the record whatever the number of attempts.
fn is_permanent(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidMessageSize
        )
    )
}

/// Per-partition counts that decide intake and pausing.
#[derive(Debug, Default)]
struct Flow {
    /// Records read and not yet acknowledged, in a transform or a delivery.
    outstanding: usize,
    in_flight: HashMap<TopicPartition, usize>,
    retrying: HashMap<TopicPartition, usize>,
    paused: HashSet<TopicPartition>,
}

impl Flow {
    /// Counts a record read from `partition` as in flight until it is acknowledged.
    fn take(&mut self, partition: &TopicPartition) {
        self.outstanding += 1;
        match self.in_flight.get_mut(partition) {
            Some(count) => *count += 1,
            None => {
                self.in_flight.insert(partition.clone(), 1);
            }
        }
    }

    /// Returns whether a partition that is still being read has `per_partition_max` records
    /// in flight. Intake then waits for deliveries rather than pausing the partition, because
    /// librdkafka drops the records it prefetched for a paused partition and fetches them
    /// again on resume (https://github.com/confluentinc/librdkafka/issues/5343). Pausing at
    /// this cap made a processor drain a backlog about 1.6 times slower.
    fn partition_full(&self, per_partition_max: usize) -> bool {
        self.in_flight.iter().any(|(partition, count)| {
            *count >= per_partition_max && !self.paused.contains(partition)
        })
    }
}

/// Runs one stage until shutdown: consume, transform on rayon, produce, store offsets.
pub async fn run<T: Transform>(
    config: &Config,
    spec: StageSpec,
    transform: Arc<T>,
    metrics: Metrics,
    mut shutdown: Shutdown,
) -> Result<(), ProcessorError> {
    let settings = &config.processors;
    let input = config.kafka.topic(spec.input);
    let output: Arc<str> = config.kafka.topic(spec.output).into();
    let dead_letter_topic: Arc<str> = config.kafka.topic(SUBMISSIONS_DEADLETTER).into();

    let group_id = group_id(config, &spec);
    let tracker = Arc::new(Mutex::new(OffsetTracker::new()));
    let context = RebalanceContext {
        tracker: Arc::clone(&tracker),
        metrics: metrics.clone(),
        stage: spec.stage,
    };
    let consumer: Arc<GroupConsumer> =
        Arc::new(consumer_config(&config.kafka, &group_id).create_with_context(context)?);
    consumer.subscribe(&[&input])?;
    ConsumerLagSampler::new(
        &config.kafka,
        &consumer,
        Arc::clone(&tracker),
        metrics.lag.clone(),
    )?
    .spawn(
        Duration::from_millis(settings.lag_sample_interval_ms),
        shutdown.clone(),
    );
    let producer: FutureProducer = producer_config(&config.kafka).create()?;
    tracing::info!(stage = spec.stage, group = %group_id, input = %input, output = %output, "processor started");

    let batch_max = settings.batch_max_records;
    let linger = Duration::from_millis(settings.batch_linger_ms);
    let backoff_initial = Duration::from_millis(settings.retry_backoff_initial_ms);
    let backoff_max = Duration::from_millis(settings.retry_backoff_max_ms);
    let mut deliveries = FuturesUnordered::new();
    // Batches on the rayon pool, yielded in the order they were read, so that the outputs of
    // a partition are produced in its order.
    let mut transforming = FuturesOrdered::new();
    let mut flow = Flow::default();

    loop {
        let room = flow.outstanding + batch_max <= settings.max_in_flight_records
            && transforming.len() < settings.max_batches_in_transform
            && !flow.partition_full(settings.max_in_flight_per_partition);
        tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            Some(delivery) = deliveries.next(), if !deliveries.is_empty() => {
                match delivery {
                    Delivery::Acknowledged { ticket, dead_letter } => {
                        acknowledge(&consumer, &tracker, &metrics, &mut flow, ticket, dead_letter);
                    }
                    Delivery::Failed { ticket, pending, attempt, error } => {
                        let (pending, backoff) = plan_retry(spec.stage, &dead_letter_topic, *pending, attempt, &error, backoff_initial, backoff_max);
                        metrics.produce_retries.inc();
                        *flow.retrying.entry(ticket.partition.clone()).or_default() += 1;
                        pause(&consumer, &mut flow, &ticket.partition);
                        deliveries.push(deliver(producer.clone(), pending, ticket, attempt + 1, backoff));
                    }
                }
            }
            Some(transformed) = transforming.next(), if !transforming.is_empty() => {
                let transformed: Transformed = transformed?;
                metrics.processing_seconds.observe(transformed.took.as_secs_f64());
                for (pending, ticket) in outputs(&spec, &output, &dead_letter_topic, transformed) {
                    deliveries.push(deliver(producer.clone(), pending, ticket, 0, Duration::ZERO));
                }
                metrics.in_flight.set(flow.outstanding as i64);
            }
            first = consumer.recv(), if room => {
                let first = match first {
                    Ok(message) => message.detach(),
                    Err(error) => {
                        tracing::warn!(stage = spec.stage, %error, "consume failed, continuing");
                        continue;
                    }
                };
                let batch = fill_batch(&consumer, first, batch_max, linger, spec.stage).await;
                metrics.records_in.inc_by(batch.len() as u64);
                metrics.batch_size.observe(batch.len() as f64);

                let tickets: Vec<Ticket> = {
                    let mut tracker = tracker.lock().unwrap_or_else(PoisonError::into_inner);
                    batch
                        .iter()
                        .map(|message| tracker.start((message.topic().to_owned(), message.partition()), message.offset(), message.timestamp().to_millis()))
                        .collect()
                };
                for ticket in &tickets {
                    flow.take(&ticket.partition);
                }
                metrics.in_flight.set(flow.outstanding as i64);

                let spans = batch.iter().map(|message| record_span(&spec, message)).collect();
                transforming.push_back(transform_batch(Arc::clone(&transform), batch, spans, tickets));
            }
        }
    }

    // Batches already read are transformed and produced before the drain, so that their
    // offsets can be stored. A batch's transform takes milliseconds.
    while let Some(transformed) = transforming.next().await {
        for (pending, ticket) in outputs(&spec, &output, &dead_letter_topic, transformed?) {
            deliveries.push(deliver(
                producer.clone(),
                pending,
                ticket,
                0,
                Duration::ZERO,
            ));
        }
    }

    drain(
        &consumer,
        &tracker,
        &metrics,
        &mut flow,
        deliveries,
        settings.shutdown_drain_timeout_ms,
        spec.stage,
    )
    .await;

    commit_final(&consumer, &metrics, spec.stage).await?;
    tracing::info!(stage = spec.stage, "processor stopped");
    Ok(())
}

/// Commits the stored offsets before the consumer leaves its group.
pub(crate) async fn commit_final(
    consumer: &Arc<GroupConsumer>,
    metrics: &Metrics,
    stage: &'static str,
) -> Result<(), ProcessorError> {
    // The final commit blocks on a broker round trip.
    let committing = Arc::clone(consumer);
    let committed =
        tokio::task::spawn_blocking(move || committing.commit_consumer_state(CommitMode::Sync))
            .await
            .map_err(|_| ProcessorError::TaskPanicked)?;
    match committed {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(error) => {
            metrics.commit_failures.inc();
            tracing::warn!(stage, %error, "final commit failed, the next run replays from the last commit");
        }
    }
    Ok(())
}

/// Collects records that are already fetched, up to `batch_max`, waiting at most `linger`.
pub(crate) async fn fill_batch(
    consumer: &GroupConsumer,
    first: OwnedMessage,
    batch_max: usize,
    linger: Duration,
    stage: &'static str,
) -> Vec<OwnedMessage> {
    let mut batch = Vec::with_capacity(batch_max);
    batch.push(first);
    let deadline = tokio::time::Instant::now() + linger;
    while batch.len() < batch_max {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(message)) => batch.push(message.detach()),
            Ok(Err(error)) => {
                tracing::warn!(stage, %error, "consume failed, continuing");
                break;
            }
            Err(_) => break,
        }
    }
    batch
}

/// Creates the span of one record, a child of the trace context in its headers. It is a
/// root (`parent: None`) otherwise, so a partner record without context starts a new trace.
fn record_span(spec: &StageSpec, message: &OwnedMessage) -> Span {
    let span = tracing::debug_span!(
        parent: None,
        "process record",
        otel.name = %format_args!("process {}", message.topic()),
        otel.kind = "consumer",
        fieldforce.service = spec.service,
        fieldforce.stage = spec.stage,
        fieldforce.outcome = tracing::field::Empty,
        messaging.system = "kafka",
        messaging.destination.name = message.topic(),
        messaging.destination.partition.id = message.partition(),
        messaging.kafka.offset = message.offset(),
    );
    trace_context::set_parent(&span, message.headers());
    span
}

/// A transformed batch: each input record with its span, the transform's result and its
/// offset ticket.
struct Transformed {
    batch: Vec<OwnedMessage>,
    spans: Vec<Span>,
    results: Vec<Result<Output, Unprocessable>>,
    tickets: Vec<Ticket>,
    /// Time the rayon pool took for the batch.
    took: Duration,
}

/// Transforms a batch on the rayon pool, because parsing and geometry work can take well over
/// a millisecond per batch and must not run on an async worker. Each record is transformed
/// inside its span, so that its log events belong to its trace.
async fn transform_batch<T: Transform>(
    transform: Arc<T>,
    batch: Vec<OwnedMessage>,
    spans: Vec<Span>,
    tickets: Vec<Ticket>,
) -> Result<Transformed, ProcessorError> {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        let started = Instant::now();
        let results: Vec<_> = batch
            .par_iter()
            .zip(spans.par_iter())
            .map(|(message, span)| span.in_scope(|| transform.transform(message)))
            .collect();
        let _ = sender.send(Transformed {
            batch,
            spans,
            results,
            tickets,
            took: started.elapsed(),
        });
    });
    receiver.await.map_err(|_| ProcessorError::TaskPanicked)
}

/// Returns the record to produce for each record of a transformed batch, with its ticket: the
/// output, or the input on the dead-letter topic when it could not be transformed.
fn outputs(
    spec: &StageSpec,
    output: &Arc<str>,
    dead_letter_topic: &Arc<str>,
    transformed: Transformed,
) -> Vec<(Pending, Ticket)> {
    let Transformed {
        batch,
        spans,
        results,
        tickets,
        ..
    } = transformed;
    batch
        .into_iter()
        .zip(spans)
        .zip(results)
        .zip(tickets)
        .map(|(((message, span), result), ticket)| {
            let message = Arc::new(message);
            let pending = match result {
                Ok(output_record) => output_pending(output, output_record, &message, span),
                Err(reason) => {
                    tracing::warn!(
                        stage = spec.stage,
                        topic = message.topic(),
                        partition = message.partition(),
                        offset = message.offset(),
                        code = reason.code,
                        detail = %reason.detail,
                        "record dead-lettered"
                    );
                    dead_letter_pending(dead_letter_topic, spec.stage, &reason, message, span)
                }
            };
            (pending, ticket)
        })
        .collect()
}

fn output_pending(
    topic: &Arc<str>,
    output: Output,
    original: &Arc<OwnedMessage>,
    span: Span,
) -> Pending {
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: headers::CONTENT_TYPE,
            value: Some(JSON_CONTENT_TYPE),
        })
        .insert(Header {
            key: headers::SCHEMA,
            value: Some(output.schema.as_str()),
        });
    let headers = trace_context::propagate(&span, original.headers(), headers);
    Pending {
        topic: Arc::clone(topic),
        key: Some(output.key.into_bytes()),
        value: Some(output.value),
        headers: Some(headers),
        // The input's timestamp, never the wall clock, so a replay writes the same record.
        timestamp_ms: original.timestamp().to_millis(),
        dead_letter: false,
        original: Arc::clone(original),
        span,
    }
}

fn dead_letter_pending(
    topic: &Arc<str>,
    stage: &'static str,
    reason: &Unprocessable,
    original: Arc<OwnedMessage>,
    span: Span,
) -> Pending {
    let record = dead_letter_record(original.as_ref(), &reason.reason(stage));
    Pending {
        topic: Arc::clone(topic),
        key: record.key,
        value: record.payload,
        headers: Some(record.headers),
        timestamp_ms: original.timestamp().to_millis(),
        dead_letter: true,
        original,
        span,
    }
}

/// Decides the next attempt after a failed delivery: the same record after a backoff, or, when
/// the broker rejects the output for good, the input record on the dead-letter topic.
fn plan_retry(
    stage: &'static str,
    dead_letter_topic: &Arc<str>,
    pending: Pending,
    attempt: u32,
    error: &KafkaError,
    initial: Duration,
    max: Duration,
) -> (Pending, Duration) {
    if is_permanent(error) && !pending.dead_letter {
        tracing::warn!(stage, topic = %pending.topic, %error, "output rejected by the broker, dead-lettering the input");
        let reason = Unprocessable {
            code: "output_rejected",
            detail: error.to_string(),
        };
        let original = Arc::clone(&pending.original);
        return (
            dead_letter_pending(dead_letter_topic, stage, &reason, original, pending.span),
            Duration::ZERO,
        );
    }
    let backoff = initial
        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(max);
    if pending.dead_letter && is_permanent(error) {
        // NOTE: a dead-letter record that the broker rejects for good (larger than the topic's
        // maximum) is retried until an operator raises the limit. Its partition stays paused.
        tracing::error!(stage, topic = %pending.topic, %error, "dead-letter record rejected by the broker, retrying");
    } else {
        tracing::warn!(stage, topic = %pending.topic, attempt, backoff_ms = backoff.as_millis() as u64, %error, "delivery failed, retrying");
    }
    (pending, backoff)
}

fn pause(consumer: &GroupConsumer, flow: &mut Flow, partition: &TopicPartition) {
    if !flow.paused.insert(partition.clone()) {
        return;
    }
    let mut list = TopicPartitionList::new();
    list.add_partition(&partition.0, partition.1);
    if let Err(error) = consumer.pause(&list) {
        tracing::warn!(topic = %partition.0, partition = partition.1, %error, "pausing partition failed");
    }
}

/// Resumes a partition paused for retries once none of its records is being retried. A
/// partition still at its in-flight cap then stops intake through [`Flow::partition_full`].
fn resume_if_clear(consumer: &GroupConsumer, flow: &mut Flow, partition: &TopicPartition) {
    if !flow.paused.contains(partition) {
        return;
    }
    if flow.retrying.get(partition).copied().unwrap_or(0) > 0 {
        return;
    }
    flow.paused.remove(partition);
    let mut list = TopicPartitionList::new();
    list.add_partition(&partition.0, partition.1);
    if let Err(error) = consumer.resume(&list) {
        tracing::warn!(topic = %partition.0, partition = partition.1, %error, "resuming partition failed");
    }
}

fn acknowledge(
    consumer: &GroupConsumer,
    tracker: &Mutex<OffsetTracker>,
    metrics: &Metrics,
    flow: &mut Flow,
    ticket: Ticket,
    dead_letter: bool,
) {
    if dead_letter {
        metrics.records_dead_lettered.inc();
    } else {
        metrics.records_out.inc();
    }
    flow.outstanding = flow.outstanding.saturating_sub(1);
    if let Some(count) = flow.in_flight.get_mut(&ticket.partition) {
        *count = count.saturating_sub(1);
    }
    if let Some(count) = flow.retrying.get_mut(&ticket.partition) {
        // A ticket that was retried counts once in `retrying` until it is acknowledged.
        *count = count.saturating_sub(1);
    }
    resume_if_clear(consumer, flow, &ticket.partition);
    store_completed(consumer, tracker, &ticket);
}

/// Completes a ticket whose output is durable and stores the partition's offset when it
/// moved, for the background commit to send.
pub(crate) fn store_completed(
    consumer: &GroupConsumer,
    tracker: &Mutex<OffsetTracker>,
    ticket: &Ticket,
) {
    let committable = tracker
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .complete(ticket);
    let Some(next_offset) = committable else {
        return;
    };
    let mut list = TopicPartitionList::new();
    // The tracker returns the next offset to read (last acknowledged + 1), which is what
    // Kafka expects as a committed offset.
    if let Err(error) = list.add_partition_offset(
        &ticket.partition.0,
        ticket.partition.1,
        Offset::Offset(next_offset),
    ) {
        tracing::warn!(%error, "building the offset list failed");
        return;
    }
    if let Err(error) = consumer.store_offsets(&list) {
        // The partition was revoked since the record was read; its new owner replays it.
        tracing::debug!(topic = %ticket.partition.0, partition = ticket.partition.1, offset = next_offset, %error, "storing offset failed");
    }
}

async fn drain<F: std::future::Future<Output = Delivery>>(
    consumer: &GroupConsumer,
    tracker: &Mutex<OffsetTracker>,
    metrics: &Metrics,
    flow: &mut Flow,
    mut deliveries: FuturesUnordered<F>,
    timeout_ms: u64,
    stage: &'static str,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
    while !deliveries.is_empty() {
        match tokio::time::timeout_at(deadline, deliveries.next()).await {
            Ok(Some(Delivery::Acknowledged {
                ticket,
                dead_letter,
            })) => {
                acknowledge(consumer, tracker, metrics, flow, ticket, dead_letter);
            }
            Ok(Some(Delivery::Failed { ticket, error, .. })) => {
                // No retry during shutdown: the offset stays uncommitted and the next run
                // processes the record again.
                tracing::warn!(stage, topic = %ticket.partition.0, partition = ticket.partition.1, offset = ticket.offset, %error, "delivery failed during shutdown, record will be replayed");
            }
            Ok(None) => break,
            Err(_) => {
                tracing::warn!(
                    stage,
                    in_flight = deliveries.len(),
                    "shutdown drain timed out, unacknowledged records will be replayed"
                );
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(number: i32) -> TopicPartition {
        ("submissions.raw".to_owned(), number)
    }

    #[test]
    fn partition_at_cap_holds_intake() {
        let mut flow = Flow::default();
        flow.in_flight.insert(partition(0), 9);
        assert!(!flow.partition_full(10));

        flow.in_flight.insert(partition(1), 10);
        assert!(flow.partition_full(10));
    }

    #[test]
    fn paused_partition_never_holds_intake() {
        let mut flow = Flow::default();
        flow.in_flight.insert(partition(0), 50);
        flow.paused.insert(partition(0));
        assert!(!flow.partition_full(10));
    }
}
