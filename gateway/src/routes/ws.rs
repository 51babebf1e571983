//! `GET /ws/:instance`: every check of D1 in order, then the 101 only once the instance's
//! subscription is confirmed (step 9), so a client receives every event published after it.

use super::raw_instance;
use crate::auth::{self, decode_instance_name};
use crate::connection::{self, SessionIo};
use crate::error::ApiError;
use crate::outbox::Outbox;
use crate::resume::{self, Resume, Since};
use crate::state::AppState;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hyper::upgrade::{OnUpgrade, Parts};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;
use tungstenite::protocol::{Role, WebSocketConfig};

/// The upgrade handler: failures are ordinary HTTP responses, counted by status.
pub async fn upgrade(
    State(state): State<AppState>,
    version: Version,
    uri: Uri,
    headers: HeaderMap,
    peer: Option<axum::extract::Extension<ConnectInfo<SocketAddr>>>,
    mut request: Request,
) -> Response {
    // The upgrade is ours rather than axum's: the session needs the TCP stream itself.
    let ws = request.extensions_mut().remove::<OnUpgrade>();
    let peer = peer.map(|p| p.0 .0);
    // The checks' span: never the token, nor the URI (its query may hold one).
    let span = tracing::info_span!(
        "ws.upgrade",
        peer.addr = %peer.map(|p| p.to_string()).unwrap_or_default(),
        instance.name = tracing::field::Empty,
        instance.id = tracing::field::Empty,
        conn.id = tracing::field::Empty,
        http.status = tracing::field::Empty,
        error.message = tracing::field::Empty,
    );
    let result = accept(&state, version, &uri, &headers, peer, ws)
        .instrument(span.clone())
        .await;
    match result {
        Ok(resp) => {
            span.record("http.status", resp.status().as_u16());
            resp
        }
        Err(e) => {
            span.record("http.status", e.status().as_u16());
            span.record("error.message", tracing::field::display(&e));
            state.metrics.upgrade_rejected(e.status().as_u16());
            e.into_response()
        }
    }
}

async fn accept(
    state: &AppState,
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    ws: Option<OnUpgrade>,
) -> Result<Response, ApiError> {
    // Step 1 (rate limit) ran in the route layer.
    // Step 2: Origin.
    let origin = headers
        .get("origin")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let host = headers
        .get("host")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    if !state.origins.allows(origin.as_deref(), host.as_deref()) {
        tracing::warn!(
            "WebSocket upgrade blocked from origin {} (host {})",
            origin.as_deref().unwrap_or(""),
            host.as_deref().unwrap_or("")
        );
        return Err(ApiError::OriginForbidden);
    }
    // Step 3: a token from some source.
    let token = auth::extract_token(headers, uri.query()).ok_or(ApiError::MissingToken)?;
    // Steps 4 and 5: the token resolves, and the instance is in its scope.
    let name = decode_instance_name(raw_instance(uri.path(), "/ws/"));
    let upgrade_span = tracing::Span::current();
    upgrade_span.record("instance.name", name.as_deref().unwrap_or_default());
    let instance =
        auth::authorize(&state.store, Some(&state.cache), &token, name.as_deref()).await?;
    // Step 6: the config is enabled (only positive answers are cached, D30).
    if !state.cache.is_enabled(instance.id) {
        let id = instance.id;
        let enabled = state
            .cache
            .configs
            .run(id, || async move {
                Ok(state.store.get_config(id).await?.is_some_and(|c| c.enabled))
            })
            .await
            .map_err(ApiError::ConfigLookup)?;
        if !enabled {
            return Err(ApiError::WebSocketNotEnabled(instance.name.clone()));
        }
        state.cache.put_enabled(instance.id);
    }
    // Step 6b: a well-formed `since` (SPEC §5.7).
    let since = resume::parse_since(uri.query())?;
    // Step 7: a valid handshake (D23).
    check_handshake(version, headers)?;
    let on_upgrade = ws.ok_or(ApiError::InvalidHandshake)?;
    // Step 8: capacity (D26).
    let permit = state
        .connections
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::AtCapacity)?;
    // Step 9: the instance's subscription is confirmed.
    let mut membership = state
        .hub
        .join(instance.id)
        .await
        .map_err(|_| ApiError::StreamUnavailable)?;
    let limits = state.ws;
    let outbox = Arc::new(Outbox::new(limits.send_queue, limits.send_queue_bytes));
    let conn_id = match since {
        None => membership.attach(outbox.clone()),
        Some(_) => membership.attach_resumable(outbox.clone()),
    };
    // Attached first, so live frames queue while history is read: nothing falls in between.
    let resume = match since {
        None => Resume::default(),
        Some(Since::Now) => Resume::now(),
        Some(Since::After(offset)) => {
            let started = std::time::Instant::now();
            let history = state
                .hub
                .broker()
                .history_after(instance.id, offset, resume::MAX_REPLAY)
                .await;
            state.metrics.history_read(started.elapsed().as_secs_f64());
            Resume::after(offset, history)
        }
    };
    if since.is_some() {
        state.hub.broker().mark_resumable(instance.id);
    }
    upgrade_span.record("instance.id", tracing::field::display(instance.id));
    upgrade_span.record("conn.id", conn_id);
    // A root of its own: a connection lives for hours, its upgrade request for milliseconds.
    let span = tracing::info_span!(
        parent: None,
        "ws.connection",
        instance.id = %instance.id,
        conn.id = conn_id,
        peer.addr = %peer.map(|p| p.to_string()).unwrap_or_default(),
    );
    span.follows_from(&upgrade_span);
    let metrics = state.metrics.clone();
    let tracker_token = state.tasks.token();
    let config = WebSocketConfig::default()
        .read_buffer_size(limits.read_buffer)
        .write_buffer_size(limits.write_buffer)
        .max_write_buffer_size(limits.max_write_buffer)
        .max_message_size(Some(limits.read_frame_cap))
        .max_frame_size(Some(limits.read_frame_cap));
    let key = headers
        .get("sec-websocket-key")
        .ok_or(ApiError::InvalidHandshake)?;
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes().trim_ascii());
    let setup = Box::new(Setup {
        config,
        limits: limits.session,
        resume,
    });
    tokio::spawn(
        async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => return tracing::debug!(error = %e, "upgrade failed after 101"),
            };
            // The accept loop serves plain TCP (server.rs): anything else is a bug.
            // Destructured in the pattern: what is not taken is dropped here, not kept in the
            // task's state for the connection's life (64 bytes per connection).
            let Ok(Parts { io, read_buf, .. }) = upgraded.downcast::<TokioIo<TcpStream>>() else {
                return tracing::error!("upgraded connection is not a TCP stream");
            };
            outbox.connect(io.into_inner(), metrics.clone());
            let io = SessionIo::new(outbox.clone(), read_buf);
            let Setup {
                config,
                limits,
                resume,
            } = *setup;
            let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
            metrics.connection_opened();
            tracing::debug!("connection opened");
            let ended = connection::run(socket, outbox.clone(), limits, &metrics, resume).await;
            // Wakes any fan-out waiting for room in this outbox: the session is over.
            outbox.close(ryze_core::close::INTERNAL_ERROR);
            outbox.disconnect();
            metrics.connection_closed(ended.label());
            tracing::debug!(reason = ended.label(), "connection closed");
            // Held until here (or until an early return drops the task): the hub membership,
            // the capacity permit, and the tracker token that makes shutdown wait for this
            // session. Moved nowhere before, so the task stores each once.
            drop((membership, permit, tracker_token));
        }
        .instrument(span),
    );
    Ok((
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, "upgrade".to_owned()),
            (header::UPGRADE, "websocket".to_owned()),
            (header::SEC_WEBSOCKET_ACCEPT, accept),
        ],
    )
        .into_response())
}

/// D23: HTTP/1.1, `Upgrade: websocket`, `Connection: Upgrade` (tokens, any case), a
/// `Sec-WebSocket-Key` of 16 base64 bytes, and `Sec-WebSocket-Version: 13` (426 otherwise).
pub fn check_handshake(version: Version, headers: &HeaderMap) -> Result<(), ApiError> {
    let has_token = |name: &str, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    let key_ok = headers
        .get("sec-websocket-key")
        .and_then(|k| {
            base64::engine::general_purpose::STANDARD
                .decode(k.as_bytes().trim_ascii())
                .ok()
        })
        .is_some_and(|k| k.len() == 16);
    let version_header = headers.get("sec-websocket-version");
    if version != Version::HTTP_11
        || !has_token("upgrade", "websocket")
        || !has_token("connection", "upgrade")
        || !key_ok
        || version_header.is_none()
    {
        return Err(ApiError::InvalidHandshake);
    }
    if version_header.is_some_and(|v| v.as_bytes().trim_ascii() != b"13") {
        return Err(ApiError::UnsupportedVersion);
    }
    Ok(())
}

/// What only the start of a session needs (the WebSocket settings) or hands on to the
/// connection loop. Boxed until the upgrade completes: the session's task then stores 8
/// bytes for it instead of about 200 for the connection's whole life (an async block keeps
/// a slot for every capture, used or moved out).
struct Setup {
    config: WebSocketConfig,
    limits: connection::SessionLimits,
    resume: Resume,
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn good() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("upgrade", HeaderValue::from_static("WebSocket"));
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(
            "sec-websocket-key",
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        h.insert("sec-websocket-version", HeaderValue::from_static("13"));
        h
    }

    #[test]
    fn a_valid_handshake_passes() {
        assert!(check_handshake(Version::HTTP_11, &good()).is_ok());
    }

    #[test]
    fn each_broken_header_is_an_invalid_handshake() {
        for (name, value) in [
            ("upgrade", "h2c"),
            ("connection", "keep-alive"),
            ("sec-websocket-key", "c2hvcnQ="),
            ("sec-websocket-key", "!!!"),
        ] {
            let mut h = good();
            h.insert(name, HeaderValue::from_static(value));
            assert!(
                matches!(
                    check_handshake(Version::HTTP_11, &h),
                    Err(ApiError::InvalidHandshake)
                ),
                "{name}: {value}"
            );
        }
        let mut h = good();
        h.remove("sec-websocket-version");
        assert!(matches!(
            check_handshake(Version::HTTP_11, &h),
            Err(ApiError::InvalidHandshake)
        ));
        assert!(matches!(
            check_handshake(Version::HTTP_10, &good()),
            Err(ApiError::InvalidHandshake)
        ));
    }

    #[test]
    fn another_version_is_426() {
        let mut h = good();
        h.insert("sec-websocket-version", HeaderValue::from_static("8"));
        assert!(matches!(
            check_handshake(Version::HTTP_11, &h),
            Err(ApiError::UnsupportedVersion)
        ));
    }
}
