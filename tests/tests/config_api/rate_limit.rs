//! The per-token fixed-window rate limit (§2.4, D8, D25), with a limit of 5 to stay fast.

use super::*;

const LIMIT: u64 = 5;
/// Every scenario here fits in this much of one window.
const SCENARIO: Duration = Duration::from_secs(10);

/// A ready gateway with limit 5 whose Redis command connection has answered a PING (a
/// `/health` with `checks.redis: ok`), so these scenarios do not depend on `/readyz` covering
/// that connection; `a_ready_gateway_counts_in_the_shared_bucket_from_its_first_request`
/// tests that on its own.
async fn limited_gateway(db: &TestDb, prefix: &str) -> Service {
    let gw = gateway_on(
        &db.url,
        prefix,
        &[("RATE_LIMIT_PER_MINUTE", LIMIT.to_string())],
    )
    .await;
    eventually("/health 200 with the Redis check ok", WAIT, || async {
        let reply = request(&gw, Method::GET, "/health", &[], None).await;
        if reply.status == 200 && reply.json()["checks"]["redis"] == "ok" {
            Ok(())
        } else {
            Err(format!("{reply:?}"))
        }
    })
    .await;
    gw
}

/// The headers of a counted request: limit, remaining, and a reset at the end of the current
/// 60 s window. Returns the reset.
#[track_caller]
fn assert_counted(reply: &Reply, remaining: u64, case: &str) -> u64 {
    assert_eq!(
        reply.number("x-ratelimit-limit"),
        LIMIT,
        "{case}: {reply:?}"
    );
    assert_eq!(
        reply.number("x-ratelimit-remaining"),
        remaining,
        "{case}: {reply:?}"
    );
    let reset = reply.number("x-ratelimit-reset");
    assert_eq!(reset % 60, 0, "{case}: reset {reset} is not a window end");
    let now = unix_now().as_secs();
    assert!(
        reset > now && reset <= now + 61,
        "{case}: reset {reset} is not the end of the current window (now {now})"
    );
    reset
}

/// The documented 429: body, `Retry-After` ≥ 1 matching the reset, remaining 0.
#[track_caller]
fn assert_limited(reply: &Reply, case: &str) -> u64 {
    assert_eq!(reply.status, 429, "{case}: {reply:?}");
    assert_error(reply, 429, RATE_LIMITED);
    let reset = assert_counted(reply, 0, case);
    let retry_after = reply.number("retry-after");
    let now = unix_now().as_secs();
    assert!(
        (1..=60).contains(&retry_after),
        "{case}: Retry-After {retry_after}"
    );
    assert!(
        retry_after + 1 >= reset.saturating_sub(now) && retry_after <= reset - now + 1,
        "{case}: Retry-After {retry_after} does not match reset {reset} (now {now})"
    );
    reset
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_come_on_successes_and_errors_and_the_request_over_the_limit_is_429() {
    let db = migrated_db().await;
    let a = create_account(&db, None).await;
    create_instance(&db, &a, "sales", None).await;
    let gw = limited_gateway(&db, &unique_prefix()).await;
    let t = tok(&a.token);
    wait_for_window_with(SCENARIO).await;

    // 200, 404, 400 and 404 all count against the token's bucket.
    let replies = [
        post_config(&gw, "sales", &t, r#"{"enabled": true}"#).await,
        get_config(&gw, "sales", &t).await,
        get_config(&gw, "missing", &t).await,
        post_config(&gw, "sales", &t, "not json").await,
        get_config(&gw, "sales", &t).await,
    ];
    assert_configured(&replies[0], true, &[], false);
    assert_retrieved(&replies[1], true, &[], false);
    assert_error(&replies[2], 404, INSTANCE_NOT_FOUND);
    assert_error(&replies[3], 400, INVALID_BODY);
    assert_retrieved(&replies[4], true, &[], false);
    let mut resets = Vec::new();
    for (i, reply) in replies.iter().enumerate() {
        let case = format!("request {}", i + 1);
        resets.push(assert_counted(reply, LIMIT - 1 - i as u64, &case));
        assert!(reply.header("retry-after").is_none(), "{case}: {reply:?}");
    }

    // The 6th is refused, on either endpoint, whatever would have followed (D20: rate limit
    // first, so even an invalid body or unknown instance answers 429).
    let over = [
        get_config(&gw, "sales", &t).await,
        post_config(&gw, "sales", &t, r#"{"enabled": false}"#).await,
        post_config(&gw, "sales", &t, "not json").await,
        get_config(&gw, "missing", &t).await,
    ];
    for (i, reply) in over.iter().enumerate() {
        resets.push(assert_limited(reply, &format!("request {}", i + 6)));
    }
    resets.dedup();
    assert_eq!(resets.len(), 1, "the scenario straddled two windows");
    // The refused POST changed nothing: the row is still enabled.
    let client = db.client().await.expect("connecting");
    let row = client
        .query_one("SELECT enabled FROM websocket_configs", &[])
        .await
        .expect("reading the row");
    assert!(row.get::<_, bool>(0), "a refused POST was saved");
    // Another token has its own bucket.
    let other = create_instance(&db, &a, "other", None).await;
    let reply = get_config(&gw, "sales", &tok(&other.token)).await;
    assert_error(&reply, 401, INVALID_TOKEN);
    assert_counted(&reply, LIMIT - 1, "another token");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_tokens_are_limited_per_token_before_they_are_judged() {
    let db = migrated_db().await;
    let gw = limited_gateway(&db, &unique_prefix()).await;
    wait_for_window_with(SCENARIO).await;
    let bad = tok("guess-1");
    for i in 0..LIMIT {
        let reply = get_config(&gw, "x", &bad).await;
        assert_error(&reply, 401, INVALID_TOKEN);
        assert_counted(&reply, LIMIT - 1 - i, &format!("guess-1 #{}", i + 1));
    }
    assert_limited(&get_config(&gw, "x", &bad).await, "guess-1 over the limit");
    // The same token by another source is the same bucket.
    let reply = get_config(&gw, "x?token=guess-1", &[]).await;
    assert_limited(&reply, "guess-1 by query");
    let reply = get_config(&gw, "x", &[("authorization", "Bearer guess-1")]).await;
    assert_limited(&reply, "guess-1 by Bearer");
    // Another token: a fresh bucket.
    let reply = get_config(&gw, "x", &tok("guess-2")).await;
    assert_error(&reply, 401, INVALID_TOKEN);
    assert_counted(&reply, LIMIT - 1, "guess-2");
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_without_a_token_share_the_client_ip_bucket() {
    let db = migrated_db().await;
    let a = create_account(&db, None).await;
    create_instance(&db, &a, "sales", None).await;
    let gw = limited_gateway(&db, &unique_prefix()).await;
    wait_for_window_with(SCENARIO).await;

    for i in 0..LIMIT {
        let reply = if i % 2 == 0 {
            get_config(&gw, "sales", &[]).await
        } else {
            // Ignored Authorization forms and empty sources are no token.
            let headers = [("authorization", "Basic dXNlcjpwYXNz"), ("token", "")];
            post_config(&gw, "sales?token=", &headers, r#"{"enabled": true}"#).await
        };
        assert_error(&reply, 401, INVALID_TOKEN);
        assert_counted(&reply, LIMIT - 1 - i, &format!("no token #{}", i + 1));
    }
    assert_limited(
        &get_config(&gw, "sales", &[]).await,
        "no token over the limit",
    );
    // /ws shares the bucket (D8): the upgrade without a token is refused at step 1.
    let reply = request(&gw, Method::GET, "/ws/sales", &[], None).await;
    assert_limited(&reply, "/ws without a token");

    // A token is its own bucket, not the IP's.
    let reply = get_config(&gw, "sales", &tok(&a.token)).await;
    assert_error(&reply, 404, NOT_CONFIGURED);
    assert_counted(&reply, LIMIT - 1, "with a token");
    // Routing failures and /health are neither limited nor counted (D8, D22).
    let reply = request(&gw, Method::GET, "/nope", &[], None).await;
    assert_error(&reply, 404, "Not found");
    assert!(!reply.has_rate_limit_headers(), "{reply:?}");
    let reply = request(&gw, Method::GET, "/health", &[], None).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(!reply.has_rate_limit_headers(), "{reply:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_gateways_share_one_tokens_bucket() {
    let db = migrated_db().await;
    let a = create_account(&db, None).await;
    create_instance(&db, &a, "sales", None).await;
    let prefix = unique_prefix();
    let (pod_a, pod_b) = tokio::join!(limited_gateway(&db, &prefix), limited_gateway(&db, &prefix));
    let t = tok(&a.token);
    let ok = r#"{"enabled": true}"#;
    wait_for_window_with(SCENARIO).await;

    // 2 on pod A, 3 on pod B: remaining counts down across both.
    let mut remaining = LIMIT;
    for (pod, name) in [
        (&pod_a, "A"),
        (&pod_a, "A"),
        (&pod_b, "B"),
        (&pod_b, "B"),
        (&pod_b, "B"),
    ] {
        remaining -= 1;
        let reply = post_config(pod, "sales", &t, ok).await;
        assert_configured(&reply, true, &[], false);
        assert_counted(&reply, remaining, &format!("pod {name}"));
    }
    // The next one is refused on either pod.
    assert_limited(
        &get_config(&pod_a, "sales", &t).await,
        "pod A over the limit",
    );
    assert_limited(
        &get_config(&pod_b, "sales", &t).await,
        "pod B over the limit",
    );
    // The IP bucket is shared too.
    for i in 0..LIMIT {
        let pod = if i < 2 { &pod_a } else { &pod_b };
        let reply = get_config(pod, "sales", &[]).await;
        assert_counted(&reply, LIMIT - 1 - i, &format!("no token #{}", i + 1));
    }
    assert_limited(&get_config(&pod_a, "sales", &[]).await, "no token, pod A");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ready_gateway_counts_in_the_shared_bucket_from_its_first_request() {
    let db = migrated_db().await;
    let a = create_account(&db, None).await;
    let t = tok(&a.token);
    // The window of exposure is short; a few pairs of fresh pods make it show reliably.
    for attempt in 1..=5 {
        let prefix = unique_prefix();
        let limit = [("RATE_LIMIT_PER_MINUTE", LIMIT.to_string())];
        let (pod_a, pod_b) = tokio::join!(
            gateway_on(&db.url, &prefix, &limit),
            gateway_on(&db.url, &prefix, &limit)
        );
        wait_for_window_with(SCENARIO).await;
        // Both pods are ready: their first requests land in one bucket.
        let first = get_config(&pod_a, "x", &t).await;
        let second = get_config(&pod_b, "x", &t).await;
        let case = format!("attempt {attempt}");
        assert_error(&first, 404, INSTANCE_NOT_FOUND);
        let reset = assert_counted(&first, LIMIT - 1, &format!("{case}, pod A first"));
        assert_eq!(
            second.number("x-ratelimit-reset"),
            reset,
            "{case}: window rolled over"
        );
        assert_counted(&second, LIMIT - 2, &format!("{case}, pod B second"));
    }
}
