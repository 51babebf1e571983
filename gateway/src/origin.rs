//! The WebSocket Origin allowlist (SPEC §5.3, D9, D24). CORS is not involved.

use std::collections::HashSet;

#[cfg(test)]
mod properties;

/// Which browser origins may open /ws. Requests without `Origin` are always accepted.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    any: bool,
    allowed: HashSet<String>,
}

impl OriginPolicy {
    /// From `ALLOWED_WS_ORIGINS`: comma-separated full origins, or `*` for any.
    pub fn parse(list: Option<&str>) -> OriginPolicy {
        let mut policy = OriginPolicy::default();
        for entry in list
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            if entry == "*" {
                policy.any = true;
            } else {
                policy.allowed.insert(normalize(entry));
            }
        }
        policy
    }

    /// Whether a request with this `Origin` (if any) and `Host` may upgrade.
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        if self.any || self.allowed.contains(&normalize(origin)) {
            return true;
        }
        same_origin(origin, host)
    }
}

fn normalize(origin: &str) -> String {
    let o = origin.trim().to_ascii_lowercase();
    o.strip_suffix('/').map(str::to_owned).unwrap_or(o)
}

/// Origin's host and port equal Host's, case-insensitively, default ports filled in from the
/// Origin's scheme; the scheme itself is ignored (D9, D24).
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else { return false };
    let origin = normalize(origin);
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme {
        "http" | "ws" => 80,
        "https" | "wss" => 443,
        _ => return false,
    };
    let (Some(o), Some(h)) = (
        split_host_port(authority, default_port),
        split_host_port(&host.to_ascii_lowercase(), default_port),
    ) else {
        return false;
    };
    o == h
}

fn split_host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if authority.is_empty() || authority.contains(['/', '@', '?', '#']) {
        return None;
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        (format!("[{h}]"), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (authority.to_owned(), None),
        }
    };
    let port = match port {
        None => default_port,
        Some(p) => p.parse().ok()?,
    };
    (!host.is_empty()).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_origin_is_always_accepted() {
        assert!(OriginPolicy::parse(None).allows(None, Some("x")));
    }

    #[test]
    fn same_origin_compares_host_and_port_with_default_ports() {
        let p = OriginPolicy::parse(None);
        assert!(p.allows(Some("https://API.example.com"), Some("api.example.com")));
        assert!(p.allows(Some("https://api.example.com:443"), Some("api.example.com")));
        assert!(p.allows(Some("http://localhost:8080"), Some("localhost:8080")));
        assert!(p.allows(Some("http://[::1]:8080"), Some("[::1]:8080")));
        assert!(!p.allows(Some("http://api.example.com"), Some("api.example.com:8080")));
        assert!(!p.allows(Some("https://evil.example"), Some("api.example.com")));
        assert!(!p.allows(Some("null"), Some("api.example.com")));
    }

    #[test]
    fn allowlist_matches_exact_origins_after_lowercasing_and_trailing_slash() {
        let p = OriginPolicy::parse(Some(
            " https://App.example.com/ , ,https://dash.example.com",
        ));
        assert!(p.allows(Some("https://app.example.com"), Some("api")));
        assert!(p.allows(Some("https://dash.example.com/"), Some("api")));
        assert!(!p.allows(Some("http://app.example.com"), Some("api")));
        assert!(!p.allows(Some("null"), Some("api")));
        assert!(OriginPolicy::parse(Some("*")).allows(Some("null"), None));
    }
}
