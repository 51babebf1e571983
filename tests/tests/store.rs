//! The Postgres store against a real server: schema, configs, tokens, NOTIFY, encryption.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use ryze_core::event::EventType;
use ryze_core::store::{Principal, Store, StoreError, StoreOptions, WsConfig};
use ryze_core::token::TokenCipher;
use ryze_tests::pg;
use std::time::Duration;
use uuid::Uuid;

const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const KEY_B: &str = "HwAeAR0CHAMbBBoFGQYYBxcIFgkVChQLEwwSDREOEA8=";
const T: Duration = Duration::from_secs(10);

async fn store_with(cipher: TokenCipher) -> (Store, String) {
    let db = pg().await.fresh_database().await.unwrap();
    let store = Store::new(&db.url, &StoreOptions::default(), cipher).unwrap();
    store.migrate().await.unwrap();
    (store, db.url)
}

async fn store() -> Store {
    store_with(TokenCipher::plain()).await.0
}

fn config(enabled: bool, events: &[EventType], media: bool) -> WsConfig {
    WsConfig {
        enabled,
        events: events.to_vec(),
        media_base64: media,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_is_idempotent_and_safe_concurrently() {
    let s = store().await;
    let (a, b) = tokio::join!(s.migrate(), s.migrate());
    a.unwrap();
    b.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn upsert_overwrites_the_whole_config() {
    let s = store().await;
    let acc = s.create_account(None, None).await.unwrap();
    let inst = s.create_instance(acc.id, "sales", None).await.unwrap();
    assert_eq!(
        s.get_config(inst.id).await.unwrap(),
        None,
        "no implicit default"
    );
    s.upsert_config(inst.id, config(true, &[EventType::CallUpdate], true))
        .await
        .unwrap();
    s.upsert_config(inst.id, config(true, &[], false))
        .await
        .unwrap();
    assert_eq!(
        s.get_config(inst.id).await.unwrap(),
        Some(config(true, &[], false))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn disabled_configs_are_stored_cleared() {
    let s = store().await;
    let acc = s.create_account(None, None).await.unwrap();
    let inst = s.create_instance(acc.id, "sales", None).await.unwrap();
    let saved = s
        .upsert_config(inst.id, config(false, &[EventType::CallUpdate], true))
        .await
        .unwrap();
    assert_eq!(saved, config(false, &[], false));
    assert_eq!(
        s.get_config(inst.id).await.unwrap(),
        Some(config(false, &[], false))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_an_instance_cascades_its_config() {
    let (s, url) = store_with(TokenCipher::plain()).await;
    let acc = s.create_account(None, None).await.unwrap();
    let inst = s.create_instance(acc.id, "sales", None).await.unwrap();
    s.upsert_config(inst.id, config(true, &[], false))
        .await
        .unwrap();
    assert_eq!(
        s.delete_instance(acc.id, "sales").await.unwrap(),
        Some(inst.id)
    );
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let rows = client
        .query(
            "SELECT 1 FROM websocket_configs WHERE instance_id = $1",
            &[&inst.id],
        )
        .await
        .unwrap();
    assert!(rows.is_empty());
    assert_eq!(s.delete_instance(acc.id, "sales").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn notify_arrives_on_config_change_and_instance_delete() {
    let s = store().await;
    let acc = s.create_account(None, None).await.unwrap();
    let inst = s.create_instance(acc.id, "sales", None).await.unwrap();
    let mut listener = s.listen_config().await.unwrap();
    s.upsert_config(inst.id, config(true, &[], false))
        .await
        .unwrap();
    assert_eq!(
        tokio::time::timeout(T, listener.recv()).await.unwrap(),
        Some(inst.id)
    );
    s.delete_instance(acc.id, "sales").await.unwrap();
    // The cascade notifies for the config row and for the instance row.
    assert_eq!(
        tokio::time::timeout(T, listener.recv()).await.unwrap(),
        Some(inst.id)
    );
    assert!(!s.instance_exists(inst.id).await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_resolve_to_their_account_or_instance() {
    let s = store().await;
    let acc = s
        .create_account(Some("a"), Some("acc-token"))
        .await
        .unwrap();
    let inst = s
        .create_instance(acc.id, "Loja Centro", Some("inst-token"))
        .await
        .unwrap();
    assert_eq!(
        s.resolve_token("acc-token").await.unwrap(),
        Some(Principal::Account { account_id: acc.id })
    );
    match s.resolve_token("inst-token").await.unwrap() {
        Some(Principal::Instance(i)) => {
            assert_eq!(
                (i.id, i.account_id, i.name.as_str()),
                (inst.id, acc.id, "Loja Centro")
            )
        }
        other => panic!("expected the instance, got {other:?}"),
    }
    assert_eq!(s.resolve_token("nobody").await.unwrap(), None);
    assert_eq!(
        s.find_instance(acc.id, "Loja Centro")
            .await
            .unwrap()
            .map(|i| i.id),
        Some(inst.id)
    );
    assert_eq!(
        s.find_instance(acc.id, "loja centro").await.unwrap(),
        None,
        "names are case-sensitive"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_tokens_and_names_are_rejected() {
    let s = store().await;
    let a = s.create_account(None, Some("t1")).await.unwrap();
    assert!(matches!(
        s.create_account(None, Some("t1")).await,
        Err(StoreError::DuplicateToken)
    ));
    s.create_instance(a.id, "x", Some("t2")).await.unwrap();
    assert!(matches!(
        s.create_instance(a.id, "y", Some("t1")).await,
        Err(StoreError::DuplicateToken)
    ));
    assert!(matches!(
        s.create_account(None, Some("t2")).await,
        Err(StoreError::DuplicateToken)
    ));
    assert!(matches!(
        s.create_instance(a.id, "x", None).await,
        Err(StoreError::DuplicateInstance)
    ));
    let b = s.create_account(None, None).await.unwrap();
    s.create_instance(b.id, "x", None)
        .await
        .expect("names are unique per account only");
    assert!(matches!(
        s.create_instance(Uuid::new_v4(), "z", None).await,
        Err(StoreError::AccountNotFound)
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn encrypted_tokens_round_trip_and_a_wrong_key_fails() {
    let (s, url) = store_with(TokenCipher::from_base64_key(KEY_A).unwrap()).await;
    let acc = s.create_account(None, None).await.unwrap();
    let inst = s
        .create_instance(acc.id, "sales", Some("secret-instance-token"))
        .await
        .unwrap();
    let d = s.instance_delivery(inst.id).await.unwrap().unwrap();
    assert_eq!(d.token, "secret-instance-token");
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT token_secret FROM instances WHERE id = $1",
            &[&inst.id],
        )
        .await
        .unwrap();
    let stored: Vec<u8> = row.get(0);
    assert!(
        !stored.windows(6).any(|w| w == b"secret"),
        "stored encrypted"
    );
    let wrong = Store::new(
        &url,
        &StoreOptions::default(),
        TokenCipher::from_base64_key(KEY_B).unwrap(),
    )
    .unwrap();
    assert!(matches!(
        wrong.instance_delivery(inst.id).await,
        Err(StoreError::Token(_))
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_upserts_of_one_instance_end_in_one_row() {
    let (s, url) = store_with(TokenCipher::plain()).await;
    let acc = s.create_account(None, None).await.unwrap();
    let inst = s.create_instance(acc.id, "sales", None).await.unwrap();
    let writes = (0..16).map(|i| {
        let s = s.clone();
        tokio::spawn(async move {
            s.upsert_config(inst.id, config(i % 2 == 0, &[], false))
                .await
        })
    });
    for w in futures_util::future::join_all(writes).await {
        w.unwrap().unwrap();
    }
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM websocket_configs WHERE instance_id = $1",
            &[&inst.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn many_deliveries_come_back_in_one_query_and_unknown_ids_are_absent() {
    let s = store().await;
    let acc = s.create_account(None, None).await.unwrap();
    let a = s.create_instance(acc.id, "a", Some("tok-a")).await.unwrap();
    let b = s.create_instance(acc.id, "b", Some("tok-b")).await.unwrap();
    s.upsert_config(a.id, config(true, &[EventType::CallUpdate], true))
        .await
        .unwrap();
    let unknown = Uuid::new_v4();
    let got = s.instance_deliveries(&[a.id, b.id, unknown]).await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(
        (got[&a.id].name.as_str(), got[&a.id].token.as_str()),
        ("a", "tok-a")
    );
    assert_eq!(
        got[&a.id].config,
        Some(config(true, &[EventType::CallUpdate], true))
    );
    assert_eq!(got[&b.id].config, None, "never configured");
    assert!(!got.contains_key(&unknown));
}
