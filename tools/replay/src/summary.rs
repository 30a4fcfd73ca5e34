//! `summary`: waits until every submission in the ledger is stored, then reports what the
//! pipeline did: stored and missing, dead-lettered by reason, flagged by quality check,
//! outside a geofence, accepted-to-stored latency, and the lag of every consumer group.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use clap::Args;
use fieldforce_kafka::catalog;
use fieldforce_kafka::client::reader_config;
use fieldforce_kafka::dead_letter::header_str;
use fieldforce_kafka::lag;
use fieldforce_runtime::config::Config;
use fieldforce_schemas::headers;
use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::ledger::{self, Accepted};
use crate::report::percentiles_line;

/// How long a Kafka metadata or offsets request may take.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// Arguments of `summary`.
#[derive(Args)]
pub struct SummaryArgs {
    /// How long to wait for accepted submissions to be stored, in seconds.
    #[arg(long, default_value_t = 180)]
    wait_s: u64,
}

/// Prints the summary; returns false when an accepted submission is not stored.
pub async fn run(ledger_path: &Path, args: SummaryArgs) -> anyhow::Result<bool> {
    let config = Config::load_from_env()?;
    let entries = ledger::read(ledger_path)?;
    let roots = root_ids(&entries);
    let accepted_at: HashMap<&str, i64> = entries
        .iter()
        .map(|entry| (entry.submission_id.as_str(), entry.accepted_at_ms))
        .collect();

    let client = mongodb::Client::with_uri_str(&config.mongodb.uri).await?;
    let submissions = client
        .database(&config.mongodb.database)
        .collection::<Document>("submissions");

    // Poll for the expected ids; the time each is first seen bounds its stored time. Each
    // poll reads the ids of the whole collection in one pass: FerretDB answers an `$in` over
    // thousands of ids with a scan per query, which took minutes for a large ledger.
    let expected: HashSet<&str> = roots.iter().map(String::as_str).collect();
    let mut first_seen: HashMap<String, i64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(args.wait_s);
    let mut last_progress = Instant::now();
    loop {
        let mut cursor = submissions
            .find(doc! {})
            .projection(doc! { "_id": 0, "submission_id": 1 })
            .await?;
        let now = ledger::now_ms();
        while let Some(document) = cursor.try_next().await? {
            if let Ok(id) = document.get_str("submission_id")
                && expected.contains(id)
            {
                first_seen.entry(id.to_owned()).or_insert(now);
            }
        }
        if first_seen.len() == roots.len() || Instant::now() >= deadline {
            break;
        }
        if last_progress.elapsed() >= Duration::from_secs(2) {
            println!(
                "summary: {} of {} accepted submissions stored",
                first_seen.len(),
                roots.len()
            );
            last_progress = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let stored_total = submissions.count_documents(doc! {}).await?;
    let missing: Vec<&String> = roots
        .iter()
        .filter(|id| !first_seen.contains_key(*id))
        .collect();
    println!();
    println!("summary");
    println!(
        "  accepted by the gateway   {:>8}  ({} submissions after edits)",
        entries.len(),
        roots.len()
    );
    println!("  stored                    {:>8}", first_seen.len());
    println!("  missing                   {:>8}", missing.len());
    for id in missing.iter().take(10) {
        println!("    {id}");
    }
    println!("  documents in the store    {stored_total:>8}");

    let mut flags: BTreeMap<String, u64> = BTreeMap::new();
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let mut outside = 0u64;
    let mut stored_latency_us = Vec::new();
    let mut cursor = submissions
        .find(doc! {})
        .projection(doc! { "submission_id": 1, "quality.flags.check": 1, "location.geofence.inside": 1, "processing_status": 1, "stored_at": 1 })
        .await?;
    while let Some(document) = cursor.try_next().await? {
        if let Ok(quality) = document.get_document("quality") {
            for flag in quality.get_array("flags").into_iter().flatten() {
                if let Some(check) = flag
                    .as_document()
                    .and_then(|flag| flag.get_str("check").ok())
                {
                    *flags.entry(check.to_owned()).or_default() += 1;
                }
            }
        }
        if let Ok(status) = document.get_str("processing_status") {
            *statuses.entry(status.to_owned()).or_default() += 1;
        }
        let inside = document
            .get_document("location")
            .and_then(|location| location.get_document("geofence"))
            .and_then(|geofence| geofence.get_bool("inside"));
        if inside == Ok(false) {
            outside += 1;
        }
        if let (Ok(id), Ok(stored_at)) = (
            document.get_str("submission_id"),
            document.get_datetime("stored_at"),
        ) && let Some(accepted) = accepted_at.get(id)
        {
            let micros = (stored_at.timestamp_millis() - accepted).max(0) * 1000;
            stored_latency_us.push(micros as u64);
        }
    }
    println!("  by processing status");
    for (status, count) in &statuses {
        println!("    {status:<24}{count:>8}");
    }
    println!("  flagged by quality check");
    for (check, count) in &flags {
        println!("    {check:<24}{count:>8}");
    }
    println!("  outside their geofence    {outside:>8}");

    let mut seen_latency_us: Vec<u64> = first_seen
        .iter()
        .filter_map(|(id, seen)| {
            accepted_at
                .get(id.as_str())
                .map(|accepted| ((seen - accepted).max(0) * 1000) as u64)
        })
        .collect();
    if let Some(line) = percentiles_line(&mut stored_latency_us) {
        println!("  accepted -> stored        {line} (from the sink's stored_at)");
    } else if let Some(line) = percentiles_line(&mut seen_latency_us) {
        println!("  accepted -> stored        {line} (first seen by polling every 500 ms)");
    }

    print_dead_letters(&config)?;
    print_lag(&config)?;
    Ok(missing.is_empty())
}

/// Resolves edit chains so each submission counts once, under the id it is stored as.
fn root_ids(entries: &[Accepted]) -> Vec<String> {
    let mut root_of: HashMap<&str, &str> = HashMap::new();
    let mut roots = Vec::new();
    let mut known = HashSet::new();
    for entry in entries {
        let root = match entry
            .deprecated_id
            .as_deref()
            .and_then(|old| root_of.get(old))
        {
            Some(root) => *root,
            None => entry.submission_id.as_str(),
        };
        root_of.insert(entry.submission_id.as_str(), root);
        if known.insert(root) {
            roots.push(root.to_owned());
        }
    }
    roots
}

fn print_dead_letters(config: &Config) -> anyhow::Result<()> {
    let topic = config.kafka.topic(catalog::SUBMISSIONS_DEADLETTER);
    let consumer: BaseConsumer = reader_config(&config.kafka).create()?;
    let metadata = consumer.fetch_metadata(Some(&topic), KAFKA_TIMEOUT)?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining = 0i64;
    for partition in metadata
        .topics()
        .iter()
        .flat_map(|topic| topic.partitions())
    {
        let (low, high) = consumer.fetch_watermarks(&topic, partition.id(), KAFKA_TIMEOUT)?;
        remaining += high - low;
        assignment.add_partition_offset(&topic, partition.id(), Offset::Offset(low))?;
    }
    consumer.assign(&assignment)?;
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while remaining > 0 && Instant::now() < deadline {
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        remaining -= 1;
        let (stage, reason) = match message.headers() {
            Some(headers) => (
                header_str(headers, headers::DEAD_LETTER_STAGE)
                    .unwrap_or("?")
                    .to_owned(),
                header_str(headers, headers::DEAD_LETTER_REASON)
                    .unwrap_or("?")
                    .to_owned(),
            ),
            None => ("?".to_owned(), "?".to_owned()),
        };
        *reasons.entry(format!("{stage}: {reason}")).or_default() += 1;
    }
    println!(
        "  dead-lettered by reason   {:>8}",
        reasons.values().sum::<u64>()
    );
    for (reason, count) in &reasons {
        println!("    {reason:<24}{count:>8}");
    }
    Ok(())
}

fn print_lag(config: &Config) -> anyhow::Result<()> {
    println!("  consumer lag");
    for (group, topic) in lag::pipeline_groups(config) {
        let sample = lag::sample(&config.kafka, &group, std::slice::from_ref(&topic))?;
        println!(
            "    {group:<24}{:>8} records, {:.1} s  ({topic})",
            sample.lag_records(),
            sample.lag_seconds()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_count_under_their_original() {
        let entry = |id: &str, old: Option<&str>| Accepted {
            submission_id: id.into(),
            deprecated_id: old.map(str::to_owned),
            accepted_at_ms: 0,
        };
        let entries = [
            entry("a", None),
            entry("b", Some("a")),
            entry("c", Some("b")),
            entry("d", None),
        ];
        assert_eq!(root_ids(&entries), vec!["a".to_owned(), "d".to_owned()]);
    }
}
