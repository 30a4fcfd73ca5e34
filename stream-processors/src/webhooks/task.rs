//! One delivery task: plan the deliveries of an event, make one attempt, and hand a failed
//! delivery to its next topic, waiting for Kafka's acknowledgement.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use fieldforce_kafka::client::json_record_headers;
use fieldforce_kafka::dead_letter::{DeadLetterReason, dead_letter_record};
use fieldforce_runtime::config::WebhooksConfig;
use fieldforce_runtime::shutdown::Shutdown;
use fieldforce_schemas::codec::{Contract, encode};
use fieldforce_schemas::headers;
use fieldforce_schemas::webhook::{
    EndpointUrl, LastResponse, SubmissionStored, WEBHOOK_DELIVERY_VERSION, WebhookDelivery,
    WebhookSubscription,
};
use rdkafka::Message;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tokio::sync::Semaphore;

use super::delivery::{self, NextStep, RetrySchedule};
use super::dispatcher::STAGE;
use super::sender::{AttemptOutcome, Outgoing, Sender};
use crate::metrics::{DeliveryOutcome, WebhookMetrics};
use crate::registry::Registry;

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

/// Makes one attempt of a delivery and hands a failure to its next topic.
pub(super) async fn deliver(shared: &Shared, mut delivery: WebhookDelivery) -> bool {
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
pub(super) async fn dead_letter_input(
    shared: &Shared,
    message: &OwnedMessage,
    detail: String,
) -> bool {
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

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Returns the wall clock in milliseconds since the Unix epoch.
pub(super) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, duration_ms)
}
