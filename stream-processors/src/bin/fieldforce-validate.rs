//! The validate processor binary: loads the configuration, starts logging and trace
//! export, and runs until SIGINT or SIGTERM.

use fieldforce_runtime::config::Config;
use fieldforce_runtime::{shutdown, telemetry};

/// mimalloc rather than glibc malloc, which took about a third of the quality processor's
/// transform time while it drained a backlog (docs/benchmarks/processors.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::load_from_env()?;
    let telemetry = telemetry::init(&config.telemetry, env!("CARGO_BIN_NAME"))?;
    let result = fieldforce_processors::validate::run(config, shutdown::on_signals()).await;
    // Queued spans are exported whether the service stopped cleanly or not.
    telemetry.shutdown().await;
    result?;
    Ok(())
}
