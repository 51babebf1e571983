//! The store's queries. Each is one round trip; none holds a transaction open across awaits
//! other than its own statements.

use super::{
    CreatedAccount, CreatedInstance, InstanceDelivery, InstanceRef, Principal, Store, StoreError,
    WsConfig, SCHEMA_SQL,
};
use crate::event::EventType;
use crate::token;
use std::collections::HashMap;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

/// Advisory lock key serialising concurrent migrations (e.g. several migrate Jobs).
const MIGRATION_LOCK: i64 = 0x7279_7a65_0001;

impl Store {
    /// Applies the schema. Idempotent, and safe to run from several processes at once.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(SCHEMA_SQL).await?;
        tx.commit().await?;
        Ok(())
    }

    /// `SELECT 1`: the health check.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client.query_one("SELECT 1", &[]).await?;
        Ok(())
    }

    /// Resolves a token to its account or instance, by hash.
    pub async fn resolve_token(&self, token: &str) -> Result<Option<Principal>, StoreError> {
        let hash = token::hash(token).to_vec();
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT a.id, NULL::uuid, NULL::text FROM accounts a WHERE a.token_hash = $1 \
                 UNION ALL \
                 SELECT i.id, i.account_id, i.name FROM instances i WHERE i.token_hash = $1",
            )
            .await?;
        let Some(row) = client.query_opt(&stmt, &[&hash]).await? else {
            return Ok(None);
        };
        let id: Uuid = row.get(0);
        let account: Option<Uuid> = row.get(1);
        Ok(Some(match account {
            None => Principal::Account { account_id: id },
            Some(account_id) => Principal::Instance(InstanceRef {
                id,
                account_id,
                name: row.get(2),
            }),
        }))
    }

    /// Finds an account's instance by its (case-sensitive) name.
    pub async fn find_instance(
        &self,
        account_id: Uuid,
        name: &str,
    ) -> Result<Option<InstanceRef>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached("SELECT id FROM instances WHERE account_id = $1 AND name = $2")
            .await?;
        let row = client.query_opt(&stmt, &[&account_id, &name]).await?;
        Ok(row.map(|r| InstanceRef {
            id: r.get(0),
            account_id,
            name: name.to_owned(),
        }))
    }

    /// Reads an instance's config; `None` when no row was ever written.
    pub async fn get_config(&self, instance_id: Uuid) -> Result<Option<WsConfig>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT enabled, events, media_base64 FROM websocket_configs WHERE instance_id = $1",
            )
            .await?;
        let row = client.query_opt(&stmt, &[&instance_id]).await?;
        Ok(row.map(|r| config_from(r.get(0), r.get(1), r.get(2))))
    }

    /// Creates or overwrites an instance's whole config (last write wins); returns what was
    /// stored, with disabled configs cleared (D4).
    pub async fn upsert_config(
        &self,
        instance_id: Uuid,
        config: WsConfig,
    ) -> Result<WsConfig, StoreError> {
        let config = config.normalized();
        let events: Vec<&str> = config.events.iter().map(|e| e.as_str()).collect();
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO websocket_configs (instance_id, enabled, events, media_base64, updated_at) \
                 VALUES ($1, $2, $3, $4, now()) \
                 ON CONFLICT (instance_id) DO UPDATE SET enabled = EXCLUDED.enabled, \
                 events = EXCLUDED.events, media_base64 = EXCLUDED.media_base64, updated_at = now()",
            )
            .await?;
        client
            .execute(
                &stmt,
                &[&instance_id, &config.enabled, &events, &config.media_base64],
            )
            .await?;
        Ok(config)
    }

    /// What the publisher needs for an instance id: name, decrypted token, config.
    pub async fn instance_delivery(
        &self,
        instance_id: Uuid,
    ) -> Result<Option<InstanceDelivery>, StoreError> {
        Ok(self
            .instance_deliveries(&[instance_id])
            .await?
            .remove(&instance_id))
    }

    /// [`Store::instance_delivery`] for many ids in one query; ids that name no instance are
    /// absent from the map.
    pub async fn instance_deliveries(
        &self,
        instance_ids: &[Uuid],
    ) -> Result<HashMap<Uuid, InstanceDelivery>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT i.id, i.name, i.token_secret, c.enabled, c.events, c.media_base64 \
                 FROM instances i LEFT JOIN websocket_configs c ON c.instance_id = i.id \
                 WHERE i.id = ANY($1)",
            )
            .await?;
        let ids: Vec<Uuid> = instance_ids.to_vec();
        let rows = client.query(&stmt, &[&ids]).await?;
        let mut out = HashMap::with_capacity(rows.len());
        for row in rows {
            let secret: Vec<u8> = row.get(2);
            let token = self.cipher.open(&secret)?;
            let enabled: Option<bool> = row.get(3);
            let config = enabled.map(|enabled| {
                config_from(
                    enabled,
                    row.get::<_, Option<Vec<String>>>(4).unwrap_or_default(),
                    row.get::<_, Option<bool>>(5).unwrap_or(false),
                )
            });
            out.insert(
                row.get(0),
                InstanceDelivery {
                    name: row.get(1),
                    token,
                    config,
                },
            );
        }
        Ok(out)
    }

    /// Whether an instance id still exists (tells a deletion from a config change).
    pub async fn instance_exists(&self, instance_id: Uuid) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt("SELECT 1 FROM instances WHERE id = $1", &[&instance_id])
            .await?;
        Ok(row.is_some())
    }

    /// Creates an account with the given token (or a new UUIDv4 one).
    pub async fn create_account(
        &self,
        name: Option<&str>,
        token: Option<&str>,
    ) -> Result<CreatedAccount, StoreError> {
        let token = token.map_or_else(|| Uuid::new_v4().to_string(), str::to_owned);
        let id = Uuid::new_v4();
        let hash = token::hash(&token).to_vec();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        lock_tokens(&tx).await?;
        if token_taken(&tx, &hash).await? {
            return Err(StoreError::DuplicateToken);
        }
        tx.execute(
            "INSERT INTO accounts (id, name, token_hash) VALUES ($1, $2, $3)",
            &[&id, &name, &hash],
        )
        .await
        .map_err(unique_violation(StoreError::DuplicateToken))?;
        tx.commit().await?;
        Ok(CreatedAccount { id, token })
    }

    /// Creates an instance in an account with the given token (or a new UUIDv4 one).
    pub async fn create_instance(
        &self,
        account_id: Uuid,
        name: &str,
        token: Option<&str>,
    ) -> Result<CreatedInstance, StoreError> {
        let token = token.map_or_else(|| Uuid::new_v4().to_string(), str::to_owned);
        let id = Uuid::new_v4();
        let hash = token::hash(&token).to_vec();
        let secret = self.cipher.seal(&token);
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        lock_tokens(&tx).await?;
        if tx
            .query_opt("SELECT 1 FROM accounts WHERE id = $1", &[&account_id])
            .await?
            .is_none()
        {
            return Err(StoreError::AccountNotFound);
        }
        if token_taken(&tx, &hash).await? {
            return Err(StoreError::DuplicateToken);
        }
        if tx
            .query_opt(
                "SELECT 1 FROM instances WHERE account_id = $1 AND name = $2",
                &[&account_id, &name],
            )
            .await?
            .is_some()
        {
            return Err(StoreError::DuplicateInstance);
        }
        tx.execute(
            "INSERT INTO instances (id, account_id, name, token_hash, token_secret) \
             VALUES ($1, $2, $3, $4, $5)",
            &[&id, &account_id, &name, &hash, &secret],
        )
        .await
        .map_err(unique_violation(StoreError::DuplicateInstance))?;
        tx.commit().await?;
        Ok(CreatedInstance {
            id,
            name: name.to_owned(),
            token,
        })
    }

    /// Deletes an account's instance (its config goes with it); returns its id if it existed.
    pub async fn delete_instance(
        &self,
        account_id: Uuid,
        name: &str,
    ) -> Result<Option<Uuid>, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "DELETE FROM instances WHERE account_id = $1 AND name = $2 RETURNING id",
                &[&account_id, &name],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }
}

fn config_from(enabled: bool, events: Vec<String>, media_base64: bool) -> WsConfig {
    // Unknown names cannot be written through the API; rows written by the platform with
    // other names simply do not widen the filter.
    let events = events.iter().filter_map(|e| EventType::parse(e)).collect();
    WsConfig {
        enabled,
        events,
        media_base64,
    }
    .normalized()
}

/// Tokens are unique across two tables, which no constraint can express: serialise creators.
async fn lock_tokens(tx: &tokio_postgres::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&(MIGRATION_LOCK + 1)])
        .await?;
    Ok(())
}

async fn token_taken(
    tx: &tokio_postgres::Transaction<'_>,
    hash: &Vec<u8>,
) -> Result<bool, StoreError> {
    let row = tx
        .query_opt(
            "SELECT 1 FROM accounts WHERE token_hash = $1 UNION ALL \
             SELECT 1 FROM instances WHERE token_hash = $1 LIMIT 1",
            &[hash],
        )
        .await?;
    Ok(row.is_some())
}

fn unique_violation(err: StoreError) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |e| {
        if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
            err
        } else {
            StoreError::Query(e)
        }
    }
}
