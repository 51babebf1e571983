//! Parsers for configuration values shared by both binaries (used as clap `value_parser`s).

use std::path::Path;
use std::time::Duration;

/// Exit status for bad configuration (EX_USAGE).
pub const EXIT_CONFIG: i32 = 64;

/// Parses flags and environment once, then `validate`s; any problem is printed to stderr, all
/// of them in one message, and the process exits 64 before anything listens. `--help` and
/// `--version` print and exit 0.
pub fn parse_or_exit<C: clap::Parser>(
    name: &str,
    validate: impl FnOnce(&C) -> Result<(), Vec<String>>,
) -> C {
    let config = match C::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    if let Err(problems) = validate(&config) {
        eprintln!(
            "{name}: invalid configuration:\n  - {}",
            problems.join("\n  - ")
        );
        std::process::exit(EXIT_CONFIG);
    }
    config
}

/// `Ok` when no problem was found, else all of them (the shape `parse_or_exit` reports).
pub fn into_result(problems: Vec<String>) -> Result<(), Vec<String>> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// The problems with `OTEL_EXPORTER_OTLP_ENDPOINT` (must be `http://` or `https://` OTLP/HTTP)
/// and `OTEL_EXPORTER_OTLP_CERTIFICATE` (a readable PEM CA file), if any.
pub fn otlp_problems(endpoint: Option<&str>, certificate: Option<&Path>) -> Vec<String> {
    let mut problems = Vec::new();
    let endpoint = endpoint.map(str::trim).filter(|e| !e.is_empty());
    if endpoint.is_some_and(|e| !(e.starts_with("http://") || e.starts_with("https://"))) {
        problems.push(
            "OTEL_EXPORTER_OTLP_ENDPOINT must be an http:// or https:// OTLP/HTTP endpoint"
                .to_owned(),
        );
    }
    if let Some(path) = certificate {
        if let Err(e) = crate::trust::load_ca_file(path) {
            problems.push(format!(
                "OTEL_EXPORTER_OTLP_CERTIFICATE: {}",
                error_chain(&e)
            ));
        }
    }
    problems
}

/// The problem with `DATABASE_URL`, if any: it does not parse, names an unknown `sslmode`, or
/// its `sslrootcert` cannot be used (see [`crate::store::DatabaseTarget::parse`]). The message
/// never quotes the URL, which may hold a password.
pub fn database_url_problem(url: &str) -> Option<String> {
    let e = crate::store::DatabaseTarget::parse(url).err()?;
    Some(error_chain(&e))
}

/// `outer: cause: root cause`, skipping a cause whose text its parent already ends with
/// (tokio-postgres prints its cause in its own message).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// Parses a duration such as `54s`, `500ms` or `2m` (humantime syntax).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Parses a byte size: a plain number of bytes, or a number with `KiB`, `MiB`, `GiB`
/// (or `K`, `M`, `G`, `KB`, `MB`, `GB`, all powers of 1024).
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("invalid byte size {s:?}"))?;
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("invalid byte size {s:?}: unknown unit {unit:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("byte size {s:?} is too large"))
}

/// Parses a base URL for `instanceData.baseUrl`: must be http(s), used verbatim minus one
/// trailing `/` (D11).
pub fn parse_base_url(s: &str) -> Result<String, String> {
    let t = s.trim();
    if !(t.starts_with("http://") || t.starts_with("https://")) || t.len() <= "https://".len() {
        return Err(format!(
            "invalid base URL {s:?}: must start with http:// or https://"
        ));
    }
    Ok(t.strip_suffix('/').unwrap_or(t).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otlp_takes_http_and_https_and_a_readable_ca_file() {
        assert!(otlp_problems(Some("http://c:4318"), None).is_empty());
        assert!(otlp_problems(Some("https://c:4318"), None).is_empty());
        assert!(otlp_problems(None, None).is_empty());
        assert_eq!(otlp_problems(Some("c:4317"), None).len(), 1);
        let p = otlp_problems(Some("https://c"), Some(Path::new("/nope/ca.pem")));
        assert!(p.len() == 1 && p[0].contains("/nope/ca.pem"), "{p:?}");
    }

    #[test]
    fn database_url_problems_name_the_setting_not_the_url() {
        let url = "postgres://u:hunter2@db/x?sslmode=verify-full&sslrootcert=/nope/ca.pem";
        let p = database_url_problem(url).expect("a problem");
        assert!(
            p.contains("/nope/ca.pem") && p.contains("sslrootcert"),
            "{p}"
        );
        assert!(!p.contains("hunter2"), "{p}");
        let p = database_url_problem("postgres://u:hunter2@db/x?bogus=1").expect("a problem");
        assert_eq!(p.matches("bogus").count(), 1, "{p}");
        assert!(!p.contains("hunter2"), "{p}");
        assert_eq!(
            database_url_problem("postgres://u@db/x?sslmode=require"),
            None
        );
    }

    #[test]
    fn durations_accept_the_documented_forms() {
        assert_eq!(parse_duration("54s").unwrap(), Duration::from_secs(54));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn byte_sizes_accept_numbers_and_binary_units() {
        assert_eq!(parse_bytes("8388608").unwrap(), 8 << 20);
        assert_eq!(parse_bytes("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_bytes("16 MiB").unwrap(), 16 << 20);
        assert_eq!(parse_bytes("4k").unwrap(), 4096);
        assert!(parse_bytes("8 parsecs").is_err());
        assert!(parse_bytes("").is_err());
    }

    #[test]
    fn base_url_loses_exactly_one_trailing_slash() {
        assert_eq!(
            parse_base_url("https://a.example/").unwrap(),
            "https://a.example"
        );
        assert_eq!(
            parse_base_url("https://a.example/x//").unwrap(),
            "https://a.example/x/"
        );
        assert!(parse_base_url("ftp://a").is_err());
    }
}
