//! What the kernel alone spends on the sparse scenarios' writes, measured in the same run on
//! the same cores, to put beside the gateways' CPU per delivery.
//!
//! - [`floor`]: `../shared/tools/floor/run`, the yardstick: frames written back to
//!   back to readers that busy-poll.
//! - [`paced`]: `ryze-floor-paced`, the same writes at the scenario's pace, from one writer
//!   per gateway, to readers that sleep in epoll, as the bench's clients and real ones do: the
//!   cost no gateway avoids, and the latency of those writes alone.

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

/// The `cpu_ms_per_1k_deliveries` of the JSON line the floor prints last.
fn cpu_ms_per_1k(tool: &str, line: &str) -> anyhow::Result<f64> {
    let v: serde_json::Value =
        serde_json::from_str(line).with_context(|| format!("{tool} printed {line:?}"))?;
    v["cpu_ms_per_1k_deliveries"]
        .as_f64()
        .with_context(|| format!("{tool} printed no cpu_ms_per_1k_deliveries: {line}"))
}

/// What `ryze-floor-paced` measured: the writers' CPU per 1,000 frames and the frames'
/// stamp → receive latency.
pub struct Paced {
    /// CPU ms of all writers per 1,000 frames.
    pub cpu_ms_per_1k: f64,
    /// Round start → frame read, µs.
    pub p50_us: u64,
    /// Round start → frame read, µs.
    pub p99_us: u64,
    /// Round start → a writer's last write of the round done, µs: the median round of the
    /// slower writer.
    pub round_p50_us: u64,
}

/// `ryze-floor-paced` with `writers` processes on CPU 0 (one per gateway of the scenario),
/// each writing `rounds` rounds, `gap_ms` apart and in step, of one `bytes`-byte frame to
/// each of its `sockets` sockets, all read by one tokio runtime on CPU 1.
pub async fn paced(
    bytes: usize,
    writers: usize,
    sockets: usize,
    rounds: u64,
    gap_ms: u64,
) -> anyhow::Result<Paced> {
    let exe = std::env::current_exe().context("locating ryze-bench")?;
    let bin = exe.with_file_name("ryze-floor-paced");
    let sockets = sockets.max(1).to_string();
    let mut serves = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..writers.max(1) {
        let mut serve = tokio::process::Command::new("taskset")
            .args(["-c", "0"])
            .arg(&bin)
            .args(["serve", &sockets, &rounds.to_string()])
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
        ports.push(port.trim().to_owned());
        serves.push((serve, lines));
    }
    let drain = tokio::process::Command::new("taskset")
        .args(["-c", "1"])
        .arg(&bin)
        .args(["drain", &sockets])
        .args(&ports)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let reports =
        futures_util::future::join_all(serves.iter_mut().map(|(_, lines)| lines.next_line()));
    let bound =
        std::time::Duration::from_millis(rounds * gap_ms) + std::time::Duration::from_secs(120);
    let (reports, drained) = tokio::time::timeout(bound, async { tokio::join!(reports, drain) })
        .await
        .context("ryze-floor-paced did not finish")?;
    let drained = drained?;
    anyhow::ensure!(drained.status.success(), "ryze-floor-paced drain failed");
    let (mut cpu_s, mut frames, mut round_p50_us) = (0.0, 0.0, 0);
    for line in reports {
        let line = line?.context("ryze-floor-paced printed no result")?;
        let v: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("ryze-floor-paced printed {line:?}"))?;
        cpu_s += v["cpu_s"].as_f64().context("no cpu_s")?;
        frames += v["frames"].as_f64().context("no frames")?;
        round_p50_us = round_p50_us.max(v["round_p50_us"].as_u64().context("no round_p50_us")?);
    }
    for (serve, _) in &mut serves {
        anyhow::ensure!(
            serve.wait().await?.success(),
            "ryze-floor-paced serve failed"
        );
    }
    let text = String::from_utf8_lossy(&drained.stdout);
    let line = text.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(line)
        .with_context(|| format!("ryze-floor-paced drain printed {line:?}"))?;
    anyhow::ensure!(
        v["frames"].as_f64() == Some(frames),
        "ryze-floor-paced drain read {} of {frames} frames",
        v["frames"]
    );
    Ok(Paced {
        cpu_ms_per_1k: cpu_s * 1e6 / frames.max(1.0),
        p50_us: v["p50_us"].as_u64().context("no p50_us")?,
        p99_us: v["p99_us"].as_u64().context("no p99_us")?,
        round_p50_us,
    })
}
