//! Reconnect storm: every client sits on gateway A; A is killed (`SIGKILL`, a crashed pod)
//! and all of them reconnect at once to gateway B, as clients behind a load balancer would.
//! Measured: time from the kill until every client has its 101 again, the slowest
//! reconnect, and what B asked of Postgres and Redis to take them in.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{count, reasons, settle, us, Cpu, Outcome, Params};
use crate::fleet::{Fleet, FleetSpec};
use crate::procfs;
use crate::protocol::now_micros;
use crate::system::{wait_connections, System};

const TARGET_BACK_US: u64 = 3_000_000;

/// Which population storms.
#[derive(Debug, Clone, Copy)]
pub enum Population {
    /// Every client on one instance (`hot`): B's auth cache fills after the first lookups.
    OneInstance,
    /// One client per instance (`m-<i>`): every reconnect is a distinct instance to look up
    /// and subscribe.
    ManyInstances,
}

/// Runs one storm, then replaces the killed gateway so later scenarios have two again.
pub async fn run(sys: &mut System, p: &Params, population: Population) -> anyhow::Result<Outcome> {
    let n = p.storm_clients;
    let (key, title, name, instances) = match population {
        Population::OneInstance => (
            "storm_hot",
            "Reconnect storm: clients of one instance",
            "hot".to_owned(),
            1,
        ),
        Population::ManyInstances => (
            "storm_many",
            "Reconnect storm: one client per instance",
            "m-{i}".to_owned(),
            n.min(sys.many),
        ),
    };
    let mut o = Outcome::new(key, title);
    o.set(
        "clients",
        format!(
            "{} on gateway A over {} instance(s); on loss each reconnects at once to B \
             (every handshake in flight together, no backoff)",
            count(n as f64),
            count(instances as f64)
        ),
    );
    o.set("drop", "gateway A killed with SIGKILL");
    let urls = vec![sys.ws_url(0, &name), sys.ws_url(1, &name)];
    let mut spec = FleetSpec::new(urls, n);
    spec.instances = instances;
    spec.per_worker = p.per_worker;
    spec.reconnect = true;
    spec.concurrency = p.per_worker;
    let mut fleet = Fleet::spawn(&spec).await?;
    let before = fleet.wait("connected", Duration::from_secs(180)).await?;
    wait_connections(
        &sys.gateways[0],
        before.connect_ok as f64,
        Duration::from_secs(30),
    )
    .await?;
    o.row(
        "clients connected to A before the kill",
        count(before.connect_ok as f64),
        "connected",
        before.connect_ok,
    );
    if before.connect_failed > 0 {
        o.note(format!(
            "{} first connects failed: {}",
            before.connect_failed,
            reasons(&before.failures)
        ));
    }
    // B is a fresh process (every scenario starts with new gateways): its auth cache is cold,
    // as on a pod that never saw these clients.
    settle(Duration::from_secs(1)).await;
    sys.pg_reset().await?;
    let xact0 = sys.pg_xact_commit().await?;
    let redis0 = sys.redis_commands().await?;
    let pids = fleet.pids();
    let cpu0 = Cpu::now(sys, &pids);

    let overflows0 = procfs::tcp_ext("ListenOverflows");
    let drops0 = procfs::tcp_ext("ListenDrops");
    let killed_at = now_micros();
    sys.gateways[0].kill9();
    let back = fleet.wait("back", Duration::from_secs(120)).await;
    let cpu1 = Cpu::now(sys, &pids);
    let overflows = procfs::tcp_ext("ListenOverflows") - overflows0;
    let drops = procfs::tcp_ext("ListenDrops") - drops0;
    // pg_stat_database is flushed by backends at most once a second.
    settle(Duration::from_millis(1500)).await;
    let xact1 = sys.pg_xact_commit().await?;
    let redis1 = sys.redis_commands().await?;
    let statements = sys.pg_statements().await?;
    let after = fleet.report().await?;
    match back {
        Ok(m) => {
            let took = m.back.saturating_sub(killed_at);
            o.row(
                "**kill → every client back**",
                format!("**{}**", us(took)),
                "back_us",
                took,
            );
            o.target(
                &format!("{} clients fully back", count(n as f64)),
                "< 3 s",
                us(took),
                took < TARGET_BACK_US,
            );
        }
        Err(e) => {
            o.row(
                "kill → every client back",
                "not within 120 s",
                "back_us",
                -1,
            );
            o.target(
                &format!("{} clients fully back", count(n as f64)),
                "< 3 s",
                format!(
                    "not within 120 s ({} of {} back)",
                    after.live, before.connect_ok
                ),
                false,
            );
            o.note(format!("waiting for the storm to end: {e:#}"));
        }
    }
    o.latency(
        "loss → 101 again, per client",
        "reconnect_latency",
        &after.reconnect_latency,
    );
    o.latency(
        "**handshake of the successful reconnect (TCP connect → 101)**",
        "reconnect_connect_latency",
        &after.reconnect_connect_latency,
    );
    o.row(
        "reconnect attempts / reconnected",
        format!(
            "{} / {}",
            count(after.reconnect_attempts as f64),
            count(after.reconnects as f64)
        ),
        "reconnect_attempts",
        after.reconnect_attempts,
    );
    o.row(
        "accept-queue overflows while reconnecting (kernel `ListenOverflows` / `ListenDrops`)",
        format!("{} / {}", count(overflows as f64), count(drops as f64)),
        "listen_overflows",
        serde_json::json!({"overflows": overflows, "drops": drops}),
    );
    if overflows > 0 {
        o.note(format!(
            "{} handshakes found B's accept queue full; those clients' SYN or ACK was dropped and \
             retransmitted after the kernel's 1 s initial timeout, which is where the slowest \
             reconnects come from. The gateway binds with `tokio::net::TcpListener::bind`, \
             whose backlog is mio's 128 (`net.core.somaxconn` here: {}); binding through \
             `TcpSocket::listen(4096)` would let a storm queue instead.",
            count(overflows as f64),
            std::fs::read_to_string("/proc/sys/net/core/somaxconn")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        ));
    }
    o.row(
        "failed attempts",
        reasons(&after.failures),
        "failures",
        &after.failures,
    );
    let total: i64 = statements.iter().map(|(_, c)| c).sum();
    let top: Vec<String> = statements
        .iter()
        .take(4)
        .map(|(q, c)| format!("{} × `{}`", count(*c as f64), short(q)))
        .collect();
    if sys.statements {
        o.row(
            "**Postgres statements** (pg_stat_statements)",
            format!("**{}**: {}", count(total as f64), top.join(" · ")),
            "pg_statements",
            total,
        );
    }
    if !sys.statements {
        // A coarse fallback: it also counts autovacuum and the benchmark's own reads.
        o.row(
            "Postgres transactions (pg_stat_database.xact_commit)",
            count((xact1 - xact0) as f64),
            "pg_xact_commit",
            xact1 - xact0,
        );
    }
    let deltas: BTreeMap<String, u64> = redis1
        .iter()
        .map(|(k, v)| (k.clone(), v - redis0.get(k).copied().unwrap_or(0)))
        .filter(|(_, d)| *d > 0)
        .collect();
    o.row(
        "Redis commands",
        deltas
            .iter()
            .map(|(k, v)| format!("{k} {}", count(*v as f64)))
            .collect::<Vec<_>>()
            .join(" · "),
        "redis_commands",
        &deltas,
    );
    let cpu = cpu0.until(&cpu1);
    o.row(
        "CPU seconds from the kill until all were back",
        cpu.describe(),
        "cpu",
        cpu.json(),
    );
    fleet.stop().await?;
    wait_connections(&sys.gateways[1], 0.0, Duration::from_secs(60)).await?;
    sys.replace_gateway(0).await?;
    Ok(o)
}

/// A statement on one line, at most 90 characters.
fn short(q: &str) -> String {
    let one: String = q.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() > 90 {
        format!("{}…", one.chars().take(90).collect::<String>())
    } else {
        one
    }
}
