//! The MongoDB sink: reads processed submissions from Kafka and writes one document per
//! submission into MongoDB with batched, idempotent bulk writes, then announces each stored
//! submission on the stored-submissions topic. A partition's offset moves only after the
//! store acknowledged every document before it and Kafka acknowledged their events.
//!
//! - [`document`]: the stored shape of a submission.
//! - [`store`]: the collection, its indexes, and the idempotent write of a batch.
//! - [`sink`]: the loop that batches, writes, retries, dead-letters and stores offsets.
//! - [`consumer`]: rebalance callbacks and offset storing.
//! - [`metrics`] and [`admin`]: `/metrics` and `/healthz`.
//! - [`error`]: failures that stop the sink, and the dead-letter reason codes.

#![deny(missing_docs)]

pub mod admin;
pub mod consumer;
pub mod document;
pub mod error;
pub mod metrics;
pub mod sink;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use fieldforce_kafka::catalog::{
    SINK_GROUP, SUBMISSIONS_DEADLETTER, SUBMISSIONS_PROCESSED, SUBMISSIONS_STORED,
};
use fieldforce_kafka::client::{consumer_config, producer_config};
use fieldforce_kafka::lag::consumer::ConsumerLagSampler;
use fieldforce_runtime::config::Config;
use fieldforce_runtime::shutdown::Shutdown;
use prometheus_client::registry::Registry;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;

pub use error::SinkError;

/// Consumer group of the sink, before the deployment's `sink.group_id_prefix`.
pub const GROUP_ID: &str = SINK_GROUP;

/// Returns the sink's consumer group id in this deployment.
pub fn group_id(config: &Config) -> String {
    format!("{}{GROUP_ID}", config.sink.group_id_prefix)
}

/// Runs the sink until `shutdown` fires, then drains the open batch and commits.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), SinkError> {
    let group_id = group_id(&config);
    let mut registry = Registry::default();
    let metrics = metrics::Metrics::new(&mut registry, &group_id);
    let listener = tokio::net::TcpListener::bind(&config.sink.admin_listen_addr)
        .await
        .map_err(|source| SinkError::AdminBind {
            address: config.sink.admin_listen_addr.clone(),
            source,
        })?;
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "admin server listening");
    }
    tokio::spawn(admin::serve(listener, Arc::new(registry), shutdown.clone()));

    let store = store::Store::connect(&config.mongodb, &config.sink).await?;
    if !ensure_indexes(&store, &config, &shutdown).await {
        return Ok(());
    }

    let client_config = consumer_config(&config.kafka, &group_id);
    let context = consumer::SinkContext::new(metrics.clone());
    let tracker = context.shared_tracker();
    let consumer: Arc<StreamConsumer<consumer::SinkContext>> =
        Arc::new(client_config.create_with_context(context)?);
    let topic = config.kafka.topic(SUBMISSIONS_PROCESSED);
    consumer.subscribe(&[&topic])?;
    ConsumerLagSampler::new(&config.kafka, &consumer, tracker, metrics.lag.clone())?.spawn(
        Duration::from_millis(config.sink.lag_sample_interval_ms),
        shutdown.clone(),
    );
    let producer: FutureProducer = producer_config(&config.kafka).create()?;
    tracing::info!(
        topic,
        group = group_id,
        database = config.mongodb.database,
        "sink started"
    );

    sink::SinkLoop::new(
        consumer,
        producer,
        store,
        metrics,
        config.sink.clone(),
        sink::OutputTopics {
            dead_letter: config.kafka.topic(SUBMISSIONS_DEADLETTER),
            stored: config.kafka.topic(SUBMISSIONS_STORED),
        },
        shutdown,
    )
    .run()
    .await;
    Ok(())
}

/// Creates the indexes, retrying while the store is unreachable. Returns false when shutdown
/// started first.
async fn ensure_indexes(store: &store::Store, config: &Config, shutdown: &Shutdown) -> bool {
    let mut backoff = Duration::from_millis(config.sink.retry_initial_backoff_ms);
    let mut shutdown = shutdown.clone();
    loop {
        match store.ensure_indexes().await {
            Ok(()) => return true,
            Err(error) => tracing::warn!(%error, "store unreachable at start, retrying"),
        }
        tokio::select! {
            _ = shutdown.wait() => return false,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_millis(config.sink.retry_max_backoff_ms));
    }
}
