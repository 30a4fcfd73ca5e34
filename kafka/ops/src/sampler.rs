//! One sample of the deployment: lag of every pipeline group, offsets of every catalog topic
//! (read on a blocking thread, because librdkafka requests block), and the `/healthz` of every
//! configured service (async HTTP).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fieldforce_kafka::catalog::Catalog;
use fieldforce_kafka::lag::{self, GroupLag, GroupSampler, LagError};
use fieldforce_runtime::config::Config;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rdkafka::consumer::Consumer;

use crate::history::{PartitionOffsets, Sample, ServiceHealth, TopicOffsets};

/// How long one metadata or watermark request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Maximum length of the response body kept as a health detail, in bytes.
const DETAIL_MAX_BYTES: usize = 200;

/// Maximum length of a `/healthz` response body, in bytes; a longer one fails the check.
const BODY_MAX_BYTES: usize = 16 * 1024;

/// Reads lag and topic offsets from the cluster, reusing its clients from sample to sample.
pub struct KafkaSampler {
    sampler: GroupSampler,
    /// Each pipeline group id and the full name of the topic it reads.
    groups: Vec<(String, String)>,
    /// Each catalog topic's catalog name and full name.
    topics: Vec<(String, String)>,
}

impl KafkaSampler {
    /// Creates the sampler's clients.
    pub fn new(config: &Config) -> Result<Self, LagError> {
        let topics = Catalog::embedded()
            .topics
            .iter()
            .map(|topic| (topic.name.clone(), config.kafka.topic(&topic.name)))
            .collect();
        Ok(Self {
            sampler: GroupSampler::new(&config.kafka)?,
            groups: lag::pipeline_groups(config),
            topics,
        })
    }

    /// Samples every group and topic. Blocks on broker requests.
    pub fn sample(&mut self) -> Result<(Vec<GroupLag>, Vec<TopicOffsets>), LagError> {
        let mut groups = Vec::with_capacity(self.groups.len());
        for (group, topic) in &self.groups {
            groups.push(self.sampler.sample(group, std::slice::from_ref(topic))?);
        }

        let reader = self.sampler.reader();
        let mut topics = Vec::with_capacity(self.topics.len());
        for (catalog_name, name) in &self.topics {
            let metadata = reader
                .fetch_metadata(Some(name), REQUEST_TIMEOUT)
                .map_err(LagError::from)?;
            let mut partitions = Vec::new();
            // A topic missing from the cluster comes back with an error and no partitions,
            // and is shown as such.
            for partition in metadata
                .topics()
                .iter()
                .filter(|found| found.name() == name && found.error().is_none())
                .flat_map(|found| found.partitions())
            {
                let (log_start, log_end) = reader
                    .fetch_watermarks(name, partition.id(), REQUEST_TIMEOUT)
                    .map_err(LagError::from)?;
                partitions.push(PartitionOffsets {
                    partition: partition.id(),
                    log_start,
                    log_end,
                });
            }
            partitions.sort_by_key(|partition| partition.partition);
            topics.push(TopicOffsets {
                name: name.clone(),
                catalog_name: catalog_name.clone(),
                partitions,
            });
        }
        Ok((groups, topics))
    }
}

/// Takes whole samples: Kafka on a blocking thread, health checks concurrently meanwhile.
pub struct Sampler {
    kafka: Arc<Mutex<KafkaSampler>>,
    services: Vec<(String, String)>,
    client: Client<HttpConnector, Empty<Bytes>>,
    health_timeout: Duration,
}

impl Sampler {
    /// Creates the sampler's Kafka clients and its HTTP client.
    pub fn new(config: &Config) -> Result<Self, LagError> {
        Ok(Self {
            kafka: Arc::new(Mutex::new(KafkaSampler::new(config)?)),
            services: config
                .ops
                .services
                .iter()
                .map(|(name, url)| (name.clone(), url.trim_end_matches('/').to_owned()))
                .collect(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            health_timeout: Duration::from_millis(config.ops.health_timeout_ms),
        })
    }

    /// Takes one sample. A Kafka failure is recorded in the sample, not returned, so that
    /// service health still shows while the cluster is unreachable.
    pub async fn sample(&self) -> Sample {
        let at_ms = now_ms();
        let kafka = Arc::clone(&self.kafka);
        let kafka_sample = tokio::task::spawn_blocking(move || {
            kafka
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .sample()
        });
        let services = futures::future::join_all(
            self.services
                .iter()
                .map(|(name, url)| self.check(name, url)),
        )
        .await;

        let (groups, topics, kafka_error) = match kafka_sample.await {
            Ok(Ok((groups, topics))) => (groups, topics, None),
            Ok(Err(error)) => (Vec::new(), Vec::new(), Some(error.to_string())),
            Err(error) => (
                Vec::new(),
                Vec::new(),
                Some(format!("the Kafka sample task failed: {error}")),
            ),
        };
        Sample {
            at_ms,
            groups,
            topics,
            services,
            kafka_error,
        }
    }

    async fn check(&self, name: &str, url: &str) -> ServiceHealth {
        let started = Instant::now();
        let outcome =
            tokio::time::timeout(self.health_timeout, self.get(&format!("{url}/healthz"))).await;
        let latency_ms = started.elapsed().as_millis() as u64;
        let (healthy, status, detail) = match outcome {
            Ok(Ok((status, body))) => (
                (200..300).contains(&status),
                Some(status),
                shorten(body.trim()),
            ),
            Ok(Err(error)) => (false, None, shorten(&error)),
            Err(_) => (
                false,
                None,
                format!("timed out after {} ms", self.health_timeout.as_millis()),
            ),
        };
        ServiceHealth {
            name: name.to_owned(),
            url: url.to_owned(),
            healthy,
            status,
            detail,
            latency_ms,
        }
    }

    async fn get(&self, url: &str) -> Result<(u16, String), String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|error| format!("invalid URL {url}: {error}"))?;
        let response = self
            .client
            .get(uri)
            .await
            .map_err(|error| format!("request failed: {error}"))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), BODY_MAX_BYTES)
            .collect()
            .await
            .map_err(|error| format!("reading the response failed: {error}"))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

fn shorten(text: &str) -> String {
    if text.len() <= DETAIL_MAX_BYTES {
        return text.to_owned();
    }
    let mut end = DETAIL_MAX_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Returns the milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or_default()
}
