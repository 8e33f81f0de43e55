//! `skald-client` against the real server: round trips, every error variant a
//! real response can produce, reconnecting subscriptions.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use serde_json::json;
use skald_client::{
    Client, Error, EventData, ExpectedRevision, ReadOptions, SubscribeOptions, SubscriptionMessage,
};

use crate::support::TestServer;

fn event(kind: &str, n: u64) -> EventData {
    EventData::json(kind, &json!({"n": n})).expect("serializable")
}

#[tokio::test]
async fn append_read_and_subscribe_round_trip() {
    let server = TestServer::start();
    let client = server.client();
    let first = client
        .append(
            "order-1",
            ExpectedRevision::NoStream,
            [event("OrderPlaced", 0), event("ItemAdded", 1)],
        )
        .await
        .expect("append");
    assert_eq!(
        (
            first.first_revision,
            first.last_revision,
            first.first_position
        ),
        (0, 1, 0)
    );
    let meta = event("OrderPaid", 2)
        .metadata(&json!({"user": "ann"}))
        .expect("metadata");
    client
        .append("order-1", ExpectedRevision::Exact(1), [meta])
        .await
        .expect("append");
    for i in 0..250 {
        client
            .append(
                &format!("other-{}", i % 5),
                ExpectedRevision::Any,
                [event("Noise", i)],
            )
            .await
            .expect("append");
    }

    let events: Vec<_> = client
        .read_stream("order-1", ReadOptions::default())
        .try_collect()
        .await
        .expect("read");
    assert_eq!(
        events
            .iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        ["OrderPlaced", "ItemAdded", "OrderPaid"]
    );
    #[derive(serde::Deserialize)]
    struct N {
        n: u64,
    }
    assert_eq!(events[1].data_as::<N>().expect("typed").n, 1);
    assert_eq!(events[2].metadata, Some(json!({"user": "ann"})));
    events[0].recorded_at_time().expect("timestamp");
    let newest: Vec<_> = client
        .read_stream("order-1", ReadOptions::default().backward().max_count(2))
        .try_collect()
        .await
        .expect("read");
    assert_eq!(
        newest.iter().map(|e| e.revision).collect::<Vec<_>>(),
        [2, 1]
    );

    // $all pages through on its own (page size 7 over 253 events).
    let all: Vec<_> = client
        .read_all(ReadOptions::default().page_size(7))
        .try_collect()
        .await
        .expect("all");
    assert_eq!(all.len(), 253);
    assert!(all.windows(2).all(|w| w[0].position + 1 == w[1].position));
    let filtered: Vec<_> = client
        .read_all(
            ReadOptions::default()
                .stream_prefix("other-3")
                .page_size(10),
        )
        .try_collect()
        .await
        .expect("filtered");
    assert_eq!(filtered.len(), 50);
    assert!(filtered.iter().all(|e| e.stream == "other-3"));

    let mut subscription = client.subscribe_all(SubscribeOptions::default().from(250));
    let mut seen = Vec::new();
    while let Some(message) = subscription.next().await {
        match message.expect("message") {
            SubscriptionMessage::Event(e) => seen.push(e.position),
            SubscriptionMessage::CaughtUp { position } => {
                assert_eq!(position, Some(252));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, [250, 251, 252]);
    let appended = client
        .append("order-2", ExpectedRevision::Any, [event("OrderPlaced", 9)])
        .await
        .expect("append");
    match subscription.next().await.expect("message").expect("ok") {
        SubscriptionMessage::Event(e) => assert_eq!(e.position, appended.first_position),
        other => panic!("unexpected {other:?}"),
    }
    let mut stream_sub = client.subscribe_stream("order-1", SubscribeOptions::default().from(1));
    let mut revisions = Vec::new();
    while let Some(Ok(SubscriptionMessage::Event(e))) = stream_sub.next().await {
        revisions.push(e.revision);
    }
    assert_eq!(revisions, [1, 2]);
}

#[tokio::test]
async fn metadata_changes_can_expect_the_version_they_replace() {
    let server = TestServer::start();
    let client = server.client();
    let unset = client
        .stream_metadata_versioned("meta")
        .await
        .expect("read");
    assert_eq!(unset.version, None);
    let wanted = skald_client::StreamMetadata {
        max_count: Some(3),
        ..Default::default()
    };
    let set = client
        .set_stream_metadata_expecting("meta", &wanted, ExpectedRevision::NoStream)
        .await
        .expect("never set");
    assert_eq!((set.version, set.max_count), (Some(0), Some(3)));
    let refused = client
        .set_stream_metadata_expecting("meta", &wanted, ExpectedRevision::NoStream)
        .await;
    assert!(
        matches!(
            refused,
            Err(Error::WrongExpectedRevision {
                expected: ExpectedRevision::NoStream,
                actual: Some(0)
            })
        ),
        "{refused:?}"
    );
    let next = client
        .set_stream_metadata_expecting("meta", &wanted, ExpectedRevision::Exact(0))
        .await
        .expect("at version 0");
    assert_eq!(next.version, Some(1));
    let read = client
        .stream_metadata_versioned("meta")
        .await
        .expect("read");
    assert_eq!((read.version, read.max_count), (Some(1), Some(3)));
}

#[tokio::test]
async fn a_repeated_append_with_the_same_ids_is_stored_once() {
    let server = TestServer::start();
    let client = server.client();
    let batch = [event("A", 1), event("B", 2)];
    let first = client
        .append("idem", ExpectedRevision::NoStream, batch.clone())
        .await
        .expect("append");
    let again = client
        .append("idem", ExpectedRevision::NoStream, batch)
        .await
        .expect("replay");
    assert_eq!(first, again);
    assert_eq!(client.info().await.expect("info").head_position, Some(1));
}

#[tokio::test]
async fn every_error_variant_comes_from_a_real_response() {
    let server =
        TestServer::start_with(&["--max-append-bytes", "2048", "--max-event-bytes", "1024"]);
    let client = server.client();
    let placed = event("OrderPlaced", 0);
    client
        .append("e", ExpectedRevision::NoStream, [placed.clone()])
        .await
        .expect("append");

    let err = client
        .append("e", ExpectedRevision::NoStream, [event("X", 1)])
        .await
        .expect_err("conflict");
    assert!(
        matches!(
            err,
            Error::WrongExpectedRevision {
                expected: ExpectedRevision::NoStream,
                actual: Some(0)
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    let err = client
        .append("elsewhere", ExpectedRevision::Any, [placed])
        .await
        .expect_err("dup");
    assert!(matches!(err, Error::DuplicateEventId { .. }), "{err:?}");
    let err = client
        .read_stream_page("missing", &ReadOptions::default())
        .await
        .expect_err("404");
    assert!(matches!(err, Error::StreamNotFound { .. }), "{err:?}");
    let big = EventData::json("Big", &"x".repeat(1500)).expect("json");
    let err = client
        .append("e", ExpectedRevision::Any, [big])
        .await
        .expect_err("too large");
    assert!(
        matches!(
            err,
            Error::TooLarge {
                limit: Some(1024),
                ..
            }
        ),
        "{err:?}"
    );
    let err = client
        .append("$reserved", ExpectedRevision::Any, [event("X", 1)])
        .await
        .expect_err("bad");
    assert!(
        matches!(&err, Error::BadRequest { code, .. } if code == "invalid_stream_name"),
        "{err:?}"
    );
    let err = client
        .read_all_page(&ReadOptions::default().page_size(0))
        .await
        .expect_err("bad");
    assert!(
        matches!(&err, Error::BadRequest { code, .. } if code == "invalid_query"),
        "{err:?}"
    );
    let err = client
        .wait_for_position(100, Duration::from_millis(300))
        .await
        .expect_err("timeout");
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    assert!(err.is_retryable());

    // Transport: nothing listens there (a port of ours that we closed).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let offline = Client::builder(format!("http://127.0.0.1:{port}"))
        .max_retries(1)
        .build()
        .expect("client");
    let err = offline.info().await.expect_err("offline");
    assert!(matches!(err, Error::Transport(_)), "{err:?}");
    assert!(err.is_retryable());
    assert!(matches!(
        Client::new("not a url"),
        Err(Error::InvalidUrl { .. })
    ));

    // Server (5xx): a corrupt record.
    let mut server = server;
    assert!(server.terminate().success());
    skald_server::storage::fault::flip_bit(server.data_dir(), 0).expect("corrupt");
    server.restart();
    let client = server.client();
    let err = client
        .read_stream_page("e", &ReadOptions::default())
        .await
        .expect_err("corrupt");
    assert!(
        matches!(&err, Error::Server { status: 500, code, .. } if code == "corrupt_event"),
        "{err:?}"
    );

    // StreamDeleted: a tombstoned stream.
    client
        .delete_stream("e", ExpectedRevision::Any, true)
        .await
        .expect("tombstone");
    let err = client
        .read_stream_page("e", &ReadOptions::default())
        .await
        .expect_err("410");
    assert!(matches!(err, Error::StreamDeleted { .. }), "{err:?}");
    let err = client
        .append("e", ExpectedRevision::Any, [event("X", 9)])
        .await
        .expect_err("410");
    assert!(matches!(err, Error::StreamDeleted { .. }), "{err:?}");

    // SubscriptionEnded: the server shuts down under a subscription; the error
    // is retryable, so the client reconnects by itself instead of surfacing it.
    // (Unauthorized and Forbidden: tests/it/auth.rs, against a server with tokens.)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_position_returns_once_the_head_reaches_it() {
    let server = TestServer::start();
    let client = server.client();
    let waiter = {
        let client = client.clone();
        tokio::spawn(async move { client.wait_for_position(2, Duration::from_secs(20)).await })
    };
    server.wait_for_gauge("long_polls_waiting", 1).await;
    client
        .append("w", ExpectedRevision::Any, [event("A", 0), event("B", 1)])
        .await
        .expect("append");
    assert!(!waiter.is_finished(), "returned before position 2 existed");
    client
        .append("w", ExpectedRevision::Any, [event("C", 2)])
        .await
        .expect("append");
    waiter.await.expect("task").expect("reached");
    client
        .wait_for_position(0, Duration::from_secs(1))
        .await
        .expect("already there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_survives_a_server_restart_without_gap_or_duplicate() {
    let mut server = TestServer::start();
    let client = server.client();
    for i in 0..50 {
        client
            .append("r", ExpectedRevision::Any, [event("Before", i)])
            .await
            .expect("append");
    }
    let mut subscription =
        client.subscribe_all(SubscribeOptions::default().heartbeat(Duration::from_millis(500)));
    let mut positions = Vec::new();
    while positions.len() < 30 {
        if let SubscriptionMessage::Event(e) =
            subscription.next().await.expect("message").expect("ok")
        {
            positions.push(e.position);
        }
    }
    server.kill_and_restart();
    for i in 0..50 {
        client
            .append("r", ExpectedRevision::Any, [event("After", i)])
            .await
            .expect("append after restart");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while positions.len() < 100 {
        let message = tokio::time::timeout_at(deadline, subscription.next())
            .await
            .expect("all events within 30 s")
            .expect("open")
            .expect("the client reconnects by itself");
        if let SubscriptionMessage::Event(e) = message {
            positions.push(e.position);
        }
    }
    assert_eq!(positions, (0..100).collect::<Vec<u64>>());
}
