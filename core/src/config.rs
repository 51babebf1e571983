//! Parsers for configuration values shared by both binaries (used as clap `value_parser`s).

use std::time::Duration;

/// Exit status for bad configuration (EX_USAGE).
pub const EXIT_CONFIG: i32 = 64;

/// Parses flags and environment once, then `validate`s them into the typed settings the
/// process runs on; every problem (values clap refuses, missing required settings, cross-field
/// rules) is printed to stderr in one message, and the process exits 64 before anything
/// listens. `--help` and `--version` print and exit 0.
pub fn parse_or_exit<C: clap::Parser, V>(
    name: &str,
    validate: impl FnOnce(&C) -> Result<V, Vec<String>>,
) -> V {
    match parse_all::<C, V>(std::env::args_os(), validate) {
        Ok(config) => config,
        Err(Refusal::Display(e)) => e.exit(),
        Err(Refusal::Problems(problems)) => {
            eprintln!(
                "{name}: invalid configuration:\n  - {}",
                problems.join("\n  - ")
            );
            std::process::exit(EXIT_CONFIG);
        }
    }
}

/// Why [`parse_all`] produced no settings.
#[derive(Debug)]
pub enum Refusal {
    /// `--help`, `--version` or a usage error clap prints itself.
    Display(clap::Error),
    /// Every configuration problem found, in the order found.
    Problems(Vec<String>),
}

/// Most bad values collected in one run (each costs one re-parse).
const MAX_VALUE_PROBLEMS: usize = 64;

/// Parses `args` and the environment, collecting **every** problem instead of stopping at the
/// first: clap stops at the first value its parser refuses, so each refused value is recorded,
/// its source (environment variable or flag) is set aside, and the parse is run again. The
/// settings set aside fall back to their defaults only to let `validate` see the rest; any
/// refused value still fails the whole configuration.
pub fn parse_all<C: clap::Parser, V>(
    args: impl IntoIterator<Item = impl Into<std::ffi::OsString>>,
    validate: impl FnOnce(&C) -> Result<V, Vec<String>>,
) -> Result<V, Refusal> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};

    let mut args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    // Rebuilt for every attempt: a command clap has already parsed with is not to be changed.
    let command_without = |ids: &[clap::Id]| {
        ids.iter()
            .fold(C::command(), |c, id| c.mut_arg(id, |a| a.env(None::<&str>)))
    };
    let mut set_aside: Vec<clap::Id> = Vec::new();
    let mut command = command_without(&set_aside);
    let mut problems = Vec::new();
    // Settings whose own value was refused: "X is required" for them would only repeat it.
    let mut refused: Vec<String> = Vec::new();
    let matches = loop {
        let error = match command.try_get_matches_from_mut(args.clone()) {
            Ok(matches) => break matches,
            Err(e) => e,
        };
        if !error.use_stderr() {
            return Err(Refusal::Display(error));
        }
        let value_error = matches!(
            error.kind(),
            ErrorKind::ValueValidation | ErrorKind::InvalidValue
        );
        let arg = match error.get(ContextKind::InvalidArg) {
            Some(ContextValue::String(s)) => s.clone(),
            _ => String::new(),
        };
        let flag = arg.split_whitespace().next().unwrap_or_default().to_owned();
        let target = command
            .get_arguments()
            .find(|a| a.get_long().is_some_and(|l| format!("--{l}") == flag))
            .map(|a| {
                let env = a.get_env().map(|e| e.to_string_lossy().into_owned());
                (a.get_id().clone(), env)
            });
        let (Some((id, env)), true) = (target, value_error) else {
            problems.push(first_line(&error));
            return Err(Refusal::Problems(problems));
        };
        let label = env.clone().unwrap_or_else(|| flag.clone());
        problems.push(format!("{label}: {}", first_line(&error)));
        refused.push(label);
        if problems.len() >= MAX_VALUE_PROBLEMS {
            return Err(Refusal::Problems(problems));
        }
        // Set the refused source aside: the variable, and any occurrence of the flag.
        set_aside.push(id);
        command = command_without(&set_aside);
        remove_flag(&mut args, &flag);
    };
    let config = match C::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => {
            problems.push(first_line(&e));
            return Err(Refusal::Problems(problems));
        }
    };
    match validate(&config) {
        Ok(settings) if problems.is_empty() => return Ok(settings),
        Ok(_) => {}
        Err(more) => problems.extend(
            more.into_iter()
                .filter(|p| !refused.iter().any(|r| p.starts_with(r.as_str()))),
        ),
    }
    Err(Refusal::Problems(problems))
}

/// clap's message without its `error: ` prefix and `--help` hint.
fn first_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

/// Removes `--flag value` and `--flag=value` from `args` (never the program name).
fn remove_flag(args: &mut Vec<std::ffi::OsString>, flag: &str) {
    let with_value = format!("{flag}=");
    let mut i = 1;
    while i < args.len() {
        let a = args[i].to_string_lossy();
        if a == flag {
            let end = (i + 2).min(args.len());
            args.drain(i..end);
        } else if a.starts_with(&with_value) {
            args.remove(i);
        } else {
            i += 1;
        }
    }
}

/// One group's validated value, or `None` with its problems appended to `problems`: lets a
/// binary's `validate` check every group and report all their problems at once.
pub fn collect<T>(problems: &mut Vec<String>, group: Result<T, Vec<String>>) -> Option<T> {
    group.map_err(|more| problems.extend(more)).ok()
}

/// `DATABASE_URL` parsed ([`crate::store::DatabaseTarget::parse`]), or the problem: it does
/// not parse, names an unknown `sslmode`, or its `sslrootcert` cannot be used. The message
/// never quotes the URL, which may hold a password.
pub fn parse_database_url(url: &str) -> Result<crate::store::DatabaseTarget, String> {
    crate::store::DatabaseTarget::parse(url).map_err(|e| error_chain(&e))
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
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Sample {
        #[arg(long, env = "SAMPLE_WAIT", default_value = "1s", value_parser = parse_duration)]
        wait: Duration,
        #[arg(long, env = "SAMPLE_SIZE", default_value = "1KiB", value_parser = parse_bytes)]
        size: usize,
        #[arg(long, env = "SAMPLE_URL")]
        url: Option<String>,
    }

    /// The validated value is the wait, once the URL is there.
    fn needs_url(s: &Sample) -> Result<Duration, Vec<String>> {
        match s.url {
            None => Err(vec!["SAMPLE_URL is required".into()]),
            Some(_) => Ok(s.wait),
        }
    }

    fn problems(args: &[&str]) -> Vec<String> {
        match parse_all::<Sample, _>(args.iter().copied(), needs_url) {
            Err(Refusal::Problems(p)) => p,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn every_bad_value_and_every_missing_setting_is_reported_at_once() {
        let p = problems(&["x", "--wait", "soon", "--size=8 parsecs"]);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(
            p[0].starts_with("SAMPLE_WAIT: ") && p[0].contains("soon"),
            "{p:?}"
        );
        assert!(
            p[1].starts_with("SAMPLE_SIZE: ") && p[1].contains("parsecs"),
            "{p:?}"
        );
        assert_eq!(p[2], "SAMPLE_URL is required");
    }

    #[test]
    fn a_refused_value_is_not_reported_twice_as_missing() {
        #[derive(Debug, Parser)]
        struct Base {
            #[arg(long, env = "SAMPLE_BASE", value_parser = parse_base_url)]
            base: Option<String>,
        }
        let p = match parse_all::<Base, String>(["x", "--base", "ftp://a"], |b: &Base| {
            b.base
                .clone()
                .ok_or_else(|| vec!["SAMPLE_BASE is required".to_owned()])
        }) {
            Err(Refusal::Problems(p)) => p,
            other => panic!("{other:?}"),
        };
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("ftp://a"), "{p:?}");
    }

    #[test]
    fn good_input_parses_and_help_is_not_a_problem() {
        let wait = parse_all::<Sample, _>(["x", "--url", "u", "--wait", "2s"], needs_url).unwrap();
        assert_eq!(wait, Duration::from_secs(2));
        assert!(matches!(
            parse_all::<Sample, _>(["x", "--help"], needs_url),
            Err(Refusal::Display(_))
        ));
    }

    #[test]
    fn database_url_problems_name_the_setting_not_the_url() {
        let url = "postgres://u:hunter2@db/x?sslmode=verify-full&sslrootcert=/nope/ca.pem";
        let p = parse_database_url(url).expect_err("a problem");
        assert!(
            p.contains("/nope/ca.pem") && p.contains("sslrootcert"),
            "{p}"
        );
        assert!(!p.contains("hunter2"), "{p}");
        let p = parse_database_url("postgres://u:hunter2@db/x?bogus=1").expect_err("a problem");
        assert_eq!(p.matches("bogus").count(), 1, "{p}");
        assert!(!p.contains("hunter2"), "{p}");
        assert!(parse_database_url("postgres://u@db/x?sslmode=require").is_ok());
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
