//! Store benchmarks, run in release mode against a live store and Kafka:
//!
//! - `raw URI`: unordered `insert_many` of ~1.5 KB submission documents in batches of 1,000.
//! - `table URI`: `insert_many` against an `insert_one` loop for 100, 1,000 and 10,000.
//! - `sink URI`: the sink draining a backlog from Kafka beside the raw loop with the same
//!   documents, with the sink's resident memory sampled from `/proc/self/status`.
//!
//! Each figure is the median of three runs, each run in a fresh database.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bson::{RawDocumentBuf, doc};
use fieldforce_kafka::catalog::{Catalog, SUBMISSIONS_PROCESSED};
use fieldforce_kafka::client::{base_config, producer_config};
use fieldforce_runtime::config::Config;
use fieldforce_schemas::codec::encode;
use fieldforce_schemas::submission::{
    ProcessedSubmission, ProcessingStatus, Quality, RawSubmission, SubmissionSource,
};
use fieldforce_sink_mongodb::document::to_document;
use fieldforce_sink_mongodb::store::COLLECTION;
use mongodb::Client;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const RUNS: usize = 3;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let [mode, uri, rest @ ..] = arguments.as_slice() else {
        bail!("usage: fieldforce-store-bench raw|table|sink MONGODB_URI [DOCUMENTS]");
    };
    let documents: usize = rest.first().map_or(Ok(20_000), |value| value.parse())?;
    let client = Client::with_uri_str(uri).await?;
    match mode.as_str() {
        "raw" => {
            let mut rates = Vec::new();
            for run in 0..RUNS {
                let rate = raw_insert_rate(&client, &sample_documents(documents), 1_000).await?;
                println!("run {run}: raw insert_many {documents} docs: {rate:.0} docs/s");
                rates.push(rate);
            }
            println!("median raw insert_many: {:.0} docs/s", median(rates));
        }
        "table" => {
            println!(
                "| documents | insert_many unordered (docs/s) | insert_one loop (docs/s) | ratio |"
            );
            println!("|---:|---:|---:|---:|");
            for count in [100, 1_000, 10_000] {
                let mut bulk = Vec::new();
                let mut single = Vec::new();
                for _ in 0..RUNS {
                    bulk.push(raw_insert_rate(&client, &sample_documents(count), count).await?);
                    single.push(one_by_one_rate(&client, &sample_documents(count)).await?);
                }
                let (bulk, single) = (median(bulk), median(single));
                println!(
                    "| {count} | {bulk:.0} | {single:.0} | {:.1}x |",
                    bulk / single
                );
            }
        }
        "sink" => sink_against_raw(&client, uri, documents).await?,
        other => bail!("unknown mode {other}: expected raw, table or sink"),
    }
    Ok(())
}

fn sample_submission(id: usize) -> ProcessedSubmission {
    let mut fields = serde_json::Map::new();
    for index in 0..30 {
        fields.insert(
            format!("question_{index:02}"),
            serde_json::json!(format!("answer {index} for {id}")),
        );
    }
    let mut processed = ProcessedSubmission::from_raw(RawSubmission {
        schema_version: 1,
        submission_id: format!("bench-{id:08}"),
        revision: 0,
        org_id: "org-1".into(),
        project_id: "project-1".into(),
        form_id: "household_survey".into(),
        form_version: Some("2024060101".into()),
        instance_id: Some(format!("uuid:bench-{id:08}")),
        deprecated_id: None,
        source: SubmissionSource::OpenRosa,
        received_at_ms: 1_717_200_000_000 + id as i64,
        content_sha256: format!("{id:064x}"),
        submitter: Some("enumerator-7".into()),
        device_id: Some("collect:abc123".into()),
        fields,
        attachments: vec![],
        missing_attachments: vec![],
        encrypted: None,
    });
    processed.quality = Some(Quality {
        score: 100,
        flags: vec![],
    });
    processed.processing_status = Some(ProcessingStatus::Processed);
    processed
}

fn sample_documents(count: usize) -> Vec<RawDocumentBuf> {
    (0..count)
        .map(|id| {
            to_document(&sample_submission(id), u64::MAX)
                .expect("sample submissions encode")
                .raw
        })
        .collect()
}

fn fresh_database() -> String {
    format!("bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

async fn raw_insert_rate(
    client: &Client,
    documents: &[RawDocumentBuf],
    batch: usize,
) -> anyhow::Result<f64> {
    let database = client.database(&fresh_database());
    let collection = database.collection::<RawDocumentBuf>(COLLECTION);
    let started = Instant::now();
    for chunk in documents.chunks(batch) {
        collection.insert_many(chunk).ordered(false).await?;
    }
    let rate = documents.len() as f64 / started.elapsed().as_secs_f64();
    database.drop().await?;
    Ok(rate)
}

async fn one_by_one_rate(client: &Client, documents: &[RawDocumentBuf]) -> anyhow::Result<f64> {
    let database = client.database(&fresh_database());
    let collection = database.collection::<RawDocumentBuf>(COLLECTION);
    let started = Instant::now();
    for document in documents {
        collection.insert_one(document).await?;
    }
    let rate = documents.len() as f64 / started.elapsed().as_secs_f64();
    database.drop().await?;
    Ok(rate)
}

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|value| value.parse().ok())
        })
        .unwrap_or(0)
}

async fn sink_against_raw(client: &Client, uri: &str, documents: usize) -> anyhow::Result<()> {
    let mut sink_rates = Vec::new();
    let mut raw_rates = Vec::new();
    for run in 0..RUNS {
        let mut config = Config::default();
        config.kafka.topic_prefix = format!("bench-{}.", uuid::Uuid::new_v4().simple());
        config.mongodb.uri = uri.to_owned();
        config.mongodb.database = fresh_database();
        fieldforce_kafka::admin::apply(&config.kafka, &Catalog::embedded(), true).await?;

        // The backlog: every record is in Kafka before the sink starts.
        {
            let producer: FutureProducer = producer_config(&config.kafka).create()?;
            let topic = config.kafka.topic(SUBMISSIONS_PROCESSED);
            for chunk in (0..documents).collect::<Vec<_>>().chunks(5_000) {
                let encoded: Vec<(String, Vec<u8>)> = chunk
                    .iter()
                    .map(|&id| {
                        let processed = sample_submission(id);
                        (
                            processed.submission.submission_id.clone(),
                            encode(&processed),
                        )
                    })
                    .collect();
                let sends = encoded.iter().map(|(key, value)| {
                    producer.send(
                        FutureRecord::to(&topic).key(key).payload(value),
                        Duration::from_secs(60),
                    )
                });
                for result in futures::future::join_all(sends).await {
                    result.map_err(|(error, _)| error)?;
                }
            }
        }

        let collection = client
            .database(&config.mongodb.database)
            .collection::<bson::Document>(COLLECTION);
        let topic = config.kafka.topic(SUBMISSIONS_PROCESSED);
        let offsets: BaseConsumer = base_config(&config.kafka)
            .set("group.id", fieldforce_sink_mongodb::GROUP_ID)
            .create()?;
        let rss_before = resident_kib();
        let (trigger, shutdown) = fieldforce_runtime::shutdown::channel();
        let started = Instant::now();
        let sink = tokio::spawn(fieldforce_sink_mongodb::run(config.clone(), shutdown));
        let mut rss_samples = Vec::new();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            rss_samples.push(resident_kib());
            // Committed offsets, not a count of the collection: counting scans the same
            // SQLite file the sink writes and slows it down.
            let committed = committed_total(&offsets, &topic)?;
            if committed >= documents as i64 {
                break;
            }
            if started.elapsed() > Duration::from_secs(600) {
                bail!("sink committed {committed} of {documents} records in 10 minutes");
            }
        }
        let sink_rate = documents as f64 / started.elapsed().as_secs_f64();
        let stored = collection.count_documents(doc! {}).await? as usize;
        if stored != documents {
            bail!("sink stored {stored} documents for {documents} records");
        }
        trigger.trigger();
        sink.await?.context("sink run")?;
        client.database(&config.mongodb.database).drop().await?;

        let raw_rate = raw_insert_rate(client, &sample_documents(documents), 1_000).await?;
        let rss_max = rss_samples.iter().copied().max().unwrap_or(0);
        let rss_min = rss_samples.iter().copied().min().unwrap_or(0);
        println!(
            "run {run}: sink {sink_rate:.0} docs/s, raw loop {raw_rate:.0} docs/s, ratio {:.2}, \
             VmRSS before {rss_before} KiB, while draining {rss_min}..{rss_max} KiB over {} samples",
            sink_rate / raw_rate,
            rss_samples.len()
        );
        sink_rates.push(sink_rate);
        raw_rates.push(raw_rate);
    }
    let (sink, raw) = (median(sink_rates), median(raw_rates));
    println!(
        "median: sink {sink:.0} docs/s, raw loop {raw:.0} docs/s, ratio {:.2}",
        sink / raw
    );
    Ok(())
}

fn committed_total(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<i64> {
    let mut list = TopicPartitionList::new();
    for partition in 0..6 {
        list.add_partition(topic, partition);
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(10))?;
    Ok(committed
        .elements()
        .iter()
        .map(|element| match element.offset() {
            Offset::Offset(offset) => offset,
            _ => 0,
        })
        .sum())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
