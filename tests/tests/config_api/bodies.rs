//! What POST accepts, persists and returns, and what GET reads back (SPEC §3, §4; D4, D5, D21,
//! D34).

use super::*;

/// The persisted row, read straight from `websocket_configs`.
async fn stored_row(db: &TestDb) -> Option<(bool, Vec<String>, bool)> {
    let client = db.client().await.expect("connecting to the test database");
    let row = client
        .query_opt(
            "SELECT enabled, events, media_base64 FROM websocket_configs",
            &[],
        )
        .await
        .expect("reading websocket_configs");
    row.map(|r| (r.get(0), r.get(1), r.get(2)))
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn documented_bodies_persist_and_return_exactly_as_the_table_says() {
    let w = world("sales").await;
    let t = tok(&w.account.token);

    // Row 1: only `enabled`.
    let reply = post_config(&w.gw, "sales", &t, r#"{"enabled": true}"#).await;
    assert_configured(&reply, true, &[], false);
    assert_eq!(stored_row(&w.db).await, Some((true, vec![], false)));
    assert_retrieved(&get_config(&w.gw, "sales", &t).await, true, &[], false);

    // Row 2: duplicates removed, first occurrence order kept.
    let body = r#"{"enabled": true, "events": ["message.status", "message.exchange", "message.status"], "mediaBase64": true}"#;
    let reply = post_config(&w.gw, "sales", &t, body).await;
    let events = ["message.status", "message.exchange"];
    assert_configured(&reply, true, &events, true);
    assert_eq!(
        stored_row(&w.db).await,
        Some((true, strings(&events), true))
    );
    assert_retrieved(&get_config(&w.gw, "sales", &t).await, true, &events, true);

    // Row 3: disabling clears the other fields before saving.
    let body = r#"{"enabled": false, "events": ["call.update"], "mediaBase64": true}"#;
    let reply = post_config(&w.gw, "sales", &t, body).await;
    assert_configured(&reply, false, &[], false);
    assert_eq!(stored_row(&w.db).await, Some((false, vec![], false)));
    assert_retrieved(&get_config(&w.gw, "sales", &t).await, false, &[], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn post_then_get_round_trips_all_six_events_in_the_order_sent() {
    let w = world("sales").await;
    let all = [
        "label.update",
        "instance.state",
        "group.flow",
        "call.update",
        "message.status",
        "message.exchange",
    ];
    let body = json!({"enabled": true, "events": all, "mediaBase64": true}).to_string();
    // The instance's own token works as well as the account's (§3, §4).
    let reply = post_config(&w.gw, "sales", &tok(&w.instance.token), &body).await;
    assert_configured(&reply, true, &all, true);
    let reply = get_config(&w.gw, "sales", &tok(&w.instance.token)).await;
    assert_retrieved(&reply, true, &all, true);
    let reply = get_config(&w.gw, "sales", &tok(&w.account.token)).await;
    assert_retrieved(&reply, true, &all, true);
}

#[tokio::test(flavor = "multi_thread")]
async fn never_configured_is_404_but_disabled_is_200_with_cleared_fields() {
    let w = world("sales").await;
    let t = tok(&w.account.token);

    let reply = get_config(&w.gw, "sales", &t).await;
    assert_error(&reply, 404, NOT_CONFIGURED);
    let reply = get_config(&w.gw, "sales", &tok(&w.instance.token)).await;
    assert_error(&reply, 404, NOT_CONFIGURED);
    assert_eq!(stored_row(&w.db).await, None, "GET must not create a row");

    // A first POST with enabled=false still creates the row (D21).
    let reply = post_config(&w.gw, "sales", &t, r#"{"enabled": false}"#).await;
    assert_configured(&reply, false, &[], false);
    assert_eq!(stored_row(&w.db).await, Some((false, vec![], false)));
    assert_retrieved(&get_config(&w.gw, "sales", &t).await, false, &[], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disabled_row_written_by_the_platform_reads_with_cleared_fields() {
    let w = world("sales").await;
    let t = tok(&w.account.token);
    let reply = post_config(&w.gw, "sales", &t, r#"{"enabled": true}"#).await;
    assert_configured(&reply, true, &[], false);

    // The platform writes a disabled row with fields set (D34).
    let client = w.db.client().await.expect("connecting");
    client
        .execute(
            "UPDATE websocket_configs SET enabled = false, \
             events = ARRAY['call.update', 'group.flow'], media_base64 = true",
            &[],
        )
        .await
        .expect("updating the row");
    assert_retrieved(&get_config(&w.gw, "sales", &t).await, false, &[], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_post_overwrites_the_whole_config_with_defaults_for_omitted_fields() {
    let w = world("sales").await;
    let t = tok(&w.account.token);
    let body = r#"{"enabled": true, "events": ["call.update", "group.flow"], "mediaBase64": true}"#;
    let reply = post_config(&w.gw, "sales", &t, body).await;
    assert_configured(&reply, true, &["call.update", "group.flow"], true);

    let reply = post_config(&w.gw, "sales", &t, r#"{"enabled": true}"#).await;
    assert_configured(&reply, true, &[], false);
    assert_retrieved(&get_config(&w.gw, "sales", &t).await, true, &[], false);

    let reply = post_config(
        &w.gw,
        "sales",
        &t,
        r#"{"enabled": true, "mediaBase64": true}"#,
    )
    .await;
    assert_configured(&reply, true, &[], true);
    let reply = post_config(
        &w.gw,
        "sales",
        &t,
        r#"{"enabled": true, "events": ["label.update"]}"#,
    )
    .await;
    assert_configured(&reply, true, &["label.update"], false);
    assert_retrieved(
        &get_config(&w.gw, "sales", &t).await,
        true,
        &["label.update"],
        false,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nulls_mean_omitted_unknown_fields_are_ignored_and_content_type_does_not_matter() {
    let w = world("sales").await;
    let t = tok(&w.account.token);

    let body = r#"{"enabled": true, "events": null, "mediaBase64": null}"#;
    assert_configured(
        &post_config(&w.gw, "sales", &t, body).await,
        true,
        &[],
        false,
    );

    let body = r#"{"enabled": true, "events": ["message.status"], "label": "x", "extra": {"a": [1, null]}}"#;
    let reply = post_config(&w.gw, "sales", &t, body).await;
    assert_configured(&reply, true, &["message.status"], false);

    let body = r#"{"enabled":true,"events":[],"mediaBase64":true}"#;
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut req = http()
            .post(w.gw.url("/api/events/websocket/sales"))
            .header("token", w.account.token.as_str())
            .body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let reply = send(req).await;
        assert_configured(&reply, true, &[], true);
    }
    // Whitespace around the JSON is still one object.
    let reply = post_config(&w.gw, "sales", &t, " \n{\"enabled\": false}\n ").await;
    assert_configured(&reply, false, &[], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_breaking_the_rules_are_400_and_change_nothing() {
    let w = world("sales").await;
    let t = tok(&w.account.token);
    let good = r#"{"enabled": true, "events": ["call.update"], "mediaBase64": true}"#;
    assert_configured(
        &post_config(&w.gw, "sales", &t, good).await,
        true,
        &["call.update"],
        true,
    );

    let too_big = format!(r#"{{"enabled": true, "pad": "{}"}}"#, "a".repeat(64 * 1024));
    let bad: Vec<(&str, String)> = vec![
        ("empty body", String::new()),
        ("invalid JSON", "{".into()),
        ("not JSON", "enabled=true".into()),
        ("trailing garbage", r#"{"enabled": true} x"#.into()),
        (
            "two objects",
            r#"{"enabled": true}{"enabled": true}"#.into(),
        ),
        ("array", r#"[{"enabled": true}]"#.into()),
        ("null", "null".into()),
        ("string", r#""enabled""#.into()),
        ("boolean", "true".into()),
        ("number", "1".into()),
        ("enabled missing", "{}".into()),
        (
            "enabled missing, others set",
            r#"{"events": [], "mediaBase64": false}"#.into(),
        ),
        ("enabled null", r#"{"enabled": null}"#.into()),
        ("enabled a string", r#"{"enabled": "true"}"#.into()),
        ("enabled a number", r#"{"enabled": 1}"#.into()),
        ("enabled an object", r#"{"enabled": {}}"#.into()),
        (
            "events a string",
            r#"{"enabled": true, "events": "message.status"}"#.into(),
        ),
        (
            "events an object",
            r#"{"enabled": true, "events": {}}"#.into(),
        ),
        (
            "events a boolean",
            r#"{"enabled": true, "events": true}"#.into(),
        ),
        (
            "event a number",
            r#"{"enabled": true, "events": [1]}"#.into(),
        ),
        (
            "event null",
            r#"{"enabled": true, "events": [null]}"#.into(),
        ),
        (
            "unknown event",
            r#"{"enabled": true, "events": ["message.unknown"]}"#.into(),
        ),
        (
            "event in wrong case",
            r#"{"enabled": true, "events": ["Message.Status"]}"#.into(),
        ),
        (
            "event with spaces",
            r#"{"enabled": true, "events": [" call.update"]}"#.into(),
        ),
        (
            "empty event name",
            r#"{"enabled": true, "events": [""]}"#.into(),
        ),
        (
            "unknown event after a valid one",
            r#"{"enabled": true, "events": ["call.update", "webhook"]}"#.into(),
        ),
        (
            "unknown event while disabled",
            r#"{"enabled": false, "events": ["nope"]}"#.into(),
        ),
        (
            "mediaBase64 a string",
            r#"{"enabled": true, "mediaBase64": "true"}"#.into(),
        ),
        (
            "mediaBase64 a number",
            r#"{"enabled": true, "mediaBase64": 0}"#.into(),
        ),
        (
            "duplicate enabled",
            r#"{"enabled": true, "enabled": false}"#.into(),
        ),
        (
            "duplicate events",
            r#"{"enabled": true, "events": [], "events": []}"#.into(),
        ),
        (
            "duplicate mediaBase64",
            r#"{"enabled": true, "mediaBase64": true, "mediaBase64": true}"#.into(),
        ),
        (
            "duplicate unknown key",
            r#"{"enabled": true, "x": 1, "x": 1}"#.into(),
        ),
        ("over 64 KiB", too_big),
    ];
    for (case, body) in &bad {
        let reply = post_config(&w.gw, "sales", &t, body).await;
        assert_eq!(reply.status, 400, "{case}: {reply:?}");
        assert_error(&reply, 400, INVALID_BODY);
    }
    // JSON text must be UTF-8, also inside a field the parser otherwise ignores.
    let not_utf8: [(&str, &[u8]); 3] = [
        (
            "bytes FF FE in an ignored string",
            b"{\"enabled\":true,\"x\":\"\xFF\xFE\"}",
        ),
        ("a cut sequence in a key", b"{\"enabled\":true,\"\xC3\":1}"),
        (
            "an encoded surrogate",
            b"{\"enabled\":false,\"x\":\"\xED\xA0\x80\"}",
        ),
    ];
    for (case, body) in not_utf8 {
        let req = http()
            .post(w.gw.url("/api/events/websocket/sales"))
            .header("content-type", "application/json")
            .header("token", &w.account.token)
            .body(body.to_vec());
        let reply = send(req).await;
        assert_eq!(reply.status, 400, "{case}: {reply:?}");
        assert_error(&reply, 400, INVALID_BODY);
    }
    assert_eq!(
        stored_row(&w.db).await,
        Some((true, strings(&["call.update"]), true)),
        "a refused body changed the row"
    );
    assert_retrieved(
        &get_config(&w.gw, "sales", &t).await,
        true,
        &["call.update"],
        true,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_of_exactly_64_kib_is_accepted_and_one_byte_more_is_400() {
    let w = world("sales").await;
    let t = tok(&w.account.token);
    let padded = |total: usize| {
        let skeleton = r#"{"enabled": true, "pad": ""}"#;
        let body = format!(
            r#"{{"enabled": true, "pad": "{}"}}"#,
            "a".repeat(total - skeleton.len())
        );
        assert_eq!(body.len(), total);
        body
    };
    let reply = post_config(&w.gw, "sales", &t, &padded(64 * 1024)).await;
    assert_configured(&reply, true, &[], false);
    let reply = post_config(&w.gw, "sales", &t, &padded(64 * 1024 + 1)).await;
    assert_error(&reply, 400, INVALID_BODY);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_body_is_judged_only_after_the_token_and_the_instance() {
    let w = world("sales").await;
    let bad = r#"{"enabled": "nope"}"#;
    // D20: token → instance → body.
    assert_error(
        &post_config(&w.gw, "sales", &[], bad).await,
        401,
        INVALID_TOKEN,
    );
    let reply = post_config(&w.gw, "sales", &tok("unknown-token"), bad).await;
    assert_error(&reply, 401, INVALID_TOKEN);
    let reply = post_config(&w.gw, "other", &tok(&w.account.token), bad).await;
    assert_error(&reply, 404, INSTANCE_NOT_FOUND);
    let reply = post_config(&w.gw, "other", &tok(&w.instance.token), bad).await;
    assert_error(&reply, 401, INVALID_TOKEN);
    let reply = post_config(&w.gw, "sales", &tok(&w.account.token), bad).await;
    assert_error(&reply, 400, INVALID_BODY);
}
