//! Stream reads, single events and `$all` reads: directions, paging, filters, shapes.

use serde_json::{json, Value};

use crate::support::{assert_error, TestServer};

fn revisions(page: &Value) -> Vec<u64> {
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["revision"].as_u64().expect("rev"))
        .collect()
}

fn positions(page: &Value) -> Vec<u64> {
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["position"].as_u64().expect("pos"))
        .collect()
}

#[tokio::test]
async fn an_event_has_the_documented_shape() {
    let server = TestServer::start();
    let id = "01900000-0000-7000-8000-0000000000aa";
    let body = json!({"events": [{"id": id, "type": "OrderPlaced", "data": {"total": 12.5, "items": [1, 2]}, "metadata": {"user": "ann"}}]});
    assert_eq!(server.post("/streams/order-42", &body).await.0, 201);
    server.append("order-42", json!(0), &["Plain"]).await;
    let (status, event) = server.get("/streams/order-42/0").await;
    assert_eq!(status, 200);
    assert_eq!(event["stream"], "order-42");
    assert_eq!(event["revision"], 0);
    assert_eq!(event["position"], 0);
    assert_eq!(event["id"], id);
    assert_eq!(event["type"], "OrderPlaced");
    assert_eq!(event["data"], json!({"total": 12.5, "items": [1, 2]}));
    assert_eq!(event["metadata"], json!({"user": "ann"}));
    let at = event["recorded_at"].as_str().expect("recorded_at");
    assert_eq!(at.len(), "2026-11-26T15:00:00.123456Z".len(), "{at}");
    assert!(at.ends_with('Z'));
    humantime::parse_rfc3339(at).expect("RFC 3339");
    let (_, plain) = server.get("/streams/order-42/1").await;
    assert_eq!(plain["metadata"], Value::Null);
    let keys: Vec<&String> = plain.as_object().expect("object").keys().collect();
    assert_eq!(keys.len(), 8, "{plain}");
}

#[tokio::test]
async fn stream_reads_page_forward_and_backward() {
    let server = TestServer::start();
    let types: Vec<String> = (0..10).map(|i| format!("E{i}")).collect();
    let types: Vec<&str> = types.iter().map(String::as_str).collect();
    server.append("s", json!("any"), &types).await;
    server.append("noise", json!("any"), &["N"]).await;

    let (_, page) = server.get("/streams/s?limit=4").await;
    assert_eq!(revisions(&page), [0, 1, 2, 3]);
    assert_eq!(
        (page["next_revision"].clone(), page["last_revision"].clone()),
        (json!(4), json!(9))
    );
    let (_, page) = server.get("/streams/s?from=8&limit=4").await;
    assert_eq!(revisions(&page), [8, 9]);
    assert_eq!(page["next_revision"], Value::Null);
    let (_, page) = server.get("/streams/s?from=4&limit=6").await;
    assert_eq!(revisions(&page), [4, 5, 6, 7, 8, 9]);
    assert_eq!(page["next_revision"], Value::Null);

    let (_, page) = server.get("/streams/s?direction=backward&limit=3").await;
    assert_eq!(revisions(&page), [9, 8, 7]);
    assert_eq!(page["next_revision"], 6);
    let (_, page) = server.get("/streams/s?direction=backward&from=1").await;
    assert_eq!(revisions(&page), [1, 0]);
    assert_eq!(page["next_revision"], Value::Null);

    let (_, page) = server.get("/streams/s?from=50").await;
    assert_eq!(revisions(&page), Vec::<u64>::new());
    assert_eq!(page["next_revision"], Value::Null);
}

#[tokio::test]
async fn missing_streams_and_events_are_404() {
    let server = TestServer::start();
    let (status, body) = server.get("/streams/nowhere").await;
    assert_error(status, &body, 404, "stream_not_found");
    server.append("here", json!("any"), &["A"]).await;
    let (status, body) = server.get("/streams/here/1").await;
    assert_error(status, &body, 404, "event_not_found");
    let (status, body) = server.get("/streams/nowhere/0").await;
    assert_error(status, &body, 404, "event_not_found");
}

#[tokio::test]
async fn all_reads_in_both_directions_with_paging() {
    let server = TestServer::start();
    let (_, page) = server.get("/all").await;
    assert_eq!(
        page,
        json!({"events": [], "next_position": 0, "head_position": null})
    );
    let (_, page) = server.get("/all?direction=backward").await;
    assert_eq!(
        page,
        json!({"events": [], "next_position": null, "head_position": null})
    );

    for i in 0..5 {
        server
            .append(&format!("s-{i}"), json!("any"), &["A", "B"])
            .await;
    }
    let (_, page) = server.get("/all?limit=3").await;
    assert_eq!(positions(&page), [0, 1, 2]);
    assert_eq!(
        (page["next_position"].clone(), page["head_position"].clone()),
        (json!(3), json!(9))
    );
    let (_, page) = server.get("/all?from=8").await;
    assert_eq!(positions(&page), [8, 9]);
    assert_eq!(page["next_position"], 10);
    let (_, page) = server.get("/all?direction=backward&limit=4").await;
    assert_eq!(positions(&page), [9, 8, 7, 6]);
    assert_eq!(page["next_position"], 5);
    let (_, page) = server.get("/all?direction=backward&from=2").await;
    assert_eq!(positions(&page), [2, 1, 0]);
    assert_eq!(page["next_position"], Value::Null);
}

#[tokio::test]
async fn all_filters_run_on_the_server_and_next_position_passes_filtered_events() {
    let server = TestServer::start();
    server
        .append("order-1", json!("any"), &["OrderPlaced", "OrderPaid"])
        .await; // 0, 1
    server
        .append("user-1", json!("any"), &["UserCreated"])
        .await; // 2
    server
        .append("order-2", json!("any"), &["OrderPlaced"])
        .await; // 3
    server
        .append("user-2", json!("any"), &["UserCreated"])
        .await; // 4

    let (_, page) = server.get("/all?stream_prefix=order-").await;
    assert_eq!(positions(&page), [0, 1, 3]);
    assert_eq!(page["next_position"], 5);
    let (_, page) = server.get("/all?type_prefix=OrderPl").await;
    assert_eq!(positions(&page), [0, 3]);
    let (_, page) = server
        .get("/all?stream_prefix=order-&type_prefix=OrderPaid")
        .await;
    assert_eq!(positions(&page), [1]);
    // A limited page stops at its last match; the next starts right after it.
    let (_, page) = server.get("/all?stream_prefix=user-&limit=1").await;
    assert_eq!(positions(&page), [2]);
    assert_eq!(page["next_position"], 3);
    let (_, page) = server.get("/all?stream_prefix=nobody").await;
    assert_eq!(positions(&page), Vec::<u64>::new());
    assert_eq!(page["next_position"], 5);
    let (_, page) = server
        .get("/all?stream_prefix=user-&direction=backward")
        .await;
    assert_eq!(positions(&page), [4, 2]);
}

#[tokio::test]
async fn stream_names_with_unicode_and_slashes_round_trip() {
    let server = TestServer::start();
    let (status, body) = server
        .append("tenant%2Forder-%C3%A9", json!("any"), &["A"])
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["stream"], "tenant/order-é");
    let (status, page) = server.get("/streams/tenant%2Forder-%C3%A9").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["events"][0]["stream"], "tenant/order-é");
    let (status, body) = server.get("/streams/tenant").await;
    assert_error(status, &body, 404, "stream_not_found");
}

#[tokio::test]
async fn pages_stop_at_16_mib_of_event_data() {
    const PAGE: usize = 16 << 20;
    let server = TestServer::start_with(&["--max-event-bytes", "2000000"]);
    let big = "x".repeat(1_500_000);
    for i in 0..20 {
        let (status, body) = server
            .post(
                "/streams/big",
                &json!({"events": [{"type": "Big", "data": {"i": i, "blob": big}}]}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let size = |e: &Value| e["data"].to_string().len();
    for (path, next_key) in [
        ("/streams/big?limit=4096", "next_revision"),
        ("/all?limit=4096", "next_position"),
    ] {
        let (status, page) = server.get(path).await;
        assert_eq!(status, 200);
        let events = page["events"].as_array().expect("events");
        let n = events.len();
        assert!((1..20).contains(&n), "{path}: {n} events in one page");
        let before_last: usize = events[..n - 1].iter().map(size).sum();
        assert!(
            before_last < PAGE,
            "{path}: the page went on past the budget"
        );
        assert!(
            before_last + size(&events[n - 1]) >= PAGE,
            "{path}: stopped early"
        );
        assert_eq!(page[next_key], n as u64, "{path}");
    }
    // Paging through still returns everything, in order.
    let mut from = 0;
    let mut seen = Vec::new();
    while from < 20 {
        let (_, page) = server
            .get(&format!("/streams/big?from={from}&limit=4096"))
            .await;
        seen.extend(
            page["events"]
                .as_array()
                .expect("events")
                .iter()
                .map(|e| e["revision"].as_u64().expect("rev")),
        );
        match page["next_revision"].as_u64() {
            Some(next) => from = next,
            None => break,
        }
    }
    assert_eq!(seen, (0..20).collect::<Vec<u64>>());
    let (_, page) = server
        .get("/streams/big?direction=backward&limit=4096")
        .await;
    let first = page["events"][0]["revision"].as_u64().expect("rev");
    assert_eq!(first, 19);
    let n = page["events"].as_array().expect("events").len() as u64;
    assert_eq!(page["next_revision"], 19 - n);
}
