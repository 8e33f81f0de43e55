//! Online backup while writers run, offline restore, and the restored server.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use crate::support::{assert_error, wait_job, TestServer};

/// Runs `skald` with `args`; returns (success, stdout, stderr).
fn skald(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skald"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run skald");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// Every stream's last revision, from the catalog.
async fn last_revisions(server: &TestServer) -> BTreeMap<String, Value> {
    let (status, page) = server.get("/admin/streams?limit=1000").await;
    assert_eq!(status, 200, "{page}");
    page["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .map(|s| {
            (
                s["stream"].as_str().expect("name").to_owned(),
                s["last_revision"].clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_taken_under_load_restores_to_exactly_its_head() {
    let temp = tempfile::tempdir().expect("temp");
    let backups = temp.path().join("backups");
    let backup_flag = backups.to_str().expect("utf-8").to_owned();
    let server = Arc::new(TestServer::start_with(&["--backup-dir", &backup_flag]));

    // Streams in several states: with custom metadata, soft-deleted, tombstoned.
    for stream in ["kept", "deleted", "gone"] {
        let (status, body) = server.append(stream, json!("any"), &["A", "B"]).await;
        assert_eq!(status, 201, "{body}");
    }
    let response = server
        .http
        .put(server.url("/streams/kept/metadata"))
        .json(&json!({"max_count": 100, "custom": {"owner": "billing"}}))
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), 200);
    for (stream, hard) in [("deleted", false), ("gone", true)] {
        let url = server.url(&format!("/streams/{stream}?hard={hard}"));
        let response = server.http.delete(url).send().await.expect("delete");
        assert_eq!(response.status(), 204);
    }

    // Writers append until the backup is done (bounded in count).
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (server, stop) = (Arc::clone(&server), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut acknowledged = 0u64;
                for _ in 0..20_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let (status, body) =
                        server.append(&format!("w{w}"), json!("any"), &["E"]).await;
                    assert_eq!(status, 201, "{body}");
                    acknowledged += 1;
                }
                acknowledged
            })
        })
        .collect();
    // Some writes land before the backup starts.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while server.get("/all?direction=backward&limit=1").await.1["head_position"].as_u64() < Some(50)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the writers wrote nothing"
        );
        tokio::task::yield_now().await;
    }
    let (status, started) = server.post("/admin/backup", &json!(null)).await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().expect("id").to_owned();
    let report = wait_job(&server, &format!("/admin/backup/{id}")).await;
    assert_eq!(report["result"], "completed", "{report}");
    let head = report["head_position"].as_u64().expect("head position");
    // Keep writing a little after the backup, so the store moves past it.
    while server.get("/all?direction=backward&limit=1").await.1["head_position"].as_u64()
        <= Some(head)
    {
        tokio::task::yield_now().await;
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer");
    }
    let (_, history) = server.get("/admin/backups").await;
    assert_eq!(history["backups"][0]["id"], id.as_str());

    let original = server.read_all_events().await;
    assert!(
        original.iter().any(|e| e["position"].as_u64() > Some(head)),
        "no write after the backup"
    );
    let expected: Vec<Value> = original
        .iter()
        .filter(|e| e["position"].as_u64() <= Some(head))
        .cloned()
        .collect();

    // Restore offline into a new directory, then serve it.
    let backup = backups.join(&id);
    assert!(backup.join("skald-backup.json").is_file());
    let restored_dir = temp.path().join("restored");
    let (ok, stdout, stderr) = skald(&[
        "restore",
        "--from",
        backup.to_str().expect("utf-8"),
        "--data-dir",
        restored_dir.to_str().expect("utf-8"),
    ]);
    assert!(ok, "restore failed: {stderr}");
    assert!(
        stdout.contains(&format!("head position {head}")),
        "{stdout}"
    );
    let (ok, _, stderr) = skald(&[
        "restore",
        "--from",
        backup.to_str().expect("utf-8"),
        "--data-dir",
        restored_dir.to_str().expect("utf-8"),
    ]);
    assert!(
        !ok && stderr.contains("not empty"),
        "a second restore into the same dir: {stderr}"
    );

    let restored = TestServer::start_in(restored_dir, &[]);
    let events = restored.read_all_events().await;
    assert_eq!(events.len(), expected.len());
    assert!(
        events == expected,
        "the restored log differs from the original's up to {head}"
    );

    // Stream states: each stream's last revision is its last event up to the head.
    let mut want = BTreeMap::new();
    for e in &expected {
        want.insert(
            e["stream"].as_str().expect("stream").to_owned(),
            e["revision"].clone(),
        );
    }
    let got = last_revisions(&restored).await;
    for (stream, revision) in &want {
        if stream != "deleted" && stream != "gone" {
            assert_eq!(got.get(stream), Some(revision), "{stream}");
        }
    }
    let (_, meta) = restored.get("/streams/kept/metadata").await;
    assert_eq!(
        (&meta["max_count"], &meta["custom"]),
        (&json!(100), &json!({"owner": "billing"}))
    );
    assert_eq!(restored.get("/streams/deleted").await.0, 404);
    assert_eq!(restored.get("/streams/gone").await.0, 410);

    // The restored server takes appends after the backup's head.
    let (status, body) = restored.append("after", json!("no_stream"), &["New"]).await;
    assert_eq!(
        (status, body["first_position"].as_u64()),
        (201, Some(head + 1)),
        "{body}"
    );
}

#[tokio::test]
async fn backups_are_off_without_a_backup_dir() {
    let server = TestServer::start();
    let (status, body) = server.post("/admin/backup", &json!(null)).await;
    assert_error(status, &body, 409, "backup_not_configured");
}
