//! Starting the gateway on a listener and stopping it: build the producer, the index and
//! the blob store, serve HTTP/1.1 until shutdown, then drain in-flight requests within the
//! deadline, flush the producer and the index writes, and return.

use std::sync::Arc;
use std::time::Duration;

use fieldforce_kafka::catalog::{
    FORMS, PROJECT_SETTINGS, SUBMISSIONS_RAW, SUBMISSIONS_STORED, WEBHOOKS_SUBSCRIPTIONS,
};
use fieldforce_runtime::config::Config;
use fieldforce_runtime::shutdown::Shutdown;
use fieldforce_schemas::analytics::DAILY_COLLECTION;
use fieldforce_schemas::submission::STORED_COLLECTION;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::admission::Admission;
use crate::auth::Authenticator;
use crate::blob::{self, BlobConfigError};
use crate::index::{IndexSettings, IndexStore, MongoIndexStore, SubmissionIndex, stored_events};
use crate::intake::Intake;
use crate::metrics::Metrics;
use crate::producer::GatewayProducer;
use crate::routes::{AppState, handle};

/// How long a client may take to send the request headers, against slow-header attacks.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a failed accept (out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The gateway could not start; the process stops.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listener's address could not be read.
    #[error("reading the listener address failed: {0}")]
    Listener(std::io::Error),
    /// The Kafka producer could not be created from the configuration.
    #[error("creating the kafka producer failed: {0}")]
    Producer(#[from] rdkafka::error::KafkaError),
    /// The MongoDB connection string is invalid.
    #[error("configuring the mongodb client failed: {0}")]
    Mongo(#[from] mongodb::error::Error),
    /// The blob store could not be set up.
    #[error(transparent)]
    BlobStore(#[from] BlobConfigError),
}

/// Serves the gateway on `listener` until `shutdown` triggers, then drains and flushes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    mut shutdown: Shutdown,
) -> Result<(), StartError> {
    let address = listener.local_addr().map_err(StartError::Listener)?;
    let gateway = &config.gateway;
    let deadline = Duration::from_millis(gateway.shutdown_timeout_ms);

    let producer = Arc::new(GatewayProducer::new(&config)?);
    let metrics = Arc::new(Metrics::new());
    let mongo = mongo_client(&config).await?;
    let database = mongo.database(&config.mongodb.database);
    let index_store: Arc<dyn IndexStore> = Arc::new(MongoIndexStore::new(
        database.collection(&config.gateway.index_collection),
        database.collection(STORED_COLLECTION),
    ));
    let index = SubmissionIndex::new(Some(index_store), &IndexSettings::from_config(gateway));
    if let Some(stored_keys) = index.stored_keys() {
        tokio::spawn(stored_events::follow(
            config.kafka.clone(),
            config.kafka.topic(SUBMISSIONS_STORED),
            stored_keys,
            shutdown.clone(),
        ));
    }
    let blobs = blob::open(gateway)?;
    let state = Arc::new(AppState {
        config: gateway.clone(),
        auth: Authenticator::new(gateway, address.ip().is_loopback()),
        admission: Admission::new(
            gateway,
            metrics.in_flight_body_bytes("document"),
            metrics.in_flight_body_bytes("multipart"),
        ),
        intake: Intake {
            producer: producer.clone(),
            index,
            blobs,
            metrics: metrics.clone(),
            raw_topic: config.kafka.topic(SUBMISSIONS_RAW),
        },
        producer: producer.clone(),
        metrics,
        forms_topic: config.kafka.topic(FORMS),
        settings_topic: config.kafka.topic(PROJECT_SETTINGS),
        webhooks_topic: config.kafka.topic(WEBHOOKS_SUBSCRIPTIONS),
        kafka: config.kafka.clone(),
        analytics: database.collection(DAILY_COLLECTION),
    });
    tokio::spawn(producer.clone().probe_brokers(shutdown.clone()));

    tracing::info!(%address, "gateway listening");
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let state = state.clone();
        let service = service_fn(move |request| handle(state.clone(), request));
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }

    drop(listener);
    tracing::info!("gateway stopped accepting, draining in-flight requests");
    if tokio::time::timeout(deadline, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            timeout_ms = gateway.shutdown_timeout_ms,
            "in-flight requests not finished before the shutdown deadline"
        );
    }
    producer.flush(deadline).await;
    state.intake.index.flush(deadline).await;
    tracing::info!("gateway stopped");
    Ok(())
}

/// Builds the MongoDB client of the submission index and the stats endpoint. The client
/// connects lazily, so a database that is down at start only costs the index its memory-only
/// fallback and the stats endpoint its responses (503) until it is back.
async fn mongo_client(config: &Config) -> Result<mongodb::Client, StartError> {
    let mut options = mongodb::options::ClientOptions::parse(&config.mongodb.uri).await?;
    let timeout = Duration::from_millis(config.gateway.index_timeout_ms);
    options.server_selection_timeout = Some(timeout);
    options.connect_timeout = Some(timeout);
    options.app_name = Some("fieldforce-gateway".to_owned());
    Ok(mongodb::Client::with_options(options)?)
}
