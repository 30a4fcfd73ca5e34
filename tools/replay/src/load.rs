//! `load`: drives the gateway open-loop. Requests start on a fixed schedule whatever the
//! answers do, and each latency counts from the scheduled start, so a slow gateway shows as
//! latency instead of silently lowering the offered rate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, ValueEnum};
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::client::{GatewayClient, Outcome};
use crate::generate::{self, Generated, Generator, Kind, ProjectPlan};
use crate::geofences::{self, Fence, read_geofences};
use crate::ledger::{self, Accepted};
use crate::report::Tally;

/// Requests allowed in flight before new ones are counted as not sent.
const MAX_IN_FLIGHT: usize = 4096;

/// Client format of the generated requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// OpenRosa multipart posts, as ODK Collect sends.
    Openrosa,
    /// Single JSON submissions.
    Json,
    /// JSON batches, as an offline app syncing a backlog sends.
    Batch,
    /// All three, in turn.
    Mix,
}

/// Arguments of `load`.
#[derive(Args)]
pub struct LoadArgs {
    /// Requests started per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration_s: f64,
    /// Client format of the requests.
    #[arg(long, value_enum, default_value_t = Format::Mix)]
    format: Format,
    /// Submissions per batch request.
    #[arg(long, default_value_t = 20)]
    batch_size: usize,
    /// Tokens of the organisations to send as, comma-separated; the global --token when empty.
    #[arg(long, value_delimiter = ',')]
    tokens: Vec<String>,
    /// Projects per organisation.
    #[arg(long, default_value_t = 3)]
    projects: usize,
    /// Enumerators (and devices) per project.
    #[arg(long, default_value_t = 20)]
    enumerators: usize,
    /// Share of bad records, 0 to 1.
    #[arg(long, default_value_t = 0.02)]
    bad_share: f64,
    /// GeoJSON FeatureCollection of real boundaries; each project gets one as its geofence.
    #[arg(long)]
    geofences: PathBuf,
    /// Seed of the generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Skip registering the form and project settings before sending.
    #[arg(long)]
    no_setup: bool,
}

/// Runs the load and returns whether every request received a response.
pub async fn run(
    client: &GatewayClient,
    ledger_path: &Path,
    args: LoadArgs,
) -> anyhow::Result<bool> {
    let clients: Vec<GatewayClient> = if args.tokens.is_empty() {
        vec![client.clone()]
    } else {
        args.tokens
            .iter()
            .map(|token| client.with_token(token))
            .collect()
    };
    let fences = read_geofences(&args.geofences)?;
    let plans = plan_projects(&fences, clients.len(), args.projects);
    if !args.no_setup {
        set_up_projects(&clients, &plans, &fences).await?;
    }

    let mut generator = Generator::new(args.seed, plans.clone(), args.enumerators, args.bad_share);
    let total = (args.rate * args.duration_s).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut not_sent = 0u64;
    let mut generated: BTreeMap<Kind, u64> = BTreeMap::new();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();

    println!(
        "load: {total} requests at {} per second ({:?})",
        args.rate, args.format
    );
    for sequence in 0..total {
        let scheduled = started + interval.mul_f64(sequence as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            not_sent += 1;
            continue;
        };
        let format = match args.format {
            Format::Mix => [Format::Openrosa, Format::Json, Format::Batch][(sequence % 3) as usize],
            other => other,
        };
        let batch_len = if format == Format::Batch {
            args.batch_size.max(1)
        } else {
            1
        };
        let first = generator.next_submission();
        let plan_index = first.plan;
        let mut submissions = vec![first];
        submissions.extend((1..batch_len).map(|_| generator.next_for_plan(plan_index)));
        for submission in &submissions {
            *generated.entry(submission.kind).or_default() += 1;
        }
        let plan = &plans[submissions[0].plan];
        let client = clients[plan.token_index].clone();
        let project = plan.project_id.clone();
        let tally = tally.clone();
        let accepted = accepted.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let outcome = send(&client, &project, format, &submissions).await;
            // Open-loop latency counts from the scheduled start, not the actual one.
            let latency = Instant::now().saturating_duration_since(scheduled);
            let outcome = Outcome { latency, ..outcome };
            let accepted_ids = accepted_ids(format, &submissions, &outcome);
            tally.lock().expect("tally lock").record(&outcome);
            accepted.lock().expect("ledger lock").extend(accepted_ids);
        });
        if sequence % 1000 == 999 {
            let sent = sequence + 1;
            println!(
                "load: {sent}/{total} started, {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    while tasks.join_next().await.is_some() {}
    // Taken before the ledger is written, which is not the gateway's time.
    let elapsed = started.elapsed().as_secs_f64();

    let accepted = std::mem::take(&mut *accepted.lock().expect("ledger lock"));
    ledger::append(ledger_path, &accepted)?;
    let mut tally = std::mem::take(&mut *tally.lock().expect("tally lock"));
    tally.print("load");
    let kinds: Vec<String> = generated
        .iter()
        .map(|(kind, count)| format!("{count} {kind:?}"))
        .collect();
    println!("  generated submissions: {}", kinds.join(", "));
    println!(
        "  offered {:.0}/s for {elapsed:.1} s, answered {:.0}/s, {} submissions accepted, {not_sent} not sent (over {MAX_IN_FLIGHT} in flight)",
        args.rate,
        tally.total() as f64 / elapsed,
        accepted.len(),
    );
    Ok(not_sent == 0
        && !tally
            .rejected
            .keys()
            .any(|reason| reason.starts_with("no answer")))
}

async fn send(
    client: &GatewayClient,
    project: &str,
    format: Format,
    submissions: &[Generated],
) -> Outcome {
    let first = &submissions[0];
    match format {
        Format::Openrosa | Format::Mix => {
            client
                .submit_openrosa(project, &first.user, Bytes::from(first.xml()), &[], false)
                .await
        }
        Format::Json => {
            let route = format!("/v1/projects/{project}/submissions");
            let mut body = Vec::with_capacity(512);
            first.write_json(&mut body);
            client.post_json(&route, Bytes::from(body)).await
        }
        Format::Batch => {
            let route = format!("/v1/projects/{project}/submissions/batch");
            let body = generate::batch_json(submissions);
            client.post_json(&route, Bytes::from(body)).await
        }
    }
}

/// Returns the ledger entries of the submissions a request got accepted.
fn accepted_ids(format: Format, submissions: &[Generated], outcome: &Outcome) -> Vec<Accepted> {
    if !outcome.accepted() {
        return Vec::new();
    }
    let now = ledger::now_ms();
    let entry = |submission: &Generated| Accepted {
        submission_id: submission.instance_id.clone(),
        deprecated_id: None,
        accepted_at_ms: now,
    };
    if format != Format::Batch {
        return submissions.iter().take(1).map(entry).collect();
    }
    // A batch response has one result per item; an item counts as accepted on a 2xx status.
    let results = serde_json::from_str::<BatchAnswer>(&outcome.body)
        .map(|answer| answer.results)
        .unwrap_or_default();
    submissions
        .iter()
        .zip(results)
        .filter(|(_, result)| (200..300).contains(&result.status_code))
        .map(|(submission, _)| entry(submission))
        .collect()
}

/// The part of a batch response that the ledger needs.
#[derive(Deserialize)]
struct BatchAnswer {
    results: Vec<ItemResult>,
}

#[derive(Deserialize)]
struct ItemResult {
    #[serde(default)]
    status_code: u16,
}

/// Plans `projects` projects per organisation, each assigned one of `fences` in turn, with its
/// outside point taken from a fence about half the list away.
pub fn plan_projects(fences: &[Fence], organisations: usize, projects: usize) -> Vec<ProjectPlan> {
    let mut plans = Vec::new();
    for token_index in 0..organisations {
        for project in 0..projects.max(1) {
            let fence = (token_index * projects + project) % fences.len();
            let elsewhere = (fence + fences.len() / 2).max(fence + 1) % fences.len();
            plans.push(ProjectPlan {
                token_index,
                project_id: format!("survey-{}", project + 1),
                inside: fences[fence].interior,
                outside: fences[elsewhere].interior,
            });
        }
    }
    plans
}

async fn set_up_projects(
    clients: &[GatewayClient],
    plans: &[ProjectPlan],
    fences: &[Fence],
) -> anyhow::Result<()> {
    for plan in plans {
        let client = &clients[plan.token_index];
        let form = client
            .register_form(&plan.project_id, Bytes::from(generate::xform()))
            .await;
        anyhow::ensure!(
            form.accepted() || form.status == 409,
            "registering the form in {} failed: {} {}",
            plan.project_id,
            form.status,
            form.message()
        );

        let fence = fences
            .iter()
            .find(|fence| fence.interior == plan.inside)
            .context("every plan's inside point comes from a fence")?;
        geofences::assign(client, &plan.project_id, fence).await?;
    }
    println!(
        "load: registered the survey form and a geofence in {} projects",
        plans.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_counts_only_accepted_items() {
        let plans = vec![ProjectPlan {
            token_index: 0,
            project_id: "p".into(),
            inside: [0.0, 1.0],
            outside: [5.0, 5.0],
        }];
        let mut generator = Generator::new(3, plans, 2, 0.0);
        let submissions: Vec<Generated> = (0..3).map(|_| generator.next_submission()).collect();
        let outcome = Outcome {
            status: 207,
            body: r#"{"results":[{"status_code":201},{"status_code":409},{"status_code":201}]}"#
                .into(),
            latency: Duration::from_millis(1),
        };
        let accepted = accepted_ids(Format::Batch, &submissions, &outcome);
        assert_eq!(accepted.len(), 2);
        assert_eq!(accepted[1].submission_id, submissions[2].instance_id);
        assert!(submissions.iter().all(|s| s.kind == Kind::Good));
    }
}
