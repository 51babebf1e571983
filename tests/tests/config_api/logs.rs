//! Tokens never appear in logs, even at DEBUG (D15; style §7).

use super::*;
use ryze_tests::WsClient;

#[tokio::test(flavor = "multi_thread")]
async fn no_token_reaches_the_logs_even_at_debug() {
    let db = migrated_db().await;
    let account_token = format!("acct-secret-{}", uuid_like());
    let instance_token = format!("inst-secret-{}", uuid_like());
    let unknown_token = format!("unknown-secret-{}", uuid_like());
    let a = create_account(&db, Some(&account_token)).await;
    let inst = create_instance(&db, &a, "Loja Centro", Some(&instance_token)).await;
    assert_eq!(
        (a.token.as_str(), inst.token.as_str()),
        (account_token.as_str(), instance_token.as_str())
    );
    let mut gw = gateway_on(
        &db.url,
        &unique_prefix(),
        &[
            ("RUST_LOG", "debug".to_owned()),
            ("RATE_LIMIT_PER_MINUTE", "20".to_owned()),
        ],
    )
    .await;
    let name = "Loja%20Centro";
    let secrets = [&account_token, &instance_token, &unknown_token];
    wait_for_window_with(Duration::from_secs(20)).await;

    for secret in secrets {
        let bearer = format!("Bearer {secret}");
        let query = format!("{name}?token={secret}");
        let sources: [(&str, Vec<(&str, &str)>); 3] = [
            (name, vec![("token", secret.as_str())]),
            (name, vec![("authorization", bearer.as_str())]),
            (&query, vec![]),
        ];
        for (path, headers) in &sources {
            post_config(&gw, path, headers, r#"{"enabled": true}"#).await;
            post_config(&gw, path, headers, r#"{"enabled": "bad"}"#).await;
            get_config(&gw, path, headers).await;
            get_config(&gw, "missing", headers).await;
            let ws_path = format!("/ws/{path}");
            let ws = WsClient::connect(&gw.ws_url(&ws_path), headers).await;
            if let Ok(ws) = ws {
                ws.close().await.expect("closing the websocket");
            }
            request(
                &gw,
                Method::GET,
                &format!("/health?token={secret}"),
                headers,
                None,
            )
            .await;
            request(
                &gw,
                Method::GET,
                &format!("/nope?token={secret}"),
                headers,
                None,
            )
            .await;
            let path405 = format!("/api/events/websocket/{path}");
            request(&gw, Method::GET, &path405, headers, None).await;
        }
    }
    // The refused upgrade with an unknown token, and the 101 with the instance's own token,
    // really happened (the loop above ignores outcomes).
    let ws_url = gw.ws_url(&format!("/ws/{name}?token={unknown_token}"));
    let refused = WsClient::connect(&ws_url, &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.status(), Some(401));
    let ws = WsClient::connect(&gw.ws_url(&format!("/ws/{name}")), &tok(&instance_token))
        .await
        .expect("upgrade with the instance token");
    ws.close().await.expect("closing the websocket");
    // Over the limit: 429s are logged too.
    let mut limited = false;
    for _ in 0..25 {
        let reply = get_config(&gw, name, &tok(&unknown_token)).await;
        limited |= reply.status == 429;
    }
    assert!(limited, "the unknown token never reached its limit");

    // Database errors log their cause chain (the 500 path).
    let admin = db.client().await.expect("connecting");
    admin
        .batch_execute("ALTER TABLE websocket_configs RENAME TO websocket_configs_away")
        .await
        .expect("renaming the table");
    let reply = get_config(&gw, name, &tok(&account_token)).await;
    assert_error(&reply, 500, FAILED_CONFIG);
    let reply = post_config(&gw, name, &tok(&instance_token), r#"{"enabled": true}"#).await;
    assert_error(&reply, 500, FAILED_INSTANCE);

    // Stop the gateway so its output is complete.
    gw.sigterm();
    let status = gw.wait_exit(WAIT).await.expect("gateway exit");
    assert!(status.success(), "gateway exited with {status:?}");
    let logs = gw.logs();
    assert!(
        logs.contains("DEBUG"),
        "RUST_LOG=debug had no effect:\n{logs}"
    );
    assert!(
        logs.contains(FAILED_CONFIG),
        "the 500 was not logged:\n{logs}"
    );
    for secret in secrets {
        let lines: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains(secret.as_str()))
            .collect();
        assert!(
            lines.is_empty(),
            "token {secret} in the logs:\n{}",
            lines.join("\n")
        );
    }
}

/// A random UUID-like string (tokens must be unique across the shared Postgres's tests).
fn uuid_like() -> String {
    unique_prefix()
}
