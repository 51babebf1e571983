//! Property tests (issue 10, item 7) of the gateway's request parsing, against its public
//! functions: token extraction (`ryze_gateway::auth::extract_token`, SPEC D2/D19), instance
//! name decoding (`decode_instance_name`, D18), the Origin allowlist (`OriginPolicy`, D9/D24)
//! and handshake validation (`routes::check_handshake`, D23). None of them may panic on any
//! input, and each agrees with a small model of its rule.
//!
//! The POST body parser (`routes::config_api::parse_body`) is `pub` inside a private module,
//! so it is tested through HTTP instead: generated bodies against a running gateway (D4, D21).
//! Re-exporting it (`pub use config_api::parse_body;` in `gateway/src/routes.rs`, as is done
//! for `check_handshake`) would let it be tested here directly, much faster.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue, Version};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use ryze_gateway::auth::{decode_instance_name, extract_token, MAX_INSTANCE_NAME_CHARS};
use ryze_gateway::error::ApiError;
use ryze_gateway::origin::OriginPolicy;
use ryze_gateway::routes::check_handshake;
use serde_json::json;

// ---------------------------------------------------------------------------------------
// Helpers

/// Percent-encodes every byte except RFC 3986 unreserved characters.
fn encode_all(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(b) {
                (*b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A header map from (name, value bytes) pairs; pairs `http` refuses are left out.
fn header_map(pairs: &[(String, Vec<u8>)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            map.append(n, v);
        }
    }
    map
}

/// A token without whitespace: URL-safe ASCII, sometimes with non-ASCII letters.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9._~-]{1,40}",
        "[A-Za-z0-9éü漢-]{1,20}",
        Just("a1b2c3d4-e5f6-7890-abcd-ef1234567890".to_owned()),
    ]
}

/// Spaces and tabs, possibly none.
fn blanks() -> impl Strategy<Value = String> {
    "[ \t]{0,3}"
}

/// A value of the `token` header: a token between blanks, or only blanks (= absent, D19).
#[derive(Debug, Clone)]
enum HeaderToken {
    Token(String, String, String),
    Blank(String),
}

impl HeaderToken {
    fn text(&self) -> String {
        match self {
            HeaderToken::Token(l, t, r) => format!("{l}{t}{r}"),
            HeaderToken::Blank(b) => b.clone(),
        }
    }
    fn token(&self) -> Option<String> {
        match self {
            HeaderToken::Token(_, t, _) => Some(t.clone()),
            HeaderToken::Blank(_) => None,
        }
    }
}

fn header_token() -> impl Strategy<Value = HeaderToken> {
    prop_oneof![
        3 => (blanks(), token(), blanks()).prop_map(|(l, t, r)| HeaderToken::Token(l, t, r)),
        1 => blanks().prop_map(HeaderToken::Blank),
    ]
}

/// An `Authorization` value: `Bearer` in any case + whitespace + token, or another form that
/// must be ignored (D19).
#[derive(Debug, Clone)]
enum Authorization {
    Bearer(String, String, String),
    Ignored(String),
}

impl Authorization {
    fn text(&self) -> String {
        match self {
            Authorization::Bearer(scheme, gap, t) => format!("{scheme}{gap}{t}"),
            Authorization::Ignored(v) => v.clone(),
        }
    }
    fn token(&self) -> Option<String> {
        match self {
            Authorization::Bearer(_, _, t) => Some(t.clone()),
            Authorization::Ignored(_) => None,
        }
    }
}

fn authorization() -> impl Strategy<Value = Authorization> {
    prop_oneof![
        3 => ("[bB][eE][aA][rR][eE][rR]", "[ \t]{1,3}", token())
            .prop_map(|(s, g, t)| Authorization::Bearer(s, g, t)),
        1 => prop_oneof![
            token().prop_map(|t| format!("Basic {t}")),
            token().prop_map(|t| format!("Bearer{t}")),
            token().prop_map(|t| format!("Token {t}")),
            Just("Bearer".to_owned()),
            Just("Bearer   ".to_owned()),
            Just(String::new()),
        ]
        .prop_map(Authorization::Ignored),
    ]
}

/// A query string with zero or more `token` parameters among others. Returns the query and
/// the first `token` value (form-decoded; `Some("")` when that first value is empty).
fn query() -> impl Strategy<Value = (String, Option<String>)> {
    let param = prop_oneof![
        // token=<value>, the value percent-encoded or with `+` for spaces.
        (any::<String>(), any::<bool>()).prop_map(|(v, plus)| {
            let encoded = if plus && !v.contains('+') {
                encode_all(v.as_bytes()).replace("%20", "+")
            } else {
                encode_all(v.as_bytes())
            };
            (format!("token={encoded}"), Some(v))
        }),
        ("[a-z]{1,6}", "[a-z0-9]{0,6}")
            .prop_filter("not token", |(k, _)| k != "token")
            .prop_map(|(k, v)| (format!("{k}={v}"), None)),
    ];
    prop::collection::vec(param, 0..4).prop_map(|params| {
        let first = params.iter().find_map(|(_, v)| v.clone());
        let text = params
            .iter()
            .map(|(p, _)| p.as_str())
            .collect::<Vec<_>>()
            .join("&");
        (text, first)
    })
}

// ---------------------------------------------------------------------------------------
// Token extraction (D2, D19)

proptest! {
    #![proptest_config(Config::with_cases(512))]

    #[test]
    fn extract_token_never_panics_on_any_headers_or_query(
        headers in prop::collection::vec(
            (
                prop_oneof![
                    Just("token".to_owned()),
                    Just("authorization".to_owned()),
                    Just("x-other".to_owned()),
                ],
                prop::collection::vec(any::<u8>(), 0..64),
            ),
            0..6,
        ),
        query in proptest::option::of(any::<String>()),
    ) {
        let _ = extract_token(&header_map(&headers), query.as_deref());
    }

    #[test]
    fn header_token_beats_bearer_beats_query_and_the_first_non_empty_source_wins(
        tokens in prop::collection::vec(header_token(), 0..3),
        auths in prop::collection::vec(authorization(), 0..3),
        (query, query_token) in query(),
        with_query in any::<bool>(),
    ) {
        let mut pairs = Vec::new();
        for t in &tokens {
            pairs.push(("token".to_owned(), t.text().into_bytes()));
        }
        for a in &auths {
            pairs.push(("authorization".to_owned(), a.text().into_bytes()));
        }
        let headers = header_map(&pairs);
        let query = with_query.then_some(query);
        // The model: only the first `token` header and the first `Authorization` header
        // count; a blank source is absent; the first present source is final (D19).
        let expected = tokens
            .first()
            .and_then(HeaderToken::token)
            .or_else(|| auths.first().and_then(Authorization::token))
            .or_else(|| {
                query
                    .as_ref()
                    .and(query_token.clone())
                    .filter(|t| !t.is_empty())
            });
        let got = extract_token(&headers, query.as_deref()).map(|t| t.expose().to_owned());
        prop_assert_eq!(got, expected);
    }
}

// ---------------------------------------------------------------------------------------
// Instance names (D18)

proptest! {
    #![proptest_config(Config::with_cases(512))]

    #[test]
    fn decode_instance_name_never_panics(raw in any::<String>()) {
        let _ = decode_instance_name(&raw);
    }

    #[test]
    fn percent_encoded_names_up_to_128_characters_decode_to_themselves(
        name in prop::collection::vec(any::<char>(), 0..=MAX_INSTANCE_NAME_CHARS)
            .prop_map(|c| c.into_iter().collect::<String>()),
    ) {
        prop_assert_eq!(decode_instance_name(&encode_all(name.as_bytes())), Some(name.clone()));
        // Raw `+` and unreserved characters stay as they are (no form decoding).
        let partly = name.replace('%', "%25");
        prop_assert_eq!(decode_instance_name(&partly), Some(name));
    }

    #[test]
    fn names_over_128_characters_name_nothing(
        name in prop::collection::vec(any::<char>(), MAX_INSTANCE_NAME_CHARS + 1..300)
            .prop_map(|c| c.into_iter().collect::<String>()),
    ) {
        prop_assert_eq!(decode_instance_name(&encode_all(name.as_bytes())), None);
    }

    #[test]
    fn names_that_decode_to_invalid_utf8_name_nothing(
        bytes in prop::collection::vec(any::<u8>(), 1..64)
            .prop_filter("invalid UTF-8", |b| std::str::from_utf8(b).is_err()),
    ) {
        prop_assert_eq!(decode_instance_name(&encode_all(&bytes)), None);
    }

    #[test]
    fn names_are_decoded_exactly_once(
        name in "[a-zA-Z0-9 %+/é]{0,20}",
    ) {
        let once = encode_all(name.as_bytes());
        let twice = encode_all(once.as_bytes());
        prop_assert_eq!(decode_instance_name(&twice), Some(once));
    }
}

// ---------------------------------------------------------------------------------------
// Origin allowlist (D9, D24)

fn host() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,10}(\\.[a-z][a-z0-9-]{0,10}){0,2}"
}

/// Upper-cases the characters whose bit in `mask` is set.
fn recase(s: &str, mask: u64) -> String {
    s.chars()
        .enumerate()
        .map(|(i, c)| {
            if mask >> (i % 64) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(Config::with_cases(512))]

    #[test]
    fn origin_policy_never_panics(
        list in proptest::option::of(any::<String>()),
        origin in proptest::option::of(any::<String>()),
        host in proptest::option::of(any::<String>()),
    ) {
        let _ = OriginPolicy::parse(list.as_deref()).allows(origin.as_deref(), host.as_deref());
    }

    #[test]
    fn a_request_without_origin_is_always_accepted(
        list in proptest::option::of(any::<String>()),
        host in proptest::option::of(any::<String>()),
    ) {
        prop_assert!(OriginPolicy::parse(list.as_deref()).allows(None, host.as_deref()));
    }

    #[test]
    fn star_accepts_every_origin(
        others in prop::collection::vec("[a-z:/.]{0,20}", 0..3),
        origin in any::<String>(),
        host in proptest::option::of(any::<String>()),
    ) {
        let mut entries = others;
        entries.push(" * ".to_owned());
        let policy = OriginPolicy::parse(Some(&entries.join(",")));
        prop_assert!(policy.allows(Some(&origin), host.as_deref()));
    }

    #[test]
    fn a_listed_origin_is_accepted_in_any_case_with_or_without_a_trailing_slash(
        https in any::<bool>(),
        h in host(),
        port in proptest::option::of(1u16..),
        list_mask in any::<u64>(),
        origin_mask in any::<u64>(),
        slash in any::<bool>(),
    ) {
        let scheme = if https { "https" } else { "http" };
        let origin = match port {
            Some(p) => format!("{scheme}://{h}:{p}"),
            None => format!("{scheme}://{h}"),
        };
        let listed = format!(" {}{} ,", recase(&origin, list_mask), if slash { "/" } else { "" });
        let policy = OriginPolicy::parse(Some(&listed));
        let sent = recase(&origin, origin_mask);
        prop_assert!(policy.allows(Some(&sent), Some("gateway.internal")));
        // Another host, not listed and not the Host, is refused.
        let other = format!("{scheme}://x{h}");
        prop_assert!(!policy.allows(Some(&other), Some("gateway.internal")));
    }

    #[test]
    fn same_origin_compares_host_and_port_ignoring_scheme_and_case(
        h in host(),
        port in 1u16..,
        https in any::<bool>(),
        mask in any::<u64>(),
    ) {
        let policy = OriginPolicy::parse(None);
        let scheme = if https { "https" } else { "http" };
        let default = if https { 443 } else { 80 };
        let host_header = format!("{h}:{port}");
        // Same host and port: accepted whatever the scheme or case.
        for s in ["http", "https", "ws", "wss"] {
            let origin = recase(&format!("{s}://{h}:{port}"), mask);
            prop_assert!(policy.allows(Some(&origin), Some(&host_header)), "{}", origin);
        }
        // Default ports are filled in on both sides.
        let bare = format!("{scheme}://{h}");
        let host_with_default = format!("{h}:{default}");
        let origin_with_default = format!("{bare}:{default}");
        prop_assert!(policy.allows(Some(&bare), Some(&host_with_default)));
        prop_assert!(policy.allows(Some(&origin_with_default), Some(&h)));
        prop_assert_eq!(policy.allows(Some(&bare), Some(&host_header)), port == default);
        // Another port or another host is refused.
        let other_port = format!("{scheme}://{h}:{}", if port == u16::MAX { 1 } else { port + 1 });
        let other_host = format!("{scheme}://a{h}:{port}");
        prop_assert!(!policy.allows(Some(&other_port), Some(&host_header)));
        prop_assert!(!policy.allows(Some(&other_host), Some(&host_header)));
        // Without a Host nothing is same-origin.
        prop_assert!(!policy.allows(Some(&bare), None));
    }
}

// ---------------------------------------------------------------------------------------
// Handshake (D23)

/// The four handshake headers, each valid in some spelling.
#[derive(Debug, Clone)]
struct Handshake {
    upgrade: String,
    connection: String,
    key: String,
    version: String,
}

fn valid_handshake() -> impl Strategy<Value = Handshake> {
    let upgrade = (
        "[wW][eE][bB][sS][oO][cC][kK][eE][tT]",
        "(h2c, )?",
        "(, foo)?",
    )
        .prop_map(|(ws, before, after)| format!("{before}{ws}{after}"));
    let connection = (
        "[uU][pP][gG][rR][aA][dD][eE]",
        "(keep-alive, ?)?",
        "(, close)?",
    )
        .prop_map(|(up, before, after)| format!("{before}{up}{after}"));
    let key = (any::<[u8; 16]>(), blanks(), blanks()).prop_map(|(k, l, r)| {
        format!(
            "{l}{}{r}",
            base64::engine::general_purpose::STANDARD.encode(k)
        )
    });
    let version = (blanks(), blanks()).prop_map(|(l, r)| format!("{l}13{r}"));
    (upgrade, connection, key, version).prop_map(|(upgrade, connection, key, version)| Handshake {
        upgrade,
        connection,
        key,
        version,
    })
}

impl Handshake {
    fn headers(&self, skip: Option<usize>) -> HeaderMap {
        let pairs: Vec<(String, Vec<u8>)> = [
            ("upgrade", &self.upgrade),
            ("connection", &self.connection),
            ("sec-websocket-key", &self.key),
            ("sec-websocket-version", &self.version),
        ]
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != skip)
        .map(|(_, (n, v))| ((*n).to_owned(), v.as_bytes().to_vec()))
        .collect();
        header_map(&pairs)
    }
}

fn http_version() -> impl Strategy<Value = Version> {
    prop_oneof![
        Just(Version::HTTP_09),
        Just(Version::HTTP_10),
        Just(Version::HTTP_11),
        Just(Version::HTTP_2),
        Just(Version::HTTP_3),
    ]
}

proptest! {
    #![proptest_config(Config::with_cases(512))]

    #[test]
    fn check_handshake_never_panics(
        version in http_version(),
        headers in prop::collection::vec(
            (
                prop_oneof![
                    Just("upgrade".to_owned()),
                    Just("connection".to_owned()),
                    Just("sec-websocket-key".to_owned()),
                    Just("sec-websocket-version".to_owned()),
                ],
                prop::collection::vec(any::<u8>(), 0..40),
            ),
            0..8,
        ),
    ) {
        let _ = check_handshake(version, &header_map(&headers));
    }

    #[test]
    fn a_valid_handshake_in_any_spelling_passes(h in valid_handshake()) {
        prop_assert!(check_handshake(Version::HTTP_11, &h.headers(None)).is_ok());
    }

    #[test]
    fn a_missing_header_or_another_http_version_is_an_invalid_handshake(
        h in valid_handshake(),
        skip in 0usize..4,
        version in http_version().prop_filter("not 1.1", |v| *v != Version::HTTP_11),
    ) {
        prop_assert!(matches!(
            check_handshake(Version::HTTP_11, &h.headers(Some(skip))),
            Err(ApiError::InvalidHandshake)
        ));
        prop_assert!(matches!(
            check_handshake(version, &h.headers(None)),
            Err(ApiError::InvalidHandshake)
        ));
    }

    #[test]
    fn a_key_that_is_not_16_bytes_is_an_invalid_handshake(
        h in valid_handshake(),
        key in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..40)
                .prop_filter("not 16 bytes", |k| k.len() != 16)
                .prop_map(|k| base64::engine::general_purpose::STANDARD.encode(k)),
            "[!-~]{0,30}".prop_filter("not base64 of 16 bytes", |k| {
                base64::engine::general_purpose::STANDARD
                    .decode(k.trim())
                    .map_or(true, |d| d.len() != 16)
            }),
        ],
    ) {
        let h = Handshake { key, ..h };
        prop_assert!(matches!(
            check_handshake(Version::HTTP_11, &h.headers(None)),
            Err(ApiError::InvalidHandshake)
        ));
    }

    #[test]
    fn a_version_other_than_13_is_426_unsupported(
        h in valid_handshake(),
        version in "[ -~]{0,8}".prop_filter("not 13", |v| v.trim() != "13"),
    ) {
        let h = Handshake { version, ..h };
        prop_assert!(matches!(
            check_handshake(Version::HTTP_11, &h.headers(None)),
            Err(ApiError::UnsupportedVersion)
        ));
    }
}

// ---------------------------------------------------------------------------------------
// POST body (D4, D21), through HTTP

const SIX: [&str; 6] = common::EVENTS;

/// One top-level member as generated: its JSON text, and what it means for validity.
#[derive(Debug, Clone)]
enum Enabled {
    Bool(bool),
    Other(&'static str),
}

#[derive(Debug, Clone)]
enum Events {
    Missing,
    Null,
    List(Vec<EventItem>),
    Other(&'static str),
}

#[derive(Debug, Clone)]
enum EventItem {
    Known(usize),
    Bad(&'static str),
}

#[derive(Debug, Clone)]
enum Media {
    Missing,
    Null,
    Bool(bool),
    Other(&'static str),
}

#[derive(Debug, Clone)]
struct Body {
    enabled: Option<Enabled>,
    events: Events,
    media: Media,
    unknown: Vec<(String, &'static str)>,
    duplicate: Option<usize>,
    order: Vec<usize>,
}

fn body() -> impl Strategy<Value = Body> {
    let enabled = proptest::option::weighted(
        0.9,
        prop_oneof![
            4 => any::<bool>().prop_map(Enabled::Bool),
            1 => prop::sample::select(vec!["null", "\"true\"", "1", "[]", "{}"]).prop_map(Enabled::Other),
        ],
    );
    let item = prop_oneof![
        4 => (0usize..6).prop_map(EventItem::Known),
        1 => prop::sample::select(vec![
            "\"message.unknown\"", "\"\"", "\"Message.Status\"", "\" call.update\"", "1", "null",
            "true", "[\"call.update\"]",
        ])
        .prop_map(EventItem::Bad),
    ];
    let events = prop_oneof![
        1 => Just(Events::Missing),
        1 => Just(Events::Null),
        6 => prop::collection::vec(item, 0..8).prop_map(Events::List),
        1 => prop::sample::select(vec!["\"message.status\"", "{}", "1", "true"]).prop_map(Events::Other),
    ];
    let media = prop_oneof![
        1 => Just(Media::Missing),
        1 => Just(Media::Null),
        4 => any::<bool>().prop_map(Media::Bool),
        1 => prop::sample::select(vec!["0", "\"false\"", "[]"]).prop_map(Media::Other),
    ];
    let unknown = prop::collection::btree_map(
        "[a-z]{1,8}".prop_filter("unknown", |k| {
            !["enabled", "events", "mediaBase64"].contains(&k.as_str())
        }),
        prop::sample::select(vec![
            "1",
            "null",
            "\"x\"",
            "[1,{\"a\":[]}]",
            "{\"enabled\":false}",
        ]),
        0..3,
    )
    .prop_map(|m| m.into_iter().collect::<Vec<_>>());
    (
        enabled,
        events,
        media,
        unknown,
        proptest::option::weighted(0.1, 0usize..3),
        Just((0..8).collect::<Vec<usize>>()).prop_shuffle(),
    )
        .prop_map(|(enabled, events, media, unknown, duplicate, order)| Body {
            enabled,
            events,
            media,
            unknown,
            duplicate,
            order,
        })
}

impl Body {
    fn json(&self) -> String {
        let mut members: Vec<String> = Vec::new();
        match &self.enabled {
            Some(Enabled::Bool(b)) => members.push(format!(r#""enabled":{b}"#)),
            Some(Enabled::Other(v)) => members.push(format!(r#""enabled":{v}"#)),
            None => {}
        }
        match &self.events {
            Events::Missing => {}
            Events::Null => members.push(r#""events":null"#.to_owned()),
            Events::List(items) => {
                let items: Vec<String> = items
                    .iter()
                    .map(|i| match i {
                        EventItem::Known(k) => format!("\"{}\"", SIX[*k]),
                        EventItem::Bad(v) => (*v).to_owned(),
                    })
                    .collect();
                members.push(format!(r#""events":[{}]"#, items.join(",")));
            }
            Events::Other(v) => members.push(format!(r#""events":{v}"#)),
        }
        match &self.media {
            Media::Missing => {}
            Media::Null => members.push(r#""mediaBase64":null"#.to_owned()),
            Media::Bool(b) => members.push(format!(r#""mediaBase64":{b}"#)),
            Media::Other(v) => members.push(format!(r#""mediaBase64":{v}"#)),
        }
        for (k, v) in &self.unknown {
            members.push(format!(r#""{k}":{v}"#));
        }
        if let Some(d) = self.duplicate {
            let key = ["enabled", "events", "mediaBase64"][d];
            members.push(format!(r#""{key}":null"#));
        }
        // A permutation of the members (keys may come in any order).
        let mut ordered: Vec<(usize, String)> = members
            .into_iter()
            .enumerate()
            .map(|(i, m)| (self.order.iter().position(|o| *o == i).unwrap_or(i), m))
            .collect();
        ordered.sort();
        let members: Vec<String> = ordered.into_iter().map(|(_, m)| m).collect();
        format!("{{{}}}", members.join(","))
    }

    /// The persisted config per D4/D21, or `None` for 400 `Invalid request body`.
    fn expected(&self) -> Option<serde_json::Value> {
        let Some(Enabled::Bool(enabled)) = self.enabled else {
            return None;
        };
        let events: Vec<&str> = match &self.events {
            Events::Missing | Events::Null => Vec::new(),
            Events::Other(_) => return None,
            Events::List(items) => {
                let mut out: Vec<&str> = Vec::new();
                for i in items {
                    match i {
                        EventItem::Known(k) if !out.contains(&SIX[*k]) => out.push(SIX[*k]),
                        EventItem::Known(_) => {}
                        EventItem::Bad(_) => return None,
                    }
                }
                out
            }
        };
        let media = match self.media {
            Media::Missing | Media::Null => false,
            Media::Bool(b) => b,
            Media::Other(_) => return None,
        };
        // Whichever key is repeated, and in whatever order: 400 (D21).
        let repeated = match self.duplicate {
            Some(0) => self.enabled.is_some(),
            Some(1) => !matches!(self.events, Events::Missing),
            Some(_) => !matches!(self.media, Media::Missing),
            None => false,
        };
        if repeated {
            return None;
        }
        Some(if enabled {
            json!({"enabled": true, "events": events, "mediaBase64": media})
        } else {
            json!({"enabled": false, "events": [], "mediaBase64": false})
        })
    }
}

#[test]
fn post_config_bodies_are_validated_and_normalised_per_d4_and_d21() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (env, gw) = rt.block_on(async {
        let env = common::Env::new().await;
        env.create_instance("sales").await;
        let gw = env
            .gateway(&[("RATE_LIMIT_PER_MINUTE", "1000000".into())])
            .await;
        (env, gw)
    });
    let post = |body: Vec<u8>| {
        rt.block_on(async {
            let resp = ryze_tests::http()
                .post(gw.url("/api/events/websocket/sales"))
                .header("token", &env.account_token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap())
        })
    };
    let invalid = common::envelope("Invalid request body");

    let mut runner = TestRunner::new(Config::with_cases(200));
    runner
        .run(&body(), |b| {
            let text = b.json();
            let (status, reply) = post(text.clone().into_bytes());
            match b.expected() {
                Some(websocket) => {
                    prop_assert_eq!(status, 200, "{} -> {}", text, reply);
                    let want = format!(
                        r#"{{"success":true,"message":"WebSocket configured successfully","websocket":{websocket}}}"#
                    );
                    prop_assert_eq!(reply, want, "{}", text);
                }
                None => {
                    prop_assert_eq!((status, reply.as_str()), (400, invalid.as_str()), "{}", text);
                }
            }
            Ok(())
        })
        .unwrap();

    // Any bytes at all: 200 or 400 with the envelope, never anything else.
    let mut runner = TestRunner::new(Config::with_cases(150));
    let junk = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        any::<String>().prop_map(String::into_bytes),
        "\\{\"enabled\":(true|false)[,}\\]\"a-z0-9:\\[ ]{0,30}".prop_map(String::into_bytes),
    ];
    runner
        .run(&junk, |bytes| {
            let (status, reply) = post(bytes.clone());
            prop_assert!(
                status == 200 || (status == 400 && reply == invalid),
                "{:?} -> {} {}",
                String::from_utf8_lossy(&bytes),
                status,
                reply
            );
            Ok(())
        })
        .unwrap();
    drop(gw);
}
