//! Redis-side observation: subscriber counts of instance channels and a watcher of the
//! control channel.

use std::collections::VecDeque;

use fred::prelude::{ClientLike, EventInterface, PubsubInterface};

use super::WAIT;

/// `PUBSUB NUMSUB <prefix>:ws:<id>`.
pub async fn numsub(server: &ryze_tests::RedisServer, prefix: &str, instance_id: &str) -> u64 {
    let channel = format!("{prefix}:ws:{instance_id}");
    let out = server
        .cli(&["PUBSUB", "NUMSUB", &channel])
        .await
        .expect("PUBSUB NUMSUB");
    out.lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected NUMSUB output {out:?}"))
}

/// Polls NUMSUB until it equals `want`; panics at `WAIT`.
pub async fn wait_numsub(
    server: &ryze_tests::RedisServer,
    prefix: &str,
    instance_id: &str,
    want: u64,
) {
    let what = format!("NUMSUB of {instance_id} is {want}");
    ryze_tests::eventually(&what, WAIT, || async {
        match numsub(server, prefix, instance_id).await {
            n if n == want => Ok(()),
            n => Err(format!("NUMSUB of {instance_id} is {n}")),
        }
    })
    .await;
}

/// Subscribed to `<prefix>:ctl` before any change is made, so each change's relay message can
/// be awaited: when the publisher relays a notification it has already dropped its cache
/// entry, so the next ingest sees the new config (D6).
pub struct ControlWatcher {
    client: fred::clients::Client,
    rx: tokio::sync::broadcast::Receiver<fred::types::Message>,
    /// Messages seen but not yet awaited.
    backlog: VecDeque<serde_json::Value>,
}

impl ControlWatcher {
    pub async fn start(redis_url: &str, prefix: &str) -> ControlWatcher {
        let config = fred::types::config::Config::from_url(redis_url).expect("redis url");
        let client = fred::types::Builder::from_config(config)
            .build()
            .expect("watcher client");
        let rx = client.message_rx();
        client.init().await.expect("watcher connects");
        client
            .subscribe(format!("{prefix}:ctl"))
            .await
            .expect("SUBSCRIBE ctl");
        ControlWatcher {
            client,
            rx,
            backlog: VecDeque::new(),
        }
    }

    /// Waits for the next relay message `{"op": op, "instanceId": id}`; messages for other
    /// instances are kept for later waits.
    pub async fn wait(&mut self, op: &str, instance_id: &str) {
        let matches = |v: &serde_json::Value| v["op"] == op && v["instanceId"] == instance_id;
        if let Some(pos) = self.backlog.iter().position(matches) {
            self.backlog.remove(pos);
            return;
        }
        // One bound over several reads, each awaiting the next message: not a poll.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("no control message {op} for {instance_id} within {WAIT:?}")
                })
                .expect("control channel receiver");
            let text: String = msg.value.convert().expect("control message text");
            let v: serde_json::Value = serde_json::from_str(&text).expect("control JSON");
            if matches(&v) {
                return;
            }
            self.backlog.push_back(v);
        }
    }
}

impl Drop for ControlWatcher {
    fn drop(&mut self) {
        let client = self.client.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = client.quit().await;
            });
        }
    }
}
