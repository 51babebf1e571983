//! Fan-out liveness (SPEC D38): noticing a Redis connection that has stopped delivering,
//! including one whose TCP connection stays open while nothing flows (black-holed by a
//! failover behind a NAT or load balancer, or a wedged server).
//!
//! A socket that is open but silent raises no error and fires no reconnect, so only a probe
//! that must come back proves a connection alive. Two pieces:
//! - [`Pulse`]: when a connection last showed a sign of life, read without locks.
//! - [`Silence`]: the rule "a probe went out after the last sign of life, and the silence has
//!   lasted longer than the stall timeout": the connection is stalled.
//! - [`Answers`]: a connection judged by the answers to its own probes (request/response, as
//!   PING or PUBLISH): a failed probe after more than the timeout of silence opens a stall
//!   episode, counted once; the next answer closes it.
//! - [`ticker`] and [`replace`]: the probe clock and the bounded reconnect both processes use.
//!
//! The processes decide what the probe is (the gateway publishes to its own probe channel
//! through the command connection and waits to see it on the subscriber; the publisher
//! PINGs), what counts as life, and what to do about a stall (count, log, reconnect).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// A connection judged by the answers to its probes.
#[derive(Debug)]
pub struct Answers {
    timeout: Duration,
    /// The last answer (a probe's, or any other round trip's).
    alive: Pulse,
    /// A stall episode is open: seen stalled, no probe answered since.
    stalled: AtomicBool,
}

impl Answers {
    /// A connection that counts as stalled after `timeout` without an answer.
    pub fn new(timeout: Duration) -> Answers {
        Answers {
            timeout,
            alive: Pulse::new(),
            stalled: AtomicBool::new(false),
        }
    }

    /// The stall timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Some round trip completed (proof of life; does not close an open episode).
    pub fn heard(&self) {
        self.alive.beat();
    }

    /// A probe was answered: proof of life, and the end of any stall episode.
    pub fn answered(&self) {
        self.alive.beat();
        self.stalled.store(false, Ordering::Relaxed);
    }

    /// A probe failed or timed out. Returns how long the connection has been silent when this
    /// opens a stall episode (silent past the timeout, none open yet): the caller counts, logs
    /// and replaces the connection once per episode.
    pub fn failed(&self) -> Option<Duration> {
        let silent = self.alive.silent_for();
        (silent > self.timeout && !self.stalled.swap(true, Ordering::Relaxed)).then_some(silent)
    }

    /// No episode open, and an answer within the timeout plus the probe interval it may be
    /// waiting for.
    pub fn is_live(&self) -> bool {
        !self.stalled.load(Ordering::Relaxed)
            && self
                .alive
                .last()
                .is_some_and(|at| at.elapsed() <= self.timeout + probe_interval(self.timeout))
    }
}

/// One tick per probe interval for `stall_timeout`; a late tick is not made up for.
pub fn ticker(stall_timeout: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(probe_interval(stall_timeout));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// Drops the client's connections and opens new ones, in the background: fred's reconnect
/// loop retries with backoff for as long as Redis stays unreachable, and the caller must keep
/// watching meanwhile. The reconnect is reported on the client's reconnect stream.
pub fn replace(client: fred::clients::Client, stall_timeout: Duration) {
    use fred::interfaces::ClientLike;
    tokio::spawn(async move {
        match tokio::time::timeout(stall_timeout * 4, client.force_reconnection()).await {
            Ok(Ok(())) => tracing::info!("redis connection replaced"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "replacing the redis connection failed; retrying")
            }
            Err(_) => {
                tracing::warn!("replacing the redis connection is taking long; still retrying")
            }
        }
    });
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

    #[tokio::test(start_paused = true)]
    async fn a_stall_episode_is_reported_once_and_ends_at_the_next_answer() {
        let a = Answers::new(Duration::from_secs(3));
        assert!(!a.is_live(), "no answer yet");
        a.answered();
        assert!(a.is_live());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(a.failed(), None, "silent 2 s: within the timeout");
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(a.failed().is_some(), "silent 3.5 s: a stall");
        assert_eq!(a.failed(), None, "counted once per episode");
        assert!(!a.is_live());
        a.heard();
        assert!(!a.is_live(), "other traffic does not end the episode");
        a.answered();
        assert!(a.is_live());
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
