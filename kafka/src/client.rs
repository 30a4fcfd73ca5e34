//! librdkafka configurations for every FieldForce client.

use fieldforce_runtime::config::KafkaConfig;
use fieldforce_schemas::codec::JSON_CONTENT_TYPE;
use fieldforce_schemas::headers;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};

/// Returns the settings every client shares: brokers plus the pass-through properties.
pub fn base_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (key, value) in kafka.client_properties() {
        config.set(key, value);
    }
    config
}

/// Returns a producer configuration whose delivery report means the record is durable.
pub fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = base_config(kafka);
    config
        // Idempotence makes retries after a lost acknowledgement write the record once, and
        // keeps per-partition order; it requires acks=all.
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        // A short linger batches bursts without adding noticeable latency to a single post.
        .set("linger.ms", "5")
        // A record not delivered in time fails its delivery report instead of hanging a
        // client request forever.
        .set("message.timeout.ms", "30000");
    // Pass-through properties win over these defaults.
    for (key, value) in kafka.client_properties() {
        config.set(key, value);
    }
    config
}

/// Returns a consumer configuration for a consumer group that stores offsets itself.
///
/// Offsets are committed in the background only after the service has stored them, and it
/// stores an offset only once the output behind it is durable. Cooperative-sticky assignment
/// moves only the partitions that must move on a rebalance.
pub fn consumer_config(kafka: &KafkaConfig, group_id: &str) -> ClientConfig {
    let mut config = base_config(kafka);
    config
        .set("group.id", group_id)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("auto.commit.interval.ms", "1000")
        // Fetch to the committed offset only, never past an open transaction.
        .set("isolation.level", "read_committed")
        // librdkafka prefetches up to 64 MiB by default, the largest part of a consumer's
        // resident memory while a backlog drains. 16 MiB kept six partitions fed in the
        // processor benchmarks.
        .set("queued.max.messages.kbytes", "16384")
        // With a full prefetch queue librdkafka postpones the partition's next fetch by this
        // long. Its default of a second left the consumer idle once the queue drained.
        .set("fetch.queue.backoff.ms", "10");
    for (key, value) in kafka.client_properties() {
        config.set(key, value);
    }
    config
}

/// Returns a configuration for a consumer that only reads assigned partitions: it never
/// subscribes, so it never joins its group, and it never commits.
pub fn reader_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = base_config(kafka);
    config
        // librdkafka refuses assign() without a group id, even though nothing is committed.
        .set("group.id", "fieldforce-reader")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    config
}

/// Returns the headers of a JSON contract record: the JSON content type and `schema`, the
/// contract's schema header such as `submission-stored/1`.
pub fn json_record_headers(schema: &str) -> OwnedHeaders {
    OwnedHeaders::new()
        .insert(Header {
            key: headers::CONTENT_TYPE,
            value: Some(JSON_CONTENT_TYPE),
        })
        .insert(Header {
            key: headers::SCHEMA,
            value: Some(schema),
        })
}
