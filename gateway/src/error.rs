//! The one place where failures become HTTP responses (SPEC §2.1, D12, D22).
//!
//! Each variant's doc gives its status; its `Display` is the contract's exact message.
//! Causes of 500s are logged here, never sent.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ryze_core::store::StoreError;

/// Every error a client of the public listener can receive.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 429; the rate-limit middleware adds `Retry-After` and the `X-RateLimit-*` headers.
    #[error("Rate limit exceeded. Try again later.")]
    RateLimited,
    /// 403 with an empty body and `Connection: close` (the only body-less error).
    #[error("")]
    OriginForbidden,
    /// 401 on /ws when no source carries a token.
    #[error("Missing token in header, Authorization header, or query parameter")]
    MissingToken,
    /// 401.
    #[error("Invalid token")]
    InvalidToken,
    /// 404.
    #[error("Instance not found")]
    InstanceNotFound,
    /// 404 on GET: the instance never had a config row.
    #[error("WebSocket not configured for this instance")]
    WebSocketNotConfigured,
    /// 400 on /ws: no config, or disabled. Carries the decoded instance name.
    #[error("WebSocket is not enabled for this instance. Configure it first using POST /api/events/websocket/{0}")]
    WebSocketNotEnabled(String),
    /// 400 on POST.
    #[error("Invalid request body")]
    InvalidBody,
    /// 500: resolving the token or instance, or saving the config, failed.
    #[error("Failed to get instance")]
    InstanceLookup(#[source] StoreError),
    /// 500: reading the config failed.
    #[error("Failed to get websocket configuration")]
    ConfigLookup(#[source] StoreError),
    /// 400 on /ws: a malformed `since` (SPEC §5.7, checked right after step 6).
    #[error("Invalid since parameter")]
    InvalidSince,
    /// 400: not a valid WebSocket upgrade (D23).
    #[error("Invalid WebSocket handshake")]
    InvalidHandshake,
    /// 426 with `Sec-WebSocket-Version: 13`.
    #[error("Unsupported WebSocket version")]
    UnsupportedVersion,
    /// 503: `MAX_CONNECTIONS` reached (D26).
    #[error("Server at capacity")]
    AtCapacity,
    /// 503: the instance's fan-out subscription could not be confirmed in time (D26).
    #[error("Event stream unavailable")]
    StreamUnavailable,
    /// 404: unknown path (D12, D17).
    #[error("Not found")]
    NotFound,
    /// 405 with `Allow` (set by the router guard).
    #[error("Method not allowed")]
    MethodNotAllowed,
    /// 500: anything unexpected.
    #[error("Internal server error")]
    Internal,
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            RateLimited => StatusCode::TOO_MANY_REQUESTS,
            OriginForbidden => StatusCode::FORBIDDEN,
            MissingToken | InvalidToken => StatusCode::UNAUTHORIZED,
            InstanceNotFound | WebSocketNotConfigured | NotFound => StatusCode::NOT_FOUND,
            WebSocketNotEnabled(_) | InvalidBody | InvalidHandshake | InvalidSince => {
                StatusCode::BAD_REQUEST
            }
            InstanceLookup(_) | ConfigLookup(_) | Internal => StatusCode::INTERNAL_SERVER_ERROR,
            UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            AtCapacity | StreamUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }
}

/// The error envelope `{"success":false,"error":{"message":...}}`, compact, keys in order.
pub fn envelope(status: StatusCode, message: &str) -> Response {
    let body = ryze_core::envelope::error_json(message);
    json_response(status, body)
}

/// A compact JSON response with `Content-Type: application/json`.
pub fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::InstanceLookup(cause) | ApiError::ConfigLookup(cause) => {
                tracing::error!(error = %cause, error.chain = ?cause, "{self}");
            }
            _ => {}
        }
        let status = self.status();
        match self {
            ApiError::OriginForbidden => (
                status,
                [(header::CONNECTION, HeaderValue::from_static("close"))],
            )
                .into_response(),
            ApiError::UnsupportedVersion => {
                let mut r = envelope(status, &self.to_string());
                r.headers_mut()
                    .insert("sec-websocket-version", HeaderValue::from_static("13"));
                r
            }
            other => envelope(status, &other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_enabled_message_names_the_instance() {
        assert_eq!(
            ApiError::WebSocketNotEnabled("Loja Centro".into()).to_string(),
            "WebSocket is not enabled for this instance. Configure it first using POST /api/events/websocket/Loja Centro"
        );
    }
}
