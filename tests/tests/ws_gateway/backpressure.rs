//! Bounded queues and bursts (D13, D28, D35): slow clients close alone, readers that keep up survive.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn reader_at_loopback_speed_survives_1000_frames_from_one_ingest_request() {
    // Default queue (256 frames): a burst of 1000 is not slowness (D35).
    let sys = System::start("sales", json!({"enabled": true}), 1, &[]).await;
    let mut c = sys.connect(0).await;
    let pad = "p".repeat(1024);
    let data = |i: usize| format!(r#"{{"seq":{i},"pad":"{pad}"}}"#);
    let items: Vec<String> = (0..1000)
        .map(|i| sys.item("message.exchange", &data(i)))
        .collect();
    publish_expect(&sys.publisher, &batch(&items), 1000, 0, 0, 0).await;
    for i in 0..1000 {
        let got = c
            .next_text(WAIT)
            .await
            .unwrap_or_else(|e| panic!("frame {i}: {e:#}"));
        assert_eq!(got, sys.frame("message.exchange", &data(i)), "frame {i}");
    }
    let sentinel = r#"{"sentinel":1}"#;
    sys.deliver_one(&mut c, "label.update", sentinel).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_client_is_closed_1008_slow_consumer_and_a_fast_client_receives_every_event() {
    const EVENTS: usize = 200;
    const PER_REQUEST: usize = 50;
    let sys = System::start(
        "sales",
        json!({"enabled": true}),
        1,
        &[
            ("WS_SEND_QUEUE", "32".into()),
            ("WS_SEND_QUEUE_BYTES", "2MiB".into()),
        ],
    )
    .await;
    // The slow client never reads; its small receive buffer makes the server's socket back up.
    let mut slow = RawWs::connect(
        sys.gw().addr(),
        &format!("/ws/{}", segment(&sys.inst.name)),
        &sys.env.account_token,
        Some(16 * 1024),
    )
    .await;
    let mut fast = sys.connect(0).await;

    let pad = "f".repeat(64 * 1024);
    let data = |i: usize| format!(r#"{{"seq":{i},"pad":"{pad}"}}"#);
    let expected: Vec<String> = (0..EVENTS)
        .map(|i| sys.frame("message.exchange", &data(i)))
        .collect();
    let reader = tokio::spawn(async move {
        for (i, want) in expected.iter().enumerate() {
            let got = fast
                .next_text(WAIT)
                .await
                .unwrap_or_else(|e| panic!("fast client, frame {i}: {e:#}"));
            assert!(got == *want, "fast client: frame {i} differs");
        }
        fast
    });
    for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(PER_REQUEST) {
        let items: Vec<String> = chunk
            .iter()
            .map(|i| sys.item("message.exchange", &data(*i)))
            .collect();
        publish_expect(&sys.publisher, &batch(&items), chunk.len(), 0, 0, 0).await;
    }
    let mut fast = reader.await.unwrap();

    let end = slow.read_until_close(WAIT).await.unwrap();
    assert_eq!(
        end.close,
        Some((1008, "slow consumer".to_owned())),
        "after {} frames",
        end.texts.len()
    );
    assert!(end.texts.len() < EVENTS);
    // What the slow client got before the close is an in-order prefix, without gaps.
    for (i, text) in end.texts.iter().enumerate() {
        assert!(
            *text == sys.frame("message.exchange", &data(i)),
            "slow client: frame {i} differs"
        );
    }

    let sentinel = r#"{"after":"slow consumer"}"#;
    sys.deliver_one(&mut fast, "call.update", sentinel).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn frames_larger_than_the_byte_cap_reach_a_reader_one_at_a_time() {
    // D28: a frame is accepted whenever the queue is empty, whatever its size.
    let sys = System::start(
        "sales",
        json!({"enabled": true}),
        1,
        &[("WS_SEND_QUEUE_BYTES", "64KiB".into())],
    )
    .await;
    let mut c = sys.connect(0).await;
    let pad = "b".repeat(300 * 1024);
    let data = |i: usize| format!(r#"{{"seq":{i},"pad":"{pad}"}}"#);
    let items: Vec<String> = (0..5)
        .map(|i| sys.item("message.exchange", &data(i)))
        .collect();
    publish_expect(&sys.publisher, &batch(&items), 5, 0, 0, 0).await;
    for i in 0..5 {
        let got = c.next_text(WAIT).await.unwrap();
        assert!(
            got == sys.frame("message.exchange", &data(i)),
            "frame {i} differs"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_client_of_one_instance_never_delays_another_instance() {
    // A long grace keeps the stalled client's fan-out waiting; another instance's events
    // must not queue behind it.
    let mut sys = System::start(
        "stalled",
        json!({"enabled": true}),
        1,
        &[
            ("WS_SLOW_CONSUMER_GRACE", "60s".into()),
            ("WS_SEND_QUEUE", "4".into()),
            ("WS_SEND_QUEUE_BYTES", "256KiB".into()),
        ],
    )
    .await;
    let other = sys.env.create_instance("other").await;
    configure(
        sys.gw(),
        "other",
        &sys.env.account_token,
        json!({"enabled": true}),
    )
    .await;
    sys.watcher.wait("config_changed", &other.id).await;
    let _stalled = RawWs::connect(
        sys.gw().addr(),
        "/ws/stalled",
        &sys.inst.token,
        Some(16 * 1024),
    )
    .await;
    let mut c = connect(sys.gw(), "other", &other.token).await;

    let pad = "s".repeat(64 * 1024);
    for chunk in 0..4 {
        let items: Vec<String> = (0..50)
            .map(|i| {
                sys.item(
                    "message.exchange",
                    &format!(r#"{{"seq":{},"pad":"{pad}"}}"#, chunk * 50 + i),
                )
            })
            .collect();
        publish_expect(&sys.publisher, &batch(&items), 50, 0, 0, 0).await;
    }
    let data = r#"{"unaffected":true}"#;
    publish_expect(
        &sys.publisher,
        &common::item(&other.id, "call.update", data),
        1,
        0,
        0,
        0,
    )
    .await;
    assert_eq!(
        c.next_text(WAIT).await.unwrap(),
        common::frame("call.update", data, &other),
        "an event of another instance waited behind a stalled client"
    );
}
