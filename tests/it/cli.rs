//! The `skald` client subcommands against a running server.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::TestServer;

fn skald(server: &TestServer, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_skald"))
        .args(args)
        .env("SKALD_URL", &server.base)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run skald")
}

fn stdout_lines(output: &Output) -> Vec<String> {
    String::from_utf8(output.stdout.clone())
        .expect("UTF-8")
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_read_read_all_and_tail() {
    let server = TestServer::start();
    let out = tokio::task::block_in_place(|| {
        skald(
            &server,
            &[
                "append",
                "order-1",
                "--type",
                "OrderPlaced",
                "--data",
                r#"{"total":3}"#,
                "--expected",
                "no_stream",
            ],
        )
    });
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("revision 0, position 0"));
    let out = tokio::task::block_in_place(|| {
        skald(
            &server,
            &[
                "append",
                "order-1",
                "--type",
                "OrderPaid",
                "--data",
                "{}",
                "--expected",
                "no_stream",
            ],
        )
    });
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: wrong expected revision"), "{err}");
    assert!(!err.contains("backtrace"), "{err}");
    let out = tokio::task::block_in_place(|| {
        skald(
            &server,
            &[
                "append",
                "user-1",
                "--type",
                "UserCreated",
                "--data",
                r#"{"n":"ann"}"#,
                "--metadata",
                r#"{"by":"cli"}"#,
                "--json",
            ],
        )
    });
    let appended: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(appended["first_position"], 1);

    let out = tokio::task::block_in_place(|| skald(&server, &["read", "order-1"]));
    let lines = stdout_lines(&out);
    assert!(
        lines[0].contains("POSITION") && lines[0].contains("TYPE"),
        "{lines:?}"
    );
    assert!(
        lines[1].contains("OrderPlaced") && lines[1].contains(r#"{"total":3}"#),
        "{lines:?}"
    );
    assert_eq!(lines.len(), 2);

    let out = tokio::task::block_in_place(|| skald(&server, &["read-all", "--json"]));
    let events: Vec<Value> = stdout_lines(&out)
        .iter()
        .map(|l| serde_json::from_str(l).expect("NDJSON"))
        .collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["metadata"]["by"], "cli");
    let out = tokio::task::block_in_place(|| {
        skald(&server, &["read-all", "--stream-prefix", "user-", "--json"])
    });
    assert_eq!(stdout_lines(&out).len(), 1);
    let out = tokio::task::block_in_place(|| {
        skald(
            &server,
            &["read", "order-1", "--backward", "--limit", "1", "--json"],
        )
    });
    assert_eq!(stdout_lines(&out).len(), 1);

    // tail follows live: start it, append, read the line it prints.
    let mut tail = Command::new(env!("CARGO_BIN_EXE_skald"))
        .args(["tail", "--json"])
        .env("SKALD_URL", &server.base)
        .stdout(Stdio::piped())
        .spawn()
        .expect("tail");
    server.wait_for_gauge("live_subscriptions", 1).await;
    let (status, _) = server
        .append("live-1", serde_json::json!("any"), &["Live"])
        .await;
    assert_eq!(status, 201);
    let stdout = tail.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read");
        line
    });
    let line = tokio::time::timeout(Duration::from_secs(20), line)
        .await
        .expect("a line within 20 s")
        .expect("task");
    let _ = tail.kill();
    let _ = tail.wait();
    let event: Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(
        (event["stream"].as_str(), event["position"].as_u64()),
        (Some("live-1"), Some(2))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_subcommands_manage_streams_and_run_jobs() {
    let server = TestServer::start();
    for name in ["acct-1", "acct-2", "other"] {
        server
            .append(name, serde_json::json!("any"), &["A", "B", "C"])
            .await;
    }
    let run = |args: &[&str]| tokio::task::block_in_place(|| skald(&server, args));

    let out = run(&["streams", "--prefix", "acct-"]);
    let lines = stdout_lines(&out);
    assert!(out.status.success(), "{out:?}");
    assert!(lines[0].starts_with("STREAM"), "{lines:?}");
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines[1].starts_with("acct-1") && lines[1].contains("live"),
        "{lines:?}"
    );

    let limits = [
        "meta",
        "acct-1",
        "--max-count",
        "1",
        "--max-age",
        "30d",
        "--custom",
        r#"{"team":"ledger"}"#,
    ];
    let out = run(&limits);
    assert!(out.status.success(), "{out:?}");
    let meta: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        (meta["max_count"].clone(), meta["max_age_secs"].clone()),
        (serde_json::json!(1), serde_json::json!(2_592_000))
    );
    assert_eq!(meta["version"], 0, "{meta}");
    // A change that expects another version fails and changes nothing; one
    // that expects the current version goes through.
    for (expected, needs) in [
        ("5", "actual"),
        ("no_stream", "actual"),
        ("soon", "--expected-version"),
    ] {
        let out = run(&[
            "meta",
            "acct-1",
            "--max-count",
            "2",
            "--expected-version",
            expected,
        ]);
        assert!(!out.status.success(), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(needs),
            "{out:?}"
        );
    }
    let out = run(&["meta", "acct-1", "--expected-version", "0"]);
    assert!(
        !out.status.success(),
        "an expectation without a change: {out:?}"
    );
    let out = run(&["meta", "acct-1"]);
    let unchanged: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        (unchanged["max_count"].clone(), unchanged["version"].clone()),
        (serde_json::json!(1), serde_json::json!(0))
    );
    let out = run(&[&limits[..], &["--expected-version", "0"]].concat());
    assert!(out.status.success(), "{out:?}");
    let meta: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        (meta["max_count"].clone(), meta["version"].clone()),
        (serde_json::json!(1), serde_json::json!(1))
    );

    let out = run(&["stream", "acct-1", "--json"]);
    let info: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        (info["event_count"].clone(), info["first_revision"].clone()),
        (serde_json::json!(1), serde_json::json!(2))
    );

    let out = run(&["delete", "acct-2"]);
    assert!(out.status.success(), "{out:?}");
    let out = run(&["delete", "other", "--hard"]);
    assert!(out.status.success(), "{out:?}");
    let out = run(&["streams", "--json"]);
    let states: Vec<(String, bool, bool)> = stdout_lines(&out)
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).expect("NDJSON"))
        .map(|v| {
            (
                v["stream"].as_str().expect("s").to_owned(),
                v["deleted"].as_bool().expect("d"),
                v["tombstoned"].as_bool().expect("t"),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("acct-1".to_owned(), false, false),
            ("acct-2".to_owned(), true, false),
            ("other".to_owned(), false, true)
        ]
    );

    let out = run(&["scavenge", "--wait", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["result"], "completed");
    assert_eq!(report["counters"]["events_removed"], 2 + 3 + 3, "{report}");
    let out = run(&["verify", "--wait"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("completed"));
    let out = run(&["stats", "--json"]);
    let stats: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(stats["event_count"], 1);
    let out = run(&["meta", "acct-1", "--max-age", "soon"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--max-age"),
        "{out:?}"
    );
}

/// JSON nested `depth` levels: `{"n":{"n":...{}...}}`.
fn nested(depth: usize) -> serde_json::Value {
    (1..depth).fold(
        serde_json::json!({}),
        |inner, _| serde_json::json!({ "n": inner }),
    )
}

/// Whatever nesting the server accepts, the client (pages, `$all`,
/// subscriptions) and the CLI read back; one level deeper is a 400 that names
/// the limit, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deepest_json_the_server_accepts_reads_back_everywhere() {
    use futures::StreamExt;
    let server = TestServer::start();
    let limit = 64;
    let body = |depth: usize| serde_json::json!({"events": [{"type": "Deep", "data": nested(depth), "metadata": nested(depth)}]});
    let (status, answer) = server.post("/streams/deep", &body(limit)).await;
    assert_eq!(status, 201, "{answer}");
    for too_deep in [
        serde_json::json!({"events": [{"type": "Deep", "data": nested(limit + 1)}]}),
        serde_json::json!({"events": [{"type": "Deep", "data": {}, "metadata": nested(limit + 1)}]}),
        serde_json::json!({"events": [{"type": "Deep", "data": nested(200)}]}),
    ] {
        let (status, answer) = server.post("/streams/deep", &too_deep).await;
        crate::support::assert_error(status, &answer, 400, "invalid_body");
        assert!(
            answer["message"]
                .as_str()
                .unwrap_or("")
                .contains("the limit is 64"),
            "{answer}"
        );
    }
    let response = server
        .http
        .put(server.url("/streams/deep/metadata"))
        .json(&serde_json::json!({"custom": nested(limit + 1)}))
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), 400);

    let client = server.client();
    let page = client
        .read_stream_page("deep", &skald_client::ReadOptions::default())
        .await
        .expect("the client reads the stream");
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.events[0].data, nested(limit));
    assert_eq!(page.events[0].metadata, Some(nested(limit)));
    let all = client
        .read_all_page(&skald_client::ReadOptions::default())
        .await
        .expect("the client reads $all");
    assert_eq!(all.events[0].data, nested(limit));
    let mut live = client.subscribe_all(skald_client::SubscribeOptions::default());
    match live.next().await.expect("a message").expect("decoded") {
        skald_client::SubscriptionMessage::Event(event) => assert_eq!(event.data, nested(limit)),
        other => panic!("{other:?}"),
    }
    let out = tokio::task::block_in_place(|| skald(&server, &["read", "deep", "--json"]));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout_lines(&out).len(), 1);
    let out = tokio::task::block_in_place(|| skald(&server, &["read", "deep"]));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        server.read_all_events().await.len(),
        1,
        "the refused appends stored nothing"
    );
}
