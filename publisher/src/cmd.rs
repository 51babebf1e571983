//! Admin commands (CONTRACT §1): each prints one JSON object on stdout; failures print a
//! clear message on stderr and exit non-zero.

use crate::config::{AccountCommand, Command, InstanceCommand};
use ryze_core::store::{Store, StoreError};
use serde_json::json;

/// Why an admin command failed (the message is printed as is).
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// The store refused (duplicate token or name, unknown account) or failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// `instance delete` found nothing to delete.
    #[error("instance not found")]
    NotFound,
}

/// Runs one admin command and returns the JSON to print.
pub async fn run(store: &Store, command: &Command) -> Result<serde_json::Value, CmdError> {
    Ok(match command {
        Command::Migrate => {
            store.migrate().await?;
            json!({"migrated": true})
        }
        Command::Account {
            action: AccountCommand::Create { name, token },
        } => {
            let a = store
                .create_account(name.as_deref(), token.as_deref())
                .await?;
            json!({"id": a.id, "token": a.token})
        }
        Command::Instance {
            action:
                InstanceCommand::Create {
                    account,
                    name,
                    token,
                },
        } => {
            let i = store
                .create_instance(*account, name, token.as_deref())
                .await?;
            json!({"id": i.id, "name": i.name, "token": i.token})
        }
        Command::Instance {
            action: InstanceCommand::Delete { account, name },
        } => {
            let id = store
                .delete_instance(*account, name)
                .await?
                .ok_or(CmdError::NotFound)?;
            json!({"deleted": true, "id": id})
        }
    })
}
