//! The `TraceLayer` parts of the public routers: spans name the matched route, never the raw
//! URI (its query may hold `?token=`).

use axum::extract::MatchedPath;
use std::time::Duration;
use tracing::Span;

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
