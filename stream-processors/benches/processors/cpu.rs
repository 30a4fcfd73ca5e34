//! The `transform` mode: the CPU cost of each processor's transform alone, with no Kafka.
//!
//! A drain's throughput depends on the broker sharing the machine, the commit interval and
//! the scheduler. This mode isolates the part that a processor's own code decides. It generates
//! the same records a backlog holds, then calls the transform on each of them on one thread,
//! pass after pass. It prints the time per record of every pass and their median, both the
//! thread's CPU time and the wall time. The CPU time comes from `/proc/thread-self/schedstat`,
//! which does not count time spent waiting for a core, so other work moves it much less.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use fieldforce_kafka::client::json_record_headers;
use fieldforce_processors::pipeline::Transform;
use fieldforce_processors::quality::Scorer;
use fieldforce_runtime::config::Config;
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Timestamp};

use crate::backlog::{self, World};
use crate::drain::Subject;

/// Times `subject`'s transform over `records` generated records, `passes` times.
pub fn transform_cost(
    config: &Config,
    subject: Subject,
    records: usize,
    passes: usize,
    seed: u64,
) -> anyhow::Result<()> {
    let world = World::load()?;
    let transform: Arc<dyn Transform> = match subject {
        Subject::Validate => Arc::new(fieldforce_processors::validate::Validator::new(
            world.forms_registry(),
        )),
        Subject::Geo => Arc::new(fieldforce_processors::geo::Locator::new(
            world.forms_registry(),
            world.projects_registry(),
        )),
        Subject::Quality => Arc::new(Scorer::new(
            world.forms_registry(),
            world.projects_registry(),
            config.processors.duplicate_memory_entries,
        )),
        Subject::Bare(_) | Subject::Chain => {
            bail!("the transform mode takes validate, geo or quality")
        }
    };
    let headers = json_record_headers(&subject.backlog().schema());
    let messages: Vec<OwnedMessage> = backlog::generate(&world, subject.backlog(), records, seed)
        .into_iter()
        .enumerate()
        .map(|(offset, (key, timestamp, value))| {
            OwnedMessage::new(
                Some(value),
                Some(key.into_bytes()),
                subject.backlog().topic().to_owned(),
                Timestamp::CreateTime(timestamp),
                0,
                offset as i64,
                Some(headers.clone()),
            )
        })
        .collect();
    let value_bytes: usize = messages
        .iter()
        .map(|message| message.payload().map_or(0, <[u8]>::len))
        .sum();

    let mut cpu_ns = Vec::with_capacity(passes);
    let mut wall_ns = Vec::with_capacity(passes);
    let mut failed = 0;
    let count = messages.len().max(1) as f64;
    for pass in 1..=passes {
        let cpu_before = thread_cpu_ns()?;
        let started = Instant::now();
        for message in &messages {
            if transform.transform(message).is_err() {
                failed += 1;
            }
        }
        let wall = started.elapsed().as_nanos() as f64 / count;
        let cpu = (thread_cpu_ns()? - cpu_before) as f64 / count;
        println!(
            "pass {pass} {}: {cpu:.0} ns CPU, {wall:.0} ns wall per record",
            subject.name()
        );
        cpu_ns.push(cpu);
        wall_ns.push(wall);
    }
    println!(
        "transform {}: {} records of {} B, median over {passes} passes {:.0} ns CPU, {:.0} ns \
         wall per record ({failed} transforms failed)",
        subject.name(),
        messages.len(),
        value_bytes / messages.len().max(1),
        median(cpu_ns),
        median(wall_ns),
    );
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Returns the time the calling thread has run on a core, in nanoseconds.
fn thread_cpu_ns() -> anyhow::Result<u64> {
    let schedstat = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    schedstat
        .split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .context("/proc/thread-self/schedstat does not start with a time in nanoseconds")
}
