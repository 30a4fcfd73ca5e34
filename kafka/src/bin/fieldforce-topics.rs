//! Creates the catalog's missing topics and reports drift between the cluster and the catalog.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fieldforce_kafka::admin;
use fieldforce_kafka::catalog::Catalog;
use fieldforce_runtime::config::Config;

/// Manage FieldForce topics from the catalog (kafka/topics.toml).
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Configuration file; defaults, then this file, then FIELDFORCE_* variables.
    #[arg(long, env = "FIELDFORCE_CONFIG")]
    config: Option<PathBuf>,
    /// Catalog file to use instead of the one built in.
    #[arg(long)]
    catalog: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the missing topics, then report drift. Exits 1 when drift remains.
    Apply,
    /// Report missing topics and drift without changing anything. Exits 1 on any difference.
    Check,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("fieldforce-topics: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = Config::load(cli.config.as_deref())?;
    let catalog = match cli.catalog {
        Some(path) => Catalog::parse(&std::fs::read_to_string(&path)?)?,
        None => Catalog::embedded(),
    };
    let create = matches!(cli.command, Command::Apply);
    let report = admin::apply(&config.kafka, &catalog, create).await?;

    for topic in &report.created {
        println!("created  {topic}");
    }
    for topic in &report.existing {
        println!("exists   {topic}");
    }
    for line in &report.drift {
        println!("drift    {line}");
    }
    Ok(if report.drift.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
