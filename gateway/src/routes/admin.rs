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

/// 200 `ready`, or 503 `not ready: <reason>` ([`crate::readiness`]).
async fn readyz(State(state): State<AppState>) -> Response {
    match crate::readiness::check(&state) {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")).into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.metrics.render(
        state.hub.broker().subscription_counts(),
        state.hub.client_counts(),
    );
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
