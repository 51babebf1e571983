//! Idle: how much resident memory one gateway spends per open, subscribed, silent connection,
//! at 10k connections and at the largest count its open-files limit allows, and how fast
//! connections are accepted (TCP connect + authenticate + subscribe + 101).

use std::time::Duration;

use super::{bytes, count, reasons, settle, us, Outcome, Params};
use crate::fleet::{Fleet, FleetSpec};
use crate::procfs;
use crate::system::{wait_connections, System};

/// Open files the gateway may need beyond its resting set while clients connect (Postgres
/// pool growth, Redis, accepted sockets not yet upgraded).
const FD_MARGIN: u64 = 150;
/// Target of the issue.
const TARGET_BYTES: f64 = 6.0 * 1024.0;

/// Runs the scenario on gateway A.
pub async fn run(sys: &System, p: &Params) -> anyhow::Result<Outcome> {
    let mut o = Outcome::new(
        "idle",
        "Idle connections: memory and connect rate (one gateway)",
    );
    let gw = &sys.gateways[0];
    let url = sys.ws_url(0, "idle");
    // Warm-up: the first connections allocate the runtime's, pool's and hub's one-time state.
    let mut warm = Fleet::spawn(&FleetSpec::new(vec![url.clone()], 200)).await?;
    warm.wait("connected", Duration::from_secs(60)).await?;
    warm.stop().await?;
    wait_connections(gw, 0.0, Duration::from_secs(30)).await?;
    settle(Duration::from_secs(1)).await;

    let fds0 = procfs::open_fds(gw.pid()) as u64;
    let soft = procfs::open_files_limit(&gw.pid().to_string()).map_or(20_000, |(s, _)| s);
    let feasible = soft.saturating_sub(fds0 + FD_MARGIN) as usize;
    let top = p.idle_max.min(feasible);
    o.set("instance", "one (`idle`), every client subscribed to it");
    o.set(
        "gateway open-files limit",
        format!("{soft} (soft); {fds0} in use at rest"),
    );
    o.set(
        "steps",
        format!(
            "{} connections, then {} (asked {}; the open-files limit allows about {})",
            count(p.idle_first as f64),
            count(top as f64),
            count(p.idle_max as f64),
            count(feasible as f64)
        ),
    );
    o.set(
        "clients",
        format!(
            "`ryze-load` workers of ≤ {} connections, 256 handshakes in flight each",
            count(p.per_worker as f64)
        ),
    );

    let rss0 = procfs::rss_bytes(gw.pid()) as f64;
    let tcp0 = procfs::tcp_mem_pages() as f64;
    o.row("gateway RSS before", bytes(rss0), "rss_before", rss0);

    let overflows0 = procfs::tcp_ext("ListenOverflows");
    let mut spec = FleetSpec::new(vec![url.clone()], p.idle_first);
    spec.per_worker = p.per_worker;
    let mut first = Fleet::spawn(&spec).await?;
    let m1 = first.wait("connected", Duration::from_secs(180)).await?;
    let overflows1 = procfs::tcp_ext("ListenOverflows") - overflows0;
    wait_connections(gw, m1.connect_ok as f64, Duration::from_secs(30)).await?;
    settle(Duration::from_secs(2)).await;
    let rss1 = procfs::rss_bytes(gw.pid()) as f64;
    let tcp1 = procfs::tcp_mem_pages() as f64;
    let n1 = m1.connect_ok as f64;
    let per1 = (rss1 - rss0) / n1.max(1.0);
    o.row(
        &format!("connected (step 1, of {})", count(p.idle_first as f64)),
        count(n1),
        "step1_connected",
        m1.connect_ok,
    );
    o.row(
        "connect rate (step 1)",
        format!(
            "{}/s ({} in {:.2} s)",
            count(m1.connect_rate()),
            count(n1),
            m1.connect_span()
        ),
        "connect_rate",
        m1.connect_rate(),
    );
    o.latency(
        "connect latency (TCP + upgrade + 101)",
        "connect_latency",
        &m1.connect_latency,
    );
    o.row(
        "accept-queue overflows while connecting (kernel `ListenOverflows`)",
        count(overflows1 as f64),
        "listen_overflows_step1",
        overflows1,
    );
    if overflows1 > 0 {
        o.note(format!(
            "{} handshakes of step 1 found the gateway's accept queue (backlog 128) full and \
             were retransmitted after 1 s: that is the slow tail of the connect latency.",
            count(overflows1 as f64)
        ));
    }
    o.row("gateway RSS at step 1", bytes(rss1), "rss_step1", rss1);
    o.row(
        "**RSS per idle connection, step 1**",
        format!("**{}**", bytes(per1)),
        "rss_per_conn_step1",
        per1,
    );
    o.row(
        "kernel TCP memory per connection (both ends, not in RSS)",
        bytes((tcp1 - tcp0) * 4096.0 / n1.max(1.0)),
        "kernel_tcp_per_conn_step1",
        (tcp1 - tcp0) * 4096.0 / n1.max(1.0),
    );
    o.target(
        &format!("RSS per idle connection at {}", count(n1)),
        "≤ 6 KiB",
        bytes(per1),
        per1 <= TARGET_BYTES,
    );
    if m1.connect_failed > 0 {
        o.note(format!(
            "step 1: {} connects failed: {}",
            m1.connect_failed,
            reasons(&m1.failures)
        ));
    }

    let mut fleets = vec![first];
    if top > p.idle_first {
        let mut spec = FleetSpec::new(vec![url.clone()], top - p.idle_first);
        spec.per_worker = p.per_worker;
        let mut second = Fleet::spawn(&spec).await?;
        let m2 = second.wait("connected", Duration::from_secs(180)).await?;
        let n2 = n1 + m2.connect_ok as f64;
        let _ = wait_connections(gw, n2, Duration::from_secs(30)).await;
        settle(Duration::from_secs(2)).await;
        let rss2 = procfs::rss_bytes(gw.pid()) as f64;
        let tcp2 = procfs::tcp_mem_pages() as f64;
        let per2 = (rss2 - rss0) / n2.max(1.0);
        o.row(
            &format!("connected (step 2, of {})", count(top as f64)),
            count(n2),
            "step2_connected",
            n2,
        );
        o.row(
            "connect rate (step 2, on top of step 1)",
            format!("{}/s", count(m2.connect_rate())),
            "connect_rate_step2",
            m2.connect_rate(),
        );
        o.row("gateway RSS at step 2", bytes(rss2), "rss_step2", rss2);
        o.row(
            "**RSS per idle connection, step 2**",
            format!("**{}**", bytes(per2)),
            "rss_per_conn_step2",
            per2,
        );
        o.row(
            "gateway open files at step 2",
            count(procfs::open_fds(gw.pid()) as f64),
            "fds_step2",
            procfs::open_fds(gw.pid()),
        );
        o.row(
            "kernel TCP memory per connection (both ends, not in RSS)",
            bytes((tcp2 - tcp0) * 4096.0 / n2.max(1.0)),
            "kernel_tcp_per_conn_step2",
            (tcp2 - tcp0) * 4096.0 / n2.max(1.0),
        );
        o.target(
            &format!("RSS per idle connection at {}", count(n2)),
            "≤ 6 KiB",
            bytes(per2),
            per2 <= TARGET_BYTES,
        );
        if m2.connect_failed > 0 {
            o.note(format!(
                "step 2: {} connects failed: {}",
                m2.connect_failed,
                reasons(&m2.failures)
            ));
        }
        fleets.push(second);
    }
    if p.idle_max > top {
        o.note(format!(
            "{} connections on one gateway are not possible here: a process may hold {soft} open \
             files (hard limit), so one gateway tops out near {}. More connections per machine \
             need more gateway processes (or a higher `ulimit -n`).",
            count(p.idle_max as f64),
            count(feasible as f64)
        ));
    }
    let mut closed_latency_max = 0;
    for f in fleets {
        let m = f.stop().await?;
        closed_latency_max = closed_latency_max.max(m.connect_latency.max());
    }
    wait_connections(gw, 0.0, Duration::from_secs(60)).await?;
    settle(Duration::from_secs(2)).await;
    let rss_after = procfs::rss_bytes(gw.pid()) as f64;
    o.row(
        "gateway RSS after every client left",
        bytes(rss_after),
        "rss_after_close",
        rss_after,
    );
    o.raw("slowest_connect_us", closed_latency_max);
    o.raw("slowest_connect", us(closed_latency_max));
    Ok(o)
}
