//! Stream lifecycle: soft delete, hard delete (tombstone), metadata limits, and
//! their immediate effect on stream reads, `$all` and subscriptions.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{assert_error, TestServer};

const T: Duration = Duration::from_secs(30);

async fn delete(server: &TestServer, path: &str) -> (u16, Value) {
    let response = server
        .http
        .delete(server.url(path))
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (
        status,
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("JSON")
        },
    )
}

async fn put(server: &TestServer, path: &str, body: &Value) -> (u16, Value) {
    let response = server
        .http
        .put(server.url(path))
        .json(body)
        .send()
        .await
        .expect("request");
    crate::support::status_json(response).await
}

/// `put` with `?expected_version=expected`.
async fn put_expecting(
    server: &TestServer,
    path: &str,
    expected: &str,
    body: &Value,
) -> (u16, Value) {
    put(server, &format!("{path}?expected_version={expected}"), body).await
}

fn streams_in(page: &Value) -> Vec<String> {
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["stream"].as_str().expect("s").to_owned())
        .collect()
}

fn revisions(page: &Value) -> Vec<u64> {
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["revision"].as_u64().expect("r"))
        .collect()
}

#[tokio::test]
async fn soft_delete_hides_the_stream_everywhere_and_appending_recreates_it() {
    let server = TestServer::start();
    server
        .append("doomed", json!("any"), &["A", "B", "C"])
        .await; // 0..=2
    server.append("kept", json!("any"), &["K"]).await; // 3
    let mut all_sub = server.subscribe("/subscriptions/all?from=end", &[]).await;
    assert_eq!(
        all_sub.next_json(T).await.expect("line")["type"],
        "caught_up"
    );
    let mut stream_sub = server.subscribe("/subscriptions/streams/doomed", &[]).await;
    for _ in 0..3 {
        assert_eq!(
            stream_sub.next_json(T).await.expect("line")["type"],
            "event"
        );
    }
    let caught_up = stream_sub.next_json(T).await.expect("line");
    assert_eq!(caught_up["type"], "caught_up", "{caught_up}");

    let (status, body) = delete(&server, "/streams/doomed?expected_revision=1").await;
    assert_error(status, &body, 409, "wrong_expected_revision");
    assert_eq!(body["actual"], 2);
    let (status, body) = delete(&server, "/streams/never-written").await;
    assert_error(status, &body, 404, "stream_not_found");
    let (status, _) = delete(&server, "/streams/doomed?expected_revision=2").await;
    assert_eq!(status, 204);

    let (status, body) = server.get("/streams/doomed").await;
    assert_error(status, &body, 404, "stream_not_found");
    assert_eq!(server.get("/streams/doomed/0").await.0, 404);
    let (_, page) = server.get("/all").await;
    assert_eq!(streams_in(&page), ["kept"]);
    let (_, page) = server.get("/all?direction=backward").await;
    assert_eq!(streams_in(&page), ["kept"]);
    let mut replay = server.subscribe("/subscriptions/all", &[]).await;
    let first = replay.next_json(T).await.expect("line");
    assert_eq!(first["event"]["stream"], "kept", "{first}");
    // A subscription to the stream ends with an error line.
    let line = stream_sub.next_json(T).await.expect("line");
    assert_eq!(
        (line["type"].clone(), line["error"].clone()),
        (json!("error"), json!("stream_deleted"))
    );

    // Recreate: no_stream holds again, revisions continue after the old last one.
    let (status, body) = server
        .append("doomed", json!("no_stream"), &["Again"])
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (
            body["first_revision"].clone(),
            body["first_position"].clone()
        ),
        (json!(3), json!(4))
    );
    let (status, page) = server.get("/streams/doomed").await;
    assert_eq!(status, 200);
    assert_eq!(revisions(&page), [3]);
    let (_, page) = server.get("/all").await;
    assert_eq!(streams_in(&page), ["kept", "doomed"]);
    // The live $all subscription sees the new event, never the deleted ones.
    let line = all_sub.next_json(T).await.expect("line");
    assert_eq!(
        (
            line["event"]["stream"].clone(),
            line["event"]["revision"].clone()
        ),
        (json!("doomed"), json!(3))
    );
}

#[tokio::test]
async fn hard_delete_is_a_tombstone_forever() {
    let server = TestServer::start();
    server.append("grave", json!("any"), &["A"]).await;
    server.append("alive", json!("any"), &["B"]).await;
    let (status, _) = delete(&server, "/streams/grave?hard=true").await;
    assert_eq!(status, 204);
    for (status, body) in [
        server.get("/streams/grave").await,
        server.get("/streams/grave/0").await,
        server.append("grave", json!("any"), &["X"]).await,
        server.append("grave", json!("no_stream"), &["X"]).await,
        server.get("/streams/grave/metadata").await,
        put(&server, "/streams/grave/metadata", &json!({"max_count": 5})).await,
        delete(&server, "/streams/grave").await,
        delete(&server, "/streams/grave?hard=true").await,
    ] {
        assert_error(status, &body, 410, "stream_deleted");
    }
    let (_, page) = server.get("/all").await;
    assert_eq!(streams_in(&page), ["alive"]);
    let mut sub = server.subscribe("/subscriptions/streams/grave", &[]).await;
    assert_eq!(
        sub.next_json(T).await.expect("line")["error"],
        "stream_deleted"
    );
    // A name never used can be tombstoned to reserve it.
    assert_eq!(delete(&server, "/streams/reserved?hard=true").await.0, 204);
    assert_eq!(server.append("reserved", json!("any"), &["X"]).await.0, 410);
    let (status, body) = delete(&server, "/streams/alive?hard=maybe").await;
    assert_error(status, &body, 400, "invalid_query");
}

#[tokio::test]
async fn metadata_limits_apply_to_every_read_at_once() {
    let server = TestServer::start();
    let types: Vec<String> = (0..10).map(|i| format!("E{i}")).collect();
    let types: Vec<&str> = types.iter().map(String::as_str).collect();
    server.append("capped", json!("any"), &types).await; // positions 0..=9
    server.append("other", json!("any"), &["O"]).await; // 10

    let (status, body) = server.get("/streams/capped/metadata").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"stream": "capped", "max_count": null, "max_age_secs": null, "truncate_before": null, "custom": null})
    );
    let (status, body) = put(
        &server,
        "/streams/capped/metadata",
        &json!({"max_count": 3, "custom": {"owner": "billing"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["custom"], json!({"owner": "billing"}));
    let (_, page) = server.get("/streams/capped").await;
    assert_eq!(revisions(&page), [7, 8, 9]);
    assert_eq!(page["last_revision"], 9);
    let (_, page) = server.get("/streams/capped?direction=backward").await;
    assert_eq!(revisions(&page), [9, 8, 7]);
    assert_eq!(page["next_revision"], Value::Null);
    assert_eq!(server.get("/streams/capped/6").await.0, 404);
    let (_, page) = server.get("/all?stream_prefix=capped").await;
    assert_eq!(revisions(&page), [7, 8, 9]);

    // truncate_before wins where it hides more; setting metadata never changes revisions.
    put(
        &server,
        "/streams/capped/metadata",
        &json!({"max_count": 3, "truncate_before": 9}),
    )
    .await;
    let (_, page) = server.get("/streams/capped").await;
    assert_eq!(revisions(&page), [9]);
    let (status, body) = server.append("capped", json!(9), &["E10"]).await;
    assert_eq!((status, body["first_revision"].clone()), (201, json!(10)));
    // Lifting the limits shows everything again (nothing was scavenged).
    put(&server, "/streams/capped/metadata", &json!({})).await;
    let (_, page) = server.get("/streams/capped").await;
    assert_eq!(revisions(&page), (0..=10).collect::<Vec<u64>>());

    // max_age: events older than the limit disappear as time passes.
    put(
        &server,
        "/streams/capped/metadata",
        &json!({"max_age_secs": 1}),
    )
    .await;
    assert_eq!(revisions(&server.get("/streams/capped").await.1).len(), 11);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, page) = server.get("/streams/capped").await;
    assert_eq!((status, revisions(&page)), (200, vec![]));
    let (_, page) = server.get("/all").await;
    assert_eq!(streams_in(&page), ["other"]);
    server.append("capped", json!("any"), &["Fresh"]).await;
    assert_eq!(revisions(&server.get("/streams/capped").await.1), [11]);

    // Metadata needs no existing stream, and the stream then starts at revision 0.
    let (status, _) = put(
        &server,
        "/streams/future/metadata",
        &json!({"max_count": 1}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(server.get("/streams/future").await.0, 404);
    let (status, body) = server
        .append("future", json!("no_stream"), &["A", "B"])
        .await;
    assert_eq!((status, body["first_revision"].clone()), (201, json!(0)));
    assert_eq!(revisions(&server.get("/streams/future").await.1), [1]);

    for bad in [
        json!({"max_count": 0}),
        json!({"max_count": "x"}),
        json!({"custom": [1]}),
        json!({"bogus": 1}),
    ] {
        let (status, body) = put(&server, "/streams/capped/metadata", &bad).await;
        assert_error(status, &body, 400, "invalid_body");
    }
}

#[tokio::test]
async fn a_metadata_change_can_expect_the_version_it_replaces() {
    let server = TestServer::start();
    let path = "/streams/guarded/metadata";
    let first = json!({"max_count": 5});
    // Never set: `no_stream` holds, a version does not.
    let (status, body) = put_expecting(&server, path, "0", &first).await;
    assert_error(status, &body, 409, "wrong_expected_version");
    assert_eq!(
        (body["expected"].clone(), body["actual"].clone()),
        (json!(0), Value::Null),
        "{body}"
    );
    assert_eq!(
        server.get(path).await.1["max_count"],
        Value::Null,
        "nothing was set"
    );
    let (status, body) = put_expecting(&server, path, "no_stream", &first).await;
    assert_eq!((status, body["version"].clone()), (200, json!(0)), "{body}");

    // Set once: version 0 holds, `no_stream` and other versions do not, and
    // a refused change changes nothing.
    for stale in ["no_stream", "1", "7"] {
        let (status, body) = put_expecting(&server, path, stale, &json!({"max_count": 1})).await;
        assert_error(status, &body, 409, "wrong_expected_version");
        assert_eq!(body["actual"], json!(0), "{body}");
    }
    let (_, current) = server.get(path).await;
    assert_eq!(
        (current["max_count"].clone(), current["version"].clone()),
        (json!(5), json!(0))
    );
    let second = json!({"max_count": 2});
    let (status, body) = put_expecting(&server, path, "0", &second).await;
    assert_eq!((status, body["version"].clone()), (200, json!(1)), "{body}");
    let (status, body) = put_expecting(&server, path, "stream_exists", &second).await;
    assert_eq!((status, body["version"].clone()), (200, json!(2)), "{body}");
    let (status, body) = put_expecting(&server, path, "any", &second).await;
    assert_eq!((status, body["version"].clone()), (200, json!(3)), "{body}");

    for bad in [
        "expected_version=-1",
        "expected_version=soon",
        "expected_revision=3",
    ] {
        let (status, body) = put(&server, &format!("{path}?{bad}"), &second).await;
        assert_error(status, &body, 400, "invalid_query");
    }
    assert_eq!(
        server.get(path).await.1["version"],
        json!(3),
        "bad queries changed nothing"
    );
}
