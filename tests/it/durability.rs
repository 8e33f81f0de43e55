//! Restarts: nothing acknowledged is lost to `kill -9`, no position is reused,
//! graceful shutdown exits 0, and corrupt records are reported, not returned.

use std::sync::Arc;

use serde_json::json;

use crate::support::{self, assert_error, verify_clean, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_appends_survive_kill_9() {
    let mut server = TestServer::start();
    for round in 0..3u64 {
        // Concurrent writers, so that group commits hold several requests.
        let shared = Arc::new(server);
        let mut tasks = Vec::new();
        for client in 0..8 {
            let s = Arc::clone(&shared);
            tasks.push(tokio::spawn(async move {
                for _ in 0..20 {
                    let (status, body) = s
                        .append(&format!("k-{round}-{client}"), json!("any"), &["A"])
                        .await;
                    assert_eq!(status, 201, "{body}");
                }
            }));
        }
        for task in tasks {
            task.await.expect("writer task");
        }
        server = Arc::into_inner(shared).expect("writer tasks are done");
        let before = server.read_all_events().await;
        assert_eq!(before.len() as u64, 161 * round + 160);
        // The kill leaves the live WAL with a zero-filled preallocated tail,
        // which the recovery must read past.
        let wals = support::wal_lengths(server.data_dir());
        assert!(
            wals.iter().any(|&len| len >= 1 << 20),
            "no preallocated WAL: {wals:?}"
        );

        server.kill_and_restart();
        let after = server.read_all_events().await;
        assert_eq!(
            after, before,
            "round {round}: the store changed across kill -9"
        );
        // Positions and revisions continue where they were; nothing is reused.
        let (_, info) = server.get("/info").await;
        assert_eq!(info["head_position"], after.len() as u64 - 1);
        let (status, body) = server
            .append(&format!("k-{round}-0"), json!(19), &["B"])
            .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["first_revision"], 20);
        assert_eq!(body["first_position"], after.len() as u64);
    }
}

/// RocksDB renames a WAL past its use into the next one (recycling), whose
/// blocks then still hold the records of its earlier life after the new
/// ones: a `kill -9` while appends are in such a file, and the restart finds
/// every acknowledged append and nothing of the file's earlier life.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_appends_survive_kill_9_in_a_recycled_wal() {
    let mut server = TestServer::start();
    let log = server.data_dir().join("LOG");
    let reused = || std::fs::read_to_string(&log).is_ok_and(|text| text.contains("reusing log"));
    // About 14 MB per request; a WAL holds about 64 MiB, and one is reused
    // after about three (the column families holding the oldest are
    // flushed once the WALs pass 128 MiB).
    let pad = "x".repeat(900_000);
    let filler = json!({
        "expected_revision": "any",
        "events": (0..16).map(|i| json!({"type": "Fill", "data": {"pad": pad, "i": i}}))
            .collect::<Vec<_>>(),
    });
    let mut filled = 0u64;
    while !reused() {
        assert!(
            filled < 16 * 64,
            "no WAL reused after {filled} events of 900 kB"
        );
        let (status, body) = server.post("/streams/fill", &filler).await;
        assert_eq!(status, 201, "{body}");
        filled += 16;
    }
    // Acknowledged while the live WAL is a recycled file.
    for i in 0..20u64 {
        let expected = if i == 0 {
            json!("no_stream")
        } else {
            json!(i - 1)
        };
        let (status, body) = server.append("after", expected, &["After"]).await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["first_position"], filled + i);
    }
    let (_, before) = server.get("/streams/after?limit=100").await;

    server.kill_and_restart();
    let (status, after) = server.get("/streams/after?limit=100").await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(
        after["events"], before["events"],
        "the store changed across kill -9"
    );
    assert_eq!(after["events"].as_array().map(Vec::len), Some(20));
    let (_, info) = server.get("/info").await;
    assert_eq!(info["head_position"], filled + 19);
    // Nothing of the file's earlier life came back as new appends, and the
    // next position is the one after the last acknowledged.
    let (status, body) = server.append("after", json!(19), &["After"]).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["first_position"], filled + 20);
}

/// Idempotency across `kill -9`: the id index keeps the newest ids in memory
/// (runs of 64 here), so at the kill some ids are in `event_ids` and some only
/// in the log; after the restart every retry is still recognised, as a replay
/// of its original answer or as a duplicate elsewhere, once the id filter
/// (rebuilt from `event_ids` at the start) answers lookups.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_are_recognised_after_kill_9_wherever_their_ids_were() {
    let mut server = TestServer::start_with_env(&[], &[("SKALD_FAULT_ID_RUN", "64")]);
    let batch = |b: u64| {
        let events: Vec<_> = (0..10)
            .map(|i| json!({"id": format!("01900000-0000-7000-8000-{:012x}", b * 10 + i), "type": "T", "data": {"b": b}}))
            .collect();
        json!({"expected_revision": "any", "events": events})
    };
    let mut answers = Vec::new();
    for b in 0..40u64 {
        let (status, body) = server
            .post(&format!("/streams/r-{}", b % 5), &batch(b))
            .await;
        assert_eq!(status, 201, "{body}");
        answers.push(body);
    }
    // Wait (appending probes) until the indexer has taken every whole run:
    // then between 1 and 63 ids are in memory only, the rest on disk.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut probes = 0;
    loop {
        let (status, body) = server.append("probe", json!("any"), &["P"]).await;
        assert_eq!(status, 201, "{body}");
        probes += 1;
        let unindexed = server
            .metric("skald_unindexed_event_ids")
            .await
            .expect("gauge");
        if (1..64).contains(&unindexed) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the id index never caught up: {unindexed}"
        );
    }

    server.kill_and_restart();
    server.wait_for_metric("skald_id_filter_ready", 1).await;
    let on_disk = server
        .metric("skald_id_lookups_on_disk_total")
        .await
        .expect("counter");
    for (b, answer) in (0..40u64).zip(&answers) {
        let (status, body) = server
            .post(&format!("/streams/r-{}", b % 5), &batch(b))
            .await;
        assert_eq!(
            (status, &body),
            (200, answer),
            "batch {b} after the restart"
        );
        let (status, body) = server.post("/streams/elsewhere", &batch(b)).await;
        assert_error(status, &body, 409, "duplicate_event_id");
    }
    let (_, info) = server.get("/info").await;
    assert_eq!(
        info["head_position"],
        400 + probes - 1,
        "the retries wrote nothing"
    );
    // The filter let the retried ids that were in `event_ids` through.
    let looked_up = server
        .metric("skald_id_lookups_on_disk_total")
        .await
        .expect("counter");
    assert!(looked_up > on_disk, "{on_disk} -> {looked_up}");
    verify_clean(&server).await;
}

#[tokio::test]
async fn sigterm_flushes_and_a_restart_sees_everything() {
    let mut server = TestServer::start();
    server
        .append("g", json!("no_stream"), &["A", "B", "C"])
        .await;
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    server.restart();
    let (_, page) = server.get("/streams/g").await;
    assert_eq!(page["last_revision"], 2);
    let (status, body) = server.append("g", json!(2), &["D"]).await;
    assert_eq!((status, body["first_position"].clone()), (201, json!(3)));
}

#[tokio::test]
async fn a_corrupt_record_is_an_error_naming_its_position() {
    let mut server = TestServer::start();
    server
        .append("c", json!("no_stream"), &["A", "B", "C"])
        .await;
    assert!(server.terminate().success());
    skald_server::storage::fault::flip_bit(server.data_dir(), 1).expect("corrupt the record");
    server.restart();

    let (status, body) = server.get("/streams/c/1").await;
    assert_eq!(
        (status, body["error"].clone()),
        (500, json!("corrupt_event")),
        "{body}"
    );
    assert_eq!(body["position"], 1);
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains("position 1"),
        "{body}"
    );
    for path in ["/streams/c", "/all", "/all?direction=backward"] {
        let (status, body) = server.get(path).await;
        assert_eq!(
            (status, body["position"].clone()),
            (500, json!(1)),
            "{path}: {body}"
        );
    }
    // The intact neighbours still read.
    assert_eq!(server.get("/streams/c/0").await.0, 200);
    assert_eq!(server.get("/streams/c/2").await.0, 200);
    assert_eq!(server.get("/all?from=2").await.0, 200);
}
