//! Long-poll reads: held until a matching event commits or the wait ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::TestServer;

#[tokio::test]
async fn a_waiting_all_read_returns_the_event_appended_while_it_waits() {
    let server = Arc::new(TestServer::start());
    server.append("before", json!("any"), &["Old"]).await;
    let waiter = {
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            let started = Instant::now();
            let result = server.get("/all?from=1&wait_ms=20000").await;
            (result, started.elapsed())
        })
    };
    server.wait_for_gauge("long_polls_waiting", 1).await;
    assert!(
        !waiter.is_finished(),
        "the read answered before any event existed"
    );
    server.append("live", json!("any"), &["New"]).await;
    let ((status, page), elapsed) = waiter.await.expect("waiter");
    assert_eq!(status, 200);
    assert_eq!(
        page["events"].as_array().expect("events").len(),
        1,
        "{page}"
    );
    assert_eq!(page["events"][0]["stream"], "live");
    assert_eq!(page["next_position"], 2);
    assert!(
        elapsed < Duration::from_secs(10),
        "answered only after {elapsed:?}"
    );
}

#[tokio::test]
async fn a_waiting_read_returns_empty_after_its_wait() {
    let server = TestServer::start();
    server.append("s", json!("any"), &["A"]).await;
    let started = Instant::now();
    let (status, page) = server.get("/all?from=1&wait_ms=400").await;
    let elapsed = started.elapsed();
    assert_eq!(status, 200);
    assert_eq!(page["events"], json!([]));
    assert_eq!(page["next_position"], 1);
    assert!(
        elapsed >= Duration::from_millis(400),
        "returned after {elapsed:?}"
    );

    let started = Instant::now();
    let (status, page) = server.get("/streams/s?from=1&wait_ms=300").await;
    assert_eq!(status, 200);
    assert_eq!(page["events"], json!([]));
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn a_filtered_wait_ignores_events_that_do_not_match() {
    let server = Arc::new(TestServer::start());
    let waiter = {
        let server = Arc::clone(&server);
        tokio::spawn(async move { server.get("/all?stream_prefix=wanted-&wait_ms=20000").await })
    };
    server.wait_for_gauge("long_polls_waiting", 1).await;
    server.append("other-1", json!("any"), &["Noise"]).await;
    // The answer below holds only `wanted-1`: had `other-1` ended the wait, it
    // would be an empty page.
    server.append("wanted-1", json!("any"), &["Signal"]).await;
    let (status, page) = waiter.await.expect("waiter");
    assert_eq!(status, 200);
    let events = page["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "{page}");
    assert_eq!(events[0]["stream"], "wanted-1");
    assert_eq!(page["next_position"], 2);
}

#[tokio::test]
async fn a_stream_wait_sees_the_stream_being_created_and_extended() {
    let server = Arc::new(TestServer::start());
    let creation = {
        let server = Arc::clone(&server);
        tokio::spawn(async move { server.get("/streams/later?wait_ms=20000").await })
    };
    server.wait_for_gauge("long_polls_waiting", 1).await;
    server.append("unrelated", json!("any"), &["X"]).await;
    // Had `unrelated` ended the wait, the answer would be a 404.
    server.append("later", json!("no_stream"), &["First"]).await;
    let (status, page) = creation.await.expect("waiter");
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["events"][0]["type"], "First");

    let next = {
        let server = Arc::clone(&server);
        tokio::spawn(async move { server.get("/streams/later?from=1&wait_ms=20000").await })
    };
    server.wait_for_gauge("long_polls_waiting", 1).await;
    server.append("later", json!(0), &["Second"]).await;
    let (_, page) = next.await.expect("waiter");
    assert_eq!(page["events"][0]["revision"], 1);
    // A stream that never appears is still 404 after the wait.
    let (status, _) = server.get("/streams/never?wait_ms=200").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_waiters_all_receive_one_append() {
    const WAITERS: usize = 500;
    let server = Arc::new(TestServer::start());
    let mut waiters = Vec::new();
    for _ in 0..WAITERS {
        let server = Arc::clone(&server);
        waiters.push(tokio::spawn(async move {
            server.get("/all?from=0&wait_ms=30000").await
        }));
    }
    server
        .wait_for_gauge("long_polls_waiting", WAITERS as u64)
        .await;
    assert!(
        waiters.iter().all(|w| !w.is_finished()),
        "a waiter answered before the append"
    );
    server.append("fanout", json!("any"), &["Ping"]).await;
    for waiter in waiters {
        let (status, page) = waiter.await.expect("waiter");
        assert_eq!(status, 200);
        assert_eq!(page["events"][0]["stream"], "fanout");
    }
}

#[tokio::test]
async fn shutdown_ends_long_polls_and_exits_zero() {
    let mut server = TestServer::start();
    let url = server.url("/all?wait_ms=60000");
    let http = server.http.clone();
    let waiter =
        tokio::spawn(async move { http.get(url).send().await.map(|r| r.status().as_u16()) });
    server.wait_for_gauge("long_polls_waiting", 1).await;
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .expect("terminate");
    assert!(status.success(), "exit status {status:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(waiter.await.expect("waiter").expect("response"), 200);
}

/// Subscriptions and long-polls are capped (`--max-subscriptions`,
/// `--max-long-polls`): one more is a 503 with `Retry-After` and a JSON error,
/// and a slot frees when its holder ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_and_long_polls_beyond_their_caps_get_503_with_retry_after() {
    let server = Arc::new(TestServer::start_with(&[
        "--max-subscriptions",
        "2",
        "--max-long-polls",
        "1",
    ]));
    let first = server.subscribe("/subscriptions/all", &[]).await;
    let _second = server.subscribe("/subscriptions/streams/s", &[]).await;
    server.wait_for_gauge("live_subscriptions", 2).await;
    let refused = server
        .http
        .get(server.url("/subscriptions/all"))
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let (status, body) = crate::support::status_json(refused).await;
    crate::support::assert_error(status, &body, 503, "too_many_subscriptions");
    drop(first);
    // The slot frees once the server sees the connection go.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = server
            .http
            .get(server.url("/subscriptions/all"))
            .send()
            .await
            .expect("request");
        if response.status() == 200 {
            break;
        }
        assert_eq!(response.status(), 503);
        assert!(Instant::now() < deadline, "the slot never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let waiter = {
        let server = Arc::clone(&server);
        tokio::spawn(async move { server.get("/all?from=0&wait_ms=20000").await })
    };
    server.wait_for_gauge("long_polls_waiting", 1).await;
    let (status, body) = server.get("/streams/s?wait_ms=20000").await;
    crate::support::assert_error(status, &body, 503, "too_many_long_polls");
    // Reads without a wait are not capped.
    assert_eq!(server.get("/all").await.0, 200);
    server.append("s", json!("any"), &["Wake"]).await;
    assert_eq!(waiter.await.expect("waiter").0, 200);
    let (status, _) = server.get("/streams/s?wait_ms=100").await;
    assert_eq!(status, 200, "the long-poll slot freed");
}
