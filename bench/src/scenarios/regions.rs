//! Multi-region ingest: one publisher publishes to three regions' Redis servers
//! (`REGION_REDIS_URLS=eu=…,us=…,ap=…`, no `REDIS_URL`), each region with a gateway and one
//! client of the instance `fanout`. Measured: the `POST /v1/events` round trip, one event per
//! request, sent one after the other, in three phases:
//!
//! 1. every region up;
//! 2. ap's `redis-server` stopped (its connections closed, new ones refused);
//! 3. ap's `redis-server` restarted, then `SIGSTOP`ped (hung: connections stay open and only
//!    timeouts tell), `SIGCONT`ed at the end.
//!
//! The integration tests (`tests/tests/scale_out/regions.rs`) assert that ingest never waits
//! for a down or hung region; how long it takes depends on the machine, so it is measured here
//! (issue 15). The publisher gets `REDIS_STALL_TIMEOUT=60s`, as in those tests: a request that
//! waited for ap would take about a minute, so any wait shows.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use uuid::Uuid;

use super::{count, Outcome, Params};
use crate::histogram::Histogram;
use crate::protocol::now_micros;
use crate::publish::{event, Publisher};
use crate::system::{System, API_KEY, RATE_LIMIT};
use ryze_tests::fixtures::Env;
use ryze_tests::metrics::Exposition;
use ryze_tests::{Frozen, RedisServer, Service, WsClient, QUIET_LOG};

/// The regions, in `REGION_REDIS_URLS` order; the last one fails.
const REGIONS: [&str; 3] = ["eu", "us", "ap"];
/// Index of the failing region in [`REGIONS`].
const AP: usize = 2;
/// The publisher's `REDIS_STALL_TIMEOUT`: far beyond any request, so a wait for ap shows.
const STALL: &str = "60s";
/// The seeded instance every region's client watches.
const INSTANCE: &str = "fanout";
/// Upper bound for a service to become ready, and for a warm-up to see its frames.
const READY: Duration = Duration::from_secs(60);
/// The publisher's log line when a region misses the fast-path deadline.
const SLOW_LINE: &str = "region slow to answer";

/// One region: its Redis, its gateway and the text frames its client has received.
struct Region {
    redis: RedisServer,
    gateway: Service,
    frames: Arc<AtomicU64>,
}

/// The regions and their publisher. Dropping it stops every process it started.
struct World {
    regions: Vec<Region>,
    publisher: Service,
    client: Publisher,
    id: Uuid,
    seq: u64,
}

/// What one phase measured.
#[derive(Default)]
struct Phase {
    latency: Histogram,
    /// Events the 202 bodies reported as published.
    published: u64,
    /// The failure that ended the phase early, if one did.
    first_error: Option<String>,
    /// (request index, µs) of the slowest request.
    slowest: (u64, u64),
    /// Frames each region's client received during the phase.
    frames: Vec<u64>,
    /// `ryze_publisher_region_dropped_total{region="ap"}` over the phase.
    ap_dropped: f64,
    /// How often the publisher logged ap as slow to answer during the phase.
    ap_marked_slow: usize,
}

impl World {
    async fn start(sys: &System) -> anyhow::Result<World> {
        // The benchmark's database and account; each region brings its own Redis, and the
        // prefix is fresh so nothing of the main system's Redis traffic mixes in.
        let env = Env {
            redis_url: None,
            prefix: ryze_tests::unique_prefix(),
            ..sys.env.clone()
        };
        let mut regions = Vec::new();
        let mut spec = Vec::new();
        for name in REGIONS {
            let redis = RedisServer::start()
                .await
                .with_context(|| format!("starting region {name}'s redis-server"))?;
            spec.push(format!("{name}={}", redis.url()));
            let settings = [
                ("REDIS_URL", redis.url()),
                ("RATE_LIMIT_PER_MINUTE", RATE_LIMIT.to_owned()),
                ("RUST_LOG", QUIET_LOG.to_owned()),
            ];
            let gateway = env.spawn_gateway(&settings, READY).await?;
            let url = gateway.ws_url(&format!("/ws/{INSTANCE}?token={}", sys.env.account_token));
            let mut ws = WsClient::connect(&url, &[])
                .await
                .with_context(|| format!("connecting region {name}'s client"))?;
            let frames = Arc::new(AtomicU64::new(0));
            let counter = frames.clone();
            // Reading keeps the client alive (pings are answered while reading) and counts
            // what the region delivered; it ends when the gateway goes away.
            tokio::spawn(async move {
                while ws.next_text(Duration::from_secs(3600)).await.is_ok() {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            });
            regions.push(Region {
                redis,
                gateway,
                frames,
            });
        }
        let settings = [
            ("REGION_REDIS_URLS", spec.join(",")),
            ("REDIS_STALL_TIMEOUT", STALL.to_owned()),
            ("PUBLIC_BASE_URL", "https://bench.invalid".to_owned()),
            ("RUST_LOG", QUIET_LOG.to_owned()),
        ];
        let publisher = env.spawn_publisher(&settings, READY).await?;
        let client = Publisher::new(publisher.url("/v1/events"), API_KEY)?;
        Ok(World {
            regions,
            publisher,
            client,
            id: sys.id(INSTANCE)?,
            seq: 0,
        })
    }

    fn frames(&self) -> Vec<u64> {
        self.regions
            .iter()
            .map(|r| r.frames.load(Ordering::Relaxed))
            .collect()
    }

    /// The clients' frame counts once `done` holds for them, or after `within` at the latest.
    async fn frames_when(&self, done: impl Fn(&[u64]) -> bool, within: Duration) -> Vec<u64> {
        let deadline = Instant::now() + within;
        loop {
            let now = self.frames();
            if done(&now) || Instant::now() >= deadline {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(20)).await; // poll interval of a deadline-bounded wait on the clients' frame counters
        }
    }

    async fn post(&mut self) -> anyhow::Result<(u64, u64)> {
        self.seq += 1;
        let body = event(&self.id, now_micros(), self.seq, "");
        self.client.post(body).await
    }

    /// Posts one event at a time until the clients of `regions` each received a frame posted
    /// here: their subscriptions are confirmed, the publisher's connections to them are up
    /// and its config cache is warm, so the phase that follows measures only itself.
    async fn warm(&mut self, regions: &[usize]) -> anyhow::Result<()> {
        let before = self.frames();
        let deadline = Instant::now() + READY;
        let arrived = |now: &[u64]| regions.iter().all(|&i| now[i] > before[i]);
        loop {
            self.post().await?;
            let now = self.frames_when(arrived, Duration::from_millis(500)).await;
            if arrived(&now) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("regions {regions:?} received nothing within {READY:?} of warm-up");
            }
        }
    }

    async fn ap_dropped(&self) -> anyhow::Result<f64> {
        let m = Exposition::scrape(&self.publisher.url("/metrics")).await?;
        Ok(m.value(&format!(
            "ryze_publisher_region_dropped_total{{region=\"{}\"}}",
            REGIONS[AP]
        )))
    }

    /// `n` sequential requests of one event each. Stops at the first failure: a failed request
    /// is a finding of its own, and with a 60 s stall timeout waiting for more is pointless.
    async fn phase(&mut self, n: usize) -> anyhow::Result<Phase> {
        let mut ph = Phase::default();
        let (frames0, dropped0) = (self.frames(), self.ap_dropped().await?);
        let slow0 = self.ap_marked_slow();
        for i in 0..n as u64 {
            let t = Instant::now();
            let result = self.post().await;
            let took = t.elapsed().as_micros() as u64;
            ph.latency.record(took);
            if took > ph.slowest.1 {
                ph.slowest = (i, took);
            }
            match result {
                Ok((published, _)) => ph.published += published,
                Err(e) => {
                    ph.first_error = Some(format!("{e:#}"));
                    break;
                }
            }
        }
        // Frames and drop counts trail the 202s: wait (bounded) until eu and us have every
        // published event; ap gets whatever it gets.
        let published = ph.published;
        let everything = |now: &[u64]| (0..AP).all(|i| now[i] - frames0[i] >= published);
        ph.frames = self
            .frames_when(everything, Duration::from_secs(10))
            .await
            .iter()
            .zip(&frames0)
            .map(|(a, b)| a - b)
            .collect();
        ph.ap_dropped = self.ap_dropped().await? - dropped0;
        ph.ap_marked_slow = self.ap_marked_slow() - slow0;
        Ok(ph)
    }

    /// How often the publisher logged ap as slow to answer.
    fn ap_marked_slow(&self) -> usize {
        let region = format!("region={}", REGIONS[AP]);
        self.publisher
            .logs()
            .lines()
            .filter(|l| l.contains(SLOW_LINE) && l.contains(&region))
            .count()
    }
}

/// Runs the three phases on a world of its own (the main system lends only its database and
/// instances) and stops that world again.
pub async fn run(sys: &System, p: &Params) -> anyhow::Result<Outcome> {
    let n = p.regions_requests;
    let mut o = Outcome::new(
        "regions",
        "Multi-region ingest: every region up, one region down, one region hung",
    );
    o.set(
        "regions",
        "eu, us, ap: a redis-server, a gateway and a client each",
    );
    o.set(
        "publisher",
        format!("one for all three, `REDIS_STALL_TIMEOUT={STALL}`"),
    );
    o.set(
        "requests",
        format!("{n} per phase, one event each, one after the other"),
    );
    let mut w = World::start(sys).await?;
    w.warm(&[0, 1, AP]).await.context("warming every region")?;
    let up = w.phase(n).await?;
    report(&mut o, "every region up", "up", &up, n);

    w.regions[AP].redis.stop().await.context("stopping ap")?;
    let down = w.phase(n).await?;
    report(&mut o, "ap's redis-server stopped", "down", &down, n);

    let ap = &w.regions[AP];
    ap.redis.restart().await.context("restarting ap")?;
    // Ready again means ap's gateway has its Redis back; the warm-up then waits for the
    // publisher's connection and the client's subscription too.
    ap.gateway.wait_ready(READY).await.context("ap's gateway")?;
    let pid = ap.redis.pid().context("ap's redis-server pid")?;
    w.warm(&[0, 1, AP]).await.context("waiting for ap")?;
    let frozen = Frozen::freeze(pid);
    let hung = w.phase(n).await;
    drop(frozen);
    let hung = hung?;
    report(&mut o, "ap's redis-server hung (SIGSTOP)", "hung", &hung, n);

    // What ap's queue held while it hung reaches ap after SIGCONT (queued, not lost), unless
    // the gateway gave up its own connection meanwhile.
    let (base, queued) = (w.frames()[AP], hung.published);
    let now = w
        .frames_when(|now| now[AP] >= base + queued, Duration::from_secs(10))
        .await;
    let late = now[AP] - base;
    o.row(
        "frames of the hung phase that reached ap's client after SIGCONT (within 10 s)",
        format!("{} of {}", count(late as f64), count(queued as f64)),
        "hung_ap_late_frames",
        late,
    );

    for (what, ph) in [("ap stopped", &down), ("ap hung", &hung)] {
        if ph.slowest.1 >= 100_000 {
            o.note(format!(
                "{what}: the slowest request was #{} at {:.0} ms; ap marked slow {} time(s). \
                 While a region's connection counts as up, ingest waits at most 250 ms \
                 (`LISTENING_TIMEOUT`) for its \"who listens\" answer, then marks it slow and \
                 stops asking until a background check gets an answer: one request pays that \
                 bounded wait, the others do not",
                ph.slowest.0,
                ph.slowest.1 as f64 / 1e3,
                ph.ap_marked_slow
            ));
        }
    }
    if up.first_error.is_none() && up.published < n as u64 {
        o.note(format!(
            "with every region up only {} of {n} events were published: a region's client \
             was not counted as listening",
            up.published
        ));
    }
    Ok(o)
}

/// Adds one phase's rows (and notes for failures) to the outcome.
fn report(o: &mut Outcome, what: &str, key: &str, ph: &Phase, n: usize) {
    let h = &ph.latency;
    let ms = |v: u64| v as f64 / 1e3;
    o.row(
        &format!("**ingest round trip, {what}**"),
        format!(
            "p50 {:.2} ms · p99 {:.2} ms · max {:.2} ms (n = {}; slowest: request #{})",
            ms(h.quantile(0.5)),
            ms(h.quantile(0.99)),
            ms(h.max()),
            h.count(),
            ph.slowest.0
        ),
        &format!("{key}_latency"),
        serde_json::json!({
            "count": h.count(), "mean_us": h.mean(), "p50_us": h.quantile(0.5),
            "p95_us": h.quantile(0.95), "p99_us": h.quantile(0.99), "max_us": h.max(),
            "slowest_request": ph.slowest.0,
        }),
    );
    let frames: Vec<String> = REGIONS
        .iter()
        .zip(&ph.frames)
        .map(|(r, f)| format!("{r} {}", count(*f as f64)))
        .collect();
    o.row(
        &format!("published / frames received / ap dropped / ap marked slow, {what}"),
        format!(
            "{} / {} / {} / {}",
            count(ph.published as f64),
            frames.join(" · "),
            count(ph.ap_dropped),
            ph.ap_marked_slow
        ),
        &format!("{key}_delivery"),
        serde_json::json!({
            "published": ph.published, "frames": ph.frames, "ap_dropped": ph.ap_dropped,
            "ap_marked_slow": ph.ap_marked_slow,
        }),
    );
    if let Some(e) = &ph.first_error {
        o.note(format!(
            "{what}: request #{} of {n} failed, the phase stopped there: {e}",
            h.count().saturating_sub(1)
        ));
    }
}
