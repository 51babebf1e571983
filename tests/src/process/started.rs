//! The listen addresses a service names in its start line (`gateway started
//! listen_addr=127.0.0.1:41234 admin_listen_addr=127.0.0.1:41235`), so the harness can start
//! every service on port 0 and learn the port the kernel picked: no port is chosen by the
//! harness and bound by the child later, so no other process can take it in between.

use std::net::SocketAddr;

/// The log filter for services that should stay quiet: warnings, plus the start lines the
/// harness reads the listen addresses from.
pub const QUIET_LOG: &str = "warn,ryze_gateway::app=info,ryze_publisher::app=info";

/// The address logged as field `key` in `text` (text format `key=addr` or JSON
/// `"key":"addr"`), first occurrence; `listen_addr` does not match inside
/// `admin_listen_addr`.
pub fn reported_addr(text: &str, key: &str) -> Option<SocketAddr> {
    let mut from = 0;
    while let Some(at) = text[from..].find(key) {
        let start = from + at;
        from = start + key.len();
        let before = text[..start].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &text[from..];
        let value = rest
            .strip_prefix('=')
            .or_else(|| rest.strip_prefix("\":\""))
            .or_else(|| rest.strip_prefix("\": \""));
        let Some(value) = value else {
            continue;
        };
        let end = value
            .find(|c: char| !(c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']')))
            .unwrap_or(value.len());
        if let Ok(addr) = value[..end].parse() {
            return Some(addr);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_address_is_not_read_from_the_admin_field() {
        let line = "INFO ryze_gateway::app: gateway started admin_listen_addr=127.0.0.1:2 \
                    listen_addr=127.0.0.1:1\n";
        assert_eq!(
            reported_addr(line, "listen_addr"),
            Some("127.0.0.1:1".parse().unwrap())
        );
        assert_eq!(
            reported_addr(line, "admin_listen_addr"),
            Some("127.0.0.1:2".parse().unwrap())
        );
    }

    #[test]
    fn json_lines_and_ipv6_addresses_are_read_and_other_text_is_not() {
        let json = r#"{"fields":{"message":"publisher started","listen_addr":"[::1]:8081"}}"#;
        assert_eq!(
            reported_addr(json, "listen_addr"),
            Some("[::1]:8081".parse().unwrap())
        );
        assert_eq!(
            reported_addr("binding LISTEN_ADDR 127.0.0.1:1", "listen_addr"),
            None
        );
        assert_eq!(reported_addr("listen_addr=nowhere", "listen_addr"), None);
    }
}
