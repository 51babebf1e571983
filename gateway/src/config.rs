//! The gateway's configuration: parsed once at start-up from flags and environment.
//!
//! Every field's doc comment is its `--help` text; the README lists the same settings.

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Parser};
use ryze_core::config::{collect, parse_bytes, parse_duration};
use ryze_core::history::HistoryConfig;
use ryze_core::settings::{
    Database, DatabaseSettings, Ingest, IngestSettings, Redis, RedisSettings,
};
use ryze_telemetry::{Telemetry, TelemetrySettings};
use std::net::SocketAddr;
use std::time::Duration;

/// Log output format (one definition for both binaries).
pub use ryze_telemetry::LogFormat;

/// `ryze-gateway`: the public HTTP and WebSocket edge.
#[derive(Debug, Clone, Parser)]
#[command(name = "ryze-gateway", version, about)]
pub struct Config {
    /// The gateway's own settings.
    #[command(flatten)]
    pub gateway: Options,
    /// Postgres.
    #[command(flatten)]
    pub database: DatabaseSettings,
    /// The fan-out Redis.
    #[command(flatten)]
    pub redis: RedisSettings,
    /// Logs and traces.
    #[command(flatten)]
    pub telemetry: TelemetrySettings,
    /// `/v1/events` of the embedded publisher (`EMBEDDED_PUBLISHER=true`).
    #[command(flatten)]
    pub ingest: IngestSettings,
    /// Per-instance history in Redis (SPEC D37): what the embedded publisher appends, and
    /// what resumable clients replay from.
    #[command(flatten)]
    pub history: HistoryConfig,
}

/// The settings only the gateway reads (checked by [`Config::validate`]).
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Public listener: /ws/:instance, the config endpoints, /health.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen_addr: SocketAddr,
    /// Admin listener: /livez, /readyz, /metrics.
    #[arg(long, env = "ADMIN_LISTEN_ADDR", default_value = "0.0.0.0:9090")]
    pub admin_listen_addr: SocketAddr,
    /// Upper bound on the shutdown drain.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// Longest time a positive auth lookup is cached (SPEC D30).
    #[arg(long, env = "CONFIG_CACHE_TTL", default_value = "5s", value_parser = parse_duration)]
    pub config_cache_ttl: Duration,
    /// Extra browser origins allowed to open /ws (comma-separated; `*` = any).
    #[arg(long, env = "ALLOWED_WS_ORIGINS")]
    pub allowed_ws_origins: Option<String>,
    /// Requests per token (or client IP without a token) per fixed 60 s window.
    #[arg(long, env = "RATE_LIMIT_PER_MINUTE", default_value_t = 100)]
    pub rate_limit_per_minute: u64,
    /// Interval between server PINGs.
    #[arg(long, env = "WS_PING_INTERVAL", default_value = "54s", value_parser = parse_duration)]
    pub ws_ping_interval: Duration,
    /// A connection without a PONG for this long is dropped.
    #[arg(long, env = "WS_PONG_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub ws_pong_timeout: Duration,
    /// Largest client message; larger closes with 1009.
    #[arg(long, env = "WS_MAX_MESSAGE_BYTES", default_value = "4096", value_parser = parse_bytes)]
    pub ws_max_message_bytes: usize,
    /// Frames queued per connection before it counts as a slow consumer.
    #[arg(long, env = "WS_SEND_QUEUE", default_value_t = 256)]
    pub ws_send_queue: usize,
    /// Bytes queued per connection before it counts as a slow consumer.
    #[arg(long, env = "WS_SEND_QUEUE_BYTES", default_value = "8388608", value_parser = parse_bytes)]
    pub ws_send_queue_bytes: usize,
    /// How long fan-out waits for a full queue to make room before closing it as a slow
    /// consumer (SPEC D35: a burst is not slowness).
    #[arg(long, env = "WS_SLOW_CONSUMER_GRACE", default_value = "1s", value_parser = parse_duration)]
    pub ws_slow_consumer_grace: Duration,
    /// Time allowed to send the request head of an HTTP request (slowloris guard).
    #[arg(long, env = "HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http_header_timeout: Duration,
    /// Open connections (plus upgrades in progress) per pod; lowered to what the open-files
    /// limit allows (soft limit - DATABASE_POOL_SIZE - 65).
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,
    /// Connections closed per second during shutdown.
    #[arg(long, env = "DRAIN_RATE", default_value_t = 2000)]
    pub drain_rate: u32,
    /// Rebalancing (SPEC D39): a pod above this many times the fleet's mean connection count
    /// closes its excess with 1001 `rebalancing`. 0 = off; otherwise at least 1.0.
    #[arg(long, env = "REBALANCE_THRESHOLD", default_value_t = 1.25)]
    pub rebalance_threshold: f64,
    /// How often each pod shares its connection count and readiness through Redis and reads
    /// the fleet's (records live three intervals).
    #[arg(long, env = "REBALANCE_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub rebalance_interval: Duration,
    /// Connections closed per second while rebalancing, on average (at most 100 ms' worth saved
    /// up while the pod is busy): each reconnect costs an auth lookup and a subscription on the
    /// pod it lands on.
    #[arg(long, env = "REBALANCE_RATE", default_value_t = 50)]
    pub rebalance_rate: u32,
    /// Rebalancing never closes a connection younger than this.
    #[arg(long, env = "REBALANCE_MIN_AGE", default_value = "60s", value_parser = parse_duration)]
    pub rebalance_min_age: Duration,
    /// Rebalancing does nothing during the pod's own first this-long.
    #[arg(long, env = "REBALANCE_WARMUP", default_value = "60s", value_parser = parse_duration)]
    pub rebalance_warmup: Duration,
    /// Keep an instance's Redis subscription this long after its last local client leaves.
    #[arg(long, env = "UNSUBSCRIBE_DELAY", default_value = "5s", value_parser = parse_duration)]
    pub unsubscribe_delay: Duration,
    /// Take the client IP for rate limiting from X-Forwarded-For.
    #[arg(long, env = "TRUST_PROXY_HEADERS", action = ArgAction::Set, num_args = 0..=1,
          default_value = "false", default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub trust_proxy_headers: bool,
    /// Also serve the publisher's POST /v1/events on the public listener.
    #[arg(long, env = "EMBEDDED_PUBLISHER", action = ArgAction::Set, num_args = 0..=1,
          default_value = "false", default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub embedded_publisher: bool,
    /// Instances that get their own ryze_gateway_instance_connections series.
    #[arg(long, env = "METRICS_INSTANCE_LABELS", default_value_t = 100)]
    pub metrics_instance_labels: usize,
    /// Serve the live event console at GET /console.
    #[arg(long, env = "CONSOLE_ENABLED", action = ArgAction::Set, num_args = 0..=1,
          default_value = "false", default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub console_enabled: bool,
}

/// The gateway's configuration after validation: what [`crate::app::App`] is built from.
#[derive(Debug, Clone)]
pub struct Validated {
    /// The gateway's own settings.
    pub gateway: Options,
    /// Postgres.
    pub database: Database,
    /// The fan-out Redis; its `target` is `None` only with `EMBEDDED_PUBLISHER=true`
    /// (in-process fan-out).
    pub redis: Redis,
    /// The embedded publisher's `/v1/events`: `Some` exactly with `EMBEDDED_PUBLISHER=true`.
    pub ingest: Option<Ingest>,
    /// `MAX_INGEST_BYTES`: the largest frame a publisher produces (bounds the write buffer).
    pub max_ingest_bytes: usize,
    /// Logs and traces.
    pub telemetry: Telemetry,
    /// Per-instance history.
    pub history: HistoryConfig,
}

impl Config {
    /// The typed settings, or every problem clap cannot see, all at once (the caller prints
    /// them and exits 64).
    pub fn validate(&self) -> Result<Validated, Vec<String>> {
        let mut problems = Vec::new();
        let database = collect(&mut problems, self.database.validate());
        problems.extend(self.history.problems());
        let embedded = self.gateway.embedded_publisher;
        if self.redis.url.is_none() && !embedded {
            problems.push("REDIS_URL is required unless EMBEDDED_PUBLISHER=true".to_owned());
        }
        let redis = collect(&mut problems, self.redis.validate(false));
        let ingest = match embedded {
            true => collect(
                &mut problems,
                self.ingest.validate(" with EMBEDDED_PUBLISHER=true"),
            )
            .map(Some),
            false => Some(None),
        };
        self.gateway.check(&mut problems);
        let telemetry = collect(&mut problems, self.telemetry.validate());
        self.gateway.check_rates(&mut problems);
        match (database, redis, ingest, telemetry) {
            (Some(database), Some(redis), Some(ingest), Some(telemetry)) if problems.is_empty() => {
                Ok(Validated {
                    gateway: self.gateway.clone(),
                    database,
                    redis,
                    ingest,
                    max_ingest_bytes: self.ingest.max_bytes,
                    telemetry,
                    history: self.history.clone(),
                })
            }
            _ => Err(problems),
        }
    }
}

impl Options {
    /// The WebSocket and connection limits.
    fn check(&self, problems: &mut Vec<String>) {
        if self.ws_ping_interval.is_zero() || self.ws_pong_timeout <= self.ws_ping_interval {
            problems.push("WS_PONG_TIMEOUT must be longer than WS_PING_INTERVAL (> 0)".into());
        }
        for (name, v) in [
            ("WS_SEND_QUEUE", self.ws_send_queue),
            ("WS_SEND_QUEUE_BYTES", self.ws_send_queue_bytes),
            ("WS_MAX_MESSAGE_BYTES", self.ws_max_message_bytes),
            ("MAX_CONNECTIONS", self.max_connections),
        ] {
            if v == 0 {
                problems.push(format!("{name} must be greater than 0"));
            }
        }
    }

    /// The drain, rebalancing and rate-limit rates.
    fn check_rates(&self, problems: &mut Vec<String>) {
        if self.drain_rate == 0 {
            problems.push("DRAIN_RATE must be greater than 0".into());
        }
        let t = self.rebalance_threshold;
        if !(t == 0.0 || (t.is_finite() && t >= 1.0)) {
            problems.push("REBALANCE_THRESHOLD must be 0 (off) or at least 1.0".into());
        }
        if self.rebalance_rate == 0 {
            problems.push("REBALANCE_RATE must be greater than 0".into());
        }
        if self.rebalance_interval < Duration::from_millis(100) {
            problems.push("REBALANCE_INTERVAL must be at least 100ms".into());
        }
        if self.rate_limit_per_minute == 0 {
            problems.push("RATE_LIMIT_PER_MINUTE must be greater than 0".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    const DB: &str = "postgres://u@127.0.0.1/x?sslmode=disable";

    /// Parses `args` alone: the test process's environment is not read.
    fn parse(args: &[&str]) -> Config {
        let matches = Config::command()
            .mut_args(|a| a.env(None::<&str>))
            .try_get_matches_from(std::iter::once("ryze-gateway").chain(args.iter().copied()))
            .expect("clap accepts the arguments");
        Config::from_arg_matches(&matches).expect("a config")
    }

    #[test]
    fn missing_urls_are_reported_with_the_exact_messages() {
        let problems = parse(&[]).validate().expect_err("problems");
        assert_eq!(
            problems,
            [
                "DATABASE_URL is required",
                "REDIS_URL is required unless EMBEDDED_PUBLISHER=true"
            ]
        );
    }

    #[test]
    fn a_valid_config_yields_the_typed_groups() {
        let v = parse(&[
            "--database-url",
            DB,
            "--redis-url",
            "redis-cluster://a:1,b:2",
        ])
        .validate()
        .expect("valid");
        assert_eq!(v.database.pool_size, 16);
        let target = v.redis.target.as_ref().expect("REDIS_URL's target");
        assert!(target.clustered);
        assert_eq!(target.stall_timeout, Duration::from_secs(3));
        assert!(v.ingest.is_none(), "no embedded publisher");
        assert_eq!(v.max_ingest_bytes, 16 << 20);
    }

    #[test]
    fn the_embedded_publisher_needs_its_ingest_settings_but_no_redis() {
        let base = ["--database-url", DB, "--embedded-publisher"];
        let problems = parse(&base)
            .validate()
            .expect_err("ingest settings missing");
        assert_eq!(
            problems,
            [
                "PUBLISHER_API_KEY is required with EMBEDDED_PUBLISHER=true",
                "PUBLIC_BASE_URL is required with EMBEDDED_PUBLISHER=true"
            ]
        );
        let ingest = [
            "--publisher-api-key",
            "k",
            "--public-base-url",
            "https://a.example/",
        ];
        let v = parse(&[&base[..], &ingest[..]].concat())
            .validate()
            .expect("valid");
        assert!(v.redis.target.is_none(), "in-process fan-out");
        let ingest = v.ingest.expect("the embedded publisher's settings");
        assert_eq!(ingest.base_url, "https://a.example");
    }
}
