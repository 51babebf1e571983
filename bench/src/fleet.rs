//! A fleet of `ryze-load` workers: spawned with their share of the connections and a source
//! address of their own, steered through stdin, their JSON lines merged into one [`Merged`].

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::histogram::Histogram;
use super::protocol::WorkerReport;

/// Source addresses handed out so far: 127.1.0.1, 127.1.0.2, … Every worker of a run gets a
/// fresh one, so the ports left in TIME_WAIT by an earlier scenario never collide.
static NEXT_SOURCE: AtomicU32 = AtomicU32::new(0);

fn next_source() -> Ipv4Addr {
    let n = NEXT_SOURCE.fetch_add(1, Ordering::Relaxed);
    Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 1, 0, 1)) + n)
}

/// What a fleet should do.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// URL templates (`{i}` = instance index); connection `g` starts on `urls[g % len]`, or on
    /// the first with `reconnect`.
    pub urls: Vec<String>,
    /// Connections in total.
    pub count: usize,
    /// At most this many per worker.
    pub per_worker: usize,
    /// Instances the connections cycle through (`{i}` = global index % instances).
    pub instances: usize,
    /// Handshakes in flight per worker.
    pub concurrency: usize,
    /// Re-establish lost connections on the next URL.
    pub reconnect: bool,
    /// Client read buffer per connection.
    pub read_buffer: usize,
    /// Hard lifetime of each worker.
    pub max_seconds: u64,
}

impl FleetSpec {
    /// `count` connections over `urls`, defaults for the rest.
    pub fn new(urls: Vec<String>, count: usize) -> FleetSpec {
        FleetSpec {
            urls,
            count,
            per_worker: 5000,
            instances: 1,
            concurrency: 256,
            reconnect: false,
            read_buffer: 8 * 1024,
            max_seconds: 600,
        }
    }
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// Lines read while waiting for another kind.
    backlog: VecDeque<WorkerReport>,
    source: Ipv4Addr,
}

impl Worker {
    async fn next_of(&mut self, kind: &str, timeout: Duration) -> anyhow::Result<WorkerReport> {
        if let Some(pos) = self.backlog.iter().position(|r| r.kind == kind) {
            if let Some(r) = self.backlog.remove(pos) {
                return Ok(r);
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let line = match tokio::time::timeout_at(deadline, self.lines.next_line()).await {
                Ok(line) => line.context("reading a worker's output")?,
                Err(_) => bail!(
                    "worker {} printed no {kind:?} within {timeout:?}",
                    self.source
                ),
            };
            let Some(line) = line else {
                bail!("worker {} exited before printing {kind:?}", self.source);
            };
            let report: WorkerReport = serde_json::from_str(&line)
                .with_context(|| format!("worker {} printed {line:?}", self.source))?;
            if report.kind == kind {
                return Ok(report);
            }
            self.backlog.push_back(report);
        }
    }

    async fn send(&mut self, command: &str) -> anyhow::Result<()> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .with_context(|| format!("sending {command:?} to worker {}", self.source))
    }
}

/// Running workers.
pub struct Fleet {
    workers: Vec<Worker>,
}

/// `ryze-load` next to this executable, or `$RYZE_LOAD_BIN`.
pub fn load_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("RYZE_LOAD_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("locating ryze-bench")?;
    let path = exe.with_file_name("ryze-load");
    if !path.is_file() {
        bail!("{} not found: build the ryze-tests bins", path.display());
    }
    Ok(path)
}

impl Fleet {
    /// Spawns the workers; they start connecting at once.
    pub async fn spawn(spec: &FleetSpec) -> anyhow::Result<Fleet> {
        let bin = load_bin()?;
        let per_worker = spec.per_worker.max(1);
        let mut workers = Vec::new();
        let mut offset = 0;
        while offset < spec.count || (spec.count == 0 && workers.is_empty()) {
            let count = per_worker.min(spec.count - offset);
            let source = next_source();
            let mut cmd = Command::new(&bin);
            for url in &spec.urls {
                cmd.arg("--url").arg(url);
            }
            cmd.args(["--source", &source.to_string()])
                .args(["--count", &count.to_string()])
                .args(["--offset", &offset.to_string()])
                .args(["--instances", &spec.instances.to_string()])
                .args(["--concurrency", &spec.concurrency.to_string()])
                .args(["--read-buffer", &spec.read_buffer.to_string()])
                .args(["--max-seconds", &spec.max_seconds.to_string()]);
            if spec.reconnect {
                cmd.arg("--reconnect");
            }
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            let mut child = cmd
                .spawn()
                .with_context(|| format!("spawning {}", bin.display()))?;
            let stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            workers.push(Worker {
                child,
                stdin,
                lines: BufReader::new(stdout).lines(),
                backlog: VecDeque::new(),
                source,
            });
            offset += count;
            if spec.count == 0 {
                break;
            }
        }
        Ok(Fleet { workers })
    }

    /// Worker process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.workers.iter().filter_map(|w| w.child.id()).collect()
    }

    /// Waits for a line of `kind` from every worker.
    pub async fn wait(&mut self, kind: &str, timeout: Duration) -> anyhow::Result<Merged> {
        let mut reports = Vec::new();
        for w in &mut self.workers {
            reports.push(w.next_of(kind, timeout).await?);
        }
        Ok(Merged::from_reports(&reports))
    }

    /// Sends `command` to every worker, then waits for each one's line of `kind`.
    pub async fn ask(&mut self, command: &str, kind: &str) -> anyhow::Result<Merged> {
        for w in &mut self.workers {
            w.send(command).await?;
        }
        self.wait(kind, Duration::from_secs(30)).await
    }

    /// Current counters of every worker.
    pub async fn report(&mut self) -> anyhow::Result<Merged> {
        self.ask("report", "report").await
    }

    /// Zeroes every worker's frame counters and latency histograms.
    pub async fn reset(&mut self) -> anyhow::Result<Merged> {
        self.ask("reset", "reset").await
    }

    /// Stops every worker (their sockets close with them) and returns their last counters.
    pub async fn stop(mut self) -> anyhow::Result<Merged> {
        let merged = self.ask("stop", "final").await;
        for w in &mut self.workers {
            let _ = tokio::time::timeout(Duration::from_secs(10), w.child.wait()).await;
        }
        merged
    }
}

/// Every worker's counters added up.
#[derive(Debug, Clone, Default)]
pub struct Merged {
    /// Workers merged.
    pub workers: usize,
    /// Connections asked for.
    pub target: usize,
    /// Open now.
    pub live: usize,
    /// First attempts that succeeded.
    pub connect_ok: u64,
    /// First attempts that failed.
    pub connect_failed: u64,
    /// Failure reasons.
    pub failures: BTreeMap<String, u64>,
    /// Earliest first attempt (unix µs).
    pub first_attempt: u64,
    /// Latest successful first attempt (unix µs).
    pub last_connect: u64,
    /// Connect latency of first attempts.
    pub connect_latency: Histogram,
    /// Frames since the last reset.
    pub frames: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Fewest frames on one connection.
    pub frames_min: u64,
    /// Most frames on one connection.
    pub frames_max: u64,
    /// Frames without a stamp.
    pub unstamped: u64,
    /// Publish → receive.
    pub latency: Histogram,
    /// First frame since the last reset (unix µs, 0 if none).
    pub first_frame: u64,
    /// Last frame (unix µs).
    pub last_frame: u64,
    /// Connections that ended.
    pub disconnects: u64,
    /// How they ended.
    pub ends: BTreeMap<String, u64>,
    /// Lost connections re-established.
    pub reconnects: u64,
    /// Attempts to re-establish.
    pub reconnect_attempts: u64,
    /// Loss → 101 again.
    pub reconnect_latency: Histogram,
    /// Handshake time of the successful reconnect attempts.
    pub reconnect_connect_latency: Histogram,
    /// When the last worker had every lost connection back (unix µs, 0 if none).
    pub back: u64,
}

impl Merged {
    /// Adds up worker lines.
    pub fn from_reports(reports: &[WorkerReport]) -> Merged {
        let mut m = Merged {
            workers: reports.len(),
            frames_min: u64::MAX,
            ..Merged::default()
        };
        let min_nonzero = |a: u64, b: u64| match (a, b) {
            (0, x) | (x, 0) => x,
            (x, y) => x.min(y),
        };
        for r in reports {
            m.target += r.target;
            m.live += r.live;
            m.connect_ok += r.connect_ok;
            m.connect_failed += r.connect_failed;
            for (k, v) in &r.failures {
                *m.failures.entry(k.clone()).or_default() += v;
            }
            m.first_attempt = min_nonzero(m.first_attempt, r.first_attempt_micros);
            m.last_connect = m.last_connect.max(r.last_connect_micros);
            m.connect_latency
                .merge(&Histogram::from_data(&r.connect_latency));
            m.frames += r.frames;
            m.bytes += r.bytes;
            if r.connect_ok > 0 {
                m.frames_min = m.frames_min.min(r.frames_min);
            }
            m.frames_max = m.frames_max.max(r.frames_max);
            m.unstamped += r.unstamped;
            m.latency.merge(&Histogram::from_data(&r.latency));
            m.first_frame = min_nonzero(m.first_frame, r.first_frame_micros);
            m.last_frame = m.last_frame.max(r.last_frame_micros);
            m.disconnects += r.disconnects;
            for (k, v) in &r.ends {
                *m.ends.entry(k.clone()).or_default() += v;
            }
            m.reconnects += r.reconnects;
            m.reconnect_attempts += r.reconnect_attempts;
            m.reconnect_latency
                .merge(&Histogram::from_data(&r.reconnect_latency));
            m.reconnect_connect_latency
                .merge(&Histogram::from_data(&r.reconnect_connect_latency));
            m.back = m.back.max(r.back_micros);
        }
        if m.frames_min == u64::MAX {
            m.frames_min = 0;
        }
        m
    }

    /// Successful first connects per second, from the first attempt to the last 101.
    pub fn connect_rate(&self) -> f64 {
        let span = self.last_connect.saturating_sub(self.first_attempt) as f64 / 1e6;
        if span <= 0.0 {
            0.0
        } else {
            self.connect_ok as f64 / span
        }
    }

    /// Seconds from the first connect attempt to the last 101.
    pub fn connect_span(&self) -> f64 {
        self.last_connect.saturating_sub(self.first_attempt) as f64 / 1e6
    }
}
