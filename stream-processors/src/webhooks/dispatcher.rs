//! The dispatcher loop: read stored-submission events and due retry records, deliver them
//! concurrently, and store a record's offset only once every delivery it started is settled.
//!
//! A delivery is settled when the endpoint responded with a 2xx status, when its record on a retry topic or
//! on the webhook dead-letter topic was acknowledged by Kafka, or when its subscription was
//! deleted meanwhile. Each delivery runs as its own future, bounded by its endpoint's
//! concurrency limit, so a slow or failing endpoint only ever waits on itself: a failed
//! attempt is handed to a retry topic at once and the loop moves on.
//!
//! A retry record that is not due yet stays in memory and its partition is paused, so the
//! consumer neither blocks nor fetches more of that partition; the partition resumes once the
//! held records have been started. Every record of one retry tier waits the same delay, so a
//! partition's records fall due in offset order and the head of the partition is always the
//! next one due.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use fieldforce_kafka::client::json_record_headers;
use fieldforce_kafka::dead_letter::{DeadLetterReason, dead_letter_record};
use fieldforce_kafka::offsets::{OffsetTracker, Ticket, TopicPartition};
use fieldforce_runtime::config::WebhooksConfig;
use fieldforce_runtime::shutdown::Shutdown;
use fieldforce_schemas::codec::{Contract, decode, encode};
use fieldforce_schemas::headers;
use fieldforce_schemas::webhook::{
    EndpointUrl, LastResponse, SubmissionStored, WEBHOOK_DELIVERY_VERSION, WebhookDelivery,
    WebhookSubscription,
};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Message, TopicPartitionList};
use tokio::sync::Semaphore;

use super::delivery::{self, NextStep, RetrySchedule};
use super::sender::{AttemptOutcome, Outgoing, Sender};
use crate::metrics::{DeliveryOutcome, Metrics, WebhookMetrics};
use crate::pipeline::{GroupConsumer, store_completed};
use crate::registry::Registry;

/// Stage name in logs, metric labels and dead-letter headers.
pub const STAGE: &str = "webhooks";

/// How long a produce may wait for room in the producer queue and for the acknowledgement
/// before it is tried again.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(30);

/// Full names of the topics the dispatcher reads and writes.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Stored-submission events.
    pub events: String,
    /// Retry tiers, shortest delay first.
    pub retry: Vec<String>,
    /// Webhook dead-letters.
    pub dead_letter: String,
    /// Records no stage could read (undecodable input).
    pub submissions_dead_letter: String,
}

/// The concurrency limit of one endpoint URL.
struct EndpointSlot {
    limit: u32,
    semaphore: Arc<Semaphore>,
    /// Deliveries waiting for a permit.
    queued: AtomicUsize,
}

/// The state every delivery future shares.
pub struct Shared {
    /// Producer of retry and dead-letter records.
    pub producer: FutureProducer,
    /// Subscriptions, kept current from their compacted topic.
    pub subscriptions: Arc<Registry<WebhookSubscription>>,
    /// The HTTP sender, with the address guard.
    pub sender: Sender,
    /// The retry schedule.
    pub schedule: RetrySchedule,
    /// The `[webhooks]` settings.
    pub config: WebhooksConfig,
    /// Topic names.
    pub topics: Topics,
    /// Webhook metrics.
    pub metrics: WebhookMetrics,
    /// First and longest pause between attempts to produce a record, from `[processors]`.
    pub produce_backoff: (Duration, Duration),
    /// Stops produce retries at shutdown.
    pub shutdown: Shutdown,
    endpoints: Mutex<HashMap<String, Arc<EndpointSlot>>>,
}

impl Shared {
    /// Assembles the shared state.
    #[allow(
        clippy::too_many_arguments,
        reason = "one constructor that names every shared part"
    )]
    pub fn new(
        producer: FutureProducer,
        subscriptions: Arc<Registry<WebhookSubscription>>,
        sender: Sender,
        config: WebhooksConfig,
        topics: Topics,
        metrics: WebhookMetrics,
        produce_backoff: (Duration, Duration),
        shutdown: Shutdown,
    ) -> Self {
        Self {
            producer,
            subscriptions,
            sender,
            schedule: RetrySchedule::new(&config, topics.retry.len()),
            config,
            topics,
            metrics,
            produce_backoff,
            shutdown,
            endpoints: Mutex::new(HashMap::new()),
        }
    }

    /// Returns the slot of an endpoint URL, replacing it when the subscription changed its
    /// limit. Deliveries holding a permit of the old slot finish under the old limit.
    fn slot(&self, url: &str, limit: u32) -> Arc<EndpointSlot> {
        let mut endpoints = self
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = endpoints.get(url)
            && slot.limit == limit
        {
            return Arc::clone(slot);
        }
        let slot = Arc::new(EndpointSlot {
            limit,
            semaphore: Arc::new(Semaphore::new(limit as usize)),
            queued: AtomicUsize::new(0),
        });
        endpoints.insert(url.to_owned(), Arc::clone(&slot));
        slot
    }
}

/// Work started for one consumed record.
enum Task {
    /// Deliver (or retry) one delivery.
    Deliver(WebhookDelivery),
    /// Dead-letter a record that cannot be read.
    DeadLetterInput {
        message: Box<OwnedMessage>,
        detail: String,
    },
}

/// The deliveries still open for one consumed record.
struct Work {
    ticket: Ticket,
    remaining: usize,
    durable: bool,
}

/// A retry record held until it falls due.
struct Waiting {
    ticket: Ticket,
    delivery: WebhookDelivery,
    due: tokio::time::Instant,
}

/// The running dispatcher.
pub struct Dispatcher {
    consumer: Arc<GroupConsumer>,
    tracker: Arc<Mutex<OffsetTracker>>,
    shared: Arc<Shared>,
    metrics: Metrics,
    works: HashMap<u64, Work>,
    next_work_id: u64,
    waiting: HashMap<TopicPartition, VecDeque<Waiting>>,
}

impl Dispatcher {
    /// Assembles the dispatcher from a subscribed consumer and the shared state.
    pub(crate) fn new(
        consumer: Arc<GroupConsumer>,
        tracker: Arc<Mutex<OffsetTracker>>,
        shared: Arc<Shared>,
        metrics: Metrics,
    ) -> Self {
        Self {
            consumer,
            tracker,
            shared,
            metrics,
            works: HashMap::new(),
            next_work_id: 0,
            waiting: HashMap::new(),
        }
    }

    /// Runs until shutdown, then waits up to `drain_timeout` for open deliveries and commits.
    pub async fn run(mut self, drain_timeout: Duration) -> Result<(), crate::ProcessorError> {
        let mut shutdown = self.shared.shutdown.clone();
        let mut tasks = FuturesUnordered::new();
        let max_in_flight = self.shared.config.max_in_flight_deliveries;

        loop {
            let next_due = self.next_due();
            tokio::select! {
                biased;
                _ = shutdown.wait() => break,
                Some((work_id, durable)) = tasks.next(), if !tasks.is_empty() => {
                    self.settle(work_id, durable);
                }
                _ = sleep_until_some(next_due) => {
                    for (work_id, task) in self.release_due() {
                        tasks.push(run_task(Arc::clone(&self.shared), work_id, task));
                    }
                }
                message = self.consumer.recv(), if tasks.len() < max_in_flight => {
                    let message = match message {
                        Ok(message) => message.detach(),
                        Err(error) => {
                            tracing::warn!(stage = STAGE, %error, "consume failed, continuing");
                            continue;
                        }
                    };
                    self.metrics.records_in.inc();
                    for (work_id, task) in self.accept(message) {
                        tasks.push(run_task(Arc::clone(&self.shared), work_id, task));
                    }
                }
            }
            self.shared.metrics.in_flight.set(tasks.len() as i64);
        }

        let deadline = tokio::time::Instant::now() + drain_timeout;
        while !tasks.is_empty() {
            match tokio::time::timeout_at(deadline, tasks.next()).await {
                Ok(Some((work_id, durable))) => self.settle(work_id, durable),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        stage = STAGE,
                        in_flight = tasks.len(),
                        "shutdown drain timed out, unsettled deliveries will be replayed"
                    );
                    break;
                }
            }
        }
        crate::pipeline::commit_final(&self.consumer, &self.metrics, STAGE).await?;
        tracing::info!(stage = STAGE, "webhook dispatcher stopped");
        Ok(())
    }

    /// Starts a consumed record: plans its deliveries, or keeps it in memory when it is a
    /// retry that is not due yet. Returns the tasks to run now.
    fn accept(&mut self, message: OwnedMessage) -> Vec<(u64, Task)> {
        let partition: TopicPartition = (message.topic().to_owned(), message.partition());
        let ticket = self
            .tracker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .start(partition.clone(), message.offset());

        let tasks = if message.topic() == self.shared.topics.events {
            match decode_payload::<SubmissionStored>(&message) {
                Ok(stored) => plan(&self.shared.subscriptions, &stored)
                    .into_iter()
                    .map(Task::Deliver)
                    .collect(),
                Err(detail) => vec![Task::DeadLetterInput {
                    message: Box::new(message),
                    detail,
                }],
            }
        } else {
            match decode_payload::<WebhookDelivery>(&message) {
                Ok(retry) => {
                    let due = due_instant(retry.due_at_ms);
                    let nothing_held = self.waiting.get(&partition).is_none_or(VecDeque::is_empty);
                    if nothing_held && due <= tokio::time::Instant::now() {
                        vec![Task::Deliver(retry)]
                    } else {
                        // Held records keep their partition's order behind the first one.
                        self.waiting
                            .entry(partition.clone())
                            .or_default()
                            .push_back(Waiting {
                                ticket,
                                delivery: retry,
                                due,
                            });
                        self.pause(&partition);
                        self.update_waiting_gauge();
                        return Vec::new();
                    }
                }
                Err(detail) => vec![Task::DeadLetterInput {
                    message: Box::new(message),
                    detail,
                }],
            }
        };
        self.start_work(ticket, tasks)
    }

    /// Registers the tasks of one record under a new work id. A record without tasks (an
    /// event that no subscription requests) is complete at once.
    fn start_work(&mut self, ticket: Ticket, tasks: Vec<Task>) -> Vec<(u64, Task)> {
        if tasks.is_empty() {
            store_completed(&self.consumer, &self.tracker, &ticket);
            return Vec::new();
        }
        let work_id = self.next_work_id;
        self.next_work_id += 1;
        self.works.insert(
            work_id,
            Work {
                ticket,
                remaining: tasks.len(),
                durable: true,
            },
        );
        tasks.into_iter().map(|task| (work_id, task)).collect()
    }

    /// Records one settled task; the record's offset may move once all its tasks settled
    /// durably. A task that could not make its outcome durable (shutdown came first) leaves
    /// the offset where it is, so the next run replays the record.
    fn settle(&mut self, work_id: u64, durable: bool) {
        let Some(work) = self.works.get_mut(&work_id) else {
            return;
        };
        work.remaining -= 1;
        work.durable &= durable;
        if work.remaining > 0 {
            return;
        }
        let Some(work) = self.works.remove(&work_id) else {
            return;
        };
        if work.durable {
            store_completed(&self.consumer, &self.tracker, &work.ticket);
        }
    }

    fn next_due(&self) -> Option<tokio::time::Instant> {
        self.waiting
            .values()
            .filter_map(|queue| queue.front().map(|waiting| waiting.due))
            .min()
    }

    /// Starts every held record that fell due, and resumes the partitions left with none.
    fn release_due(&mut self) -> Vec<(u64, Task)> {
        let now = tokio::time::Instant::now();
        let assigned = self.consumer.assignment().ok();
        let mut released = Vec::new();
        let mut emptied = Vec::new();
        for (partition, queue) in &mut self.waiting {
            // A partition revoked while its records waited belongs to another member now,
            // which reads those records again.
            // NOTE: a partition revoked and assigned back before its held records fall due
            // is read again from the committed offset, so those records are held twice and
            // delivered twice, with the same delivery ids.
            let still_assigned = assigned
                .as_ref()
                .is_none_or(|list| list.find_partition(&partition.0, partition.1).is_some());
            if !still_assigned {
                queue.clear();
            }
            while queue.front().is_some_and(|waiting| waiting.due <= now) {
                if let Some(waiting) = queue.pop_front() {
                    released.push(waiting);
                }
            }
            if queue.is_empty() {
                emptied.push(partition.clone());
            }
        }
        for partition in emptied {
            self.waiting.remove(&partition);
            self.resume(&partition);
        }
        self.update_waiting_gauge();

        let mut tasks = Vec::with_capacity(released.len());
        for waiting in released {
            tasks.extend(self.start_work(waiting.ticket, vec![Task::Deliver(waiting.delivery)]));
        }
        tasks
    }

    fn update_waiting_gauge(&self) {
        let held: usize = self.waiting.values().map(VecDeque::len).sum();
        self.shared.metrics.waiting.set(held as i64);
    }

    fn pause(&self, partition: &TopicPartition) {
        let mut list = TopicPartitionList::new();
        list.add_partition(&partition.0, partition.1);
        if let Err(error) = self.consumer.pause(&list) {
            tracing::warn!(topic = %partition.0, partition = partition.1, %error, "pausing retry partition failed");
        }
    }

    fn resume(&self, partition: &TopicPartition) {
        let mut list = TopicPartitionList::new();
        list.add_partition(&partition.0, partition.1);
        if let Err(error) = self.consumer.resume(&list) {
            tracing::warn!(topic = %partition.0, partition = partition.1, %error, "resuming retry partition failed");
        }
    }
}

/// Builds one delivery per subscription of the submission's project and event it fires, in
/// subscription key order.
pub fn plan(
    subscriptions: &Registry<WebhookSubscription>,
    stored: &SubmissionStored,
) -> Vec<WebhookDelivery> {
    let mut matching = subscriptions.values_where(|subscription| {
        subscription.org_id == stored.org_id && subscription.project_id == stored.project_id
    });
    matching.sort_by_key(|subscription| subscription.topic_key());

    let now_ms = now_ms();
    let mut deliveries = Vec::new();
    for event in stored.events() {
        for subscription in matching
            .iter()
            .filter(|subscription| subscription.wants(event))
        {
            let key = subscription.topic_key();
            let delivery_id = delivery::delivery_id(&key, stored, event);
            let body = delivery::body(&delivery_id, event, stored);
            deliveries.push(WebhookDelivery {
                schema_version: WEBHOOK_DELIVERY_VERSION,
                delivery_id,
                subscription_key: key,
                event,
                submission_id: stored.submission_id.clone(),
                attempts: 0,
                body,
                due_at_ms: now_ms,
                last_response: None,
            });
        }
    }
    deliveries
}

/// Runs one task and returns its work id and whether its outcome is durable.
async fn run_task(shared: Arc<Shared>, work_id: u64, task: Task) -> (u64, bool) {
    let durable = match task {
        Task::Deliver(delivery) => deliver(&shared, delivery).await,
        Task::DeadLetterInput { message, detail } => {
            dead_letter_input(&shared, &message, detail).await
        }
    };
    (work_id, durable)
}

/// Makes one attempt of a delivery and hands a failure to its next topic.
async fn deliver(shared: &Shared, mut delivery: WebhookDelivery) -> bool {
    let Some(subscription) = shared.subscriptions.get(&delivery.subscription_key) else {
        tracing::info!(
            delivery_id = %delivery.delivery_id,
            subscription = %delivery.subscription_key,
            "subscription deleted, delivery dropped"
        );
        shared.metrics.settled(DeliveryOutcome::Dropped);
        return true;
    };
    let endpoint = match EndpointUrl::parse(&subscription.url) {
        Ok(endpoint) => endpoint,
        Err(problem) => {
            delivery.last_response = Some(error_response(format!("invalid URL: {problem}")));
            return finish(shared, delivery, Finish::DeadLetter("invalid_url")).await;
        }
    };

    let slot = shared.slot(
        &subscription.url,
        subscription
            .max_concurrency
            .unwrap_or(shared.config.default_max_concurrency)
            .max(1),
    );
    if slot.queued.load(Ordering::Relaxed) >= shared.config.max_queued_per_endpoint {
        return finish(shared, delivery, Finish::Defer).await;
    }
    slot.queued.fetch_add(1, Ordering::Relaxed);
    let permit = Arc::clone(&slot.semaphore).acquire_owned().await;
    slot.queued.fetch_sub(1, Ordering::Relaxed);
    let Ok(_permit) = permit else {
        // The semaphore is never closed; treat the impossible case as a failed attempt.
        return finish(shared, delivery, Finish::Defer).await;
    };

    let signature = delivery::signature(&subscription.secret, delivery.body.as_bytes());
    let outgoing = Outgoing {
        delivery_id: &delivery.delivery_id,
        event: delivery.event.as_str(),
        signature: &signature,
        body: &delivery.body,
    };
    let timeout = Duration::from_millis(
        subscription
            .timeout_ms
            .unwrap_or(shared.config.default_timeout_ms),
    );
    let started = Instant::now();
    let outcome = shared.sender.attempt(&endpoint, &outgoing, timeout).await;
    shared
        .metrics
        .attempt_seconds
        .observe(started.elapsed().as_secs_f64());
    drop(_permit);
    delivery.attempts += 1;

    match outcome {
        AttemptOutcome::Delivered { status } => {
            tracing::debug!(
                delivery_id = %delivery.delivery_id,
                subscription = %delivery.subscription_key,
                status,
                attempts = delivery.attempts,
                "webhook delivered"
            );
            shared.metrics.settled(DeliveryOutcome::Delivered);
            true
        }
        AttemptOutcome::Rejected(rejection) => {
            tracing::warn!(
                delivery_id = %delivery.delivery_id,
                subscription = %delivery.subscription_key,
                reason = %rejection,
                "webhook endpoint rejected by the address guard"
            );
            delivery.last_response = Some(error_response(rejection.to_string()));
            finish(shared, delivery, Finish::DeadLetter("endpoint_rejected")).await
        }
        AttemptOutcome::Failed(response) => {
            tracing::info!(
                delivery_id = %delivery.delivery_id,
                subscription = %delivery.subscription_key,
                attempts = delivery.attempts,
                status = response.status,
                error = %response.error,
                "webhook attempt failed"
            );
            delivery.last_response = Some(response);
            match shared.schedule.after_failure(delivery.attempts) {
                NextStep::Retry { tier, delay } => {
                    finish(shared, delivery, Finish::Retry { tier, delay }).await
                }
                NextStep::DeadLetter => {
                    finish(shared, delivery, Finish::DeadLetter("attempts_exhausted")).await
                }
            }
        }
    }
}

/// The next topic of a delivery that was not delivered.
enum Finish {
    /// To a retry tier, due after the delay.
    Retry { tier: usize, delay: Duration },
    /// To the first retry tier without using up an attempt, because its endpoint is busy.
    Defer,
    /// To the webhook dead-letter topic, with this reason code.
    DeadLetter(&'static str),
}

/// Produces the delivery to its next topic and waits for the acknowledgement. Returns
/// whether Kafka acknowledged it.
async fn finish(shared: &Shared, mut delivery: WebhookDelivery, finish: Finish) -> bool {
    let (topic, outcome, reason) = match finish {
        Finish::Retry { tier, delay } => {
            delivery.due_at_ms = now_ms() + duration_ms(delay);
            (&shared.topics.retry[tier], DeliveryOutcome::Retried, None)
        }
        Finish::Defer => {
            let delay = shared
                .schedule
                .tier_delays
                .first()
                .copied()
                .unwrap_or_default();
            delivery.due_at_ms = now_ms() + duration_ms(delay);
            (&shared.topics.retry[0], DeliveryOutcome::Deferred, None)
        }
        Finish::DeadLetter(code) => {
            let outcome = if code == "endpoint_rejected" {
                DeliveryOutcome::Rejected
            } else {
                DeliveryOutcome::DeadLettered
            };
            (&shared.topics.dead_letter, outcome, Some(code))
        }
    };

    let schema = WebhookDelivery::schema_header();
    let mut record_headers = json_record_headers(&schema);
    let detail = delivery
        .last_response
        .as_ref()
        .map(describe_response)
        .unwrap_or_default();
    if let Some(code) = reason {
        if code != "endpoint_rejected" {
            tracing::warn!(
                delivery_id = %delivery.delivery_id,
                subscription = %delivery.subscription_key,
                attempts = delivery.attempts,
                reason = code,
                detail,
                "webhook delivery dead-lettered"
            );
        }
        for (key, value) in [
            (headers::DEAD_LETTER_STAGE, STAGE),
            (headers::DEAD_LETTER_REASON, code),
            (headers::DEAD_LETTER_DETAIL, detail.as_str()),
        ] {
            record_headers = record_headers.insert(Header {
                key,
                value: Some(value),
            });
        }
    }

    let payload = encode(&delivery);
    let acknowledged = produce_acknowledged(
        shared,
        topic,
        Some(delivery.subscription_key.as_bytes()),
        Some(&payload),
        &record_headers,
    )
    .await;
    if acknowledged {
        shared.metrics.settled(outcome);
    }
    acknowledged
}

/// Dead-letters a record of the events or retry topics that cannot be decoded.
async fn dead_letter_input(shared: &Shared, message: &OwnedMessage, detail: String) -> bool {
    tracing::warn!(
        stage = STAGE,
        topic = message.topic(),
        partition = message.partition(),
        offset = message.offset(),
        detail,
        "undecodable record dead-lettered"
    );
    let record = dead_letter_record(
        message,
        &DeadLetterReason {
            stage: STAGE,
            code: "undecodable",
            detail,
        },
    );
    produce_acknowledged(
        shared,
        &shared.topics.submissions_dead_letter,
        record.key.as_deref(),
        record.payload.as_deref(),
        &record.headers,
    )
    .await
}

/// Produces a record and waits for Kafka's acknowledgement, retrying with backoff until it
/// comes or shutdown starts. Returns whether Kafka acknowledged it.
async fn produce_acknowledged(
    shared: &Shared,
    topic: &str,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    record_headers: &OwnedHeaders,
) -> bool {
    let (initial, max) = shared.produce_backoff;
    let mut backoff = initial;
    loop {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).headers(record_headers.clone());
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        match shared
            .producer
            .send(record, Timeout::After(PRODUCE_TIMEOUT))
            .await
        {
            Ok(_) => return true,
            Err((error, _)) => {
                tracing::warn!(topic, %error, backoff_ms = duration_ms(backoff), "produce failed, retrying");
            }
        }
        if shared.shutdown.is_triggered() {
            return false;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(max);
    }
}

fn decode_payload<T: Contract>(message: &OwnedMessage) -> Result<T, String> {
    let payload = message
        .payload()
        .ok_or_else(|| "the record has no value".to_owned())?;
    decode::<T>(payload).map_err(|error| error.to_string())
}

fn error_response(error: String) -> LastResponse {
    LastResponse {
        status: None,
        body_prefix: String::new(),
        error,
    }
}

/// Returns one line about an endpoint's last response, for the dead-letter detail header.
fn describe_response(response: &LastResponse) -> String {
    match response.status {
        Some(status) => format!("HTTP {status}: {}", response.body_prefix),
        None => response.error.clone(),
    }
}

/// Converts an epoch time in milliseconds to a tokio instant; a past time is now.
fn due_instant(due_at_ms: i64) -> tokio::time::Instant {
    let wait_ms = u64::try_from(due_at_ms - now_ms()).unwrap_or(0);
    tokio::time::Instant::now() + Duration::from_millis(wait_ms)
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Returns the wall clock in milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, duration_ms)
}

async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
