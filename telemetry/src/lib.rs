//! ryze-telemetry: logs and traces, set up the same way by both binaries. Plumbing, not part
//! of the contract `ryze-core` holds.
//!
//! [`init`] installs one global `tracing` subscriber made of:
//! - an `EnvFilter` from `RUST_LOG` (default `info`), plus a cap that keeps the WebSocket
//!   library's TRACE frame dumps out of every output (they would carry `instanceData.token`);
//! - a fmt layer writing one line per event to stderr (stdout stays free for the admin
//!   commands' JSON), as text or JSON (`LOG_FORMAT`), fields
//!   first and the message last;
//! - only when an OTLP endpoint is configured, a `tracing-opentelemetry` layer feeding a batch
//!   exporter (OTLP/HTTP, protobuf) that runs on the tokio runtime. Without an endpoint no
//!   exporter, no tracer and no background task exist. For an `https://` endpoint the
//!   exporter's hyper client goes through a rustls (ring) connector: the collector's
//!   certificate must lead to `OTEL_EXPORTER_OTLP_CERTIFICATE` when set, else to a system CA.
//!
//! [`TelemetryGuard`] owns the exporter: dropping it (or [`TelemetryGuard::shutdown`]) flushes the
//! spans still queued. [`HttpSpan`] and [`RecordStatus`] are the `TraceLayer` parts of the
//! public routers: they record the matched route, never the raw URI, which may hold `?token=`.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tracing_subscriber::filter::{filter_fn, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Log output format (`LOG_FORMAT`), shared by both binaries' configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `LOG_FORMAT` and `OTEL_EXPORTER_OTLP_*`, declared once for both binaries.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetrySettings {
    /// Log format.
    #[arg(
        id = "log_format",
        long = "log-format",
        env = "LOG_FORMAT",
        value_name = "LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        global = true
    )]
    pub log_format: LogFormat,
    /// OTLP/HTTP endpoint for traces (http:// or https://); unset = no export.
    #[arg(
        id = "otel_exporter_otlp_endpoint",
        long = "otel-exporter-otlp-endpoint",
        env = "OTEL_EXPORTER_OTLP_ENDPOINT",
        value_name = "OTEL_EXPORTER_OTLP_ENDPOINT",
        global = true
    )]
    pub otlp_endpoint: Option<String>,
    /// PEM CA file the https:// collector's certificate must lead to (default: system CAs).
    #[arg(
        id = "otel_exporter_otlp_certificate",
        long = "otel-exporter-otlp-certificate",
        env = "OTEL_EXPORTER_OTLP_CERTIFICATE",
        value_name = "OTEL_EXPORTER_OTLP_CERTIFICATE",
        global = true
    )]
    pub otlp_certificate: Option<std::path::PathBuf>,
}

/// The telemetry settings after validation.
#[derive(Debug, Clone)]
pub struct Telemetry {
    /// `LOG_FORMAT`.
    pub log_format: LogFormat,
    /// Trace export; `None` when `OTEL_EXPORTER_OTLP_ENDPOINT` is unset or empty.
    pub export: Option<OtlpExport>,
}

impl Telemetry {
    /// Installs logging and, with an endpoint, trace export ([`init`]).
    pub fn init(&self, service_name: &'static str) -> TelemetryGuard {
        init(self.log_format, self.export.as_ref(), service_name)
    }
}

impl TelemetrySettings {
    /// The settings as a [`Telemetry`], or the problems: an endpoint that is not http(s)
    /// OTLP/HTTP, a certificate file that cannot be read (it is read here, once).
    pub fn validate(&self) -> Result<Telemetry, Vec<String>> {
        let mut problems = Vec::new();
        let endpoint = self
            .otlp_endpoint
            .as_deref()
            .map(str::trim)
            .filter(|e| !e.is_empty());
        if endpoint.is_some_and(|e| !(e.starts_with("http://") || e.starts_with("https://"))) {
            problems.push(
                "OTEL_EXPORTER_OTLP_ENDPOINT must be an http:// or https:// OTLP/HTTP endpoint"
                    .to_owned(),
            );
        }
        let roots = match &self.otlp_certificate {
            None => None,
            Some(path) => ryze_core::trust::load_ca_file(path)
                .map_err(|e| {
                    let e = ryze_core::config::error_chain(&e);
                    problems.push(format!("OTEL_EXPORTER_OTLP_CERTIFICATE: {e}"));
                })
                .ok()
                .map(Arc::new),
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Telemetry {
            log_format: self.log_format,
            export: endpoint.map(|endpoint| OtlpExport {
                endpoint: endpoint.to_owned(),
                roots,
            }),
        })
    }
}

/// Longest wait for the last spans to reach the collector at shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

mod format;
mod http;
mod otlp;

use format::{JsonFields, JsonLine, TextFields};
pub use http::{http_trace_layer, HttpSpan, RecordStatus};
pub use otlp::OtlpExport;
use otlp::{build_provider, traces_url};

/// The most verbose level of these targets, whatever `RUST_LOG` says: tungstenite logs every
/// frame at TRACE, payload included, and a frame carries `instanceData.token` (and a client
/// message whatever the client typed). Its DEBUG lines are only handshakes and Close frames.
const CAPPED: [&str; 2] = ["tungstenite", "tokio_tungstenite"];

/// Keeps the trace exporter alive; dropping it flushes and stops it.
///
/// Must be dropped (or [`shutdown`](TelemetryGuard::shutdown)) while the tokio runtime that
/// [`init`] ran on is still running: the batch exporter is a task of that runtime.
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelemetryGuard")
            .field("exporting", &self.provider.is_some())
            .finish()
    }
}

impl TelemetryGuard {
    /// Flushes the queued spans and stops the exporter, waiting at most 5 s.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        // The SDK's shutdown blocks the calling thread until the export task answers, with no
        // deadline of its own. The export task runs on the runtime's workers, so block another
        // thread and bound the wait here: a dead collector must not hold the process.
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("otel-flush".to_owned())
            .spawn(move || {
                let _ = tx.send(provider.shutdown());
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "trace exporter not flushed: no thread for it");
            return;
        }
        match rx.recv_timeout(FLUSH_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "trace exporter flush failed"),
            Err(_) => tracing::warn!(
                timeout = ?FLUSH_TIMEOUT,
                "trace exporter flush timed out; the last spans are lost"
            ),
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Installs the global subscriber (the first call wins; later calls only return a guard).
///
/// `otlp` (`None`: no export) names the OTLP/HTTP base URL (`OTEL_EXPORTER_OTLP_ENDPOINT`, e.g.
/// `http://collector:4318` or `https://collector:4318`); spans go to `<endpoint>/v1/traces`.
/// `service_name` becomes the `service.name` resource attribute unless `OTEL_SERVICE_NAME` is
/// set. With an endpoint this must run inside a tokio runtime.
pub fn init(
    format: LogFormat,
    otlp: Option<&OtlpExport>,
    service_name: &'static str,
) -> TelemetryGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A second global filter: an event must pass both, so this only ever removes. Its default
    // is RUST_LOG's own ceiling, not TRACE: the subscriber's level hint (which also sets the
    // `log` crate's max level) must stay at RUST_LOG's, or every per-frame `trace!` of the
    // WebSocket library would be built and bridged before being filtered out (6-8 % of the
    // gateway's CPU in docs/benchmarks.md).
    let ceiling = filter.max_level_hint().unwrap_or(LevelFilter::TRACE);
    let cap = CAPPED
        .iter()
        .fold(Targets::new().with_default(ceiling), |t, target| {
            t.with_target(*target, ceiling.min(LevelFilter::DEBUG))
        });
    let fmt = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .fmt_fields(TextFields)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .fmt_fields(JsonFields)
            .event_format(JsonLine)
            .boxed(),
    };
    let exporter = otlp.map(|export| build_provider(export, service_name));
    let (provider, failure) = match exporter {
        Some(Ok(p)) => (Some(p), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };
    let otel = provider.as_ref().map(|p| {
        // The exporter's own events (and the HTTP client's) must not become spans: each export
        // would produce more to export.
        let own = filter_fn(|m| {
            !m.target().starts_with("opentelemetry") && !m.target().starts_with("hyper")
        });
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service_name))
            .with_filter(own)
    });
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(cap)
        .with(fmt)
        .with(otel)
        .try_init()
        .is_ok();
    if let Some(e) = failure {
        tracing::error!(
            error = %ryze_core::config::error_chain(&e),
            "trace export disabled: the OTLP exporter could not be built"
        );
    }
    if !installed {
        // Another subscriber was first (tests): its layers do not include ours.
        return TelemetryGuard { provider: None };
    }
    if let Some(export) = otlp.filter(|_| provider.is_some()) {
        tracing::info!(endpoint = %traces_url(&export.endpoint), "exporting traces over OTLP/HTTP");
    }
    TelemetryGuard { provider }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn settings(endpoint: Option<&str>, certificate: Option<&str>) -> TelemetrySettings {
        TelemetrySettings {
            log_format: LogFormat::Json,
            otlp_endpoint: endpoint.map(str::to_owned),
            otlp_certificate: certificate.map(PathBuf::from),
        }
    }

    #[test]
    fn an_http_or_https_endpoint_validates_to_an_export() {
        for endpoint in ["http://c:4318", " https://c:4318 "] {
            let t = settings(Some(endpoint), None).validate().expect("valid");
            let export = t.export.expect("an export");
            assert_eq!(export.endpoint, endpoint.trim());
            assert!(export.roots.is_none(), "the system store");
        }
        let off = settings(Some("  "), None).validate().expect("valid");
        assert!(off.export.is_none(), "an empty endpoint exports nothing");
        assert_eq!(off.log_format, LogFormat::Json);
        assert!(settings(None, None)
            .validate()
            .expect("valid")
            .export
            .is_none());
    }

    #[test]
    fn a_bad_endpoint_and_an_unreadable_ca_file_are_both_reported() {
        let problems = settings(Some("c:4317"), Some("/nope/ca.pem"))
            .validate()
            .expect_err("two problems");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(
            problems[0],
            "OTEL_EXPORTER_OTLP_ENDPOINT must be an http:// or https:// OTLP/HTTP endpoint"
        );
        assert!(
            problems[1].starts_with("OTEL_EXPORTER_OTLP_CERTIFICATE: ")
                && problems[1].contains("/nope/ca.pem"),
            "{problems:?}"
        );
    }
}
