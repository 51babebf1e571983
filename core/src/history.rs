//! History settings (SPEC D37): how many frames each instance keeps in Redis, and for how
//! long after its latest frame. One definition for the publisher, the gateway and the
//! gateway's embedded publisher.

use crate::config::parse_duration;
use std::time::Duration;

/// `HISTORY_SIZE` and `HISTORY_TTL`, flattened into each binary's `Config`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct HistoryConfig {
    /// Frames kept per instance in its Redis history (a resumable client can replay them);
    /// 0 turns history off. Redis may keep up to 100 more (trimming is by whole stream node).
    #[arg(long, env = "HISTORY_SIZE", default_value_t = 1000, global = true)]
    pub history_size: u64,
    /// How long an instance's history outlives its latest frame (and how long a resumable
    /// client's instance keeps filling history after it left).
    #[arg(long, env = "HISTORY_TTL", default_value = "10m", value_parser = parse_duration, global = true)]
    pub history_ttl: Duration,
}

/// What history keeps, when it is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Frames per instance (`XADD … MAXLEN ~ size`).
    pub size: u64,
    /// The history key's expiry after each append (`PEXPIRE`), and the resume marker's.
    pub ttl: Duration,
}

impl Retention {
    /// The TTL in whole milliseconds, at least 1 (a `PEXPIRE` of 0 would delete the key).
    pub fn ttl_ms(&self) -> u64 {
        (self.ttl.as_millis() as u64).max(1)
    }
}

impl HistoryConfig {
    /// History off (`HISTORY_SIZE=0`).
    pub fn off() -> HistoryConfig {
        HistoryConfig {
            history_size: 0,
            history_ttl: Duration::from_secs(600),
        }
    }

    /// The retention, or `None` when history is off.
    pub fn retention(&self) -> Option<Retention> {
        (self.history_size > 0).then_some(Retention {
            size: self.history_size,
            ttl: self.history_ttl,
        })
    }

    /// Problems with these values (for `validate()`).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.history_size > 0 && self.history_ttl < Duration::from_millis(1) {
            problems.push("HISTORY_TTL must be at least 1ms when HISTORY_SIZE is above 0".into());
        }
        if self.history_size > MAX_HISTORY_SIZE {
            problems.push(format!("HISTORY_SIZE must be at most {MAX_HISTORY_SIZE}"));
        }
        problems
    }
}

/// Largest `HISTORY_SIZE` accepted: a replay of more frames than this would not be a resume.
pub const MAX_HISTORY_SIZE: u64 = 1_000_000;

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        history: HistoryConfig,
    }

    fn parse(args: &[&str]) -> Result<HistoryConfig, clap::Error> {
        Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied())).map(|c| c.history)
    }

    #[test]
    fn defaults_keep_a_thousand_frames_for_ten_minutes() {
        let h = parse(&[]).unwrap();
        assert_eq!(
            h.retention(),
            Some(Retention {
                size: 1000,
                ttl: Duration::from_secs(600)
            })
        );
        assert!(h.problems().is_empty());
        assert_eq!(h.retention().unwrap().ttl_ms(), 600_000);
    }

    #[test]
    fn size_zero_turns_history_off_and_values_are_validated() {
        assert_eq!(parse(&["--history-size", "0"]).unwrap().retention(), None);
        let h = parse(&["--history-size", "50", "--history-ttl", "90s"]).unwrap();
        assert_eq!(h.retention().map(|r| r.ttl_ms()), Some(90_000));
        assert!(parse(&["--history-size", "-1"]).is_err());
        assert!(parse(&["--history-ttl", "soon"]).is_err());
        let zero_ttl = parse(&["--history-ttl", "0s"]).unwrap();
        assert_eq!(zero_ttl.problems().len(), 1);
        let off = parse(&["--history-size", "0", "--history-ttl", "0s"]).unwrap();
        assert!(off.problems().is_empty());
        let huge = parse(&["--history-size", "1000001"]).unwrap();
        assert_eq!(huge.problems().len(), 1);
    }
}
