//! Refusals before the upgrade (SPEC §5.1, D1, D9, D24, D26): exact statuses, bodies, order.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn every_refusal_before_the_upgrade_has_its_exact_status_and_body_in_check_order() {
    let env = Env::new().await;
    let sales = env.create_instance("sales").await;
    let other = env.create_instance("other").await;
    let loja = env.create_instance("Loja Centro").await;
    let gw = env.gateway(&[]).await;
    let account = env.account_token.as_str();
    configure(&gw, "sales", account, json!({"enabled": true})).await;
    configure(&gw, "Loja Centro", account, json!({"enabled": false})).await;
    let url = ws_url(&gw, "sales");

    // Routing (D12, D17): envelope, no rate-limit headers.
    for path in ["/ws/", "/ws/sales/", "/ws/a/b", "/WS/sales"] {
        let resp = ryze_tests::http()
            .get(gw.url(path))
            .header("token", account)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        assert!(resp.headers().get("x-ratelimit-limit").is_none(), "{path}");
        assert_eq!(resp.text().await.unwrap(), envelope("Not found"), "{path}");
    }
    let resp = ryze_tests::http()
        .post(gw.url("/ws/sales"))
        .header("token", account)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET");
    assert!(resp.headers().get("x-ratelimit-limit").is_none());
    assert_eq!(resp.text().await.unwrap(), envelope("Method not allowed"));
    for method in ["OPTIONS", "HEAD"] {
        let resp = raw_http(
            gw.addr(),
            &format!(
                "{method} /ws/sales HTTP/1.1\nHost: {}\ntoken: {account}",
                gw.addr()
            ),
        )
        .await;
        assert_eq!(resp.status, 405, "{method}");
        assert_eq!(resp.header("allow"), Some("GET"), "{method}");
    }

    // Step 2: a foreign Origin gets 403 with an empty body and the connection closed, even
    // with a valid token; a same-origin Origin (scheme ignored, D9) passes.
    let e = refused(
        &url,
        &[("token", account), ("Origin", "https://evil.example")],
    )
    .await;
    assert_eq!(e.status(), Some(403), "{e}");
    assert_eq!(e.body(), Some(""));
    let raw = raw_http_then_eof(
        gw.addr(),
        &upgrade_head(
            gw.addr(),
            "/ws/sales",
            &format!("Sec-WebSocket-Version: 13\ntoken: {account}\nOrigin: https://evil.example"),
        ),
    )
    .await;
    assert_eq!(raw.status, 403);
    assert_eq!(raw.body, "");
    assert_eq!(raw.header("connection"), Some("close"));
    assert!(raw.closed, "the 403 must close the TCP connection");
    gw.wait_for_log(
        &format!(
            "WebSocket upgrade blocked from origin https://evil.example (host {})",
            gw.addr()
        ),
        WAIT,
    )
    .await
    .unwrap();
    let same_origin = format!("https://{}", gw.addr());
    WsClient::connect(&url, &[("token", account), ("Origin", &same_origin)])
        .await
        .expect("same-origin upgrade")
        .close()
        .await
        .unwrap();
    // Origin (2) comes before the token (3).
    let e = refused(&url, &[("Origin", "https://evil.example")]).await;
    assert_eq!((e.status(), e.body()), (Some(403), Some("")));

    // Step 3: no token in any source (the limited route still carries X-RateLimit-*).
    let e = refused(&url, &[]).await;
    assert_refusal(
        &e,
        401,
        "Missing token in header, Authorization header, or query parameter",
    );
    assert!(e.header("x-ratelimit-limit").is_some(), "{e}");
    // Empty sources count as absent (D19).
    let e = refused(&format!("{url}?token="), &[("token", " ")]).await;
    assert_refusal(
        &e,
        401,
        "Missing token in header, Authorization header, or query parameter",
    );
    // A token that resolves to nothing (4), before the unknown instance (5).
    let e = refused(&ws_url(&gw, "nobody"), &[("token", "no-such-token")]).await;
    assert_refusal(&e, 401, "Invalid token");
    // The winning source is final: an invalid header token is not rescued by ?token= (D19).
    let e = refused(
        &format!("{url}?token={account}"),
        &[("token", "no-such-token")],
    )
    .await;
    assert_refusal(&e, 401, "Invalid token");
    let e = refused(
        &url,
        &[("Authorization", "Bearer no-such-token"), ("token", "")],
    )
    .await;
    assert_refusal(&e, 401, "Invalid token");
    // ...and a valid first source wins over invalid later ones.
    WsClient::connect(
        &format!("{url}?token=no-such-token"),
        &[
            ("token", account),
            ("Authorization", "Bearer no-such-token"),
        ],
    )
    .await
    .expect("the token header wins")
    .close()
    .await
    .unwrap();
    // Authorization counts only as Bearer: another scheme is ignored, not an error (D19).
    WsClient::connect(
        &format!("{url}?token={account}"),
        &[("Authorization", "Basic dXNlcjpwYXNz")],
    )
    .await
    .expect("Basic is ignored and the query token used")
    .close()
    .await
    .unwrap();

    // Step 5: scope.
    let e = refused(&ws_url(&gw, "nobody"), &[("token", account)]).await;
    assert_refusal(&e, 404, "Instance not found");
    let e = refused(&ws_url(&gw, "other"), &[("token", &sales.token)]).await;
    assert_refusal(&e, 401, "Invalid token");
    let e = refused(&ws_url(&gw, "nobody"), &[("token", &sales.token)]).await;
    assert_refusal(&e, 401, "Invalid token");
    // Names are case-sensitive (D18).
    let e = refused(&ws_url(&gw, "Sales"), &[("token", account)]).await;
    assert_refusal(&e, 404, "Instance not found");

    // Step 6: never configured, or disabled; the name is the percent-decoded path value.
    let e = refused(&ws_url(&gw, "other"), &[("token", account)]).await;
    assert_refusal(&e, 400, &not_enabled("other"));
    let e = refused(&ws_url(&gw, "other"), &[("token", &other.token)]).await;
    assert_refusal(&e, 400, &not_enabled("other"));
    let e = refused(&ws_url(&gw, "Loja Centro"), &[("token", &loja.token)]).await;
    assert!(ws_url(&gw, "Loja Centro").ends_with("/ws/Loja%20Centro"));
    assert_refusal(&e, 400, &not_enabled("Loja Centro"));

    // Step 7: handshake (D23), after scope and config.
    let plain = raw_http(
        gw.addr(),
        &format!(
            "GET /ws/sales HTTP/1.1\nHost: {}\ntoken: {account}",
            gw.addr()
        ),
    )
    .await;
    assert_eq!(
        (plain.status, plain.body.as_str()),
        (400, envelope("Invalid WebSocket handshake").as_str())
    );
    let short_key = raw_http(
        gw.addr(),
        &format!(
            "GET /ws/sales HTTP/1.1\nHost: {}\nUpgrade: websocket\nConnection: Upgrade\n\
             Sec-WebSocket-Key: c2hvcnQ=\nSec-WebSocket-Version: 13\ntoken: {account}",
            gw.addr()
        ),
    )
    .await;
    assert_eq!(
        (short_key.status, short_key.body.as_str()),
        (400, envelope("Invalid WebSocket handshake").as_str())
    );
    for (label, head) in [
        (
            "no version",
            upgrade_head(gw.addr(), "/ws/sales", &format!("token: {account}")),
        ),
        (
            "HTTP/1.0",
            upgrade_head(
                gw.addr(),
                "/ws/sales",
                &format!("Sec-WebSocket-Version: 13\ntoken: {account}"),
            )
            .replacen("HTTP/1.1", "HTTP/1.0", 1),
        ),
        (
            "Upgrade: h2c",
            upgrade_head(
                gw.addr(),
                "/ws/sales",
                &format!("Sec-WebSocket-Version: 13\ntoken: {account}"),
            )
            .replace("Upgrade: websocket", "Upgrade: h2c"),
        ),
    ] {
        let resp = raw_http(gw.addr(), &head).await;
        assert_eq!(
            (resp.status, resp.body.as_str()),
            (400, envelope("Invalid WebSocket handshake").as_str()),
            "{label}"
        );
    }
    // Header tokens are case-insensitive (D23).
    let mixed = raw_http(
        gw.addr(),
        &format!(
            "GET /ws/sales HTTP/1.1\nHost: {}\nUpgrade: WebSocket\nConnection: keep-alive, upgrade\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\nSec-WebSocket-Version: 13\ntoken: {account}",
            gw.addr()
        ),
    )
    .await;
    assert_eq!(mixed.status, 101, "{mixed:?}");
    let v8 = raw_http(
        gw.addr(),
        &upgrade_head(
            gw.addr(),
            "/ws/sales",
            &format!("Sec-WebSocket-Version: 8\ntoken: {account}"),
        ),
    )
    .await;
    assert_eq!(
        (v8.status, v8.body.as_str()),
        (426, envelope("Unsupported WebSocket version").as_str())
    );
    assert_eq!(v8.header("sec-websocket-version"), Some("13"));
    assert_eq!(v8.header("content-type"), Some("application/json"));
    // Scope (5) and config (6) are checked before the handshake (7).
    let v8_unknown = raw_http(
        gw.addr(),
        &upgrade_head(
            gw.addr(),
            "/ws/nobody",
            &format!("Sec-WebSocket-Version: 8\ntoken: {account}"),
        ),
    )
    .await;
    assert_eq!(
        (v8_unknown.status, v8_unknown.body.as_str()),
        (404, envelope("Instance not found").as_str())
    );
    let v8_disabled = raw_http(
        gw.addr(),
        &upgrade_head(
            gw.addr(),
            "/ws/other",
            &format!("Sec-WebSocket-Version: 8\ntoken: {account}"),
        ),
    )
    .await;
    assert_eq!(
        (v8_disabled.status, v8_disabled.body.as_str()),
        (400, envelope(&not_enabled("other")).as_str())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn request_over_the_rate_limit_gets_429_before_origin_and_token_checks() {
    const LIMIT: usize = 3;
    let env = Env::new().await;
    env.create_instance("sales").await;
    let gw = env
        .gateway(&[
            ("RATE_LIMIT_PER_MINUTE", LIMIT.to_string()),
            ("TRUST_PROXY_HEADERS", "true".into()),
        ])
        .await;
    let url = ws_url(&gw, "sales");
    let missing = "Missing token in header, Authorization header, or query parameter";

    // A fixed window may end between two requests; then the attempt is repeated with a fresh
    // bucket (a new client IP via X-Forwarded-For, or a new token).
    let mut proven = false;
    for attempt in 0..3 {
        let ip = format!("10.9.{attempt}.1");
        let bogus = format!("bogus-{}", uuid::Uuid::new_v4());
        let mut resets = Vec::new();
        let mut outcomes = Vec::new();
        // Token-less requests share the IP's bucket; the one over the limit also has a
        // forbidden Origin: 429 wins over 403 and 401 (D1).
        for i in 0..=LIMIT {
            let mut headers = vec![("X-Forwarded-For", ip.as_str())];
            if i == LIMIT {
                headers.push(("Origin", "https://evil.example"));
            }
            let e = refused(&url, &headers).await;
            resets.push(e.header("x-ratelimit-reset").unwrap_or("").to_owned());
            outcomes.push(e);
        }
        // An invalid token's own bucket: 401 until the limit, then 429.
        let mut token_outcomes = Vec::new();
        for _ in 0..=LIMIT {
            let e = refused(&url, &[("token", &bogus), ("X-Forwarded-For", &ip)]).await;
            resets.push(e.header("x-ratelimit-reset").unwrap_or("").to_owned());
            token_outcomes.push(e);
        }
        if resets.iter().any(|r| r != &resets[0]) {
            continue;
        }
        for (i, e) in outcomes.iter().enumerate().take(LIMIT) {
            assert_refusal(e, 401, missing);
            assert_eq!(e.header("x-ratelimit-limit"), Some("3"));
            assert_eq!(
                e.header("x-ratelimit-remaining"),
                Some((LIMIT - 1 - i).to_string().as_str())
            );
        }
        for e in token_outcomes.iter().take(LIMIT) {
            assert_refusal(e, 401, "Invalid token");
        }
        for e in [&outcomes[LIMIT], &token_outcomes[LIMIT]] {
            assert_refusal(e, 429, "Rate limit exceeded. Try again later.");
            assert_eq!(e.header("x-ratelimit-limit"), Some("3"));
            assert_eq!(e.header("x-ratelimit-remaining"), Some("0"));
            let reset: u64 = resets[0].parse().unwrap();
            assert_eq!(reset % 60, 0, "windows align to Unix minutes (D25)");
            let retry: u64 = e.header("retry-after").unwrap().parse().unwrap();
            assert!((1..=60).contains(&retry), "Retry-After {retry}");
        }
        proven = true;
        break;
    }
    assert!(proven, "every attempt straddled a window boundary");
}

#[tokio::test(flavor = "multi_thread")]
async fn database_errors_before_the_upgrade_are_500_with_the_documented_messages() {
    let server = PgServer::start_private().await.unwrap();
    let db = server.fresh_database().await.unwrap();
    let env = Env::with(db.url, Some(redis().await.url()), None).await;
    let sales = env.create_instance("sales").await;
    // Positive lookups are cached (D30) for an hour here, so with the database down a cached
    // token reaches the later steps.
    let gw = env.gateway(&[("CONFIG_CACHE_TTL", "1h".into())]).await;
    configure(&gw, "sales", &env.account_token, json!({"enabled": false})).await;
    let url = ws_url(&gw, "sales");
    let e = refused(&url, &[("token", &sales.token)]).await;
    assert_refusal(&e, 400, &not_enabled("sales"));
    let e = refused(&url, &[("token", &env.account_token)]).await;
    assert_refusal(&e, 400, &not_enabled("sales"));

    server.stop().await.unwrap();
    // Step 4: an uncached token.
    let e = refused(&url, &[("token", "never-seen-token")]).await;
    assert_refusal(&e, 500, "Failed to get instance");
    // Step 5: a cached account token, an uncached instance name.
    let e = refused(&ws_url(&gw, "ghost"), &[("token", &env.account_token)]).await;
    assert_refusal(&e, 500, "Failed to get instance");
    // Step 6: a cached instance token; disabled configs are never cached, so it is read.
    let e = refused(&url, &[("token", &sales.token)]).await;
    assert_refusal(&e, 500, "Failed to get websocket configuration");

    server.start().await.unwrap();
    let what = "gateway recovered from the database outage (400, not 500)";
    let e = eventually(what, WAIT, || async {
        let e = refused(&url, &[("token", &sales.token)]).await;
        if e.status() == Some(400) {
            Ok(e)
        } else {
            Err(e.to_string())
        }
    })
    .await;
    assert_refusal(&e, 400, &not_enabled("sales"));
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_past_max_connections_is_503_server_at_capacity() {
    let env = Env::new().await;
    env.create_instance("sales").await;
    let gw = env.gateway(&[("MAX_CONNECTIONS", "1".into())]).await;
    configure(&gw, "sales", &env.account_token, json!({"enabled": true})).await;
    let url = ws_url(&gw, "sales");
    let first = connect(&gw, "sales", &env.account_token).await;

    let e = refused(&url, &[("token", &env.account_token)]).await;
    assert_refusal(&e, 503, "Server at capacity");
    // The handshake (7) is checked before capacity (8).
    let v8 = raw_http(
        gw.addr(),
        &upgrade_head(
            gw.addr(),
            "/ws/sales",
            &format!("Sec-WebSocket-Version: 8\ntoken: {}", env.account_token),
        ),
    )
    .await;
    assert_eq!(v8.status, 426);

    // The slot is released when the first client leaves.
    first.close().await.unwrap();
    let c = eventually("capacity freed", WAIT, || async {
        WsClient::connect(&url, &[("token", &env.account_token)])
            .await
            .map_err(|e| {
                assert_refusal(&e, 503, "Server at capacity");
                e.to_string()
            })
    })
    .await;
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_while_redis_is_down_is_503_event_stream_unavailable() {
    let private = RedisServer::start().await.unwrap();
    let db = pg().await.fresh_database().await.unwrap();
    let env = Env::with(db.url, Some(private.url()), None).await;
    env.create_instance("sales").await;
    let gw = env.gateway(&[]).await;
    configure(&gw, "sales", &env.account_token, json!({"enabled": true})).await;

    private.stop().await.unwrap();
    gw.wait_not_ready(WAIT).await.unwrap();
    let e = refused(&ws_url(&gw, "sales"), &[("token", &env.account_token)]).await;
    assert_refusal(&e, 503, "Event stream unavailable");
}

#[tokio::test(flavor = "multi_thread")]
async fn origin_allowlist_accepts_listed_and_same_origins_and_rejects_the_rest() {
    let env = Env::new().await;
    env.create_instance("sales").await;
    let listed = env
        .gateway(&[(
            "ALLOWED_WS_ORIGINS",
            " https://App.example.com/ , ,https://dash.example.com:8443".into(),
        )])
        .await;
    let any = env.gateway(&[("ALLOWED_WS_ORIGINS", "*".into())]).await;
    let same_only = env.gateway(&[]).await;
    configure(
        &listed,
        "sales",
        &env.account_token,
        json!({"enabled": true}),
    )
    .await;
    let token = env.account_token.as_str();
    // (gateway, Host or None for the real one, Origin, accepted)
    let cases: Vec<(&ryze_tests::Service, Option<&str>, &str, bool)> = vec![
        (&listed, None, "https://app.example.com", true),
        (&listed, None, "HTTPS://APP.EXAMPLE.COM", true),
        (&listed, None, "https://app.example.com/", true),
        (&listed, None, "https://dash.example.com:8443", true),
        (&listed, None, "https://dash.example.com", false),
        (&listed, None, "http://app.example.com", false),
        (&listed, None, "https://app.example.com.evil.test", false),
        (&listed, None, "null", false),
        (&any, None, "null", true),
        (&any, None, "https://anything.test", true),
        (&same_only, None, "https://app.example.com", false),
        // Same-origin: host and port against Host, default ports, scheme ignored (D9, D24).
        (&same_only, Some("example.com"), "http://example.com", true),
        (&same_only, Some("example.com"), "https://example.com", true),
        (
            &same_only,
            Some("Example.COM:443"),
            "https://example.com",
            true,
        ),
        (
            &same_only,
            Some("example.com:80"),
            "http://EXAMPLE.com:80",
            true,
        ),
        (
            &same_only,
            Some("example.com:8080"),
            "https://example.com:8080",
            true,
        ),
        (
            &same_only,
            Some("example.com:80"),
            "https://example.com",
            false,
        ),
        (
            &same_only,
            Some("example.com"),
            "https://other.example.com",
            false,
        ),
        (&listed, Some("example.com"), "https://example.com", true),
    ];
    for (gw, host, origin, accepted) in cases {
        let host = host.map_or_else(|| gw.addr().to_string(), str::to_owned);
        let head = format!(
            "GET /ws/sales HTTP/1.1\nHost: {host}\nUpgrade: websocket\nConnection: Upgrade\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\nSec-WebSocket-Version: 13\n\
             token: {token}\nOrigin: {origin}"
        );
        let resp = raw_http(gw.addr(), &head).await;
        if accepted {
            assert_eq!(
                resp.status, 101,
                "Origin {origin} with Host {host}: {resp:?}"
            );
        } else {
            assert_eq!(
                (resp.status, resp.body.as_str()),
                (403, ""),
                "Origin {origin} with Host {host}"
            );
        }
    }
    // X-Forwarded-Host is never used (D24).
    let resp = raw_http(
        same_only.addr(),
        &format!(
            "GET /ws/sales HTTP/1.1\nHost: {}\nX-Forwarded-Host: app.example.com\n\
             Upgrade: websocket\nConnection: Upgrade\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n\
             Sec-WebSocket-Version: 13\ntoken: {token}\nOrigin: https://app.example.com",
            same_only.addr()
        ),
    )
    .await;
    assert_eq!(resp.status, 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn instance_path_is_percent_decoded_once_and_matched_exactly() {
    let env = Env::new().await;
    let plus = env.create_instance("a+b").await;
    let accent = env.create_instance("café").await;
    let percent = env.create_instance("50%").await;
    let long = env.create_instance(&"n".repeat(129)).await;
    let gw = env.gateway(&[]).await;
    for name in ["a+b", "café", "50%"] {
        configure(&gw, name, &env.account_token, json!({"enabled": true})).await;
    }
    let account = env.account_token.as_str();
    let base = gw.ws_url("/ws/");
    for (path, token) in [
        ("a+b", account),
        ("a%2Bb", account),
        ("a%2bb", plus.token.as_str()),
        ("caf%C3%A9", account),
        ("caf%c3%a9", accent.token.as_str()),
        ("50%25", percent.token.as_str()),
    ] {
        WsClient::connect(&format!("{base}{path}"), &[("token", token)])
            .await
            .unwrap_or_else(|e| panic!("/ws/{path}: {e}"))
            .close()
            .await
            .unwrap();
    }
    for (path, token, status, message) in [
        ("a%20b", account, 404, "Instance not found"),
        ("a%20b", plus.token.as_str(), 401, "Invalid token"),
        ("50%2525", account, 404, "Instance not found"),
        ("CAF%C3%A9", account, 404, "Instance not found"),
        ("caf%E9", account, 404, "Instance not found"),
        ("caf%E9", accent.token.as_str(), 401, "Invalid token"),
    ] {
        let e = refused(&format!("{base}{path}"), &[("token", token)]).await;
        assert_refusal(&e, status, message);
    }
    // A name over 128 characters names no instance, even one that exists (D18).
    let long_path = format!("{base}{}", "n".repeat(129));
    let e = refused(&long_path, &[("token", account)]).await;
    assert_refusal(&e, 404, "Instance not found");
    let e = refused(&long_path, &[("token", &long.token)]).await;
    assert_refusal(&e, 401, "Invalid token");
    // 128 characters is still a name: it gets as far as the config check.
    env.create_instance(&"m".repeat(128)).await;
    let e = refused(&format!("{base}{}", "m".repeat(128)), &[("token", account)]).await;
    assert_refusal(&e, 400, &not_enabled(&"m".repeat(128)));
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_bucket_is_shared_by_every_pod_and_with_the_rest_api() {
    const LIMIT: usize = 4;
    let env = Env::new().await;
    env.create_instance("sales").await;
    let limit = [("RATE_LIMIT_PER_MINUTE", LIMIT.to_string())];
    let a = env.gateway(&limit).await;
    let b = env.gateway(&limit).await;
    let mut proven = false;
    for _ in 0..3 {
        let token = format!("bogus-{}", uuid::Uuid::new_v4());
        let mut statuses = Vec::new();
        let mut resets = Vec::new();
        for (i, gw) in [&a, &b, &a, &b, &b].into_iter().enumerate() {
            // Alternate REST and /ws on the same token.
            let (status, reset) = if i % 2 == 0 {
                let e = refused(&ws_url(gw, "sales"), &[("token", &token)]).await;
                (
                    e.status().unwrap(),
                    e.header("x-ratelimit-reset").map(str::to_owned),
                )
            } else {
                let resp = ryze_tests::http()
                    .get(gw.url("/api/events/getWebsocket/sales"))
                    .header("token", &token)
                    .send()
                    .await
                    .unwrap();
                let reset = resp
                    .headers()
                    .get("x-ratelimit-reset")
                    .map(|v| v.to_str().unwrap().to_owned());
                (resp.status().as_u16(), reset)
            };
            statuses.push(status);
            resets.push(reset);
        }
        if resets.iter().any(|r| r != &resets[0]) {
            continue;
        }
        assert_eq!(statuses, vec![401, 401, 401, 401, 429]);
        proven = true;
        break;
    }
    assert!(proven, "every attempt straddled a window boundary");
}
