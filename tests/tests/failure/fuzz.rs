//! Item 7, the HTTP half: a handshake fuzzer. At least 10,000 malformed or random HTTP
//! requests over raw TCP (bad and huge headers, invalid UTF-8 and percent-encoding in paths,
//! duplicate `token` headers, CRLF injection attempts, random methods and versions, random
//! bytes, mutations of a valid upgrade) at a running gateway. The process stays up, answers
//! no 5xx except the documented ones, still serves a real client afterwards, and its RSS
//! comes back near the baseline.
//!
//! Deterministic: request `i` is generated from `FUZZ_SEED ^ i` (the seed is printed;
//! `FUZZ_SEED` and `FUZZ_REQUESTS` override the defaults).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::common::{self, envelope, System, WAIT};
use crate::{mib, status_of, wait_rss_below};

const DEFAULT_REQUESTS: usize = 10_000;
const DEFAULT_SEED: u64 = 0x5EED_2026;
/// Requests in flight at once.
const WORKERS: usize = 24;
/// Requests sent before the RSS baseline is taken (allocator pools, caches, metrics series).
const WARM_UP: usize = 500;
/// How far above the baseline RSS may stay.
const RSS_SLACK: u64 = 50 * 1024 * 1024;
/// How long one request may take to be answered or closed.
const ANSWER: Duration = Duration::from_secs(5);

/// The documented 5xx answers (SPEC §3–§5, D22, D26).
fn documented_5xx(status: u16, body: &str) -> bool {
    let messages: &[&str] = match status {
        500 => &[
            "Failed to get instance",
            "Failed to get websocket configuration",
            "Internal server error",
        ],
        503 => &["Server at capacity", "Event stream unavailable"],
        _ => &[],
    };
    messages.iter().any(|m| body == envelope(m))
}

/// xorshift64*: small, deterministic, good enough to pick cases.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, so consecutive seeds give unrelated streams.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// Printable ASCII without space.
    fn word(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| b'!' + (self.next() % 94) as u8).collect()
    }
}

/// What the fuzzer knows of the system under test.
struct Target {
    addr: SocketAddr,
    account: String,
    instance: String,
}

/// Request `i`: its bytes, and whether it may legitimately get no answer within [`ANSWER`]
/// (an incomplete head or body, which the server waits for).
fn request(seed: u64, t: &Target) -> (Vec<u8>, bool) {
    let mut r = Rng::new(seed);
    match r.below(10) {
        0 => {
            // Random bytes, ended like a head.
            let n = r.below(600);
            let mut b = r.bytes(n);
            b.extend_from_slice(b"\r\n\r\n");
            (b, true)
        }
        1 | 2 => {
            // A valid upgrade with a few bytes flipped, inserted or removed.
            let mut b = valid_upgrade(t, &mut r);
            for _ in 0..1 + r.below(4) {
                let at = r.below(b.len());
                match r.below(3) {
                    0 => b[at] = r.next() as u8,
                    1 => b.insert(at, r.next() as u8),
                    _ => {
                        b.remove(at);
                    }
                }
            }
            (b, true)
        }
        _ => structured(&mut r, t),
    }
}

fn valid_upgrade(t: &Target, r: &mut Rng) -> Vec<u8> {
    let token = if r.chance(50) {
        &t.account
    } else {
        &t.instance
    };
    format!(
        "GET /ws/sales HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         token: {token}\r\n\r\n",
        t.addr
    )
    .into_bytes()
}

/// An instance name segment: plain, percent-encoded, invalid, overlong, or raw bytes.
fn name(r: &mut Rng) -> Vec<u8> {
    match r.below(12) {
        0 => b"sales".to_vec(),
        1 => b"Sales".to_vec(),
        2 => {
            let n = r.below(40);
            r.word(n)
        }
        // Raw non-ASCII, often invalid UTF-8.
        3 => {
            let n = 1 + r.below(20);
            (0..n).map(|_| 0x80 | (r.next() as u8)).collect()
        }
        4 => r
            .pick(&[
                "%",
                "%G1",
                "%e9",
                "%C3",
                "%FF%FE",
                "%C3%28",
                "%ED%A0%80",
                "%F4%90%80%80",
                "%00",
                "%2F",
                "%2e%2e",
                "sa%lles",
                "%%",
                "%u0041",
            ])
            .as_bytes()
            .to_vec(),
        5 => {
            let n = 129 + r.below(8000);
            vec![b'n'; n]
        }
        6 => {
            // Percent-encoded random bytes.
            let n = r.below(30);
            r.bytes(n)
                .iter()
                .flat_map(|b| format!("%{b:02X}").into_bytes())
                .collect()
        }
        7 => b"sales?token=%ZZ&token=".to_vec(),
        8 => b"sales/../sales".to_vec(),
        9 => b"sales#frag".to_vec(),
        10 => b"".to_vec(),
        _ => {
            let n = r.below(10);
            let mut v = b"sales".to_vec();
            v.extend(r.word(n));
            v
        }
    }
}

fn structured(r: &mut Rng, t: &Target) -> (Vec<u8>, bool) {
    let mut may_hang = false;
    // Most requests are well-formed HTTP with hostile content, so they reach the gateway's
    // own checks; the rest also break the syntax.
    let broken = r.chance(35);
    let methods: &[&[u8]] = &[
        &b"GET"[..],
        b"GET",
        b"GET",
        b"GET",
        b"POST",
        b"POST",
        b"PUT",
        b"DELETE",
        b"HEAD",
        b"OPTIONS",
        b"PATCH",
        b"TRACE",
        b"CONNECT",
        b"get",
        b"GETT",
        b"G\x00T",
        b"\xc3\xa9GET",
    ];
    let usable = if broken {
        methods.len()
    } else {
        methods.len() - 2
    };
    let mut method = methods[r.below(usable)].to_vec();
    if broken && r.chance(8) {
        method = vec![b'M'; 1 + r.below(3000)];
    }
    let mut target = match r.below(9) {
        0..=3 => [b"/ws/".to_vec(), name(r)].concat(),
        4 => [b"/api/events/websocket/".to_vec(), name(r)].concat(),
        5 => [b"/api/events/getWebsocket/".to_vec(), name(r)].concat(),
        6 => r
            .pick(&[
                "/health",
                "/",
                "*",
                "",
                "/ws",
                "/ws/",
                "/ws//sales",
                "/ws/sales/",
                "/ws/sales/x",
                "http://127.0.0.1/ws/sales",
                "//ws/sales",
                "/%77s/sales",
                "/WS/sales",
                "/v1/events",
                "/console",
                "/metrics",
            ])
            .as_bytes()
            .to_vec(),
        7 => {
            let n = r.below(200);
            [b"/".to_vec(), r.bytes(n)].concat()
        }
        _ => {
            let n = r.below(60);
            [b"/ws/sales?".to_vec(), r.word(n)].concat()
        }
    };
    if r.chance(15) {
        let q: &&str = r.pick(&[
            "?token=",
            "?token=%",
            "?token=%FF%FE",
            "?token=a+b",
            "?token=x&token=y",
            "?TOKEN=x",
            "?token",
            "?=&&=",
        ]);
        target.extend_from_slice(q.as_bytes());
        if r.chance(50) {
            target.extend_from_slice(t.account.as_bytes());
        }
    }
    let versions = [
        "HTTP/1.1",
        "HTTP/1.1",
        "HTTP/1.1",
        "HTTP/1.1",
        "HTTP/1.1",
        "HTTP/1.0",
        "HTTP/2.0",
        "HTTP/0.9",
        "HTTP/1.1x",
        "http/1.1",
        "HTTP/1.2",
        "",
    ];
    let version = if broken {
        *r.pick(&versions)
    } else {
        versions[r.below(6)]
    };
    let mut head = Vec::new();
    head.extend_from_slice(&method);
    head.push(b' ');
    head.extend_from_slice(&target);
    if !version.is_empty() {
        head.push(b' ');
        head.extend_from_slice(version.as_bytes());
    }
    head.extend_from_slice(b"\r\n");

    let mut headers: Vec<Vec<u8>> = Vec::new();
    let mut header = |h: &[u8]| headers.push(h.to_vec());
    match r.below(10) {
        0 => {}
        1 => header(b"Host: "),
        2 => {
            header(format!("Host: {}", t.addr).as_bytes());
            header(b"Host: evil.example");
        }
        _ => header(format!("Host: {}", t.addr).as_bytes()),
    }
    if r.chance(60) {
        header(b"Upgrade: websocket");
        header(b"Connection: Upgrade");
        header(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==");
        header(b"Sec-WebSocket-Version: 13");
    }
    let tokens = [
        t.account.clone(),
        t.instance.clone(),
        "bogus".to_owned(),
        String::new(),
        "   ".to_owned(),
        format!("{}\r\nX-Injected: 1", t.account),
        format!("bogus\r\ntoken: {}", t.account),
        "x".repeat(5000),
    ];
    for _ in 0..r.below(4) {
        let which = r.below(tokens.len() + 6);
        match which {
            n if n < tokens.len() => header(format!("token: {}", tokens[n]).as_bytes()),
            n if n == tokens.len() => {
                header(format!("Authorization: Bearer {}", t.account).as_bytes())
            }
            n if n == tokens.len() + 1 => header(b"Authorization: Basic dXNlcjpwYXNz"),
            n if n == tokens.len() + 2 => header(b"Authorization: Bearer"),
            n if n == tokens.len() + 3 => header(b"token: \xff\xfe\x80tok"),
            n if n == tokens.len() + 4 => header(b"Authorization: bEaReR \xc3\xa9"),
            _ => header(format!("TOKEN: {}", t.instance).as_bytes()),
        }
    }
    for _ in 0..r.below(5) {
        match r.below(if broken { 16 } else { 10 }) {
            0 => header(b"Origin: https://evil.example"),
            1 => header(b"Origin: null"),
            2 => header(format!("Origin: http://{}", t.addr).as_bytes()),
            3 => header(b"Origin: \xff\xfe"),
            4 => header(b"Sec-WebSocket-Version: 8"),
            5 => header(b"Sec-WebSocket-Version: 13, 8"),
            6 => header(b"Sec-WebSocket-Key: c2hvcnQ="),
            7 => header(b"Sec-WebSocket-Key: !!!!"),
            8 => header(b"Connection: keep-alive, Upgrade, close"),
            9 => header(b"Upgrade: h2c"),
            10 => header(b"X-Bad\x01Name: 1"),
            11 => header(b"no colon here"),
            12 => header(b" folded continuation"),
            13 => header(b": empty name"),
            14 => header(b"X-Lone-CR: a\rb"),
            _ => header(b"X-Nul: a\x00b"),
        }
    }
    if r.chance(4) {
        // One header beyond the 32 KiB head cap.
        header(format!("X-Huge: {}", "h".repeat(40 * 1024)).as_bytes());
    }
    if r.chance(3) {
        for i in 0..150 {
            header(format!("X-Many-{i}: {i}").as_bytes());
        }
    }
    if r.chance(2) {
        let len = 1 + r.below(9000);
        let name = r.word(len);
        let mut h = name;
        h.extend_from_slice(b": v");
        header(&h);
    }
    let body: Vec<u8> = if method == b"POST" || r.chance(5) {
        match r.below(6) {
            0 => br#"{"enabled":true}"#.to_vec(),
            1 => br#"{"enabled":true,"events":["message.status","nope"]}"#.to_vec(),
            2 => br#"{"enabled":"#.to_vec(),
            3 => {
                let n = r.below(300);
                r.bytes(n)
            }
            4 => br#"{"enabled":true,"enabled":false}"#.to_vec(),
            _ => Vec::new(),
        }
    } else {
        Vec::new()
    };
    match r.below(12) {
        0 => {
            // Declares more than it sends: the server waits for the rest.
            header(format!("Content-Length: {}", body.len() + 10).as_bytes());
            may_hang = true;
        }
        1 => header(b"Content-Length: -1"),
        2 => header(b"Content-Length: 99999999999999999999999"),
        3 => {
            header(format!("Content-Length: {}", body.len()).as_bytes());
            header(format!("Content-Length: {}", body.len() + 1).as_bytes());
        }
        4 => {
            header(b"Transfer-Encoding: chunked");
            may_hang = true;
        }
        5 => {
            header(b"Transfer-Encoding: chunked");
            header(format!("Content-Length: {}", body.len()).as_bytes());
            may_hang = true;
        }
        _ if !body.is_empty() => header(format!("Content-Length: {}", body.len()).as_bytes()),
        _ => {}
    }
    // Shuffle the header order a little.
    if headers.len() > 1 && r.chance(30) {
        let a = r.below(headers.len());
        let b = r.below(headers.len());
        headers.swap(a, b);
    }
    for h in headers {
        head.extend_from_slice(&h);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head.extend_from_slice(&body);
    (head, may_hang)
}

/// How the server dealt with one request.
#[derive(Debug)]
enum Outcome {
    Status(u16, String),
    /// The connection ended without a response.
    Closed,
    /// Neither a response nor a close within [`ANSWER`].
    Silent,
}

async fn send(addr: SocketAddr, bytes: &[u8]) -> Outcome {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return Outcome::Closed;
    };
    // The server may answer (431, 400) and close before it read everything: not an error.
    let _ = stream.write_all(bytes).await;
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let status: u16 = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                if status == 101 {
                    return Outcome::Status(101, String::new());
                }
                let len = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                while buf.len() < end + 4 + len {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let body_end = buf.len().min(end + 4 + len);
                let body = String::from_utf8_lossy(&buf[end + 4..body_end]).into_owned();
                return Outcome::Status(status, body);
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Outcome::Closed,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(ANSWER, read)
        .await
        .unwrap_or(Outcome::Silent)
}

/// `400 Invalid WebSocket handshake`, or `400` for a body that is not the error envelope
/// (hyper's own answers to unparsable requests have none).
fn label(status: u16, body: &str) -> String {
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned));
    match message {
        Some(m) if m.starts_with("WebSocket is not enabled") => format!("{status} not enabled"),
        Some(m) => format!("{status} {m}"),
        None => format!("{status}"),
    }
}

fn escape(bytes: &[u8]) -> String {
    let shown: Vec<u8> = bytes.iter().copied().take(400).collect();
    format!("{:?}", String::from_utf8_lossy(&shown))
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_malformed_requests_cause_no_crash_no_undocumented_5xx_and_no_leak() {
    let requests: usize = std::env::var("FUZZ_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_REQUESTS)
        .max(WARM_UP + 1);
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let sys = System::start(
        "sales",
        json!({"enabled": true}),
        1,
        &[
            ("RATE_LIMIT_PER_MINUTE", "100000000".into()),
            ("HTTP_HEADER_TIMEOUT", "2s".into()),
        ],
    )
    .await;
    let gw = sys.gw();
    let target = Arc::new(Target {
        addr: gw.addr(),
        account: sys.env.account_token.clone(),
        instance: sys.inst.token.clone(),
    });

    let statuses: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let run = |range: std::ops::Range<usize>| {
        let next = Arc::new(AtomicUsize::new(range.start));
        let end = range.end;
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                let (next, target) = (next.clone(), target.clone());
                let (statuses, failures) = (statuses.clone(), failures.clone());
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= end {
                            return;
                        }
                        let (bytes, may_hang) = request(seed ^ i as u64, &target);
                        let outcome = send(target.addr, &bytes).await;
                        let (key, bad) = match &outcome {
                            Outcome::Status(s, body) if *s >= 500 => {
                                (format!("{s}"), !documented_5xx(*s, body))
                            }
                            Outcome::Status(0, _) => ("unparsable status".to_owned(), true),
                            Outcome::Status(s, body) => (label(*s, body), false),
                            Outcome::Closed => ("closed without response".to_owned(), false),
                            Outcome::Silent => ("no answer in time".to_owned(), !may_hang),
                        };
                        if std::env::var_os("FUZZ_SAMPLES").is_some()
                            && !statuses.lock().unwrap().contains_key(&key)
                        {
                            println!("fuzz sample for {key}: {outcome:?} {}", escape(&bytes));
                        }
                        *statuses.lock().unwrap().entry(key).or_default() += 1;
                        if bad {
                            failures.lock().unwrap().push(format!(
                                "request {i} (seed {}): {outcome:?} for {}",
                                seed ^ i as u64,
                                escape(&bytes)
                            ));
                        }
                    }
                })
            })
            .collect();
        async move {
            for w in workers {
                w.await.unwrap();
            }
        }
    };

    let started = Instant::now();
    run(0..WARM_UP).await;
    let baseline = gw.rss_bytes();
    run(WARM_UP..requests).await;
    let took = started.elapsed();
    let peak = gw.rss_bytes();
    println!(
        "fuzz: {requests} requests (seed {seed}) in {took:?}; outcomes {:?}; RSS baseline \
         {:.1} MiB, after {:.1} MiB",
        statuses.lock().unwrap(),
        mib(baseline),
        mib(peak)
    );

    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} requests got an undocumented answer; first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(ryze_tests::pid_is_alive(gw.pid()), "the gateway died");
    assert_eq!(status_of(&gw.admin_url("/livez")).await, 200);
    assert!(
        !gw.logs().contains("panicked"),
        "the gateway panicked:\n{}",
        gw.logs()
    );
    // Memory comes back once the fuzzer's connections are gone.
    let rss = wait_rss_below(gw, baseline + RSS_SLACK, WAIT).await;
    println!("fuzz: RSS settled at {:.1} MiB", mib(rss));

    // And it still does its job. (The only valid config bodies the fuzzer sends enable the
    // instance, so its config is what it was.)
    let mut c = common::connect(gw, "sales", &sys.inst.token).await;
    let data = r#"{"after":"fuzzing"}"#;
    sys.deliver_one(&mut c, "call.update", data).await;
}
