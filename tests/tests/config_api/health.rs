//! `GET /health` (§7, D16, D32): exact shape and key order, Redis check only when configured,
//! no auth and no rate limit.

use super::*;

/// Checks the body's exact key order and formats (`status, service, uptime, timestamp,
/// checks{db, redis?}`), and returns it parsed for the caller's value checks.
#[track_caller]
pub(super) fn assert_health_shape(reply: &Reply) -> Value {
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "{reply:?}"
    );
    assert!(
        !reply.has_rate_limit_headers(),
        "/health is not rate limited: {reply:?}"
    );
    let v = reply.json();
    let checks = &v["checks"];
    let checks_raw = match checks.get("redis") {
        Some(redis) => format!(r#"{{"db":{},"redis":{redis}}}"#, checks["db"]),
        None => format!(r#"{{"db":{}}}"#, checks["db"]),
    };
    let raw = format!(
        r#"{{"status":{},"service":"RyzeAPI","uptime":{},"timestamp":{},"checks":{checks_raw}}}"#,
        v["status"], v["uptime"], v["timestamp"]
    );
    assert_eq!(reply.body, raw, "key order or extra keys in /health");
    let uptime = v["uptime"].as_str().expect("uptime is a string");
    assert!(
        is_go_duration(uptime),
        "uptime {uptime:?} is not a Go duration"
    );
    let timestamp = v["timestamp"].as_str().expect("timestamp is a string");
    let at = parse_rfc3339_utc_seconds(timestamp)
        .unwrap_or_else(|| panic!("timestamp {timestamp:?} is not RFC 3339 UTC in whole seconds"));
    let now = unix_now().as_secs();
    assert!(
        at + 5 >= now && at <= now + 5,
        "timestamp {timestamp} is not now ({now})"
    );
    let healthy = checks
        .as_object()
        .expect("checks is an object")
        .values()
        .all(|c| c == "ok");
    if healthy {
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(v["status"], "ok");
    } else {
        assert_eq!(reply.status, 503, "{reply:?}");
        assert_eq!(v["status"], "degraded");
    }
    for (name, check) in checks.as_object().expect("checks is an object") {
        let check = check
            .as_str()
            .unwrap_or_else(|| panic!("check {name} not text"));
        assert!(
            check == "ok" || (check.starts_with("fail: ") && check.len() > 6),
            "check {name} is {check:?}"
        );
    }
    v
}

/// Go's `time.Duration.String()` for non-negative durations truncated to milliseconds (D32):
/// `0s`, `850ms`, `1.5s`, `2m0s`, `1h2m3.456s`.
fn is_go_duration(s: &str) -> bool {
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    let no_leading_zero = |d: &str| digits(d) && (d == "0" || !d.starts_with('0'));
    if s == "0s" {
        return true;
    }
    if let Some(ms) = s.strip_suffix("ms") {
        return no_leading_zero(ms) && ms != "0" && ms.len() <= 3;
    }
    let Some(rest) = s.strip_suffix('s') else {
        return false;
    };
    let (hours, rest) = match rest.split_once('h') {
        Some((h, r)) => (Some(h), r),
        None => (None, rest),
    };
    let (minutes, secs) = match rest.split_once('m') {
        Some((m, r)) => (Some(m), r),
        None => (None, rest),
    };
    if hours.is_some_and(|h| !no_leading_zero(h) || h == "0")
        || (hours.is_some() && minutes.is_none())
    {
        return false;
    }
    if let Some(m) = minutes {
        if !no_leading_zero(m) || m.parse::<u32>().map_or(true, |m| m > 59) {
            return false;
        }
        if hours.is_none() && m == "0" {
            return false;
        }
    }
    let (whole, frac) = match secs.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (secs, None),
    };
    if !no_leading_zero(whole) || whole.parse::<u32>().map_or(true, |s| s > 59) {
        return false;
    }
    // Below one second Go prints milliseconds.
    if minutes.is_none() && whole == "0" {
        return false;
    }
    frac.is_none_or(|f| digits(f) && f.len() <= 3 && !f.ends_with('0'))
}

/// `YYYY-MM-DDTHH:MM:SSZ` → Unix seconds.
fn parse_rfc3339_utc_seconds(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    // Days from civil (H. Hinnant).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + mi * 60 + sec).ok()
}

#[test]
fn go_duration_and_timestamp_checkers_accept_only_the_documented_forms() {
    for ok in [
        "0s",
        "1ms",
        "850ms",
        "1s",
        "1.5s",
        "59.999s",
        "2m0s",
        "1h0m0s",
        "12h34m56s",
    ] {
        assert!(is_go_duration(ok), "{ok}");
    }
    for bad in [
        "", "0", "0ms", "1000ms", "0.5s", "1.50s", "60s", "1m", "1h", "1h5s", "01s", "0m5s",
    ] {
        assert!(!is_go_duration(bad), "{bad}");
    }
    assert_eq!(parse_rfc3339_utc_seconds("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(
        parse_rfc3339_utc_seconds("2026-04-28T14:35:21Z"),
        Some(1_777_386_921)
    );
    assert_eq!(parse_rfc3339_utc_seconds("2026-04-28T14:35:21.5Z"), None);
    assert_eq!(parse_rfc3339_utc_seconds("2026-04-28T14:35:21+00:00"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_reports_db_and_redis_in_the_documented_order_and_is_not_rate_limited() {
    let db = migrated_db().await;
    let gw = gateway_on(
        &db.url,
        &unique_prefix(),
        &[("RATE_LIMIT_PER_MINUTE", "3".to_owned())],
    )
    .await;
    wait_for_window_with(Duration::from_secs(10)).await;
    // More requests than the limit, with and without tokens (a token is ignored, §7).
    for headers in [
        vec![],
        vec![("token", "not-a-token")],
        vec![("authorization", "Bearer not-a-token")],
        vec![],
    ] {
        let reply = request(&gw, Method::GET, "/health", &headers, None).await;
        let v = assert_health_shape(&reply);
        assert_eq!(reply.status, 200);
        assert_eq!(v["status"], "ok");
        assert_eq!(v["service"], "RyzeAPI");
        assert_eq!(v["checks"], json!({"db": "ok", "redis": "ok"}));
    }
    let reply = request(&gw, Method::GET, "/health?token=x", &[], None).await;
    assert_eq!(assert_health_shape(&reply)["status"], "ok");
    // None of the five counted against the IP's bucket: this is its first request.
    let reply = get_config(&gw, "x", &[]).await;
    assert_error(&reply, 401, INVALID_TOKEN);
    assert_eq!(reply.header("x-ratelimit-limit"), Some("3"));
    assert_eq!(reply.header("x-ratelimit-remaining"), Some("2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn health_without_redis_has_only_the_db_check() {
    let db = migrated_db().await;
    let env = [
        ("DATABASE_URL", db.url.clone()),
        ("EMBEDDED_PUBLISHER", "true".to_owned()),
        ("PUBLISHER_API_KEY", "test-publisher-key".to_owned()),
        ("PUBLIC_BASE_URL", "https://api.example.com".to_owned()),
    ];
    let gw = Service::spawn(Bin::Gateway, &[], &env)
        .await
        .expect("spawning the gateway");
    gw.wait_ready(WAIT).await.expect("gateway ready");
    let reply = request(&gw, Method::GET, "/health", &[], None).await;
    let v = assert_health_shape(&reply);
    assert_eq!(reply.status, 200);
    assert_eq!(v["checks"], json!({"db": "ok"}));
    assert!(
        reply.body.ends_with(r#","checks":{"db":"ok"}}"#),
        "{reply:?}"
    );

    // The config endpoints work the same without Redis (in-process rate counting, D33).
    let a = create_account(&db, None).await;
    create_instance(&db, &a, "solo", None).await;
    let t = tok(&a.token);
    let reply = post_config(&gw, "solo", &t, r#"{"enabled": true}"#).await;
    assert_configured(&reply, true, &[], false);
    assert_eq!(reply.header("x-ratelimit-limit"), Some("100"));
    assert_retrieved(&get_config(&gw, "solo", &t).await, true, &[], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_is_503_degraded_while_redis_is_down_and_recovers() {
    let db = migrated_db().await;
    let own_redis = ryze_tests::RedisServer::start()
        .await
        .expect("starting a private redis");
    let gw = gateway_on(&db.url, &unique_prefix(), &[("REDIS_URL", own_redis.url())]).await;
    let reply = request(&gw, Method::GET, "/health", &[], None).await;
    assert_eq!(
        assert_health_shape(&reply)["checks"],
        json!({"db": "ok", "redis": "ok"})
    );

    own_redis.stop().await.expect("stopping redis");
    let reply = request(&gw, Method::GET, "/health", &[], None).await;
    let v = assert_health_shape(&reply);
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(v["status"], "degraded");
    assert_eq!(v["checks"]["db"], "ok");
    let redis_check = v["checks"]["redis"].as_str().unwrap_or_default();
    assert!(redis_check.starts_with("fail: "), "{redis_check:?}");
    // REST keeps answering, counting per pod (D25).
    let reply = get_config(&gw, "x", &[]).await;
    assert_error(&reply, 401, INVALID_TOKEN);
    assert!(reply.has_rate_limit_headers(), "{reply:?}");

    own_redis.restart().await.expect("restarting redis");
    let v = eventually("/health recovered after Redis came back", WAIT, || async {
        let reply = request(&gw, Method::GET, "/health", &[], None).await;
        let v = assert_health_shape(&reply);
        if reply.status == 200 {
            Ok(v)
        } else {
            Err(format!("{reply:?}"))
        }
    })
    .await;
    assert_eq!(v["checks"], json!({"db": "ok", "redis": "ok"}));
}
