//! The sink's loop: read processed submissions, batch them by count, bytes and linger time,
//! write each batch, dead-letter what can never be stored, and store offsets only for records
//! whose output is durable.
//!
//! A batch's bulk write runs in its own task while the loop decodes and builds the next
//! batch, so that the sink's own work overlaps the store's. One write is in flight at a time,
//! which keeps each partition's batches in order. It also bounds memory to two batches
//! besides librdkafka's prefetch queue, because the loop stops reading once the next batch is
//! full until the write in flight returns. The next batch's write starts before the finished
//! batch's events are published.
//!
//! A transient failure pauses the assigned partitions and retries the same batch with capped
//! exponential backoff; the consumer keeps polling meanwhile so that the group does not evict
//! it. No ticket is completed, and so no offset moves, before the store acknowledged the
//! batch (or Kafka acknowledged the dead-letter). The offsets a batch moved are committed as
//! soon as it settles, rather than at the next auto-commit.
//!
//! After the store acknowledged a batch, the sink produces one [`SubmissionStored`] event per
//! stored submission to the stored-submissions topic, and a record's ticket completes only
//! once Kafka acknowledged its event as well. A crash between the write and the event's
//! acknowledgement replays the record: the store reports it as already stored and the event is
//! produced again. Events are therefore at least once, and the same submission revision can
//! be announced twice. The webhook dispatcher derives its delivery ids from the submission id
//! and revision, so receivers see the same delivery id both times.
//!
//! Each record gets a span (DEBUG, so its callsite is disabled while trace export is off)
//! whose parent is the trace context in the record's headers, so that a submission's trace
//! ends in the sink. The span ends once the store acknowledged the record's document or
//! Kafka acknowledged its dead-letter.

use std::sync::Arc;
use std::time::Duration;

use fieldforce_kafka::client::json_record_headers;
use fieldforce_kafka::dead_letter::{DeadLetterReason, dead_letter_record};
use fieldforce_kafka::offsets::Ticket;
use fieldforce_kafka::trace_context;
use fieldforce_runtime::config::SinkConfig;
use fieldforce_runtime::shutdown::Shutdown;
use fieldforce_schemas::codec::{Contract, decode, encode};
use fieldforce_schemas::submission::ProcessedSubmission;
use fieldforce_schemas::webhook::SubmissionStored;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Span;

use crate::consumer::{SinkContext, commit_async, complete};
use crate::document::{StoredDocument, to_document};
use crate::error::{
    REASON_CONFLICTING_REVISION, REASON_INVALID_DOCUMENT, REASON_REJECTED_BY_STORE,
    REASON_UNDECODABLE,
};
use crate::metrics::{Metrics, ReasonLabel};
use crate::store::{COLLECTION, DocumentOutcome, Store, StoreError};

/// Stage name written on the sink's dead-letters.
const STAGE: &str = "sink";

/// How long a dead-letter or an event may wait for Kafka's acknowledgement before it is
/// retried.
const DEAD_LETTER_TIMEOUT: Duration = Duration::from_secs(30);

/// Topics the sink writes besides the store.
#[derive(Debug, Clone)]
pub(crate) struct OutputTopics {
    /// Full name of the dead-letter topic.
    pub(crate) dead_letter: String,
    /// Full name of the stored-submissions topic.
    pub(crate) stored: String,
}

/// A record read and converted, waiting for its batch to be written. Its document is in
/// the batch's `documents`, at the same index.
struct Pending {
    ticket: Ticket,
    /// The event announced once the document is stored; `stored_at_ms` is set then.
    event: SubmissionStored,
    /// Kept for a dead-letter if the store rejects the document.
    message: OwnedMessage,
    /// The record's span, which ends when the document or its dead-letter is durable.
    span: Span,
}

#[derive(Default)]
struct Batch {
    entries: Vec<Pending>,
    /// The documents of `entries`, apart so that the write task can own them without a copy.
    documents: Vec<StoredDocument>,
    bytes: usize,
    /// When the batch must be written even if it is not full.
    deadline: Option<Instant>,
}

/// A batch whose bulk write runs in its own task. The task owns the documents and returns
/// them with the result, for a retry.
struct InFlight {
    batch: Batch,
    write: JoinHandle<WriteOutput>,
}

/// The output of a write task: the batch's documents, kept for a retry, and the write's result.
type WriteOutput = (
    Vec<StoredDocument>,
    Result<Vec<DocumentOutcome>, StoreError>,
);

/// Why a batch was left unwritten.
enum Abandoned {
    /// Shutdown started while the batch was being retried.
    Shutdown,
    /// The drain deadline passed.
    Deadline,
}

/// The running sink: consumer, store, dead-letter producer and the open batch.
pub struct SinkLoop {
    pub(crate) consumer: Arc<StreamConsumer<SinkContext>>,
    pub(crate) producer: FutureProducer,
    pub(crate) store: Store,
    pub(crate) metrics: Metrics,
    pub(crate) config: SinkConfig,
    pub(crate) topics: OutputTopics,
    pub(crate) shutdown: Shutdown,
    batch: Batch,
    in_flight: Option<InFlight>,
    paused: bool,
}

impl SinkLoop {
    /// Assembles the loop from its parts.
    pub(crate) fn new(
        consumer: Arc<StreamConsumer<SinkContext>>,
        producer: FutureProducer,
        store: Store,
        metrics: Metrics,
        config: SinkConfig,
        topics: OutputTopics,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            consumer,
            producer,
            store,
            metrics,
            config,
            topics,
            shutdown,
            batch: Batch::default(),
            in_flight: None,
            paused: false,
        }
    }

    /// Runs until shutdown, then finishes the write in flight and writes the open batch within
    /// the drain deadline, and commits.
    pub async fn run(mut self) {
        let mut shutdown = self.shutdown.clone();
        loop {
            // A batch that lingered out waits for the write in flight, like a full one.
            let linger = match self.in_flight {
                Some(_) => None,
                None => self.batch.deadline,
            };
            let read = self.in_flight.is_none() || !self.batch_full();
            tokio::select! {
                biased;
                _ = shutdown.wait() => break,
                written = join_write(&mut self.in_flight) => {
                    if self.finish_write(written, None).await.is_err() {
                        break;
                    }
                }
                _ = sleep_until_some(linger) => self.start_write(),
                message = self.consumer.recv(), if read => {
                    self.accept(message.map(|message| message.detach())).await;
                    if self.batch_full() && self.in_flight.is_none() {
                        self.start_write();
                    }
                }
            }
        }

        let drain_deadline =
            Instant::now() + Duration::from_millis(self.config.shutdown_drain_timeout_ms);
        let mut abandoned = false;
        if self.in_flight.is_some() {
            let written = join_write(&mut self.in_flight).await;
            abandoned = self
                .finish_write(written, Some(drain_deadline))
                .await
                .is_err();
        }
        if !abandoned
            && !self.batch.entries.is_empty()
            && self.flush(Some(drain_deadline)).await.is_err()
        {
            abandoned = true;
        }
        if abandoned {
            tracing::warn!(
                documents = self.batch.entries.len(),
                "open batch not written before the drain deadline, it will be read again"
            );
        }
        crate::consumer::commit_sync(self.consumer.as_ref(), "shutdown");
        tracing::info!("sink stopped");
    }

    fn batch_full(&self) -> bool {
        self.batch.entries.len() >= self.config.batch_max_documents
            || self.batch.bytes >= self.config.batch_max_bytes
    }

    /// Starts a record: adds its document to the open batch, or dead-letters it when it can
    /// never become one.
    async fn accept(&mut self, message: KafkaResult<OwnedMessage>) {
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                // librdkafka reports broker and fetch errors here and recovers by itself.
                tracing::warn!(%error, "kafka consumer error");
                return;
            }
        };
        self.metrics.records_in.inc();
        let ticket = self.consumer.context().tracker().start(
            (message.topic().to_owned(), message.partition()),
            message.offset(),
            message.timestamp().to_millis(),
        );
        let span = record_span(&message);

        let decoded = match message.payload() {
            Some(payload) => decode::<ProcessedSubmission>(payload).map_err(|e| e.to_string()),
            None => Err("record has no value".to_owned()),
        };
        let processed = match decoded {
            Ok(processed) => processed,
            Err(detail) => {
                if self.dead_letter(&message, REASON_UNDECODABLE, detail).await {
                    span.record("fieldforce.outcome", "dead_lettered");
                    complete(self.consumer.as_ref(), [&ticket]);
                }
                return;
            }
        };
        let document = match to_document(&processed, self.config.max_document_bytes) {
            Ok(document) => document,
            Err(error) => {
                let code = error.reason_code();
                if self.dead_letter(&message, code, error.to_string()).await {
                    span.record("fieldforce.outcome", "dead_lettered");
                    complete(self.consumer.as_ref(), [&ticket]);
                }
                return;
            }
        };

        if self.batch.entries.is_empty() {
            self.batch.deadline =
                Some(Instant::now() + Duration::from_millis(self.config.batch_linger_ms));
        }
        self.batch.bytes += document.size_bytes();
        self.batch.documents.push(document);
        self.batch.entries.push(Pending {
            ticket,
            event: SubmissionStored::from_processed(&processed, 0),
            message,
            span,
        });
    }

    /// Starts the bulk write of the open batch in its own task. The caller makes sure that no
    /// other write is in flight.
    fn start_write(&mut self) {
        let mut batch = std::mem::take(&mut self.batch);
        let documents = std::mem::take(&mut batch.documents);
        self.metrics.batch_documents.observe(documents.len() as f64);
        let store = self.store.clone();
        let metrics = self.metrics.clone();
        let write = tokio::spawn(async move {
            let result = timed_write(&store, &metrics, &documents).await;
            (documents, result)
        });
        self.in_flight = Some(InFlight { batch, write });
    }

    /// Settles a batch whose write task returned, or retries it as [`Self::retry`] does when
    /// the write failed. Outside the drain (`deadline` is `None`) the next batch's write
    /// starts first when that batch is due, so that the store works while events go out.
    async fn finish_write(
        &mut self,
        (mut batch, documents, result): Written,
        deadline: Option<Instant>,
    ) -> Result<(), Abandoned> {
        batch.documents = documents;
        let outcomes = match result {
            Ok(outcomes) => outcomes,
            Err(error) => return self.retry(batch, error, deadline).await,
        };
        if deadline.is_none() && self.batch_due() {
            self.start_write();
        }
        self.settle(batch, outcomes).await;
        self.resume();
        Ok(())
    }

    /// Returns whether the open batch is full or its linger time has passed.
    fn batch_due(&self) -> bool {
        self.batch_full()
            || self
                .batch
                .deadline
                .is_some_and(|deadline| deadline <= Instant::now())
    }

    /// Writes the open batch in place, retrying as [`Self::retry`] does.
    async fn flush(&mut self, deadline: Option<Instant>) -> Result<(), Abandoned> {
        let batch = std::mem::take(&mut self.batch);
        self.metrics
            .batch_documents
            .observe(batch.documents.len() as f64);
        match timed_write(&self.store, &self.metrics, &batch.documents).await {
            Ok(outcomes) => {
                self.settle(batch, outcomes).await;
                self.resume();
                Ok(())
            }
            Err(error) => self.retry(batch, error, deadline).await,
        }
    }

    /// Retries a batch after a transient failure until it is written, shutdown starts (when
    /// `deadline` is `None`) or the deadline passes. An abandoned batch is put back as the
    /// open batch, so the drain can try it once more.
    async fn retry(
        &mut self,
        batch: Batch,
        mut error: StoreError,
        deadline: Option<Instant>,
    ) -> Result<(), Abandoned> {
        let mut backoff = Duration::from_millis(self.config.retry_initial_backoff_ms);
        let max_backoff = Duration::from_millis(self.config.retry_max_backoff_ms);
        let outcomes = loop {
            self.metrics.write_retries.inc();
            tracing::warn!(
                %error,
                documents = batch.documents.len(),
                backoff_ms = backoff.as_millis() as u64,
                "bulk write failed, retrying"
            );
            self.pause();
            if let Err(reason) = self.wait_before_retry(backoff, deadline).await {
                self.restore(batch);
                return Err(reason);
            }
            backoff = (backoff * 2).min(max_backoff);

            match timed_write(&self.store, &self.metrics, &batch.documents).await {
                Ok(outcomes) => break outcomes,
                Err(next) => error = next,
            }
        };

        self.settle(batch, outcomes).await;
        self.resume();
        Ok(())
    }

    /// Sleeps for the backoff while still polling the consumer, so that the group keeps the
    /// consumer and rebalances are served. Records that arrive anyway (fetched before the
    /// pause) go into the next batch.
    async fn wait_before_retry(
        &mut self,
        backoff: Duration,
        deadline: Option<Instant>,
    ) -> Result<(), Abandoned> {
        let wake = Instant::now() + backoff;
        if deadline.is_some_and(|deadline| wake > deadline) {
            return Err(Abandoned::Deadline);
        }
        let mut shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.wait(), if deadline.is_none() => return Err(Abandoned::Shutdown),
                _ = tokio::time::sleep_until(wake) => return Ok(()),
                message = self.consumer.recv() => {
                    let message = message.map(|message| message.detach());
                    self.accept(message).await;
                }
            }
        }
    }

    /// Puts an abandoned batch back in front of the records read since.
    fn restore(&mut self, mut batch: Batch) {
        let newer = std::mem::take(&mut self.batch);
        batch.bytes += newer.bytes;
        batch.entries.extend(newer.entries);
        batch.documents.extend(newer.documents);
        self.batch = batch;
    }

    /// Dead-letters the rejected documents and announces the stored ones, then completes the
    /// ticket of every record whose dead-letter or event Kafka acknowledged and commits the
    /// offsets that moved.
    async fn settle(&mut self, batch: Batch, outcomes: Vec<DocumentOutcome>) {
        let stored_at_ms = now_ms();
        let mut durable = Vec::with_capacity(batch.entries.len());
        let mut stored = Vec::with_capacity(batch.entries.len());
        for (index, (entry, outcome)) in batch.entries.iter().zip(&outcomes).enumerate() {
            match outcome {
                DocumentOutcome::Written => {
                    self.metrics.documents_written.inc();
                    entry.span.record("fieldforce.outcome", "written");
                    stored.push(entry);
                    continue;
                }
                // A replay after a crash lands here, and its event may never have been
                // acknowledged, so it is announced again.
                DocumentOutcome::AlreadyStored => {
                    self.metrics.documents_already_stored.inc();
                    entry.span.record("fieldforce.outcome", "already_stored");
                    stored.push(entry);
                    continue;
                }
                // The newer revision in the same batch is announced instead.
                DocumentOutcome::Superseded => {
                    self.metrics.documents_already_stored.inc();
                    entry.span.record("fieldforce.outcome", "superseded");
                }
                DocumentOutcome::Conflicting { kept_sha256 } => {
                    let document = &batch.documents[index];
                    let detail = format!(
                        "submission {} revision {} is stored with content sha256 {kept_sha256}, this record has {}",
                        document.id, document.revision, document.content_sha256
                    );
                    if !self
                        .dead_letter(&entry.message, REASON_CONFLICTING_REVISION, detail)
                        .await
                    {
                        continue;
                    }
                    entry.span.record("fieldforce.outcome", "dead_lettered");
                }
                DocumentOutcome::Rejected { code, message } => {
                    let detail = format!("store error {code}: {message}");
                    let reason = if *code == 2 {
                        REASON_INVALID_DOCUMENT
                    } else {
                        REASON_REJECTED_BY_STORE
                    };
                    if !self.dead_letter(&entry.message, reason, detail).await {
                        continue;
                    }
                    entry.span.record("fieldforce.outcome", "dead_lettered");
                }
            };
            durable.push(&entry.ticket);
        }

        let events: Vec<SubmissionStored> = stored
            .iter()
            .map(|entry| SubmissionStored {
                stored_at_ms,
                ..entry.event.clone()
            })
            .collect();
        let acknowledged = self.publish_events(&events).await;
        for (entry, acknowledged) in stored.iter().zip(acknowledged) {
            if acknowledged {
                durable.push(&entry.ticket);
            }
        }
        if complete(self.consumer.as_ref(), durable) {
            commit_async(self.consumer.as_ref());
        }
    }

    /// Produces the events of stored submissions and waits for Kafka's acknowledgements,
    /// retrying the unacknowledged ones with backoff until all are acknowledged or shutdown
    /// starts. Returns, per event, whether Kafka acknowledged it.
    async fn publish_events(&self, events: &[SubmissionStored]) -> Vec<bool> {
        let mut acknowledged = vec![false; events.len()];
        let mut backoff = Duration::from_millis(self.config.retry_initial_backoff_ms);
        let schema = SubmissionStored::schema_header();
        loop {
            let sends = events
                .iter()
                .zip(&acknowledged)
                .filter(|(_, done)| !**done)
                .map(|(event, _)| {
                    let payload = encode(event);
                    let record_headers = json_record_headers(&schema);
                    let producer = &self.producer;
                    let topic = &self.topics.stored;
                    async move {
                        let record = FutureRecord::to(topic)
                            .key(event.submission_id.as_str())
                            .payload(&payload)
                            .headers(record_headers)
                            .timestamp(event.stored_at_ms);
                        producer.send(record, DEAD_LETTER_TIMEOUT).await
                    }
                });
            let results = futures::future::join_all(sends).await;

            let pending: Vec<usize> = (0..events.len())
                .filter(|&index| !acknowledged[index])
                .collect();
            let mut failed = 0;
            for (index, result) in pending.into_iter().zip(results) {
                match result {
                    Ok(_) => {
                        acknowledged[index] = true;
                        self.metrics.events_published.inc();
                    }
                    Err((error, _)) => {
                        failed += 1;
                        tracing::warn!(
                            %error,
                            submission_id = events[index].submission_id,
                            "stored event not acknowledged, retrying"
                        );
                    }
                }
            }
            if failed == 0 || self.shutdown.is_triggered() {
                return acknowledged;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(self.config.retry_max_backoff_ms));
        }
    }

    /// Produces a dead-letter and waits for Kafka's acknowledgement, retrying with backoff
    /// until it comes or shutdown starts. Without the acknowledgement the record's offset
    /// never moves, so a dead-letter lost at shutdown is read and dead-lettered again later.
    /// Returns whether Kafka acknowledged it.
    async fn dead_letter(
        &self,
        message: &OwnedMessage,
        code: &'static str,
        detail: String,
    ) -> bool {
        tracing::warn!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            reason = code,
            detail,
            "dead-lettering record"
        );
        let record = dead_letter_record(
            message,
            &DeadLetterReason {
                stage: STAGE,
                code,
                detail,
            },
        );
        let mut backoff = Duration::from_millis(self.config.retry_initial_backoff_ms);
        loop {
            let mut future_record = FutureRecord::<Vec<u8>, Vec<u8>>::to(&self.topics.dead_letter)
                .headers(record.headers.clone());
            if let Some(key) = &record.key {
                future_record = future_record.key(key);
            }
            if let Some(payload) = &record.payload {
                future_record = future_record.payload(payload);
            }
            match self.producer.send(future_record, DEAD_LETTER_TIMEOUT).await {
                Ok(_) => {
                    self.metrics
                        .dead_lettered
                        .get_or_create(&ReasonLabel { reason: code })
                        .inc();
                    return true;
                }
                Err((error, _)) => {
                    tracing::warn!(%error, "dead-letter not acknowledged, retrying");
                }
            }
            if self.shutdown.is_triggered() {
                return false;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(self.config.retry_max_backoff_ms));
        }
    }

    fn pause(&mut self) {
        if self.paused {
            return;
        }
        match self
            .consumer
            .assignment()
            .and_then(|list| self.consumer.pause(&list))
        {
            Ok(()) => {
                self.paused = true;
                tracing::info!("partitions paused until the store answers");
            }
            Err(error) => tracing::warn!(%error, "pausing partitions failed"),
        }
    }

    fn resume(&mut self) {
        if !self.paused {
            return;
        }
        match self
            .consumer
            .assignment()
            .and_then(|list| self.consumer.resume(&list))
        {
            Ok(()) => {
                self.paused = false;
                tracing::info!("store answers again, partitions resumed");
            }
            Err(error) => tracing::warn!(%error, "resuming partitions failed"),
        }
    }
}

/// Creates the span of one record, a child of the trace context in its headers. It is a
/// root (`parent: None`) otherwise, so a record without context starts a new trace.
fn record_span(message: &OwnedMessage) -> Span {
    let span = tracing::debug_span!(
        parent: None,
        "store record",
        otel.name = %format_args!("write {COLLECTION}"),
        otel.kind = "consumer",
        fieldforce.service = STAGE,
        fieldforce.outcome = tracing::field::Empty,
        messaging.system = "kafka",
        messaging.destination.name = message.topic(),
        messaging.destination.partition.id = message.partition(),
        messaging.kafka.offset = message.offset(),
        db.system.name = "mongodb",
        db.collection.name = COLLECTION,
    );
    trace_context::set_parent(&span, message.headers());
    span
}

/// A batch back from its write task, with its documents and the result of the write.
type Written = (
    Batch,
    Vec<StoredDocument>,
    Result<Vec<DocumentOutcome>, StoreError>,
);

/// Waits for the write in flight and takes it, and never returns while none is in flight.
/// Cancelling the wait is safe because the task stays in flight until a later call joins it.
async fn join_write(in_flight: &mut Option<InFlight>) -> Written {
    let Some(InFlight { write, .. }) = in_flight.as_mut() else {
        return std::future::pending().await;
    };
    let joined = write.await;
    let Some(InFlight { batch, .. }) = in_flight.take() else {
        unreachable!("the write in flight was just joined");
    };
    match joined {
        Ok((documents, result)) => (batch, documents, result),
        // The task is never aborted, so the only join error is a panic, raised here as the
        // write would have raised it in place.
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

/// Writes a batch and records how long the store took.
async fn timed_write(
    store: &Store,
    metrics: &Metrics,
    documents: &[StoredDocument],
) -> Result<Vec<DocumentOutcome>, StoreError> {
    let started = std::time::Instant::now();
    let result = store.write(documents).await;
    metrics
        .write_duration_seconds
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Returns the wall clock in milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}
