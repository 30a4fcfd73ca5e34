//! `replay`: posts a folder of real submissions, one at a time and in name order, as the
//! clients that made them would, and prints what the gateway answered to each.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use crate::client::{GatewayClient, Outcome};
use crate::geofences;
use crate::input::{self, Item};
use crate::ledger::{self, Accepted};
use crate::report::Tally;

/// Arguments of `replay`.
#[derive(Args)]
pub struct ReplayArgs {
    /// Folders of submissions: loose XML and JSON files, XForms, and ODK Collect instance
    /// folders.
    #[arg(required = true)]
    folders: Vec<PathBuf>,
    /// Project the submissions are sent to.
    #[arg(long, default_value = "demo")]
    project: String,
    /// Enumerator user name sent with OpenRosa submissions.
    #[arg(long, default_value = "enumerator-1")]
    user: String,
    /// GeoJSON FeatureCollection of real boundaries to take the project's geofence from.
    #[arg(long, requires = "area")]
    geofences: Option<PathBuf>,
    /// Name of the boundary (its `name` property) that becomes the project's geofence.
    #[arg(long, requires = "geofences")]
    area: Option<String>,
}

/// Posts every item and returns whether the gateway answered each one (accepted or
/// rejected with a reason); transport failures make it false.
pub async fn run(
    client: &GatewayClient,
    ledger_path: &Path,
    args: ReplayArgs,
) -> anyhow::Result<bool> {
    let mut tally = Tally::default();
    let mut accepted = Vec::new();
    let mut answered_all = true;

    if let (Some(path), Some(area)) = (&args.geofences, &args.area) {
        let fences = geofences::read_geofences(path)?;
        let fence = fences
            .iter()
            .find(|fence| fence.name.eq_ignore_ascii_case(area))
            .with_context(|| format!("no boundary named {area} in {}", path.display()))?;
        geofences::assign(client, &args.project, fence).await?;
        println!("project {} has the geofence {}", args.project, fence.name);
    }

    for folder in &args.folders {
        println!("replaying {}", folder.display());
        for item in input::read_folder(folder)? {
            match item {
                Item::Form { path, xform } => {
                    let outcome = client.register_form(&args.project, xform).await;
                    print_outcome("form", &path, &outcome);
                    answered_all &= outcome.status != 0;
                }
                Item::OpenRosa {
                    path,
                    xml,
                    attachments,
                } => {
                    let text = String::from_utf8_lossy(&xml).into_owned();
                    let outcome = client
                        .submit_openrosa(&args.project, &args.user, xml, &attachments, true)
                        .await;
                    print_outcome("openrosa", &path, &outcome);
                    tally.record(&outcome);
                    answered_all &= outcome.status != 0;
                    if outcome.accepted() {
                        let instance = ledger::element_text(&text, "instanceID")
                            .or_else(|| root_instance_id(&text));
                        if let Some(submission_id) = reported_id(&outcome).or(instance) {
                            accepted.push(Accepted {
                                submission_id,
                                deprecated_id: ledger::element_text(&text, "deprecatedID"),
                                accepted_at_ms: ledger::now_ms(),
                            });
                        }
                    }
                }
                Item::Json { path, body } => {
                    let route = format!("/v1/projects/{}/submissions", args.project);
                    let outcome = client.post_json(&route, body).await;
                    print_outcome("json", &path, &outcome);
                    tally.record(&outcome);
                    answered_all &= outcome.status != 0;
                    if outcome.accepted()
                        && let Some(submission_id) = reported_id(&outcome)
                    {
                        accepted.push(Accepted {
                            submission_id,
                            deprecated_id: None,
                            accepted_at_ms: ledger::now_ms(),
                        });
                    }
                }
                Item::Skipped { path, reason } => {
                    println!("  skipped   {}  ({reason})", display_name(&path));
                }
            }
        }
    }

    ledger::append(ledger_path, &accepted)?;
    tally.print("replay");
    Ok(answered_all)
}

fn print_outcome(kind: &str, path: &Path, outcome: &Outcome) {
    println!(
        "  {kind:<9} {}  -> {} {}",
        display_name(path),
        outcome.status,
        outcome.message()
    );
}

fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Returns the submission id from a JSON answer, when the gateway sent one.
fn reported_id(outcome: &Outcome) -> Option<String> {
    let json: serde_json::Value = serde_json::from_str(&outcome.body).ok()?;
    json.get("submission_id")?.as_str().map(str::to_owned)
}

/// Returns the root element's `instanceID` attribute, which some clients use instead of meta.
fn root_instance_id(xml: &str) -> Option<String> {
    let start = xml.find("instanceID=\"")? + "instanceID=\"".len();
    let end = xml[start..].find('"')?;
    Some(xml[start..start + end].to_owned())
}
