//! Token sources and precedence (D2, D19), the ownership matrix (D3, D18, D31), and the 401/404
//! rows of the POST and GET error tables (§3, §4).

use super::*;

const ENABLE: &str = r#"{"enabled": true}"#;

/// Request headers as (name, value) pairs.
type Headers<'a> = Vec<(&'a str, &'a str)>;

#[tokio::test(flavor = "multi_thread")]
async fn every_401_and_404_row_of_both_error_tables() {
    let db = migrated_db().await;
    let a = create_account(&db, None).await;
    let a1 = create_instance(&db, &a, "one", None).await;
    let a2 = create_instance(&db, &a, "two", None).await;
    let b = create_account(&db, None).await;
    let b1 = create_instance(&db, &b, "b-only", None).await;
    let gw = gateway(&db).await;

    // 401: no token.
    assert_error(
        &post_config(&gw, "one", &[], ENABLE).await,
        401,
        INVALID_TOKEN,
    );
    assert_error(&get_config(&gw, "one", &[]).await, 401, INVALID_TOKEN);
    // 401: the token matches nothing.
    let unknown = tok("00000000-0000-4000-8000-000000000000");
    assert_error(
        &post_config(&gw, "one", &unknown, ENABLE).await,
        401,
        INVALID_TOKEN,
    );
    assert_error(&get_config(&gw, "one", &unknown).await, 401, INVALID_TOKEN);
    // 401: a TokenInstance of another instance, same account or another one.
    for other in [&a2, &b1] {
        let t = tok(&other.token);
        assert_error(
            &post_config(&gw, "one", &t, ENABLE).await,
            401,
            INVALID_TOKEN,
        );
        assert_error(&get_config(&gw, "one", &t).await, 401, INVALID_TOKEN);
    }
    // 404: a TokenAccount whose account has no instance of that name, even if another
    // account has one.
    let t = tok(&a.token);
    for name in ["nope", "b-only"] {
        assert_error(
            &post_config(&gw, name, &t, ENABLE).await,
            404,
            INSTANCE_NOT_FOUND,
        );
        assert_error(&get_config(&gw, name, &t).await, 404, INSTANCE_NOT_FOUND);
    }
    // 404 on GET: the instance exists but was never configured.
    assert_error(&get_config(&gw, "one", &t).await, 404, NOT_CONFIGURED);
    assert_error(
        &get_config(&gw, "one", &tok(&a1.token)).await,
        404,
        NOT_CONFIGURED,
    );
    // Nothing above wrote a row.
    assert_configured(&post_config(&gw, "one", &t, ENABLE).await, true, &[], false);
    assert_retrieved(&get_config(&gw, "one", &t).await, true, &[], false);
    assert_error(&get_config(&gw, "two", &t).await, 404, NOT_CONFIGURED);
}

#[tokio::test(flavor = "multi_thread")]
async fn each_token_source_works_alone() {
    let w = world("sales").await;
    let body = r#"{"enabled": true, "events": ["call.update"]}"#;
    let reply = post_config(&w.gw, "sales", &tok(&w.instance.token), body).await;
    assert_configured(&reply, true, &["call.update"], false);

    for token in [&w.account.token, &w.instance.token] {
        let bearer = format!("Bearer {token}");
        let lower = format!("bearer {token}");
        let upper_tab = format!("BEARER\t{token}");
        let padded = format!("  {token}  ");
        let sources: Vec<(&str, Headers, String)> = vec![
            (
                "header token",
                vec![("token", token.as_str())],
                String::new(),
            ),
            (
                "header token, padded",
                vec![("token", padded.as_str())],
                String::new(),
            ),
            (
                "Bearer",
                vec![("authorization", bearer.as_str())],
                String::new(),
            ),
            (
                "bearer",
                vec![("authorization", lower.as_str())],
                String::new(),
            ),
            (
                "BEARER + tab",
                vec![("authorization", upper_tab.as_str())],
                String::new(),
            ),
            ("query", vec![], format!("?token={}", enc(token))),
            (
                "query among others",
                vec![],
                format!("?a=1&token={}&b=2", enc(token)),
            ),
        ];
        for (case, headers, query) in sources {
            let reply = get_config(&w.gw, &format!("sales{query}"), &headers).await;
            assert_eq!(reply.status, 200, "{case}: {reply:?}");
            assert_retrieved(&reply, true, &["call.update"], false);
            let reply = post_config(&w.gw, &format!("sales{query}"), &headers, body).await;
            assert_eq!(reply.status, 200, "{case}: {reply:?}");
            assert_configured(&reply, true, &["call.update"], false);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn header_token_beats_bearer_beats_query_and_the_winner_is_final() {
    let w = world("sales").await;
    let t = tok(&w.account.token);
    assert_configured(
        &post_config(&w.gw, "sales", &t, ENABLE).await,
        true,
        &[],
        false,
    );

    let good = w.instance.token.as_str();
    let bad = "not-a-token";
    let good_bearer = format!("Bearer {good}");
    let bad_bearer = format!("Bearer {bad}");
    let glued = format!("Bearer{good}");
    let (good_bearer, bad_bearer, glued) =
        (good_bearer.as_str(), bad_bearer.as_str(), glued.as_str());
    let q_good = format!("sales?token={}", enc(good));
    let q_bad = format!("sales?token={bad}");
    let (q_good, q_bad) = (q_good.as_str(), q_bad.as_str());

    // (case, path, headers, expected status)
    let cases: Vec<(&str, &str, Headers, u16)> = vec![
        // The header wins over a bad Bearer and a bad query.
        (
            "good header, bad bearer, bad query",
            q_bad,
            vec![("token", good), ("authorization", bad_bearer)],
            200,
        ),
        // An invalid winning source is final, even when a later one is valid.
        (
            "bad header, good bearer",
            "sales",
            vec![("token", bad), ("authorization", good_bearer)],
            401,
        ),
        ("bad header, good query", q_good, vec![("token", bad)], 401),
        (
            "bad bearer, good query",
            q_good,
            vec![("authorization", bad_bearer)],
            401,
        ),
        (
            "good bearer, bad query",
            q_bad,
            vec![("authorization", good_bearer)],
            200,
        ),
        // Empty sources are absent: the next one decides.
        (
            "empty header, good bearer",
            "sales",
            vec![("token", ""), ("authorization", good_bearer)],
            200,
        ),
        (
            "blank header, good query",
            q_good,
            vec![("token", "   ")],
            200,
        ),
        (
            "empty bearer, good query",
            q_good,
            vec![("authorization", "Bearer ")],
            200,
        ),
        // Only `Bearer <t>` counts; other Authorization forms are ignored, not errors.
        (
            "basic, good query",
            q_good,
            vec![("authorization", "Basic dXNlcjpwYXNz")],
            200,
        ),
        (
            "basic alone",
            "sales",
            vec![("authorization", "Basic dXNlcjpwYXNz")],
            401,
        ),
        (
            "token as bare authorization, good query",
            q_good,
            vec![("authorization", good)],
            200,
        ),
        (
            "bearer glued to the token",
            "sales",
            vec![("authorization", glued)],
            401,
        ),
    ];
    for (case, path, headers, status) in &cases {
        let reply = get_config(&w.gw, path, headers).await;
        assert_eq!(reply.status, *status, "{case}: {reply:?}");
        if *status == 200 {
            assert_retrieved(&reply, true, &[], false);
        } else {
            assert_error(&reply, 401, INVALID_TOKEN);
        }
        let reply = post_config(&w.gw, path, headers, ENABLE).await;
        assert_eq!(reply.status, *status, "POST {case}: {reply:?}");
        if *status == 200 {
            assert_configured(&reply, true, &[], false);
        } else {
            assert_error(&reply, 401, INVALID_TOKEN);
        }
    }

    // Query: the first `token` parameter wins; an empty one is absent.
    let first_good = format!("sales?token={}&token={bad}", enc(good));
    assert_retrieved(&get_config(&w.gw, &first_good, &[]).await, true, &[], false);
    let first_bad = format!("sales?token={bad}&token={}", enc(good));
    assert_error(
        &get_config(&w.gw, &first_bad, &[]).await,
        401,
        INVALID_TOKEN,
    );
    assert_error(
        &get_config(&w.gw, "sales?token=", &[]).await,
        401,
        INVALID_TOKEN,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn query_tokens_are_form_decoded() {
    let db = migrated_db().await;
    let token = "tok en+/=&?#%é";
    let a = create_account(&db, Some(token)).await;
    assert_eq!(a.token, token);
    create_instance(&db, &a, "sales", None).await;
    let gw = gateway(&db).await;
    // Header values cannot carry every byte of this token; the query form can.
    let encoded = form_urlencoded_token(token);
    let path = format!("sales?token={encoded}");
    assert_configured(
        &post_config(&gw, &path, &[], ENABLE).await,
        true,
        &[],
        false,
    );
    assert_retrieved(&get_config(&gw, &path, &[]).await, true, &[], false);
    // `+` is a space in a query value.
    let a2 = create_account(&db, Some("space token")).await;
    create_instance(&db, &a2, "sales", None).await;
    assert_error(
        &get_config(&gw, "sales?token=space+token", &[]).await,
        404,
        NOT_CONFIGURED,
    );
}

/// `application/x-www-form-urlencoded` encoding of a value (space as `+`).
fn form_urlencoded_token(value: &str) -> String {
    enc(value).replace("%20", "+")
}

#[tokio::test(flavor = "multi_thread")]
async fn ownership_matrix_keeps_accounts_apart() {
    let db = migrated_db().await;
    let a = create_account(&db, None).await;
    let b = create_account(&db, None).await;
    let a_sales = create_instance(&db, &a, "sales", None).await;
    let a_only = create_instance(&db, &a, "a-only", None).await;
    let b_sales = create_instance(&db, &b, "sales", None).await;
    let b_only = create_instance(&db, &b, "b-only", None).await;
    let gw = gateway(&db).await;

    // The same name in two accounts names two instances (D31).
    let body_a = r#"{"enabled": true, "events": ["call.update"]}"#;
    let reply = post_config(&gw, "sales", &tok(&a.token), body_a).await;
    assert_configured(&reply, true, &["call.update"], false);
    assert_error(
        &get_config(&gw, "sales", &tok(&b.token)).await,
        404,
        NOT_CONFIGURED,
    );
    assert_error(
        &get_config(&gw, "sales", &tok(&b_sales.token)).await,
        404,
        NOT_CONFIGURED,
    );
    let body_b = r#"{"enabled": false}"#;
    let reply = post_config(&gw, "sales", &tok(&b_sales.token), body_b).await;
    assert_configured(&reply, false, &[], false);
    for t in [&a.token, &a_sales.token] {
        let reply = get_config(&gw, "sales", &tok(t)).await;
        assert_retrieved(&reply, true, &["call.update"], false);
    }
    for t in [&b.token, &b_sales.token] {
        assert_retrieved(&get_config(&gw, "sales", &tok(t)).await, false, &[], false);
    }

    // Account A's token on B's instance: invisible, 404.
    let t = tok(&a.token);
    assert_error(
        &get_config(&gw, "b-only", &t).await,
        404,
        INSTANCE_NOT_FOUND,
    );
    assert_error(
        &post_config(&gw, "b-only", &t, ENABLE).await,
        404,
        INSTANCE_NOT_FOUND,
    );
    // B's instance token on A's instance: 401, never revealing that it exists.
    for name in ["a-only", "sales", "does-not-exist"] {
        let t = tok(&b_only.token);
        assert_error(&get_config(&gw, name, &t).await, 401, INVALID_TOKEN);
        assert_error(
            &post_config(&gw, name, &t, ENABLE).await,
            401,
            INVALID_TOKEN,
        );
    }
    // A's instance token on a sibling instance of the same account: 401.
    let t = tok(&a_only.token);
    assert_error(&get_config(&gw, "sales", &t).await, 401, INVALID_TOKEN);
    assert_error(
        &post_config(&gw, "sales", &t, ENABLE).await,
        401,
        INVALID_TOKEN,
    );
    // Nothing of A was touched by B's requests.
    let reply = get_config(&gw, "a-only", &tok(&a.token)).await;
    assert_error(&reply, 404, NOT_CONFIGURED);
}

#[tokio::test(flavor = "multi_thread")]
async fn instance_names_are_case_sensitive_percent_decoded_once_and_capped_at_128_chars() {
    let db = migrated_db().await;
    let a = create_account(&db, None).await;
    let sales = create_instance(&db, &a, "Sales", None).await;
    let loja = create_instance(&db, &a, "Loja Centro", None).await;
    let plus = create_instance(&db, &a, "a+b", None).await;
    let pct = create_instance(&db, &a, "100%25", None).await;
    let long128 = create_instance(&db, &a, &"é".repeat(128), None).await;
    let long129 = create_instance(&db, &a, &"x".repeat(129), None).await;
    let gw = gateway(&db).await;
    let t = tok(&a.token);

    // Case-sensitive (D18).
    assert_configured(
        &post_config(&gw, "Sales", &t, ENABLE).await,
        true,
        &[],
        false,
    );
    assert_error(&get_config(&gw, "sales", &t).await, 404, INSTANCE_NOT_FOUND);
    assert_error(&get_config(&gw, "SALES", &t).await, 404, INSTANCE_NOT_FOUND);
    let own = tok(&sales.token);
    assert_error(&get_config(&gw, "sales", &own).await, 401, INVALID_TOKEN);
    assert_retrieved(&get_config(&gw, "Sales", &own).await, true, &[], false);
    // Percent-decoded: `%53ales` is `Sales`.
    assert_retrieved(&get_config(&gw, "%53ales", &t).await, true, &[], false);

    // `Loja%20Centro` names `Loja Centro`.
    let body = r#"{"enabled": true, "events": ["message.exchange"]}"#;
    let reply = post_config(&gw, "Loja%20Centro", &t, body).await;
    assert_configured(&reply, true, &["message.exchange"], false);
    for token in [&a.token, &loja.token] {
        let reply = get_config(&gw, "Loja%20Centro", &tok(token)).await;
        assert_retrieved(&reply, true, &["message.exchange"], false);
    }
    // `+` stays `+` in a path (it is not a space there).
    assert_configured(&post_config(&gw, "a+b", &t, ENABLE).await, true, &[], false);
    assert_retrieved(
        &get_config(&gw, "a%2Bb", &tok(&plus.token)).await,
        true,
        &[],
        false,
    );
    assert_error(&get_config(&gw, "a%20b", &t).await, 404, INSTANCE_NOT_FOUND);
    // Decoded once: `100%2525` is `100%25`, not `100%`.
    assert_configured(
        &post_config(&gw, "100%2525", &t, ENABLE).await,
        true,
        &[],
        false,
    );
    assert_retrieved(
        &get_config(&gw, "100%2525", &tok(&pct.token)).await,
        true,
        &[],
        false,
    );
    assert_error(
        &get_config(&gw, "100%25", &t).await,
        404,
        INSTANCE_NOT_FOUND,
    );
    // Not UTF-8 after decoding: names nothing.
    assert_error(&get_config(&gw, "%FF", &t).await, 404, INSTANCE_NOT_FOUND);
    assert_error(&get_config(&gw, "%FF", &own).await, 401, INVALID_TOKEN);

    // 128 characters (256 bytes) still name an instance.
    let name128 = enc(&long128.name);
    assert_configured(
        &post_config(&gw, &name128, &t, ENABLE).await,
        true,
        &[],
        false,
    );
    let reply = get_config(&gw, &name128, &tok(&long128.token)).await;
    assert_retrieved(&reply, true, &[], false);
    // 129 characters name nothing: 404 for the account, 401 for the instance's own token.
    let name129 = long129.name.clone();
    assert_error(
        &get_config(&gw, &name129, &t).await,
        404,
        INSTANCE_NOT_FOUND,
    );
    assert_error(
        &post_config(&gw, &name129, &t, ENABLE).await,
        404,
        INSTANCE_NOT_FOUND,
    );
    let own129 = tok(&long129.token);
    assert_error(
        &get_config(&gw, &name129, &own129).await,
        401,
        INVALID_TOKEN,
    );
    assert_error(
        &post_config(&gw, &name129, &own129, ENABLE).await,
        401,
        INVALID_TOKEN,
    );
}
