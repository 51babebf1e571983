//! Multi-region publishing (`REGION_REDIS_URLS`): every event goes to every region's Redis,
//! and a slow or unreachable region never delays the others.
//!
//! Each region has a bounded queue and its own worker. Ingest only enqueues (a refcount bump
//! per message and region), so its latency does not depend on any region. A full queue drops
//! that region's messages and counts them; the region recovers by itself when its Redis
//! answers again. Control messages take the same queues, so they stay ordered after frames.
//!
//! With history on, each region's outlet runs the history script on its own Redis: every
//! region keeps its own history, and offsets are region-local (D37).

use super::RedisOutlet;
use crate::metrics::Metrics;
use futures_util::future::BoxFuture;
use ryze_core::bus::{Audience, Bus, BusError, Outgoing};
use ryze_core::channel::{ControlMessage, Names};
use ryze_core::history::Retention;
use ryze_core::redis::RedisTarget;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// Queued publish jobs per region (one job is one ingest request's messages).
const QUEUE_JOBS: usize = 1024;
/// How long the fast-path question may wait for a region before assuming "listening".
const LISTENING_TIMEOUT: Duration = Duration::from_millis(250);
/// Upper bound of one background check of a stalled region (see `Region::stalled`).
const STALLED_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Parses `eu=redis://…,us=redis-cluster://a:1,b:2`: a piece without `name=` continues the
/// previous URL (cluster URLs contain commas).
pub fn parse_regions(spec: &str) -> Result<Vec<(String, RedisTarget)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for piece in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let named = piece.split_once('=').filter(|(name, _)| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
        match (named, out.last_mut()) {
            (Some((name, url)), _) => {
                if out.iter().any(|(n, _)| n == name) {
                    return Err(format!("region {name:?} is listed twice"));
                }
                out.push((name.to_owned(), url.to_owned()));
            }
            (None, Some((_, url))) => {
                url.push(',');
                url.push_str(piece);
            }
            (None, None) => return Err(format!("{piece:?} is not name=url")),
        }
    }
    if out.is_empty() {
        return Err("no regions listed".to_owned());
    }
    out.into_iter()
        .map(|(name, url)| match RedisTarget::parse(&url) {
            Ok(target) => Ok((name, target)),
            Err(e) => Err(format!("region {name}: {e}")),
        })
        .collect()
}

enum Job {
    Publish(Vec<Outgoing>),
    Control(ControlMessage),
}

impl Job {
    fn len(&self) -> u64 {
        match self {
            Job::Publish(m) => m.len() as u64,
            Job::Control(_) => 1,
        }
    }
}

struct Region {
    name: String,
    outlet: Arc<RedisOutlet>,
    queue: mpsc::Sender<Job>,
    /// Set when the region did not answer the fast-path question within `LISTENING_TIMEOUT`
    /// while its connection looked up (a hung Redis keeps its TCP connection). Until a
    /// background check gets an answer again, ingest does not wait for the region at all:
    /// otherwise every ingest request, and so every other region's delivery, would pay
    /// `LISTENING_TIMEOUT` for as long as the region hangs.
    stalled: Arc<AtomicBool>,
    /// A background check of the stalled region is under way (at most one per region).
    checking: Arc<AtomicBool>,
}

/// Publishes to every region through per-region queues.
pub struct RegionsOutlet {
    regions: Vec<Region>,
    metrics: Metrics,
    /// Where the background checks of stalled regions run (tracked like the workers).
    tasks: TaskTracker,
}

impl RegionsOutlet {
    /// Connects every region and starts one worker each (tracked, stopped by `stop`). With
    /// history on (`options.history`), each region appends to its own history.
    pub fn connect(
        regions: Vec<(String, RedisTarget)>,
        names: Names,
        history: Option<Retention>,
        metrics: Metrics,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> Result<RegionsOutlet, BusError> {
        let mut out = Vec::new();
        for (name, target) in regions {
            let outlet = RedisOutlet::connect(target, names.clone(), history)?;
            outlet.watch(&name, metrics.clone(), tasks, stop.clone());
            let (tx, rx) = mpsc::channel(QUEUE_JOBS);
            tasks.spawn(worker(
                name.clone(),
                outlet.clone(),
                rx,
                metrics.clone(),
                stop.clone(),
            ));
            out.push(Region {
                name,
                outlet,
                queue: tx,
                stalled: Arc::new(AtomicBool::new(false)),
                checking: Arc::new(AtomicBool::new(false)),
            });
        }
        Ok(RegionsOutlet {
            regions: out,
            metrics,
            tasks: tasks.clone(),
        })
    }

    /// Asks a stalled region the fast-path question in the background (one check at a time)
    /// and clears `stalled` once it answers within `STALLED_CHECK_TIMEOUT`.
    fn check_stalled(&self, r: &Region, ids: &[Uuid]) {
        if r.checking.swap(true, Ordering::AcqRel) {
            return;
        }
        let outlet = r.outlet.clone();
        let (stalled, checking) = (r.stalled.clone(), r.checking.clone());
        let (name, ids) = (r.name.clone(), ids.to_vec());
        self.tasks.spawn(async move {
            let answer = tokio::time::timeout(STALLED_CHECK_TIMEOUT, outlet.audience(&ids)).await;
            if let Ok(Ok(_)) = answer {
                stalled.store(false, Ordering::Release);
                tracing::info!(region = %name, "region answers again; ingest waits for it again");
            }
            checking.store(false, Ordering::Release);
        });
    }

    fn enqueue(&self, make: impl Fn() -> Job) {
        for r in &self.regions {
            let job = make();
            let n = job.len();
            if r.queue.try_send(job).is_err() {
                self.metrics.region_dropped(&r.name, n);
            }
        }
    }
}

async fn worker(
    name: String,
    outlet: Arc<RedisOutlet>,
    mut jobs: mpsc::Receiver<Job>,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let mut failing = false;
    loop {
        let job = tokio::select! {
            _ = stop.cancelled() => return,
            j = jobs.recv() => match j { Some(j) => j, None => return },
        };
        let n = job.len();
        let result = match &job {
            Job::Publish(m) => outlet.publish(m.clone()).await,
            Job::Control(c) => outlet.control(c).await,
        };
        match result {
            Ok(()) => {
                if failing {
                    tracing::info!(region = %name, "region publishing recovered");
                    failing = false;
                }
            }
            Err(e) => {
                metrics.region_dropped(&name, n);
                if !failing {
                    tracing::warn!(region = %name, error = %e, "region unreachable; dropping its messages until it recovers");
                    failing = true;
                }
            }
        }
    }
}

impl Bus for RegionsOutlet {
    fn listening<'a>(&'a self, ids: &'a [Uuid]) -> BoxFuture<'a, Result<Vec<bool>, BusError>> {
        Box::pin(async move {
            let audience = self.audience(ids).await?;
            Ok(audience.into_iter().map(|a| a == Audience::Live).collect())
        })
    }

    /// The widest answer of any region: a frame goes to every region, so one live region makes
    /// it live everywhere (a wasted publish elsewhere is harmless).
    fn audience<'a>(&'a self, ids: &'a [Uuid]) -> BoxFuture<'a, Result<Vec<Audience>, BusError>> {
        Box::pin(async move {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            // A region that cannot answer in time counts as listening: a wasted publish is
            // harmless, a skipped one would lose events.
            let answers = futures_util::future::join_all(self.regions.iter().map(|r| async move {
                if !r.outlet.is_connected() {
                    return None;
                }
                if r.stalled.load(Ordering::Acquire) {
                    self.check_stalled(r, ids);
                    return None;
                }
                match tokio::time::timeout(LISTENING_TIMEOUT, r.outlet.audience(ids)).await {
                    Ok(Ok(v)) => Some(v),
                    Ok(Err(_)) => None,
                    Err(_) => {
                        if !r.stalled.swap(true, Ordering::AcqRel) {
                            tracing::warn!(
                                region = %r.name,
                                "region slow to answer; ingest stops waiting for it until it does"
                            );
                        }
                        None
                    }
                }
            }))
            .await;
            let mut out = vec![Audience::Nobody; ids.len()];
            for answer in answers {
                match answer {
                    None => return Ok(vec![Audience::Live; ids.len()]),
                    Some(v) => out.iter_mut().zip(v).for_each(|(o, a)| *o = (*o).max(a)),
                }
            }
            Ok(out)
        })
    }

    fn publish(&self, messages: Vec<Outgoing>) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            if !messages.is_empty() {
                self.enqueue(|| Job::Publish(messages.clone()));
            }
            Ok(())
        })
    }

    fn control<'a>(&'a self, msg: &'a ControlMessage) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            self.enqueue(|| Job::Control(msg.clone()));
            Ok(())
        })
    }

    fn is_ready(&self) -> bool {
        self.regions.iter().any(|r| r.outlet.is_connected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fred::types::config::ServerConfig;
    use ryze_core::redis::Topology;

    /// The hosts a cluster or sentinel URL lists (the pieces after the first comma included).
    fn hosts(t: &RedisTarget) -> usize {
        match &t.config.server {
            ServerConfig::Clustered { hosts, .. } | ServerConfig::Sentinel { hosts, .. } => {
                hosts.len()
            }
            _ => 1,
        }
    }

    #[test]
    fn regions_parse_with_cluster_urls_inside() {
        let r = parse_regions("eu=redis://127.0.0.1:1,us=redis-cluster://a:1,b:2, ap=redis://c:3")
            .unwrap();
        let shape: Vec<_> = r.iter().map(|(n, t)| (n.as_str(), t.topology)).collect();
        assert_eq!(
            shape,
            [
                ("eu", Topology::Standalone),
                ("us", Topology::Cluster),
                ("ap", Topology::Standalone),
            ]
        );
        assert_eq!(hosts(&r[1].1), 2);
        assert!(parse_regions("").is_err());
        assert!(parse_regions("redis://x:1").is_err());
        assert!(parse_regions("eu=redis://a:1,eu=redis://b:2").is_err());
        assert!(parse_regions("eu=http://a").is_err());
        let r = parse_regions("eu=rediss-sentinel://a:1,b,c:3?sentinelServiceName=m,us=redis://d")
            .unwrap();
        assert!(r[0].1.tls && r[0].1.topology == Topology::Sentinel);
        assert_eq!(hosts(&r[0].1), 3);
        assert_eq!(r[1].0, "us");
    }
}
