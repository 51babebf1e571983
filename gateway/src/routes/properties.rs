//! Property tests of handshake validation (SPEC D23): it never panics, a valid handshake passes
//! in any spelling, and each defect is refused with its documented error.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use crate::auth::properties::{blanks, header_map};
use crate::error::ApiError;
use crate::routes::check_handshake;
use base64::Engine;
use http::{HeaderMap, Version};
use proptest::prelude::*;
use proptest::test_runner::Config;

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
