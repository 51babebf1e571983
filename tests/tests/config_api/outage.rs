//! Database failures: the 500 rows of both error tables (§3, §4, D20, D21) and `/health` 503,
//! then recovery without restarting the gateway.

use super::health::assert_health_shape;
use super::*;
use ryze_tests::PgServer;

const ENABLE_FILTERED: &str = r#"{"enabled": true, "events": ["group.flow"], "mediaBase64": true}"#;

/// Polls `/health` until it answers 200 (the pool reconnected); fails at `WAIT`.
async fn wait_healthy(gw: &Service) {
    let reply = eventually("/health healthy", WAIT, || async {
        let reply = request(gw, Method::GET, "/health", &[], None).await;
        if reply.status == 200 {
            Ok(reply)
        } else {
            Err(format!("{reply:?}"))
        }
    })
    .await;
    assert_health_shape(&reply);
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_down_is_500_failed_to_get_instance_and_health_503_then_recovers() {
    let server = PgServer::start_private()
        .await
        .expect("starting a private postgres");
    let db = server.fresh_database().await.expect("creating a database");
    migrate(&db.url).await;
    let a = create_account(&db, None).await;
    let own = create_instance(&db, &a, "sales", None).await;
    let gw = gateway(&db).await;
    let (t, ti) = (tok(&a.token), tok(&own.token));
    let reply = post_config(&gw, "sales", &t, ENABLE_FILTERED).await;
    assert_configured(&reply, true, &["group.flow"], true);

    server.stop().await.expect("stopping postgres");

    for headers in [&t, &ti] {
        let reply = post_config(&gw, "sales", headers, r#"{"enabled": false}"#).await;
        assert_error(&reply, 500, FAILED_INSTANCE);
        assert!(reply.has_rate_limit_headers(), "{reply:?}");
        assert_error(
            &get_config(&gw, "sales", headers).await,
            500,
            FAILED_INSTANCE,
        );
    }
    // The token is resolved before anything else: an unknown token cannot be told apart
    // while the database is down, and the body is never read (D20).
    let reply = get_config(&gw, "sales", &tok("unknown")).await;
    assert_error(&reply, 500, FAILED_INSTANCE);
    let reply = post_config(&gw, "sales", &t, "not json").await;
    assert_error(&reply, 500, FAILED_INSTANCE);
    // No token needs no database.
    assert_error(&get_config(&gw, "sales", &[]).await, 401, INVALID_TOKEN);

    let reply = request(&gw, Method::GET, "/health", &[], None).await;
    let v = assert_health_shape(&reply);
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(v["status"], "degraded");
    assert_eq!(v["service"], "RyzeAPI");
    let db_check = v["checks"]["db"].as_str().unwrap_or_default();
    assert!(db_check.starts_with("fail: "), "checks.db = {db_check:?}");
    assert_eq!(v["checks"]["redis"], "ok");
    assert!(
        !db_check.contains("postgres://"),
        "checks.db leaks the URL: {db_check:?}"
    );

    server.start().await.expect("starting postgres again");
    wait_healthy(&gw).await;
    let reply = request(&gw, Method::GET, "/health", &[], None).await;
    assert_eq!(
        assert_health_shape(&reply)["checks"],
        json!({"db": "ok", "redis": "ok"})
    );
    // The config saved before the outage is intact; the refused POSTs changed nothing.
    let reply = get_config(&gw, "sales", &ti).await;
    assert_retrieved(&reply, true, &["group.flow"], true);
    let reply = post_config(&gw, "sales", &t, r#"{"enabled": false}"#).await;
    assert_configured(&reply, false, &[], false);
    assert_retrieved(&get_config(&gw, "sales", &t).await, false, &[], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_config_table_is_500_failed_to_get_websocket_configuration_on_get() {
    let w = world("sales").await;
    let t = tok(&w.account.token);
    let reply = post_config(&w.gw, "sales", &t, ENABLE_FILTERED).await;
    assert_configured(&reply, true, &["group.flow"], true);

    // Tokens and instances still resolve, but every statement on the config table fails.
    let admin = w.db.client().await.expect("connecting");
    admin
        .batch_execute("ALTER TABLE websocket_configs RENAME TO websocket_configs_away")
        .await
        .expect("renaming the table");

    for headers in [&t, &tok(&w.instance.token)] {
        // GET: reading the config fails (§4).
        let reply = get_config(&w.gw, "sales", headers).await;
        assert_error(&reply, 500, FAILED_CONFIG);
        // POST: saving fails; the configure page documents only this 500 (D21).
        let reply = post_config(&w.gw, "sales", headers, r#"{"enabled": true}"#).await;
        assert_error(&reply, 500, FAILED_INSTANCE);
    }
    // The earlier steps still answer as usual.
    assert_error(
        &get_config(&w.gw, "other", &t).await,
        404,
        INSTANCE_NOT_FOUND,
    );
    assert_error(
        &post_config(&w.gw, "sales", &t, "not json").await,
        400,
        INVALID_BODY,
    );

    admin
        .batch_execute("ALTER TABLE websocket_configs_away RENAME TO websocket_configs")
        .await
        .expect("renaming the table back");
    assert_retrieved(
        &get_config(&w.gw, "sales", &t).await,
        true,
        &["group.flow"],
        true,
    );
    let reply = post_config(&w.gw, "sales", &t, r#"{"enabled": true}"#).await;
    assert_configured(&reply, true, &[], false);
}
