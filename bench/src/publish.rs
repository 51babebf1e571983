//! Paced publishing through the publisher's `POST /v1/events`: request `n` is sent at
//! `start + n / rate` (late requests go at once, so the count stays exact), each body built
//! at send time so its `sentMicros` stamp is the moment the request leaves.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Semaphore;

use super::histogram::Histogram;
use super::protocol::now_micros;

/// A pooled HTTP client for one publisher.
#[derive(Clone)]
pub struct Publisher {
    client: reqwest::Client,
    url: String,
    key: String,
}

/// What a paced run did.
#[derive(Debug, Default, Clone)]
pub struct Published {
    /// Requests sent.
    pub requests: u64,
    /// Requests answered 202.
    pub accepted: u64,
    /// Requests that failed (status or transport).
    pub failed: u64,
    /// Events the publisher reported as published.
    pub published: u64,
    /// Events it skipped because nobody listened, or filtered, or did not know.
    pub skipped: u64,
    /// Request round trips, µs.
    pub latency: Histogram,
    /// Unix µs of the first and last send.
    pub first_send: u64,
    /// See `first_send`.
    pub last_send: u64,
    /// The first failure, for the report.
    pub first_error: Option<String>,
}

impl Publisher {
    /// A client for `url` (`…/v1/events`) with the ingest key.
    pub fn new(url: String, key: &str) -> anyhow::Result<Publisher> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(64)
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        Ok(Publisher {
            client,
            url,
            key: key.to_owned(),
        })
    }

    /// One request; returns (published, skipped) from the 202 body.
    pub async fn post(&self, body: String) -> anyhow::Result<(u64, u64)> {
        let resp = self
            .client
            .post(&self.url)
            .bearer_auth(&self.key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .context("POST /v1/events")?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if status.as_u16() != 202 {
            anyhow::bail!("POST /v1/events answered {status}: {text}");
        }
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("202 body {text:?}"))?;
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        Ok((
            n("published"),
            n("filtered") + n("noListeners") + n("unknownInstance"),
        ))
    }

    /// Sends `requests` requests at `rate` per second, at most `in_flight` at once; `body(n,
    /// stamp)` builds request `n` with the send stamp.
    pub async fn paced<F>(&self, rate: f64, requests: u64, in_flight: usize, body: F) -> Published
    where
        F: Fn(u64, u64) -> String + Send + Sync + 'static,
    {
        let body = Arc::new(body);
        let out = Arc::new(Mutex::new(Published::default()));
        let permits = Arc::new(Semaphore::new(in_flight.max(1)));
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::with_capacity(requests as usize);
        for n in 0..requests {
            let at = start + Duration::from_secs_f64(n as f64 / rate.max(0.001));
            tokio::time::sleep_until(at).await;
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let (me, body, out) = (self.clone(), body.clone(), out.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = permit;
                let stamp = now_micros();
                let text = body(n, stamp);
                let started = std::time::Instant::now();
                let result = me.post(text).await;
                let took = started.elapsed().as_micros() as u64;
                let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
                o.requests += 1;
                if o.first_send == 0 {
                    o.first_send = stamp;
                }
                o.first_send = o.first_send.min(stamp);
                o.last_send = o.last_send.max(stamp);
                o.latency.record(took);
                match result {
                    Ok((published, skipped)) => {
                        o.accepted += 1;
                        o.published += published;
                        o.skipped += skipped;
                    }
                    Err(e) => {
                        o.failed += 1;
                        if o.first_error.is_none() {
                            o.first_error = Some(format!("{e:#}"));
                        }
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let o = out.lock().unwrap_or_else(|p| p.into_inner());
        o.clone()
    }
}

/// One event for `instance` whose `data` starts with the stamp and pads the frame.
pub fn event(instance: &uuid::Uuid, stamp: u64, seq: u64, pad: &str) -> String {
    format!(
        r#"{{"instanceId":"{instance}","event":"message.exchange","data":{{"sentMicros":{stamp},"seq":{seq},"pad":"{pad}"}}}}"#
    )
}

/// A media event: `data.message.media.base64` carries `media` (the instance has
/// `mediaBase64=true`, so it reaches the clients).
pub fn media_event(instance: &uuid::Uuid, stamp: u64, seq: u64, media: &str) -> String {
    format!(
        r#"{{"instanceId":"{instance}","event":"message.exchange","data":{{"sentMicros":{stamp},"seq":{seq},"message":{{"id":"wamid.{seq}","media":{{"mimetype":"image/jpeg","base64":"{media}"}}}}}}}}"#
    )
}
