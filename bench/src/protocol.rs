//! What a `ryze-load` worker prints: one JSON object per line on stdout, read by `ryze-bench`.
//!
//! The worker reads commands from stdin, one per line: `report` (print a [`WorkerReport`] of
//! kind `report`), `reset` (zero the frame counters and latency histograms, then print kind
//! `reset`), `stop` (print kind `final` and exit; end of input does the same). On its own it
//! prints kind `connected` once every first connect attempt finished, kind `back` each time
//! every lost connection has been re-established (with `--reconnect`), and kind `final` when its
//! `--max-seconds` run out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::histogram::HistogramData;

/// One line of a worker's output.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    /// `connected`, `report`, `reset`, `back` or `final`.
    pub kind: String,
    /// The worker's source address.
    pub source: String,
    /// Connections asked for.
    pub target: usize,
    /// Connections open now.
    pub live: usize,
    /// First attempts that got a 101.
    pub connect_ok: u64,
    /// First attempts that did not.
    pub connect_failed: u64,
    /// Why attempts failed (first attempts and reconnects), by reason.
    pub failures: BTreeMap<String, u64>,
    /// Unix µs when the first connect attempt started.
    pub first_attempt_micros: u64,
    /// Unix µs when the last successful first attempt got its 101.
    pub last_connect_micros: u64,
    /// TCP connect + upgrade + 101 of successful first attempts (µs).
    pub connect_latency: HistogramData,
    /// Text or binary frames since the last reset.
    pub frames: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Fewest frames one established connection received since the last reset.
    pub frames_min: u64,
    /// Most frames one connection received since the last reset.
    pub frames_max: u64,
    /// Frames without a `"sentMicros":` stamp.
    pub unstamped: u64,
    /// Publish (the stamp) → receive, µs, since the last reset.
    pub latency: HistogramData,
    /// Unix µs of the first and last frame since the last reset (0 if none).
    pub first_frame_micros: u64,
    /// See `first_frame_micros`.
    pub last_frame_micros: u64,
    /// Established connections that ended.
    pub disconnects: u64,
    /// How they ended (`close 1008`, `eof`, `reset`, ...).
    pub ends: BTreeMap<String, u64>,
    /// Lost connections re-established.
    pub reconnects: u64,
    /// Attempts made to re-establish (successful or not).
    pub reconnect_attempts: u64,
    /// Loss detected → 101 again, µs.
    pub reconnect_latency: HistogramData,
    /// TCP connect + upgrade of the successful reconnect attempt alone, µs.
    pub reconnect_connect_latency: HistogramData,
    /// Unix µs when the last lost connection came back (0 if none was lost).
    pub back_micros: u64,
    /// Unix µs when this line was made.
    pub at_micros: u64,
}

/// Microseconds since the Unix epoch (wall clock: workers and the orchestrator compare them).
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The publish stamp inside a frame: the digits after the first `"sentMicros":`.
pub fn sent_micros(frame: &str) -> Option<u64> {
    const KEY: &str = "\"sentMicros\":";
    let start = frame.find(KEY)? + KEY.len();
    let digits = frame[start..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .fold(None, |acc: Option<u64>, d| {
            Some(acc.unwrap_or(0).wrapping_mul(10) + u64::from(d - b'0'))
        });
    digits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_found_without_parsing() {
        let f = r#"{"event":"message.exchange","data":{"sentMicros":1712345678901234,"pad":"x"}}"#;
        assert_eq!(sent_micros(f), Some(1_712_345_678_901_234));
        assert_eq!(sent_micros(r#"{"data":{"sentMicros":"x"}}"#), None);
        assert_eq!(sent_micros("{}"), None);
    }
}
