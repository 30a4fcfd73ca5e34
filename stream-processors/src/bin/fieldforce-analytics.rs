//! The analytics aggregator binary: loads the configuration, starts logging and trace
//! export, and runs until SIGINT or SIGTERM.

use fieldforce_runtime::config::Config;
use fieldforce_runtime::{shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::load_from_env()?;
    let telemetry = telemetry::init(&config.telemetry, env!("CARGO_BIN_NAME"))?;
    let result = fieldforce_processors::analytics::run(config, shutdown::on_signals()).await;
    // Queued spans are exported whether the service stopped cleanly or not.
    telemetry.shutdown().await;
    result?;
    Ok(())
}
