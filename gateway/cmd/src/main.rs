//! `ryze-gateway`: parse the config once, then build and run the app until SIGTERM/SIGINT,
//! with the publisher embedded when `EMBEDDED_PUBLISHER` is set.

mod embedded;

use ryze_gateway::app::App;
use ryze_gateway::config::Config;
use ryze_gateway::embed::Guest;

/// mimalloc instead of glibc's malloc. Each upgrade allocates and frees several KiB
/// (HTTP buffers, headers, the auth lookup) around the few hundred bytes a connection keeps;
/// glibc's per-thread arenas keep the freed space resident between those, mimalloc's
/// size-segregated pages reuse it. Built without transparent huge pages (`no_thp`).
/// Alternating idle runs: RSS 8 % lower at 19,834 connections, baseline included
/// (docs/benchmarks.md, fourth pass).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let config = ryze_core::config::parse_or_exit("ryze-gateway", Config::validate);
    // Dropped at the end of main, which flushes the spans still queued; `exit` skips drops,
    // so the error paths shut it down first.
    let telemetry = config.telemetry.init("ryze-gateway");
    let guest = config.ingest.clone().map(|ingest| {
        Box::new(embedded::EmbeddedPublisher::new(&config, ingest)) as Box<dyn Guest>
    });
    let app = match App::build(config, guest).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, error.chain = ?e, "gateway failed to start");
            telemetry.shutdown();
            std::process::exit(1);
        }
    };
    if let Err(e) = app.run_until_stopped(ryze_core::shutdown::signal()).await {
        tracing::error!(error = %e, error.chain = ?e, "gateway stopped with an error");
        telemetry.shutdown();
        std::process::exit(1);
    }
}
