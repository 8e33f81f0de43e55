//! Pushed catch-up subscriptions over NDJSON and SSE.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{LineReader, TestServer};

const T: Duration = Duration::from_secs(30);

/// Appends `n` events to `stream` in batches of up to 1000.
async fn fill(server: &TestServer, stream: &str, n: usize) {
    let mut left = n;
    while left > 0 {
        let k = left.min(1000);
        let events: Vec<Value> = (0..k)
            .map(|i| json!({"type": "Fill", "data": {"i": i}}))
            .collect();
        let (status, body) = server
            .post(&format!("/streams/{stream}"), &json!({"events": events}))
            .await;
        assert_eq!(status, 201, "{body}");
        left -= k;
    }
}

/// Reads lines until `want` events arrived; returns (events, every other line).
async fn read_events(reader: &mut LineReader, want: usize) -> (Vec<Value>, Vec<Value>) {
    let (mut events, mut others) = (Vec::new(), Vec::new());
    while events.len() < want {
        let line = reader
            .next_json(T)
            .await
            .expect("the subscription ended early");
        if line["type"] == "event" {
            events.push(line["event"].clone());
        } else {
            others.push(line);
        }
    }
    (events, others)
}

fn assert_positions(events: &[Value], from: u64) {
    for (i, event) in events.iter().enumerate() {
        assert_eq!(
            event["position"],
            from + i as u64,
            "event {i} out of order or missing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn catch_up_then_live_with_concurrent_writers() {
    let server = Arc::new(TestServer::start());
    fill(&server, "history", 10_000).await;
    let mut reader = server.subscribe("/subscriptions/all", &[]).await;
    let mut writers = Vec::new();
    for w in 0..8 {
        let server = Arc::clone(&server);
        writers.push(tokio::spawn(async move {
            for i in 0..100 {
                let (status, _) = server
                    .append(&format!("live-{w}"), json!("any"), &["Live"])
                    .await;
                assert_eq!(status, 201, "writer {w} append {i}");
            }
        }));
    }
    let (events, others) = read_events(&mut reader, 10_800).await;
    for writer in writers {
        writer.await.expect("writer");
    }
    assert_positions(&events, 0);
    let ids: HashSet<&str> = events
        .iter()
        .map(|e| e["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids.len(), events.len(), "an event was delivered twice");
    // Everything is delivered; if caught_up was not yet sent, it is next.
    let mut caught_up: Vec<Value> = others
        .into_iter()
        .filter(|l| l["type"] == "caught_up")
        .collect();
    if caught_up.is_empty() {
        let line = reader.next_json(T).await.expect("line");
        assert_eq!(line["type"], "caught_up", "{line}");
        caught_up.push(line);
    }
    assert_eq!(caught_up.len(), 1, "{caught_up:?}");
    let at = caught_up[0]["position"].as_u64().expect("position");
    assert!(at >= 9_999, "caught up at {at}, before the history's end");
    // Nothing else: no duplicate, no second caught_up.
    let appended = server.append("after", json!("any"), &["After"]).await.1;
    let line = reader.next_json(T).await.expect("line");
    assert_eq!(
        line["event"]["position"], appended["first_position"],
        "{line}"
    );
}

/// Writes 200 appends of 100 events of ~2 KB (40 MB) to `stream`. Appends of
/// 200 KB rather than 2 MB: larger request bodies left the allocator holding
/// ±15 MiB more or less from run to run, which drowned the difference measured.
async fn burst(server: Arc<TestServer>) {
    for i in 0..200 {
        let pad = "x".repeat(2_000);
        let events: Vec<Value> = (0..100)
            .map(|j| json!({"type": "Burst", "data": {"i": i, "j": j, "pad": pad}}))
            .collect();
        let (status, _) = server
            .post("/streams/burst", &json!({"events": events}))
            .await;
        assert_eq!(status, 201);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_reader_is_not_dropped_and_misses_nothing() {
    // Baseline: what the same burst costs a server with no subscriber (memtables,
    // block cache), so that the comparison below isolates subscription buffering.
    let baseline = Arc::new(TestServer::start());
    fill(&baseline, "warm", 10).await;
    let before = baseline.rss_kib();
    burst(Arc::clone(&baseline)).await;
    let baseline_growth = baseline.rss_kib().saturating_sub(before);
    drop(baseline);

    let server = Arc::new(TestServer::start());
    fill(&server, "warm", 10).await;
    let mut reader = server.subscribe("/subscriptions/all", &[]).await;
    let (first, _) = read_events(&mut reader, 10).await;
    assert_positions(&first, 0);
    let rss_before = server.rss_kib();
    let writer = tokio::spawn(burst(Arc::clone(&server)));
    // One line a second for a while, during the burst.
    let mut slow = Vec::new();
    for _ in 0..4 {
        let line = reader.next_json(T).await.expect("line");
        if line["type"] == "event" {
            slow.push(line["event"].clone());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    writer.await.expect("burst");
    let growth = server.rss_kib().saturating_sub(rss_before);
    let (rest, _) = read_events(&mut reader, 20_000 - slow.len()).await;
    slow.extend(rest);
    assert_positions(&slow, 10);
    eprintln!(
        "slow reader: server RSS grew {} KiB during a 40 MB burst behind a stalled subscriber; {} KiB without a subscriber",
        growth, baseline_growth
    );
    // Had the server queued the ~20,000 undelivered events for the subscriber, it
    // would hold 40 MB or more on top of the baseline.
    let extra_mib = growth.saturating_sub(baseline_growth) / 1024;
    assert!(
        extra_mib < 24,
        "a stalled subscriber cost {extra_mib} MiB of server memory"
    );
}

#[tokio::test]
async fn filtered_subscriptions_get_matches_and_checkpoints() {
    let server = TestServer::start();
    fill(&server, "noise", 3000).await; // positions 0..=2999
    server.append("wanted-1", json!("any"), &["Match"]).await; // 3000
    let mut reader = server
        .subscribe(
            "/subscriptions/all?stream_prefix=wanted-&checkpoint_every=1000",
            &[],
        )
        .await;
    let mut lines = Vec::new();
    while lines
        .last()
        .is_none_or(|l: &Value| l["type"] != "caught_up")
    {
        lines.push(reader.next_json(T).await.expect("line"));
    }
    let kinds: Vec<(String, u64)> = lines
        .iter()
        .map(|l| {
            let at = l["position"]
                .as_u64()
                .or(l["event"]["position"].as_u64())
                .expect("position");
            (l["type"].as_str().expect("type").to_owned(), at)
        })
        .collect();
    let want: Vec<(String, u64)> = [
        ("checkpoint", 999),
        ("checkpoint", 1999),
        ("checkpoint", 2999),
        ("event", 3000),
        ("caught_up", 3000),
    ]
    .iter()
    .map(|(k, p)| (k.to_string(), *p))
    .collect();
    assert_eq!(kinds, want);

    // Live, filtered-out events: a checkpoint arrives within a few seconds even
    // though fewer than checkpoint_every passed.
    server
        .append("noise", json!("any"), &["Noise", "Noise"])
        .await; // 3001, 3002
    let started = Instant::now();
    let line = reader
        .next_json(Duration::from_secs(10))
        .await
        .expect("line");
    assert_eq!(line, json!({"type": "checkpoint", "position": 3002}));
    assert!(started.elapsed() < Duration::from_secs(8));
    server.append("wanted-2", json!("any"), &["Match"]).await;
    let line = reader.next_json(T).await.expect("line");
    assert_eq!(
        (line["type"].clone(), line["event"]["stream"].clone()),
        (json!("event"), json!("wanted-2"))
    );

    let mut by_type = server
        .subscribe("/subscriptions/all?type_prefix=Mat", &[])
        .await;
    let (events, _) = read_events(&mut by_type, 2).await;
    assert_eq!(events[0]["position"], 3000);
    assert_eq!(events[1]["stream"], "wanted-2");
}

#[tokio::test]
async fn an_idle_subscription_gets_heartbeats() {
    let server = TestServer::start();
    let mut reader = server
        .subscribe("/subscriptions/all?heartbeat_ms=200", &[])
        .await;
    assert_eq!(
        reader.next_json(T).await,
        Some(json!({"type": "caught_up", "position": null}))
    );
    let started = Instant::now();
    for _ in 0..3 {
        assert_eq!(
            reader.next_json(Duration::from_secs(5)).await,
            Some(json!({"type": "heartbeat"}))
        );
    }
    assert!(
        started.elapsed() >= Duration::from_millis(550),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn sse_resumes_after_last_event_id() {
    let server = TestServer::start();
    fill(&server, "sse", 10).await;
    let accept = ("accept", "text/event-stream");
    let mut reader = server.subscribe("/subscriptions/all", &[accept]).await;
    for expected in 0..5 {
        let (event, id, data) = reader.next_sse(T).await.expect("event");
        assert_eq!((event.as_str(), id), ("event", Some(expected)));
        assert_eq!(data["event"]["position"], expected);
    }
    drop(reader);
    let mut resumed = server
        .subscribe("/subscriptions/all", &[accept, ("last-event-id", "4")])
        .await;
    let mut ids = Vec::new();
    loop {
        let (event, id, data) = resumed.next_sse(T).await.expect("event");
        if event == "caught_up" {
            assert_eq!(data["position"], 9);
            break;
        }
        ids.push(id.expect("events carry ids"));
    }
    assert_eq!(ids, [5, 6, 7, 8, 9]);
    let (status, body) = crate::support::status_json(
        server
            .http
            .get(server.url("/subscriptions/all"))
            .header("accept", "text/event-stream")
            .header("last-event-id", "x")
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(
        (status, body["error"].clone()),
        (400, json!("invalid_header"))
    );
}

/// Payloads are kept as sent; pretty-printed ones still arrive whole on one
/// NDJSON line and in one SSE `data:` field.
#[tokio::test]
async fn pretty_printed_events_arrive_whole_over_ndjson_and_sse() {
    let server = TestServer::start();
    let data = json!({"order": {"lines": [1, 2], "note": "a\nb"}});
    let metadata = json!({"by": ["me"]});
    let body = format!(
        "{{\"events\": [{{\"type\": \"Pretty\",\r\n \"data\": {},\n \"metadata\": {}}}]}}",
        serde_json::to_string_pretty(&data).expect("pretty"),
        serde_json::to_string_pretty(&metadata)
            .expect("pretty")
            .replace('\n', "\r\n"),
    );
    let (status, answer) = server.post_raw("/streams/pretty-1", body).await;
    assert_eq!(status, 201, "{answer}");
    for path in ["/subscriptions/all", "/subscriptions/streams/pretty-1"] {
        let mut reader = server.subscribe(path, &[]).await;
        let (events, _) = read_events(&mut reader, 1).await;
        assert_eq!(
            (&events[0]["data"], &events[0]["metadata"]),
            (&data, &metadata),
            "{path}"
        );
        let accept = ("accept", "text/event-stream");
        let mut reader = server.subscribe(path, &[accept]).await;
        let (event, id, line) = reader.next_sse(T).await.expect("event");
        assert_eq!((event.as_str(), id), ("event", Some(0)), "{path}");
        assert_eq!(
            (&line["event"]["data"], &line["event"]["metadata"]),
            (&data, &metadata),
            "{path}"
        );
    }
}

#[tokio::test]
async fn from_end_delivers_only_new_events() {
    let server = TestServer::start();
    fill(&server, "old", 5).await;
    let mut reader = server.subscribe("/subscriptions/all?from=end", &[]).await;
    assert_eq!(
        reader.next_json(T).await,
        Some(json!({"type": "caught_up", "position": 4}))
    );
    server.append("new", json!("any"), &["New"]).await;
    let line = reader.next_json(T).await.expect("line");
    assert_eq!(
        (
            line["event"]["position"].clone(),
            line["event"]["stream"].clone()
        ),
        (json!(5), json!("new"))
    );

    let mut stream_reader = server
        .subscribe("/subscriptions/streams/old?from=end", &[])
        .await;
    assert_eq!(
        stream_reader.next_json(T).await,
        Some(json!({"type": "caught_up", "revision": 4}))
    );
    server.append("old", json!(4), &["Later"]).await;
    let line = stream_reader.next_json(T).await.expect("line");
    assert_eq!(line["event"]["revision"], 5);
}

#[tokio::test]
async fn a_stream_subscription_catches_up_and_follows_one_stream() {
    let server = TestServer::start();
    let mut waiting = server.subscribe("/subscriptions/streams/s-1", &[]).await;
    assert_eq!(
        waiting.next_json(T).await,
        Some(json!({"type": "caught_up", "revision": null}))
    );
    server.append("s-1", json!("no_stream"), &["A", "B"]).await;
    server.append("s-2", json!("any"), &["Other"]).await;
    server.append("s-1", json!(1), &["C"]).await;
    let (events, others) = read_events(&mut waiting, 3).await;
    assert!(others.is_empty(), "{others:?}");
    let revisions: Vec<u64> = events
        .iter()
        .map(|e| e["revision"].as_u64().expect("rev"))
        .collect();
    assert_eq!(revisions, [0, 1, 2]);
    assert!(events.iter().all(|e| e["stream"] == "s-1"));

    let mut from_one = server
        .subscribe("/subscriptions/streams/s-1?from=1", &[])
        .await;
    let (events, _) = read_events(&mut from_one, 2).await;
    assert_eq!(events[0]["revision"], 1);
    assert_eq!(
        from_one.next_json(T).await,
        Some(json!({"type": "caught_up", "revision": 2}))
    );
    let mut sse = server
        .subscribe(
            "/subscriptions/streams/s-1",
            &[("accept", "text/event-stream"), ("last-event-id", "1")],
        )
        .await;
    let (_, id, _) = sse.next_sse(T).await.expect("event");
    assert_eq!(
        id,
        Some(2),
        "stream subscriptions count SSE ids in revisions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_subscriptions_all_receive_one_append() {
    const SUBSCRIBERS: usize = 1000;
    let server = TestServer::start();
    let mut readers = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let mut reader = server.subscribe("/subscriptions/all", &[]).await;
        assert_eq!(
            reader.next_json(T).await.expect("line")["type"],
            "caught_up"
        );
        readers.push(reader);
    }
    server.append("fanout", json!("any"), &["Ping"]).await;
    let mut received = 0;
    for reader in &mut readers {
        let line = reader.next_json(T).await.expect("line");
        assert_eq!(line["event"]["stream"], "fanout", "{line}");
        received += 1;
    }
    assert_eq!(received, SUBSCRIBERS);
}

#[tokio::test]
async fn shutdown_ends_subscriptions_with_an_error_line() {
    let mut server = TestServer::start();
    let mut reader = server.subscribe("/subscriptions/all", &[]).await;
    assert_eq!(
        reader.next_json(T).await.expect("line")["type"],
        "caught_up"
    );
    let status = tokio::task::spawn_blocking(move || {
        let status = server.terminate();
        (status, server)
    });
    let line = reader.next_json(T).await.expect("line");
    assert_eq!(
        (line["type"].clone(), line["error"].clone()),
        (json!("error"), json!("shutting_down"))
    );
    assert_eq!(
        reader.next_json(T).await,
        None,
        "the body ends after the error line"
    );
    let (status, _server) = status.await.expect("terminate");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn bad_subscription_parameters_are_400() {
    let server = TestServer::start();
    for path in [
        "/subscriptions/all?from=soon",
        "/subscriptions/all?heartbeat_ms=5",
        "/subscriptions/all?checkpoint_every=0",
        "/subscriptions/all?colour=red",
        "/subscriptions/streams/%24all",
        "/subscriptions/streams/s?checkpoint_every=5",
    ] {
        let (status, body) = server.get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_subscription_misses_nothing_among_commits_to_other_streams() {
    let server = Arc::new(TestServer::start());
    // No heartbeats: a skipped read must not be rescued by a heartbeat's wake-up.
    let mut reader = server
        .subscribe("/subscriptions/streams/target?heartbeat_ms=300000", &[])
        .await;
    assert_eq!(
        reader.next_json(T).await.expect("line")["type"],
        "caught_up"
    );
    let mut writers = Vec::new();
    for w in 0..4 {
        let server = Arc::clone(&server);
        writers.push(tokio::spawn(async move {
            for _ in 0..150 {
                server
                    .append(&format!("noise-{w}"), json!("any"), &["Noise"])
                    .await;
            }
        }));
    }
    let target = {
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            for i in 0..200 {
                let (status, _) = server.append("target", json!("any"), &["Signal"]).await;
                assert_eq!(status, 201, "append {i}");
            }
        })
    };
    let (events, _) = read_events(&mut reader, 200).await;
    target.await.expect("target writer");
    for writer in writers {
        writer.await.expect("noise writer");
    }
    let revisions: Vec<u64> = events
        .iter()
        .map(|e| e["revision"].as_u64().expect("rev"))
        .collect();
    assert_eq!(revisions, (0..200).collect::<Vec<_>>());
    assert!(events.iter().all(|e| e["stream"] == "target"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_subscriber_that_falls_behind_is_told_and_catches_up_again() {
    let server = TestServer::start();
    let mut reader = server
        .subscribe("/subscriptions/all?fell_behind_after=50", &[])
        .await;
    assert_eq!(
        reader.next_json(T).await,
        Some(json!({"type": "caught_up", "position": null}))
    );
    // A burst while the subscriber is not reading.
    fill(&server, "burst", 1000).await;
    let mut kinds = Vec::new();
    let mut positions = Vec::new();
    loop {
        let line = reader.next_json(T).await.expect("line");
        match line["type"].as_str().expect("type") {
            "event" => positions.push(line["event"]["position"].as_u64().expect("position")),
            "caught_up" => {
                assert_eq!(line["position"], 999);
                kinds.push("caught_up".to_owned());
                break;
            }
            other => kinds.push(other.to_owned()),
        }
    }
    assert_eq!(positions, (0..1000).collect::<Vec<u64>>());
    assert_eq!(kinds, ["fell_behind", "caught_up"], "{kinds:?}");
}
