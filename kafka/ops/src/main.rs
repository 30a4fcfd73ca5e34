//! The operations service binary: loads the configuration, starts logging, binds
//! `ops.listen_addr` and serves the operations page until SIGINT or SIGTERM.

use anyhow::Context;
use fieldforce_runtime::config::Config;
use fieldforce_runtime::{shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::load_from_env()?;
    let telemetry = telemetry::init(&config.telemetry, env!("CARGO_BIN_NAME"))?;
    let listener = tokio::net::TcpListener::bind(&config.ops.listen_addr)
        .await
        .with_context(|| format!("binding ops.listen_addr {} failed", config.ops.listen_addr))?;
    let result = fieldforce_ops::run(config, listener, shutdown::on_signals()).await;
    telemetry.shutdown().await;
    result?;
    Ok(())
}
