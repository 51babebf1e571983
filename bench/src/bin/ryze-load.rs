//! `ryze-load`: one load-generating worker of `make bench`.
//!
//! Opens `--count` WebSocket connections from one source address (`--source 127.0.0.x`, so
//! several workers together exceed the ports and open files one process may hold), counts the
//! frames each receives, and measures publish → receive latency from the `"sentMicros":` stamp
//! the benchmark puts in every event's `data` (found by a substring search, never by parsing
//! the frame). With `--reconnect`, a lost connection is re-established at once on the next
//! `--url`, as a client behind a load balancer would do when its pod dies.
//!
//! It prints one JSON line per event and answers commands on stdin (see
//! `ryze_bench::protocol`), and exits on `stop`, at the end of stdin, or after
//! `--max-seconds`, whichever comes first. Loopback only: every `--url` must name a
//! 127.0.0.0/8 address.
//!
//! ```text
//! ryze-load --url 'ws://127.0.0.1:8080/ws/m-{i}?token=T' [--url ...] --source 127.1.0.2
//!           --count 5000 [--offset 0] [--instances 1] [--concurrency 256] [--reconnect]
//!           [--connect-timeout-ms 10000] [--read-buffer 8192] [--max-seconds 300]
//! ```
//! Connection `k` (global index `g = offset + k`) uses URL `g % urls` (with `--reconnect`: the
//! first URL, then the next one after each loss) and replaces `{i}` by `g % instances`.
//!
//! With `RYZE_LOAD_TRACE=PATH` in the environment it also keeps every stamped frame's publish
//! stamp and receive time and writes them to `PATH.<pid>` at exit
//! (`scripts/trace-summary.py PATH` shows how each event spread over its clients).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use ryze_bench::histogram::Histogram;
use ryze_bench::procfs;
use ryze_bench::protocol::{now_micros, sent_micros, WorkerReport};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

const USAGE: &str = "ryze-load --url 'ws://127.0.0.1:PORT/ws/NAME-{i}?token=T' [--url ...] \
--source 127.x.y.z --count N [--offset K] [--instances M] [--concurrency C] [--reconnect] \
[--connect-timeout-ms MS] [--read-buffer BYTES] [--max-seconds S]
stdin commands: report | reset | stop; stdout: one JSON report per line";

/// Open files this process keeps for itself (stdio, runtime, epoll, ...).
const RESERVED_FDS: u64 = 64;
/// Pause between failed reconnect attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

struct Args {
    targets: Vec<Target>,
    source: IpAddr,
    count: usize,
    offset: usize,
    instances: usize,
    concurrency: usize,
    reconnect: bool,
    connect_timeout: Duration,
    read_buffer: usize,
    max_seconds: u64,
}

/// One `--url`: where to connect and the request URL template.
struct Target {
    addr: SocketAddr,
    template: String,
}

impl Target {
    fn parse(url: &str) -> anyhow::Result<Target> {
        let rest = url
            .strip_prefix("ws://")
            .with_context(|| format!("{url}: only ws:// URLs"))?;
        let host = rest.split('/').next().unwrap_or(rest);
        let addr: SocketAddr = host
            .parse()
            .with_context(|| format!("{url}: the host must be an IP:port"))?;
        match addr.ip() {
            IpAddr::V4(ip) if ip.is_loopback() => {}
            _ => bail!("{url}: loopback addresses only"),
        }
        Ok(Target {
            addr,
            template: url.to_owned(),
        })
    }

    fn url(&self, instance: usize) -> String {
        self.template.replace("{i}", &instance.to_string())
    }
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        targets: Vec::new(),
        source: IpAddr::from([127, 0, 0, 1]),
        count: 1,
        offset: 0,
        instances: 1,
        concurrency: 256,
        reconnect: false,
        connect_timeout: Duration::from_secs(10),
        read_buffer: 8 * 1024,
        max_seconds: 300,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--reconnect" {
            args.reconnect = true;
            continue;
        }
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let num = || -> anyhow::Result<u64> {
            value
                .parse()
                .with_context(|| format!("{flag} {value}: not a number"))
        };
        match flag.as_str() {
            "--url" => args.targets.push(Target::parse(&value)?),
            "--source" => {
                args.source = value
                    .parse()
                    .with_context(|| format!("--source {value}: not an IP address"))?;
                if !args.source.is_loopback() {
                    bail!("--source {value}: loopback addresses only");
                }
            }
            "--count" => args.count = num()? as usize,
            "--offset" => args.offset = num()? as usize,
            "--instances" => args.instances = (num()? as usize).max(1),
            "--concurrency" => args.concurrency = (num()? as usize).max(1),
            "--connect-timeout-ms" => args.connect_timeout = Duration::from_millis(num()?),
            "--read-buffer" => args.read_buffer = (num()? as usize).max(512),
            "--max-seconds" => args.max_seconds = num()?,
            _ => bail!("unknown flag {flag}"),
        }
    }
    if args.targets.is_empty() {
        bail!("at least one --url is needed");
    }
    if let Some((soft, _)) = procfs::open_files_limit("self") {
        if args.count as u64 + RESERVED_FDS > soft {
            bail!(
                "--count {} needs more open files than this process may hold ({soft}); \
                 spread the connections over more workers",
                args.count
            );
        }
    }
    Ok(args)
}

/// Everything the connection tasks share (one thread: cells, no locks).
#[derive(Default)]
struct State {
    live: Cell<usize>,
    /// Lost connections not yet re-established.
    down: Cell<usize>,
    connect_ok: Cell<u64>,
    connect_failed: Cell<u64>,
    /// First attempts finished (either way).
    initial_done: Cell<usize>,
    failures: RefCell<BTreeMap<String, u64>>,
    first_attempt: Cell<u64>,
    last_connect: Cell<u64>,
    connect_latency: RefCell<Histogram>,
    frames: Cell<u64>,
    bytes: Cell<u64>,
    unstamped: Cell<u64>,
    latency: RefCell<Histogram>,
    first_frame: Cell<u64>,
    last_frame: Cell<u64>,
    /// Frames per connection since the last reset; `None` for never established.
    per_conn: RefCell<Vec<Option<u64>>>,
    disconnects: Cell<u64>,
    ends: RefCell<BTreeMap<String, u64>>,
    reconnects: Cell<u64>,
    reconnect_attempts: Cell<u64>,
    reconnect_latency: RefCell<Histogram>,
    reconnect_connect_latency: RefCell<Histogram>,
    back: Cell<u64>,
    /// Set when `connected` or `back` should be printed.
    connected_pending: Cell<bool>,
    back_pending: Cell<bool>,
    events: Notify,
    /// With `RYZE_LOAD_TRACE`: every stamped frame's (publish stamp, receive time), written
    /// to `$RYZE_LOAD_TRACE.<pid>` at exit, to see how each event spread over its clients.
    trace: Option<(String, RefCell<Trace>)>,
}

/// (publish stamp, receive time) of each stamped frame, in µs.
type Trace = Vec<(u64, u64)>;

fn bump(map: &RefCell<BTreeMap<String, u64>>, key: String) {
    let mut map = map.borrow_mut();
    // Reasons are few; an unexpected error text is folded so the line stays small.
    let key = if map.len() >= 32 && !map.contains_key(&key) {
        "other".to_owned()
    } else {
        key
    };
    *map.entry(key).or_default() += 1;
}

impl State {
    fn record_frame(&self, conn: usize, text: &[u8]) {
        let now = now_micros();
        self.frames.set(self.frames.get() + 1);
        self.bytes.set(self.bytes.get() + text.len() as u64);
        if self.first_frame.get() == 0 {
            self.first_frame.set(now);
        }
        self.last_frame.set(now);
        if let Some(Some(n)) = self.per_conn.borrow_mut().get_mut(conn) {
            *n += 1;
        }
        // The stamp sits near the start of the frame; look at a prefix only, so a 200 KB media
        // frame costs no full scan.
        let head = &text[..text.len().min(512)];
        match std::str::from_utf8(head)
            .ok()
            .or_else(|| {
                let valid = std::str::from_utf8(head).err()?.valid_up_to();
                std::str::from_utf8(&head[..valid]).ok()
            })
            .and_then(sent_micros)
        {
            Some(sent) => {
                self.latency.borrow_mut().record(now.saturating_sub(sent));
                if let Some((_, trace)) = &self.trace {
                    trace.borrow_mut().push((sent, now));
                }
            }
            None => self.unstamped.set(self.unstamped.get() + 1),
        }
    }

    fn reset(&self) {
        if let Some((_, trace)) = &self.trace {
            trace.borrow_mut().clear();
        }
        self.frames.set(0);
        self.bytes.set(0);
        self.unstamped.set(0);
        self.latency.borrow_mut().clear();
        self.first_frame.set(0);
        self.last_frame.set(0);
        for n in self.per_conn.borrow_mut().iter_mut().flatten() {
            *n = 0;
        }
    }

    fn report(&self, kind: &str, args: &Args) -> WorkerReport {
        let per_conn = self.per_conn.borrow();
        let established = per_conn.iter().flatten();
        WorkerReport {
            kind: kind.to_owned(),
            source: args.source.to_string(),
            target: args.count,
            live: self.live.get(),
            connect_ok: self.connect_ok.get(),
            connect_failed: self.connect_failed.get(),
            failures: self.failures.borrow().clone(),
            first_attempt_micros: self.first_attempt.get(),
            last_connect_micros: self.last_connect.get(),
            connect_latency: self.connect_latency.borrow().data(),
            frames: self.frames.get(),
            bytes: self.bytes.get(),
            frames_min: established.clone().copied().min().unwrap_or(0),
            frames_max: established.copied().max().unwrap_or(0),
            unstamped: self.unstamped.get(),
            latency: self.latency.borrow().data(),
            first_frame_micros: self.first_frame.get(),
            last_frame_micros: self.last_frame.get(),
            disconnects: self.disconnects.get(),
            ends: self.ends.borrow().clone(),
            reconnects: self.reconnects.get(),
            reconnect_attempts: self.reconnect_attempts.get(),
            reconnect_latency: self.reconnect_latency.borrow().data(),
            reconnect_connect_latency: self.reconnect_connect_latency.borrow().data(),
            back_micros: self.back.get(),
            at_micros: now_micros(),
        }
    }
}

fn print(report: &WorkerReport) {
    match serde_json::to_string(report) {
        Ok(line) => println!("{line}"),
        Err(e) => eprintln!("ryze-load: cannot print a report: {e}"),
    }
}

type Ws = WebSocketStream<TcpStream>;

async fn connect(
    target: &Target,
    instance: usize,
    source: IpAddr,
    config: WebSocketConfig,
) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {:?}", e.kind()))?;
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|e| format!("bind: {:?}", e.kind()))?;
    let stream = socket
        .connect(target.addr)
        .await
        .map_err(|e| format!("connect: {:?}", e.kind()))?;
    let _ = stream.set_nodelay(true);
    match tokio_tungstenite::client_async_with_config(target.url(instance), stream, Some(config))
        .await
    {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(resp)) => Err(format!("http {}", resp.status().as_u16())),
        Err(e) => Err(describe(&e)),
    }
}

fn describe(e: &WsError) -> String {
    match e {
        WsError::Io(io) => format!("io {:?}", io.kind()),
        WsError::ConnectionClosed | WsError::AlreadyClosed => "closed".to_owned(),
        WsError::Protocol(p) => format!("protocol {p:?}")
            .chars()
            .take(48)
            .collect::<String>(),
        other => format!("{other}").chars().take(48).collect(),
    }
}

/// Reads until the connection ends; returns how it ended.
async fn read_all(ws: &mut Ws, conn: usize, st: &State) -> String {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => st.record_frame(conn, t.as_bytes()),
            Some(Ok(Message::Binary(b))) => st.record_frame(conn, &b),
            Some(Ok(Message::Close(frame))) => {
                return match frame {
                    Some(f) => format!("close {}", u16::from(f.code)),
                    None => "close".to_owned(),
                }
            }
            // Pings are answered by the library on the next read.
            Some(Ok(_)) => {}
            Some(Err(e)) => return describe(&e),
            None => return "eof".to_owned(),
        }
    }
}

async fn run_conn(k: usize, st: Rc<State>, args: Rc<Args>, permits: Rc<Semaphore>) {
    let g = args.offset + k;
    let instance = g % args.instances;
    // With --reconnect every connection starts on the first URL and fails over to the next.
    let mut url = if args.reconnect {
        0
    } else {
        g % args.targets.len()
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(args.read_buffer)
        .write_buffer_size(0)
        .max_message_size(None)
        .max_frame_size(None);
    // Unix µs when the connection was lost; None before the first 101.
    let mut lost_at: Option<u64> = None;
    loop {
        let attempt = {
            let _permit = permits.acquire().await;
            if st.first_attempt.get() == 0 {
                st.first_attempt.set(now_micros());
            }
            if lost_at.is_some() {
                st.reconnect_attempts.set(st.reconnect_attempts.get() + 1);
            }
            let started = Instant::now();
            let r = tokio::time::timeout(
                args.connect_timeout,
                connect(&args.targets[url], instance, args.source, config),
            )
            .await
            .unwrap_or_else(|_| Err("timeout".to_owned()));
            r.map(|ws| (ws, started.elapsed().as_micros() as u64))
        };
        let mut ws = match attempt {
            Ok((ws, took)) => {
                let now = now_micros();
                match lost_at {
                    None => {
                        st.connect_ok.set(st.connect_ok.get() + 1);
                        st.last_connect.set(now);
                        st.connect_latency.borrow_mut().record(took);
                        st.per_conn.borrow_mut()[k] = Some(0);
                        finish_initial(&st, &args);
                    }
                    Some(lost) => {
                        st.reconnects.set(st.reconnects.get() + 1);
                        st.reconnect_latency
                            .borrow_mut()
                            .record(now.saturating_sub(lost));
                        st.reconnect_connect_latency.borrow_mut().record(took);
                        st.down.set(st.down.get() - 1);
                        if st.down.get() == 0 {
                            st.back.set(now);
                            st.back_pending.set(true);
                            st.events.notify_one();
                        }
                    }
                }
                st.live.set(st.live.get() + 1);
                ws
            }
            Err(reason) => {
                bump(&st.failures, reason);
                if lost_at.is_none() {
                    st.connect_failed.set(st.connect_failed.get() + 1);
                    finish_initial(&st, &args);
                    return;
                }
                url = (url + 1) % args.targets.len();
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        let end = read_all(&mut ws, k, &st).await;
        drop(ws);
        st.live.set(st.live.get() - 1);
        st.disconnects.set(st.disconnects.get() + 1);
        bump(&st.ends, end);
        if !args.reconnect {
            return;
        }
        lost_at = Some(now_micros());
        st.down.set(st.down.get() + 1);
        url = (url + 1) % args.targets.len();
    }
}

fn finish_initial(st: &State, args: &Args) {
    st.initial_done.set(st.initial_done.get() + 1);
    if st.initial_done.get() == args.count {
        st.connected_pending.set(true);
        st.events.notify_one();
    }
}

/// Stdin lines from a plain thread (the workspace's tokio has no `io-std`); the channel
/// closes at end of input.
fn stdin_lines() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn main() -> anyhow::Result<()> {
    let args = Rc::new(parse_args()?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, run(args))?;
    // Exiting closes every socket at once; no close handshakes to wait for.
    std::process::exit(0)
}

async fn run(args: Rc<Args>) -> anyhow::Result<()> {
    let st = Rc::new(State {
        per_conn: RefCell::new(vec![None; args.count]),
        trace: std::env::var("RYZE_LOAD_TRACE")
            .ok()
            .map(|path| (path, RefCell::default())),
        ..State::default()
    });
    let permits = Rc::new(Semaphore::new(args.concurrency));
    for k in 0..args.count {
        tokio::task::spawn_local(run_conn(k, st.clone(), args.clone(), permits.clone()));
    }
    if args.count == 0 {
        st.connected_pending.set(true);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.max_seconds);
    let mut lines = stdin_lines();
    loop {
        if st.connected_pending.replace(false) {
            print(&st.report("connected", &args));
        }
        if st.back_pending.replace(false) {
            print(&st.report("back", &args));
        }
        tokio::select! {
            line = lines.recv() => match line.as_deref().map(str::trim) {
                Some("report") => print(&st.report("report", &args)),
                Some("reset") => {
                    st.reset();
                    print(&st.report("reset", &args));
                }
                Some("") => {}
                Some("stop") | None => break,
                Some(other) => eprintln!("ryze-load: unknown command {other:?}"),
            },
            _ = st.events.notified() => {}
            _ = tokio::time::sleep_until(deadline) => {
                eprintln!("ryze-load: --max-seconds reached");
                break;
            }
        }
    }
    print(&st.report("final", &args));
    if let Some((path, trace)) = &st.trace {
        let mut out = String::new();
        for (sent, received) in trace.borrow().iter() {
            out.push_str(&format!("{sent} {received}\n"));
        }
        let path = format!("{path}.{}", std::process::id());
        if let Err(e) = std::fs::write(&path, out) {
            eprintln!("ryze-load: writing {path}: {e}");
        }
    }
    Ok(())
}
