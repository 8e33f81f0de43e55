//! Optimistic concurrency under a race: many writers, one stream, one winner per revision.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::TestServer;

const CLIENTS: usize = 16;
const TARGET_EVENTS: u64 = 300;
const MAX_ATTEMPTS_PER_CLIENT: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_writers_get_exactly_one_winner_per_revision() {
    let server = Arc::new(TestServer::start());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let server = Arc::clone(&server);
        tasks.push(tokio::spawn(async move {
            let mut wins = Vec::new();
            let mut conflicts = 0;
            for attempt in 0..MAX_ATTEMPTS_PER_CLIENT {
                if Instant::now() > deadline {
                    break;
                }
                let (status, page) = server.get("/streams/race?direction=backward&limit=1").await;
                let last = match status {
                    404 => None,
                    200 => page["last_revision"].as_u64(),
                    other => panic!("read failed: {other} {page}"),
                };
                if last.is_some_and(|l| l + 1 >= TARGET_EVENTS) {
                    break;
                }
                let expected = last.map_or(json!("no_stream"), |l| json!(l));
                let id = uuid::Uuid::now_v7();
                let body = json!({
                    "expected_revision": expected,
                    "events": [{"id": id, "type": "Raced", "data": {"client": client, "attempt": attempt}}]
                });
                let (status, result) = server.post("/streams/race", &body).await;
                match status {
                    201 => {
                        let revision = result["first_revision"].as_u64().expect("revision");
                        assert_eq!(revision, last.map_or(0, |l| l + 1), "{result}");
                        wins.push((revision, result["first_position"].as_u64().expect("pos"), id));
                    }
                    409 => {
                        assert_eq!(result["error"], "wrong_expected_revision", "{result}");
                        conflicts += 1;
                    }
                    other => panic!("append failed: {other} {result}"),
                }
            }
            (wins, conflicts)
        }));
    }
    let mut by_revision: BTreeMap<u64, (u64, uuid::Uuid)> = BTreeMap::new();
    let mut conflicts = 0;
    for task in tasks {
        let (wins, c) = task.await.expect("client task");
        conflicts += c;
        for (revision, position, id) in wins {
            let previous = by_revision.insert(revision, (position, id));
            assert!(previous.is_none(), "two winners for revision {revision}");
        }
    }
    let acknowledged = by_revision.len() as u64;
    assert_eq!(
        acknowledged, TARGET_EVENTS,
        "the race did not finish in time"
    );
    assert!(
        conflicts > 0,
        "the clients never raced; the test proves nothing"
    );
    // No holes: revisions are exactly 0..n.
    assert_eq!(
        by_revision.keys().copied().collect::<Vec<_>>(),
        (0..acknowledged).collect::<Vec<_>>()
    );

    // The stream holds exactly the winners, in revision order.
    let mut stream_ids = Vec::new();
    let mut from = 0;
    loop {
        let (_, page) = server
            .get(&format!("/streams/race?from={from}&limit=100"))
            .await;
        for event in page["events"].as_array().expect("events") {
            stream_ids.push(event["id"].as_str().expect("id").to_owned());
        }
        match page["next_revision"].as_u64() {
            Some(next) => from = next,
            None => break,
        }
    }
    let winners: Vec<String> = by_revision.values().map(|(_, id)| id.to_string()).collect();
    assert_eq!(stream_ids, winners);

    // $all lists every acknowledged event once, in position order, without gaps.
    let all = server.read_all_events().await;
    let positions: Vec<u64> = all
        .iter()
        .map(|e| e["position"].as_u64().expect("pos"))
        .collect();
    assert_eq!(positions, (0..acknowledged).collect::<Vec<_>>());
    let all_ids: HashSet<&str> = all.iter().map(|e| e["id"].as_str().expect("id")).collect();
    assert_eq!(all_ids.len(), all.len());
    for (revision, (position, id)) in &by_revision {
        let event: &Value = &all[*position as usize];
        assert_eq!(event["id"], id.to_string());
        assert_eq!(event["revision"], *revision);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_to_many_streams_are_gap_free() {
    let server = Arc::new(TestServer::start());
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let server = Arc::clone(&server);
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..25 {
                let (status, body) = server
                    .append(
                        &format!("c-{client}"),
                        json!(if i == 0 {
                            json!("no_stream")
                        } else {
                            json!(i * 2 - 1)
                        }),
                        &["A", "B"],
                    )
                    .await;
                assert_eq!(status, 201, "{body}");
                acked.push(body["first_position"].as_u64().expect("pos"));
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.expect("task"));
    }
    let all = server.read_all_events().await;
    assert_eq!(all.len(), CLIENTS * 50);
    for (i, event) in all.iter().enumerate() {
        assert_eq!(event["position"], i as u64);
    }
    // Each two-event batch sits at consecutive positions in one stream.
    for first in acked {
        let (a, b) = (&all[first as usize], &all[first as usize + 1]);
        assert_eq!(a["stream"], b["stream"]);
        assert_eq!(
            a["revision"].as_u64().expect("rev") + 1,
            b["revision"].as_u64().expect("rev")
        );
    }
}
