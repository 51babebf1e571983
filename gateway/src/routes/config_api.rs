//! `POST /api/events/websocket/:instance` and `GET /api/events/getWebsocket/:instance`
//! (SPEC §3, §4; D4, D5, D20, D21, D34). Both always read and write the database.

use super::raw_instance;
use crate::auth::{self, decode_instance_name};
use crate::error::{json_response, ApiError};
use crate::state::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use ryze_core::event::EventType;
use ryze_core::store::WsConfig;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

/// Largest POST body (D4).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Serialize)]
struct WebsocketJson {
    enabled: bool,
    events: Vec<&'static str>,
    #[serde(rename = "mediaBase64")]
    media_base64: bool,
}

#[derive(Serialize)]
struct Success {
    success: bool,
    message: &'static str,
    websocket: WebsocketJson,
}

fn success(message: &'static str, config: &WsConfig) -> Response {
    let body = Success {
        success: true,
        message,
        websocket: WebsocketJson {
            enabled: config.enabled,
            events: config.events.iter().map(|e| e.as_str()).collect(),
            media_base64: config.media_base64,
        },
    };
    json_response(
        StatusCode::OK,
        serde_json::to_string(&body).unwrap_or_default(),
    )
}

/// Creates or overwrites the config. Order (D20): token → instance → body → save.
pub async fn configure(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let token = auth::extract_token(&headers, uri.query()).ok_or(ApiError::InvalidToken)?;
    let name = decode_instance_name(raw_instance(uri.path(), "/api/events/websocket/"));
    let instance = auth::authorize(&state.store, None, &token, name.as_deref()).await?;
    // Read only after authorisation: unauthenticated bodies are never parsed.
    let bytes = tokio::time::timeout(
        state.http_header_timeout,
        axum::body::to_bytes(body, MAX_BODY_BYTES),
    )
    .await
    .map_err(|_| ApiError::InvalidBody)?
    .map_err(|_| ApiError::InvalidBody)?;
    let config = parse_body(&bytes).ok_or(ApiError::InvalidBody)?;
    let saved = state
        .store
        .upsert_config(instance.id, config)
        .await
        .map_err(ApiError::InstanceLookup)?;
    Ok(success("WebSocket configured successfully", &saved))
}

/// Reads the config; 404 when no row was ever written (never an implicit default).
pub async fn read(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = auth::extract_token(&headers, uri.query()).ok_or(ApiError::InvalidToken)?;
    let name = decode_instance_name(raw_instance(uri.path(), "/api/events/getWebsocket/"));
    let instance = auth::authorize(&state.store, None, &token, name.as_deref()).await?;
    let config = state
        .store
        .get_config(instance.id)
        .await
        .map_err(ApiError::ConfigLookup)?
        .ok_or(ApiError::WebSocketNotConfigured)?;
    Ok(success("WebSocket configuration retrieved", &config))
}

/// The POST body's fields as sent; `null` counts as omitted (D21).
#[derive(Default)]
struct PostBody {
    enabled: Option<bool>,
    events: Option<Vec<String>>,
    media_base64: Option<bool>,
}

impl<'de> Deserialize<'de> for PostBody {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PostBody;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<PostBody, M::Error> {
                let mut body = PostBody::default();
                let mut seen = std::collections::HashSet::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key.clone()) {
                        return Err(serde::de::Error::custom("duplicate key"));
                    }
                    match key.as_str() {
                        "enabled" => body.enabled = map.next_value()?,
                        "events" => body.events = map.next_value()?,
                        "mediaBase64" => body.media_base64 = map.next_value()?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(body)
            }
        }
        d.deserialize_map(V)
    }
}

/// D4/D21: an object; `enabled` a required boolean; `events` strings among the six, duplicates
/// removed keeping the first; `mediaBase64` a boolean; unknown fields ignored.
pub fn parse_body(bytes: &[u8]) -> Option<WsConfig> {
    // JSON text is UTF-8 (RFC 8259 §8.1). serde_json skips the contents of ignored fields
    // without checking them, so the whole body is checked up front.
    let text = std::str::from_utf8(bytes).ok()?;
    let body: PostBody = serde_json::from_str(text).ok()?;
    let enabled = body.enabled?;
    let mut events: Vec<EventType> = Vec::new();
    for name in body.events.unwrap_or_default() {
        let e = EventType::parse(&name)?;
        if !events.contains(&e) {
            events.push(e);
        }
    }
    Some(
        WsConfig {
            enabled,
            events,
            media_base64: body.media_base64.unwrap_or(false),
        }
        .normalized(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Option<WsConfig> {
        parse_body(s.as_bytes())
    }

    #[test]
    fn documented_bodies_persist_as_documented() {
        assert_eq!(
            parse(r#"{"enabled": true}"#),
            Some(WsConfig {
                enabled: true,
                events: vec![],
                media_base64: false
            })
        );
        assert_eq!(
            parse(
                r#"{"enabled": true, "events": ["message.status", "message.exchange", "message.status"], "mediaBase64": true}"#
            ),
            Some(WsConfig {
                enabled: true,
                events: vec![EventType::MessageStatus, EventType::MessageExchange],
                media_base64: true
            })
        );
        assert_eq!(
            parse(r#"{"enabled": false, "events": ["call.update"], "mediaBase64": true}"#),
            Some(WsConfig {
                enabled: false,
                events: vec![],
                media_base64: false
            })
        );
    }

    #[test]
    fn nulls_are_omitted_and_unknown_fields_ignored() {
        assert_eq!(
            parse(r#"{"enabled": true, "events": null, "mediaBase64": null, "x": [1]}"#),
            Some(WsConfig {
                enabled: true,
                events: vec![],
                media_base64: false
            })
        );
    }

    #[test]
    fn invalid_bodies_are_rejected() {
        for bad in [
            "",
            "[]",
            "null",
            "{",
            r#"{"enabled": null}"#,
            r#"{}"#,
            r#"{"enabled": "true"}"#,
            r#"{"enabled": true, "events": "message.status"}"#,
            r#"{"enabled": true, "events": ["message.unknown"]}"#,
            r#"{"enabled": false, "events": ["nope"]}"#,
            r#"{"enabled": true, "events": [1]}"#,
            r#"{"enabled": true, "mediaBase64": 1}"#,
            r#"{"enabled": true, "enabled": false}"#,
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn bodies_that_are_not_utf8_are_rejected_even_inside_ignored_fields() {
        for bad in [
            &b"{\"enabled\":true,\"x\":\"\xFF\xFE\"}"[..],
            &b"{\"enabled\":true,\"\xC3\":1}"[..],
            &b"{\"enabled\":true,\"x\":[\"\xED\xA0\x80\"]}"[..],
        ] {
            assert!(parse_body(bad).is_none(), "{bad:?}");
        }
        assert!(parse_body("{\"enabled\":true,\"x\":\"ação\"}".as_bytes()).is_some());
    }
}
