//! `ryze-publisher`: the ingest service, or one admin command.

use ryze_publisher::app::App;
use ryze_publisher::config::{Config, Run};

#[tokio::main]
async fn main() {
    let config = ryze_core::config::parse_or_exit("ryze-publisher", Config::validate);
    // Logs go to stderr, so an admin command's stdout is its JSON alone. Dropped at the end of
    // main, which flushes the spans still queued; `exit` skips drops, so the error paths shut
    // it down first.
    let telemetry = config.telemetry.init("ryze-publisher");
    let service = match config.run {
        Run::Service(service) => *service,
        Run::Admin(command) => {
            let result = async {
                let store = config.database.open()?;
                Ok::<_, anyhow::Error>(ryze_publisher::cmd::run(&store, &command).await?)
            }
            .await;
            match result {
                Ok(json) => println!("{json}"),
                Err(e) => {
                    eprintln!("ryze-publisher: {e}");
                    telemetry.shutdown();
                    std::process::exit(1);
                }
            }
            return;
        }
    };
    let app = match App::build(&config.database, service).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, error.chain = ?e, "publisher failed to start");
            telemetry.shutdown();
            std::process::exit(1);
        }
    };
    if let Err(e) = app.run_until_stopped(ryze_core::shutdown::signal()).await {
        tracing::error!(error = %e, error.chain = ?e, "publisher stopped with an error");
        telemetry.shutdown();
        std::process::exit(1);
    }
}
