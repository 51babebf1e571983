//! Traces over `https://`: the in-test collector behind TLS with a throwaway CA.

use super::otlp::Collector;
use super::*;
use ryze_tests::Certs;

/// A gateway whose `OTEL_EXPORTER_OTLP_ENDPOINT` is `https://` and whose
/// `OTEL_EXPORTER_OTLP_CERTIFICATE` is the collector's CA exports its spans over TLS (flushed
/// at shutdown, as in the plain test).
#[tokio::test(flavor = "multi_thread")]
async fn spans_reach_an_https_collector_trusted_through_otel_exporter_otlp_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = Certs::generate(dir.path()).expect("openssl certificates");
    let collector = Collector::start_tls(certs.rustls_server_config().expect("TLS config")).await;
    assert!(collector.endpoint().starts_with("https://"));
    let db = pg().await.fresh_database().await.expect("fresh database");
    let env = Env::with(db.url.clone(), Some(redis().await.url()), None).await;
    let mut gw = env
        .gateway(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint()),
            (
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
                certs.ca_pem.display().to_string(),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY", "600000".into()),
        ])
        .await;
    let health = http()
        .get(gw.url("/health"))
        .send()
        .await
        .expect("GET /health");
    assert_eq!(health.status().as_u16(), 200);
    gw.sigterm();
    let status = gw.wait_exit(WAIT).await.expect("gateway exit");
    assert!(status.success(), "gateway exited with {status:?}");

    collector
        .wait_for("the /health request span", |spans| {
            spans.iter().any(|s| s.name == "GET /health")
        })
        .await;
    assert!(
        gw.logs().contains("exporting traces over OTLP/HTTP"),
        "{}",
        gw.logs()
    );
}

/// An unreadable `OTEL_EXPORTER_OTLP_CERTIFICATE` is a configuration problem (exit 64), listed
/// with the others; an `https://` endpoint no longer is one.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_otlp_certificate_exits_64() {
    let out = run_cli(
        Bin::Gateway,
        &[],
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "https://collector:4318".into(),
            ),
            (
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
                "/nonexistent/otel-ca.pem".into(),
            ),
        ],
    )
    .await
    .expect("run gateway");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_CERTIFICATE") && err.contains("/nonexistent/otel-ca.pem"),
        "{err}"
    );
    assert!(err.contains("DATABASE_URL is required"), "{err}");
    assert!(!err.contains("OTEL_EXPORTER_OTLP_ENDPOINT must"), "{err}");
}
