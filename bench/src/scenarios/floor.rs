//! What the kernel alone spends on the sparse scenarios' writes, measured in the same run on
//! the same cores, to put beside the gateways' CPU per delivery.
//!
//! - [`floor`]: `../shared/tools/floor/run`, the yardstick: frames written back to
//!   back to readers that busy-poll.
//! - [`paced`]: `ryze-floor-paced`, the same writes at the scenario's pace to readers that
//!   sleep in epoll, as the bench's clients and real ones do: the cost no gateway avoids.

use anyhow::Context;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The kernel floor's CPU ms per 1,000 frames of `bytes` to `sockets` sockets, one frame per
/// write (`RYZE_FLOOR`, default `../shared/tools/floor/run` from the repository root).
pub async fn floor(bytes: usize, sockets: usize) -> anyhow::Result<f64> {
    let tool = std::env::var("RYZE_FLOOR").unwrap_or_else(|_| "../shared/tools/floor/run".into());
    let out = tokio::process::Command::new("bash")
        .arg(&tool)
        .args([
            &sockets.max(1).to_string(),
            "1000",
            &bytes.to_string(),
            "1",
            "0",
            "1",
        ])
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("running {tool}: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{tool} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    cpu_ms_per_1k(&tool, text.lines().last().unwrap_or_default())
}

/// The `cpu_ms_per_1k_deliveries` of the JSON line both floor tools print last.
fn cpu_ms_per_1k(tool: &str, line: &str) -> anyhow::Result<f64> {
    let v: serde_json::Value =
        serde_json::from_str(line).with_context(|| format!("{tool} printed {line:?}"))?;
    v["cpu_ms_per_1k_deliveries"]
        .as_f64()
        .with_context(|| format!("{tool} printed no cpu_ms_per_1k_deliveries: {line}"))
}

/// `ryze-floor-paced`'s CPU ms per 1,000 frames: `rounds` rounds, `gap_ms` apart, of one
/// `bytes`-byte frame to each of `sockets` sockets read by a tokio runtime; the writer on
/// CPU 0, the readers on CPU 1.
pub async fn paced(bytes: usize, sockets: usize, rounds: u64, gap_ms: u64) -> anyhow::Result<f64> {
    let exe = std::env::current_exe().context("locating ryze-bench")?;
    let bin = exe.with_file_name("ryze-floor-paced");
    let mut serve = tokio::process::Command::new("taskset")
        .args(["-c", "0"])
        .arg(&bin)
        .args(["serve", &sockets.max(1).to_string(), &rounds.to_string()])
        .args([bytes.to_string(), gap_ms.to_string()])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))?;
    let stdout = serve.stdout.take().context("ryze-floor-paced stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let port = lines
        .next_line()
        .await?
        .context("ryze-floor-paced printed no port")?;
    let drain = tokio::process::Command::new("taskset")
        .args(["-c", "1"])
        .arg(&bin)
        .args(["drain", port.trim(), &sockets.max(1).to_string()])
        .kill_on_drop(true)
        .status();
    let bound =
        std::time::Duration::from_millis(rounds * gap_ms) + std::time::Duration::from_secs(120);
    let (report, drained) =
        tokio::time::timeout(bound, async { tokio::join!(lines.next_line(), drain) })
            .await
            .context("ryze-floor-paced did not finish")?;
    let line = report?.context("ryze-floor-paced printed no result")?;
    anyhow::ensure!(drained?.success(), "ryze-floor-paced drain failed");
    anyhow::ensure!(
        serve.wait().await?.success(),
        "ryze-floor-paced serve failed"
    );
    cpu_ms_per_1k("ryze-floor-paced", &line)
}
