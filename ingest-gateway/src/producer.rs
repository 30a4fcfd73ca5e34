//! The gateway's one Kafka producer: idempotent, `acks=all`, and awaited per record, so that a
//! success answer is sent only after the broker reported the record durable.
//!
//! Broker health comes from two sources: librdkafka's error callback reports "all brokers
//! down" at once, and a metadata probe every few seconds notices when the brokers answer
//! again. Together with the producer queue's fill level they drive `/readyz`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fieldforce_kafka::trace_context;
use fieldforce_runtime::config::Config;
use fieldforce_runtime::shutdown::Shutdown;
use fieldforce_schemas::headers;
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tracing::Instrument;

/// How often the metadata probe asks the brokers whether they answer.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// How long one metadata probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Share of the producer queue above which the gateway reports not ready.
const QUEUE_NOT_READY_FRACTION: f64 = 0.9;

/// Failure to make a record durable. Every variant means "retry later": the client gets
/// 503 with `Retry-After` and sends again.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The producer's local queue is full, so the broker is slow or unreachable.
    #[error("the producer queue is full")]
    QueueFull,
    /// The record could not be queued or the broker did not acknowledge it in time.
    #[error("kafka did not acknowledge the record: {0}")]
    Kafka(#[from] KafkaError),
    /// No delivery report arrived before the deadline.
    #[error("no delivery report within {0:?}")]
    TimedOut(Duration),
    /// The producer was dropped before reporting.
    #[error("the producer stopped before reporting delivery")]
    Canceled,
}

/// Whether the brokers answered lately, shared with the producer's callbacks.
#[derive(Debug)]
pub struct BrokerHealth {
    reachable: AtomicBool,
}

impl BrokerHealth {
    fn set(&self, reachable: bool) {
        let was = self.reachable.swap(reachable, Ordering::Relaxed);
        if was != reachable {
            if reachable {
                tracing::info!("kafka brokers reachable again");
            } else {
                tracing::warn!("kafka brokers unreachable");
            }
        }
    }
}

/// The client context that turns librdkafka's error callback into broker health.
pub struct GatewayContext {
    health: Arc<BrokerHealth>,
}

impl ClientContext for GatewayContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error, KafkaError::Global(RDKafkaErrorCode::AllBrokersDown)) {
            self.health.set(false);
        }
        tracing::warn!(%error, reason, "kafka client error");
    }
}

/// The producer every request shares.
pub struct GatewayProducer {
    inner: FutureProducer<GatewayContext>,
    health: Arc<BrokerHealth>,
    queue_max_messages: u64,
    delivery_timeout: Duration,
}

impl GatewayProducer {
    /// Creates the producer from the shared Kafka settings and the gateway's delivery
    /// timeout and queue cap.
    pub fn new(config: &Config) -> Result<Self, KafkaError> {
        let gateway = &config.gateway;
        let mut client = fieldforce_kafka::client::producer_config(&config.kafka);
        client
            // A request waits for its own record, so the record's deadline bounds how long a
            // client waits when the broker is down.
            .set(
                "message.timeout.ms",
                gateway.delivery_timeout_ms.to_string(),
            )
            .set(
                "queue.buffering.max.messages",
                gateway.producer_queue_max_messages.to_string(),
            )
            .set("linger.ms", gateway.producer_linger_ms.to_string());
        let health = Arc::new(BrokerHealth {
            reachable: AtomicBool::new(true),
        });
        let inner = client.create_with_context(GatewayContext {
            health: health.clone(),
        })?;
        Ok(Self {
            inner,
            health,
            queue_max_messages: gateway.producer_queue_max_messages,
            delivery_timeout: Duration::from_millis(gateway.delivery_timeout_ms),
        })
    }

    /// Produces one record and waits for its delivery report, in a producer span whose
    /// trace context travels in the record's headers.
    pub async fn send(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        schema: &str,
        timestamp_ms: i64,
    ) -> Result<(), ProduceError> {
        let record_headers = fieldforce_kafka::client::json_record_headers(schema);
        // DEBUG, so that the log filter drops it and only trace export records it.
        let span = tracing::debug_span!(
            "kafka send",
            otel.name = %format_args!("send {topic}"),
            otel.kind = "producer",
            fieldforce.service = "gateway",
            messaging.system = "kafka",
            messaging.destination.name = topic,
        );
        let record_headers =
            trace_context::inject(&span, record_headers).unwrap_or_else(|headers| headers);
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(record_headers)
            .timestamp(timestamp_ms);
        self.deliver(record, span).await
    }

    /// Produces a tombstone (a record without a value) and waits for its delivery report.
    /// On a compacted topic it deletes `key`.
    pub async fn send_tombstone(
        &self,
        topic: &str,
        key: &str,
        schema: &str,
        timestamp_ms: i64,
    ) -> Result<(), ProduceError> {
        let record_headers = OwnedHeaders::new().insert(Header {
            key: headers::SCHEMA,
            value: Some(schema),
        });
        let record = FutureRecord::<str, [u8]>::to(topic)
            .key(key)
            .headers(record_headers)
            .timestamp(timestamp_ms);
        self.deliver(record, tracing::Span::none()).await
    }

    /// Queues a record and waits for its delivery report inside `span`.
    async fn deliver(
        &self,
        record: FutureRecord<'_, str, [u8]>,
        span: tracing::Span,
    ) -> Result<(), ProduceError> {
        let delivery = match self.inner.send_result(record) {
            Ok(delivery) => delivery,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                return Err(ProduceError::QueueFull);
            }
            Err((error, _)) => return Err(error.into()),
        };

        // librdkafka fails the record itself at `message.timeout.ms`; the extra second only
        // guards against a report that never comes.
        let deadline = self.delivery_timeout + Duration::from_secs(1);
        match tokio::time::timeout(deadline, delivery)
            .instrument(span)
            .await
        {
            Ok(Ok(Ok(_))) => {
                self.health.set(true);
                Ok(())
            }
            Ok(Ok(Err((error, _)))) => Err(error.into()),
            Ok(Err(_)) => Err(ProduceError::Canceled),
            Err(_) => Err(ProduceError::TimedOut(deadline)),
        }
    }

    /// Whether the brokers answered lately and the queue has room.
    pub fn is_ready(&self) -> bool {
        let queued = self.inner.in_flight_count().max(0) as f64;
        let room = queued < self.queue_max_messages as f64 * QUEUE_NOT_READY_FRACTION;
        room && self.health.reachable.load(Ordering::Relaxed)
    }

    /// Waits until queued records are delivered or the timeout passes.
    pub async fn flush(self: &Arc<Self>, timeout: Duration) {
        let producer = self.clone();
        // flush blocks on librdkafka, so it runs off the async workers.
        let flushed = tokio::task::spawn_blocking(move || producer.inner.flush(timeout)).await;
        match flushed {
            Ok(Ok(())) => tracing::info!("producer flushed"),
            Ok(Err(error)) => {
                tracing::error!(%error, "producer flush failed, queued records may be lost")
            }
            Err(error) => tracing::error!(%error, "producer flush task failed"),
        }
    }

    /// Probes the brokers with a metadata request until shutdown, so that readiness recovers
    /// once they answer again.
    pub async fn probe_brokers(self: Arc<Self>, mut shutdown: Shutdown) {
        loop {
            let producer = self.clone();
            // fetch_metadata blocks on the network, so it runs off the async workers.
            let probe = tokio::task::spawn_blocking(move || {
                producer
                    .inner
                    .client()
                    .fetch_metadata(None, PROBE_TIMEOUT)
                    .map(|_| ())
            });
            match probe.await {
                Ok(Ok(())) => self.health.set(true),
                Ok(Err(error)) => {
                    tracing::debug!(%error, "kafka metadata probe failed");
                    self.health.set(false);
                }
                Err(error) => tracing::warn!(%error, "kafka metadata probe task failed"),
            }
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            }
        }
    }
}
