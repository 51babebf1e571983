//! The admin listener: `/livez`, `/readyz`, `/metrics` (CONTRACT §1, §6).

use crate::state::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The admin router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Ready: not shutting down, and Redis connected with every wanted subscription confirmed.
/// Postgres is not part of it: open streams keep flowing without it, and failing every pod
/// at once would only turn a partial outage into a total one.
pub fn is_ready(state: &AppState) -> bool {
    !state.draining.is_cancelled() && state.hub.broker().is_ready() && !state.store.tls_failing()
}

async fn readyz(State(state): State<AppState>) -> Response {
    if is_ready(&state) {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut body = state.metrics.render(
        state.hub.broker().subscription_counts(),
        state.hub.client_counts(),
    );
    if let Some(p) = &state.publisher_metrics {
        // One exposition: drop the first one's terminator so the second's families follow.
        if let Some(stripped) = body.strip_suffix("# EOF\n") {
            body = stripped.to_owned();
        }
        body.push_str(&p.render());
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
