//! Scavenging, verify, the stream catalog and stats, through the HTTP API.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{assert_error, sst_bytes, verify_clean, wait_job, TestServer};

const T: Duration = Duration::from_secs(30);

async fn delete(server: &TestServer, path: &str) -> u16 {
    server
        .http
        .delete(server.url(path))
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

async fn put_metadata(server: &TestServer, stream: &str, body: Value) {
    let response = server
        .http
        .put(server.url(&format!("/streams/{stream}/metadata")))
        .json(&body)
        .send()
        .await;
    assert_eq!(response.expect("request").status(), 200);
}

/// Appends `per_stream` events of ~200 bytes to each of `streams` streams, 8 writers at a time.
async fn populate(server: &Arc<TestServer>, streams: usize, per_stream: usize) {
    let mut tasks = Vec::new();
    for w in 0..8 {
        let server = Arc::clone(server);
        tasks.push(tokio::spawn(async move {
            for s in (w..streams).step_by(8) {
                let events: Vec<Value> = (0..per_stream)
                    .map(|i| json!({"type": "Filled", "data": {"stream": s, "i": i, "pad": "p".repeat(160)}}))
                    .collect();
                let (status, body) = server.post(&format!("/streams/s-{s:04}"), &json!({"events": events})).await;
                assert_eq!(status, 201, "{body}");
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer");
    }
}

/// Fills `streams` streams, then soft-deletes every one of them.
async fn populate_and_delete_all(server: &Arc<TestServer>, streams: usize, per_stream: usize) {
    populate(server, streams, per_stream).await;
    for s in 0..streams {
        assert_eq!(delete(server, &format!("/streams/s-{s:04}")).await, 204);
    }
}

/// Polls scavenge `id` until it has removed something (it must still be running).
async fn wait_until_removing(server: &TestServer, id: &str) {
    loop {
        let (_, report) = server.get(&format!("/admin/scavenge/{id}")).await;
        if report["events_removed"].as_u64().unwrap_or(0) > 0 {
            return;
        }
        assert_eq!(report["result"], "running", "{report}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every visible event of `$all`, as (position, stream, revision, id).
async fn visible(server: &TestServer) -> Vec<(u64, String, u64, String)> {
    server
        .read_all_events()
        .await
        .iter()
        .map(|e| {
            (
                e["position"].as_u64().expect("p"),
                e["stream"].as_str().expect("s").to_owned(),
                e["revision"].as_u64().expect("r"),
                e["id"].as_str().expect("id").to_owned(),
            )
        })
        .collect()
}

/// Polls a job until it is no longer running; returns its final report.
async fn start_scavenge(server: &TestServer, query: &str) -> String {
    let (status, body) = server
        .post(&format!("/admin/scavenge{query}"), &json!(null))
        .await;
    assert_eq!(status, 202, "{body}");
    body["id"].as_str().expect("id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scavenge_removes_hidden_events_everywhere_while_serving() {
    let server = Arc::new(TestServer::start());
    populate(&server, 1000, 100).await; // 100,000 events
                                        // Delete half the streams (every 10th one for good), cap a quarter at 10 events.
    for s in 0..1000 {
        let stream = format!("s-{s:04}");
        match s % 4 {
            0 | 1 => {
                let hard = if s % 10 == 0 { "?hard=true" } else { "" };
                assert_eq!(
                    delete(&server, &format!("/streams/{stream}{hard}")).await,
                    204
                );
            }
            2 => put_metadata(&server, &stream, json!({"max_count": 10})).await,
            _ => {}
        }
    }
    let before = visible(&server).await;
    assert_eq!(before.len(), 250 * 100 + 250 * 10);

    // A dry run estimates without removing.
    let id = start_scavenge(&server, "?dry_run=true").await;
    let dry = wait_job(&server, &format!("/admin/scavenge/{id}")).await;
    assert_eq!(
        (dry["result"].clone(), dry["dry_run"].clone()),
        (json!("completed"), json!(true))
    );
    assert_eq!(dry["events_removed"], 72_500, "{dry}");
    assert!(dry["bytes_reclaimed"].as_u64().expect("bytes") > 72_500 * 150);
    assert_eq!(visible(&server).await, before);

    // Flush everything to files first, so the size comparison is about SST files.
    let server = {
        let mut server = Arc::into_inner(server).expect("no other owner");
        assert!(server.terminate().success());
        server.restart();
        Arc::new(server)
    };
    let disk_before = sst_bytes(server.data_dir());

    // While the scavenge runs: a subscription follows and writers append.
    let mut follower = server.subscribe("/subscriptions/all?from=end", &[]).await;
    assert_eq!(
        follower.next_json(T).await.expect("line")["type"],
        "caught_up"
    );
    let id = start_scavenge(&server, "").await;
    let (status, body) = server.post("/admin/scavenge", &json!(null)).await;
    assert_error(status, &body, 409, "scavenge_running");
    let (_, current) = server.get("/admin/scavenge/current").await;
    assert_eq!(current["id"], id.as_str());
    let writer = {
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..300 {
                let (status, body) = server
                    .append(&format!("during-{}", i % 7), json!("any"), &["During"])
                    .await;
                assert_eq!(status, 201, "{body}");
                acked.push(body["first_position"].as_u64().expect("position"));
            }
            acked
        })
    };
    let report = wait_job(&server, &format!("/admin/scavenge/{id}")).await;
    let acked = writer.await.expect("writer");
    assert_eq!(report["result"], "completed", "{report}");
    assert_eq!(report["events_removed"], 72_500, "{report}");
    // Streams created during the run are scanned only if the walk had not yet passed their names.
    let scanned = report["streams_scanned"].as_u64().expect("scanned");
    assert!((1000..=1007).contains(&scanned), "{report}");
    let mut followed = Vec::new();
    while followed.len() < acked.len() {
        let line = follower.next_json(T).await.expect("line");
        if line["type"] == "event" {
            followed.push(line["event"]["position"].as_u64().expect("position"));
        }
    }
    assert_eq!(
        followed, acked,
        "the subscription missed or reordered events during the scavenge"
    );

    // Same visible content, plus what was appended meanwhile.
    let after = visible(&server).await;
    assert_eq!(after[..before.len()], before[..]);
    assert_eq!(after.len(), before.len() + acked.len());
    let disk_after = sst_bytes(server.data_dir());
    eprintln!(
        "scavenge: SST files {disk_before} bytes before, {disk_after} after; report {report}"
    );
    assert!(
        disk_after < disk_before * 3 / 4,
        "the data directory did not shrink: {disk_before} -> {disk_after}"
    );

    // Gone from every column family: stop the server and count the keys.
    let mut server = Arc::into_inner(server).expect("no other owner");
    assert!(server.terminate().success());
    let counts = {
        let store = skald_server::storage::Store::open(server.data_dir()).expect("open");
        store.count_keys().expect("count")
    };
    let stored = (before.len() + acked.len()) as u64 as usize;
    for (cf, n) in &counts {
        match *cf {
            "events" | "stream_index" | "event_ids" => assert_eq!(*n, stored, "{cf}: {counts:?}"),
            "streams" => assert_eq!(*n, 1000 + 7, "{counts:?}"),
            _ => {}
        }
    }
    server.restart();
    assert_eq!(server.get("/streams/s-0000").await.0, 410);
    assert_eq!(server.get("/streams/s-0001").await.0, 404);
    // Positions are not reused: the next append goes after the head.
    let (_, info) = server.get("/info").await;
    let (_, body) = server.append("after", json!("any"), &["After"]).await;
    assert_eq!(
        body["first_position"],
        info["head_position"].as_u64().expect("head") + 1
    );
    let (_, history) = server.get("/admin/scavenges").await;
    assert_eq!(
        history["scavenges"].as_array().expect("list").len(),
        2,
        "history survives a restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scavenge_killed_midway_then_rerun_gives_the_same_visible_content() {
    let server = Arc::new(TestServer::start());
    populate(&server, 200, 250).await; // 50,000 events
    for s in 0..200 {
        if s % 5 != 0 {
            assert_eq!(delete(&server, &format!("/streams/s-{s:04}")).await, 204);
        }
    }
    let before = visible(&server).await;
    assert_eq!(before.len(), 40 * 250);
    let mut server = Arc::into_inner(server).expect("owner");

    let id = start_scavenge(&server, "").await;
    // Kill as soon as something was removed and the job still runs.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, report) = server.get(&format!("/admin/scavenge/{id}")).await;
        let removed = report["events_removed"].as_u64().unwrap_or(0);
        if removed > 0 && report["result"] == "running" {
            eprintln!("killing the server after {removed} of 40,000 removals");
            break;
        }
        assert!(
            report["result"] == "running",
            "finished before it could be killed: {report}"
        );
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill_and_restart();
    assert_eq!(
        visible(&server).await,
        before,
        "visible content changed after a crash mid-scavenge"
    );
    let id = start_scavenge(&server, "").await;
    let report = wait_job(&server, &format!("/admin/scavenge/{id}")).await;
    assert_eq!(report["result"], "completed", "{report}");
    assert!(
        report["events_removed"].as_u64().expect("removed") < 40_000,
        "{report}"
    );
    assert_eq!(visible(&server).await, before);
    let verify = verify_clean(&server).await;
    assert_eq!(verify["events_checked"], 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_scavenge_stops_and_the_next_continues_where_it_stopped() {
    let server = Arc::new(TestServer::start());
    populate_and_delete_all(&server, 400, 100).await;
    let id = start_scavenge(&server, "").await;
    wait_until_removing(&server, &id).await;
    let response = server
        .http
        .delete(server.url(&format!("/admin/scavenge/{id}")))
        .send()
        .await
        .expect("cancel");
    assert_eq!(response.status(), 202);
    let first = wait_job(&server, &format!("/admin/scavenge/{id}")).await;
    assert_eq!(first["result"], "cancelled", "{first}");
    let removed_first = first["events_removed"].as_u64().expect("removed");
    assert!(removed_first < 40_000, "{first}");
    assert_eq!(server.get("/admin/scavenge/current").await.0, 404);

    let id = start_scavenge(&server, "").await;
    let second = wait_job(&server, &format!("/admin/scavenge/{id}")).await;
    assert_eq!(
        (second["result"].clone(), second["resumed"].clone()),
        (json!("completed"), json!(1)),
        "{second}"
    );
    assert!(
        second["streams_scanned"].as_u64().expect("n") < 400,
        "it started over: {second}"
    );
    let total = removed_first + second["events_removed"].as_u64().expect("removed");
    assert_eq!(total, 40_000, "{first} {second}");
    assert_eq!(server.read_all_events().await.len(), 0);
}

#[tokio::test]
async fn verify_finds_a_corrupted_record_and_names_its_position() {
    let mut server = TestServer::start();
    for i in 0..5 {
        server
            .append(&format!("v-{i}"), json!("any"), &["A", "B"])
            .await;
    }
    let (_, started) = server.post("/admin/verify", &json!(null)).await;
    let clean = wait_job(
        &server,
        &format!("/admin/verify/{}", started["id"].as_str().expect("id")),
    )
    .await;
    assert_eq!(
        (
            clean["problems_found"].clone(),
            clean["events_checked"].clone()
        ),
        (json!(0), json!(10)),
        "{clean}"
    );
    assert_eq!(clean["index_entries_checked"], 10);

    assert!(server.terminate().success());
    skald_server::storage::fault::flip_bit(server.data_dir(), 7).expect("corrupt");
    server.restart();
    let (_, started) = server.post("/admin/verify", &json!(null)).await;
    let report = wait_job(
        &server,
        &format!("/admin/verify/{}", started["id"].as_str().expect("id")),
    )
    .await;
    assert_eq!(report["result"], "completed");
    assert_eq!(report["problems_found"], 1, "{report}");
    assert_eq!(report["problems"][0]["position"], 7, "{report}");
    let message = report["problems"][0]["message"].as_str().expect("message");
    assert!(message.contains("checksum"), "{message}");
    let (_, history) = server.get("/admin/verifies").await;
    assert_eq!(history["verifies"][0]["id"], report["id"]);
    let (status, body) = server.get("/admin/verify/nonexistent").await;
    assert_error(status, &body, 404, "not_found");
}

#[tokio::test]
async fn the_stream_catalog_pages_by_name_and_describes_each_stream() {
    let server = TestServer::start();
    for name in ["b-1", "a-2", "a-1", "c-1", "a-3"] {
        server.append(name, json!("any"), &["X", "Y"]).await;
    }
    assert_eq!(delete(&server, "/streams/a-2").await, 204);
    put_metadata(
        &server,
        "a-3",
        json!({"max_count": 1, "custom": {"team": "x"}}),
    )
    .await;
    let names = |page: &Value| -> Vec<String> {
        page["streams"]
            .as_array()
            .expect("list")
            .iter()
            .map(|s| s["stream"].as_str().expect("s").to_owned())
            .collect()
    };
    let (_, page) = server.get("/admin/streams?limit=2").await;
    assert_eq!(names(&page), ["a-1", "a-2"]);
    assert_eq!(page["next_after"], "a-2");
    let (_, page) = server.get("/admin/streams?limit=2&after=a-2").await;
    assert_eq!(names(&page), ["a-3", "b-1"]);
    let (_, page) = server.get("/admin/streams?prefix=a-").await;
    assert_eq!(names(&page), ["a-1", "a-2", "a-3"]);
    assert_eq!(page["next_after"], Value::Null);
    let entry = &page["streams"][0];
    assert_eq!(
        (
            entry["first_revision"].clone(),
            entry["last_revision"].clone()
        ),
        (json!(0), json!(1))
    );
    assert_eq!(entry["event_count"], 2);
    assert!(entry["bytes"].as_u64().expect("bytes") > 0);
    assert!(entry["created_at"].is_string() && entry["last_appended_at"].is_string());
    assert_eq!(page["streams"][1]["deleted"], true);
    assert_eq!(page["streams"][1]["event_count"], 0);
    let (status, one) = server.get("/admin/streams/a-3").await;
    assert_eq!(status, 200);
    assert_eq!(
        (one["event_count"].clone(), one["first_revision"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(one["metadata"]["custom"], json!({"team": "x"}));
    let (status, body) = server.get("/admin/streams/zzz").await;
    assert_error(status, &body, 404, "stream_not_found");
    let (status, _) = server.get("/admin/streams?limit=0").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn stats_and_metrics_report_the_server() {
    let server = TestServer::start();
    for i in 0..4 {
        server
            .append(&format!("m-{i}"), json!("any"), &["A", "B", "C"])
            .await;
    }
    server.get("/all").await;
    let mut sub = server.subscribe("/subscriptions/all?from=end", &[]).await;
    assert_eq!(sub.next_json(T).await.expect("line")["type"], "caught_up");
    let (status, stats) = server.get("/admin/stats").await;
    assert_eq!(status, 200);
    assert_eq!(stats["head_position"], 11);
    assert_eq!(stats["event_count"], 12);
    assert!(stats["disk_bytes"].as_u64().expect("disk") > 0);
    assert!(stats["append_rate_per_sec_1m"].as_f64().expect("rate") > 0.0);
    assert!(stats["read_rate_per_sec_1m"].as_f64().expect("rate") > 0.0);
    assert_eq!(stats["live_subscriptions"], 1);
    for key in [
        "write_amplification",
        "pending_compaction_bytes",
        "memtable_bytes",
        "block_cache_bytes",
        "table_readers_bytes",
    ] {
        assert!(stats["rocksdb"].get(key).is_some(), "{key}: {stats}");
    }
    let text = server.metrics_text().await;
    assert!(text.contains("skald_appended_events_total 12"), "{text}");
    assert!(
        text.contains(
            r#"skald_http_requests_total{route="/streams/{stream}",method="POST",status="201"} 4"#
        ),
        "{text}"
    );
    assert!(
        text.contains("skald_group_commit_fsync_seconds_count"),
        "{text}"
    );
    assert!(text.contains("skald_subscriptions 1"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_during_a_scavenge_cancels_it_cleanly_and_the_next_resumes() {
    let server = Arc::new(TestServer::start());
    populate_and_delete_all(&server, 300, 100).await;
    let mut server = Arc::into_inner(server).expect("owner");
    let id = start_scavenge(&server, "").await;
    wait_until_removing(&server, &id).await;
    let started = Instant::now();
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        started.elapsed()
    );
    server.restart();
    let (_, history) = server.get("/admin/scavenges").await;
    assert_eq!(history["scavenges"][0]["result"], "cancelled", "{history}");
    let id = start_scavenge(&server, "").await;
    let report = wait_job(&server, &format!("/admin/scavenge/{id}")).await;
    assert_eq!(
        (report["result"].clone(), report["resumed"].clone()),
        (json!("completed"), json!(1)),
        "{report}"
    );
    assert_eq!(server.read_all_events().await.len(), 0);
    let (_, stats) = server.get("/admin/stats").await;
    assert_eq!(stats["event_count"], 0, "{stats}");
}

/// Appends `events` events to `stream` in appends of 1000, then soft-deletes it.
async fn fill_and_delete(server: &TestServer, stream: &str, events: usize) {
    for chunk in (0..events).collect::<Vec<_>>().chunks(1000) {
        let batch: Vec<Value> = chunk
            .iter()
            .map(|i| json!({"type": "Filled", "data": {"i": i}}))
            .collect();
        let (status, body) = server
            .post(&format!("/streams/{stream}"), &json!({"events": batch}))
            .await;
        assert_eq!(status, 201, "{body}");
    }
    assert_eq!(delete(server, &format!("/streams/{stream}")).await, 204);
}

/// Polls scavenge `id` until it has removed more than `removed` events while
/// still running, then cancels it and returns its final report.
async fn cancel_after_removing(server: &TestServer, id: &str, removed: u64) -> Value {
    let path = format!("/admin/scavenge/{id}");
    loop {
        let (_, report) = server.get(&path).await;
        assert_eq!(report["result"], "running", "finished too early: {report}");
        if report["events_removed"].as_u64().unwrap_or(0) > removed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(delete(server, &path).await, 202);
    let report = wait_job(server, &path).await;
    assert_eq!(report["result"], "cancelled", "{report}");
    report
}

/// A scavenge cancelled in the middle of a stream (more hidden events than one
/// removal chunk) takes that stream up again next time instead of skipping its
/// rest, and a cancel inside the last stream does not go on to compact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scavenge_cancelled_inside_a_stream_takes_that_stream_up_again() {
    let server = TestServer::start();
    // 12 removal chunks (and pauses) per stream: a wide window to cancel in.
    let per_stream = 12 * skald_server::maintenance::scavenge::CHUNK;
    fill_and_delete(&server, "big-a", per_stream).await;
    fill_and_delete(&server, "big-b", per_stream).await;
    let per_stream = per_stream as u64;

    // Cancelled inside big-a.
    let id = start_scavenge(&server, "").await;
    let first = cancel_after_removing(&server, &id, 0).await;
    let removed_first = first["events_removed"].as_u64().expect("removed");
    assert!(removed_first < per_stream, "not inside big-a: {first}");

    // Cancelled inside big-b, the last stream: it must stop, not compact.
    let id = start_scavenge(&server, "").await;
    let left_in_a = per_stream - removed_first;
    let second = cancel_after_removing(&server, &id, left_in_a).await;
    let removed_second = second["events_removed"].as_u64().expect("removed");
    assert!(
        removed_second > left_in_a && removed_second < left_in_a + per_stream,
        "not inside big-b: {second}"
    );
    assert_eq!(
        second.get("disk_bytes_after"),
        None,
        "a cancelled scavenge went on to compact: {second}"
    );
    assert_eq!(second.get("compaction_ranges_done"), None, "{second}");

    // The third run resumes after big-a (finished) and completes big-b.
    let id = start_scavenge(&server, "").await;
    let third = wait_job(&server, &format!("/admin/scavenge/{id}")).await;
    assert_eq!(
        (third["result"].clone(), third["resumed"].clone()),
        (json!("completed"), json!(1)),
        "{third}"
    );
    let total = removed_first + removed_second + third["events_removed"].as_u64().expect("n");
    assert_eq!(total, 2 * per_stream, "{first}\n{second}\n{third}");

    // Nothing hidden is left anywhere.
    let mut server = server;
    server.kill();
    let store = skald_server::storage::Store::open(server.data_dir()).expect("open");
    let counts: std::collections::HashMap<_, _> =
        store.count_keys().expect("count").into_iter().collect();
    assert_eq!(counts["events"], 0, "{counts:?}");
    assert_eq!(counts["stream_index"], 0, "{counts:?}");
    assert_eq!(counts["event_ids"], 0, "{counts:?}");
}

/// A shutdown while a scavenge compacts (each compaction range made slow by
/// the test build's fault injection: 96 ranges of at least 500 ms) stops
/// between ranges and exits well within the shutdown timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_during_the_compaction_phase_stops_between_ranges() {
    let mut server = TestServer::start_with_env(
        &["--shutdown-timeout-secs", "10"],
        &[("SKALD_FAULT_COMPACTION_DELAY_MS", "500")],
    );
    fill_and_delete(&server, "small", 100).await;
    let id = start_scavenge(&server, "").await;
    let path = format!("/admin/scavenge/{id}");
    let deadline = Instant::now() + T;
    loop {
        let (_, report) = server.get(&path).await;
        assert_eq!(report["result"], "running", "{report}");
        if report["phase"] == "compacting" {
            break;
        }
        assert!(Instant::now() < deadline, "never compacted: {report}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    let status = server.terminate();
    let took = started.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    server.restart();
    let (_, history) = server.get("/admin/scavenges").await;
    let last = &history["scavenges"][0];
    assert_eq!(last["result"], "cancelled", "{history}");
    let (done, ranges) = (
        last["compaction_ranges_done"].as_u64().expect("done"),
        last["compaction_ranges"].as_u64().expect("ranges"),
    );
    assert!(done < ranges, "{last}");
}
