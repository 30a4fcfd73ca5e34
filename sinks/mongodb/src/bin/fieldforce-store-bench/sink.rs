//! `sink` mode: the `fieldforce-sink` binary drains a backlog in its own process, and a raw
//! loop writes the same documents into the same store the way the sink does. The two runs
//! alternate within a round, and the order flips every round.
//!
//! Each run reports two rates:
//!
//! - drain: from the store's acknowledgement of the first batch to the end, over the
//!   documents after that batch. For the sink the end is the first poll (every 50 ms) that
//!   finds every offset committed; for the loop it is the last acknowledgement.
//! - cold: over all documents, from the sink process's start (group join, index creation and
//!   the first fetch included) or from the loop's first request.
//!
//! The raw loop writes into a fresh collection with the sink's indexes, with unordered
//! `insert_many` in batches of `sink.batch_max_documents` and the configured write concern,
//! and each document carries `stored_at` as the sink's do. It does not read Kafka or announce
//! stored submissions, which the sink does within its time.
//!
//! The sink's resident memory is the VmRSS of its process, sampled every 50 ms while it
//! drains. Before the sink stops, its `/metrics` give the time spent in bulk writes, so the
//! report shows how much of the sink's run the store was busy with its writes.

use std::collections::HashSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bson::{DateTime, RawDocumentBuf, doc};
use fieldforce_kafka::catalog::{Catalog, SUBMISSIONS_PROCESSED, SUBMISSIONS_STORED};
use fieldforce_kafka::client::{base_config, producer_config, reader_config};
use fieldforce_runtime::config::Config;
use fieldforce_schemas::codec::encode;
use fieldforce_sink_mongodb::store::{COLLECTION, Store, write_concern};
use futures::TryStreamExt;
use mongodb::Client;
use mongodb::options::CollectionOptions;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::{fresh_database, median, sample_documents, sample_stored_id, sample_submission};

/// How often the sink's committed offsets and memory are sampled.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(50);

/// Maximum duration of a sink run before the benchmark gives up.
const RUN_TIMEOUT: Duration = Duration::from_secs(900);

/// `_id`s per cursor batch when the stored documents are checked.
const ID_BATCH: u32 = 10_000;

/// Timeout of one broker request made by the benchmark itself.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// One timed run of the sink or of the raw loop.
struct Timing {
    documents: usize,
    /// Documents in the first acknowledged batch, which the drain rate leaves out.
    first_batch: usize,
    /// From the first batch's acknowledgement to the end.
    drain: Duration,
    /// From the start to the end.
    cold: Duration,
}

impl Timing {
    fn drain_rate(&self) -> f64 {
        (self.documents - self.first_batch) as f64 / self.drain.as_secs_f64()
    }

    fn cold_rate(&self) -> f64 {
        self.documents as f64 / self.cold.as_secs_f64()
    }

    fn describe(&self) -> String {
        format!(
            "drain {:.0} docs/s ({} docs in {:.2} s after a first batch of {}), \
             cold {:.0} docs/s ({} docs in {:.2} s)",
            self.drain_rate(),
            self.documents - self.first_batch,
            self.drain.as_secs_f64(),
            self.first_batch,
            self.cold_rate(),
            self.documents,
            self.cold.as_secs_f64(),
        )
    }
}

/// VmRSS of the sink process, in KiB, sampled while it drained.
struct Memory {
    samples: Vec<u64>,
}

impl Memory {
    fn describe(&self) -> String {
        let quarter = (self.samples.len() / 4).max(1);
        let max = |samples: &[u64]| samples.iter().copied().max().unwrap_or(0);
        let mut sorted = self.samples.clone();
        sorted.sort_unstable();
        format!(
            "VmRSS while draining {}..{} KiB (median {} KiB, {} samples; max {} KiB in the \
             first quarter, {} KiB in the last)",
            sorted.first().copied().unwrap_or(0),
            sorted.last().copied().unwrap_or(0),
            sorted.get(sorted.len() / 2).copied().unwrap_or(0),
            sorted.len(),
            max(&self.samples[..quarter.min(self.samples.len())]),
            max(&self.samples[self.samples.len().saturating_sub(quarter)..]),
        )
    }
}

/// Runs `rounds` rounds of sink and raw loop over a backlog of `documents` records and
/// prints every run, then the medians.
pub async fn compare(
    client: &Client,
    uri: &str,
    documents: usize,
    rounds: usize,
) -> anyhow::Result<()> {
    let binary = sink_binary()?;
    let mut sink_drain = Vec::new();
    let mut sink_cold = Vec::new();
    let mut raw_drain = Vec::new();
    let mut raw_cold = Vec::new();
    let mut drain_ratios = Vec::new();
    for round in 0..rounds {
        let config = round_config(uri);
        fieldforce_kafka::admin::apply(&config.kafka, &Catalog::embedded(), true).await?;
        // Every record is in Kafka before either run starts.
        produce_backlog(&config, 0..documents).await?;

        // The order flips every round, so that drift in the machine's load favours neither.
        let sink_first = round % 2 == 0;
        let mut sink = None;
        let mut raw = None;
        for sink_turn in [sink_first, !sink_first] {
            if sink_turn {
                let (timing, memory, writes) = run_sink(&binary, &config, documents).await?;
                println!("round {round} sink: {}", timing.describe());
                println!("round {round} sink: {}", memory.describe());
                println!(
                    "round {round} sink: {} bulk writes took {:.2} s, {:.0} % of the cold run; \
                     the sink process used {:.2} s of CPU",
                    writes.count,
                    writes.seconds,
                    100.0 * writes.seconds / timing.cold.as_secs_f64(),
                    writes.cpu_seconds,
                );
                client.database(&config.mongodb.database).drop().await?;
                sink = Some(timing);
            } else {
                let timing = run_raw(client, &config, documents).await?;
                println!("round {round} raw:  {}", timing.describe());
                raw = Some(timing);
            }
        }
        delete_topics(&config).await?;

        let (Some(sink), Some(raw)) = (sink, raw) else {
            unreachable!("each round runs both");
        };
        let ratio = sink.drain_rate() / raw.drain_rate();
        println!(
            "round {round} ratio: drain {ratio:.2}, cold {:.2}",
            sink.cold_rate() / raw.cold_rate()
        );
        sink_drain.push(sink.drain_rate());
        sink_cold.push(sink.cold_rate());
        raw_drain.push(raw.drain_rate());
        raw_cold.push(raw.cold_rate());
        drain_ratios.push(ratio);
    }

    let (sink_drain, raw_drain) = (median(sink_drain), median(raw_drain));
    let (sink_cold, raw_cold) = (median(sink_cold), median(raw_cold));
    println!(
        "median drain: sink {sink_drain:.0} docs/s, raw loop {raw_drain:.0} docs/s, \
         ratio {:.2} (median of the round ratios {:.2})",
        sink_drain / raw_drain,
        median(drain_ratios)
    );
    println!(
        "median cold: sink {sink_cold:.0} docs/s, raw loop {raw_cold:.0} docs/s, ratio {:.2}",
        sink_cold / raw_cold
    );
    Ok(())
}

/// Returns the path of the sink binary: `FIELDFORCE_STORE_BENCH_SINK` when set (to measure
/// another build of the sink), otherwise `fieldforce-sink` built beside this benchmark.
pub(crate) fn sink_binary() -> anyhow::Result<PathBuf> {
    let binary = match std::env::var_os("FIELDFORCE_STORE_BENCH_SINK") {
        Some(path) => PathBuf::from(path),
        None => std::env::current_exe()?.with_file_name("fieldforce-sink"),
    };
    if !binary.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p fieldforce-sink-mongodb --bins`",
            binary.display()
        );
    }
    Ok(binary)
}

/// Returns a configuration with topics, consumer group and database of this round alone.
pub(crate) fn round_config(uri: &str) -> Config {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut config = Config::default();
    config.kafka.topic_prefix = format!("bench-sink-{run}.");
    config.sink.group_id_prefix = format!("bench-sink-{run}.");
    config.mongodb.uri = uri.to_owned();
    config.mongodb.database = fresh_database();
    config
}

/// Produces the backlog of the submissions numbered `ids`, and returns once Kafka
/// acknowledged every record.
pub(crate) async fn produce_backlog(config: &Config, ids: Range<usize>) -> anyhow::Result<()> {
    let producer: FutureProducer = producer_config(&config.kafka).create()?;
    let topic = config.kafka.topic(SUBMISSIONS_PROCESSED);
    for chunk in ids.collect::<Vec<_>>().chunks(5_000) {
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
    Ok(())
}

/// Bulk writes of a sink run, from its `fieldforce_sink_write_duration_seconds` histogram,
/// and the CPU time of the sink process.
struct Writes {
    count: u64,
    seconds: f64,
    cpu_seconds: f64,
}

/// Starts the sink binary on the backlog and waits until its group committed every offset.
async fn run_sink(
    binary: &Path,
    config: &Config,
    documents: usize,
) -> anyhow::Result<(Timing, Memory, Writes)> {
    let topic = config.kafka.topic(SUBMISSIONS_PROCESSED);
    let offsets: BaseConsumer = base_config(&config.kafka)
        .set("group.id", fieldforce_sink_mongodb::group_id(config))
        .create()?;
    let partitions = partition_count(&offsets, &topic)?;

    let admin_address = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;

    let started = Instant::now();
    let mut child = start_sink(binary, config, admin_address)?;

    let mut samples: Vec<(SystemTime, u64)> = Vec::new();
    let finished = loop {
        tokio::time::sleep(SAMPLE_INTERVAL).await;
        samples.push((SystemTime::now(), status_kib(child.id(), "VmRSS:")));
        if committed_total(&offsets, &topic, partitions)? >= documents as i64 {
            break (SystemTime::now(), started.elapsed());
        }
        if let Some(status) = child.try_wait()? {
            bail!("sink exited with {status} before committing the backlog");
        }
        if started.elapsed() > RUN_TIMEOUT {
            stop(&mut child)?;
            bail!("sink did not commit {documents} records within {RUN_TIMEOUT:?}");
        }
    };
    let writes = scrape_writes(admin_address).await;
    let cpu_seconds = cpu_seconds(child.id());
    stop(&mut child)?;
    let writes = Writes {
        cpu_seconds,
        ..writes?
    };

    verify_stored(config, 0..documents).await?;
    let (first_acknowledged, first_batch) = first_acknowledgement(config, documents)?;
    let (finished_at, cold) = finished;
    let drain = finished_at
        .duration_since(first_acknowledged)
        .context("first acknowledgement after the last commit")?;
    let memory = Memory {
        samples: samples
            .into_iter()
            .filter(|(at, _)| *at >= first_acknowledged)
            .map(|(_, kib)| kib)
            .collect(),
    };
    Ok((
        Timing {
            documents,
            first_batch,
            drain,
            cold,
        },
        memory,
        writes,
    ))
}

/// Starts the sink binary as a child process on the round's topics, group and database, with
/// its admin server on `admin_address`. The child inherits the benchmark's environment, so
/// `MIMALLOC_*` or `FIELDFORCE_*` variables set for the benchmark reach the sink too.
pub(crate) fn start_sink(
    binary: &Path,
    config: &Config,
    admin_address: std::net::SocketAddr,
) -> anyhow::Result<Child> {
    Command::new(binary)
        .env(
            "FIELDFORCE_SINK__ADMIN_LISTEN_ADDR",
            admin_address.to_string(),
        )
        .env("FIELDFORCE_KAFKA__TOPIC_PREFIX", &config.kafka.topic_prefix)
        .env(
            "FIELDFORCE_SINK__GROUP_ID_PREFIX",
            &config.sink.group_id_prefix,
        )
        .env("FIELDFORCE_MONGODB__URI", &config.mongodb.uri)
        .env("FIELDFORCE_MONGODB__DATABASE", &config.mongodb.database)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

/// Reads the bulk-write histogram's count and sum from the sink's `/metrics`.
async fn scrape_writes(address: std::net::SocketAddr) -> anyhow::Result<Writes> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let value = |name: &str| {
        response
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .with_context(|| format!("{name} missing from the sink's /metrics"))
    };
    Ok(Writes {
        count: value("fieldforce_sink_write_duration_seconds_count")? as u64,
        seconds: value("fieldforce_sink_write_duration_seconds_sum")?,
        cpu_seconds: 0.0,
    })
}

/// Returns the user and system CPU time of a process so far, from `/proc/PID/stat`, in
/// seconds; 0 when it cannot be read.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name in brackets may contain spaces, so fields are counted after it:
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let Some((_, after_name)) = stat.rsplit_once(") ") else {
        return 0.0;
    };
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..13)
        .map(|times| {
            times
                .iter()
                .filter_map(|time| time.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    // Linux reports these in clock ticks of USER_HZ, which is 100 on every common build.
    ticks as f64 / 100.0
}

/// Stops the sink with SIGTERM, as an orchestrator would, and waits for it to exit.
pub(crate) fn stop(child: &mut Child) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()?;
    if !status.success() {
        child.kill()?;
    }
    child.wait()?;
    Ok(())
}

/// Returns the time the store acknowledged the sink's first batch and that batch's size,
/// read from the stored-submission events: the sink stamps every event of a batch with the
/// wall clock right after the store acknowledged the batch.
fn first_acknowledgement(config: &Config, documents: usize) -> anyhow::Result<(SystemTime, usize)> {
    let topic = config.kafka.topic(SUBMISSIONS_STORED);
    let reader: BaseConsumer = reader_config(&config.kafka).create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partition_count(&reader, &topic)? {
        assignment.add_partition_offset(&topic, partition, Offset::Beginning)?;
    }
    reader.assign(&assignment)?;

    let mut timestamps = Vec::with_capacity(documents);
    let deadline = Instant::now() + Duration::from_secs(120);
    while timestamps.len() < documents {
        if Instant::now() > deadline {
            bail!("read {} of {documents} stored events", timestamps.len());
        }
        let Some(message) = reader.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message?;
        let timestamp = message
            .timestamp()
            .to_millis()
            .context("stored event without a timestamp")?;
        timestamps.push(timestamp);
    }
    let first = timestamps.iter().copied().min().unwrap_or(0);
    let first_batch = timestamps.iter().filter(|&&at| at == first).count();
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(first)?);
    Ok((at, first_batch))
}

/// Writes the same documents as the sink into a fresh collection with the sink's indexes,
/// batches and write concern.
async fn run_raw(client: &Client, config: &Config, documents: usize) -> anyhow::Result<Timing> {
    let mut config = config.clone();
    config.mongodb.database = fresh_database();
    Store::connect(&config.mongodb, &config.sink)
        .await?
        .ensure_indexes()
        .await?;
    let collection = client
        .database(&config.mongodb.database)
        .collection_with_options::<RawDocumentBuf>(
            COLLECTION,
            CollectionOptions::builder()
                .write_concern(write_concern(&config.mongodb))
                .build(),
        );
    // The sink adds `stored_at` when it writes; this is the same field, outside the timing.
    let stored_at = DateTime::now();
    let batch: Vec<RawDocumentBuf> = sample_documents(documents)
        .into_iter()
        .map(|mut document| {
            document.append("stored_at", stored_at);
            document
        })
        .collect();

    let started = Instant::now();
    let mut first = None;
    for chunk in batch.chunks(config.sink.batch_max_documents) {
        collection.insert_many(chunk).ordered(false).await?;
        first.get_or_insert((Instant::now(), chunk.len()));
    }
    let (first_acknowledged, first_batch) = first.context("no documents")?;
    let timing = Timing {
        documents,
        first_batch,
        drain: first_acknowledged.elapsed(),
        cold: started.elapsed(),
    };
    client.database(&config.mongodb.database).drop().await?;
    Ok(timing)
}

/// Checks that the sink's collection contains exactly one document for each submission in
/// `ids` and no other, after the run so that the reads do not slow it down.
///
/// It reads every `_id` through a cursor in batches of [`ID_BATCH`] instead of counting:
/// FerretDB 1.24 appears to load the whole collection to run `count_documents`, which
/// after a 1,000,000-document drain held 20 GB of its memory. The `_id` is the stored id of
/// the submission, so the set of ids read proves one document per submission.
// NOTE: FerretDB 1.24 kept its memory at 43 to 70 MB while serving this cursor over
// 2,000,000 documents, but the benchmark stopped receiving batches (9.8 MB read in all)
// while FerretDB kept using CPU. The check has not been seen to finish at that size; it
// finishes at 300,000 documents.
pub(crate) async fn verify_stored(config: &Config, ids: Range<usize>) -> anyhow::Result<()> {
    let client = Client::with_uri_str(&config.mongodb.uri).await?;
    let mut cursor = client
        .database(&config.mongodb.database)
        .collection::<RawDocumentBuf>(COLLECTION)
        .find(doc! {})
        .projection(doc! { "_id": 1 })
        .batch_size(ID_BATCH)
        .await?;
    let mut stored = HashSet::with_capacity(ids.len());
    let mut duplicates = 0usize;
    while let Some(document) = cursor.try_next().await? {
        let id = document
            .get_str("_id")
            .context("stored document without a string _id")?;
        if !stored.insert(id.to_owned()) {
            duplicates += 1;
        }
    }

    let expected = ids.len();
    let missing = ids
        .filter(|&id| !stored.remove(&sample_stored_id(id)))
        .count();
    let unexpected = stored.len();
    if missing + unexpected + duplicates > 0 {
        bail!(
            "sink stored {} documents for {expected} records: {missing} missing, \
             {unexpected} unexpected, {duplicates} duplicate ids",
            expected - missing + unexpected + duplicates
        );
    }
    Ok(())
}

/// Deletes the round's topics, so that repeated rounds do not fill the broker's disk.
pub(crate) async fn delete_topics(config: &Config) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = base_config(&config.kafka).create()?;
    let names: Vec<String> = Catalog::embedded()
        .topics
        .iter()
        .map(|spec| config.kafka.topic(&spec.name))
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    for result in admin
        .delete_topics(
            &names,
            &AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT)),
        )
        .await?
    {
        if let Err((topic, code)) = result {
            eprintln!("deleting topic {topic} failed: {code}");
        }
    }
    Ok(())
}

pub(crate) fn partition_count(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<i32> {
    let metadata = consumer.fetch_metadata(Some(topic), KAFKA_TIMEOUT)?;
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |topic| topic.partitions().len());
    if partitions == 0 {
        bail!("topic {topic} has no partitions");
    }
    Ok(i32::try_from(partitions)?)
}

pub(crate) fn committed_total(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<i64> {
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(topic, partition);
    }
    let committed = consumer.committed_offsets(list, KAFKA_TIMEOUT)?;
    Ok(committed
        .elements()
        .iter()
        .map(|element| match element.offset() {
            Offset::Offset(offset) => offset,
            _ => 0,
        })
        .sum())
}

/// Reads a `/proc/PID/status` line such as `VmRSS:`, in KiB; 0 once the process is gone.
pub(crate) fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with(field))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|value| value.parse().ok())
        })
        .unwrap_or(0)
}
