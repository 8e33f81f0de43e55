//! Appends: every expected-revision case, atomic batches, idempotent retries, duplicate ids.

use serde_json::{json, Value};

use crate::support::{assert_error, TestServer};

#[tokio::test]
async fn expected_revision_on_a_new_stream() {
    let server = TestServer::start();
    // Wrong: the stream does not exist.
    for expected in [json!("stream_exists"), json!(0), json!(5)] {
        let (status, body) = server.append("new-a", expected.clone(), &["E"]).await;
        assert_error(status, &body, 409, "wrong_expected_revision");
        assert_eq!(body["expected"], expected);
        assert_eq!(body["actual"], Value::Null);
    }
    // Nothing was stored by the rejections.
    assert_eq!(server.get("/streams/new-a").await.0, 404);
    assert_eq!(server.get("/all").await.1["head_position"], Value::Null);

    let (status, body) = server
        .append("new-a", json!("no_stream"), &["E", "F"])
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body,
        json!({"stream": "new-a", "first_revision": 0, "last_revision": 1, "first_position": 0, "last_position": 1})
    );
    let (status, body) = server.append("new-b", json!("any"), &["E"]).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["first_revision"], 0);
    assert_eq!(body["first_position"], 2);
    // Default expected revision is "any".
    let (status, body) = server
        .post(
            "/streams/new-c",
            &json!({"events": [{"type": "E", "data": null}]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["first_position"], 3);
}

#[tokio::test]
async fn expected_revision_on_an_existing_stream() {
    let server = TestServer::start();
    server
        .append("s", json!("no_stream"), &["A", "B", "C"])
        .await; // revisions 0..=2

    let (status, body) = server.append("s", json!("no_stream"), &["X"]).await;
    assert_error(status, &body, 409, "wrong_expected_revision");
    assert_eq!(body["actual"], 2);
    for stale in [0, 1, 3] {
        let (status, body) = server.append("s", json!(stale), &["X"]).await;
        assert_error(status, &body, 409, "wrong_expected_revision");
        assert_eq!(
            (body["expected"].clone(), body["actual"].clone()),
            (json!(stale), json!(2))
        );
    }
    let (status, body) = server.append("s", json!(2), &["D"]).await;
    assert_eq!(
        (status, body["first_revision"].clone()),
        (201, json!(3)),
        "{body}"
    );
    let (status, body) = server.append("s", json!("stream_exists"), &["E"]).await;
    assert_eq!(
        (status, body["first_revision"].clone()),
        (201, json!(4)),
        "{body}"
    );
    let (status, body) = server.append("s", json!("any"), &["F", "G"]).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (
            body["first_revision"].clone(),
            body["last_revision"].clone()
        ),
        (json!(5), json!(6))
    );

    let (_, page) = server.get("/streams/s").await;
    let types: Vec<&str> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["type"].as_str().expect("type"))
        .collect();
    assert_eq!(types, ["A", "B", "C", "D", "E", "F", "G"]);
    assert_eq!(page["last_revision"], 6);
}

#[tokio::test]
async fn a_batch_is_contiguous_in_its_stream_and_in_all() {
    let server = TestServer::start();
    server.append("other", json!("any"), &["O"]).await;
    let (status, body) = server.append("batch", json!("any"), &["A", "B", "C"]).await;
    assert_eq!(status, 201);
    assert_eq!(
        body,
        json!({"stream": "batch", "first_revision": 0, "last_revision": 2, "first_position": 1, "last_position": 3})
    );
    let events = server.read_all_events().await;
    let positions: Vec<u64> = events
        .iter()
        .map(|e| e["position"].as_u64().expect("pos"))
        .collect();
    assert_eq!(positions, [0, 1, 2, 3]);
    for (i, event) in events[1..].iter().enumerate() {
        assert_eq!(event["stream"], "batch");
        assert_eq!(event["revision"], i as u64);
    }
}

fn batch(ids: &[&str], types: &[&str]) -> Value {
    let events: Vec<Value> = ids
        .iter()
        .zip(types)
        .map(|(id, t)| json!({"id": id, "type": t, "data": {"t": t}}))
        .collect();
    json!({"expected_revision": "no_stream", "events": events})
}

const ID1: &str = "01900000-0000-7000-8000-000000000001";
const ID2: &str = "01900000-0000-7000-8000-000000000002";
const ID3: &str = "01900000-0000-7000-8000-000000000003";

#[tokio::test]
async fn an_identical_retry_returns_the_original_result_and_writes_nothing() {
    let server = TestServer::start();
    let body = batch(&[ID1, ID2], &["A", "B"]);
    let (status, first) = server.post("/streams/idem", &body).await;
    assert_eq!(status, 201, "{first}");
    server.append("idem", json!(1), &["C"]).await; // the stream moves on

    // The retry's expected revision ("no_stream") no longer holds; it is still a replay.
    let (status, again) = server.post("/streams/idem", &body).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again, first);
    let (_, page) = server.get("/streams/idem").await;
    assert_eq!(page["last_revision"], 2);
    assert_eq!(server.read_all_events().await.len(), 3);
}

#[tokio::test]
async fn reusing_a_stored_id_any_other_way_is_a_conflict() {
    let server = TestServer::start();
    let (status, _) = server
        .post("/streams/dup", &batch(&[ID1, ID2], &["A", "B"]))
        .await;
    assert_eq!(status, 201);
    let cases = [
        ("/streams/dup-other", batch(&[ID1, ID2], &["A", "B"])), // another stream
        ("/streams/dup", batch(&[ID2, ID1], &["B", "A"])),       // another order
        ("/streams/dup", batch(&[ID1, ID3], &["A", "C"])),       // mixed with a new id
        ("/streams/dup-other", batch(&[ID3, ID2], &["C", "B"])), // one old id elsewhere
    ];
    for (path, body) in cases {
        let (status, response) = server.post(path, &body).await;
        assert_error(status, &response, 409, "duplicate_event_id");
    }
    // Nothing of the rejected appends was stored, not even the new id.
    assert_eq!(server.read_all_events().await.len(), 2);
    assert_eq!(server.get("/streams/dup-other").await.0, 404);
    let (status, _) = server
        .post("/streams/dup-other", &batch(&[ID3], &["C"]))
        .await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn ids_repeated_inside_one_batch_are_rejected() {
    let server = TestServer::start();
    let (status, body) = server
        .post("/streams/x", &batch(&[ID1, ID1], &["A", "B"]))
        .await;
    assert_error(status, &body, 400, "duplicate_event_id_in_batch");
}

#[tokio::test]
async fn the_server_assigns_distinct_ids_when_absent() {
    let server = TestServer::start();
    server.append("ids", json!("any"), &["A", "B", "C"]).await;
    let (_, page) = server.get("/streams/ids").await;
    let mut ids: Vec<String> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            let id = e["id"].as_str().expect("id");
            let uuid = uuid::Uuid::parse_str(id).expect("uuid");
            assert_eq!(uuid.get_version_num(), 7, "server ids are UUIDv7");
            id.to_owned()
        })
        .collect();
    ids.dedup();
    assert_eq!(ids.len(), 3);
}

/// The writer's queue is bounded by requests and by bytes: with the writer made
/// slow (fault injection: every group commit takes 400 ms more), a write that
/// finds the queue full waits `--writer-queue-timeout-ms`, then gets 503
/// `writer_busy` with `Retry-After`, and nothing it carried is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_writer_queue_answers_503_and_stores_nothing() {
    for limit in [
        ["--writer-queue-requests", "1"],
        ["--writer-queue-bytes", "1024"],
    ] {
        let args = [limit[0], limit[1], "--writer-queue-timeout-ms", "50"];
        let server = std::sync::Arc::new(TestServer::start_with_env(
            &args,
            &[("SKALD_FAULT_WRITE_DELAY_MS", "400")],
        ));
        let big = json!({"events": [{"type": "Big", "data": {"pad": "p".repeat(2048)}}]});
        let first = {
            let server = std::sync::Arc::clone(&server);
            let big = big.clone();
            tokio::spawn(async move { server.post("/streams/first", &big).await })
        };
        server.wait_for_gauge("writer_queue_requests", 1).await;
        let response = server
            .http
            .post(server.url("/streams/second"))
            .json(&json!({"events": [{"type": "Small", "data": {}}]}))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 503, "{limit:?}");
        assert_eq!(response.headers()["retry-after"], "1");
        let (status, body) = crate::support::status_json(response).await;
        assert_error(status, &body, 503, "writer_busy");
        assert_eq!(first.await.expect("first").0, 201, "{limit:?}");
        assert_eq!(server.get("/streams/second").await.0, 404, "nothing stored");
        let (_, stats) = server.get("/admin/stats").await;
        assert_eq!(stats["writer_queue_requests"], 0, "{stats}");
        // With the queue free again, the same append goes through.
        let (status, body) = server
            .post(
                "/streams/second",
                &json!({"events": [{"type": "Small", "data": {}}]}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
}

/// One client appending a request at a time with nothing else going on: the
/// writer spins on its queue between the appends and catches the next one
/// there (`--writer-spin-us`, a budget no round trip on loopback exceeds
/// here); with 0 it never spins. Every append is stored either way.
#[tokio::test]
async fn back_to_back_appends_are_caught_by_the_spinning_writer() {
    for (budget, spins) in [("10000", true), ("0", false)] {
        let server = TestServer::start_with(&["--writer-spin-us", budget]);
        for revision in 0..100u64 {
            let expected = revision
                .checked_sub(1)
                .map_or(json!("no_stream"), |r| json!(r));
            let (status, body) = server.append("spin", expected, &["E"]).await;
            assert_eq!(status, 201, "{body}");
            assert_eq!(body["last_revision"], revision);
        }
        let text = server.metrics_text().await;
        let spins_by = |outcome: &str| -> u64 {
            let prefix = format!("skald_writer_spins_total{{outcome=\"{outcome}\"}} ");
            text.lines()
                .find_map(|line| line.strip_prefix(&prefix))
                .map_or(0, |v| v.trim().parse().expect("a count"))
        };
        let (caught, missed) = (spins_by("caught"), spins_by("missed"));
        if spins {
            assert!(
                caught > 0,
                "no spin caught an append: {caught} caught, {missed} missed"
            );
        } else {
            assert_eq!((caught, missed), (0, 0), "spun with --writer-spin-us 0");
        }
    }
}
