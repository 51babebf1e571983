//! The live event console (`GET /console`, `CONSOLE_ENABLED`): a static page embedded in the
//! binary, connecting to /ws like any browser client.

use axum::http::header;
use axum::response::IntoResponse;

const PAGE: &str = include_str!("console/index.html");

/// Serves the page.
pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        PAGE,
    )
}
