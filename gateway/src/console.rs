//! The live event console (`GET /console`, `CONSOLE_ENABLED`): a static page embedded in the
//! binary, connecting to /ws like any browser client (same Origin rules, `?token=`).
//!
//! The page (inline CSS and JS, no CDN, no build step) loads the reference client
//! (`clients/js/ryze-events.js`, embedded too and served at [`CLIENT_PATH`]) to connect,
//! reconnect and resume with `since`; see `docs/console.md`. It holds the token in memory only,
//! so the headers below keep it that way: nothing is cached, no referrer leaves, and the CSP
//! allows no other origin to load code, no form submission (which could carry the token) and
//! no framing.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("console/index.html");

/// The reference client, byte for byte what `clients/js/` ships.
const CLIENT: &str = include_str!("../../clients/js/ryze-events.js");

/// Where the page imports the reference client from.
pub const CLIENT_PATH: &str = "/console/ryze-events.js";

/// Only the inline script and style, the reference client from this origin (`'self'`: module
/// scripts need a JavaScript MIME type, so no JSON endpoint can pass for code), and
/// WebSockets: `ws:`/`wss:` are listed beside `'self'` because browsers before CSP 3 do not
/// match `ws://` same-host URLs against `'self'`.
const CSP: &str = "default-src 'none'; connect-src 'self' ws: wss:; style-src 'unsafe-inline'; \
                   script-src 'self' 'unsafe-inline'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// Serves the page.
pub async fn page() -> Response {
    response()
}

/// Serves the reference client the page imports.
pub async fn client() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        CLIENT,
    )
        .into_response()
}

fn response() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        PAGE,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_is_served_with_a_csp_that_forbids_forms_and_framing() {
        let resp = response();
        let csp = resp.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.contains("form-action 'none'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
    }

    #[test]
    fn page_is_self_contained() {
        // No external script, style sheet or image: the CSP would block it anyway.
        for needle in [
            "src=\"http",
            "href=\"http",
            "<link",
            "@import",
            "localStorage",
            "sessionStorage",
            "console.log",
        ] {
            assert!(!PAGE.contains(needle), "the page contains {needle:?}");
        }
        assert!(PAGE.contains("aria-live"), "the status must be announced");
    }

    #[test]
    fn page_imports_the_embedded_reference_client() {
        assert!(
            PAGE.contains(&format!("from '{CLIENT_PATH}'")),
            "the page must import {CLIENT_PATH}"
        );
        assert!(CLIENT.contains("export function connect("));
    }

    #[tokio::test]
    async fn client_is_served_as_javascript() {
        let resp = client().await;
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(resp.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }
}
