//! Fan-out liveness (SPEC D38): noticing a Redis connection that has stopped delivering,
//! including one whose TCP connection stays open while nothing flows (black-holed by a
//! failover behind a NAT or load balancer, or a wedged server).
//!
//! A socket that is open but silent raises no error and fires no reconnect, so only a probe
//! that must come back proves a connection alive. Two pieces:
//! - [`Pulse`]: when a connection last showed a sign of life, read without locks.
//! - [`Silence`]: the rule "a probe went out after the last sign of life, and the silence has
//!   lasted longer than the stall timeout": the connection is stalled.
//!
//! The processes decide what the probe is (the gateway publishes to its own probe channel
//! through the command connection and waits to see it on the subscriber; the publisher
//! PINGs), what counts as life, and what to do about a stall (count, log, reconnect).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Probes per stall timeout: a stall is noticed at most one probe interval late.
pub const PROBES_PER_TIMEOUT: u32 = 3;

/// The interval between probes for a stall timeout.
pub fn probe_interval(stall_timeout: Duration) -> Duration {
    (stall_timeout / PROBES_PER_TIMEOUT).max(Duration::from_millis(10))
}

/// The moment of the last sign of life, as microseconds since the pulse was made (`0`: none
/// yet). One relaxed store per beat: cheap enough for every message a subscriber receives.
#[derive(Debug)]
pub struct Pulse {
    origin: Instant,
    last: AtomicU64,
}

impl Default for Pulse {
    fn default() -> Self {
        Pulse::new()
    }
}

impl Pulse {
    /// A pulse with no beat yet.
    pub fn new() -> Pulse {
        Pulse {
            origin: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    /// Records a sign of life now.
    pub fn beat(&self) {
        // +1 so a beat at the very origin is not read as "never".
        let micros = self.origin.elapsed().as_micros() as u64 + 1;
        self.last.fetch_max(micros, Ordering::Relaxed);
    }

    /// When the last beat was, if any.
    pub fn last(&self) -> Option<Instant> {
        match self.last.load(Ordering::Relaxed) {
            0 => None,
            m => Some(self.origin + Duration::from_micros(m - 1)),
        }
    }

    /// How long since the last beat (since the pulse was made, without one).
    pub fn silent_for(&self) -> Duration {
        self.last().unwrap_or(self.origin).elapsed()
    }
}

/// A connection judged by the probes sent over it and the signs of life that came back.
#[derive(Debug)]
pub struct Silence {
    timeout: Duration,
    /// Probes the connection accepted (written and acknowledged by Redis).
    sent: Pulse,
    /// Anything that came back (a probe, or any other message).
    heard: Pulse,
}

impl Silence {
    /// A connection that counts as stalled after `timeout` of silence.
    pub fn new(timeout: Duration) -> Silence {
        Silence {
            timeout,
            sent: Pulse::new(),
            heard: Pulse::new(),
        }
    }

    /// The stall timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A probe went out.
    pub fn probe_sent(&self) {
        self.sent.beat();
    }

    /// A sign of life came back.
    pub fn heard(&self) {
        self.heard.beat();
    }

    /// After a reconnect: start judging afresh (silence before it no longer counts).
    pub fn reset(&self) {
        self.heard.beat();
    }

    /// How long the connection has been silent, when that is a stall: a probe went out after
    /// the last sign of life, and the silence has lasted longer than the timeout. Without a
    /// probe sent there is no evidence (the sending side may be what is down; it is judged on
    /// its own).
    pub fn stalled(&self) -> Option<Duration> {
        let sent = self.sent.last()?;
        let heard = self.heard.last();
        if heard.is_some_and(|h| h >= sent) {
            return None;
        }
        let silent = self.heard.silent_for();
        (silent > self.timeout).then_some(silent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_answered_probe_is_never_a_stall() {
        let s = Silence::new(Duration::from_secs(3));
        for _ in 0..10 {
            s.probe_sent();
            tokio::time::advance(Duration::from_millis(5)).await;
            s.heard();
            tokio::time::advance(Duration::from_secs(1)).await;
            assert_eq!(s.stalled(), None);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn silence_after_a_probe_is_a_stall_only_past_the_timeout() {
        let s = Silence::new(Duration::from_secs(3));
        s.heard();
        tokio::time::advance(Duration::from_secs(1)).await;
        s.probe_sent();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(s.stalled(), None, "2 s of silence is within the timeout");
        tokio::time::advance(Duration::from_millis(1001)).await;
        let silent = s.stalled().expect("stalled after 3 s");
        assert!(silent > Duration::from_secs(3), "{silent:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn silence_without_any_probe_sent_is_no_evidence() {
        let s = Silence::new(Duration::from_secs(3));
        s.heard();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(s.stalled(), None);
        // Never heard at all, but probed: judged from when the watch began.
        let t = Silence::new(Duration::from_secs(3));
        t.probe_sent();
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(t.stalled().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_gives_a_reconnect_a_whole_timeout() {
        let s = Silence::new(Duration::from_secs(3));
        s.probe_sent();
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(s.stalled().is_some());
        s.reset();
        assert_eq!(s.stalled(), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        s.probe_sent();
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(s.stalled(), None);
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(s.stalled().is_some(), "still silent a whole timeout later");
    }

    #[test]
    fn probes_run_three_times_per_timeout() {
        assert_eq!(
            probe_interval(Duration::from_secs(3)),
            Duration::from_secs(1)
        );
        assert_eq!(
            probe_interval(Duration::from_millis(3)),
            Duration::from_millis(10)
        );
    }
}
