//! Store benchmarks, run in release mode against a live store and Kafka:
//!
//! - `raw URI`: unordered `insert_many` of ~1.5 KB submission documents in batches of 1,000.
//! - `table URI`: `insert_many` against an `insert_one` loop for 100, 1,000 and 10,000.
//! - `sink URI [DOCUMENTS] [ROUNDS]`: the sink binary draining a backlog in its own process,
//!   alternated with a raw insert loop that writes the same documents the same way (see
//!   `sink.rs`).
//! - `memory URI [DOCUMENTS] [BACKLOGS]`: the sink binary draining backlogs one after the
//!   other in one process, with its resident memory per tenth of each drain (see
//!   `memory.rs`).
//!
//! Each figure is the median of three or more runs, each run in a fresh database.

mod memory;
mod sink;

use std::time::Instant;

use anyhow::bail;
use bson::RawDocumentBuf;
use fieldforce_schemas::submission::{
    ProcessedSubmission, ProcessingStatus, Quality, RawSubmission, SubmissionSource,
};
use fieldforce_sink_mongodb::document::{stored_id, to_document};
use fieldforce_sink_mongodb::store::COLLECTION;
use mongodb::Client;

const RUNS: usize = 3;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let [mode, uri, rest @ ..] = arguments.as_slice() else {
        bail!(
            "usage: fieldforce-store-bench raw|table|sink|memory MONGODB_URI [DOCUMENTS] \
             [ROUNDS or BACKLOGS]"
        );
    };
    let default_documents = match mode.as_str() {
        "sink" => 100_000,
        "memory" => 1_000_000,
        _ => 20_000,
    };
    let documents: usize = rest
        .first()
        .map_or(Ok(default_documents), |value| value.parse())?;
    let rounds: usize = rest.get(1).map_or(Ok(RUNS), |value| value.parse())?;
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
        "sink" => sink::compare(&client, uri, documents, rounds).await?,
        "memory" => {
            let backlogs = rest.get(1).map_or(Ok(2), |value| value.parse())?;
            memory::drain(&client, uri, documents, backlogs).await?;
        }
        other => bail!("unknown mode {other}: expected raw, table, sink or memory"),
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

/// Returns the `_id` under which the sink stores `sample_submission(id)`.
fn sample_stored_id(id: usize) -> String {
    let submission = sample_submission(id).submission;
    stored_id(&submission.org_id, &submission.submission_id)
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

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
