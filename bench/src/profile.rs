//! Optional CPU profiles of the gateways while a scenario publishes: `perf record` (sampling
//! at 499 Hz, no call graphs: release builds have no frame pointers) attached to each gateway
//! for the publishing window, then `perf report` reduced to the kernel's share and the hottest
//! symbols. Used when `ryze-bench --perf DIR` is given (scripts/bench.sh does when `perf`
//! works here).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio::process::{Child, Command};

/// Symbols shown per profile.
const TOP: usize = 14;

/// `perf` runs here (installed, and allowed to sample).
pub fn available() -> bool {
    std::process::Command::new("perf")
        .args(["stat", "-e", "cpu-clock", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Recordings in progress: a `perf record` and a `perf stat` of write syscalls per gateway.
pub struct Recording {
    runs: Vec<(String, Child, PathBuf)>,
    stats: Vec<(Child, PathBuf)>,
}

/// Syscalls that put bytes on a socket.
const WRITE_SYSCALLS: &str = "syscalls:sys_enter_sendto,syscalls:sys_enter_write,\
syscalls:sys_enter_writev,syscalls:sys_enter_sendmsg";

/// One gateway's profile.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    /// Which gateway.
    pub label: String,
    /// Where the data is (`perf report -i <file>` for more).
    pub file: String,
    /// Samples taken.
    pub samples: String,
    /// Share of samples in the kernel (syscalls, TCP, scheduling).
    pub kernel_share: f64,
    /// Write-like syscalls (`sendto`, `write`, `writev`, `sendmsg`) over the same window, if
    /// the tracepoints could be counted.
    pub writes: Option<u64>,
    /// (share, where, symbol), hottest first.
    pub top: Vec<(f64, String, String)>,
    /// Samples grouped by area of the hot path (see [`AREAS`]), largest first.
    pub areas: Vec<(String, f64)>,
}

/// Areas of the hot path, matched in order on `<dso> <symbol>` by substring; the first match
/// wins. Coarse by design: it tells where a delivery's CPU goes, not which line.
pub const AREAS: [(&str, bool, &[&str]); 9] = [
    (
        "kernel: the loopback peer's receive path and its wakeup",
        true,
        &[
            "tcp_v4_rcv",
            "tcp_rcv",
            "inet_lookup",
            "tcp_data_queue",
            "sock_def_readable",
            "ip_rcv",
            "netif_receive",
            "net_rx",
            "softirq",
            "process_backlog",
            "tcp_queue_rcv",
            "tcp_event_data_recv",
            "try_to_wake_up",
            "ttwu",
            "select_task_rq",
            "enqueue",
            "_raw_spin_unlock_irqrestore",
            "skb_defer",
            "tcp_ack",
            "kfree_skb",
            "skb_release",
            "ip_local_deliver",
            "tcp_v4_do_rcv",
            "tcp_add_backlog",
            "tcp_check_space",
            "tcp_clean_rtx",
        ],
    ),
    (
        "kernel: this process's scheduling and epoll",
        true,
        &[
            "finish_task_switch",
            "schedule",
            "futex",
            "__switch_to",
            "pick_next",
            "dequeue",
            "update_curr",
            "ep_poll",
            "do_epoll",
            "_raw_spin_unlock_irq",
        ],
    ),
    ("kernel: send path, copies, syscall entry", true, &[""]),
    (
        "tracing spans and the log bridge",
        false,
        &[
            "tracing",
            "log::",
            "LogTracer",
            "loglevel",
            "DirectiveSet",
            "dispatcher",
            "Instrumented",
        ],
    ),
    (
        "timers (pong deadline, ping interval)",
        false,
        &[
            "tokio::time::",
            "runtime::time::",
            "Sleep",
            "Interval",
            "clear_entry",
            "TimerEntry",
        ],
    ),
    ("outbox, hub, notify", false, &["outbox", "hub::", "otify"]),
    (
        "WebSocket framing and copies",
        false,
        &["tungstenite", "memmove", "memcpy", "mask"],
    ),
    (
        "malloc and free",
        false,
        &[
            "malloc",
            "_int_free",
            "cfree",
            "unlink_chunk",
            "realloc",
            "free",
        ],
    ),
    (
        "tokio scheduler, wakers, I/O readiness",
        false,
        &["tokio::", "waker", "Waker", "PollFn", "mio::", "poll_fn"],
    ),
];

fn area_of(dso: &str, symbol: &str) -> &'static str {
    let kernel = dso.starts_with("[kernel");
    let key = format!("{dso} {symbol}");
    AREAS
        .iter()
        .find(|(_, in_kernel, needles)| {
            *in_kernel == kernel && needles.iter().any(|n| key.contains(n))
        })
        .map_or("other", |(name, _, _)| name)
}

/// Starts `perf record` on each `(label, pid)` for `secs`, writing `<dir>/<name>-<label>.data`.
pub async fn start(
    dir: &Path,
    name: &str,
    targets: &[(String, u32)],
    secs: f64,
) -> anyhow::Result<Recording> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut runs = Vec::new();
    let mut stats = Vec::new();
    for (label, pid) in targets {
        let counts = dir.join(format!("{name}-{label}.writes.csv"));
        let stat = Command::new("perf")
            .args([
                "stat",
                "-x",
                ",",
                "-e",
                WRITE_SYSCALLS,
                "-p",
                &pid.to_string(),
                "-o",
            ])
            .arg(&counts)
            .args(["--", "sleep", &format!("{secs:.1}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("spawning perf stat")?;
        stats.push((stat, counts));
        let file = dir.join(format!("{name}-{label}.data"));
        let child = Command::new("perf")
            .args(["record", "-F", "499", "-q", "-p", &pid.to_string(), "-o"])
            .arg(&file)
            .args(["--", "sleep", &format!("{secs:.1}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("spawning perf record")?;
        runs.push((label.clone(), child, file));
    }
    Ok(Recording { runs, stats })
}

/// The sum of the counts in a `perf stat -x ,` file; `None` if nothing was counted.
fn write_count(file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let counts: Vec<u64> = text
        .lines()
        .filter(|l| l.contains("syscalls:"))
        .filter_map(|l| l.split(',').next()?.trim().parse().ok())
        .collect();
    (!counts.is_empty()).then(|| counts.iter().sum())
}

impl Recording {
    /// Waits for every recording (bounded) and summarises it.
    pub async fn finish(self) -> Vec<Profile> {
        let mut out = Vec::new();
        let mut writes = Vec::new();
        for (mut child, file) in self.stats {
            let _ = tokio::time::timeout(Duration::from_secs(120), child.wait()).await;
            writes.push(write_count(&file));
        }
        for (i, (label, mut child, file)) in self.runs.into_iter().enumerate() {
            let _ = tokio::time::timeout(Duration::from_secs(120), child.wait()).await;
            match summarise(&label, &file).await {
                Ok(mut p) => {
                    p.writes = writes.get(i).copied().flatten();
                    out.push(p);
                }
                Err(e) => eprintln!("ryze-bench: no profile for {label}: {e:#}"),
            }
        }
        out
    }
}

async fn report(file: &Path, sort: &str) -> anyhow::Result<String> {
    let out = Command::new("perf")
        .args(["report", "--stdio", "--no-children", "--sort", sort, "-i"])
        .arg(file)
        .stderr(Stdio::null())
        .output()
        .await
        .context("running perf report")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `  12.34%  dso  [k] symbol` → (12.34, rest words).
fn parse_line(line: &str) -> Option<(f64, Vec<&str>)> {
    let mut words = line.split_whitespace();
    let pct = words.next()?.strip_suffix('%')?.parse().ok()?;
    Some((pct, words.collect()))
}

async fn summarise(label: &str, file: &Path) -> anyhow::Result<Profile> {
    let by_dso = report(file, "dso").await?;
    let samples = by_dso
        .lines()
        .find_map(|l| l.strip_prefix("# Samples: "))
        .map(|s| s.split(" of").next().unwrap_or(s).to_owned())
        .unwrap_or_else(|| "?".to_owned());
    let kernel_share = by_dso
        .lines()
        .filter_map(parse_line)
        .filter(|(_, w)| w.first().is_some_and(|d| d.starts_with("[kernel")))
        .map(|(p, _)| p)
        .sum();
    let by_symbol = report(file, "dso,symbol").await?;
    let mut areas: Vec<(String, f64)> = Vec::new();
    for (pct, w) in by_symbol.lines().filter_map(parse_line) {
        let dso = w.first().copied().unwrap_or("");
        let symbol = w.get(2..).map(|s| s.join(" ")).unwrap_or_default();
        let area = area_of(dso, &symbol);
        match areas.iter_mut().find(|(a, _)| a == area) {
            Some((_, total)) => *total += pct,
            None => areas.push((area.to_owned(), pct)),
        }
    }
    areas.sort_by(|a, b| b.1.total_cmp(&a.1));
    let top = by_symbol
        .lines()
        .filter_map(parse_line)
        .take(TOP)
        .map(|(pct, w)| {
            let dso = w.first().copied().unwrap_or("").to_owned();
            // Skip the `[k]`/`[.]` marker; the symbol may contain spaces.
            // perf pads unused sort columns with `-`.
            let symbol: String = w
                .iter()
                .skip(2)
                .copied()
                .filter(|x| *x != "-")
                .collect::<Vec<_>>()
                .join(" ");
            let symbol = if symbol.chars().count() > 110 {
                format!("{}…", symbol.chars().take(110).collect::<String>())
            } else {
                symbol
            };
            (pct, dso, symbol)
        })
        .collect();
    Ok(Profile {
        label: label.to_owned(),
        file: file.display().to_string(),
        samples,
        kernel_share,
        writes: None,
        top,
        areas,
    })
}
