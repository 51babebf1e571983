//! History (SPEC D37) on and off, and resuming (§5.7) at scale.
//!
//! - [`fanout_history`]: the fan-out scenario with the publisher at `HISTORY_SIZE=0` and at the
//!   default (1000), interleaved off, on, off, on (the machine is shared, so load drifts; back
//!   to back pairs keep a drift from reading as a cost). Each round starts a fresh publisher
//!   and fresh gateways.
//! - [`resume`]: 1,000 clients come back at once with `since=<offset>` 100 frames back; the
//!   time from starting the connect to having the 100 replayed frames, per client and in total.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::stream::{common, stream, Spec, Streamed};
use super::{count, us, Cpu, Outcome, Params};
use crate::histogram::Histogram;
use crate::publish::{event, Publisher};
use crate::system::{metric, metrics, System, API_KEY};
use ryze_tests::WsClient;

/// The issue's target: history on costs at most this share of saturated deliveries/s.
const TARGET_COST: f64 = 0.10;

/// Upper bound for one resuming client to get its frames.
const RESUME_WAIT: Duration = Duration::from_secs(120);

/// Per round: what the comparison needs.
struct Round {
    on: bool,
    deliveries_per_s: f64,
    gw_cpu_us_per_delivery: f64,
    redis_cpu_us_per_event: f64,
    publisher_cpu_us_per_event: f64,
    p99_us: u64,
    lost: i64,
}

impl Round {
    fn of(on: bool, st: &Streamed) -> Round {
        let d = &st.delivered;
        let events = st.published.published.max(1) as f64;
        Round {
            on,
            deliveries_per_s: d.frames as f64 / st.window_secs().max(1e-9),
            gw_cpu_us_per_delivery: st.cpu.gateway_total() * 1e6 / (d.frames.max(1) as f64),
            redis_cpu_us_per_event: st.cpu.redis * 1e6 / events,
            publisher_cpu_us_per_event: st.cpu.publisher * 1e6 / events,
            p99_us: d.latency.quantile(0.99),
            lost: st.expected as i64 - d.frames as i64,
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "history": self.on, "deliveries_per_s": self.deliveries_per_s,
            "gateway_cpu_us_per_delivery": self.gw_cpu_us_per_delivery,
            "redis_cpu_us_per_event": self.redis_cpu_us_per_event,
            "publisher_cpu_us_per_event": self.publisher_cpu_us_per_event,
            "p99_us": self.p99_us, "lost": self.lost,
        })
    }
}

fn mean(rounds: &[Round], on: bool, f: impl Fn(&Round) -> f64) -> f64 {
    let v: Vec<f64> = rounds.iter().filter(|r| r.on == on).map(f).collect();
    v.iter().sum::<f64>() / (v.len().max(1) as f64)
}

/// The publisher's environment for history on (its defaults) or off.
fn history_env(on: bool) -> Vec<(&'static str, String)> {
    if on {
        Vec::new()
    } else {
        vec![("HISTORY_SIZE", "0".to_owned())]
    }
}

/// Fan-out with history off and on, `p.history_pairs` interleaved pairs.
pub async fn fanout_history(sys: &mut System, p: &Params) -> anyhow::Result<Outcome> {
    let mut o = Outcome::new(
        "fanout_history",
        "History off and on: the fan-out scenario, interleaved",
    );
    let requests = Spec::fanout(sys, p, p.fanout_rate, p.fanout_secs)?.requests;
    o.set(
        "subscribers",
        format!(
            "{} (half per gateway), documented frames (no `since`)",
            count(p.fanout_clients as f64)
        ),
    );
    o.set(
        "events",
        format!(
            "{} events/s for {} s = {} events per round, ~{} B frames",
            p.fanout_rate,
            p.fanout_secs,
            count(requests as f64),
            p.fanout_frame_bytes
        ),
    );
    o.set(
        "rounds",
        format!(
            "{} × (off, on): `HISTORY_SIZE=0` vs the default 1000 on the publisher; a fresh \
             publisher and fresh gateways each round",
            p.history_pairs
        ),
    );
    let mut rounds = Vec::new();
    for pair in 0..p.history_pairs {
        for on in [false, true] {
            let label = if on { "on" } else { "off" };
            eprintln!("    history {label}, pair {}", pair + 1);
            sys.restart_publisher(&history_env(on)).await?;
            sys.restart_gateways().await?;
            let redis0 = sys.redis_commands().await?;
            let spec = Spec {
                profile: false,
                ..Spec::fanout(sys, p, p.fanout_rate, p.fanout_secs)?
            };
            let st = stream(sys, p, &format!("history_{label}_{pair}"), &spec).await?;
            let redis1 = sys.redis_commands().await?;
            let calls =
                |k: &str| redis1.get(k).copied().unwrap_or(0) - redis0.get(k).copied().unwrap_or(0);
            let r = Round::of(on, &st);
            let closed: f64 = st
                .delta("ryze_gateway_connections_closed_total", "")
                .iter()
                .sum();
            let slow: f64 = st
                .delta("ryze_gateway_connections_closed_total", "slow_consumer")
                .iter()
                .sum();
            if r.lost != 0 || closed > 0.0 {
                o.note(format!(
                    "history {label} (pair {}): {} lost; the gateways closed {} connections ({} as \
                     slow consumers); clients saw {}",
                    pair + 1,
                    count(r.lost as f64),
                    count(closed),
                    count(slow),
                    super::reasons(&st.delivered.ends)
                ));
            }
            o.row(
                &format!("history {label} (pair {})", pair + 1),
                format!(
                    "{} deliveries/s · gateway {:.2} µs CPU per delivery · Redis {:.1} µs CPU per \
                     event · publisher {:.1} µs CPU per event · publish → receive p99 {} · lost {} \
                     · Redis calls: publish {} · eval + evalsha (history script) {} · xadd {}",
                    count(r.deliveries_per_s),
                    r.gw_cpu_us_per_delivery,
                    r.redis_cpu_us_per_event,
                    r.publisher_cpu_us_per_event,
                    us(r.p99_us),
                    count(r.lost as f64),
                    count(calls("publish") as f64),
                    count((calls("eval") + calls("evalsha")) as f64),
                    count(calls("xadd") as f64),
                ),
                &format!("round_{label}_{pair}"),
                r.json(),
            );
            if pair == 0 && on {
                // The full rows of one history-on round, like the fan-out scenario's.
                let mut detail = Outcome::new("", "");
                common(&mut detail, &st);
                o.raw("history_on_detail", &detail.raw);
            }
            rounds.push(r);
        }
    }
    // Leave the system as the other scenarios expect it: history at its default.
    sys.restart_publisher(&[]).await?;

    let off = |f: fn(&Round) -> f64| mean(&rounds, false, f);
    let on = |f: fn(&Round) -> f64| mean(&rounds, true, f);
    let d_off = off(|r| r.deliveries_per_s);
    let d_on = on(|r| r.deliveries_per_s);
    let cost = 1.0 - d_on / d_off.max(1e-9);
    let cpu_off = off(|r| r.gw_cpu_us_per_delivery);
    let cpu_on = on(|r| r.gw_cpu_us_per_delivery);
    let redis_off = off(|r| r.redis_cpu_us_per_event);
    let redis_on = on(|r| r.redis_cpu_us_per_event);
    let p99_off = off(|r| r.p99_us as f64);
    let p99_on = on(|r| r.p99_us as f64);
    o.row(
        "**mean deliveries/s, off → on**",
        format!(
            "**{} → {}** ({:+.1} %)",
            count(d_off),
            count(d_on),
            -cost * 100.0
        ),
        "deliveries_per_s",
        serde_json::json!({"off": d_off, "on": d_on, "cost": cost}),
    );
    o.row(
        "mean gateway CPU per delivery, off → on",
        format!(
            "{cpu_off:.2} µs → {cpu_on:.2} µs ({:+.1} %)",
            (cpu_on / cpu_off.max(1e-9) - 1.0) * 100.0
        ),
        "gateway_cpu_us_per_delivery",
        serde_json::json!({"off": cpu_off, "on": cpu_on}),
    );
    o.row(
        "mean Redis CPU per published event, off → on",
        format!("{redis_off:.1} µs → {redis_on:.1} µs"),
        "redis_cpu_us_per_event",
        serde_json::json!({"off": redis_off, "on": redis_on}),
    );
    o.row(
        "mean publish → receive p99, off → on",
        format!("{} → {}", us(p99_off as u64), us(p99_on as u64)),
        "p99_us",
        serde_json::json!({"off": p99_off, "on": p99_on}),
    );
    let lost: i64 = rounds.iter().map(|r| r.lost).sum();
    o.target("loss (every round)", "0", count(lost as f64), lost == 0);
    o.target(
        "history on costs of deliveries/s",
        "≤ 10 %",
        format!("{:.1} %", cost * 100.0),
        cost <= TARGET_COST,
    );
    Ok(o)
}

/// `p.resume_clients` clients resume at once, each `p.resume_missed` frames behind.
pub async fn resume(sys: &mut System, p: &Params) -> anyhow::Result<Outcome> {
    let mut o = Outcome::new(
        "resume",
        "Resume: clients come back at once, each with frames to replay",
    );
    let id = sys.id("resume")?;
    let missed = p.resume_missed;
    o.set(
        "clients",
        format!(
            "{} (half per gateway), all started at once, `since=<offset>` {} frames back",
            count(p.resume_clients as f64),
            missed
        ),
    );
    o.set(
        "frames",
        "~300 B; history at its default (1000 frames); nothing published meanwhile",
    );
    // A resumable watcher keeps the instance's history filled and tells the offsets.
    let mut watcher = WsClient::connect(&format!("{}&since=now", sys.ws_url(0, "resume")), &[])
        .await
        .map_err(|e| anyhow::anyhow!("watcher connect: {e}"))?;
    let publisher = Publisher::new(sys.ingest_url(), API_KEY)?;
    let pad = "x".repeat(125);
    let items: Vec<String> = (0..=missed as u64)
        .map(|n| event(&id, crate::protocol::now_micros(), n, &pad))
        .collect();
    let (published, _) = publisher.post(format!("[{}]", items.join(","))).await?;
    if published != missed as u64 + 1 {
        bail!("published {published} of {} events", missed + 1);
    }
    let mut since = None;
    for _ in 0..=missed {
        let text = watcher.next_text(Duration::from_secs(30)).await?;
        let v: serde_json::Value = serde_json::from_str(&text).context("watcher frame")?;
        if since.is_none() {
            since = v["offset"].as_str().map(str::to_owned);
        }
    }
    let since = since.context("the watcher's first frame had no offset")?;

    let urls: Vec<String> = (0..2)
        .map(|gw| format!("{}&since={since}", sys.ws_url(gw, "resume")))
        .collect();
    let metrics_before = [
        metrics(&sys.gateways[0]).await?,
        metrics(&sys.gateways[1]).await?,
    ];
    let cpu0 = Cpu::now(sys, &[]);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(p.resume_clients);
    for i in 0..p.resume_clients {
        let url = urls[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let mut c = WsClient::connect(&url, &[])
                .await
                .map_err(|e| anyhow::anyhow!("connect: {e}"))?;
            let (mut frames, mut gaps) = (0usize, 0usize);
            while frames < missed {
                let text = c.next_text(RESUME_WAIT).await?;
                if text.contains(r#""event":"stream.gap""#) {
                    gaps += 1;
                } else {
                    frames += 1;
                }
            }
            let took = t0.elapsed();
            let done = Instant::now();
            drop(c);
            anyhow::Ok((took, done, gaps))
        }));
    }
    let mut h = Histogram::default();
    let (mut failed, mut gaps, mut last) = (0usize, 0usize, started);
    let mut first_error = None;
    for t in tasks {
        match t.await.context("resume task")? {
            Ok((took, done, g)) => {
                h.record(took.as_micros() as u64);
                gaps += g;
                last = last.max(done);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let total = last - started;
    let cpu = cpu0.until(&Cpu::now(sys, &[]));
    let metrics_after = [
        metrics(&sys.gateways[0]).await?,
        metrics(&sys.gateways[1]).await?,
    ];
    let delta = |name: &str| -> f64 {
        metrics_after
            .iter()
            .zip(&metrics_before)
            .map(|(a, b)| metric(a, name, "") - metric(b, name, ""))
            .sum()
    };
    drop(watcher);

    o.latency(
        &format!("**connect → {missed} replayed frames, per client**"),
        "resume_latency",
        &h,
    );
    o.row(
        "**all clients resumed (first connect → last client done)**",
        format!("**{}**", us(total.as_micros() as u64)),
        "total_us",
        total.as_micros() as u64,
    );
    o.row(
        "clients resumed / failed · stream.gap frames",
        format!("{} / {failed} · {gaps}", count(h.count() as f64)),
        "clients",
        serde_json::json!({"ok": h.count(), "failed": failed, "gaps": gaps}),
    );
    o.row(
        "frames replayed (gateway `ryze_gateway_frames_replayed_total`)",
        count(delta("ryze_gateway_frames_replayed_total")),
        "frames_replayed",
        delta("ryze_gateway_frames_replayed_total"),
    );
    o.row(
        "CPU while resuming",
        format!(
            "gateways {:.2} s · Redis {:.2} s ({:.0} µs per client's history read)",
            cpu.gateway_total(),
            cpu.redis,
            cpu.redis * 1e6 / (p.resume_clients.max(1) as f64)
        ),
        "cpu",
        cpu.json(),
    );
    if let Some(e) = first_error {
        o.note(format!("first failure: {e}"));
    }
    o.target(
        "every client gets its frames, no gap",
        "all",
        format!("{} of {}", count(h.count() as f64), p.resume_clients),
        failed == 0 && gaps == 0,
    );
    Ok(o)
}
