//! Property tests of the Origin allowlist (SPEC D9, D24): it never panics, and agrees with a
//! small model of the rule.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use crate::origin::OriginPolicy;
use proptest::prelude::*;
use proptest::test_runner::Config;

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
