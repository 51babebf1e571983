//! Postgres over TLS (issue 16, item 4): a private Postgres with `ssl=on` that refuses plain
//! TCP, a throwaway CA, and both binaries with each `sslmode`.
//!
//! Every wait is bounded and awaits a condition (readiness, a log line, a relay message).

use ryze_tests::fixtures as common;

use std::path::Path;

use common::{segment, Env, System, WAIT};
use ryze_tests::{http, redis, run_cli, Bin, Certs, PgServer, Service, TestDb};
use serde_json::json;

/// A password the server ignores (trust auth) but that the URLs carry, so the log scans can
/// prove it never leaks.
const PASSWORD: &str = "pg-pa55word-never-logged";

/// A TLS-only private Postgres presenting `certs`, and one fresh database on it.
async fn tls_server(certs: &Certs) -> (PgServer, TestDb) {
    let server = PgServer::start_private_tls(certs)
        .await
        .expect("TLS postgres");
    let db = server.fresh_database().await.expect("fresh database");
    (server, db)
}

fn make_certs(dir: &Path, names: Option<&[&str]>) -> Certs {
    match names {
        None => Certs::generate(dir),
        Some(names) => Certs::generate_for(dir, names),
    }
    .expect("openssl certificates")
}

/// `db`'s URL with the password and `params` (`sslmode=…&sslrootcert=…`).
fn url(db: &TestDb, params: &str) -> String {
    let with_password = db
        .url
        .replacen("postgres@", &format!("postgres:{PASSWORD}@"), 1);
    format!("{with_password}?{params}")
}

/// A gateway on the shared Redis with `DATABASE_URL`, ready (readiness ignores Postgres).
async fn gateway(database_url: &str) -> Service {
    let env = [
        ("DATABASE_URL", database_url.to_owned()),
        ("REDIS_URL", redis().await.url()),
        ("REDIS_PREFIX", ryze_tests::unique_prefix()),
        ("RUST_LOG", "trace".to_owned()),
    ];
    let gw = Service::spawn(Bin::Gateway, &[], &env)
        .await
        .expect("spawn gateway");
    gw.wait_ready(WAIT).await.expect("gateway ready");
    gw
}

/// `GET /health`: (status, body).
async fn health(gw: &Service) -> (u16, serde_json::Value) {
    let resp = http()
        .get(gw.url("/health"))
        .send()
        .await
        .expect("GET /health");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("health JSON"))
}

fn assert_no_password(what: &str, logs: &str) {
    assert!(
        !logs.contains(PASSWORD),
        "{what} logged the database password"
    );
}

/// Everything over `verify-full` against the throwaway CA: the admin CLI migrates, the
/// publisher's NOTIFY listener connects (it is ready only once LISTEN is acknowledged), a
/// config POSTed through the gateway is relayed by that listener (`config_changed`), read
/// back through the gateway, and an ingested event reaches a client.
#[tokio::test(flavor = "multi_thread")]
async fn both_binaries_and_the_notify_listener_work_over_verify_full() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = make_certs(dir.path(), None);
    let (_server, db) = tls_server(&certs).await;
    let database_url = url(
        &db,
        &format!("sslmode=verify-full&sslrootcert={}", certs.ca_pem.display()),
    );
    let env = Env::with(database_url, Some(redis().await.url()), None).await;
    // `start_in` waits for "listening for config changes", then configures the instance and
    // waits for the relay's config_changed: the notification came over the TLS LISTEN.
    let mut sys = System::start_in(env, "secure", json!({"enabled": false}), 1, &[], &[]).await;
    sys.configure(json!({"enabled": true, "events": ["message.exchange"]}))
        .await;

    let resp = http()
        .get(sys.gw().url(&format!(
            "/api/events/getWebsocket/{}",
            segment(&sys.inst.name)
        )))
        .header("token", &sys.env.account_token)
        .send()
        .await
        .expect("GET config");
    assert_eq!(resp.status().as_u16(), 200);
    let body = resp.text().await.expect("config body");
    assert!(body.contains("message.exchange"), "{body}");

    let (status, h) = health(sys.gw()).await;
    assert_eq!((status, &h["checks"]["db"]), (200, &json!("ok")), "{h}");
    let ready = http()
        .get(sys.publisher.admin_url("/readyz"))
        .send()
        .await
        .expect("publisher /readyz");
    assert_eq!(ready.status().as_u16(), 200);

    let mut client = sys.connect(0).await;
    sys.deliver_one(&mut client, "message.exchange", r#"{"n":1}"#)
        .await;

    assert_no_password("the gateway", &sys.gw().logs());
    assert_no_password("the publisher", &sys.publisher.logs());
}

/// `require` encrypts without a root certificate; the server refuses plain TCP, so a
/// `disable` gateway stays up with `/health` failing while the `require` one is healthy.
#[tokio::test(flavor = "multi_thread")]
async fn require_works_without_a_root_certificate_and_plain_tcp_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = make_certs(dir.path(), None);
    let (_server, db) = tls_server(&certs).await;

    let require = gateway(&url(&db, "sslmode=require")).await;
    let (status, h) = health(&require).await;
    assert_eq!((status, &h["checks"]["db"]), (200, &json!("ok")), "{h}");

    // libpq's default, prefer, takes TLS when offered.
    let prefer = gateway(&url(&db, "application_name=prefer")).await;
    let (status, h) = health(&prefer).await;
    assert_eq!((status, &h["checks"]["db"]), (200, &json!("ok")), "{h}");

    let plain = gateway(&url(&db, "sslmode=disable")).await;
    let (status, h) = health(&plain).await;
    assert_eq!(status, 503, "{h}");
    assert_ne!(h["checks"]["db"], "ok", "{h}");
    for gw in [&require, &prefer, &plain] {
        assert_no_password("a gateway", &gw.logs());
    }
}

/// A server certificate from another CA: both processes stay up but not ready (issue 16: a
/// certificate that does not verify keeps the pod unready), the gateway's `/health` fails
/// with the reason, both log once that the certificate did not verify, and no log line at
/// TRACE holds the password.
#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_from_another_ca_keeps_the_processes_up_and_says_why() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = make_certs(&dir.path().join("real"), None);
    let stranger = make_certs(&dir.path().join("stranger"), None);
    let (_server, db) = tls_server(&certs).await;
    let database_url = url(
        &db,
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            stranger.ca_pem.display()
        ),
    );

    let gw = gateway(&database_url).await;
    let (status, h) = health(&gw).await;
    assert_eq!(status, 503, "{h}");
    assert_eq!(h["checks"]["db"], "fail: certificate not verified", "{h}");
    gw.wait_for_log("Postgres server certificate did not verify", WAIT)
        .await
        .expect("the gateway says why");
    gw.wait_not_ready(WAIT)
        .await
        .expect("the gateway is not ready while the certificate does not verify");

    let publisher = Service::spawn(
        Bin::Publisher,
        &[],
        &[
            ("DATABASE_URL", database_url.clone()),
            ("REDIS_URL", redis().await.url()),
            ("REDIS_PREFIX", ryze_tests::unique_prefix()),
            ("PUBLISHER_API_KEY", "k".to_owned()),
            ("PUBLIC_BASE_URL", "https://x.example".to_owned()),
            ("RUST_LOG", "trace".to_owned()),
        ],
    )
    .await
    .expect("spawn publisher");
    publisher
        .wait_for_log("Postgres server certificate did not verify", WAIT)
        .await
        .expect("the publisher's LISTEN connection says why");
    publisher
        .wait_not_ready(WAIT)
        .await
        .expect("the publisher is up but not ready");

    // The admin CLI fails (exit 1) without printing the URL either.
    let out = run_cli(
        Bin::Publisher,
        &["migrate"],
        &[("DATABASE_URL", database_url)],
    )
    .await
    .expect("run migrate");
    assert_eq!(out.status.code(), Some(1));
    assert_no_password("migrate", &String::from_utf8_lossy(&out.stderr));

    assert_no_password("the gateway", &gw.logs());
    assert_no_password("the publisher", &publisher.logs());
}

/// `verify-ca` checks the chain only, `verify-full` the name too: with a certificate issued
/// by the right CA for another host name, the first connects and the second does not.
#[tokio::test(flavor = "multi_thread")]
async fn verify_ca_skips_the_host_name_check_that_verify_full_makes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = make_certs(dir.path(), Some(&["DNS:db.internal.example"]));
    let (_server, db) = tls_server(&certs).await;
    let ca = certs.ca_pem.display();

    let ca_only = gateway(&url(&db, &format!("sslmode=verify-ca&sslrootcert={ca}"))).await;
    let (status, h) = health(&ca_only).await;
    assert_eq!((status, &h["checks"]["db"]), (200, &json!("ok")), "{h}");
    // libpq: require with a root certificate verifies like verify-ca.
    let require = gateway(&url(&db, &format!("sslmode=require&sslrootcert={ca}"))).await;
    let (status, h) = health(&require).await;
    assert_eq!((status, &h["checks"]["db"]), (200, &json!("ok")), "{h}");

    let full = gateway(&url(&db, &format!("sslmode=verify-full&sslrootcert={ca}"))).await;
    let (status, h) = health(&full).await;
    assert_eq!(status, 503, "{h}");
    assert_eq!(h["checks"]["db"], "fail: certificate not verified", "{h}");
}

/// An unknown `sslmode` and an unreadable `sslrootcert` are configuration problems: exit 64
/// before listening, each listed, the URL never printed.
#[tokio::test(flavor = "multi_thread")]
async fn bad_tls_settings_in_database_url_exit_64_with_every_problem() {
    let base = format!("postgres://postgres:{PASSWORD}@127.0.0.1:1/x");
    let out = run_cli(
        Bin::Gateway,
        &[],
        &[
            ("DATABASE_URL", format!("{base}?sslmode=bogus")),
            ("WS_SEND_QUEUE", "0".to_owned()),
        ],
    )
    .await
    .expect("run gateway");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "unknown sslmode \"bogus\"",
        "REDIS_URL is required",
        "WS_SEND_QUEUE",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in {err}");
    }
    assert_no_password("the gateway's refusal", &err);

    let out = run_cli(
        Bin::Publisher,
        &["migrate"],
        &[(
            "DATABASE_URL",
            format!("{base}?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"),
        )],
    )
    .await
    .expect("run publisher");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sslrootcert") && err.contains("/nonexistent/ca.pem"),
        "{err}"
    );
    assert_no_password("the publisher's refusal", &err);
}
