//! `fieldforce-replay`: a client-side tool for the gateway.
//!
//! - `replay` posts a folder of real submissions the way the clients that made them would:
//!   XForms are registered first, loose XML files and ODK Collect instance folders go as
//!   OpenRosa multipart posts with their attachments, JSON files go to the JSON API.
//! - `load` drives the gateway open-loop at a target rate with generated submissions
//!   modelled on real ones, and reports latency percentiles and errors.
//! - `summary` waits until every accepted submission is stored, then reports what the
//!   pipeline did with them: stored, dead-lettered by reason, flagged by quality check,
//!   outside a geofence, accepted-to-stored latency and the lag of every consumer group.

mod client;
mod generate;
mod geofences;
mod input;
mod ledger;
mod load;
mod replay;
mod report;
mod summary;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Replay real submissions through the FieldForce gateway, load it, and summarise the result.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Base URL of the gateway.
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:8080",
        env = "FIELDFORCE_GATEWAY_URL"
    )]
    gateway: String,
    /// API token the submissions are sent with.
    #[arg(
        long,
        global = true,
        default_value = "fieldforce-dev-token",
        env = "FIELDFORCE_TOKEN"
    )]
    token: String,
    /// File that records every accepted submission (id and acceptance time), read by `summary`.
    #[arg(long, global = true, default_value = ".stack/run/accepted.jsonl")]
    ledger: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Post every submission in the given folders, as the client that made it would.
    Replay(replay::ReplayArgs),
    /// Post generated submissions open-loop at a target rate.
    Load(load::LoadArgs),
    /// Wait until accepted submissions are stored, then report what the pipeline did.
    Summary(summary::SummaryArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let client = client::GatewayClient::new(&cli.gateway, &cli.token);
    let result = match cli.command {
        Command::Replay(args) => replay::run(&client, &cli.ledger, args).await,
        Command::Load(args) => load::run(&client, &cli.ledger, args).await,
        Command::Summary(args) => summary::run(&cli.ledger, args).await,
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("fieldforce-replay: {error:#}");
            ExitCode::from(2)
        }
    }
}
