//! A private 3-master Redis Cluster on free loopback ports.
//!
//! [`RedisCluster::start`] launches three `redis-server --cluster-enabled yes` processes, joins
//! them with `redis-cli --cluster create … --cluster-replicas 0`, and waits until every node
//! reports `cluster_state:ok`. [`RedisCluster::url`] is the `REDIS_URL` the binaries take
//! (`redis-cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`).
//!
//! Each node runs under its own [`crate::supervisor`] wrapper, like [`crate::RedisServer`], so
//! none outlives a panic or a killed test binary, and each has its own temp dir holding its
//! `nodes-<port>.conf`. [`RedisCluster::stop_node`] and [`RedisCluster::start_node`] stop and
//! start one master on the same port with the same nodes.conf, so it rejoins the cluster with
//! its slots (there are no replicas, so nothing fails over meanwhile: the cluster reports
//! `cluster_state:fail` until the node is back). Nothing is persisted: a restarted node has
//! its slots but no keys.
//!
//! Each node also gets an explicit `--cluster-port` (the bus port), so a free client port near
//! 65535 never needs the default `port + 10000`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::process::free_port;
use crate::redis::{launch_redis_server, tls_server_args};
use crate::supervisor::{log_tail, server_dir, Supervisor};
use crate::tls::TestCerts;

/// Masters in the cluster.
pub const NODES: usize = 3;
/// The cluster's hash slots.
pub const SLOTS: u16 = 16384;
/// `--cluster-node-timeout` in milliseconds: how long a node may be unreachable before the
/// others mark it failed (and the cluster stops serving).
pub const NODE_TIMEOUT_MS: u64 = 2000;
/// Upper bound for a node to answer PING and for the cluster to report `cluster_state:ok`.
/// A master that was marked failed is cleared by the others only after twice the node
/// timeout, so a restart takes a few seconds by design.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often state is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Fresh starts retry on new ports when a node dies early (a port taken meanwhile).
const START_ATTEMPTS: usize = 3;

/// One master of a [`RedisCluster`].
pub struct ClusterNode {
    port: u16,
    bus_port: u16,
    dir: PathBuf,
    sup: Arc<Supervisor>,
    /// TLS-only nodes: the certificates they serve.
    tls: Option<Arc<TestCerts>>,
}

impl ClusterNode {
    /// The client port; kept across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster bus port (`--cluster-port`).
    pub fn bus_port(&self) -> u16 {
        self.bus_port
    }

    /// `127.0.0.1:<port>`, as the cluster names the node.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The node's working dir, holding `nodes-<port>.conf` (removed with the cluster).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The node's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.sup.pid()
    }

    /// Whether the node's process is alive (it may still be starting).
    pub fn is_running(&self) -> bool {
        self.sup.is_running()
    }

    /// The file holding the node's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        self.sup.log_path()
    }

    /// Everything the node logged so far (empty if the log cannot be read).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `redis-cli -h 127.0.0.1 -p <port> <args>`, trimmed stdout (see [`redis_cli`]).
    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        redis_cli(self.port, self.tls.as_deref(), args).await
    }
}

/// Which master serves a hash slot, as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotOwner {
    /// Index into [`RedisCluster::nodes`].
    pub index: usize,
    /// The master's cluster node id.
    pub node_id: String,
    /// Its `127.0.0.1:<port>`.
    pub addr: String,
}

/// A private 3-master Redis Cluster. Dropping it stops every node and removes their dirs.
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
    tls: Option<Arc<TestCerts>>,
}

impl RedisCluster {
    /// Starts three masters on free 127.0.0.1 ports, creates the cluster (slots split evenly,
    /// no replicas) and waits until every node reports `cluster_state:ok`.
    pub async fn start() -> anyhow::Result<RedisCluster> {
        Self::start_with(None).await
    }

    /// Like [`RedisCluster::start`], with TLS-only nodes (`--port 0 --tls-port P`) serving
    /// `certs`' server certificate, the cluster bus and replication over TLS too
    /// (`--tls-cluster yes`, `--tls-replication yes`), client certificates not asked for.
    /// [`RedisCluster::url`] is then `rediss-cluster://…`; every harness command speaks TLS.
    pub async fn start_tls(certs: Arc<TestCerts>) -> anyhow::Result<RedisCluster> {
        Self::start_with(Some(certs)).await
    }

    async fn start_with(tls: Option<Arc<TestCerts>>) -> anyhow::Result<RedisCluster> {
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            match Self::start_once(tls.clone()).await {
                Ok(cluster) => return Ok(cluster),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("the redis cluster did not start")))
    }

    async fn start_once(tls: Option<Arc<TestCerts>>) -> anyhow::Result<RedisCluster> {
        let mut nodes = Vec::with_capacity(NODES);
        for _ in 0..NODES {
            nodes.push(launch_node(tls.clone()).await?);
        }
        // Dropping `cluster` on any error below stops the nodes started so far.
        let cluster = RedisCluster { nodes, tls };
        for node in &cluster.nodes {
            wait_ping(node, READY_TIMEOUT).await?;
        }
        let mut args = cluster.tls.as_deref().map(cli_tls_args).unwrap_or_default();
        args.extend(["--cluster".into(), "create".into()]);
        args.extend(cluster.nodes.iter().map(|n| n.addr().into()));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"].map(Into::into));
        let out = tokio::time::timeout(
            READY_TIMEOUT,
            tokio::process::Command::new("redis-cli")
                .args(&args)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .context("redis-cli --cluster create did not finish")?
        .context("running redis-cli --cluster create (is redis-tools installed?)")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !stdout.contains("All 16384 slots covered") {
            bail!(
                "redis-cli --cluster create failed ({}): {stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        cluster.wait_ok(READY_TIMEOUT).await?;
        Ok(cluster)
    }

    /// `redis-cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3` (`rediss-cluster://` for a
    /// TLS cluster), for `REDIS_URL`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.nodes.iter().map(ClusterNode::addr).collect();
        let scheme = match self.tls {
            None => "redis-cluster",
            Some(_) => "rediss-cluster",
        };
        format!("{scheme}://{}", hosts.join(","))
    }

    /// The masters, in start order (indexes used by every other method).
    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    /// Master `i`. Panics when out of range.
    pub fn node(&self, i: usize) -> &ClusterNode {
        &self.nodes[i]
    }

    /// `redis-cli` against master `i` (see [`redis_cli`]).
    pub async fn cli(&self, i: usize, args: &[&str]) -> anyhow::Result<String> {
        self.nodes[i].cli(args).await
    }

    /// A running node to ask about the cluster.
    fn any_running(&self) -> anyhow::Result<&ClusterNode> {
        self.nodes
            .iter()
            .find(|n| n.is_running())
            .context("no cluster node is running")
    }

    /// `CLUSTER KEYSLOT <key>` (a channel name hashes like a key: `<prefix>:ws:<id>`).
    pub async fn keyslot(&self, key: &str) -> anyhow::Result<u16> {
        let out = self
            .any_running()?
            .cli(&["CLUSTER", "KEYSLOT", key])
            .await?;
        out.trim()
            .parse()
            .with_context(|| format!("CLUSTER KEYSLOT printed {out:?}"))
    }

    /// The master serving `slot` according to `CLUSTER NODES` on a running node.
    pub async fn slot_owner(&self, slot: u16) -> anyhow::Result<SlotOwner> {
        let table = self.any_running()?.cli(&["CLUSTER", "NODES"]).await?;
        for line in table.lines() {
            let Some(entry) = NodesLine::parse(line) else {
                continue;
            };
            if !entry.serves(slot) {
                continue;
            }
            let index = self
                .nodes
                .iter()
                .position(|n| n.addr() == entry.addr)
                .with_context(|| format!("slot {slot} is served by unknown node {line:?}"))?;
            return Ok(SlotOwner {
                index,
                node_id: entry.id,
                addr: entry.addr,
            });
        }
        bail!("no master serves slot {slot}; CLUSTER NODES:\n{table}")
    }

    /// The master whose slot holds `key` (or channel): [`Self::keyslot`] + [`Self::slot_owner`].
    pub async fn owner_of(&self, key: &str) -> anyhow::Result<SlotOwner> {
        let slot = self.keyslot(key).await?;
        self.slot_owner(slot).await
    }

    /// Stops master `i` (SIGTERM; it saves its nodes.conf) and waits for it to exit. Clients
    /// connected to it see their connection drop; after the node timeout the others mark it
    /// failed and the whole cluster reports `cluster_state:fail`.
    pub async fn stop_node(&self, i: usize) -> anyhow::Result<()> {
        let sup = Arc::clone(&self.nodes[i].sup);
        tokio::task::spawn_blocking(move || sup.stop_blocking())
            .await
            .context("joining the cluster node stop")?
    }

    /// Starts master `i` again (same port, bus port and nodes.conf), waits until it answers
    /// PING, then until the whole cluster reports `cluster_state:ok` again.
    pub async fn start_node(&self, i: usize) -> anyhow::Result<()> {
        let sup = Arc::clone(&self.nodes[i].sup);
        tokio::task::spawn_blocking(move || sup.start_blocking())
            .await
            .context("joining the cluster node start")??;
        wait_ping(&self.nodes[i], READY_TIMEOUT).await?;
        self.wait_ok(READY_TIMEOUT).await
    }

    /// [`Self::stop_node`] then [`Self::start_node`].
    pub async fn restart_node(&self, i: usize) -> anyhow::Result<()> {
        self.stop_node(i).await?;
        self.start_node(i).await
    }

    /// Moves `slot` to master `to` the way `redis-cli --cluster reshard` does: IMPORTING on the
    /// target, MIGRATING on the source, `MIGRATE` of any keys in the slot, then
    /// `CLUSTER SETSLOT <slot> NODE <target>` on the target, the source and the others. Waits
    /// until every node sees the target serving the slot. The source then drops its sharded
    /// subscribers of channels in that slot (Redis sends them `sunsubscribe`).
    pub async fn migrate_slot(&self, slot: u16, to: usize) -> anyhow::Result<()> {
        let from = self.slot_owner(slot).await?;
        if from.index == to {
            bail!("slot {slot} is already served by master {to}");
        }
        let s = slot.to_string();
        let target_id = self.node_id(to).await?;
        self.cli(to, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from.node_id])
            .await?;
        self.cli(
            from.index,
            &["CLUSTER", "SETSLOT", &s, "MIGRATING", &target_id],
        )
        .await?;
        let target_port = self.nodes[to].port.to_string();
        loop {
            let keys = self
                .cli(from.index, &["CLUSTER", "GETKEYSINSLOT", &s, "100"])
                .await?;
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let mut args = vec![
                "MIGRATE",
                "127.0.0.1",
                &target_port,
                "",
                "0",
                "5000",
                "KEYS",
            ];
            args.extend(keys);
            self.cli(from.index, &args).await?;
        }
        let mut order = vec![to, from.index];
        order.extend((0..self.nodes.len()).filter(|i| *i != to && *i != from.index));
        for i in order {
            self.cli(i, &["CLUSTER", "SETSLOT", &s, "NODE", &target_id])
                .await?;
        }
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            let mut agreed = true;
            for node in &self.nodes {
                let table = node.cli(&["CLUSTER", "NODES"]).await?;
                let owner = table
                    .lines()
                    .filter_map(NodesLine::parse)
                    .find(|e| e.serves(slot))
                    .map(|e| e.id);
                agreed &= owner.as_deref() == Some(target_id.as_str());
            }
            if agreed {
                return self.wait_ok(READY_TIMEOUT).await;
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("the nodes did not agree that master {to} serves slot {slot}");
            }
            tokio::time::sleep(POLL_INTERVAL).await; // poll interval of a deadline-bounded wait: nothing emits an event to await
        }
    }

    /// `CLUSTER MYID` of master `i`.
    pub async fn node_id(&self, i: usize) -> anyhow::Result<String> {
        Ok(self.cli(i, &["CLUSTER", "MYID"]).await?.trim().to_owned())
    }

    /// Polls until every node runs, reports `cluster_state:ok`, and sees all masters
    /// connected and none flagged `fail`/`fail?`. Errors at `timeout` with the last state.
    pub async fn wait_ok(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let last = match self.health().await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if let Some(dead) = self.nodes.iter().find(|n| !n.is_running()) {
                bail!(
                    "cluster node {} is not running; log {}:\n{}",
                    dead.addr(),
                    dead.log_path().display(),
                    log_tail(dead.log_path(), 30)
                );
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("cluster not ok within {timeout:?}: {last:#}");
            }
            tokio::time::sleep(POLL_INTERVAL).await; // poll interval of a deadline-bounded wait: nothing emits an event to await
        }
    }

    /// One check of what [`Self::wait_ok`] waits for.
    async fn health(&self) -> anyhow::Result<()> {
        for node in &self.nodes {
            let info = node.cli(&["CLUSTER", "INFO"]).await?;
            if !info.lines().any(|l| l.trim() == "cluster_state:ok") {
                bail!(
                    "{}: {}",
                    node.addr(),
                    info.lines().next().unwrap_or("no CLUSTER INFO")
                );
            }
            let table = node.cli(&["CLUSTER", "NODES"]).await?;
            let entries: Vec<NodesLine> = table.lines().filter_map(NodesLine::parse).collect();
            let healthy = entries
                .iter()
                .filter(|e| e.master && e.connected && !e.failing)
                .count();
            if healthy != NODES {
                bail!("{} sees {healthy} healthy masters:\n{table}", node.addr());
            }
        }
        Ok(())
    }
}

/// One line of `CLUSTER NODES`:
/// `<id> <ip:port@cport> <flags> <master> <ping-sent> <pong-recv> <epoch> <link> <slot>…`.
struct NodesLine {
    id: String,
    /// `ip:port` without the bus port.
    addr: String,
    master: bool,
    /// `fail` or `fail?` among the flags.
    failing: bool,
    connected: bool,
    /// Inclusive slot ranges (importing/migrating markers skipped).
    slots: Vec<(u16, u16)>,
}

impl NodesLine {
    fn parse(line: &str) -> Option<NodesLine> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            return None;
        }
        let addr = fields[1].split('@').next()?.split(',').next()?.to_owned();
        let flags: Vec<&str> = fields[2].split(',').collect();
        let slots = fields[8..]
            .iter()
            .filter(|s| !s.starts_with('['))
            .filter_map(|s| match s.split_once('-') {
                Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                None => s.parse().ok().map(|n| (n, n)),
            })
            .collect();
        Some(NodesLine {
            id: fields[0].to_owned(),
            addr,
            master: flags.contains(&"master"),
            failing: flags.iter().any(|f| *f == "fail" || *f == "fail?"),
            connected: fields[7] == "connected",
            slots,
        })
    }

    fn serves(&self, slot: u16) -> bool {
        self.master && self.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
    }
}

/// Starts one cluster-enabled redis-server under a supervisor (not waiting for it); with
/// `tls`, TLS only (see [`RedisCluster::start_tls`]).
async fn launch_node(tls: Option<Arc<TestCerts>>) -> anyhow::Result<ClusterNode> {
    let port = free_port();
    let bus_port = free_port();
    let dir = server_dir("ryze-redis-cluster-", None)?;
    let log = dir.join("redis.log");
    let mut args = vec![
        "--cluster-enabled".to_owned(),
        "yes".to_owned(),
        "--cluster-port".to_owned(),
        bus_port.to_string(),
        "--cluster-config-file".to_owned(),
        format!("nodes-{port}.conf"),
        "--cluster-node-timeout".to_owned(),
        NODE_TIMEOUT_MS.to_string(),
    ];
    let plain_port = match &tls {
        None => port,
        Some(certs) => {
            args.extend(tls_server_args(certs, port));
            args.extend(["--tls-cluster", "yes", "--tls-auth-clients", "no"].map(String::from));
            0
        }
    };
    let sup = launch_redis_server(
        "redis-server (cluster)",
        &dir,
        &log,
        None,
        plain_port,
        &args,
    )
    .await?;
    Ok(ClusterNode {
        port,
        bus_port,
        dir,
        sup,
        tls,
    })
}

/// Runs `redis-cli -h 127.0.0.1 -p <port> <args>` (no `-c`: answers come from that node) and
/// returns its trimmed stdout; with `tls`, over TLS (`--tls`, verifying against the CA, with
/// the client certificate). Errors if redis-cli fails or prints an error reply.
pub async fn redis_cli(
    port: u16,
    tls: Option<&TestCerts>,
    args: &[&str],
) -> anyhow::Result<String> {
    let mut cmd = tokio::process::Command::new("redis-cli");
    cmd.arg("-h")
        .arg("127.0.0.1")
        .arg("-p")
        .arg(port.to_string());
    cmd.args(tls.map(cli_tls_args).unwrap_or_default());
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        cmd.args(args).kill_on_drop(true).output(),
    )
    .await
    .with_context(|| format!("redis-cli -p {port} {args:?} did not finish"))?
    .context("running redis-cli (is redis-tools installed?)")?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let is_error = ["ERR", "CLUSTERDOWN", "MOVED", "Could not connect"]
        .iter()
        .any(|p| stdout.starts_with(p));
    if !out.status.success() || is_error {
        bail!(
            "redis-cli -p {port} {args:?} failed ({}): {stdout} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(stdout)
}

/// redis-cli's options to speak TLS to servers serving `certs`.
fn cli_tls_args(certs: &TestCerts) -> Vec<std::ffi::OsString> {
    vec![
        "--tls".into(),
        "--cacert".into(),
        certs.ca().into(),
        "--cert".into(),
        certs.client_cert().into(),
        "--key".into(),
        certs.client_key().into(),
    ]
}

/// Polls PING until `+PONG`; fails early with the log tail if the process died.
async fn wait_ping(node: &ClusterNode, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let answers = match &node.tls {
            None => ping(node.port).await,
            Some(_) => node.cli(&["PING"]).await.is_ok_and(|pong| pong == "PONG"),
        };
        if answers {
            return Ok(());
        }
        if !node.is_running() {
            bail!(
                "cluster node on port {} exited before answering PING; log {}:\n{}",
                node.port,
                node.log_path().display(),
                log_tail(node.log_path(), 30)
            );
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "cluster node on port {} did not answer PING within {timeout:?}; log {}:\n{}",
                node.port,
                node.log_path().display(),
                log_tail(node.log_path(), 30)
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await; // poll interval of a deadline-bounded wait: nothing emits an event to await
    }
}

/// One inline-command PING; true on `+PONG`.
async fn ping(port: u16) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut buf = [0u8; 7];
        stream.read_exact(&mut buf).await?;
        Ok::<bool, std::io::Error>(&buf == b"+PONG\r\n")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Ok(true))
    )
}

#[cfg(test)]
mod tests {
    use super::NodesLine;

    #[test]
    fn cluster_nodes_lines_parse() {
        let line = "17a2 127.0.0.1:17102@17202 master,fail - 1795 1795 2 disconnected 5461-10922 \
                    12000 [5460->-09a2]";
        let e = NodesLine::parse(line).unwrap();
        assert_eq!(e.addr, "127.0.0.1:17102");
        assert!(e.master && e.failing && !e.connected);
        assert!(e.serves(5461) && e.serves(10922) && e.serves(12000));
        assert!(!e.serves(5460) && !e.serves(10923));
        let me =
            NodesLine::parse("f2c7 127.0.0.1:1@2 myself,master - 0 0 1 connected 0-5460").unwrap();
        assert!(me.master && !me.failing && me.connected && me.serves(0));
    }
}
