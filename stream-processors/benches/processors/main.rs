//! Throughput and resident memory of the validation, geo and quality processors draining a
//! backlog in the local Kafka, beside a bare consume-and-produce loop on the same broker.
//!
//! - `throughput [RECORDS] [ROUNDS]` (default 100,000 records, 3 rounds): in each round, in
//!   the order bare, validate, bare-validated, geo, bare-located, quality, writes a fresh
//!   backlog of RECORDS submissions under a new topic prefix and drains it in this process.
//!   Prints every run, then the median records/s of each subject and the medians of its
//!   per-round ratios. One ratio is to the bare loop over raw records. The other is to the bare
//!   loop over the processor's own input: `bare-validated` copies the records geo reads and
//!   `bare-located` those quality reads, which are larger than raw ones. Each ratio is given
//!   to the commit and to the last output record.
//! - `memory SUBJECT [RECORDS]` (default 1,000,000 records): drains one backlog with one
//!   subject (`bare`, `bare-validated`, `bare-located`, `validate`, `geo`, `quality`, or
//!   `chain` for the three processors together) and prints VmRSS over the drain. A child
//!   process writes the backlog, so the memory the generator used is not part of this
//!   process's figures.
//! - `transform SUBJECT [RECORDS] [PASSES]` (default 100,000 records, 5 passes): times the
//!   transform of `validate`, `geo` or `quality` alone, on one thread and without Kafka, over
//!   the records a backlog would hold (see `cpu.rs`).
//! - `backlog STAGE PREFIX RECORDS`: writes the settings and a backlog of RECORDS at STAGE
//!   (`raw`, `validated`, `located`) under PREFIX; `memory` runs it as its child.
//!
//! Timing runs from the first output record (the observer polls the output topic every
//! 10 ms) until the subject's consumer group has committed the whole backlog (polled with
//! the memory samples). It includes consuming, the transform, producing with `acks=all`,
//! storing offsets and the background commit, which runs every second. It leaves out
//! start-up: the group join and reading the compacted topics, printed apart.
//!
//! Configuration comes from the environment as for the services (`FIELDFORCE_PROCESSORS__*`
//! changes batch and in-flight limits); the topic and group prefix is always a fresh one.
//!
//! Run: `stack/fetch-boundaries && cargo bench -p fieldforce-processors --bench processors --
//! throughput`

mod backlog;
mod cpu;
mod drain;

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use fieldforce_kafka::catalog::Catalog;
use fieldforce_runtime::config::Config;

use crate::backlog::{Stage, World};
use crate::drain::{Drain, Subject, clean_up, drain};

/// The allocator the processor binaries use, so that the in-process runs match them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEFAULT_THROUGHPUT_RECORDS: usize = 100_000;
const DEFAULT_ROUNDS: usize = 3;
const DEFAULT_MEMORY_RECORDS: usize = 1_000_000;
/// Seed of the generator: every backlog holds the same answers.
const SEED: u64 = 20_240_501;
const THROUGHPUT_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
const MEMORY_SAMPLE_INTERVAL: Duration = Duration::from_millis(250);
/// Order of the subjects in each throughput round: each processor right after the bare loop
/// over the same input.
const ROUND: [Subject; 6] = [
    Subject::Bare(Stage::Raw),
    Subject::Validate,
    Subject::Bare(Stage::Validated),
    Subject::Geo,
    Subject::Bare(Stage::Located),
    Subject::Quality,
];

const DEFAULT_TRANSFORM_RECORDS: usize = 100_000;
const DEFAULT_PASSES: usize = 5;

const USAGE: &str = "usage: processors throughput [RECORDS] [ROUNDS] | memory SUBJECT [RECORDS] \
                     | transform SUBJECT [RECORDS] [PASSES] | backlog STAGE PREFIX RECORDS";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench` to every bench target.
    let arguments: Vec<String> = std::env::args()
        .skip(1)
        .filter(|argument| argument != "--bench")
        .collect();
    let mut base = Config::load_from_env()?;
    // geo's relate module warns about every boundary without a winding order while the
    // generator finds points inside the real borders; the warning does not concern the run.
    base.telemetry.log_filter = "warn,geo=error".to_owned();
    let _telemetry = fieldforce_runtime::telemetry::init(&base.telemetry, "processor-bench")?;

    match arguments
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["throughput", rest @ ..] => {
            let records = number_at(rest, 0, DEFAULT_THROUGHPUT_RECORDS)?;
            let rounds = number_at(rest, 1, DEFAULT_ROUNDS)?;
            throughput(&base, records, rounds).await
        }
        ["memory", subject, rest @ ..] => {
            let subject = Subject::parse(subject).context(USAGE)?;
            let records = number_at(rest, 0, DEFAULT_MEMORY_RECORDS)?;
            memory(&base, subject, records).await
        }
        ["transform", subject, rest @ ..] => {
            let subject = Subject::parse(subject).context(USAGE)?;
            let records = number_at(rest, 0, DEFAULT_TRANSFORM_RECORDS)?;
            let passes = number_at(rest, 1, DEFAULT_PASSES)?;
            cpu::transform_cost(&base, subject, records, passes, SEED)
        }
        ["backlog", stage, prefix, records] => {
            let stage = Stage::parse(stage).context(USAGE)?;
            let config = with_prefix(&base, prefix);
            let world = World::load()?;
            world.publish_settings(&config).await?;
            let written = backlog::produce(&config, &world, stage, records.parse()?, SEED).await?;
            println!(
                "backlog: {} {} records, {} bytes per value on average",
                written.records,
                stage.name(),
                written.value_bytes / written.records.max(1) as u64
            );
            Ok(())
        }
        _ => bail!(USAGE),
    }
}

fn number_at(arguments: &[&str], index: usize, default: usize) -> anyhow::Result<usize> {
    arguments.get(index).map_or(Ok(default), |text| {
        text.parse()
            .with_context(|| format!("{text:?} is not a count; {USAGE}"))
    })
}

fn with_prefix(base: &Config, prefix: &str) -> Config {
    let mut config = base.clone();
    config.kafka.topic_prefix = prefix.to_owned();
    config.processors.group_id_prefix = prefix.to_owned();
    config
}

/// Returns a configuration under a new topic and group prefix, with its topics created.
async fn fresh_config(base: &Config) -> anyhow::Result<Config> {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let config = with_prefix(base, &format!("bench-proc-{}.", &suffix[..12]));
    fieldforce_kafka::admin::apply(&config.kafka, &Catalog::embedded(), true)
        .await
        .context("creating the run's topics failed: is Kafka running on the configured servers?")?;
    Ok(config)
}

async fn throughput(base: &Config, records: usize, rounds: usize) -> anyhow::Result<()> {
    let world = World::load()?;
    // Per subject, the rate of each round to the commit and to the last output record.
    let mut rates: Vec<Vec<(f64, f64)>> = vec![Vec::new(); ROUND.len()];
    for round in 1..=rounds {
        for (index, subject) in ROUND.iter().enumerate() {
            let config = fresh_config(base).await?;
            world.publish_settings(&config).await?;
            let written =
                backlog::produce(&config, &world, subject.backlog(), records, SEED).await?;
            let result = drain(&config, *subject, records, THROUGHPUT_SAMPLE_INTERVAL).await;
            clean_up(&config, *subject).await?;
            let drained = result?;
            println!(
                "round {round} {:<14} {:>7} records of {} B: {:>7.0} records/s, {:.2} s \
                 (start-up {:.2} s, last output at {:.2} s), VmRSS {}",
                subject.name(),
                records,
                written.value_bytes / records.max(1) as u64,
                drained.rate(),
                drained.to_committed.as_secs_f64(),
                drained.start_up.as_secs_f64(),
                drained.to_last_output.as_secs_f64(),
                rss_range(&drained),
            );
            rates[index].push((drained.rate(), drained.rate_to_last_output()));
        }
    }

    let rates_of = |subject: Subject| {
        let index = ROUND
            .iter()
            .position(|candidate| *candidate == subject)
            .expect("every peer is in the round");
        &rates[index]
    };
    let bare = rates_of(Subject::Bare(Stage::Raw));
    println!();
    println!(
        "| subject | records/s per round (to the commit) | median | ratio to bare, \
         commit / last output | ratio to bare on the same input, commit / last output |"
    );
    println!("|---|---|---:|---:|---:|");
    for (subject, runs) in ROUND.iter().zip(&rates) {
        let per_round: Vec<String> = runs.iter().map(|(rate, _)| format!("{rate:.0}")).collect();
        let same_input = rates_of(Subject::Bare(subject.backlog()));
        println!(
            "| {} | {} | {:.0} | {} | {} |",
            subject.name(),
            per_round.join(", "),
            median(runs.iter().map(|(rate, _)| *rate).collect()),
            ratios(runs, bare),
            ratios(runs, same_input),
        );
    }
    Ok(())
}

/// Returns the medians of the per-round ratios of `runs` to `peer`, to the commit and to the
/// last output record.
fn ratios(runs: &[(f64, f64)], peer: &[(f64, f64)]) -> String {
    let committed = runs.iter().zip(peer).map(|(run, peer)| run.0 / peer.0);
    let last_output = runs.iter().zip(peer).map(|(run, peer)| run.1 / peer.1);
    format!(
        "{:.2} / {:.2}",
        median(committed.collect()),
        median(last_output.collect())
    )
}

async fn memory(base: &Config, subject: Subject, records: usize) -> anyhow::Result<()> {
    let config = fresh_config(base).await?;
    let prefix = config.kafka.topic_prefix.clone();
    let status = tokio::process::Command::new(std::env::current_exe()?)
        .args([
            "backlog",
            subject.backlog().name(),
            &prefix,
            &records.to_string(),
        ])
        .status()
        .await?;
    ensure!(status.success(), "writing the backlog failed: {status}");

    let result = drain(&config, subject, records, MEMORY_SAMPLE_INTERVAL).await;
    clean_up(&config, subject).await?;
    let drained = result?;
    print_memory(subject, &drained);
    Ok(())
}

fn print_memory(subject: Subject, drained: &Drain) {
    println!(
        "memory: {} drained {} records in {:.1} s, {:.0} records/s (start-up {:.2} s)",
        subject.name(),
        drained.records,
        drained.to_committed.as_secs_f64(),
        drained.rate(),
        drained.start_up.as_secs_f64(),
    );
    println!(
        "VmRSS before the start {}; over the drain, {} samples {} ms apart: {}",
        mib(drained.rss_before_kib),
        drained.samples.len(),
        MEMORY_SAMPLE_INTERVAL.as_millis(),
        rss_range(drained),
    );
    let half = drained.samples.len() / 2;
    let max_of = |samples: &[drain::Sample]| samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    println!(
        "max VmRSS in the first half {}, in the second half {}",
        mib(max_of(&drained.samples[..half])),
        mib(max_of(&drained.samples[half..])),
    );
    println!();
    println!("| time since first output (s) | records committed | VmRSS (MiB) |");
    println!("|---:|---:|---:|");
    let points = 12.min(drained.samples.len());
    for point in 0..points {
        let index = if points == 1 {
            0
        } else {
            point * (drained.samples.len() - 1) / (points - 1)
        };
        let sample = drained.samples[index];
        println!(
            "| {:.1} | {} | {:.1} |",
            sample.at.as_secs_f64(),
            sample.committed,
            sample.rss_kib as f64 / 1024.0
        );
    }
}

/// Formats min, median and max VmRSS of a drain's samples.
fn rss_range(drained: &Drain) -> String {
    let values: Vec<f64> = drained
        .samples
        .iter()
        .map(|sample| sample.rss_kib as f64)
        .collect();
    if values.is_empty() {
        return "not sampled".to_owned();
    }
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(0.0, f64::max);
    format!(
        "min {:.1} MiB, median {:.1} MiB, max {:.1} MiB",
        min / 1024.0,
        median(values) / 1024.0,
        max / 1024.0
    )
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
