//! The checker's rules on small hand-made histories.

use super::*;
use crate::chaos::history::{ConnRec, FrameRec, ReadySample};

const S: Micros = 1_000_000;

/// Events 1..=n, event k sent at k s, answered 10 ms later, all accepted.
fn events(n: u64) -> Vec<Vec<EventRec>> {
    vec![(1..=n)
        .map(|seq| EventRec {
            seq,
            sent: seq * S,
            answered: seq * S + 10_000,
            outcome: Outcome::Accepted,
        })
        .collect()]
}

fn conn(
    opened: Micros,
    closed: Option<Micros>,
    seqs: &[u64],
    since: Option<Option<u64>>,
) -> ConnRec {
    ConnRec {
        opened,
        closed,
        end: closed.map_or(String::new(), |_| "close 1001 server shutting down".into()),
        since,
        frames: seqs
            .iter()
            .map(|s| FrameRec {
                at: s * S + 50_000,
                seq: *s,
            })
            .collect(),
        gaps: Vec::new(),
    }
}

fn client(resumable: bool, conns: Vec<ConnRec>) -> ClientLog {
    ClientLog {
        id: 0,
        instance: 0,
        resumable,
        conns,
        failed_connects: 0,
    }
}

fn verdict(events: &[Vec<EventRec>], clients: &[ClientLog], faults: &[FaultRec]) -> Verdict {
    check(&Input {
        seed: 1,
        events,
        clients,
        faults,
        anomalies: &[],
        gateways: &[],
        end: 100 * S,
        history_size: 1000,
        stall_timeout: 3 * S,
    })
}

fn kinds(v: &Verdict) -> Vec<&str> {
    v.violations.iter().map(|v| v.kind.as_str()).collect()
}

#[test]
fn a_resumable_client_that_got_everything_across_a_reconnect_passes() {
    let ev = events(10);
    let c = client(
        true,
        vec![
            conn(S / 2, Some(4 * S + S / 2), &[1, 2, 3, 4], Some(None)),
            conn(7 * S, None, &[5, 6, 7, 8, 9, 10], Some(Some(4))),
        ],
    );
    let v = verdict(&ev, &[c], &[]);
    assert!(v.violations.is_empty(), "{:?}", v.violations);
    assert_eq!(v.deliveries, 10);
}

#[test]
fn a_resumable_client_missing_an_accepted_event_is_reported_once_per_run_of_seqs() {
    let ev = events(10);
    let c = client(
        true,
        vec![conn(S / 2, None, &[1, 2, 3, 6, 7, 8, 9, 10], Some(None))],
    );
    let v = verdict(&ev, &[c], &[]);
    assert_eq!(kinds(&v), ["missing"]);
    assert!(
        v.violations[0].detail.contains("seq 4..=5"),
        "{:?}",
        v.violations
    );
}

#[test]
fn a_gap_excuses_its_range_only_when_justified() {
    let ev = events(10);
    let mut second = conn(7 * S, None, &[8, 9, 10], Some(Some(4)));
    second.gaps.push((7 * S, Some(4)));
    let c = client(
        true,
        vec![
            conn(S / 2, Some(4 * S + S / 2), &[1, 2, 3, 4], Some(None)),
            second,
        ],
    );
    // No data-losing fault and far fewer than HISTORY_SIZE newer events: unjustified,
    // but its range (5..=7) is not reported as missing too.
    let v = verdict(&ev, std::slice::from_ref(&c), &[]);
    assert_eq!(kinds(&v), ["unjustified_gap"]);
    // After a Redis restart the same gap is justified.
    let restart = FaultRec {
        id: 0,
        kind: FaultKind::RedisRestart,
        target: "redis".into(),
        started: 6 * S,
        healed: 6 * S + S / 2,
        failed_over: None,
        note: String::new(),
    };
    let v = verdict(&ev, &[c], &[restart]);
    assert!(v.violations.is_empty(), "{:?}", v.violations);
}

#[test]
fn duplicates_and_reordering_are_reported() {
    let ev = events(5);
    let c = client(
        true,
        vec![conn(S / 2, None, &[1, 2, 2, 4, 3, 5], Some(None))],
    );
    let v = verdict(&ev, &[c], &[]);
    assert_eq!(kinds(&v), ["duplicate", "out_of_order"]);
}

#[test]
fn a_plain_client_may_lose_events_only_while_disconnected() {
    let ev = events(20);
    // Disconnected from 5.5 s to 9 s: 6..=8 may be lost; 4 was answered within 2 s of
    // the end of the first connection, so it may be lost too.
    let ok = client(
        false,
        vec![
            conn(S / 2, Some(5 * S + S / 2), &[1, 2, 3, 5], None),
            conn(9 * S, None, &(9..=20).collect::<Vec<_>>(), None),
        ],
    );
    let v = verdict(&ev, &[ok], &[]);
    assert!(v.violations.is_empty(), "{:?}", v.violations);
    // Losing 12 while connected is a violation.
    let seqs: Vec<u64> = (1..=20).filter(|s| *s != 12).collect();
    let bad = client(false, vec![conn(S / 2, None, &seqs, None)]);
    let v = verdict(&ev, &[bad], &[]);
    assert_eq!(kinds(&v), ["missing"]);
}

#[test]
fn an_event_never_published_must_not_arrive_and_maybe_ones_may_be_missing() {
    let mut ev = events(5);
    ev[0][1].outcome = Outcome::Never;
    ev[0][2].outcome = Outcome::Maybe;
    let c = client(true, vec![conn(S / 2, None, &[1, 2, 4, 5], Some(None))]);
    let v = verdict(&ev, &[c], &[]);
    assert_eq!(kinds(&v), ["phantom_frame"]);
}

#[test]
fn events_sent_while_redis_was_stopping_may_be_lost_but_not_those_after_it_restarted() {
    let ev = events(10);
    // Redis stopped at 4.5 s and was up again, empty, at 6.5 s: 5 and 6 were sent while
    // only the dying server could take them. 8 was sent to the new one.
    let restart = FaultRec {
        id: 0,
        kind: FaultKind::RedisRestart,
        target: "redis".into(),
        started: 4 * S + S / 2,
        healed: 6 * S + S / 2,
        failed_over: None,
        note: String::new(),
    };
    let lost = client(
        true,
        vec![conn(S / 2, None, &[1, 2, 3, 4, 7, 8, 9, 10], Some(None))],
    );
    let v = verdict(&ev, &[lost], std::slice::from_ref(&restart));
    assert!(v.violations.is_empty(), "{:?}", v.violations);
    let after = client(
        true,
        vec![conn(S / 2, None, &[1, 2, 3, 4, 5, 6, 7, 9, 10], Some(None))],
    );
    let v = verdict(&ev, &[after], &[restart]);
    assert_eq!(kinds(&v), ["missing"]);
}

#[test]
fn a_gateway_must_turn_unready_in_a_long_redis_fault_unless_sentinel_failed_over_quickly() {
    let ev = events(1);
    let ready_throughout = |from: Micros, to: Micros| GatewayLife {
        name: "gateway #1".into(),
        started: 0,
        ended: None,
        samples: (from / (S / 10)..=to / (S / 10))
            .map(|i| ReadySample {
                at: i * (S / 10),
                ready: Some(true),
            })
            .collect(),
    };
    let pause = |failed_over: Option<Micros>| FaultRec {
        id: 0,
        kind: FaultKind::SentinelPause,
        target: "sentinel primary".into(),
        started: 10 * S,
        healed: 16 * S,
        failed_over,
        note: String::new(),
    };
    let judge = |fault: FaultRec| {
        let gateways = [ready_throughout(0, 20 * S)];
        let faults = [fault];
        check(&Input {
            seed: 1,
            events: &ev,
            clients: &[],
            faults: &faults,
            anomalies: &[],
            gateways: &gateways,
            end: 100 * S,
            history_size: 1000,
            stall_timeout: 3 * S,
        })
    };
    // 6 s without a primary and never unready: a violation.
    assert_eq!(kinds(&judge(pause(None))), ["readyz_stayed_ready"]);
    // Failed over 2 s in: service was back (3 s) before the stall timeout plus slack.
    assert!(judge(pause(Some(12 * S))).violations.is_empty());
    // Failed over 5 s in: too late, the pod should have said so.
    assert_eq!(kinds(&judge(pause(Some(15 * S)))), ["readyz_stayed_ready"]);
}
