//! Resource limits a client can run into: custom stream metadata, read memory,
//! connections.

use serde_json::{json, Value};

use crate::support::{assert_error, status_json, TestServer};

/// Bytes of the files under `dir` (the data directory, WAL included).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| {
            let entry = entry.expect("entry");
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                dir_bytes(&entry.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

async fn put_metadata(server: &TestServer, stream: &str, body: &Value) -> (u16, Value) {
    let response = server
        .http
        .put(server.url(&format!("/streams/{stream}/metadata")))
        .json(body)
        .send()
        .await
        .expect("send");
    status_json(response).await
}

/// Appends cost about their own events, however large the stream's custom
/// metadata: 300 one-event appends to a stream with 60 KiB of custom metadata
/// would write 18 MiB if each rewrote it.
#[tokio::test]
async fn appends_do_not_rewrite_custom_stream_metadata() {
    let server = TestServer::start();
    let custom = json!({"blob": "x".repeat(60 << 10)});
    let (status, body) = put_metadata(&server, "heavy", &json!({"custom": custom})).await;
    assert_eq!(status, 200, "{body}");
    let before = dir_bytes(server.data_dir());
    for _ in 0..300 {
        let (status, body) = server.append("heavy", json!("any"), &["E"]).await;
        assert_eq!(status, 201, "{body}");
    }
    let grown = dir_bytes(server.data_dir()).saturating_sub(before);
    assert!(
        grown < 4 << 20,
        "300 small appends grew the data dir by {grown} bytes"
    );
    let (status, body) = server.get("/streams/heavy/metadata").await;
    assert_eq!((status, &body["custom"]), (200, &custom));
    let (status, body) = server.get("/admin/streams/heavy").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["metadata"]["custom"], custom);
}

#[tokio::test]
async fn custom_metadata_above_its_limit_is_413_and_changes_nothing() {
    let server = TestServer::start_with(&["--max-custom-metadata-bytes", "1000"]);
    let (status, _) = put_metadata(&server, "m", &json!({"custom": {"a": 1}})).await;
    assert_eq!(status, 200);
    let big = json!({"custom": {"a": "y".repeat(1000)}, "max_count": 5});
    let (status, body) = put_metadata(&server, "m", &big).await;
    assert_error(status, &body, 413, "custom_metadata_too_large");
    assert_eq!(body["limit"], 1000);
    let message = body["message"].as_str().expect("message");
    assert!(message.contains("--max-custom-metadata-bytes"), "{body}");
    let (_, body) = server.get("/streams/m/metadata").await;
    assert_eq!(
        (&body["custom"], &body["max_count"]),
        (&json!({"a": 1}), &Value::Null)
    );

    // The default is 64 KiB.
    let server = TestServer::start();
    let fits = json!({"custom": {"a": "z".repeat((64 << 10) - 16)}});
    assert_eq!(put_metadata(&server, "d", &fits).await.0, 200);
    let over = json!({"custom": {"a": "z".repeat(64 << 10)}});
    let (status, body) = put_metadata(&server, "d", &over).await;
    assert_error(status, &body, 413, "custom_metadata_too_large");
}

/// A read builds about one page (16 MiB) plus a constant, whatever it could
/// fetch ahead: 24 reads at once of a stream of 64 events of 1 MiB (and of
/// `$all` over them) must not cost 24 x 64 MiB.
#[tokio::test]
async fn parallel_reads_of_large_events_cost_about_one_page_each() {
    let server = TestServer::start();
    let data = "x".repeat((1 << 20) - 1024);
    for _ in 0..8 {
        let events: Vec<_> = (0..8)
            .map(|_| json!({"type": "Big", "data": data}))
            .collect();
        let (status, body) = server
            .post("/streams/big", &json!({"events": events}))
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let before = server.peak_rss_kib();
    for path in ["/streams/big?limit=100", "/all?limit=100"] {
        let reads = (0..24).map(|_| {
            let request = server.http.get(server.url(path)).send();
            async move {
                let response = request.await.expect("send");
                assert_eq!(response.status(), 200);
                let page: Value = response.json().await.expect("page");
                page["events"].as_array().expect("events").len()
            }
        });
        for events in futures::future::join_all(reads).await {
            // 16 events are just under 16 MiB; the 17th reaches the cap.
            assert_eq!(events, 17, "a page stops once it holds 16 MiB");
        }
    }
    let grown_mib = server.peak_rss_kib().saturating_sub(before) / 1024;
    eprintln!("peak RSS grew by {grown_mib} MiB");
    assert!(
        grown_mib < 24 * 40,
        "24 parallel reads grew peak RSS by {grown_mib} MiB"
    );
}
