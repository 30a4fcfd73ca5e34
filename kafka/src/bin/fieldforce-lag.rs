//! Shows consumer-group lag per partition, like `kafka-consumer-groups --describe`, plus the
//! age of the oldest unprocessed record and a status per group: OK, LAGGING, STALLED (lag
//! present but offsets not moving), STOPPED (lag present and no consumer) or UNKNOWN (a topic
//! the group reads has no partitions in the cluster, so its lag cannot be read).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use fieldforce_kafka::lag::{self, GroupLag, GroupSampler, GroupStatus, Thresholds};
use fieldforce_runtime::config::Config;

/// Show the lag of FieldForce's consumer groups.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Configuration file; defaults, then this file, then FIELDFORCE_* variables.
    #[arg(long, env = "FIELDFORCE_CONFIG")]
    config: Option<PathBuf>,
    /// Groups to show, as GROUP=TOPIC with the topic's full name; every pipeline group when
    /// none is given.
    #[arg(long = "group", value_name = "GROUP=TOPIC")]
    groups: Vec<String>,
    /// Seconds between the two samples a status is computed from.
    #[arg(long, default_value_t = 5)]
    interval_s: u64,
    /// Keep sampling until interrupted, printing a table every interval.
    #[arg(long)]
    watch: bool,
    /// Records of lag above which a moving group counts as lagging.
    #[arg(long, default_value_t = 1_000)]
    lagging_records: i64,
    /// Seconds of lag above which a moving group counts as lagging.
    #[arg(long, default_value_t = 30.0)]
    lagging_seconds: f64,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("fieldforce-lag: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Prints the lag; returns whether every group is OK.
fn run(cli: Cli) -> anyhow::Result<bool> {
    let config = Config::load(cli.config.as_deref())?;
    let groups: Vec<(String, String)> = if cli.groups.is_empty() {
        lag::pipeline_groups(&config)
    } else {
        cli.groups
            .iter()
            .map(|pair| {
                pair.split_once('=')
                    .map(|(group, topic)| (group.to_owned(), topic.to_owned()))
                    .ok_or_else(|| anyhow::anyhow!("--group {pair:?} is not GROUP=TOPIC"))
            })
            .collect::<Result<_, _>>()?
    };
    let thresholds = Thresholds {
        records: cli.lagging_records,
        seconds: cli.lagging_seconds,
    };
    let interval = Duration::from_secs(cli.interval_s);

    let mut sampler = GroupSampler::new(&config.kafka)?;
    let mut sample_all = || -> anyhow::Result<Vec<GroupLag>> {
        groups
            .iter()
            .map(|(group, topic)| Ok(sampler.sample(group, std::slice::from_ref(topic))?))
            .collect()
    };
    let mut earlier = sample_all()?;
    loop {
        #[allow(
            clippy::disallowed_methods,
            reason = "a synchronous command-line tool: no async worker to block"
        )]
        std::thread::sleep(interval);
        let later = sample_all()?;
        let all_ok = print_table(&earlier, &later, thresholds);
        if !cli.watch {
            return Ok(all_ok);
        }
        println!();
        earlier = later;
    }
}

fn print_table(earlier: &[GroupLag], later: &[GroupLag], thresholds: Thresholds) -> bool {
    println!(
        "{:<24} {:<36} {:>9} {:>14} {:>14} {:>10} {:>11}",
        "GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG", "LAG-SECONDS"
    );
    let mut all_ok = true;
    let mut statuses = Vec::new();
    for (before, now) in earlier.iter().zip(later) {
        for partition in &now.partitions {
            let current = partition
                .committed
                .map_or_else(|| "-".to_owned(), |offset| offset.to_string());
            println!(
                "{:<24} {:<36} {:>9} {:>14} {:>14} {:>10} {:>11.1}",
                now.group,
                partition.topic,
                partition.partition,
                current,
                partition.log_end,
                partition.lag_records,
                partition.lag_seconds
            );
        }
        let status = lag::classify(before, now, thresholds);
        all_ok &= status == GroupStatus::Ok;
        statuses.push((now, status));
    }
    println!();
    for (group, status) in statuses {
        println!(
            "{:<24} {:<8} lag {} records, {:.1} s; {} members ({})",
            group.group,
            status,
            group.lag_records(),
            group.lag_seconds(),
            group.members,
            group.state
        );
        for topic in &group.missing_topics {
            println!(
                "{:<24} topic {topic} has no partitions in the cluster",
                group.group
            );
        }
    }
    all_ok
}
