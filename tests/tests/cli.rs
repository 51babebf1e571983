//! The binaries' command lines: admin commands print JSON, bad configuration exits 64.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use ryze_tests::{pg, run_cli, run_cli_json, Bin};

async fn env() -> Vec<(&'static str, String)> {
    let db = pg().await.fresh_database().await.unwrap();
    vec![("DATABASE_URL", db.url)]
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_commands_print_json_and_refuse_duplicates_clearly() {
    let env = env().await;
    assert_eq!(
        run_cli_json(Bin::Publisher, &["migrate"], &env)
            .await
            .unwrap()["migrated"],
        true
    );
    let acc = run_cli_json(Bin::Publisher, &["account", "create", "--name", "a"], &env)
        .await
        .unwrap();
    let token = acc["token"].as_str().unwrap();
    assert!(
        uuid::Uuid::parse_str(token).is_ok(),
        "generated tokens are UUIDv4"
    );
    let id = acc["id"].as_str().unwrap().to_owned();

    let inst = run_cli_json(
        Bin::Publisher,
        &["instance", "create", "--account", &id, "--name", "sales"],
        &env,
    )
    .await
    .unwrap();
    assert_eq!(inst["name"], "sales");
    assert!(inst["id"].is_string() && inst["token"].is_string());

    let dup_name = run_cli(
        Bin::Publisher,
        &["instance", "create", "--account", &id, "--name", "sales"],
        &env,
    )
    .await
    .unwrap();
    assert!(!dup_name.status.success());
    assert!(String::from_utf8_lossy(&dup_name.stderr)
        .contains("instance name already exists in this account"));

    let dup_token = run_cli(
        Bin::Publisher,
        &["account", "create", "--token", token],
        &env,
    )
    .await
    .unwrap();
    assert!(!dup_token.status.success());
    assert!(String::from_utf8_lossy(&dup_token.stderr).contains("token already in use"));

    let del = run_cli_json(
        Bin::Publisher,
        &["instance", "delete", "--account", &id, "--name", "sales"],
        &env,
    )
    .await
    .unwrap();
    assert_eq!(del["deleted"], true);
    let again = run_cli(
        Bin::Publisher,
        &["instance", "delete", "--account", &id, "--name", "sales"],
        &env,
    )
    .await
    .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("instance not found"));
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_with_bad_config_lists_every_problem_and_exits_64() {
    let env = vec![
        ("ENCRYPTION_KEY", "c2hvcnQ=".to_owned()),
        ("WS_SEND_QUEUE", "0".to_owned()),
        ("HISTORY_TTL", "0s".to_owned()),
    ];
    let out = run_cli(Bin::Gateway, &[], &env).await.unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "DATABASE_URL is required",
        "REDIS_URL is required",
        "ENCRYPTION_KEY",
        "WS_SEND_QUEUE",
        "HISTORY_TTL must be at least 1ms when HISTORY_SIZE is above 0",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in {err}");
    }
}

/// CONTRACT §2: values clap refuses are listed together with the missing settings, not one
/// at a time.
#[tokio::test(flavor = "multi_thread")]
async fn refused_values_and_missing_settings_are_listed_in_one_message() {
    let gateway = run_cli(
        Bin::Gateway,
        &["--ws-max-message-bytes", "big"],
        &[
            ("WS_PING_INTERVAL", "soon".to_owned()),
            ("LISTEN_ADDR", "nowhere".to_owned()),
        ],
    )
    .await
    .unwrap();
    let publisher = run_cli(
        Bin::Publisher,
        &[],
        &[
            ("CONFIG_CACHE_TTL", "soon".to_owned()),
            ("MAX_INGEST_BYTES", "8 parsecs".to_owned()),
            ("HISTORY_SIZE", "lots".to_owned()),
        ],
    )
    .await
    .unwrap();
    for (out, needles) in [
        (
            &gateway,
            &[
                "WS_PING_INTERVAL: invalid value 'soon'",
                "LISTEN_ADDR: invalid value 'nowhere'",
                "WS_MAX_MESSAGE_BYTES: invalid value 'big'",
                "DATABASE_URL is required",
                "REDIS_URL is required",
            ][..],
        ),
        (
            &publisher,
            &[
                "CONFIG_CACHE_TTL: invalid value 'soon'",
                "MAX_INGEST_BYTES: invalid value '8 parsecs'",
                "HISTORY_SIZE: invalid value 'lots'",
                "DATABASE_URL is required",
                "PUBLISHER_API_KEY is required",
                "PUBLIC_BASE_URL is required",
            ][..],
        ),
    ] {
        assert_eq!(out.status.code(), Some(64));
        assert!(out.stdout.is_empty(), "nothing on stdout");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err.matches("invalid configuration:").count(),
            1,
            "one message: {err}"
        );
        for needle in needles {
            assert!(err.contains(needle), "missing {needle:?} in {err}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn publisher_without_required_settings_exits_64() {
    let out = run_cli(
        Bin::Publisher,
        &[],
        &[
            ("DATABASE_URL", "postgres://x@127.0.0.1:1/x".to_owned()),
            ("HISTORY_SIZE", "5".to_owned()),
            ("HISTORY_TTL", "0ms".to_owned()),
        ],
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "HISTORY_TTL must be at least 1ms when HISTORY_SIZE is above 0",
        "REDIS_URL (or REGION_REDIS_URLS) is required",
        "PUBLISHER_API_KEY is required",
        "PUBLIC_BASE_URL is required",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in {err}");
    }
}
