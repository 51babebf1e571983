//! Redis over TLS (issue 16, item 4): `rediss://` with a CA file, mutual TLS, a wrong CA, a
//! plain URL against a TLS-only port, and unreadable TLS files. Real `redis-server --tls-port`
//! processes with throwaway certificates ([`ryze_tests::TestCerts`]).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use ryze_tests::fixtures as common;

use std::sync::Arc;
use std::time::Duration;

use common::{configure, connect, merge, Env, API_KEY, BASE_URL, WAIT};
use ryze_tests::{
    pg, run_cli, Bin, ClientAuth, RedisCluster, RedisSentinel, RedisServer, Service, TestCerts,
};
use serde_json::json;

/// What the log line of a failed handshake says (core/src/redis.rs).
const TLS_FAILED: &str = "Redis TLS handshake failed";
/// A password in `REDIS_URL` that must never reach a log line.
const PASSWORD: &str = "tls-test-secret-7d1f";

/// A TLS-only server with fresh certificates, and a migrated database using it.
async fn tls_env(auth: ClientAuth) -> (Arc<TestCerts>, RedisServer, Env) {
    let certs = Arc::new(TestCerts::generate().await.unwrap());
    let server = RedisServer::start_tls(certs.clone(), auth).await.unwrap();
    let db = pg().await.fresh_database().await.unwrap();
    let env = Env::with(db.url, Some(server.url()), None).await;
    (certs, server, env)
}

/// A publisher of `env` plus `extra`, started but not awaited.
async fn spawn_publisher(env: &Env, extra: &[(&'static str, String)]) -> Service {
    let mut vars = env.service_env();
    vars.push(("PUBLISHER_API_KEY", API_KEY.to_owned()));
    vars.push(("PUBLIC_BASE_URL", BASE_URL.to_owned()));
    Service::spawn(Bin::Publisher, &[], &merge(vars, extra))
        .await
        .unwrap()
}

/// A gateway of `env` plus `extra`, started but not awaited.
async fn spawn_gateway(env: &Env, extra: &[(&'static str, String)]) -> Service {
    Service::spawn(Bin::Gateway, &[], &merge(env.service_env(), extra))
        .await
        .unwrap()
}

/// `GET <url>`'s status, or 0 if the request failed.
async fn status_of(url: &str) -> u16 {
    match ryze_tests::http()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// The service failed to reach Redis (the given log line is there), yet it is alive, `/livez`
/// answers 200 and `/readyz` 503.
async fn assert_up_but_unready(svc: &Service, log_line: &str) {
    svc.wait_for_log(log_line, WAIT).await.unwrap();
    assert!(ryze_tests::pid_is_alive(svc.pid()), "{}", svc.logs());
    assert_eq!(status_of(&svc.admin_url("/livez")).await, 200);
    assert_eq!(status_of(&svc.admin_url("/readyz")).await, 503);
}

/// Configures `name` through the gateway, connects a client and delivers one event through
/// the publisher: the whole path over TLS. Returns the instance.
async fn assert_delivery(
    env: &Env,
    gw: &Service,
    publisher: &Service,
    name: &str,
) -> common::Instance {
    let inst = env.create_instance(name).await;
    configure(gw, name, &env.account_token, json!({"enabled": true})).await;
    let mut client = connect(gw, name, &env.account_token).await;
    let data = r#"{"over":"tls"}"#;
    common::publish_expect(
        publisher,
        &common::item(&inst.id, "instance.state", data),
        1,
        0,
        0,
        0,
    )
    .await;
    assert_eq!(
        client.next_text(WAIT).await.unwrap(),
        common::frame("instance.state", data, &inst)
    );
    inst
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_and_publisher_deliver_over_rediss_with_a_ca_file() {
    let (certs, _server, env) = tls_env(ClientAuth::Optional).await;
    let tls = certs.redis_env(false);
    let gw = env.gateway(&tls).await;
    let publisher = env.publisher(&tls).await;
    assert_delivery(&env, &gw, &publisher, "tls").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_and_publisher_deliver_over_rediss_sentinel_with_a_ca_file() {
    let certs = Arc::new(TestCerts::generate().await.unwrap());
    let setup = RedisSentinel::start_tls(certs.clone()).await.unwrap();
    let url = setup.url();
    assert!(url.starts_with("rediss-sentinel://127.0.0.1:"), "{url}");
    let db = pg().await.fresh_database().await.unwrap();
    let env = Env::with(db.url, Some(url), None).await;
    let tls = certs.redis_env(false);
    let gw = env.gateway(&tls).await;
    let publisher = env.publisher(&tls).await;
    let inst = assert_delivery(&env, &gw, &publisher, "tls-sentinel").await;
    // The gateway found the primary through the Sentinels and subscribed there.
    assert_eq!(
        common::numsub(setup.primary(), &env.prefix, &inst.id).await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_and_publisher_deliver_over_rediss_cluster_with_a_ca_file() {
    let certs = Arc::new(TestCerts::generate().await.unwrap());
    let cluster = RedisCluster::start_tls(certs.clone()).await.unwrap();
    let url = cluster.url();
    assert!(url.starts_with("rediss-cluster://127.0.0.1:"), "{url}");
    let db = pg().await.fresh_database().await.unwrap();
    let env = Env::with(db.url, Some(url), None).await;
    let tls = certs.redis_env(false);
    let gw = env.gateway(&tls).await;
    let publisher = env.publisher(&tls).await;
    let inst = assert_delivery(&env, &gw, &publisher, "tls-cluster").await;
    // Sharded pub/sub: the gateway subscribed on the master serving the channel's slot.
    let channel = format!("{}:ws:{{{}}}", env.prefix, inst.id);
    let owner = cluster.owner_of(&channel).await.unwrap();
    let out = cluster
        .cli(owner.index, &["PUBSUB", "SHARDNUMSUB", &channel])
        .await
        .unwrap();
    assert_eq!(out.lines().nth(1).map(str::trim), Some("1"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_works_with_the_client_certificate_and_stays_unready_without_it() {
    let (certs, _server, env) = tls_env(ClientAuth::Required).await;
    let with_cert = certs.redis_env(true);
    let gw = env.gateway(&with_cert).await;
    let publisher = env.publisher(&with_cert).await;
    assert_delivery(&env, &gw, &publisher, "mtls").await;

    let without = spawn_gateway(&env, &certs.redis_env(false)).await;
    assert_up_but_unready(&without, TLS_FAILED).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_ca_keeps_both_binaries_up_unready_and_says_the_certificate_did_not_verify() {
    let (_certs, server, env) = tls_env(ClientAuth::Optional).await;
    let other = TestCerts::generate().await.unwrap();
    let url = format!("rediss://:{PASSWORD}@127.0.0.1:{}", server.port());
    let extra = [
        ("REDIS_URL", url),
        (
            "REDIS_TLS_CA_FILE",
            other.ca().to_string_lossy().into_owned(),
        ),
    ];
    let gw = spawn_gateway(&env, &extra).await;
    let publisher = spawn_publisher(&env, &extra).await;
    for svc in [&gw, &publisher] {
        assert_up_but_unready(svc, TLS_FAILED).await;
        let logs = svc.logs();
        let line = logs
            .lines()
            .find(|l| l.contains(TLS_FAILED))
            .unwrap_or_default();
        assert!(line.contains("did not verify"), "{line}");
        // UnknownIssuer, or BadSignature when the other CA happens to have the same name.
        assert!(line.contains("InvalidCertificate"), "{line}");
        for secret in [PASSWORD, API_KEY, env.account_token.as_str()] {
            assert!(!logs.contains(secret), "a secret in the logs:\n{logs}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plain_url_against_a_tls_only_port_fails_readiness_not_the_process() {
    let (_certs, server, env) = tls_env(ClientAuth::Optional).await;
    let extra = [("REDIS_URL", format!("redis://127.0.0.1:{}", server.port()))];
    let gw = spawn_gateway(&env, &extra).await;
    assert_up_but_unready(&gw, "Redis connection failed").await;
    let publisher = spawn_publisher(&env, &extra).await;
    assert_up_but_unready(&publisher, "Redis connection failed").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unreadable_tls_files_exit_64_with_every_problem_listed() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = dir.path().join("missing-ca.pem");
    let common_env = [
        ("DATABASE_URL", "postgres://x@127.0.0.1:1/x".to_owned()),
        ("REDIS_URL", "rediss://127.0.0.1:1".to_owned()),
    ];

    let mut gw_env = common_env.to_vec();
    gw_env.push(("REDIS_TLS_CA_FILE", missing.to_string_lossy().into_owned()));
    gw_env.push(("WS_SEND_QUEUE", "0".to_owned()));
    let out = run_cli(Bin::Gateway, &[], &gw_env).await.unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in ["REDIS_TLS_CA_FILE", "missing-ca.pem", "WS_SEND_QUEUE"] {
        assert!(err.contains(needle), "missing {needle:?} in {err}");
    }

    let mut pub_env = common_env.to_vec();
    pub_env.push(("REDIS_TLS_CA_FILE", garbage.to_string_lossy().into_owned()));
    pub_env.push(("PUBLISHER_API_KEY", API_KEY.to_owned()));
    let out = run_cli(Bin::Publisher, &[], &pub_env).await.unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "REDIS_TLS_CA_FILE",
        "no valid PEM",
        "PUBLIC_BASE_URL is required",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in {err}");
    }

    // A certificate without its key is a problem too.
    let mut half = common_env.to_vec();
    half.push((
        "REDIS_TLS_CERT_FILE",
        garbage.to_string_lossy().into_owned(),
    ));
    let out = run_cli(Bin::Gateway, &[], &half).await.unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("REDIS_TLS_KEY_FILE"));
}
