//! Ingest errors and their responses (CONTRACT §4), in the product's error envelope.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Every error `POST /v1/events` can answer.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// 401: missing or wrong bearer key.
    #[error("Invalid token")]
    InvalidToken,
    /// 400: bad JSON, unknown event, missing field, over 1000 items.
    #[error("Invalid request body")]
    InvalidBody,
    /// 413: over `MAX_INGEST_BYTES`.
    #[error("Payload too large")]
    PayloadTooLarge,
    /// 503: Redis (or Postgres, for an uncached instance) unreachable; nothing was accepted.
    #[error("Failed to publish event")]
    PublishFailed(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let status = match &self {
            IngestError::InvalidToken => StatusCode::UNAUTHORIZED,
            IngestError::InvalidBody => StatusCode::BAD_REQUEST,
            IngestError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            IngestError::PublishFailed(cause) => {
                tracing::error!(error = %cause, "ingest failed: event bus or database unavailable");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            ryze_core::envelope::error_json(&self.to_string()),
        )
            .into_response()
    }
}
