//! Access control end to end: tokens from the auth file, roles per route,
//! stream prefixes in reads, `$all`, subscriptions and the catalog, SIGHUP
//! reloads, and what the client and CLI make of 401 and 403.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use skald_client::{Error, EventData, ExpectedRevision, ReadOptions, SubscribeOptions};
use skald_server::auth::{file_entry, new_token, Role};

use crate::support::{assert_error, LineReader, Secure, TestServer};

/// One token of a test's auth file.
struct Token {
    name: &'static str,
    role: Role,
    prefixes: &'static [&'static str],
    secret: String,
}

fn token(name: &'static str, role: Role, prefixes: &'static [&'static str]) -> Token {
    Token {
        name,
        role,
        prefixes,
        secret: new_token().expect("random"),
    }
}

fn write_auth_file(path: &Path, tokens: &[&Token]) {
    let text: String = tokens
        .iter()
        .map(|t| {
            let prefixes: Vec<String> = t.prefixes.iter().map(|p| (*p).to_owned()).collect();
            file_entry(t.name, t.role, &prefixes, &t.secret)
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(path, text).expect("write auth file");
}

/// A server with access control on, whose helpers use `admin`'s token.
fn secured(dir: &Path, tokens: &[&Token], admin: &Token, log: Option<&Path>) -> TestServer {
    let file = dir.join("auth.toml");
    write_auth_file(&file, tokens);
    let file = file.to_str().expect("utf-8 path").to_owned();
    TestServer::start_secure(
        &["--auth-file", &file],
        Secure {
            token: Some(admin.secret.clone()),
            log_file: log.map(Path::to_path_buf),
            ..Secure::default()
        },
    )
}

/// `method path` with `token` (or none); status and JSON body.
async fn call(
    server: &TestServer,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value, Option<String>) {
    // A client without the helpers' default token.
    let http = reqwest::Client::new();
    let mut request = http.request(method.parse().expect("method"), server.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().expect("ascii").to_owned());
    let text = response.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, json, challenge)
}

/// Who asks, the method, the path, the body, and the status they must get.
type Case<'a> = (Option<&'a str>, &'a str, &'a str, Option<Value>, u16);

fn one_event() -> Value {
    json!({"events": [{"type": "Placed", "data": {"n": 1}}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_reaches_exactly_its_routes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let admin = token("ops", Role::Admin, &[]);
    let writer = token("app", Role::Writer, &[]);
    let reader = token("report", Role::Reader, &[]);
    let orders = token("orders", Role::Writer, &["orders-"]);
    let orders_admin = token("orders-ops", Role::Admin, &["orders-"]);
    let server = secured(
        dir.path(),
        &[&admin, &writer, &reader, &orders, &orders_admin],
        &admin,
        None,
    );
    let (a, w, r, o, oa) = (
        Some(admin.secret.as_str()),
        Some(writer.secret.as_str()),
        Some(reader.secret.as_str()),
        Some(orders.secret.as_str()),
        Some(orders_admin.secret.as_str()),
    );
    // Seed one stream in and one out of the prefix.
    for stream in ["orders-1", "users-1"] {
        let (status, _, _) = call(
            &server,
            w,
            "POST",
            &format!("/streams/{stream}"),
            Some(one_event()),
        )
        .await;
        assert_eq!(status, 201);
    }
    let meta = || Some(json!({"max_count": 10}));
    let cases: Vec<Case> = vec![
        // Liveness is open; everything else needs a token.
        (None, "GET", "/health/live", None, 200),
        (None, "GET", "/streams/orders-1", None, 401),
        (None, "GET", "/info", None, 401),
        (None, "GET", "/no-such-route", None, 401),
        (a, "GET", "/no-such-route", None, 404),
        // Reader: reads, $all, subscriptions' routes, metadata, info.
        (r, "GET", "/streams/orders-1", None, 200),
        (r, "GET", "/streams/orders-1/0", None, 200),
        (r, "GET", "/streams/orders-1/metadata", None, 200),
        (r, "GET", "/all", None, 200),
        (r, "GET", "/info", None, 200),
        (r, "POST", "/streams/orders-1", Some(one_event()), 403),
        (r, "DELETE", "/streams/users-1", None, 403),
        (r, "PUT", "/streams/orders-1/metadata", meta(), 403),
        (r, "GET", "/admin/streams", None, 403),
        (r, "GET", "/admin/stats", None, 403),
        (r, "GET", "/metrics", None, 403),
        (r, "POST", "/admin/verify", None, 403),
        // Writer: reader plus appends, nothing of an admin's.
        (w, "POST", "/streams/orders-1", Some(one_event()), 201),
        (w, "DELETE", "/streams/users-1", None, 403),
        (w, "PUT", "/streams/orders-1/metadata", meta(), 403),
        (w, "GET", "/admin/streams/orders-1", None, 403),
        (w, "GET", "/admin/scavenges", None, 403),
        // A prefix-limited writer: only its streams.
        (o, "POST", "/streams/orders-2", Some(one_event()), 201),
        (o, "GET", "/streams/orders-2", None, 200),
        (o, "POST", "/streams/users-2", Some(one_event()), 403),
        (o, "GET", "/streams/users-1", None, 403),
        (o, "GET", "/streams/users-1/0", None, 403),
        (o, "GET", "/streams/users-1/metadata", None, 403),
        (o, "GET", "/subscriptions/streams/users-1", None, 403),
        // A prefix-limited admin: its streams' admin work, no server-wide work.
        (oa, "PUT", "/streams/orders-2/metadata", meta(), 200),
        (oa, "GET", "/admin/streams/orders-2", None, 200),
        (oa, "GET", "/admin/streams/users-1", None, 403),
        (oa, "DELETE", "/streams/users-1", None, 403),
        (oa, "GET", "/admin/stats", None, 403),
        (oa, "POST", "/admin/scavenge?dry_run=true", None, 403),
        (oa, "GET", "/metrics", None, 403),
        (oa, "DELETE", "/streams/orders-2", None, 204),
        // Admin: everything.
        (a, "PUT", "/streams/orders-1/metadata", meta(), 200),
        (a, "GET", "/admin/streams", None, 200),
        (a, "GET", "/admin/stats", None, 200),
        (a, "GET", "/metrics", None, 200),
        (a, "GET", "/admin/verifies", None, 200),
        (a, "DELETE", "/streams/users-1", None, 204),
    ];
    let (mut unauthorized, mut forbidden) = (0, 0);
    for (token, method, path, body, want) in cases {
        let who = [&admin, &writer, &reader, &orders, &orders_admin]
            .iter()
            .find(|t| Some(t.secret.as_str()) == token)
            .map_or("no token", |t| t.name);
        let (status, json, challenge) = call(&server, token, method, path, body).await;
        assert_eq!(status, want, "{who}: {method} {path}: {json}");
        match status {
            401 => {
                unauthorized += 1;
                assert_error(status, &json, 401, "unauthorized");
                assert_eq!(challenge.as_deref(), Some(r#"Bearer realm="skald""#));
            }
            403 => {
                forbidden += 1;
                assert_error(status, &json, 403, "forbidden");
            }
            _ => {}
        }
    }

    // An unknown token, or another scheme, is a 401 too; the challenge says
    // which.
    let (status, json, challenge) = call(&server, Some("skald_nope"), "GET", "/all", None).await;
    assert_error(status, &json, 401, "unauthorized");
    assert_eq!(
        challenge.as_deref(),
        Some(r#"Bearer realm="skald", error="invalid_token""#)
    );
    let basic = reqwest::Client::new()
        .get(server.url("/all"))
        .basic_auth("ops", Some(&admin.secret))
        .send()
        .await
        .expect("request");
    assert_eq!(basic.status(), 401);

    // /info names paths only to an admin of the whole server.
    let (_, info, _) = call(&server, a, "GET", "/info", None).await;
    assert!(info["data_dir"].is_string(), "{info}");
    assert!(info["worker_threads"].is_u64(), "{info}");
    assert_eq!(info["auth"], true);
    for limited in [r, oa] {
        let (_, info, _) = call(&server, limited, "GET", "/info", None).await;
        assert!(info.get("data_dir").is_none(), "{info}");
        assert!(info.get("worker_threads").is_none(), "{info}");
    }

    // Refusals are counted.
    // The two 401s after the table.
    let metric = |name: &'static str| server.metric(name);
    assert_eq!(
        metric("skald_auth_unauthorized_total").await,
        Some(unauthorized + 2)
    );
    assert_eq!(metric("skald_auth_forbidden_total").await, Some(forbidden));
    assert_eq!(metric("skald_auth_tokens").await, Some(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_limited_token_sees_only_its_streams_and_its_checkpoints_still_advance() {
    let dir = tempfile::tempdir().expect("temp dir");
    let admin = token("ops", Role::Admin, &[]);
    let limited = token("orders", Role::Admin, &["orders-", "billing-"]);
    let server = secured(dir.path(), &[&admin, &limited], &admin, None);
    let client = server.client();
    let event = |n: u64| EventData::json("E", &json!({ "n": n })).expect("event");
    // Interleaved, and a long run of others' events at the end.
    let mut mine = Vec::new();
    for n in 0..12u64 {
        let stream = match n % 3 {
            0 => format!("orders-{n}"),
            1 => format!("users-{n}"),
            _ => format!("billing-{n}"),
        };
        let result = client
            .append(&stream, ExpectedRevision::Any, [event(n)])
            .await
            .expect("append");
        if !stream.starts_with("users-") {
            mine.push((stream, result.first_position));
        }
    }
    for n in 0..40u64 {
        client
            .append(&format!("users-x{n}"), ExpectedRevision::Any, [event(n)])
            .await
            .expect("append");
    }
    let head = client
        .info()
        .await
        .expect("info")
        .head_position
        .expect("head");

    // $all read through skald-client: only the token's streams, in order.
    let limited_client = server.client_with(Some(&limited.secret));
    let seen: Vec<(String, u64)> = limited_client
        .read_all(ReadOptions::default().page_size(5))
        .map(|e| e.expect("event"))
        .map(|e| (e.stream, e.position))
        .collect()
        .await;
    assert_eq!(seen, mine);
    // A page past the last of its events still moves the position on, to the head.
    let (status, page, _) = call(
        &server,
        Some(&limited.secret),
        "GET",
        &format!("/all?from={}", mine.last().expect("events").1 + 1),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(page["events"], json!([]));
    assert_eq!(page["next_position"], head + 1, "{page}");
    // The query's own filter narrows within the token's streams, never beyond.
    let (_, page, _) = call(
        &server,
        Some(&limited.secret),
        "GET",
        "/all?stream_prefix=users-",
        None,
    )
    .await;
    assert_eq!(page["events"], json!([]));

    // A long-poll from the head wakes for the token's event only: another
    // stream's commit does not end it.
    let poll = {
        let http = reqwest::Client::new();
        let url = server.url(&format!("/all?from={}&wait_ms=20000", head + 1));
        let secret = limited.secret.clone();
        tokio::spawn(async move {
            let response = http
                .get(url)
                .bearer_auth(secret)
                .send()
                .await
                .expect("long-poll");
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.expect("page")
        })
    };
    server.wait_for_gauge("long_polls_waiting", 1).await;
    let other = client
        .append("users-poll", ExpectedRevision::Any, [event(1)])
        .await
        .expect("append");
    let own = client
        .append("billing-poll", ExpectedRevision::Any, [event(2)])
        .await
        .expect("append");
    let page = poll.await.expect("long-poll task");
    let polled: Vec<&str> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["stream"].as_str().expect("stream"))
        .collect();
    assert_eq!(polled, ["billing-poll"], "{page}");
    assert_eq!(page["events"][0]["position"], own.first_position);
    assert!(other.first_position < own.first_position);
    let head = own.first_position;
    mine.push(("billing-poll".to_owned(), own.first_position));

    // A subscription: the token's events, then checkpoints that pass others'.
    let mut subscription = LineReader::new(
        reqwest::Client::new()
            .get(server.url("/subscriptions/all?checkpoint_every=1"))
            .bearer_auth(&limited.secret)
            .send()
            .await
            .expect("subscribe"),
    );
    let mut streams = Vec::new();
    loop {
        let line = subscription
            .next_json(Duration::from_secs(10))
            .await
            .expect("line");
        match line["type"].as_str() {
            Some("event") => {
                streams.push(line["event"]["stream"].as_str().expect("stream").to_owned())
            }
            Some("caught_up") => {
                assert_eq!(line["position"], head, "{line}");
                break;
            }
            _ => {}
        }
    }
    assert_eq!(
        streams,
        mine.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>()
    );
    // Live: another's event moves the checkpoint on; its own arrives.
    let other = client
        .append("users-live", ExpectedRevision::Any, [event(1)])
        .await
        .expect("append");
    let own = client
        .append("orders-live", ExpectedRevision::Any, [event(2)])
        .await
        .expect("append");
    let mut checkpoint = None;
    loop {
        let line = subscription
            .next_json(Duration::from_secs(10))
            .await
            .expect("line");
        match line["type"].as_str() {
            Some("checkpoint") => checkpoint = line["position"].as_u64(),
            Some("event") => {
                assert_eq!(line["event"]["stream"], "orders-live", "{line}");
                assert_eq!(line["event"]["position"], own.first_position);
                break;
            }
            _ => {}
        }
    }
    assert!(checkpoint >= Some(other.first_position), "{checkpoint:?}");

    // The typed client's subscription skips others' events the same way.
    let mut typed = limited_client.subscribe_all(SubscribeOptions::default().from(head + 1));
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match typed.next().await.expect("open").expect("message") {
                skald_client::SubscriptionMessage::Event(e) => break e,
                _ => continue,
            }
        }
    })
    .await
    .expect("an event within 10 s");
    assert_eq!(first.stream, "orders-live");

    // The catalog lists only the token's streams, paged in name order.
    let mut listed = Vec::new();
    let mut after = String::new();
    loop {
        let (status, page, _) = call(
            &server,
            Some(&limited.secret),
            "GET",
            &format!("/admin/streams?limit=2&after={after}"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{page}");
        for s in page["streams"].as_array().expect("streams") {
            listed.push(s["stream"].as_str().expect("name").to_owned());
        }
        match page["next_after"].as_str() {
            Some(next) => after = next.to_owned(),
            None => break,
        }
    }
    let mut expected: Vec<String> = mine.iter().map(|(s, _)| s.clone()).collect();
    expected.push("orders-live".into());
    expected.sort();
    assert_eq!(listed, expected);
    let (_, page, _) = call(
        &server,
        Some(&limited.secret),
        "GET",
        "/admin/streams?prefix=users-",
        None,
    )
    .await;
    assert_eq!(page["streams"], json!([]));
    let (_, page, _) = call(
        &server,
        Some(&limited.secret),
        "GET",
        "/admin/streams?prefix=orders-3",
        None,
    )
    .await;
    assert_eq!(
        page["streams"].as_array().expect("streams").len(),
        1,
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_auth_file_and_a_bad_file_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("server.log");
    let admin = token("ops", Role::Admin, &[]);
    let old = token("old-app", Role::Writer, &[]);
    let server = secured(dir.path(), &[&admin, &old], &admin, Some(&log));
    let new = token("new-app", Role::Reader, &[]);
    let file = dir.path().join("auth.toml");

    assert_eq!(
        call(&server, Some(&new.secret), "GET", "/all", None)
            .await
            .0,
        401
    );
    write_auth_file(&file, &[&admin, &new]);
    hangup(&server);
    wait_for_counter(&server, "skald_auth_reloads_total", 1).await;
    assert_eq!(
        call(&server, Some(&new.secret), "GET", "/all", None)
            .await
            .0,
        200
    );
    assert_eq!(
        call(&server, Some(&old.secret), "GET", "/all", None)
            .await
            .0,
        401
    );

    // A broken file is refused; the tokens in force stay.
    std::fs::write(&file, "[[tokens]]\nname = \"x\"\n").expect("write");
    hangup(&server);
    wait_for_counter(&server, "skald_auth_reload_failures_total", 1).await;
    assert_eq!(
        call(&server, Some(&new.secret), "GET", "/all", None)
            .await
            .0,
        200
    );
    assert_eq!(counter(&server, "skald_auth_tokens").await, 2);

    // The log names what changed, never a token or its hash.
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("added token 'new-app'"), "{text}");
    assert!(text.contains("removed token 'old-app'"), "{text}");
    assert!(text.contains("auth file not reloaded"), "{text}");
    for secret in [&admin.secret, &old.secret, &new.secret] {
        assert!(!text.contains(secret.as_str()));
        let hash = skald_server::auth::hash_token_hex(secret);
        assert!(!text.contains(&hash));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reports_401_and_403_as_their_own_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let admin = token("ops", Role::Admin, &[]);
    let reader = token("report", Role::Reader, &[]);
    let server = secured(dir.path(), &[&admin, &reader], &admin, None);
    let event = || EventData::json("E", &json!({})).expect("event");

    let anonymous = server.client_with(None);
    let err = anonymous
        .append("s", ExpectedRevision::Any, [event()])
        .await
        .expect_err("401");
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
    assert!(!err.is_retryable());
    let err = anonymous.info().await.expect_err("401");
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");

    let read_only = server.client_with(Some(&reader.secret));
    let err = read_only
        .append("s", ExpectedRevision::Any, [event()])
        .await
        .expect_err("403");
    match &err {
        Error::Forbidden { message } => assert!(message.contains("report"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(!err.is_retryable());
    server
        .client()
        .append("s", ExpectedRevision::Any, [event()])
        .await
        .expect("admin appends");
    let page = read_only
        .read_stream_page("s", &ReadOptions::default())
        .await
        .expect("reader reads");
    assert_eq!(page.events.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_makes_tokens_and_sends_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let skald = env!("CARGO_BIN_EXE_skald");
    let made = Command::new(skald)
        .args([
            "token",
            "new",
            "--name",
            "cli",
            "--role",
            "writer",
            "--stream-prefix",
            "cli-",
        ])
        .output()
        .expect("skald token new");
    assert!(made.status.success(), "{made:?}");
    let stdout = String::from_utf8(made.stdout).expect("utf-8");
    let (secret, entry) = stdout.split_once('\n').expect("token line, then the entry");
    assert!(
        secret.starts_with("skald_") && !entry.contains(secret),
        "{stdout}"
    );
    let admin = token("ops", Role::Admin, &[]);
    write_auth_file(&dir.path().join("auth.toml"), &[&admin]);
    let file = dir.path().join("auth.toml");
    let mut text = std::fs::read_to_string(&file).expect("read");
    text.push_str(entry);
    std::fs::write(&file, text).expect("write");
    let server = TestServer::start_secure(
        &["--auth-file", file.to_str().expect("utf-8")],
        Secure {
            token: Some(admin.secret.clone()),
            ..Secure::default()
        },
    );

    let cli = |args: &[&str], token: Option<&str>| {
        let mut command = Command::new(skald);
        command.args(args).args(["--url", &server.base]);
        command.env_remove("SKALD_TOKEN");
        if let Some(token) = token {
            command.env("SKALD_TOKEN", token);
        }
        command.output().expect("run skald")
    };
    let append = ["append", "cli-1", "--type", "E", "--data", "{}"];
    let refused = cli(&append, None);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("unauthorized"),
        "{refused:?}"
    );
    let stored = cli(&append, Some(secret));
    assert!(stored.status.success(), "{stored:?}");
    let outside = cli(
        &["append", "other", "--type", "E", "--data", "{}"],
        Some(secret),
    );
    assert!(
        String::from_utf8_lossy(&outside.stderr).contains("forbidden"),
        "{outside:?}"
    );
    // --token works as well as the environment variable.
    let mut read = cli(&["read", "cli-1", "--json", "--token", secret], None);
    assert!(read.status.success(), "{read:?}");
    let line: Value =
        serde_json::from_slice(read.stdout.split(|b| *b == b'\n').next().expect("line"))
            .expect("json");
    assert_eq!(line["stream"], "cli-1");
    read = cli(&["stats"], Some(secret));
    assert!(
        String::from_utf8_lossy(&read.stderr).contains("forbidden"),
        "{read:?}"
    );
}

#[test]
fn a_bad_auth_file_stops_the_server_at_start_with_the_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("auth.toml");
    std::fs::write(
        &file,
        "[[tokens]]\nname = \"x\"\nrole = \"root\"\nsha256 = \"00\"\n",
    )
    .expect("write");
    for (path, expected) in [
        (file.clone(), "unknown variant"),
        (dir.path().join("missing.toml"), "cannot read the auth file"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_skald"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--auth-file")
            .arg(&path)
            .output()
            .expect("run skald");
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{stderr}");
    }
}

/// A counter or gauge of `/metrics`, 0 when absent.
async fn counter(server: &TestServer, name: &str) -> u64 {
    server.metric(name).await.unwrap_or(0)
}

async fn wait_for_counter(server: &TestServer, name: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while counter(server, name).await < n {
        assert!(Instant::now() < deadline, "{name} never reached {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn hangup(server: &TestServer) {
    let status = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
}
