//! Tests of the harness itself: the private servers start, are isolated, restart in place, and
//! leave no process behind however the test binary ends; services and clients behave as the
//! other integration tests assume.
//!
//! Some tests re-run this very binary with one `#[ignore]`d helper test selected and
//! `RYZE_HARNESS_HELPER` saying what it should do (start servers and panic, be killed, act as a
//! fake service). Without that variable the helpers return at once, so `--ignored` runs stay
//! green.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use ryze_tests::{
    describe, eventually, free_port, pg, pid_is_alive, redis, run_program, Listeners, PgServer,
    RedisServer, Service, WsClient,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const HELPER_ENV: &str = "RYZE_HARNESS_HELPER";
/// Generous: the child binary starts its own postgres (initdb) before printing.
const CHILD_TIMEOUT: Duration = Duration::from_secs(120);
const GONE_TIMEOUT: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(10);

fn this_exe() -> PathBuf {
    std::env::current_exe().expect("locating the test executable")
}

fn helper() -> Option<String> {
    std::env::var(HELPER_ENV).ok()
}

/// Waits until `/proc/<pid>` of `who` is gone (reaped); panics at `GONE_TIMEOUT`.
async fn wait_absent(who: &str, pid: u32) {
    let path = format!("/proc/{pid}");
    let what = format!("{who} (pid {pid}) reaped");
    eventually(&what, GONE_TIMEOUT, || async {
        if std::path::Path::new(&path).exists() {
            Err(format!("{path} still exists"))
        } else {
            Ok(())
        }
    })
    .await;
}

/// Waits until `pid` of `who` is dead: gone or a zombie; panics at `GONE_TIMEOUT`. Used for
/// processes whose parent died, where reaping is up to PID 1 and outside our control; a zombie
/// holds no port or memory.
async fn wait_dead(who: &str, pid: u32) {
    let what = format!("{who} (pid {pid}) dead");
    eventually(&what, GONE_TIMEOUT, || async {
        if pid_is_alive(pid) {
            Err("still alive".to_owned())
        } else {
            Ok(())
        }
    })
    .await;
}

/// Parses `HARNESS_PIDS name=pid name=pid ...` (libtest may print `test name ... ` before it).
fn parse_pids(line: &str) -> Vec<(String, u32)> {
    let (_, pids) = line
        .split_once("HARNESS_PIDS ")
        .expect("a HARNESS_PIDS line");
    pids.split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("name=pid");
            (k.to_owned(), v.parse().expect("a numeric pid"))
        })
        .collect()
}

/// Re-runs this binary with only `test` selected and the helper variable set.
fn child_command(test: &str, mode: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(this_exe());
    cmd.args([
        "--exact",
        test,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(HELPER_ENV, mode)
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .kill_on_drop(true);
    cmd
}

/// Starts every kind of server and a fake service, and prints their pids.
async fn start_everything() -> (RedisServer, PgServer, Service) {
    let own_redis = RedisServer::start().await.expect("private redis");
    let own_pg = PgServer::start_private().await.expect("private postgres");
    let shared_redis = redis().await;
    let shared_pg = pg().await;
    let fake = spawn_fake("serve").await;
    fake.wait_ready(WAIT).await.expect("fake service ready");
    println!(
        "\nHARNESS_PIDS redis={} pg={} shared_redis={} shared_pg={} service={}",
        own_redis.pid().expect("redis pid"),
        own_pg.pid().expect("postgres pid"),
        shared_redis.pid().expect("shared redis pid"),
        shared_pg.pid().expect("shared postgres pid"),
        fake.pid(),
    );
    (own_redis, own_pg, fake)
}

/// Checks each server pid is reaped and the service is dead.
async fn assert_all_gone(pids: &[(String, u32)]) {
    assert_eq!(pids.len(), 5, "{pids:?}");
    for (name, pid) in pids {
        if name == "service" {
            // Its parent (the killed test binary) can't reap it; PID 1 does, eventually.
            wait_dead(name, *pid).await;
        } else {
            // Servers are reaped by their supervisor, so they must vanish entirely.
            wait_absent(name, *pid).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_starts_and_fresh_databases_are_distinct_and_usable() {
    let server = pg().await;
    let a = server.fresh_database().await.unwrap();
    let b = server.fresh_database().await.unwrap();
    assert_ne!(a.name, b.name);
    assert_eq!(
        a.url,
        format!("postgres://postgres@127.0.0.1:{}/{}", server.port(), a.name)
    );

    let ca = a.client().await.unwrap();
    ca.batch_execute("CREATE TABLE only_in_a (id int); INSERT INTO only_in_a VALUES (7)")
        .await
        .unwrap();
    let row = ca.query_one("SELECT id FROM only_in_a", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 7);

    let cb = b.client().await.unwrap();
    let found = cb
        .query_opt("SELECT 1 FROM pg_tables WHERE tablename = 'only_in_a'", &[])
        .await
        .unwrap();
    assert!(
        found.is_none(),
        "database {} sees a table of {}",
        b.name,
        a.name
    );

    let max: String = cb
        .query_one("SHOW max_connections", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(max, "400");
}

#[tokio::test(flavor = "multi_thread")]
async fn private_postgres_stops_and_starts_on_the_same_port_keeping_its_data() {
    let server = PgServer::start_private().await.unwrap();
    let port = server.port();
    let db = server.fresh_database().await.unwrap();
    db.client()
        .await
        .unwrap()
        .batch_execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before')")
        .await
        .unwrap();

    server.stop().await.unwrap();
    assert!(!server.is_running());
    assert!(db.client().await.is_err(), "connected to a stopped server");

    server.start().await.unwrap();
    assert!(server.is_running());
    assert_eq!(server.port(), port);
    let v: String = db
        .client()
        .await
        .unwrap()
        .query_one("SELECT v FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "before");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_answers_ping_and_restart_keeps_the_port() {
    let server = RedisServer::start().await.unwrap();
    let port = server.port();
    assert_eq!(server.url(), format!("redis://127.0.0.1:{port}"));
    assert_eq!(server.cli(&["PING"]).await.unwrap(), "PONG");
    server.cli(&["SET", "k", "v"]).await.unwrap();
    let first_pid = server.pid().unwrap();

    server.stop().await.unwrap();
    assert!(!server.is_running());
    assert!(
        server.cli(&["PING"]).await.is_err(),
        "a stopped server answered"
    );

    server.restart().await.unwrap();
    assert!(server.is_running());
    assert_eq!(server.port(), port);
    assert_ne!(server.pid().unwrap(), first_pid);
    assert_eq!(server.cli(&["PING"]).await.unwrap(), "PONG");
    // No persistence: a restart is an empty server, like a failover to a fresh replica.
    assert_eq!(server.cli(&["EXISTS", "k"]).await.unwrap(), "0");

    // restart() also works on a running server.
    server.restart().await.unwrap();
    assert_eq!(server.cli(&["PING"]).await.unwrap(), "PONG");
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_servers_refuse_to_be_stopped() {
    let r = redis().await;
    assert_eq!(r.cli(&["PING"]).await.unwrap(), "PONG");
    assert!(r.stop().await.is_err());
    assert!(r.restart().await.is_err());
    let p = pg().await;
    assert!(p.stop().await.is_err());
    assert!(p.start().await.is_err());
    assert!(r.is_running() && p.is_running());
}

#[tokio::test(flavor = "multi_thread")]
async fn unique_prefixes_and_free_ports_do_not_repeat() {
    let a = ryze_tests::unique_prefix();
    let b = ryze_tests::unique_prefix();
    assert_ne!(a, b);
    let ports: std::collections::HashSet<u16> = (0..50).map(|_| free_port()).collect();
    assert_eq!(ports.len(), 50);
    // None from the ephemeral range, where outgoing connections get their source ports.
    let ephemeral: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        ports.iter().all(|p| (1_024..ephemeral).contains(p)),
        "{ports:?} (ephemeral from {ephemeral})"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_a_private_server_stops_it_and_removes_its_dir() {
    let server = RedisServer::start().await.unwrap();
    let pid = server.pid().unwrap();
    let dir = server.dir().to_path_buf();
    assert!(dir.exists());
    drop(server);
    wait_absent("redis-server after its drop", pid).await;
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn panicking_test_leaves_no_process_behind() {
    let child = child_command("helper_starts_servers_then_panics", "panic")
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(CHILD_TIMEOUT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the helper should have failed\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("helper panics on purpose") || stderr.contains("helper panics on purpose"),
        "the helper failed for another reason:\n{stdout}\n{stderr}"
    );
    let line = stdout
        .lines()
        .find(|l| l.contains("HARNESS_PIDS "))
        .unwrap_or_else(|| panic!("no pids printed:\n{stdout}\n{stderr}"));
    assert_all_gone(&parse_pids(line)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_test_binary_leaves_no_process_behind() {
    let mut child = child_command("helper_starts_servers_then_waits_to_be_killed", "killed")
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(CHILD_TIMEOUT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("HARNESS_PIDS ") {
                return line;
            }
        }
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .await
            .unwrap();
        panic!("helper ended without printing pids:\n{err}");
    })
    .await
    .unwrap();
    let pids = parse_pids(&line);

    // SIGKILL: no destructor, no unwinding; only the kernel closing pipes and pdeathsig remain.
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert_eq!(describe(status), "signal 9");
    assert_all_gone(&pids).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn service_waits_for_readiness_captures_logs_and_exits_cleanly_on_sigterm() {
    let mut fake = spawn_fake("serve").await;
    // Spawned on port 0; the addresses are the ones its start line named (readiness is
    // answered there).
    assert!(fake
        .logs()
        .contains(&format!("listen_addr={}", fake.addr())));
    fake.wait_ready(WAIT).await.unwrap();
    assert_ne!(fake.addr(), fake.admin_addr());
    assert_ne!(fake.addr().port(), 0);
    fake.wait_for_log("fake service listening", WAIT)
        .await
        .unwrap();
    fake.wait_for_log("fake stderr line", WAIT).await.unwrap();
    assert!(fake.stderr().contains("fake stderr line"));
    assert!(!fake.stderr().contains("fake service listening"));
    assert!(fake.rss_bytes() > 0);
    // The environment is cleared but for PATH/HOME and the defaults.
    fake.wait_for_log(
        "env RUST_LOG=info LOG_FORMAT=text LISTEN_ADDR=127.0.0.1:0 ADMIN_LISTEN_ADDR=127.0.0.1:0",
        WAIT,
    )
    .await
    .unwrap();
    assert!(fake.logs().contains("env leaked=false"), "{}", fake.logs());

    let resp = ryze_tests::http()
        .get(fake.admin_url("/unready"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    fake.wait_not_ready(WAIT).await.unwrap();
    // Unready means the 503 itself, not a refused connection or a dead process.
    let readyz = ryze_tests::http()
        .get(fake.admin_url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(readyz.status(), 503);
    assert!(fake.exited().is_none());

    fake.sigterm();
    let status = fake.wait_exit(WAIT).await.unwrap();
    assert!(status.success(), "{}", describe(status));
    assert!(fake.logs().contains("fake service got SIGTERM"));
    assert_eq!(fake.rss_bytes(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn service_that_exits_fails_wait_ready_with_its_output_and_exit_status() {
    let mut fake = spawn_fake("exit64").await;
    let err = fake.wait_ready(Duration::from_secs(60)).await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("exited"), "{msg}");
    assert!(
        msg.contains("invalid configuration: FOO is required"),
        "{msg}"
    );
    let status = fake.wait_exit(WAIT).await.unwrap();
    assert_eq!(status.code(), Some(64));
    assert!(fake
        .stderr()
        .contains("invalid configuration: FOO is required"));

    // Without listeners, as config-validation tests run the real binaries.
    let mut raw = Service::spawn_program(
        &this_exe(),
        Listeners::None,
        &fake_args(),
        &fake_env("exit64"),
    )
    .await
    .unwrap();
    assert_eq!(raw.wait_exit(WAIT).await.unwrap().code(), Some(64));
    assert!(raw.stderr().contains("FOO is required"));

    let out = run_program(&this_exe(), &fake_args(), &fake_env("exit64"))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("FOO is required"));
}

#[tokio::test(flavor = "multi_thread")]
async fn service_kill9_ends_the_process_with_signal_9() {
    let mut fake = spawn_fake("serve").await;
    fake.wait_ready(WAIT).await.unwrap();
    fake.kill9();
    let status = fake.wait_exit(WAIT).await.unwrap();
    assert_eq!(describe(status), "signal 9");
    wait_absent("the killed fake service", fake.pid()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ws_client_reads_big_frames_skips_pings_and_reports_close_codes_and_refusals() {
    let addr = spawn_ws_server().await;
    let url = format!("ws://{addr}/ws/some-instance");

    let refused = WsClient::connect(&url, &[]).await.err().unwrap();
    assert_eq!(refused.status(), Some(401));
    assert_eq!(
        refused.json().unwrap(),
        serde_json::json!({"success": false, "error": {"message": "Invalid token"}})
    );
    assert_eq!(refused.header("content-type"), Some("application/json"));

    let mut ws = WsClient::connect(&url, &[("token", "good")]).await.unwrap();
    assert_eq!(ws.next_text(WAIT).await.unwrap().len(), 200_000);
    assert_eq!(ws.next_text(WAIT).await.unwrap(), "hello");
    ws.send_text("echo me").await.unwrap();
    assert_eq!(ws.next_text(WAIT).await.unwrap(), "echo me");
    assert_eq!(
        ws.expect_close(WAIT).await.unwrap(),
        Some((1008, "instance deleted".to_owned()))
    );

    let mut ws = WsClient::connect(&url, &[("token", "good")]).await.unwrap();
    assert_eq!(ws.next_text(WAIT).await.unwrap().len(), 200_000);
    ws.send_binary(&[1, 2, 3]).await.unwrap();
    let mut echoed = None;
    while echoed.is_none() {
        match ws.next_message(WAIT).await.unwrap() {
            Message::Binary(b) => echoed = Some(b.to_vec()),
            Message::Text(t) => assert_eq!(t.as_str(), "hello"),
            _ => {}
        }
    }
    assert_eq!(echoed.unwrap(), vec![1, 2, 3]);
    ws.close().await.unwrap();

    let nobody = format!("ws://127.0.0.1:{}/ws/x", free_port());
    let err = WsClient::connect(&nobody, &[]).await.err().unwrap();
    assert_eq!(err.status(), None);
}

/// Refuses upgrades without `token: good` the way the gateway does (401 + JSON body).
// The callback's error type is fixed by tungstenite's `Callback` trait.
#[allow(clippy::result_large_err)]
fn refuse_without_token(req: &Request, resp: Response) -> Result<Response, ErrorResponse> {
    if req.headers().get("token").is_some_and(|t| t == "good") {
        return Ok(resp);
    }
    let mut refusal = ErrorResponse::new(Some(
        r#"{"success":false,"error":{"message":"Invalid token"}}"#.to_owned(),
    ));
    *refusal.status_mut() = http::StatusCode::UNAUTHORIZED;
    refusal.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    Err(refusal)
}

/// An in-process WebSocket server: a 200 KB frame, a ping, `hello`, an echo of the first data
/// frame it receives, then close 1008 `instance deleted`.
async fn spawn_ws_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_ws(stream));
        }
    });
    addr
}

async fn serve_ws(stream: tokio::net::TcpStream) -> anyhow::Result<()> {
    let mut ws = tokio_tungstenite::accept_hdr_async(stream, refuse_without_token).await?;
    ws.send(Message::text("x".repeat(200_000))).await?;
    ws.send(Message::Ping(vec![1u8].into())).await?;
    ws.send(Message::text("hello")).await?;
    // The client's pong (to our ping) may come first.
    while let Some(msg) = ws.next().await {
        if let echo @ (Message::Text(_) | Message::Binary(_)) = msg? {
            ws.send(echo).await?;
            break;
        }
    }
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Policy,
        reason: "instance deleted".into(),
    })))
    .await?;
    while let Some(Ok(_)) = ws.next().await {}
    Ok(())
}

// ---- helpers run in a child process (see the module docs) ----

fn fake_args() -> Vec<&'static str> {
    vec!["--exact", "helper_fake_service", "--ignored", "--nocapture"]
}

fn fake_env(mode: &str) -> Vec<(&'static str, String)> {
    vec![(HELPER_ENV, mode.to_owned())]
}

/// This binary, acting as a gateway-like service (public + admin listener).
async fn spawn_fake(mode: &str) -> Service {
    Service::spawn_program(
        &this_exe(),
        Listeners::PublicAndAdmin,
        &fake_args(),
        &fake_env(mode),
    )
    .await
    .expect("spawning the fake service")
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "helper: run by panicking_test_leaves_no_process_behind"]
async fn helper_starts_servers_then_panics() {
    if helper().as_deref() != Some("panic") {
        return;
    }
    let _servers = start_everything().await;
    panic!("helper panics on purpose");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "helper: run by killed_test_binary_leaves_no_process_behind"]
async fn helper_starts_servers_then_waits_to_be_killed() {
    if helper().as_deref() != Some("killed") {
        return;
    }
    let _servers = start_everything().await;
    // Upper bound only: the parent kills us long before.
    tokio::time::sleep(CHILD_TIMEOUT).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "helper: a stand-in service for the Service tests"]
async fn helper_fake_service() {
    match helper().as_deref() {
        Some("exit64") => {
            eprintln!("invalid configuration: FOO is required");
            std::process::exit(64);
        }
        Some("serve") => {}
        _ => return,
    }
    let public = TcpListener::bind(std::env::var("LISTEN_ADDR").unwrap())
        .await
        .unwrap();
    let admin = TcpListener::bind(std::env::var("ADMIN_LISTEN_ADDR").unwrap())
        .await
        .unwrap();
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    // In the product's start-line format, which the harness reads the addresses from.
    println!(
        "fake service listening listen_addr={} admin_listen_addr={}",
        public.local_addr().unwrap(),
        admin.local_addr().unwrap()
    );
    println!(
        "env RUST_LOG={} LOG_FORMAT={} LISTEN_ADDR={} ADMIN_LISTEN_ADDR={}",
        std::env::var("RUST_LOG").unwrap_or_default(),
        std::env::var("LOG_FORMAT").unwrap_or_default(),
        std::env::var("LISTEN_ADDR").unwrap_or_default(),
        std::env::var("ADMIN_LISTEN_ADDR").unwrap_or_default()
    );
    let allowed = [
        "PATH",
        "HOME",
        "LLVM_PROFILE_FILE",
        "RUST_LOG",
        "LOG_FORMAT",
        "LISTEN_ADDR",
        "ADMIN_LISTEN_ADDR",
        HELPER_ENV,
    ];
    let leaked = std::env::vars().any(|(k, _)| !allowed.contains(&k.as_str()));
    println!("env leaked={leaked}");
    eprintln!("fake stderr line");

    let ready = Arc::new(AtomicBool::new(true));
    tokio::spawn(async move {
        loop {
            let _ = public.accept().await;
        }
    });
    let serve = async {
        loop {
            let (mut stream, _) = admin.accept().await.unwrap();
            let ready = Arc::clone(&ready);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf);
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let status = match path.as_str() {
                    "/readyz" if ready.load(Ordering::SeqCst) => "200 OK",
                    "/readyz" => "503 Service Unavailable",
                    "/unready" => {
                        ready.store(false, Ordering::SeqCst);
                        "200 OK"
                    }
                    _ => "404 Not Found",
                };
                let resp =
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = stream.write_all(resp.as_bytes()).await;
            });
        }
    };
    tokio::select! {
        _ = term.recv() => println!("fake service got SIGTERM"),
        () = serve => {}
    }
}
