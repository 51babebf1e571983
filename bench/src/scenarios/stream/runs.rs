//! The stream scenarios themselves (`make bench`): fan-out, its sweep, a hot instance, many
//! instances and media frames, each built on the engine in the parent module.

use super::*;

/// Fan-out: many subscribers of one instance, a steady event rate, small frames.
pub async fn fanout(sys: &System, p: &Params) -> anyhow::Result<Outcome> {
    let mut o = Outcome::new(
        "fanout",
        "Fan-out: one instance, subscribers on both gateways",
    );
    let spec = Spec::fanout(sys, p, p.fanout_rate, p.fanout_secs)?;
    let requests = spec.requests;
    o.set(
        "subscribers",
        format!("{} (half per gateway)", count(p.fanout_clients as f64)),
    );
    o.set(
        "events",
        format!(
            "{} events/s for {} s = {} events, one per request, ~{} B frames",
            p.fanout_rate,
            p.fanout_secs,
            count(requests as f64),
            p.fanout_frame_bytes
        ),
    );
    let st = stream(sys, p, "fanout", &spec).await?;
    common(&mut o, &st);
    stream_targets(&mut o, &st, true);
    Ok(o)
}

/// Fan-out latency against load: the fan-out scenario's subscribers at lower event rates, so
/// the latency of a gateway that keeps up can be told from that of a saturated machine.
pub async fn fanout_sweep(sys: &System, p: &Params) -> anyhow::Result<Outcome> {
    let mut o = Outcome::new(
        "fanout_sweep",
        "Fan-out latency against event rate (same subscribers, lower rates)",
    );
    o.set(
        "subscribers",
        format!("{} (half per gateway)", count(p.fanout_clients as f64)),
    );
    o.set(
        "events",
        format!(
            "{} s at each rate, ~{} B frames; each rate is a fresh connect of every subscriber",
            p.sweep_secs, p.fanout_frame_bytes
        ),
    );
    for &rate in &p.sweep_rates {
        let key = format!("fanout_{rate}");
        let spec = Spec::fanout(sys, p, rate, p.sweep_secs)?;
        let st = stream(sys, p, &key, &spec).await?;
        let d = &st.delivered;
        let lost = st.expected as i64 - d.frames as i64;
        let cpu = st.cpu.gateway_total();
        let h = &d.latency;
        let per_write = writes(&st)
            .map(|w| {
                format!(
                    " · {:.2} frames per write",
                    d.frames as f64 / w.max(1) as f64
                )
            })
            .unwrap_or_default();
        o.row(
            &format!("{rate} events/s"),
            format!(
                "{} deliveries/s · latency p50 {} · p99 {} · max {} · {} deliveries per gateway \
                 CPU-second{per_write} · lost {}",
                count(d.frames as f64 / st.window_secs().max(1e-9)),
                super::super::us(h.quantile(0.5)),
                super::super::us(h.quantile(0.99)),
                super::super::us(h.max()),
                count(d.frames as f64 / cpu.max(1e-9)),
                count(lost as f64)
            ),
            &key,
            serde_json::json!({
                "rate": rate, "deliveries": d.frames, "lost": lost,
                "window_s": st.window_secs(), "gateway_cpu_s": cpu,
                "p50_us": h.quantile(0.5), "p99_us": h.quantile(0.99), "max_us": h.max(),
                "writes": writes(&st), "cpu": st.cpu.json(),
            }),
        );
    }
    Ok(o)
}

/// Hot instance: every client on one instance.
pub async fn hot(sys: &System, p: &Params) -> anyhow::Result<Outcome> {
    let mut o = Outcome::new("hot", "Hot instance: every client on one instance");
    let id = sys.id("hot")?;
    let pad = "x".repeat(125);
    let requests = (p.hot_rate * p.hot_secs) as u64;
    o.set(
        "clients",
        format!("{} (half per gateway)", count(p.hot_clients as f64)),
    );
    o.set(
        "events",
        format!(
            "{} events/s for {} s = {} events, ~300 B frames",
            p.hot_rate,
            p.hot_secs,
            count(requests as f64)
        ),
    );
    let st = stream(
        sys,
        p,
        "hot",
        &Spec {
            per_worker: p.per_worker.min(p.hot_clients.div_ceil(2)).max(1),
            ..Spec::new(
                "hot",
                1,
                p.hot_clients,
                p.hot_rate,
                requests,
                move |n, t| event(&id, t, n, &pad),
            )
        },
    )
    .await?;
    common(&mut o, &st);
    let per = rss_per_conn(&st);
    o.row(
        "RSS per connection (A; B)",
        per.iter().map(|v| bytes(*v)).collect::<Vec<_>>().join("; "),
        "rss_per_conn",
        per,
    );
    stream_targets(&mut o, &st, false);
    Ok(o)
}

/// Many instances: one client per instance, one event per instance per round.
pub async fn many(sys: &System, p: &Params) -> anyhow::Result<Outcome> {
    let mut o = Outcome::new("many", "Many instances: one client each");
    let n = p.many.min(sys.many);
    let ids: Arc<Vec<Uuid>> = Arc::new(
        (0..n)
            .map(|i| sys.id(&format!("m-{i}")))
            .collect::<anyhow::Result<_>>()?,
    );
    let per_request = 1000usize;
    let chunks = n.div_ceil(per_request) as u64;
    let pad = "x".repeat(125);
    o.set(
        "clients",
        format!(
            "{} instances × 1 client; instance i on gateway i mod 2",
            count(n as f64)
        ),
    );
    o.set(
        "events",
        format!(
            "{} rounds, one per second; a round is one event per instance, {} events per request",
            p.many_rounds, per_request
        ),
    );
    let redis0 = sys.redis_commands().await?;
    sys.pg_reset().await?;
    let body_ids = ids.clone();
    let st = stream(
        sys,
        p,
        "many",
        &Spec {
            per_worker: p.per_worker.min(n.div_ceil(2)).max(1),
            profile: false,
            ..Spec::new(
                "m-{i}",
                n,
                n,
                chunks as f64,
                chunks * p.many_rounds,
                move |req, t| {
                    let c = (req % chunks) as usize;
                    let lo = c * per_request;
                    let hi = (lo + per_request).min(body_ids.len());
                    let items: Vec<String> = body_ids[lo..hi]
                        .iter()
                        .map(|id| event(id, t, req, &pad))
                        .collect();
                    format!("[{}]", items.join(","))
                },
            )
        },
    )
    .await?;
    common(&mut o, &st);
    let per = rss_per_conn(&st);
    o.row(
        "RSS per connection incl. its instance's subscription (A; B)",
        per.iter().map(|v| bytes(*v)).collect::<Vec<_>>().join("; "),
        "rss_per_conn",
        per,
    );
    let subs: Vec<f64> = st
        .metrics_before
        .iter()
        .map(|m| metric(m, "ryze_gateway_redis_subscriptions", ""))
        .collect();
    o.row(
        "Redis subscriptions per gateway (A; B)",
        subs.iter()
            .map(|v| count(*v))
            .collect::<Vec<_>>()
            .join("; "),
        "subscriptions",
        subs,
    );
    let sent = st.delta("ryze_gateway_frames_sent_total", "");
    let no_clients = st.delta("ryze_gateway_frames_dropped_total", "no_clients");
    o.row(
        "Redis messages handled per gateway: delivered + no local client (A; B)",
        sent.iter()
            .zip(&no_clients)
            .map(|(s, d)| format!("{} + {}", count(*s), count(*d)))
            .collect::<Vec<_>>()
            .join("; "),
        "redis_messages_per_gateway",
        serde_json::json!({"sent": sent, "no_clients": no_clients}),
    );
    let redis1 = sys.redis_commands().await?;
    let deltas: Vec<String> = redis1
        .iter()
        .filter_map(|(k, v)| {
            let d = v - redis0.get(k).copied().unwrap_or(0);
            (d > 0).then(|| format!("{k} {}", count(d as f64)))
        })
        .collect();
    o.row(
        "Redis commands over the whole scenario",
        deltas.join(" · "),
        "redis_commands",
        redis1
            .iter()
            .map(|(k, v)| (k.clone(), v - redis0.get(k).copied().unwrap_or(0)))
            .collect::<std::collections::BTreeMap<_, _>>(),
    );
    let statements = sys.pg_statements().await?;
    let total: i64 = statements.iter().map(|(_, c)| c).sum();
    o.row(
        "Postgres statements over the whole scenario",
        count(total as f64),
        "pg_statements",
        total,
    );
    stream_targets(&mut o, &st, false);
    Ok(o)
}

/// Media: large frames at a steady rate; memory must stay bounded.
pub async fn media(sys: &System, p: &Params) -> anyhow::Result<Outcome> {
    let mut o = Outcome::new("media", "Media: 200 KB frames");
    let id = sys.id("media")?;
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let media: String = (0..p.media_bytes)
        .map(|i| alphabet[(i * 7 + i / 64) % 64] as char)
        .collect();
    let requests = (p.media_rate * p.media_secs) as u64;
    o.set(
        "clients",
        format!("{} (half per gateway)", count(p.media_clients as f64)),
    );
    o.set(
        "events",
        format!(
            "{} events/s for {} s = {} events of {} of base64 (`mediaBase64=true`)",
            p.media_rate,
            p.media_secs,
            count(requests as f64),
            bytes(p.media_bytes as f64)
        ),
    );
    o.set("client read buffer", "256 KiB");
    let st = stream(
        sys,
        p,
        "media",
        &Spec {
            read_buffer: 256 * 1024,
            ..Spec::new(
                "media",
                1,
                p.media_clients,
                p.media_rate,
                requests,
                move |n, t| media_event(&id, t, n, &media),
            )
        },
    )
    .await?;
    common(&mut o, &st);
    let window = st.window_secs();
    o.row(
        "throughput to clients",
        format!("{}/s", bytes(st.delivered.bytes as f64 / window.max(1e-9))),
        "bytes_per_second",
        st.delivered.bytes as f64 / window.max(1e-9),
    );
    let growth: Vec<f64> = st
        .rss_peak
        .iter()
        .zip(&st.rss_connected)
        .map(|(p, c)| p - c)
        .collect();
    let per_client: Vec<f64> = growth
        .iter()
        .zip(&st.conns)
        .map(|(g, n)| g / n.max(1.0))
        .collect();
    o.row(
        "peak RSS growth while publishing, total and per client (A; B)",
        growth
            .iter()
            .zip(&per_client)
            .map(|(g, c)| format!("{} ({} per client)", bytes(*g), bytes(*c)))
            .collect::<Vec<_>>()
            .join("; "),
        "rss_growth",
        serde_json::json!({"total": growth, "per_client": per_client}),
    );
    o.note(format!(
        "Bound by construction: a client's queue holds at most 256 frames or 8 MiB, and queued \
         frames share one buffer per event, so a gateway holds at most the events published in \
         the last `WS_SLOW_CONSUMER_GRACE` plus one frame being written per connection \
         (≈ {} per client here).",
        bytes(p.media_bytes as f64 + 400.0)
    ));
    let lost = st.expected as i64 - st.delivered.frames as i64;
    o.target("loss", "0", count(lost as f64), lost == 0);
    Ok(o)
}
