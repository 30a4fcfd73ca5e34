//! `memory` mode: one `fieldforce-sink` process drains BACKLOGS backlogs of DOCUMENTS records
//! one after the other, and the benchmark samples its resident memory every 250 ms.
//!
//! The first backlog is in Kafka before the sink starts. Each later one is produced as soon
//! as the sink's group committed every record before it, while the sink keeps running. A
//! level reached in the first drain and kept through the next ones is the sink's working
//! size, not growth. There is no raw loop in this mode: it measures memory, not rates.
//!
//! For each backlog the report has the VmRSS range and, per tenth of the backlog's drain
//! time, the records committed and the highest VmRSS, RssAnon and RssFile of that tenth
//! (`/proc/PID/status`).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fieldforce_kafka::catalog::{Catalog, SUBMISSIONS_PROCESSED};
use fieldforce_kafka::client::base_config;
use mongodb::Client;
use rdkafka::consumer::BaseConsumer;

use crate::sink::{
    committed_total, delete_topics, partition_count, produce_backlog, round_config, sink_binary,
    start_sink, status_kib, stop, verify_stored,
};

/// How often the sink's memory and committed offsets are sampled.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(250);

/// Maximum duration of the whole run before the benchmark gives up.
const RUN_TIMEOUT: Duration = Duration::from_secs(3_600);

/// One sample of the sink process.
struct Sample {
    /// Time since the sink process started.
    at: Duration,
    committed: i64,
    rss_kib: u64,
    anon_kib: u64,
    file_kib: u64,
}

/// Runs the sink over `backlogs` backlogs of `documents` records and prints its memory over
/// each drain.
pub async fn drain(
    client: &Client,
    uri: &str,
    documents: usize,
    backlogs: usize,
) -> anyhow::Result<()> {
    if backlogs == 0 {
        bail!("BACKLOGS must be at least 1");
    }
    let binary = sink_binary()?;
    let config = round_config(uri);
    fieldforce_kafka::admin::apply(&config.kafka, &Catalog::embedded(), true).await?;
    produce_backlog(&config, 0..documents).await?;

    let topic = config.kafka.topic(SUBMISSIONS_PROCESSED);
    let offsets: BaseConsumer = base_config(&config.kafka)
        .set("group.id", fieldforce_sink_mongodb::group_id(&config))
        .create()?;
    let partitions = partition_count(&offsets, &topic)?;
    let admin_address = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;

    let started = Instant::now();
    let mut child = start_sink(&binary, &config, admin_address)?;
    let mut samples = Vec::new();
    let mut ends = Vec::new();
    let mut produced = documents;
    let mut producing = None;
    loop {
        tokio::time::sleep(SAMPLE_INTERVAL).await;
        let status = |field| status_kib(child.id(), field);
        let committed = committed_total(&offsets, &topic, partitions)?;
        samples.push(Sample {
            at: started.elapsed(),
            committed,
            rss_kib: status("VmRSS:"),
            anon_kib: status("RssAnon:"),
            file_kib: status("RssFile:"),
        });

        if committed >= produced as i64 {
            ends.push(started.elapsed());
            println!(
                "backlog {}: {produced} records committed {:.1} s after the sink started",
                ends.len(),
                started.elapsed().as_secs_f64()
            );
            if ends.len() == backlogs {
                break;
            }
            // The next backlog is produced beside the sampling, which would otherwise stop
            // for as long as producing takes.
            let next = produced..produced + documents;
            let config = config.clone();
            producing = Some(tokio::spawn(
                async move { produce_backlog(&config, next).await },
            ));
            produced += documents;
        }
        if let Some(status) = child.try_wait()? {
            bail!("sink exited with {status} before committing every backlog");
        }
        if started.elapsed() > RUN_TIMEOUT {
            stop(&mut child)?;
            bail!("sink did not commit {produced} records within {RUN_TIMEOUT:?}");
        }
    }
    stop(&mut child)?;
    if let Some(producing) = producing {
        producing.await.context("producing a backlog panicked")??;
    }

    let mut start = Duration::ZERO;
    for (index, &end) in ends.iter().enumerate() {
        let drain: Vec<&Sample> = samples
            .iter()
            .filter(|sample| sample.at > start && sample.at <= end)
            .collect();
        print_drain(index + 1, start, end, &drain);
        start = end;
    }

    verify_stored(&config, 0..produced).await?;
    client.database(&config.mongodb.database).drop().await?;
    delete_topics(&config).await?;
    Ok(())
}

/// Prints the VmRSS range of one backlog's drain and a table row per tenth of it.
fn print_drain(backlog: usize, start: Duration, end: Duration, samples: &[&Sample]) {
    let mut rss: Vec<u64> = samples.iter().map(|sample| sample.rss_kib).collect();
    rss.sort_unstable();
    println!(
        "backlog {backlog}: {:.1} to {:.1} s, {} samples, VmRSS min {} KiB, median {} KiB, \
         max {} KiB",
        start.as_secs_f64(),
        end.as_secs_f64(),
        rss.len(),
        rss.first().copied().unwrap_or(0),
        rss.get(rss.len() / 2).copied().unwrap_or(0),
        rss.last().copied().unwrap_or(0),
    );
    println!(
        "| tenth | until (s) | records committed | max VmRSS (KiB) | max RssAnon (KiB) | max RssFile (KiB) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let length = end.saturating_sub(start);
    for tenth in 1..=10u32 {
        let until = start + length * tenth / 10;
        let from = start + length * (tenth - 1) / 10;
        let part: Vec<&&Sample> = samples
            .iter()
            .filter(|sample| sample.at > from && sample.at <= until)
            .collect();
        let max = |value: fn(&Sample) -> u64| part.iter().map(|s| value(s)).max().unwrap_or(0);
        println!(
            "| {tenth} | {:.1} | {} | {} | {} | {} |",
            until.as_secs_f64(),
            part.last().map_or(0, |sample| sample.committed),
            max(|sample| sample.rss_kib),
            max(|sample| sample.anon_kib),
            max(|sample| sample.file_kib),
        );
    }
}
