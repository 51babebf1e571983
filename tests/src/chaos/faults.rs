//! The fault injectors. Each planned fault runs in its own task at its planned offset, so
//! faults overlap as drawn; faults on one resource (Redis, Postgres) wait for each other,
//! and process kills always leave one gateway and one publisher running, so the system keeps
//! a way to recover. A fault records when it actually started and when it was healed.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Mutex as AsyncMutex;

use super::history::{lock, now, FaultRec, Micros};
use super::load::{stalled_client, Feeder};
use super::schedule::{FaultKind, PlannedFault};
use super::system::{Redis, Slot, System, SHUTDOWN};

/// How long a process kill waits for a target when all but one are already down.
const TARGET_WAIT: Duration = Duration::from_secs(20);

/// Locks serialising faults on one resource.
#[derive(Default)]
pub struct Locks {
    redis: AsyncMutex<()>,
    postgres: AsyncMutex<()>,
}

/// Injects `fault` now and returns its record once healed.
pub async fn inject(
    sys: &Arc<System>,
    feeders: &[Feeder],
    locks: &Locks,
    fault: &PlannedFault,
) -> FaultRec {
    let hold = Duration::from_secs_f64(fault.duration);
    let mut rec = FaultRec {
        id: fault.id,
        kind: fault.kind,
        target: String::new(),
        started: now(),
        healed: now(),
        failed_over: None,
        note: String::new(),
    };
    let result: anyhow::Result<()> = async {
        match fault.kind {
            FaultKind::GatewayKill | FaultKind::GatewayTerm => {
                kill_gateway(sys, fault, hold, &mut rec).await
            }
            FaultKind::PublisherKill => kill_publisher(sys, fault, hold, &mut rec).await,
            FaultKind::RedisRestart | FaultKind::RedisPause | FaultKind::RedisBlackhole => {
                let _guard = if fault.kind == FaultKind::RedisBlackhole {
                    None // the proxy is independent of the server: overlaps with the others
                } else {
                    Some(locks.redis.lock().await)
                };
                redis_fault(sys, fault, hold, &mut rec).await
            }
            FaultKind::ClusterMasterKill
            | FaultKind::SentinelFailover
            | FaultKind::SentinelPause => {
                let _guard = locks.redis.lock().await;
                redis_fault(sys, fault, hold, &mut rec).await
            }
            FaultKind::PostgresRestart => {
                let _guard = locks.postgres.lock().await;
                rec.target = "postgres".into();
                rec.started = now();
                sys.pg.stop().await?;
                tokio::time::sleep(hold).await; // the outage's drawn length
                sys.pg.start().await?;
                rec.healed = now();
                Ok(())
            }
            FaultKind::StalledClient => {
                let inst = (fault.target % sys.instances.len() as u64) as usize;
                rec.target = format!("instance {inst}");
                rec.started = now();
                rec.note = stalled_client(sys, inst, hold).await?;
                rec.healed = now();
                Ok(())
            }
            FaultKind::Burst => {
                let inst = (fault.target % feeders.len() as u64) as usize;
                rec.target = format!("instance {inst}");
                rec.started = now();
                rec.healed = rec.started;
                feeders[inst]
                    .bursts
                    .send(())
                    .map_err(|_| anyhow::anyhow!("the feeder has stopped"))
            }
        }
    }
    .await;
    if let Err(e) = result {
        rec.note = format!("{} error: {e:#}", rec.note);
        rec.healed = now();
    }
    rec
}

/// Picks a present slot (`target` modulo their count) while at least two are present.
async fn take_target(slots: &std::sync::Mutex<Vec<Option<Slot>>>, target: u64) -> Option<usize> {
    let deadline = tokio::time::Instant::now() + TARGET_WAIT;
    loop {
        {
            let slots = lock(slots);
            let present: Vec<usize> = (0..slots.len())
                .filter(|i| slots[*i].as_ref().is_some_and(|s| !s.planned_exit))
                .collect();
            if present.len() >= 2 {
                return Some(present[(target % present.len() as u64) as usize]);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await; // waiting for another fault to put a process back
    }
}

async fn kill_gateway(
    sys: &Arc<System>,
    fault: &PlannedFault,
    hold: Duration,
    rec: &mut FaultRec,
) -> anyhow::Result<()> {
    let Some(i) = take_target(&sys.gateways, fault.target).await else {
        rec.target = "none".into();
        anyhow::bail!("skipped: only one gateway present");
    };
    let svc = {
        let mut slots = lock(&sys.gateways);
        let slot = slots[i].as_mut().context("slot emptied")?;
        slot.planned_exit = true;
        lock(&sys.recorder.gateways)[slot.life].ended = Some(now());
        slot.svc.clone()
    };
    rec.target = format!("gateway slot {i} (pid {})", svc.pid());
    rec.started = now();
    // Out of the balancer first, as a pod leaves its Service's endpoints.
    {
        let mut slots = lock(&sys.gateways);
        let taken = slots[i].take();
        drop(slots);
        sys.update_balancer();
        let kill = fault.kind == FaultKind::GatewayKill;
        let signal = if kill { "KILL" } else { "TERM" };
        svc.signal(signal);
        drop(taken);
    }
    let status = wait_exit(&svc, SHUTDOWN + Duration::from_secs(10)).await;
    match (fault.kind, status) {
        (FaultKind::GatewayTerm, Some(s)) if !s.success() => sys.recorder.anomaly(
            "drain_failed",
            format!(
                "{} exited with {} after SIGTERM",
                rec.target,
                crate::describe(s)
            ),
        ),
        (_, None) => sys.recorder.anomaly(
            "no_exit",
            format!(
                "{} still running {SHUTDOWN:?} + 10 s after {:?}",
                rec.target, fault.kind
            ),
        ),
        _ => {}
    }
    drop(svc);
    tokio::time::sleep(hold).await; // the drawn time without the pod
    let new = sys.spawn_gateway().await?;
    rec.note = format!("replaced by pid {}", new.svc.pid());
    lock(&sys.gateways)[i] = Some(new);
    sys.update_balancer();
    rec.healed = now();
    Ok(())
}

async fn kill_publisher(
    sys: &Arc<System>,
    fault: &PlannedFault,
    hold: Duration,
    rec: &mut FaultRec,
) -> anyhow::Result<()> {
    let Some(i) = take_target(&sys.publishers, fault.target).await else {
        rec.target = "none".into();
        anyhow::bail!("skipped: only one publisher present");
    };
    let svc = {
        let mut slots = lock(&sys.publishers);
        let mut slot = slots[i].take().context("slot emptied")?;
        slot.planned_exit = true;
        slot.svc
    };
    rec.target = format!("publisher slot {i} (pid {})", svc.pid());
    rec.started = now();
    svc.signal("KILL");
    wait_exit(&svc, Duration::from_secs(10)).await;
    drop(svc);
    tokio::time::sleep(hold).await; // the drawn time without it
    let new = sys.spawn_publisher().await?;
    rec.note = format!("restarted as pid {}", new.svc.pid());
    lock(&sys.publishers)[i] = Some(new);
    rec.healed = now();
    Ok(())
}

async fn redis_fault(
    sys: &Arc<System>,
    fault: &PlannedFault,
    hold: Duration,
    rec: &mut FaultRec,
) -> anyhow::Result<()> {
    rec.started = now();
    match (&sys.redis, fault.kind) {
        (Redis::Single { server, .. }, FaultKind::RedisRestart) => {
            rec.target = "redis".into();
            server.stop().await?;
            tokio::time::sleep(hold).await; // the outage's drawn length
            server.restart().await?;
        }
        (Redis::Single { server, .. }, FaultKind::RedisPause) => {
            rec.target = "redis".into();
            let pid = server.pid().context("redis is not running")?;
            crate::supervisor::kill_pid("STOP", pid);
            tokio::time::sleep(hold).await; // the wedge's drawn length
            crate::supervisor::kill_pid("CONT", pid);
        }
        (Redis::Single { proxy, .. }, FaultKind::RedisBlackhole) => {
            rec.target = "redis proxy".into();
            proxy.blackhole_all();
            tokio::time::sleep(hold).await; // the black hole's drawn length
            proxy.heal();
        }
        (Redis::Cluster(c), FaultKind::ClusterMasterKill) => {
            let i = (fault.target % c.nodes().len() as u64) as usize;
            rec.target = format!("cluster master {i}");
            c.stop_node(i).await?;
            tokio::time::sleep(hold).await; // the outage's drawn length
            c.start_node(i).await?;
        }
        (Redis::Cluster(c), FaultKind::RedisPause) => {
            let i = (fault.target % c.nodes().len() as u64) as usize;
            rec.target = format!("cluster master {i}");
            let pid = c.node(i).pid().context("node is not running")?;
            crate::supervisor::kill_pid("STOP", pid);
            tokio::time::sleep(hold).await; // the wedge's drawn length
            crate::supervisor::kill_pid("CONT", pid);
        }
        (Redis::Sentinel(s), kind @ (FaultKind::SentinelFailover | FaultKind::SentinelPause)) => {
            let server = sentinel_primary(s).await?;
            rec.target = format!("sentinel primary :{}", server.port());
            let pid = server.pid().context("the primary is not running")?;
            let kill = kind == FaultKind::SentinelFailover;
            crate::supervisor::kill_pid(if kill { "KILL" } else { "STOP" }, pid);
            // Past down-after, Sentinel promotes a replica meanwhile.
            rec.failed_over = hold_watching_failover(s, server.port(), hold).await;
            if kill {
                server.restart().await?; // empty; Sentinel turns it into a replica
            } else {
                crate::supervisor::kill_pid("CONT", pid);
            }
        }
        (_, kind) => anyhow::bail!("{kind:?} does not apply to this Redis variant"),
    }
    rec.healed = now();
    Ok(())
}

/// Polls until the process has exited (`None` at `timeout`).
async fn wait_exit(svc: &crate::Service, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(s) = svc.exited() {
            return Some(s);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await; // polled: a child's exit has no event we can share
    }
}

/// Holds a Sentinel fault for `hold`, asking the first Sentinel every 100 ms which primary
/// it names; returns when it first named another port than `primary` (`None`: not within
/// the hold).
async fn hold_watching_failover(
    s: &crate::RedisSentinel,
    primary: u16,
    hold: Duration,
) -> Option<Micros> {
    let end = tokio::time::Instant::now() + hold;
    let mut failed_over = None;
    while tokio::time::Instant::now() < end {
        if failed_over.is_none() {
            let named = s.sentinels()[0].primary_port().await;
            if named.is_ok_and(|port| port != primary) {
                failed_over = Some(now());
            }
        }
        // The fault's drawn length, in steps short enough to date the failover.
        let step = end.saturating_duration_since(tokio::time::Instant::now());
        tokio::time::sleep(step.min(Duration::from_millis(100))).await;
    }
    failed_over
}

/// The server the Sentinels name as primary now (the roles swap with every failover).
async fn sentinel_primary(s: &crate::RedisSentinel) -> anyhow::Result<&crate::RedisServer> {
    let port = s.sentinels()[0].primary_port().await?;
    s.servers()
        .find(|r| r.port() == port)
        .with_context(|| format!("the Sentinels name port {port}, which is no server of ours"))
}
