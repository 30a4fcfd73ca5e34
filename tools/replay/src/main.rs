//! The `fieldforce-replay` command line; see the library for what each subcommand does.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fieldforce_replay::{client, encode, find, load, replay, summary};

/// mimalloc rather than glibc malloc, because the load generator shares the cores with the
/// gateway it measures: under glibc malloc, allocation took about 45% of its CPU time in a
/// batch load (docs/benchmarks/gateway.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Write a raw submission in an encoding partners produce to Kafka.
    Encode(encode::EncodeArgs),
    /// Print stored submissions as JSON.
    Find(find::FindArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let client = client::GatewayClient::new(&cli.gateway, &cli.token);
    let result = match cli.command {
        Command::Replay(args) => replay::run(&client, &cli.ledger, args).await,
        Command::Load(args) => load::run(&client, &cli.ledger, args).await,
        Command::Summary(args) => summary::run(&cli.ledger, args).await,
        Command::Encode(args) => encode::run(args),
        Command::Find(args) => find::run(args).await,
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
