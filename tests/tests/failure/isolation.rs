//! Item 8: tenant isolation on two pods. Accounts A and B own two instances each, one name
//! shared by both accounts. Every (token, instance) pair over every token source on both
//! pods: only the allowed pairs connect, the others get the documented refusal, and no
//! client ever receives a frame of another instance.

use serde_json::json;

use crate::common::{configure, envelope, Env, Instance};
use crate::{collect, connect_via, publish_end, publish_seqs, FRAME_WAIT};

/// Sequence numbers published to each instance.
const SEQS: std::ops::Range<u64> = 0..10;

#[tokio::test(flavor = "multi_thread")]
async fn every_token_instance_and_source_on_both_pods_connects_only_where_allowed_and_never_leaks()
{
    let env = Env::new().await;
    let a_account = env.account_token.clone();
    let (b_id, b_account) = env.create_account().await;
    let a_shared = env.create_instance("shared").await;
    let a_only = env.create_instance("a-only").await;
    let b_shared = env.create_instance_in(&b_id, "shared").await;
    let b_only = env.create_instance_in(&b_id, "b-only").await;
    let mut watcher = env.watcher().await;
    let publisher = env.publisher(&[]).await;
    let pods = [env.gateway(&[]).await, env.gateway(&[]).await];
    for (inst, owner) in [
        (&a_shared, &a_account),
        (&a_only, &a_account),
        (&b_shared, &b_account),
        (&b_only, &b_account),
    ] {
        configure(&pods[0], &inst.name, owner, json!({"enabled": true})).await;
        watcher.wait("config_changed", &inst.id).await;
    }
    let instances = [&a_shared, &a_only, &b_shared, &b_only];

    // Who may open which path: Some(instance) or the refusal.
    let expect = |token: &str, path: &str| -> Result<Instance, (u16, &'static str)> {
        let pick = |candidates: &[&Instance]| {
            candidates
                .iter()
                .find(|i| i.name == path)
                .map(|i| (*i).clone())
                .ok_or((404, "Instance not found"))
        };
        if token == a_account {
            return pick(&[&a_shared, &a_only]);
        }
        if token == b_account {
            return pick(&[&b_shared, &b_only]);
        }
        match instances.iter().find(|i| i.token == token) {
            Some(own) if own.name == path => Ok((*own).clone()),
            _ => Err((401, "Invalid token")),
        }
    };
    let tokens = [
        ("account A", a_account.clone()),
        ("account B", b_account.clone()),
        ("A/shared", a_shared.token.clone()),
        ("A/a-only", a_only.token.clone()),
        ("B/shared", b_shared.token.clone()),
        ("B/b-only", b_only.token.clone()),
        ("unknown", format!("no-such-{}", uuid::Uuid::new_v4())),
    ];
    let paths = ["shared", "a-only", "b-only", "nope"];
    let sources = ["header", "bearer", "query"];

    let mut collectors = Vec::new();
    let mut refusals = 0;
    for (p, pod) in pods.iter().enumerate() {
        for (label, token) in &tokens {
            for path in paths {
                for (s, source) in sources.iter().enumerate() {
                    let case = format!("pod {p}, {label} token by {source}, /ws/{path}");
                    match (connect_via(pod, path, token, s).await, expect(token, path)) {
                        (Ok(c), Ok(inst)) => collectors.push((case, inst, collect(c, FRAME_WAIT))),
                        (Err(e), Err((status, message))) => {
                            assert_eq!(e.status(), Some(status), "{case}: {e}");
                            assert_eq!(e.body(), Some(envelope(message).as_str()), "{case}");
                            refusals += 1;
                        }
                        (Ok(_), Err(want)) => panic!("{case}: connected, expected {want:?}"),
                        (Err(e), Ok(inst)) => {
                            panic!("{case}: refused ({e}), expected {}", inst.id)
                        }
                    }
                }
            }
        }
    }
    assert_eq!(collectors.len(), 2 * 3 * 8, "allowed pairs");
    assert_eq!(refusals, 2 * 3 * (7 * 4 - 8), "refused pairs");

    // Interleaved events for all four instances, then an end frame each.
    let all: Vec<Instance> = instances.iter().map(|i| (*i).clone()).collect();
    publish_seqs(&publisher, &all, SEQS, 10).await;
    publish_end(&publisher, &all).await;
    for (case, inst, handle) in collectors {
        let (_c, seen, error) = handle.await.unwrap();
        assert!(error.is_none(), "{case}: {error:?}");
        for s in &seen {
            assert!(
                s.instance == inst.name && s.token == inst.token,
                "{case}: received a frame of {} (token hash {})",
                s.instance,
                ryze_core::token::short_hash(&s.token)
            );
        }
        let seqs: Vec<u64> = seen.iter().map(|s| s.seq).collect();
        assert_eq!(seqs, SEQS.collect::<Vec<_>>(), "{case}");
    }
}
