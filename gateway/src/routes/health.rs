//! `GET /health` (SPEC §7, D16, D32): no auth, no rate limit; 503 `degraded` when a check fails.

use crate::error::json_response;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;
use std::time::{Duration, SystemTime};

/// Each check's upper bound (D32).
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize)]
struct Checks {
    db: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    redis: Option<String>,
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    service: &'static str,
    uptime: String,
    timestamp: String,
    checks: Checks,
}

async fn check<E: std::fmt::Display>(
    f: impl std::future::Future<Output = Result<(), E>>,
) -> String {
    match tokio::time::timeout(CHECK_TIMEOUT, f).await {
        Ok(Ok(())) => "ok".to_owned(),
        Ok(Err(e)) => format!("fail: {e}"),
        Err(_) => "fail: timeout".to_owned(),
    }
}

/// The health endpoint.
pub async fn health(State(state): State<AppState>) -> Response {
    let db = check(async { state.store.ping().await.map_err(|e| short_reason(&e)) });
    let redis = async {
        match state.hub.broker().redis() {
            None => None,
            Some(r) => Some(check(r.ping()).await),
        }
    };
    let (db, redis) = tokio::join!(db, redis);
    let ok = db == "ok" && redis.as_deref().is_none_or(|r| r == "ok");
    let body = Health {
        status: if ok { "ok" } else { "degraded" },
        service: "RyzeAPI",
        uptime: go_duration(state.started.elapsed()),
        timestamp: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        checks: Checks { db, redis },
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, serde_json::to_string(&body).unwrap_or_default())
}

/// A short reason for a public endpoint: `certificate not verified` for a refused TLS
/// certificate, else an I/O error's kind (`connection refused`), never a server message (those
/// can name users or databases).
fn short_reason(e: &(dyn std::error::Error + 'static)) -> String {
    if ryze_core::trust::is_certificate_error(e) {
        return "certificate not verified".to_owned();
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.kind().to_string();
        }
        source = s.source();
    }
    "unavailable".to_owned()
}

/// Go's `time.Duration.String()` of `d` truncated to milliseconds: `0s`, `850ms`, `2m0s`,
/// `1h2m3.456s`.
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, rem) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rem) = (rem / 60_000, rem % 60_000);
    let (s, frac) = (rem / 1000, rem % 1000);
    let mut secs = s.to_string();
    if frac > 0 {
        let f = format!("{frac:03}");
        secs.push('.');
        secs.push_str(f.trim_end_matches('0'));
    }
    match (h, m) {
        (0, 0) => format!("{secs}s"),
        (0, m) => format!("{m}m{secs}s"),
        (h, m) => format!("{h}h{m}m{secs}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_matches_go_duration_strings() {
        let ms = Duration::from_millis;
        assert_eq!(go_duration(ms(0)), "0s");
        assert_eq!(go_duration(Duration::from_micros(999)), "0s");
        assert_eq!(go_duration(ms(850)), "850ms");
        assert_eq!(go_duration(ms(1000)), "1s");
        assert_eq!(go_duration(ms(1500)), "1.5s");
        assert_eq!(go_duration(ms(120_000)), "2m0s");
        assert_eq!(go_duration(ms(3_723_456)), "1h2m3.456s");
        assert_eq!(go_duration(ms(45_296_000)), "12h34m56s");
        assert_eq!(go_duration(ms(3_600_000)), "1h0m0s");
    }
}
