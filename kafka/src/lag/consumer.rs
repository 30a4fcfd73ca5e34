//! Lag sampled inside a consumer service, for its [`LagMetrics`] gauges.
//!
//! Only the service can tell which records it has read but not finished, so it measures from the
//! oldest of them: the lag in records runs from that record to the log end, and the lag in
//! seconds is that record's age. With nothing in flight the measure starts at the consumer's
//! position (the next record it will be handed), or at the committed offset before it has read
//! anything, and the age is that of the record at that offset, read with a separate client.
//!
//! Sampling makes broker requests (log end offsets, committed offsets, one fetch per lagging
//! partition) that block for up to seconds, so each sample runs on a blocking thread and never
//! on an async worker.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use fieldforce_runtime::config::KafkaConfig;
use fieldforce_runtime::shutdown::Shutdown;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use tokio::task::JoinHandle;

use super::metrics::LagMetrics;
use super::{LagError, REQUEST_TIMEOUT, age_seconds, now_ms, record_timestamps};
use crate::client::reader_config;
use crate::offsets::{OffsetTracker, TopicPartition};

/// Samples the lag of the partitions assigned to one consumer and writes it to its gauges.
pub struct ConsumerLagSampler<C, X> {
    /// Weak, so that the sampler never keeps a stopped service's consumer in its group.
    consumer: Weak<C>,
    tracker: Arc<Mutex<OffsetTracker>>,
    metrics: LagMetrics,
    /// Reads log end offsets and the records whose timestamps give the lag in seconds; it never
    /// joins a group.
    reader: BaseConsumer,
    context: PhantomData<fn() -> X>,
}

impl<C, X> ConsumerLagSampler<C, X>
where
    C: Consumer<X> + Send + Sync + 'static,
    X: ConsumerContext + 'static,
{
    /// Creates a sampler for `consumer`, whose in-flight records `tracker` follows and whose
    /// rebalance callbacks keep `metrics` assigned.
    pub fn new(
        kafka: &KafkaConfig,
        consumer: &Arc<C>,
        tracker: Arc<Mutex<OffsetTracker>>,
        metrics: LagMetrics,
    ) -> Result<Self, KafkaError> {
        Ok(Self {
            consumer: Arc::downgrade(consumer),
            tracker,
            metrics,
            reader: reader_config(kafka).create()?,
            context: PhantomData,
        })
    }

    /// Samples every assigned partition once and sets its gauges. Blocks on broker requests.
    /// Returns false once the consumer is gone.
    pub fn sample(&self) -> Result<bool, LagError> {
        let Some(consumer) = self.consumer.upgrade() else {
            return Ok(false);
        };
        let assigned = self.metrics.assigned();
        if assigned.is_empty() {
            return Ok(true);
        }

        let positions = offsets_of(&consumer.position()?);
        let in_flight: HashMap<TopicPartition, (i64, Option<i64>)> = {
            let tracker = self.tracker.lock().unwrap_or_else(PoisonError::into_inner);
            assigned
                .iter()
                .filter_map(|partition| {
                    let oldest = tracker.oldest_in_flight(partition)?;
                    Some((partition.clone(), oldest))
                })
                .collect()
        };
        // A partition that handed out no record since it was assigned has no position yet;
        // the consumer starts it at the committed offset.
        let mut unread = TopicPartitionList::new();
        for partition in &assigned {
            if !in_flight.contains_key(partition) && !positions.contains_key(partition) {
                unread.add_partition(&partition.0, partition.1);
            }
        }
        let committed = if unread.count() == 0 {
            HashMap::new()
        } else {
            offsets_of(&consumer.committed_offsets(unread, REQUEST_TIMEOUT)?)
        };
        drop(consumer);

        let now_ms = now_ms();
        let mut lags = Vec::with_capacity(assigned.len());
        let mut unknown_age = Vec::new();
        for partition in assigned {
            let (log_start, log_end) =
                self.reader
                    .fetch_watermarks(&partition.0, partition.1, REQUEST_TIMEOUT)?;
            let (oldest, age) = match in_flight.get(&partition) {
                Some(&(offset, timestamp_ms)) => (
                    offset,
                    Some(timestamp_ms.map_or(0.0, |timestamp| age_seconds(now_ms, timestamp))),
                ),
                None => {
                    let next = positions
                        .get(&partition)
                        .or_else(|| committed.get(&partition))
                        .copied()
                        .unwrap_or(log_start);
                    (next, None)
                }
            };
            // Retention may have deleted records the group never read; they count as lost,
            // not as lag.
            let oldest = oldest.max(log_start);
            let records = (log_end - oldest).max(0);
            let age = match age {
                Some(seconds) => Some(seconds),
                None if records == 0 => Some(0.0),
                None => {
                    unknown_age.push((partition.clone(), oldest));
                    None
                }
            };
            lags.push((partition, records, age));
        }

        let timestamps = record_timestamps(&self.reader, &unknown_age)?;
        for (partition, records, age) in lags {
            let seconds = age
                .or_else(|| {
                    let timestamp_ms = timestamps.get(&partition)?;
                    Some(age_seconds(now_ms, *timestamp_ms))
                })
                .unwrap_or(0.0);
            self.metrics
                .set(&partition.0, partition.1, records, seconds);
        }
        Ok(true)
    }

    /// Samples every `interval` until shutdown or until the consumer is dropped.
    pub fn spawn(self, interval: Duration, mut shutdown: Shutdown) -> JoinHandle<()> {
        let sampler = Arc::new(self);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
                let sampling = Arc::clone(&sampler);
                // Broker requests block for up to the request timeout.
                let outcome = tokio::task::spawn_blocking(move || sampling.sample()).await;
                match outcome {
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) => return,
                    Ok(Err(error)) => {
                        tracing::warn!(group = sampler.metrics.group(), %error, "lag sample failed, retrying at the next interval");
                    }
                    Err(error) => {
                        tracing::warn!(group = sampler.metrics.group(), %error, "lag sample task failed, retrying at the next interval");
                    }
                }
            }
        })
    }
}

/// Returns the partitions of a list that carry an offset, with that offset.
fn offsets_of(list: &TopicPartitionList) -> HashMap<TopicPartition, i64> {
    list.elements()
        .iter()
        .filter_map(|element| match element.offset() {
            Offset::Offset(offset) => {
                Some(((element.topic().to_owned(), element.partition()), offset))
            }
            _ => None,
        })
        .collect()
}
