//! `POST /v1/events`: the internal ingest endpoint (CONTRACT §4).

use crate::error::IngestError;
use crate::ingest;
use crate::Publisher;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tracing::Instrument;

/// Longest wait for a whole ingest body.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The ingest router, mounted by the publisher and by the gateway in embedded mode.
pub fn ingest(publisher: Arc<Publisher>) -> Router {
    Router::new()
        .route("/v1/events", post(handle))
        .with_state(publisher)
}

async fn handle(State(p): State<Arc<Publisher>>, headers: HeaderMap, body: Body) -> Response {
    // One span per request with its outcome counts; never the body (frames carry tokens).
    let span = tracing::info_span!(
        "ingest",
        events = tracing::field::Empty,
        published = tracing::field::Empty,
        filtered = tracing::field::Empty,
        no_listeners = tracing::field::Empty,
        unknown_instance = tracing::field::Empty,
        http.status = tracing::field::Empty,
        error.message = tracing::field::Empty,
    );
    match run(&p, &headers, body).instrument(span.clone()).await {
        Ok(counts) => {
            span.record("events", counts.accepted);
            span.record("published", counts.published);
            span.record("filtered", counts.filtered);
            span.record("no_listeners", counts.no_listeners);
            span.record("unknown_instance", counts.unknown_instance);
            span.record("http.status", StatusCode::ACCEPTED.as_u16());
            (StatusCode::ACCEPTED, Json(counts)).into_response()
        }
        Err(e) => {
            span.record("error.message", tracing::field::display(&e));
            let resp = span.in_scope(|| e.into_response());
            span.record("http.status", resp.status().as_u16());
            resp
        }
    }
}

async fn run(
    p: &Publisher,
    headers: &HeaderMap,
    body: Body,
) -> Result<ingest::Counts, IngestError> {
    if !authorized(headers, p.settings.api_key.expose_secret()) {
        return Err(IngestError::InvalidToken);
    }
    // A body that stalls is cut off rather than holding the connection forever.
    let read = axum::body::to_bytes(body, p.settings.max_ingest_bytes);
    let bytes = tokio::time::timeout(BODY_TIMEOUT, read)
        .await
        .map_err(|_| IngestError::InvalidBody)?
        .map_err(|e| {
            if is_length_limit(&e) {
                IngestError::PayloadTooLarge
            } else {
                IngestError::InvalidBody
            }
        })?;
    ingest::ingest(p, &bytes).await
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// `Authorization: Bearer <PUBLISHER_API_KEY>`, compared by hash so timing reveals nothing.
fn authorized(headers: &HeaderMap, key: &str) -> bool {
    let Some(v) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let v = v.trim();
    if v.len() < 7 || !v[..6].eq_ignore_ascii_case("bearer") {
        return false;
    }
    let given = v[6..].trim();
    !key.is_empty() && Sha256::digest(given.as_bytes()) == Sha256::digest(key.as_bytes())
}
