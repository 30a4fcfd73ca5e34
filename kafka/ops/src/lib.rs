//! `fieldforce-ops`: the operations page of a FieldForce deployment, served on its own admin
//! port (`ops.listen_addr`, default `127.0.0.1:9400`).
//!
//! Every `ops.sample_interval_ms` it samples the lag of each pipeline consumer group per
//! partition, the offsets of every catalog topic (throughput is their change per second, dead
//! letters the dead-letter topic's), and the `/healthz` of every service in `ops.services`. It
//! keeps the samples of the last `ops.history_s` in a bounded ring and serves:
//!
//! - `/`: the page, one self-contained HTML document whose inline script draws the charts as
//!   SVG, so it works with no network access beyond this service;
//! - `/api/overview`: the JSON the page reads;
//! - `/healthz` and `/metrics`.
//!
//! It is a crate of its own under `kafka/` rather than a binary of `fieldforce-kafka`, because
//! the page needs an HTTP server and client that every service linking the Kafka plumbing
//! would otherwise compile in. What it reads (the catalog, lag sampling and group status)
//! stays in `fieldforce-kafka`, shared with the `fieldforce-lag` command.
//!
//! - [`sampler`]: one sample of the cluster and the services.
//! - [`history`]: the ring of samples and the overview built from it.
//! - [`server`]: the HTTP routes and the page.
//! - [`metrics`]: the service's own metrics.

#![deny(missing_docs)]

pub mod history;
pub mod metrics;
pub mod sampler;
pub mod server;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use fieldforce_kafka::catalog::SUBMISSIONS_DEADLETTER;
use fieldforce_kafka::lag::{LagError, Thresholds};
use fieldforce_runtime::config::Config;
use fieldforce_runtime::shutdown::Shutdown;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::history::{History, OverviewSettings};
use crate::metrics::{Metrics, ServiceLabel};
use crate::sampler::Sampler;

/// A failure that stops the operations service: its Kafka clients cannot be created from the
/// configuration. Restarting with the same configuration fails the same way.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The Kafka clients could not be created.
    #[error("creating the Kafka clients failed: {0}")]
    Kafka(#[from] LagError),
}

/// Shared state of the HTTP handlers.
#[derive(Debug)]
pub struct State {
    /// The kept samples.
    pub history: Mutex<History>,
    /// Settings of the overview.
    pub settings: OverviewSettings,
    /// Every metric of the service.
    pub registry: Registry,
}

impl State {
    /// Builds the overview of the samples taken so far.
    pub fn overview(&self) -> history::Overview {
        self.history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .overview(&self.settings)
    }
}

/// Samples and serves on `listener` until shutdown.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), OpsError> {
    let ops = &config.ops;
    let interval = Duration::from_millis(ops.sample_interval_ms);
    let history = Duration::from_secs(ops.history_s);
    let settings = OverviewSettings {
        sample_interval: interval,
        history,
        status_window: Duration::from_millis(ops.status_window_ms),
        thresholds: Thresholds {
            records: ops.lagging_records,
            seconds: ops.lagging_seconds,
        },
        dead_letter_topic: config.kafka.topic(SUBMISSIONS_DEADLETTER),
    };
    let sampler = Sampler::new(&config)?;
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let state = Arc::new(State {
        history: Mutex::new(History::new(history, interval)),
        settings,
        registry,
    });

    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "operations page listening");
    }
    let server = tokio::spawn(server::serve(
        listener,
        Arc::clone(&state),
        shutdown.clone(),
    ));
    sample_until_shutdown(&sampler, &state, &metrics, interval, shutdown).await;
    if server.await.is_err() {
        tracing::warn!("operations server task panicked");
    }
    tracing::info!("operations service stopped");
    Ok(())
}

/// Takes a sample at once and then every `interval`, until shutdown.
async fn sample_until_shutdown(
    sampler: &Sampler,
    state: &State,
    metrics: &Metrics,
    interval: Duration,
    mut shutdown: Shutdown,
) {
    let mut ticks = tokio::time::interval(interval);
    // A slow sample delays the next one instead of causing a burst of catch-up samples.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = ticks.tick() => {}
        }
        let started = Instant::now();
        let sample = tokio::select! {
            _ = shutdown.wait() => return,
            sample = sampler.sample() => sample,
        };
        metrics.samples.inc();
        metrics
            .sample_duration_seconds
            .observe(started.elapsed().as_secs_f64());
        if let Some(error) = &sample.kafka_error {
            metrics.sample_failures.inc();
            tracing::warn!(%error, "kafka sample failed, retrying at the next interval");
        }
        for service in &sample.services {
            metrics
                .service_up
                .get_or_create(&ServiceLabel {
                    service: service.name.clone(),
                })
                .set(i64::from(service.healthy));
        }
        state
            .history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(sample);
        metrics.set_groups(&state.overview().groups);
    }
}
