//! The `fieldforce-gateway` binary: loads the configuration, binds `gateway.listen_addr` and
//! runs the gateway until SIGINT or SIGTERM.

use anyhow::Context;
use fieldforce_runtime::config::Config;
use fieldforce_runtime::{shutdown, telemetry};

/// mimalloc rather than glibc malloc, because glibc kept the pages freed after a load (the
/// submission index's idle entries included) and the gateway's resident memory stayed at
/// its peak (docs/benchmarks/gateway.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::load_from_env()?;
    let telemetry = telemetry::init(&config.telemetry, env!("CARGO_BIN_NAME"))?;
    let listener = tokio::net::TcpListener::bind(&config.gateway.listen_addr)
        .await
        .with_context(|| format!("binding {} failed", config.gateway.listen_addr))?;
    let result = fieldforce_gateway::run(config, listener, shutdown::on_signals()).await;
    // Queued spans are exported whether the service stopped cleanly or not.
    telemetry.shutdown().await;
    result?;
    Ok(())
}
