//! Item 9: connection churn. Workers connect and disconnect thousands of clients across many
//! instances (every token kind and source; graceful closes, abrupt drops, clients that leave
//! right after sending the upgrade) while events flow. Afterwards the connections gauge is
//! 0, every instance channel has no subscriber once `UNSUBSCRIBE_DELAY` has passed, and the
//! gateway's RSS is back near its baseline.
//!
//! `make test` runs it for 20 s. `scripts/soak.sh` (`make soak`) runs the same test for
//! `SOAK_SECONDS` (default 600) with `SOAK_WORKERS` and `SOAK_INSTANCES`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::common::{self, Env, Instance, WAIT};
use crate::{bulk_instances, connect_via, eventually, metric_in, mib, scrape, wait_rss_below};
use crate::{Feed, Shared};
use ryze_tests::{redis, RedisServer, Service};

/// RSS may stay this far above the baseline (allocators keep freed memory around).
const RSS_SLACK: u64 = 64 * 1024 * 1024;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `PUBSUB NUMSUB` of many channels in one command.
async fn numsubs(server: &RedisServer, prefix: &str, ids: &[String]) -> Vec<u64> {
    let mut args = vec!["PUBSUB".to_owned(), "NUMSUB".to_owned()];
    args.extend(ids.iter().map(|id| format!("{prefix}:ws:{id}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = server.cli(&args).await.unwrap();
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    lines
        .chunks(2)
        .map(|pair| pair[1].parse().unwrap_or(u64::MAX))
        .collect()
}

/// One connect/disconnect cycle of client `k`, in one of several shapes.
async fn cycle(gw: &Service, instances: &[Instance], account: &str, k: u64) -> Result<(), String> {
    let inst = &instances[(k as usize * 7919) % instances.len()];
    let token = if k % 2 == 0 { account } else { &inst.token };
    if k % 20 == 19 {
        // Sends a valid upgrade and leaves without reading the answer.
        let mut s = TcpStream::connect(gw.addr())
            .await
            .map_err(|e| e.to_string())?;
        let head = format!(
            "GET /ws/{} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             token: {token}\r\n\r\n",
            common::segment(&inst.name),
            gw.addr()
        );
        s.write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        return Ok(());
    }
    let mut c = connect_via(gw, &inst.name, token, (k / 2) as usize)
        .await
        .map_err(|e| format!("client {k} on {}: {e}", inst.name))?;
    match k % 5 {
        // Graceful close.
        0 | 1 => c.close().await.map_err(|e| format!("{e:#}"))?,
        // Waits briefly for an event (the feed is running), then closes.
        2 => {
            let _ = c.next_text(Duration::from_millis(100)).await;
            c.close().await.map_err(|e| format!("{e:#}"))?;
        }
        // Says something, then vanishes without a close frame.
        3 => {
            let _ = c.send_text("hello").await;
            drop(c);
        }
        // Vanishes at once.
        _ => drop(c),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_churn_leaves_no_connections_subscriptions_or_memory_behind() {
    let seconds = setting("SOAK_SECONDS", 20);
    let workers = setting("SOAK_WORKERS", 24);
    let instance_count = setting("SOAK_INSTANCES", 40) as usize;
    let env = Env::new().await;
    let instances = bulk_instances(&env, "churn", instance_count).await;
    let ids: Vec<String> = instances.iter().map(|i| i.id.clone()).collect();
    let publisher = env.publisher(&[]).await;
    let gw = env
        .gateway(&[
            ("UNSUBSCRIBE_DELAY", "200ms".into()),
            ("RATE_LIMIT_PER_MINUTE", "1000000000".into()),
        ])
        .await;
    let gw = Arc::new(gw);
    let shared = redis().await;
    let account = env.account_token.clone();
    let instances = Arc::new(instances);

    let settle = |what: &'static str| {
        let (gw, ids, prefix) = (gw.clone(), ids.clone(), env.prefix.clone());
        async move {
            eventually(what, WAIT, || async {
                let text = scrape(&gw).await;
                let open = metric_in(&text, "ryze_gateway_connections");
                let wanted = metric_in(&text, "ryze_gateway_redis_subscriptions");
                let per_instance = metric_in(&text, "ryze_gateway_instance_connections");
                let subscribed: u64 = numsubs(shared, &prefix, &ids).await.iter().sum();
                if open == 0.0 && wanted == 0.0 && per_instance == 0.0 && subscribed == 0 {
                    Ok(text)
                } else {
                    Err(format!(
                        "{open} connections, {per_instance} per instance, {wanted} wanted \
                         subscriptions, {subscribed} Redis subscribers"
                    ))
                }
            })
            .await
        }
    };

    // Warm-up, so the baseline includes what the first connections allocate for good.
    for k in 0..300 {
        cycle(&gw, &instances, &account, k).await.unwrap();
    }
    settle("warm-up settled").await;
    let baseline = gw.rss_bytes();

    let feed = Feed::start_ids(
        publisher.url("/v1/events"),
        ids.clone(),
        Duration::from_millis(50),
    );
    let cycles = Arc::new(AtomicU64::new(300));
    let failures: Shared<String> = Shared::default();
    let started = Instant::now();
    // The soak's length (work until then, progress reports on the way), not a wait.
    let deadline = started + Duration::from_secs(seconds);
    let progress_every = Duration::from_secs((seconds / 10).max(5));
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (gw, instances, account) = (gw.clone(), instances.clone(), account.clone());
            let (cycles, failures) = (cycles.clone(), failures.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let k = cycles.fetch_add(1, Ordering::SeqCst);
                    if let Err(e) = cycle(&gw, &instances, &account, k).await {
                        failures.lock().unwrap().push(e);
                    }
                }
            })
        })
        .collect();
    let mut next_report = started + progress_every;
    while Instant::now() < deadline {
        tokio::time::sleep_until(next_report.min(deadline)).await;
        next_report += progress_every;
        let text = scrape(&gw).await;
        println!(
            "churn: {:>4}s, {} cycles, {} open, {} wanted subscriptions, RSS {:.1} MiB",
            started.elapsed().as_secs(),
            cycles.load(Ordering::SeqCst),
            metric_in(&text, "ryze_gateway_connections"),
            metric_in(&text, "ryze_gateway_redis_subscriptions"),
            mib(gw.rss_bytes())
        );
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rounds = feed.stop().await;
    let total = cycles.load(Ordering::SeqCst);
    let peak = gw.rss_bytes();

    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} of {total} cycles failed; first: {:?}",
        failures.len(),
        failures.iter().take(5).collect::<Vec<_>>()
    );
    let text = settle("everything released after the churn").await;
    let opened = metric_in(&text, "ryze_gateway_connections_opened_total");
    let closed = metric_in(&text, "ryze_gateway_connections_closed_total");
    assert_eq!(opened, closed, "every opened connection is counted closed");
    assert!(
        opened >= total as f64 * 0.9,
        "{opened} opened of {total} cycles"
    );
    let rss = wait_rss_below(&gw, baseline + RSS_SLACK, WAIT).await;
    println!(
        "churn: {total} connect/disconnect cycles over {instance_count} instances in {seconds}s \
         with {workers} workers, {} feed rounds; RSS baseline {:.1} MiB, peak {:.1} MiB, \
         after {:.1} MiB",
        rounds.len(),
        mib(baseline),
        mib(peak),
        mib(rss)
    );
    assert!(ryze_tests::pid_is_alive(gw.pid()));
}
