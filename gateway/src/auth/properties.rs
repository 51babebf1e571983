//! Property tests of token extraction (SPEC D2, D19) and instance-name decoding (D18): neither
//! may panic on any input, and each agrees with a small model of its rule.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use crate::auth::{decode_instance_name, extract_token, MAX_INSTANCE_NAME_CHARS};
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use proptest::test_runner::Config;

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
pub(crate) fn header_map(pairs: &[(String, Vec<u8>)]) -> HeaderMap {
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
pub(crate) fn blanks() -> impl Strategy<Value = String> {
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
