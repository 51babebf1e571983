//! Logs and traces, set up the same way by both binaries.
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

use axum::extract::MatchedPath;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::fmt::{self, Write as _};
use std::time::Duration;
use tracing::field::{Field, Visit};
use tracing::{Event, Span, Subscriber};
use tracing_subscriber::filter::{filter_fn, LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
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

/// Longest wait for the last spans to reach the collector at shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

mod otlp;

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
    /// Whether spans are exported (an OTLP endpoint was set and the exporter was built).
    pub fn is_exporting(&self) -> bool {
        self.provider.is_some()
    }

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
/// `otlp.endpoint` is the OTLP/HTTP base URL (`OTEL_EXPORTER_OTLP_ENDPOINT`, e.g.
/// `http://collector:4318` or `https://collector:4318`); spans go to `<endpoint>/v1/traces`.
/// `service_name` becomes the `service.name` resource attribute unless `OTEL_SERVICE_NAME` is
/// set. With an endpoint this must run inside a tokio runtime.
pub fn init(format: LogFormat, otlp: OtlpExport<'_>, service_name: &'static str) -> TelemetryGuard {
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
    let endpoint = otlp.endpoint.map(str::trim).filter(|e| !e.is_empty());
    let exporter = endpoint.map(|e| build_provider(e, otlp.certificate, service_name));
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
            error = %crate::config::error_chain(&e),
            "trace export disabled: the OTLP exporter could not be built"
        );
    }
    if !installed {
        // Another subscriber was first (tests): its layers do not include ours.
        return TelemetryGuard { provider: None };
    }
    if let Some(e) = endpoint.filter(|_| provider.is_some()) {
        tracing::info!(endpoint = %traces_url(e), "exporting traces over OTLP/HTTP");
    }
    TelemetryGuard { provider }
}

// ---- HTTP spans ----------------------------------------------------------------------------

/// `TraceLayer::make_span_with` for the public routers: an INFO span `http.request` with the
/// method and the matched route (`/ws/{instance}`), never the URI: its query may hold a token.
/// Unrouted requests get the route `unmatched`.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpSpan;

impl<B> tower_http::trace::MakeSpan<B> for HttpSpan {
    fn make_span(&mut self, req: &http::Request<B>) -> Span {
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", MatchedPath::as_str);
        tracing::info_span!(
            "http.request",
            otel.name = %format_args!("{} {route}", req.method()),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            http.method = %req.method(),
            http.route = route,
            http.status = tracing::field::Empty,
        )
    }
}

/// `TraceLayer::on_response` for the public routers: records `http.status` on the request
/// span (and marks 5xx as errors in the trace), and logs `finished processing request` at
/// DEBUG with the status and latency.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordStatus;

impl<B> tower_http::trace::OnResponse<B> for RecordStatus {
    fn on_response(self, resp: &http::Response<B>, latency: Duration, span: &Span) {
        span.record("http.status", resp.status().as_u16());
        tracing::debug!(
            status = resp.status().as_u16(),
            latency = ?latency,
            "finished processing request"
        );
        if resp.status().is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
    }
}

/// The `TraceLayer` of a public router: [`HttpSpan`] and [`RecordStatus`]; the per-request
/// start and end events stay at DEBUG, and failures are not logged again (the handlers log
/// their causes).
pub fn http_trace_layer() -> tower_http::trace::TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>,
    HttpSpan,
    tower_http::trace::DefaultOnRequest,
    RecordStatus,
    tower_http::trace::DefaultOnBodyChunk,
    tower_http::trace::DefaultOnEos,
    (),
> {
    tower_http::trace::TraceLayer::new_for_http()
        .make_span_with(HttpSpan)
        .on_response(RecordStatus)
        .on_failure(())
}

// ---- Line formats --------------------------------------------------------------------------

/// An event's or span's fields, in recording order, with the message apart.
#[derive(Default)]
struct Fields {
    /// (name, rendered value); text values are already quoted for their format.
    pairs: Vec<(&'static str, String)>,
    message: Option<String>,
    /// `log.target` of an event forwarded from the `log` crate.
    log_target: Option<String>,
    json: bool,
}

impl Fields {
    fn new(json: bool) -> Fields {
        Fields {
            json,
            ..Fields::default()
        }
    }

    fn push(&mut self, field: &Field, value: String) {
        self.pairs.push((field.name(), value));
    }

    fn string(&self, s: &str) -> String {
        if self.json {
            serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
        } else {
            format!("{s:?}")
        }
    }

    /// True when the field is handled apart (message, `log.*` metadata).
    fn special(&mut self, field: &Field, value: &dyn fmt::Display) -> bool {
        match field.name() {
            "message" => {
                self.message = Some(value.to_string());
                true
            }
            "log.target" => {
                self.log_target = Some(value.to_string());
                true
            }
            n => n.starts_with("log."),
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if self.special(field, &text) {
            return;
        }
        // Text: `%x` and `?x` print bare, as the default formatter does.
        let rendered = if self.json { self.string(&text) } else { text };
        self.push(field, rendered);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if self.special(field, &value) {
            return;
        }
        let rendered = self.string(value);
        self.push(field, rendered);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if !self.special(field, &value) {
            self.push(field, value.to_string());
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if !self.special(field, &value) {
            self.push(field, value.to_string());
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if !self.special(field, &value) {
            self.push(field, value.to_string());
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.special(field, &value) {
            return;
        }
        let rendered = if value.is_finite() || !self.json {
            value.to_string()
        } else {
            self.string(&value.to_string())
        };
        self.push(field, rendered);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // The whole chain, outermost first: "cannot connect: connection refused".
        let mut chain = value.to_string();
        let mut source = value.source();
        while let Some(s) = source {
            let _ = write!(chain, ": {s}");
            source = s.source();
        }
        self.record_str(field, &chain);
    }
}

/// Text fields: `key=value …` then the message.
struct TextFields;

impl<'w> FormatFields<'w> for TextFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'w>,
        fields: R,
    ) -> fmt::Result {
        let mut f = Fields::new(false);
        fields.record(&mut f);
        let mut sep = "";
        for (k, v) in &f.pairs {
            write!(writer, "{sep}{k}={v}")?;
            sep = " ";
        }
        if let Some(m) = &f.message {
            write!(writer, "{sep}{m}")?;
        }
        Ok(())
    }
}

/// JSON span fields, stored as `"k":v,"k2":v2` (no braces) so recorded values can be
/// appended; [`JsonLine`] wraps them.
struct JsonFields;

impl<'w> FormatFields<'w> for JsonFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'w>,
        fields: R,
    ) -> fmt::Result {
        let mut f = Fields::new(true);
        fields.record(&mut f);
        write_json_pairs(&mut writer, &f.pairs)
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut f = Fields::new(true);
        fields.record(&mut f);
        if f.pairs.is_empty() {
            return Ok(());
        }
        if !current.fields.is_empty() {
            current.fields.push(',');
        }
        write_json_pairs(&mut current.as_writer(), &f.pairs)
    }
}

fn write_json_pairs(w: &mut Writer<'_>, pairs: &[(&'static str, String)]) -> fmt::Result {
    let mut sep = "";
    for (k, v) in pairs {
        let key = serde_json::to_string(k).map_err(|_| fmt::Error)?;
        write!(w, "{sep}{key}:{v}")?;
        sep = ",";
    }
    Ok(())
}

/// One JSON object per event: `timestamp`, `level`, `target`, `spans` (root first, each with
/// its `name` and fields), the event's fields, then `message`.
struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut f = Fields::new(true);
        event.record(&mut f);
        let mut ts = String::new();
        SystemTime.format_time(&mut Writer::new(&mut ts))?;
        let meta = event.metadata();
        let target = f.log_target.as_deref().unwrap_or(meta.target());
        let json = |s: &str| serde_json::to_string(s).map_err(|_| fmt::Error);
        write!(
            writer,
            "{{\"timestamp\":{},\"level\":\"{}\",\"target\":{}",
            json(&ts)?,
            meta.level(),
            json(target)?
        )?;
        if let Some(scope) = ctx.event_scope() {
            writer.write_str(",\"spans\":[")?;
            let mut sep = "";
            for span in scope.from_root() {
                write!(writer, "{sep}{{\"name\":{}", json(span.name())?)?;
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>() {
                    if !fields.fields.is_empty() {
                        write!(writer, ",{}", fields.fields)?;
                    }
                }
                writer.write_char('}')?;
                sep = ",";
            }
            writer.write_char(']')?;
        }
        if !f.pairs.is_empty() {
            writer.write_char(',')?;
            write_json_pairs(&mut writer, &f.pairs)?;
        }
        if let Some(m) = &f.message {
            write!(writer, ",\"message\":{}", json(m)?)?;
        }
        writeln!(writer, "}}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    impl Buf {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into()
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    fn emit() {
        let span = tracing::info_span!("ws.connection", conn.id = 7u64, peer.addr = "1.2.3.4:5");
        let _g = span.enter();
        let e = Outer(std::io::Error::other("inner"));
        tracing::warn!(
            reason = "gone",
            n = 3,
            error = &e as &dyn std::error::Error,
            "closed \"x\""
        );
    }

    #[test]
    fn json_lines_put_fields_first_and_the_message_last() {
        let buf = Buf::default();
        let sub = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .fmt_fields(JsonFields)
                .event_format(JsonLine)
                .with_writer(buf.clone()),
        );
        tracing::subscriber::with_default(sub, emit);
        let line = buf.text();
        let v: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON object");
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["reason"], "gone");
        assert_eq!(v["n"], 3);
        assert_eq!(v["error"], "outer: inner");
        assert_eq!(v["message"], "closed \"x\"");
        assert_eq!(v["spans"][0]["name"], "ws.connection");
        assert_eq!(v["spans"][0]["conn.id"], 7);
        assert!(
            line.trim_end().ends_with(r#""message":"closed \"x\""}"#),
            "{line}"
        );
        let reason = line.find("\"reason\"").unwrap_or(usize::MAX);
        assert!(reason < line.find("\"message\"").unwrap_or(0), "{line}");
    }

    #[test]
    fn text_lines_put_fields_first_and_the_message_last() {
        let buf = Buf::default();
        let sub = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .fmt_fields(TextFields)
                .with_writer(buf.clone()),
        );
        tracing::subscriber::with_default(sub, emit);
        let line = buf.text();
        assert!(
            line.trim_end()
                .ends_with(r#"reason="gone" n=3 error="outer: inner" closed "x""#),
            "{line}"
        );
        assert!(
            line.contains("ws.connection{conn.id=7 peer.addr=\"1.2.3.4:5\"}"),
            "{line}"
        );
    }
}
