//! The Postgres store: accounts, instances and WebSocket configs (CONTRACT §3).
//!
//! Every query lives here, so both binaries read the schema the same way. Tokens are looked up
//! by SHA-256 ([`crate::token::hash`]); instance tokens are opened with the [`TokenCipher`].
//! Every connection, pooled or listening, is made from one [`DatabaseTarget`] (TLS per
//! `sslmode`/`sslrootcert`, TCP keepalives).

mod listen;
mod queries;
mod target;
mod tls;

pub use listen::{ConfigListener, CONFIG_CHANNEL};
pub use target::{
    DatabaseTarget, DatabaseUrlError, SslMode, KEEPALIVE_IDLE, KEEPALIVE_INTERVAL,
    KEEPALIVE_RETRIES,
};

use crate::event::EventType;
use crate::token::{TokenCipher, TokenError};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::time::Duration;
use uuid::Uuid;

/// The embedded schema, applied idempotently by [`Store::migrate`].
pub const SCHEMA_SQL: &str = include_str!("store/schema.sql");

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `DATABASE_URL` does not parse, or its TLS settings cannot be used.
    #[error("invalid DATABASE_URL")]
    BadUrl(#[source] DatabaseUrlError),
    /// Opening a dedicated connection took longer than the store's timeout.
    #[error("database connection timed out")]
    ConnectTimeout,
    /// No connection could be taken from the pool (database down, pool exhausted, timeout).
    #[error("database unavailable")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The pool could not be built (a programming error: timeouts need a runtime).
    #[error("database pool could not be built")]
    PoolBuild(#[from] deadpool_postgres::BuildError),
    /// A query failed.
    #[error("database query failed")]
    Query(#[from] tokio_postgres::Error),
    /// A stored token secret could not be opened.
    #[error("instance token unreadable")]
    Token(#[from] TokenError),
    /// The token is already used by an account or an instance (tokens are globally unique, D3).
    #[error("token already in use")]
    DuplicateToken,
    /// The account already has an instance of that name.
    #[error("instance name already exists in this account")]
    DuplicateInstance,
    /// The account does not exist.
    #[error("account not found")]
    AccountNotFound,
}

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A TokenAccount: acts on every instance of the account.
    Account {
        /// The account.
        account_id: Uuid,
    },
    /// A TokenInstance: acts on its own instance only.
    Instance(InstanceRef),
}

/// An instance's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRef {
    /// Internal identity: what channels and caches are keyed by (D31).
    pub id: Uuid,
    /// The owning account.
    pub account_id: Uuid,
    /// The name clients use in paths (unique within its account).
    pub name: String,
}

/// An instance's WebSocket configuration (one row of `websocket_configs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsConfig {
    /// On/off.
    pub enabled: bool,
    /// The filter; empty means all six types.
    pub events: Vec<EventType>,
    /// Whether `message.exchange` frames keep `media.base64`.
    pub media_base64: bool,
}

impl WsConfig {
    /// A config as documented: disabling clears `events` and `mediaBase64` (D4, D34).
    pub fn normalized(self) -> WsConfig {
        if self.enabled {
            self
        } else {
            WsConfig {
                enabled: false,
                events: Vec::new(),
                media_base64: false,
            }
        }
    }
}

/// What the publisher needs to shape an instance's frames.
#[derive(Debug, Clone)]
pub struct InstanceDelivery {
    /// The stored name (`instanceData.instance`).
    pub name: String,
    /// The decrypted TokenInstance (`instanceData.token`).
    pub token: String,
    /// The config, if one was ever written.
    pub config: Option<WsConfig>,
}

/// A created account, as the admin CLI prints it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CreatedAccount {
    /// New account id.
    pub id: Uuid,
    /// Its TokenAccount (printed once; stored only as a hash).
    pub token: String,
}

/// A created instance, as the admin CLI prints it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CreatedInstance {
    /// New instance id.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// Its TokenInstance.
    pub token: String,
}

/// Pool settings.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Maximum pooled connections (`DATABASE_POOL_SIZE`).
    pub pool_size: usize,
    /// How long to wait to connect or to take a pooled connection before failing a request.
    /// Also the TCP connect timeout, unless `DATABASE_URL` sets `connect_timeout`.
    pub timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            pool_size: 16,
            timeout: Duration::from_secs(2),
        }
    }
}

/// A cheap-to-clone handle on the connection pool.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    cipher: TokenCipher,
    target: DatabaseTarget,
    timeout: Duration,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("cipher", &self.cipher)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Parses `url` ([`DatabaseTarget::parse`]) and builds the pool. No connection is opened
    /// until first use; call [`Store::ping`] to check.
    pub fn new(
        url: &str,
        options: &StoreOptions,
        cipher: TokenCipher,
    ) -> Result<Store, StoreError> {
        let target = DatabaseTarget::parse(url).map_err(StoreError::BadUrl)?;
        Store::with_target(target, options, cipher)
    }

    /// Builds the pool for an already validated target.
    pub fn with_target(
        mut target: DatabaseTarget,
        options: &StoreOptions,
        cipher: TokenCipher,
    ) -> Result<Store, StoreError> {
        let pg = target.config_mut();
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(options.timeout);
        }
        if pg.get_application_name().is_none() {
            pg.application_name("ryze-events");
        }
        // TCP connect, TLS and authentication must all fit in the create timeout.
        let create_timeout = pg
            .get_connect_timeout()
            .copied()
            .unwrap_or(options.timeout)
            .max(options.timeout);
        let manager = Manager::from_config(
            target.config().clone(),
            target.tls().clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .wait_timeout(Some(options.timeout))
            .create_timeout(Some(create_timeout))
            .recycle_timeout(Some(options.timeout))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()?;
        Ok(Store {
            pool,
            cipher,
            target,
            timeout: create_timeout,
        })
    }

    /// The last TLS handshake with Postgres failed (e.g. its certificate did not verify) and
    /// none has succeeded since. Readiness fails meanwhile: the pod cannot authenticate anyone
    /// new, and the ERROR line says why.
    pub fn tls_failing(&self) -> bool {
        self.target.tls().is_failing()
    }

    /// The cipher used for instance token secrets.
    pub fn cipher(&self) -> &TokenCipher {
        &self.cipher
    }

    /// The validated target, for the dedicated LISTEN connection.
    pub(crate) fn target(&self) -> &DatabaseTarget {
        &self.target
    }

    /// The bound on opening a dedicated connection.
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.timeout
    }
}
