//! `ryze-chaos`: the chaos soak of `make chaos` (issue 21). Starts a real system on loopback,
//! runs the seeded fault schedule under load for `CHAOS_SECONDS`, checks every invariant over
//! the recorded history, and writes the report: JSON to `CHAOS_REPORT` (default
//! `chaos-report.json` in the current directory) and, when `CHAOS_DOC` names a file, the
//! Markdown table into its generated block. Exits 1 when any invariant was violated.
//!
//! Settings (environment): `CHAOS_SEED`, `CHAOS_SECONDS` (600), `CHAOS_REDIS`
//! (`single` | `cluster` | `sentinel`), `CHAOS_INSTANCES` (30), `CHAOS_CLIENTS_PER_INSTANCE` (10),
//! `CHAOS_PERIOD_MS` (250), `CHAOS_MEAN_GAP` (5 s between fault starts), `CHAOS_COMMAND`
//! (the command line the report quotes). The product binaries are taken from `RYZE_BIN_DIR`
//! (the Makefile sets it to `$CARGO_TARGET_DIR/debug`).

use std::path::PathBuf;

use anyhow::Context;
use ryze_tests::chaos::{self, Config};

const BEGIN: &str = "<!-- chaos-report:begin -->";
const END: &str = "<!-- chaos-report:end -->";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run().await
}

async fn run() -> anyhow::Result<()> {
    let config = Config::from_env(600.0)?;
    let report = chaos::run(&config).await?;
    let json = serde_json::to_string_pretty(&report)?;
    let path =
        PathBuf::from(std::env::var("CHAOS_REPORT").unwrap_or_else(|_| "chaos-report.json".into()));
    std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    let md = report.markdown();
    println!("{md}");
    for v in &report.violation_list {
        println!(
            "VIOLATION {} at {:.3}s, {}: {}\n  {}",
            v.kind,
            v.at_s,
            v.subject,
            v.detail,
            v.context.join("\n  ")
        );
    }
    if let Ok(doc) = std::env::var("CHAOS_DOC") {
        let text = std::fs::read_to_string(&doc).with_context(|| format!("reading {doc}"))?;
        let (Some(a), Some(b)) = (text.find(BEGIN), text.find(END)) else {
            anyhow::bail!("{doc} has no {BEGIN} … {END} block");
        };
        let new = format!("{}{BEGIN}\n{md}{}", &text[..a], &text[b..]);
        std::fs::write(&doc, new).with_context(|| format!("writing {doc}"))?;
        eprintln!("ryze-chaos: report written into {doc}");
    }
    eprintln!(
        "ryze-chaos: seed {} — {} violations; JSON in {}",
        report.seed,
        report.violations,
        path.display()
    );
    if report.violations > 0 {
        std::process::exit(1);
    }
    Ok(())
}
