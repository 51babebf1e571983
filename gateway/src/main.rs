//! `ryze-gateway`: parse the config once, then build and run the app until SIGTERM/SIGINT.

use clap::Parser;
use ryze_gateway::app::App;
use ryze_gateway::config::Config;

/// Exit status for bad configuration (EX_USAGE).
const EXIT_CONFIG: i32 = 64;

#[tokio::main]
async fn main() {
    let config = match Config::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    if let Err(problems) = config.validate() {
        eprintln!(
            "ryze-gateway: invalid configuration:\n  - {}",
            problems.join("\n  - ")
        );
        std::process::exit(EXIT_CONFIG);
    }
    // Dropped at the end of main, which flushes the spans still queued; `exit` skips drops,
    // so the error paths shut it down first.
    let telemetry = ryze_core::telemetry::init(
        config.log_format,
        config.otel_exporter_otlp_endpoint.as_deref(),
        "ryze-gateway",
    );
    let app = match App::build(config).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, error.chain = ?e, "gateway failed to start");
            telemetry.shutdown();
            std::process::exit(1);
        }
    };
    if let Err(e) = app
        .run_until_stopped(ryze_gateway::app::shutdown_signal())
        .await
    {
        tracing::error!(error = %e, error.chain = ?e, "gateway stopped with an error");
        telemetry.shutdown();
        std::process::exit(1);
    }
}
