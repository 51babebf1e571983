//! Property tests of the POST body parser (`routes::config_api::parse_body`, SPEC D4, D21),
//! through HTTP: generated bodies against a running gateway. The gateway's pure parsers (token
//! extraction, instance names, origins, handshakes) are property-tested inside the gateway
//! crate, next to their code (`gateway/src/{auth,origin,routes}/properties.rs`).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use ryze_tests::fixtures as common;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::json;

// ---------------------------------------------------------------------------------------
// POST body (D4, D21), through HTTP

const SIX: [&str; 6] = common::EVENTS;

/// One top-level member as generated: its JSON text, and what it means for validity.
#[derive(Debug, Clone)]
enum Enabled {
    Bool(bool),
    Other(&'static str),
}

#[derive(Debug, Clone)]
enum Events {
    Missing,
    Null,
    List(Vec<EventItem>),
    Other(&'static str),
}

#[derive(Debug, Clone)]
enum EventItem {
    Known(usize),
    Bad(&'static str),
}

#[derive(Debug, Clone)]
enum Media {
    Missing,
    Null,
    Bool(bool),
    Other(&'static str),
}

#[derive(Debug, Clone)]
struct Body {
    enabled: Option<Enabled>,
    events: Events,
    media: Media,
    unknown: Vec<(String, &'static str)>,
    duplicate: Option<usize>,
    order: Vec<usize>,
}

fn body() -> impl Strategy<Value = Body> {
    let enabled = proptest::option::weighted(
        0.9,
        prop_oneof![
            4 => any::<bool>().prop_map(Enabled::Bool),
            1 => prop::sample::select(vec!["null", "\"true\"", "1", "[]", "{}"]).prop_map(Enabled::Other),
        ],
    );
    let item = prop_oneof![
        4 => (0usize..6).prop_map(EventItem::Known),
        1 => prop::sample::select(vec![
            "\"message.unknown\"", "\"\"", "\"Message.Status\"", "\" call.update\"", "1", "null",
            "true", "[\"call.update\"]",
        ])
        .prop_map(EventItem::Bad),
    ];
    let events = prop_oneof![
        1 => Just(Events::Missing),
        1 => Just(Events::Null),
        6 => prop::collection::vec(item, 0..8).prop_map(Events::List),
        1 => prop::sample::select(vec!["\"message.status\"", "{}", "1", "true"]).prop_map(Events::Other),
    ];
    let media = prop_oneof![
        1 => Just(Media::Missing),
        1 => Just(Media::Null),
        4 => any::<bool>().prop_map(Media::Bool),
        1 => prop::sample::select(vec!["0", "\"false\"", "[]"]).prop_map(Media::Other),
    ];
    let unknown = prop::collection::btree_map(
        "[a-z]{1,8}".prop_filter("unknown", |k| {
            !["enabled", "events", "mediaBase64"].contains(&k.as_str())
        }),
        prop::sample::select(vec![
            "1",
            "null",
            "\"x\"",
            "[1,{\"a\":[]}]",
            "{\"enabled\":false}",
        ]),
        0..3,
    )
    .prop_map(|m| m.into_iter().collect::<Vec<_>>());
    (
        enabled,
        events,
        media,
        unknown,
        proptest::option::weighted(0.1, 0usize..3),
        Just((0..8).collect::<Vec<usize>>()).prop_shuffle(),
    )
        .prop_map(|(enabled, events, media, unknown, duplicate, order)| Body {
            enabled,
            events,
            media,
            unknown,
            duplicate,
            order,
        })
}

impl Body {
    fn json(&self) -> String {
        let mut members: Vec<String> = Vec::new();
        match &self.enabled {
            Some(Enabled::Bool(b)) => members.push(format!(r#""enabled":{b}"#)),
            Some(Enabled::Other(v)) => members.push(format!(r#""enabled":{v}"#)),
            None => {}
        }
        match &self.events {
            Events::Missing => {}
            Events::Null => members.push(r#""events":null"#.to_owned()),
            Events::List(items) => {
                let items: Vec<String> = items
                    .iter()
                    .map(|i| match i {
                        EventItem::Known(k) => format!("\"{}\"", SIX[*k]),
                        EventItem::Bad(v) => (*v).to_owned(),
                    })
                    .collect();
                members.push(format!(r#""events":[{}]"#, items.join(",")));
            }
            Events::Other(v) => members.push(format!(r#""events":{v}"#)),
        }
        match &self.media {
            Media::Missing => {}
            Media::Null => members.push(r#""mediaBase64":null"#.to_owned()),
            Media::Bool(b) => members.push(format!(r#""mediaBase64":{b}"#)),
            Media::Other(v) => members.push(format!(r#""mediaBase64":{v}"#)),
        }
        for (k, v) in &self.unknown {
            members.push(format!(r#""{k}":{v}"#));
        }
        if let Some(d) = self.duplicate {
            let key = ["enabled", "events", "mediaBase64"][d];
            members.push(format!(r#""{key}":null"#));
        }
        // A permutation of the members (keys may come in any order).
        let mut ordered: Vec<(usize, String)> = members
            .into_iter()
            .enumerate()
            .map(|(i, m)| (self.order.iter().position(|o| *o == i).unwrap_or(i), m))
            .collect();
        ordered.sort();
        let members: Vec<String> = ordered.into_iter().map(|(_, m)| m).collect();
        format!("{{{}}}", members.join(","))
    }

    /// The persisted config per D4/D21, or `None` for 400 `Invalid request body`.
    fn expected(&self) -> Option<serde_json::Value> {
        let Some(Enabled::Bool(enabled)) = self.enabled else {
            return None;
        };
        let events: Vec<&str> = match &self.events {
            Events::Missing | Events::Null => Vec::new(),
            Events::Other(_) => return None,
            Events::List(items) => {
                let mut out: Vec<&str> = Vec::new();
                for i in items {
                    match i {
                        EventItem::Known(k) if !out.contains(&SIX[*k]) => out.push(SIX[*k]),
                        EventItem::Known(_) => {}
                        EventItem::Bad(_) => return None,
                    }
                }
                out
            }
        };
        let media = match self.media {
            Media::Missing | Media::Null => false,
            Media::Bool(b) => b,
            Media::Other(_) => return None,
        };
        // Whichever key is repeated, and in whatever order: 400 (D21).
        let repeated = match self.duplicate {
            Some(0) => self.enabled.is_some(),
            Some(1) => !matches!(self.events, Events::Missing),
            Some(_) => !matches!(self.media, Media::Missing),
            None => false,
        };
        if repeated {
            return None;
        }
        Some(if enabled {
            json!({"enabled": true, "events": events, "mediaBase64": media})
        } else {
            json!({"enabled": false, "events": [], "mediaBase64": false})
        })
    }
}

#[test]
fn post_config_bodies_are_validated_and_normalised_per_d4_and_d21() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (env, gw) = rt.block_on(async {
        let env = common::Env::new().await;
        env.create_instance("sales").await;
        let gw = env
            .gateway(&[("RATE_LIMIT_PER_MINUTE", "1000000".into())])
            .await;
        (env, gw)
    });
    let post = |body: Vec<u8>| {
        rt.block_on(async {
            let resp = ryze_tests::http()
                .post(gw.url("/api/events/websocket/sales"))
                .header("token", &env.account_token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap())
        })
    };
    let invalid = common::envelope("Invalid request body");

    let mut runner = TestRunner::new(Config::with_cases(200));
    runner
        .run(&body(), |b| {
            let text = b.json();
            let (status, reply) = post(text.clone().into_bytes());
            match b.expected() {
                Some(websocket) => {
                    prop_assert_eq!(status, 200, "{} -> {}", text, reply);
                    let want = format!(
                        r#"{{"success":true,"message":"WebSocket configured successfully","websocket":{websocket}}}"#
                    );
                    prop_assert_eq!(reply, want, "{}", text);
                }
                None => {
                    prop_assert_eq!((status, reply.as_str()), (400, invalid.as_str()), "{}", text);
                }
            }
            Ok(())
        })
        .unwrap();

    // Any bytes at all: 200 or 400 with the envelope, never anything else.
    let mut runner = TestRunner::new(Config::with_cases(150));
    let junk = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        any::<String>().prop_map(String::into_bytes),
        "\\{\"enabled\":(true|false)[,}\\]\"a-z0-9:\\[ ]{0,30}".prop_map(String::into_bytes),
    ];
    runner
        .run(&junk, |bytes| {
            let (status, reply) = post(bytes.clone());
            prop_assert!(
                status == 200 || (status == 400 && reply == invalid),
                "{:?} -> {} {}",
                String::from_utf8_lossy(&bytes),
                status,
                reply
            );
            Ok(())
        })
        .unwrap();
    drop(gw);
}
