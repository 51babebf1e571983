//! Exact routing (D12, D17, D22): unknown paths 404 `Not found`, wrong methods 405 with `Allow`,
//! no CORS, and neither carries rate-limit headers.

use super::*;

/// An unknown path or method must not count or carry `X-RateLimit-*` (D22).
#[track_caller]
fn assert_routing_error(reply: &Reply, status: u16, message: &str, case: &str) {
    assert_eq!(reply.status, status, "{case}: {reply:?}");
    assert_error(reply, status, message);
    assert!(
        !reply.has_rate_limit_headers(),
        "{case}: rate-limit headers on a routing failure: {reply:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_paths_are_404_not_found_without_rate_limit_headers() {
    let w = world("x").await;
    let t = w.account.token.as_str();
    let paths = [
        "/",
        "/nope",
        "/api",
        "/api/events",
        "/api/events/websocket",
        "/api/events/websocket/",
        "/api/events/websocket/x/",
        "/api/events/websocket/x/y",
        "/api/events/getWebsocket",
        "/api/events/getWebsocket/",
        "/api/events/getWebsocket/x/",
        "/api/events/getWebsocket/x/y",
        "/api/events/getwebsocket/x",
        "/api/events/GetWebsocket/x",
        "/API/events/getWebsocket/x",
        "/api/events/websocket-read/x",
        "/websocket/x",
        "/getWebsocket/x",
        "/ws",
        "/ws/",
        "/ws/x/",
        "/ws/a/b",
        "/WS/x",
        "/health/",
        "/Health",
        "/healthz",
        "/readyz",
        "/metrics",
        "//api/events/getWebsocket/x",
    ];
    for path in paths {
        for method in [Method::GET, Method::POST] {
            let case = format!("{method} {path}");
            let reply = request(&w.gw, method, path, &[("token", t)], None).await;
            assert_routing_error(&reply, 404, "Not found", &case);
        }
    }
    // A query string does not change the route.
    let reply = request(&w.gw, Method::GET, "/nope?token=x", &[], None).await;
    assert_routing_error(&reply, 404, "Not found", "GET /nope?token=x");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_methods_on_known_paths_are_405_with_allow() {
    let w = world("x").await;
    let t = w.account.token.as_str();
    let cases: [(&str, &str, &[Method]); 4] = [
        (
            "/api/events/websocket/x",
            "POST",
            &[
                Method::GET,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
                Method::HEAD,
                Method::OPTIONS,
            ],
        ),
        (
            "/api/events/getWebsocket/x",
            "GET",
            &[
                Method::POST,
                Method::PUT,
                Method::DELETE,
                Method::HEAD,
                Method::OPTIONS,
            ],
        ),
        (
            "/ws/x",
            "GET",
            &[Method::POST, Method::HEAD, Method::OPTIONS],
        ),
        (
            "/health",
            "GET",
            &[Method::POST, Method::PUT, Method::HEAD, Method::OPTIONS],
        ),
    ];
    for (path, allow, methods) in cases {
        for method in methods {
            let case = format!("{method} {path}");
            let reply = request(&w.gw, method.clone(), path, &[("token", t)], None).await;
            assert_eq!(reply.status, 405, "{case}: {reply:?}");
            assert_eq!(reply.header("allow"), Some(allow), "{case}: {reply:?}");
            assert!(
                !reply.has_rate_limit_headers(),
                "{case}: rate-limit headers on a 405: {reply:?}"
            );
            if *method == Method::HEAD {
                // A HEAD response has no body; its headers still describe the envelope.
                assert_eq!(reply.body, "", "{case}");
                assert_eq!(reply.header("content-type"), Some("application/json"));
            } else {
                assert_routing_error(&reply, 405, "Method not allowed", &case);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_preflights_get_405_and_no_response_carries_cors_headers() {
    let w = world("x").await;
    let t = w.account.token.as_str();
    let origin = ("origin", "https://app.example.com");
    // `send` fails the test on any Access-Control-* header; these requests invite them.
    for (path, allow) in [
        ("/api/events/websocket/x", "POST"),
        ("/api/events/getWebsocket/x", "GET"),
        ("/health", "GET"),
    ] {
        let headers = [
            origin,
            ("access-control-request-method", allow),
            ("access-control-request-headers", "token, content-type"),
        ];
        let reply = request(&w.gw, Method::OPTIONS, path, &headers, None).await;
        assert_routing_error(&reply, 405, "Method not allowed", path);
        assert_eq!(reply.header("allow"), Some(allow));
    }
    let with_origin = [origin, ("token", t)];
    let reply = post_config(&w.gw, "x", &with_origin, r#"{"enabled": true}"#).await;
    assert_configured(&reply, true, &[], false);
    assert_retrieved(
        &get_config(&w.gw, "x", &with_origin).await,
        true,
        &[],
        false,
    );
    let reply = get_config(&w.gw, "x", &[origin]).await;
    assert_error(&reply, 401, INVALID_TOKEN);
    let reply = request(&w.gw, Method::GET, "/health", &[origin], None).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let reply = request(&w.gw, Method::GET, "/nope", &[origin], None).await;
    assert_routing_error(&reply, 404, "Not found", "GET /nope");
}
