//! The `fieldforce-sink` service: loads the configuration and runs the MongoDB sink until
//! SIGINT or SIGTERM.

use fieldforce_runtime::config::Config;
use fieldforce_runtime::{shutdown, telemetry};

/// mimalloc rather than glibc malloc: the sink used about a quarter less CPU per document
/// while a backlog drained (docs/benchmarks/sink.md), CPU the store shares on small hosts.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::load_from_env()?;
    let telemetry = telemetry::init(&config.telemetry, env!("CARGO_BIN_NAME"))?;
    let result = fieldforce_sink_mongodb::run(config, shutdown::on_signals()).await;
    // Queued spans are exported whether the service stopped cleanly or not.
    telemetry.shutdown().await;
    result?;
    Ok(())
}
