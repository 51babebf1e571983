//! Issue 18, item 5: every metric the chart's Grafana dashboard and alert rules name exists in
//! the `/metrics` of a running gateway or publisher.
//!
//! The names are read from the chart files themselves (`helm/ryze-events/dashboards/*.json`
//! and `helm/ryze-events/rules/*.yaml`, which the templates render with `.Files.Get`), so no
//! helm is needed. A scrape lists every registered family through its `# TYPE` line even before
//! it has a sample; the names a query may use are derived from it the way Prometheus sees them:
//! a counter `x` as `x_total`, a histogram `x` as `x_bucket`, `x_sum` and `x_count`, a gauge as
//! `x`. The bare family name of a counter or histogram is not accepted: no series has it.

use ryze_tests::fixtures as common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use common::Env;
use ryze_tests::{http, Service};

/// The chart directory.
fn chart() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../helm/ryze-events")
}

/// The text of every file of the chart's `dir` whose name ends in `ext`.
fn chart_files(dir: &str, ext: &str) -> Vec<(PathBuf, String)> {
    let dir = chart().join(dir);
    let mut files: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("read_dir entry").path())
        .filter(|p| p.to_string_lossy().ends_with(ext))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("chart file");
            (p, text)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *{ext} in {}", dir.display());
    files
}

/// Every `ryze_…` metric name in a PromQL-bearing text (dashboard JSON or rule YAML).
fn referenced_names(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let is_name = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut out = BTreeSet::new();
    let mut i = 0;
    while let Some(pos) = text[i..].find("ryze_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && is_name(bytes[end]) {
            end += 1;
        }
        // Part of a longer identifier (e.g. `x_ryze_…`) is not a reference.
        if start == 0 || !is_name(bytes[start - 1]) {
            out.insert(text[start..end].to_owned());
        }
        i = end.max(start + 1);
    }
    out
}

/// The series names a Prometheus scraping `text` would store.
fn exposed_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            match kind {
                "counter" => {
                    out.insert(format!("{}_total", name.trim_end_matches("_total")));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        out.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {
                    out.insert(name.to_owned());
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            out.insert(line[..end].to_owned());
        }
    }
    out
}

/// The referenced names that no scrape exposes.
fn missing<'a>(referenced: &'a BTreeSet<String>, exposed: &BTreeSet<String>) -> Vec<&'a str> {
    referenced
        .iter()
        .filter(|n| !exposed.contains(*n))
        .map(String::as_str)
        .collect()
}

async fn scrape(url: String) -> String {
    let resp = http().get(&url).send().await.expect("scrape");
    assert_eq!(resp.status().as_u16(), 200, "{url}");
    resp.text().await.expect("metrics body")
}

#[test]
fn the_check_catches_a_typo_and_bare_family_names() {
    let exposition = "# HELP ryze_gateway_connections_opened x.\n\
        # TYPE ryze_gateway_connections_opened counter\n\
        ryze_gateway_connections_opened_total 3\n\
        # TYPE ryze_gateway_frames_dropped counter\n\
        # TYPE ryze_publish_to_send_seconds histogram\n\
        ryze_publish_to_send_seconds_bucket{le=\"0.1\"} 1\n\
        # TYPE ryze_gateway_connections gauge\n\
        ryze_gateway_connections 1\n\
        # EOF\n";
    let exposed = exposed_names(exposition);
    let text = r#"{"expr": "sum(rate(ryze_gateway_conections_opened_total[5m])) + ryze_gateway_connections
        + rate(ryze_gateway_frames_dropped_total{reason=\"x\"}[1m]) + ryze_publish_to_send_seconds_count
        + ryze_publish_to_send_seconds + ryze_gateway_connections_opened"}"#;
    let referenced = referenced_names(text);
    assert_eq!(
        missing(&referenced, &exposed),
        vec![
            "ryze_gateway_conections_opened_total",
            "ryze_gateway_connections_opened",
            "ryze_publish_to_send_seconds",
        ],
        "a typo, a bare counter family and a bare histogram family must be reported"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_in_the_dashboard_and_the_alerts_exists() {
    let mut referenced: Vec<(PathBuf, BTreeSet<String>)> = Vec::new();
    for (path, text) in chart_files("dashboards", ".json") {
        serde_json::from_str::<serde_json::Value>(&text)
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
        referenced.push((path, referenced_names(&text)));
    }
    for (path, text) in chart_files("rules", ".yaml") {
        referenced.push((path, referenced_names(&text)));
    }
    for (path, names) in &referenced {
        assert!(
            names.len() >= 5,
            "{}: only {names:?} found; is the extraction broken?",
            path.display()
        );
    }

    let env = Env::new().await;
    let gw: Service = env.gateway(&[]).await;
    let publisher: Service = env.publisher(&[]).await;
    let gw_text = scrape(gw.admin_url("/metrics")).await;
    let pub_text = scrape(publisher.url("/metrics")).await;
    let mut exposed = exposed_names(&gw_text);
    exposed.extend(exposed_names(&pub_text));
    assert!(
        exposed.contains("ryze_gateway_connections")
            && exposed.contains("ryze_publisher_events_total"),
        "scrapes look wrong: {exposed:?}"
    );

    let mut failures = Vec::new();
    for (path, names) in &referenced {
        for name in missing(names, &exposed) {
            failures.push(format!("{}: {name}", path.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "metrics named by the chart that neither the gateway nor the publisher exposes:\n  {}\nexposed: {exposed:?}",
        failures.join("\n  ")
    );
}
