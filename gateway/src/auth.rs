//! Who is asking, and may they act on this instance (SPEC §2.2, §2.3, D2, D3, D18, D19).
//!
//! Tokens are secrets: they are hashed before they are used as keys and never logged.

mod cache;
#[cfg(test)]
pub(crate) mod properties;

pub use cache::AuthCache;

use crate::error::ApiError;
use axum::http::HeaderMap;
use percent_encoding::percent_decode_str;
use ryze_core::store::{InstanceRef, Principal, Store};

/// Longest instance name (in characters) that can name an instance (D18).
pub const MAX_INSTANCE_NAME_CHARS: usize = 128;

/// A token taken from a request. Deliberately not `Debug`/`Display`: it must never be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// The secret itself, for lookup.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({})", ryze_core::token::short_hash(&self.0))
    }
}

/// The token of a request: header `token`, then `Authorization: Bearer`, then `?token=`; the
/// first non-empty source wins, even if a later one would be valid (D2, D19).
pub fn extract_token(headers: &HeaderMap, query: Option<&str>) -> Option<Token> {
    if let Some(v) = headers.get("token") {
        let t = String::from_utf8_lossy(v.as_bytes());
        let t = t.trim();
        if !t.is_empty() {
            return Some(Token(t.to_owned()));
        }
    }
    if let Some(v) = headers.get(axum::http::header::AUTHORIZATION) {
        // Compared as bytes: a multi-byte character must never be split by slicing.
        let v = v.as_bytes().trim_ascii();
        if v.len() > 6 && v[..6].eq_ignore_ascii_case(b"bearer") && v[6].is_ascii_whitespace() {
            let t = String::from_utf8_lossy(v[6..].trim_ascii());
            if !t.is_empty() {
                return Some(Token(t.into_owned()));
            }
        }
    }
    let query = query?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
        .map(Token)
}

/// Decodes the `:instance` path segment once (D18): percent-decoded as UTF-8, `+` kept.
/// `None` when it cannot name an instance (invalid UTF-8 or over 128 characters).
pub fn decode_instance_name(raw: &str) -> Option<String> {
    let name = percent_decode_str(raw).decode_utf8().ok()?;
    if name.chars().count() > MAX_INSTANCE_NAME_CHARS {
        return None;
    }
    Some(name.into_owned())
}

/// Resolves the token and applies the ownership matrix (D3) for the named instance.
///
/// `name` is `None` when the path cannot name any instance (D18): no database query is made
/// for it. With a cache, positive results are reused for at most its TTL (D30).
pub async fn authorize(
    store: &Store,
    cache: Option<&AuthCache>,
    token: &Token,
    name: Option<&str>,
) -> Result<InstanceRef, ApiError> {
    let principal = match cache.and_then(|c| c.principal(token)) {
        Some(p) => p,
        None => {
            let lookup = || store.resolve_token(token.expose());
            let found = match cache {
                Some(c) => {
                    c.tokens
                        .run(ryze_core::token::hash(token.expose()), lookup)
                        .await
                }
                None => lookup().await,
            };
            let p = found
                .map_err(ApiError::InstanceLookup)?
                .ok_or(ApiError::InvalidToken)?;
            if let Some(c) = cache {
                c.put_principal(token, p.clone());
            }
            p
        }
    };
    match principal {
        Principal::Instance(instance) => match name {
            Some(name) if name == instance.name => Ok(instance),
            // Never reveal whether the name exists elsewhere.
            _ => Err(ApiError::InvalidToken),
        },
        Principal::Account { account_id } => {
            let name = name.ok_or(ApiError::InstanceNotFound)?;
            if let Some(found) = cache.and_then(|c| c.instance(account_id, name)) {
                return Ok(found);
            }
            let lookup = || store.find_instance(account_id, name);
            let found = match cache {
                Some(c) => c.instances.run((account_id, name.to_owned()), lookup).await,
                None => lookup().await,
            };
            let found = found
                .map_err(ApiError::InstanceLookup)?
                .ok_or(ApiError::InstanceNotFound)?;
            if let Some(c) = cache {
                c.put_instance(found.clone());
            }
            Ok(found)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn tok(h: &[(&str, &str)], q: Option<&str>) -> Option<String> {
        extract_token(&headers(h), q).map(|t| t.0)
    }

    #[test]
    fn token_header_wins_over_bearer_and_query() {
        let h = [("token", " a "), ("authorization", "Bearer b")];
        assert_eq!(tok(&h, Some("token=c")).as_deref(), Some("a"));
        assert_eq!(tok(&h[1..], Some("token=c")).as_deref(), Some("b"));
        assert_eq!(
            tok(&[], Some("x=1&token=c%2B1&token=d")).as_deref(),
            Some("c+1")
        );
    }

    #[test]
    fn empty_sources_are_absent_and_non_bearer_authorization_is_ignored() {
        assert_eq!(
            tok(&[("token", "  ")], Some("token=q")).as_deref(),
            Some("q")
        );
        assert_eq!(tok(&[("authorization", "Basic abc")], None), None);
        assert_eq!(tok(&[("authorization", "Bearer")], None), None);
        assert_eq!(tok(&[("authorization", "Bearerabc")], None), None);
        assert_eq!(
            tok(&[("authorization", "bEaReR\tabc")], None).as_deref(),
            Some("abc")
        );
        assert_eq!(tok(&[], Some("token=")), None);
        assert_eq!(
            tok(&[("token", "first"), ("token", "second")], None).as_deref(),
            Some("first")
        );
    }

    #[test]
    fn a_multi_byte_authorization_prefix_does_not_panic() {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_bytes("aaaaaé x".as_bytes()).unwrap(),
        );
        assert_eq!(extract_token(&h, None), None);
        h.insert(
            "authorization",
            HeaderValue::from_bytes("Bearer é".as_bytes()).unwrap(),
        );
        assert_eq!(extract_token(&h, None).map(|t| t.0).as_deref(), Some("é"));
    }

    #[test]
    fn instance_names_decode_once_and_keep_plus() {
        assert_eq!(
            decode_instance_name("Loja%20Centro").as_deref(),
            Some("Loja Centro")
        );
        assert_eq!(decode_instance_name("a+b").as_deref(), Some("a+b"));
        assert_eq!(decode_instance_name("%2541").as_deref(), Some("%41"));
        assert_eq!(decode_instance_name("%FF"), None);
        assert!(decode_instance_name(&"é".repeat(128)).is_some());
        assert_eq!(decode_instance_name(&"a".repeat(129)), None);
    }

    #[test]
    fn token_debug_shows_only_a_hash_prefix() {
        let t = Token("super-secret".into());
        assert!(!format!("{t:?}").contains("super-secret"));
    }
}
