//! The analytics aggregator binary: loads the configuration, starts logging and runs until
//! SIGINT or SIGTERM.

use fieldforce_runtime::config::Config;
use fieldforce_runtime::{shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::load_from_env()?;
    telemetry::init(&config.telemetry);
    fieldforce_processors::analytics::run(config, shutdown::on_signals()).await?;
    Ok(())
}
