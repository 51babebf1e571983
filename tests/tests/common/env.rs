//! The environment of a test: a migrated database with one account ([`Env`]), its instances,
//! and [`System`], the services most tests start from.

use ryze_tests::{pg, redis, run_cli_json, unique_prefix, Bin, Service, WsClient};

use super::{
    configure, connect, frame, item, numsub, publish_expect, ControlWatcher, API_KEY, BASE_URL,
    READY, WAIT,
};

/// One instance as the admin CLI printed it.
#[derive(Debug, Clone)]
pub struct Instance {
    pub id: String,
    pub name: String,
    pub token: String,
}

/// A migrated database with one account, on the shared (or a given) Redis.
#[derive(Debug, Clone)]
pub struct Env {
    pub db_url: String,
    /// `None`: no Redis at all (embedded single-process mode).
    pub redis_url: Option<String>,
    pub prefix: String,
    pub encryption_key: Option<String>,
    pub account_id: String,
    pub account_token: String,
}

impl Env {
    /// A fresh database on the shared Postgres and the shared Redis with a unique prefix.
    pub async fn new() -> Env {
        let db = pg().await.fresh_database().await.expect("fresh database");
        let redis_url = redis().await.url();
        Env::with(db.url, Some(redis_url), None).await
    }

    /// Migrates `db_url` and creates an account.
    pub async fn with(
        db_url: String,
        redis_url: Option<String>,
        encryption_key: Option<String>,
    ) -> Env {
        let mut env = Env {
            db_url,
            redis_url,
            prefix: unique_prefix(),
            encryption_key,
            account_id: String::new(),
            account_token: String::new(),
        };
        // At the default RUST_LOG=info, so a log line on stdout (where the JSON goes) fails.
        run_cli_json(Bin::Publisher, &["migrate"], &env.cli_env())
            .await
            .expect("migrate");
        let account = run_cli_json(Bin::Publisher, &["account", "create"], &env.cli_env())
            .await
            .expect("account create");
        env.account_id = str_field(&account, "id");
        env.account_token = str_field(&account, "token");
        env
    }

    /// `DATABASE_URL` (and `ENCRYPTION_KEY`) for the admin CLI.
    pub fn cli_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("DATABASE_URL", self.db_url.clone())];
        if let Some(key) = &self.encryption_key {
            env.push(("ENCRYPTION_KEY", key.clone()));
        }
        env
    }

    /// What every service of this environment shares: database, Redis, prefix, key.
    pub fn service_env(&self) -> Vec<(&'static str, String)> {
        let mut env = self.cli_env();
        if let Some(url) = &self.redis_url {
            env.push(("REDIS_URL", url.clone()));
        }
        env.push(("REDIS_PREFIX", self.prefix.clone()));
        env
    }

    /// `instance create` in this account.
    pub async fn create_instance(&self, name: &str) -> Instance {
        self.create_instance_with_token(name, None).await
    }

    /// `account create`: (id, token) of another account in the same database.
    pub async fn create_account(&self) -> (String, String) {
        let out = run_cli_json(Bin::Publisher, &["account", "create"], &self.cli_env())
            .await
            .expect("account create");
        (str_field(&out, "id"), str_field(&out, "token"))
    }

    /// `instance create` in another account.
    pub async fn create_instance_in(&self, account_id: &str, name: &str) -> Instance {
        let out = run_cli_json(
            Bin::Publisher,
            &[
                "instance",
                "create",
                "--account",
                account_id,
                "--name",
                name,
            ],
            &self.cli_env(),
        )
        .await
        .expect("instance create");
        Instance {
            id: str_field(&out, "id"),
            name: str_field(&out, "name"),
            token: str_field(&out, "token"),
        }
    }

    /// `instance create --token T` in this account.
    pub async fn create_instance_with_token(&self, name: &str, token: Option<&str>) -> Instance {
        let mut args = vec![
            "instance",
            "create",
            "--account",
            &self.account_id,
            "--name",
            name,
        ];
        if let Some(token) = token {
            args.extend(["--token", token]);
        }
        let out = run_cli_json(Bin::Publisher, &args, &self.cli_env())
            .await
            .expect("instance create");
        Instance {
            id: str_field(&out, "id"),
            name: str_field(&out, "name"),
            token: str_field(&out, "token"),
        }
    }

    /// `instance delete` in this account.
    pub async fn delete_instance(&self, name: &str) -> serde_json::Value {
        run_cli_json(
            Bin::Publisher,
            &[
                "instance",
                "delete",
                "--account",
                &self.account_id,
                "--name",
                name,
            ],
            &self.cli_env(),
        )
        .await
        .expect("instance delete")
    }

    /// A gateway of this environment plus `extra` settings, ready.
    pub async fn gateway(&self, extra: &[(&'static str, String)]) -> Service {
        let env = merge(self.service_env(), extra);
        let gw = Service::spawn(Bin::Gateway, &[], &env)
            .await
            .expect("spawn gateway");
        gw.wait_ready(READY).await.expect("gateway ready");
        gw
    }

    /// A publisher of this environment plus `extra` settings, ready and listening for
    /// Postgres notifications (so no config change made afterwards can be missed).
    pub async fn publisher(&self, extra: &[(&'static str, String)]) -> Service {
        let mut env = self.service_env();
        env.push(("PUBLISHER_API_KEY", API_KEY.to_owned()));
        env.push(("PUBLIC_BASE_URL", BASE_URL.to_owned()));
        let env = merge(env, extra);
        let p = Service::spawn(Bin::Publisher, &[], &env)
            .await
            .expect("spawn publisher");
        p.wait_ready(READY).await.expect("publisher ready");
        p.wait_for_log("listening for config changes", READY)
            .await
            .expect("publisher relay listening");
        p
    }

    /// A control-channel watcher on this environment's Redis.
    pub async fn watcher(&self) -> ControlWatcher {
        let url = self.redis_url.as_deref().expect("the watcher needs Redis");
        ControlWatcher::start(url, &self.prefix).await
    }

    /// `PUBSUB NUMSUB` of the instance's channel on the shared Redis.
    pub async fn numsub(&self, instance_id: &str) -> u64 {
        numsub(redis().await, &self.prefix, instance_id).await
    }
}

/// `env` with `extra` overriding same-named keys.
pub fn merge(
    mut env: Vec<(&'static str, String)>,
    extra: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k, v.clone()));
    }
    env
}

fn str_field(v: &serde_json::Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string {key:?} in {v}"))
        .to_owned()
}

/// A service plus its environment's instance and watcher: what most tests start from.
pub struct System {
    pub env: Env,
    pub inst: Instance,
    pub publisher: Service,
    pub gateways: Vec<Service>,
    pub watcher: ControlWatcher,
}

impl System {
    /// Fresh DB on the shared servers, one instance `name` configured with `config`, a
    /// publisher and `gateways` gateways (each with `gateway_env`).
    pub async fn start(
        name: &str,
        config: serde_json::Value,
        gateways: usize,
        gateway_env: &[(&'static str, String)],
    ) -> System {
        let env = Env::new().await;
        System::start_in(env, name, config, gateways, gateway_env, &[]).await
    }

    /// Like [`System::start`] in a given environment, with publisher settings.
    pub async fn start_in(
        env: Env,
        name: &str,
        config: serde_json::Value,
        gateways: usize,
        gateway_env: &[(&'static str, String)],
        publisher_env: &[(&'static str, String)],
    ) -> System {
        let inst = env.create_instance(name).await;
        let watcher = env.watcher().await;
        let publisher = env.publisher(publisher_env).await;
        let mut gws = Vec::new();
        for _ in 0..gateways {
            gws.push(env.gateway(gateway_env).await);
        }
        let mut sys = System {
            env,
            inst,
            publisher,
            gateways: gws,
            watcher,
        };
        sys.configure(config).await;
        sys
    }

    /// The first gateway.
    pub fn gw(&self) -> &Service {
        &self.gateways[0]
    }

    /// Configures the main instance (as its account) and waits until the publisher relayed
    /// the change, so the next ingest applies it.
    pub async fn configure(&mut self, config: serde_json::Value) {
        configure(
            &self.gateways[0],
            &self.inst.name,
            &self.env.account_token,
            config,
        )
        .await;
        self.watcher.wait("config_changed", &self.inst.id).await;
    }

    /// A client of the main instance on gateway `i`.
    pub async fn connect(&self, i: usize) -> WsClient {
        connect(&self.gateways[i], &self.inst.name, &self.env.account_token).await
    }

    /// One item of the main instance.
    pub fn item(&self, event: &str, data: &str) -> String {
        item(&self.inst.id, event, data)
    }

    /// The expected frame of the main instance.
    pub fn frame(&self, event: &str, data: &str) -> String {
        frame(event, data, &self.inst)
    }

    /// Publishes one event of the main instance (asserting it was published) and asserts it
    /// is `client`'s next frame, byte for byte.
    pub async fn deliver_one(&self, client: &mut WsClient, event: &str, data: &str) {
        publish_expect(&self.publisher, &self.item(event, data), 1, 0, 0, 0).await;
        assert_eq!(
            client.next_text(WAIT).await.expect("the published frame"),
            self.frame(event, data)
        );
    }
}
