//! The webhook dispatcher `fieldforce-webhooks`: tells other systems about stored and
//! flagged submissions.
//!
//! - Input: the stored-submissions topic, which the sink writes only after the store
//!   acknowledged a submission, and the retry topics. One consumer group reads all of them;
//!   pausing works per partition, so a retry tier waiting for its records to fall due never
//!   holds up new events or the other tiers.
//! - Subscriptions: read from their compacted topic at start until caught up, then followed
//!   ([`crate::registry`]); a subscription applies to events read after it.
//! - [`delivery`]: delivery ids, bodies, signatures and the retry schedule.
//! - [`guard`]: the outbound address guard.
//! - [`sender`]: one HTTP attempt.
//! - [`dispatcher`]: the loop: consuming, holding retries until due, and storing offsets.
//! - [`task`]: one delivery: the per-endpoint limits, the attempt, and where a failed
//!   delivery goes.
//!
//! Deliveries are at least once. A delivery's id depends only on the subscription, the
//! submission, its revision and the event, so every retry, a replay after a crash and a second
//! announcement of the same stored revision all carry the same id, and receivers deduplicate
//! on the `X-FieldForce-Delivery` header.

pub mod delivery;
pub mod dispatcher;
pub mod guard;
pub mod sender;
pub mod task;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fieldforce_kafka::catalog::{
    SUBMISSIONS_DEADLETTER, SUBMISSIONS_STORED, WEBHOOKS_DEADLETTER, WEBHOOKS_RETRY_TIERS,
    WEBHOOKS_SUBSCRIPTIONS,
};
use fieldforce_kafka::client::{consumer_config, producer_config};
use fieldforce_kafka::offsets::OffsetTracker;
use fieldforce_runtime::config::Config;
use fieldforce_runtime::shutdown::Shutdown;
use fieldforce_schemas::webhook::WebhookSubscription;
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureProducer;

use crate::ProcessorError;
use crate::metrics::{Metrics, WebhookMetrics};
use crate::pipeline::{GroupConsumer, RebalanceContext};
use crate::registry::caught_up_registry;

pub use dispatcher::STAGE;

/// Consumer group of the dispatcher, after `processors.group_id_prefix`.
pub const GROUP_ID: &str = "fieldforce-webhooks";

/// Runs the dispatcher until `shutdown` fires, then drains open deliveries and commits.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), ProcessorError> {
    let group_id = format!("{}{GROUP_ID}", config.processors.group_id_prefix);
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry, STAGE, &group_id);
    let webhook_metrics = WebhookMetrics::register(&mut registry);
    let ready = crate::admin::start(&config, registry, shutdown.clone()).await?;

    let subscriptions = caught_up_registry::<WebhookSubscription>(
        &config,
        WEBHOOKS_SUBSCRIPTIONS,
        shutdown.clone(),
    )
    .await?;

    let topics = task::Topics {
        events: config.kafka.topic(SUBMISSIONS_STORED),
        retry: WEBHOOKS_RETRY_TIERS
            .iter()
            .map(|tier| config.kafka.topic(tier))
            .collect(),
        dead_letter: config.kafka.topic(WEBHOOKS_DEADLETTER),
        submissions_dead_letter: config.kafka.topic(SUBMISSIONS_DEADLETTER),
    };
    let tracker = Arc::new(Mutex::new(OffsetTracker::new()));
    let context = RebalanceContext {
        tracker: Arc::clone(&tracker),
        metrics: metrics.clone(),
        stage: STAGE,
    };
    let mut client_config = consumer_config(&config.kafka, &group_id);
    // Caps what librdkafka prefetches per partition, which also bounds the retry records
    // fetched past a held one before its partition is paused.
    client_config.set("queued.max.messages.kbytes", "16384");
    let consumer: Arc<GroupConsumer> = Arc::new(client_config.create_with_context(context)?);
    let mut subscribed: Vec<&str> = vec![topics.events.as_str()];
    subscribed.extend(topics.retry.iter().map(String::as_str));
    consumer.subscribe(&subscribed)?;
    let producer: FutureProducer = producer_config(&config.kafka).create()?;

    let guard = guard::AddressGuard::new(config.webhooks.allowed_endpoints());
    let extra_roots = sender::load_ca_certificates(&config.webhooks.extra_ca_certificate_files)?;
    let sender = sender::Sender::new(guard, config.webhooks.response_body_max_bytes, extra_roots);
    let processors = &config.processors;
    let shared = Arc::new(task::Shared::new(
        producer,
        subscriptions,
        sender,
        config.webhooks.clone(),
        topics,
        webhook_metrics,
        (
            Duration::from_millis(processors.retry_backoff_initial_ms),
            Duration::from_millis(processors.retry_backoff_max_ms),
        ),
        shutdown,
    ));
    tracing::info!(stage = STAGE, group = %group_id, "webhook dispatcher started");
    ready.set();

    dispatcher::Dispatcher::new(consumer, tracker, shared, metrics)
        .run(Duration::from_millis(processors.shutdown_drain_timeout_ms))
        .await
}
