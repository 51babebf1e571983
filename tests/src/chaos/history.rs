//! What the run recorded, in microseconds since its start: every ingest attempt with the
//! publisher's answer, every client connection with the frames it received, every fault as
//! injected, the gateways' readiness as polled, and anomalies noticed on the spot (a process
//! that exited unplanned, a frame of another instance, an offset that did not grow).
//! The checker ([`super::check`]) works on this alone.

use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use serde::Serialize;

use super::schedule::FaultKind;

/// Microseconds since the start of the run.
pub type Micros = u64;

/// The run's clock.
pub fn now() -> Micros {
    start().elapsed().as_micros() as Micros
}

/// When the run started (the first call to [`now`] or [`start`]).
pub fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// What the publisher's answer says about an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// 202 with every item of the request `published`: appended to history and published.
    Accepted,
    /// Unknown: a 5xx (the publish may have reached Redis before the answer failed), a timeout,
    /// a reset, or a 202 that published only some items of the request.
    Maybe,
    /// Never reached Redis: refused before sending (connection refused), a 4xx, or 202 with
    /// nothing published (`noListeners`).
    Never,
}

/// One event of one instance; `seq` is its number in the instance's sequence (stamped into
/// `data.seq`; one feeder per instance sends them in order, one request at a time).
#[derive(Debug, Clone, Serialize)]
pub struct EventRec {
    pub seq: u64,
    /// When the request was sent.
    pub sent: Micros,
    /// When the answer (or the error) came.
    pub answered: Micros,
    pub outcome: Outcome,
}

/// One frame a client received.
#[derive(Debug, Clone, Copy)]
pub struct FrameRec {
    pub at: Micros,
    pub seq: u64,
}

/// One WebSocket connection of a client, from its 101 to its end.
#[derive(Debug, Clone, Default)]
pub struct ConnRec {
    pub opened: Micros,
    /// When the client saw the end (close frame, error, EOF); `None`: still open at the end.
    pub closed: Option<Micros>,
    /// Close code and reason, or the error text.
    pub end: String,
    /// `since` it connected with: `None` without, `Some(None)` for `now`, else the seq of the
    /// frame whose offset it passed.
    pub since: Option<Option<u64>>,
    pub frames: Vec<FrameRec>,
    /// `stream.gap` frames: (when, seq of the frame whose offset was `data.since`).
    pub gaps: Vec<(Micros, Option<u64>)>,
}

/// Everything one client saw.
#[derive(Debug, Clone, Default)]
pub struct ClientLog {
    pub id: usize,
    pub instance: usize,
    pub resumable: bool,
    pub conns: Vec<ConnRec>,
    /// Upgrade attempts that failed (refused, reset, balancer without backend).
    pub failed_connects: u64,
}

/// A fault as injected.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRec {
    pub id: usize,
    pub kind: FaultKind,
    /// What it hit (`gateway 2 (pid …)`, `instance 7`, …).
    pub target: String,
    pub started: Micros,
    /// When the system was given back what the fault took (process replaced, server up,
    /// proxy healed); equals `started` for a burst.
    pub healed: Micros,
    /// Sentinel faults: when the Sentinels first named another primary while the fault held.
    /// Service can resume there before the old primary is back (the processes follow the
    /// Sentinels within one probe interval).
    pub failed_over: Option<Micros>,
    /// Anything noteworthy (an error while injecting, how a drain ended).
    pub note: String,
}

/// An anomaly seen while running, reported as a violation as is.
#[derive(Debug, Clone, Serialize)]
pub struct Anomaly {
    pub kind: &'static str,
    pub at: Micros,
    pub detail: String,
}

/// One `/readyz` poll of a gateway: `Some(true)` 200, `Some(false)` another status or a
/// refused connection, `None` timed out (unknown).
#[derive(Debug, Clone, Copy)]
pub struct ReadySample {
    pub at: Micros,
    pub ready: Option<bool>,
}

/// The readiness polls of one gateway process.
#[derive(Debug, Clone, Default)]
pub struct GatewayLife {
    pub name: String,
    pub started: Micros,
    /// When it was killed or signalled by the schedule (or the run ended).
    pub ended: Option<Micros>,
    pub samples: Vec<ReadySample>,
}

/// The shared recorder of faults, anomalies and readiness (client and event logs are returned
/// by their tasks instead, so the hot paths take no lock).
#[derive(Debug, Default)]
pub struct Recorder {
    pub faults: Mutex<Vec<FaultRec>>,
    pub anomalies: Mutex<Vec<Anomaly>>,
    pub gateways: Mutex<Vec<GatewayLife>>,
}

impl Recorder {
    /// Records an anomaly now.
    pub fn anomaly(&self, kind: &'static str, detail: String) {
        lock(&self.anomalies).push(Anomaly {
            kind,
            at: now(),
            detail,
        });
    }
}

/// Locks, ignoring poisoning (the recorder only appends).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
