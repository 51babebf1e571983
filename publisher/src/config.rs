//! The publisher's configuration and admin subcommands, parsed once at start-up.

use crate::outlet::regions::parse_regions;
use clap::{Parser, Subcommand};
use ryze_core::config::{collect, parse_duration};
use ryze_core::history::HistoryConfig;
use ryze_core::redis::RedisTarget;
use ryze_core::settings::{Database, DatabaseSettings, Ingest, IngestSettings, RedisSettings};
use ryze_telemetry::{Telemetry, TelemetrySettings};
use secrecy::{ExposeSecret, SecretString};
use std::net::SocketAddr;
use std::time::Duration;
use uuid::Uuid;

/// Log output format (one definition for both binaries).
pub use ryze_telemetry::LogFormat;

/// `ryze-publisher`: internal ingest service and admin CLI.
#[derive(Debug, Clone, Parser)]
#[command(name = "ryze-publisher", version, about)]
pub struct Config {
    /// Admin command; without one, the service runs.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Listener for /v1/events, /livez, /readyz, /metrics.
    #[arg(
        long,
        env = "LISTEN_ADDR",
        default_value = "0.0.0.0:8081",
        global = true
    )]
    pub listen_addr: SocketAddr,
    /// Postgres.
    #[command(flatten)]
    pub database: DatabaseSettings,
    /// The fan-out Redis (or REGION_REDIS_URLS, below).
    #[command(flatten)]
    pub redis: RedisSettings,
    /// Logs and traces.
    #[command(flatten)]
    pub telemetry: TelemetrySettings,
    /// `/v1/events`.
    #[command(flatten)]
    pub ingest: IngestSettings,
    /// Publish to every region: `eu=redis://…,us=redis://…` (replaces REDIS_URL for publishing).
    #[arg(long, env = "REGION_REDIS_URLS", hide_env_values = true, global = true)]
    pub region_redis_urls: Option<SecretString>,
    /// Per-instance history in Redis (SPEC D37).
    #[command(flatten)]
    pub history: HistoryConfig,
    /// Safety-net TTL of the config cache (NOTIFY normally invalidates at once).
    #[arg(long, env = "CONFIG_CACHE_TTL", default_value = "5s", value_parser = parse_duration, global = true)]
    pub config_cache_ttl: Duration,
    /// Upper bound on shutdown.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration, global = true)]
    pub shutdown_timeout: Duration,
}

/// Admin commands; each prints JSON on stdout.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Applies the schema (idempotent).
    Migrate,
    /// Accounts.
    Account {
        #[command(subcommand)]
        action: AccountCommand,
    },
    /// Instances.
    Instance {
        #[command(subcommand)]
        action: InstanceCommand,
    },
}

/// `account …`
#[derive(Debug, Clone, Subcommand)]
pub enum AccountCommand {
    /// Creates an account and prints `{"id","token"}`.
    Create {
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// Token to use instead of a generated UUIDv4.
        #[arg(long)]
        token: Option<String>,
    },
}

/// `instance …`
#[derive(Debug, Clone, Subcommand)]
pub enum InstanceCommand {
    /// Creates an instance and prints `{"id","name","token"}`.
    Create {
        /// Owning account id.
        #[arg(long)]
        account: Uuid,
        /// Instance name (unique within the account).
        #[arg(long)]
        name: String,
        /// Token to use instead of a generated UUIDv4.
        #[arg(long)]
        token: Option<String>,
    },
    /// Deletes an instance (its config goes with it; its clients are closed with 1008).
    Delete {
        /// Owning account id.
        #[arg(long)]
        account: Uuid,
        /// Instance name.
        #[arg(long)]
        name: String,
    },
}

/// The publisher's configuration after validation.
#[derive(Debug, Clone)]
pub struct Validated {
    /// Logs and traces.
    pub telemetry: Telemetry,
    /// Postgres.
    pub database: Database,
    /// What the process does.
    pub run: Run,
}

/// An admin command, or the service.
#[derive(Debug, Clone)]
pub enum Run {
    /// One admin command (Postgres alone).
    Admin(Command),
    /// The ingest service.
    Service(Box<Service>),
}

/// The ingest service's settings after validation.
#[derive(Debug, Clone)]
pub struct Service {
    /// `LISTEN_ADDR`.
    pub listen_addr: SocketAddr,
    /// Where events are published.
    pub fanout: Fanout,
    /// `REDIS_PREFIX`.
    pub prefix: String,
    /// `/v1/events`.
    pub ingest: Ingest,
    /// Per-instance history.
    pub history: HistoryConfig,
    /// `CONFIG_CACHE_TTL`.
    pub config_cache_ttl: Duration,
    /// `SHUTDOWN_TIMEOUT`.
    pub shutdown_timeout: Duration,
}

/// The Redis the service publishes to, ready to connect (TLS and stall timeout applied).
#[derive(Clone)]
pub enum Fanout {
    /// `REDIS_URL`.
    Redis(RedisTarget),
    /// `REGION_REDIS_URLS`: every region, by name.
    Regions(Vec<(String, RedisTarget)>),
}

impl std::fmt::Debug for Fanout {
    // Never the targets: their configs hold passwords.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fanout::Redis(_) => f.write_str("Redis"),
            Fanout::Regions(r) => f
                .debug_tuple("Regions")
                .field(&r.iter().map(|(name, _)| name).collect::<Vec<_>>())
                .finish(),
        }
    }
}

impl Config {
    /// The typed settings, or every problem clap cannot see, all at once.
    pub fn validate(&self) -> Result<Validated, Vec<String>> {
        let mut problems = Vec::new();
        let database = collect(&mut problems, self.database.validate());
        let telemetry = collect(&mut problems, self.telemetry.validate());
        problems.extend(self.history.problems());
        let run = match &self.command {
            // Admin commands use Postgres alone.
            Some(command) => Some(Run::Admin(command.clone())),
            None => self
                .service(&mut problems)
                .map(|s| Run::Service(Box::new(s))),
        };
        match (database, run, telemetry) {
            (Some(database), Some(run), Some(telemetry)) if problems.is_empty() => Ok(Validated {
                telemetry,
                database,
                run,
            }),
            _ => Err(problems),
        }
    }

    /// The service's settings, or `None` with their problems added to `problems`.
    fn service(&self, problems: &mut Vec<String>) -> Option<Service> {
        if self.redis.url.is_none() && self.region_redis_urls.is_none() {
            problems.push("REDIS_URL (or REGION_REDIS_URLS) is required".to_owned());
        }
        // `Some(None)`: no regions; `None`: refused.
        let regions = match &self.region_redis_urls {
            None => Some(None),
            Some(spec) => parse_regions(spec.expose_secret())
                .map_err(|e| problems.push(format!("REGION_REDIS_URLS: {e}")))
                .ok()
                .map(Some),
        };
        let regions_use_tls = regions.iter().flatten().flatten().any(|(_, t)| t.tls);
        let redis = collect(problems, self.redis.validate(regions_use_tls));
        let ingest = collect(problems, self.ingest.validate(""));
        let (redis, regions, ingest) = (redis?, regions?, ingest?);
        let fanout = match regions {
            Some(regions) => Fanout::Regions(
                regions
                    .into_iter()
                    .map(|(name, target)| (name, redis.prepare(target)))
                    .collect(),
            ),
            // Unset only with the "is required" problem above.
            None => Fanout::Redis(redis.target?),
        };
        Some(Service {
            listen_addr: self.listen_addr,
            fanout,
            prefix: redis.prefix,
            ingest,
            history: self.history.clone(),
            config_cache_ttl: self.config_cache_ttl,
            shutdown_timeout: self.shutdown_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    const DB: &str = "postgres://u@127.0.0.1/x?sslmode=disable";
    const INGEST: [&str; 4] = [
        "--publisher-api-key",
        "k",
        "--public-base-url",
        "https://a.example",
    ];

    /// Parses `args` alone: the test process's environment is not read.
    fn parse(args: &[&str]) -> Config {
        let matches = Config::command()
            .mut_args(|a| a.env(None::<&str>))
            .try_get_matches_from(std::iter::once("ryze-publisher").chain(args.iter().copied()))
            .expect("clap accepts the arguments");
        Config::from_arg_matches(&matches).expect("a config")
    }

    fn service(args: &[&str]) -> Service {
        match parse(args).validate().expect("valid").run {
            Run::Service(service) => *service,
            Run::Admin(command) => panic!("{command:?}"),
        }
    }

    #[test]
    fn the_service_reports_each_missing_setting_with_the_exact_message() {
        let problems = parse(&["--database-url", DB])
            .validate()
            .expect_err("problems");
        assert_eq!(
            problems,
            [
                "REDIS_URL (or REGION_REDIS_URLS) is required",
                "PUBLISHER_API_KEY is required",
                "PUBLIC_BASE_URL is required"
            ]
        );
    }

    #[test]
    fn admin_commands_need_postgres_alone() {
        let v = parse(&["--database-url", DB, "migrate"])
            .validate()
            .expect("valid");
        assert!(matches!(v.run, Run::Admin(Command::Migrate)), "{v:?}");
        let problems = parse(&["migrate"]).validate().expect_err("no URL");
        assert_eq!(problems, ["DATABASE_URL is required"]);
    }

    #[test]
    fn redis_url_yields_one_target_and_the_ingest_settings() {
        let s = service(
            &[
                &["--database-url", DB, "--redis-url", "redis://a:1"],
                &INGEST[..],
            ]
            .concat(),
        );
        assert!(
            matches!(s.fanout, Fanout::Redis(ref t) if !t.clustered),
            "{s:?}"
        );
        assert_eq!(s.ingest.base_url, "https://a.example");
        assert_eq!(s.prefix, "ryze");
    }

    #[test]
    fn regions_replace_redis_url_and_share_its_stall_timeout() {
        let regions = [
            "--database-url",
            DB,
            "--region-redis-urls",
            "eu=redis://a:1,us=redis-cluster://b:1,c:2",
            "--redis-stall-timeout",
            "250ms",
        ];
        let s = service(&[&regions[..], &INGEST[..]].concat());
        let r = match s.fanout {
            Fanout::Regions(r) => r,
            other => panic!("{other:?}"),
        };
        let names: Vec<_> = r.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["eu", "us"]);
        assert!(r[1].1.clustered);
        assert!(r
            .iter()
            .all(|(_, t)| t.stall_timeout == Duration::from_millis(250)));
        let bad = [
            &regions[..2],
            &["--region-redis-urls", "redis://x:1"],
            &INGEST[..],
        ]
        .concat();
        let problems = parse(&bad).validate().expect_err("not name=url");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("REGION_REDIS_URLS: "),
            "{problems:?}"
        );
    }
}
