//! The public router: exact paths (D17), the rate limit on the three limited routes (D8,
//! D22), and the routing guard that answers unknown paths and methods in the envelope (D12).

mod config_api;
mod health;
#[cfg(test)]
mod properties;
mod ws;

pub mod admin;

pub use ws::check_handshake;

use crate::auth;
use crate::error::ApiError;
use crate::ratelimit;
use crate::state::AppState;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::net::SocketAddr;

/// Extra routes mounted beside the contract's (embedded publisher, console).
#[derive(Default)]
pub struct Extras {
    /// `POST /v1/events` when the publisher is embedded.
    pub ingest: Option<Router>,
    /// `GET /console` (and the reference client it loads) when enabled.
    pub console: bool,
}

/// Builds the public router.
pub fn router(state: AppState, extras: Extras) -> Router {
    let limited = Router::new()
        .route("/ws/{instance}", get(ws::upgrade))
        .route(
            "/api/events/websocket/{instance}",
            post(config_api::configure),
        )
        .route("/api/events/getWebsocket/{instance}", get(config_api::read))
        .route_layer(middleware::from_fn_with_state(state.clone(), rate_limit));
    let mut app = limited.route("/health", get(health::health));
    if extras.console {
        app = app
            .route("/console", get(crate::console::page))
            .route(crate::console::CLIENT_PATH, get(crate::console::client));
    }
    let ingest = extras.ingest.is_some();
    let mut app = app.with_state(state).fallback(not_found);
    if let Some(ingest) = extras.ingest {
        app = app.merge(ingest);
    }
    let allow = move |path: &str| allowed_methods(path, ingest, extras.console);
    // A panic in a handler becomes 500 `Internal server error`, never a dropped connection.
    let app = app.layer(tower_http::catch_panic::CatchPanicLayer::custom(
        |_: Box<dyn std::any::Any + Send>| ApiError::Internal.into_response(),
    ));
    app.layer(middleware::from_fn(move |req: Request, next: Next| {
        guard(req, next, allow)
    }))
    // Outermost, per route: one span per request naming the matched route, never the URI
    // (`?token=`).
    .layer(ryze_telemetry::http_trace_layer())
}

/// The methods a known path accepts, or `None` for an unknown path.
fn allowed_methods(path: &str, ingest: bool, console: bool) -> Option<&'static str> {
    let one_segment = |prefix: &str| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
    };
    if one_segment("/ws/") || one_segment("/api/events/getWebsocket/") {
        Some("GET")
    } else if one_segment("/api/events/websocket/") {
        Some("POST")
    } else if path == "/health"
        || (console && (path == "/console" || path == crate::console::CLIENT_PATH))
    {
        Some("GET")
    } else if ingest && path == "/v1/events" {
        Some("POST")
    } else {
        None
    }
}

/// Answers 404/405 before routing, so HEAD and OPTIONS never reach a GET handler (D22) and
/// every routing failure uses the envelope without rate-limit headers.
async fn guard(req: Request, next: Next, allow: impl Fn(&str) -> Option<&'static str>) -> Response {
    let Some(methods) = allow(req.uri().path()) else {
        return ApiError::NotFound.into_response();
    };
    if req.method().as_str() != methods {
        let mut resp = ApiError::MethodNotAllowed.into_response();
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(methods));
        return resp;
    }
    next.run(req).await
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// Step 1 of every limited route: count the request against its token's (or IP's) bucket,
/// and put the `X-RateLimit-*` headers on whatever the route answers, 101 included.
async fn rate_limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let token = auth::extract_token(req.headers(), req.uri().query());
    let ip = client_ip(&req, state.trust_proxy_headers);
    let key = ratelimit::key_for(token.as_ref().map(|t| t.expose()), &ip);
    let decision = state.limiter.check(&key).await;
    let is_ws = req.method() == Method::GET && req.uri().path().starts_with("/ws/");
    let mut resp = if decision.allowed {
        next.run(req).await
    } else {
        if is_ws {
            state.metrics.upgrade_rejected(429);
        }
        let mut r = ApiError::RateLimited.into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, decision.retry_after.into());
        r
    };
    let h = resp.headers_mut();
    h.insert("x-ratelimit-limit", decision.limit.into());
    h.insert("x-ratelimit-remaining", decision.remaining.into());
    h.insert("x-ratelimit-reset", decision.reset.into());
    resp
}

fn client_ip(req: &Request, trust_proxy_headers: bool) -> String {
    if trust_proxy_headers {
        if let Some(first) = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
        {
            return first.to_owned();
        }
    }
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The raw (still percent-encoded) `:instance` segment of a limited route.
fn raw_instance<'a>(path: &'a str, prefix: &str) -> &'a str {
    path.strip_prefix(prefix).unwrap_or("")
}
