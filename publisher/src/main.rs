//! `ryze-publisher`: the ingest service, or one admin command.

use clap::Parser;
use ryze_publisher::app::App;
use ryze_publisher::config::{Config, LogFormat};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

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
            "ryze-publisher: invalid configuration:\n  - {}",
            problems.join("\n  - ")
        );
        std::process::exit(EXIT_CONFIG);
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match config.log_format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .json()
                    .flatten_event(true),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(false),
            )
            .try_init(),
    };
    if let Some(command) = &config.command {
        let result = async {
            let store = ryze_publisher::app::store(&config)?;
            Ok::<_, anyhow::Error>(ryze_publisher::cmd::run(&store, command).await?)
        }
        .await;
        match result {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("ryze-publisher: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let app = match App::build(config).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, error.chain = ?e, "publisher failed to start");
            std::process::exit(1);
        }
    };
    let signal = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {},
        }
    };
    if let Err(e) = app.run_until_stopped(signal).await {
        tracing::error!(error = %e, "publisher stopped with an error");
        std::process::exit(1);
    }
}
