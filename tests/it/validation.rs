//! Bad input: every malformed request is a 4xx with a JSON error, and stores nothing.

use serde_json::{json, Value};

use crate::support::{assert_error, TestServer};

fn one_event() -> Value {
    json!({"events": [{"type": "E", "data": {}}]})
}

#[tokio::test]
async fn malformed_bodies_name_the_problem_and_store_nothing() {
    let server = TestServer::start();
    let cases: Vec<(&str, &str, &str)> = vec![
        ("{", "invalid_body", "malformed JSON"),
        ("", "invalid_body", "malformed JSON"),
        ("[]", "invalid_body", ""),
        (r#"{"expected_revision":"any"}"#, "invalid_body", "events"),
        (r#"{"events":{}}"#, "invalid_body", "events"),
        (r#"{"events":[]}"#, "invalid_body", "1 to 10000"),
        (r#"{"events":[{"data":1}]}"#, "invalid_body", "type"),
        (r#"{"events":[{"type":"E"}]}"#, "invalid_body", "data"),
        (
            r#"{"events":[{"type":7,"data":1}]}"#,
            "invalid_body",
            "events[0].type",
        ),
        (
            r#"{"events":[{"type":"","data":1}]}"#,
            "invalid_body",
            "events[0].type",
        ),
        (
            r#"{"events":[{"type":"a\nb","data":1}]}"#,
            "invalid_body",
            "control",
        ),
        (
            r#"{"events":[{"type":"E","data":1,"id":"nope"}]}"#,
            "invalid_body",
            "events[0].id",
        ),
        (
            r#"{"events":[{"type":"E","data":1,"metadata":[1]}]}"#,
            "invalid_body",
            "metadata",
        ),
        (
            r#"{"events":[{"type":"E","data":1,"metadata":"x"}]}"#,
            "invalid_body",
            "metadata",
        ),
        (
            r#"{"events":[{"type":"E","data":1,"extra":1}]}"#,
            "invalid_body",
            "extra",
        ),
        (
            r#"{"expected_revision":-1,"events":[{"type":"E","data":1}]}"#,
            "invalid_body",
            "expected_revision",
        ),
        (
            r#"{"expected_revision":"latest","events":[{"type":"E","data":1}]}"#,
            "invalid_body",
            "expected_revision",
        ),
        (
            r#"{"expected_revision":1.5,"events":[{"type":"E","data":1}]}"#,
            "invalid_body",
            "expected_revision",
        ),
        (
            r#"{"events":[{"type":"E","data":1}]} trailing"#,
            "invalid_body",
            "malformed JSON",
        ),
    ];
    for (body, code, mention) in cases {
        let (status, response) = server.post_raw("/streams/v", body.to_owned()).await;
        assert_error(status, &response, 400, code);
        let message = response["message"].as_str().expect("message");
        assert!(
            message.contains(mention),
            "{body}: message {message:?} does not mention {mention:?}"
        );
    }
    let long_type = "T".repeat(257);
    let (status, response) = server
        .post(
            "/streams/v",
            &json!({"events": [{"type": long_type, "data": 1}]}),
        )
        .await;
    assert_error(status, &response, 400, "invalid_body");
    let too_many: Vec<Value> = (0..10_001)
        .map(|_| json!({"type": "E", "data": 0}))
        .collect();
    let (status, response) = server
        .post("/streams/v", &json!({"events": too_many}))
        .await;
    assert_error(status, &response, 400, "invalid_body");
    assert_eq!(
        server.get("/all").await.1["head_position"],
        Value::Null,
        "a rejected append stored something"
    );
}

#[tokio::test]
async fn ten_thousand_events_in_one_append_are_accepted() {
    let server = TestServer::start();
    let events: Vec<Value> = (0..10_000)
        .map(|i| json!({"type": "E", "data": i}))
        .collect();
    let (status, body) = server
        .post("/streams/big", &json!({"events": events}))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["last_revision"], 9_999);
}

#[tokio::test]
async fn bad_stream_names_are_rejected() {
    let server = TestServer::start();
    let long = "s".repeat(257);
    for path in [
        "/streams/%24all".to_owned(),
        "/streams/%24system".to_owned(),
        "/streams/a%0Ab".to_owned(),
        "/streams/a%00b".to_owned(),
        format!("/streams/{long}"),
        "/streams/%FF%FE".to_owned(),
    ] {
        let (status, body) = server.post(&path, &one_event()).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(
            body["error"] == "invalid_stream_name" || body["error"] == "invalid_path",
            "{path}: {body}"
        );
        let (status, _) = server.get(&path).await;
        assert_eq!(status, 400, "GET {path}");
    }
    let ok = "s".repeat(256);
    assert_eq!(
        server.post(&format!("/streams/{ok}"), &one_event()).await.0,
        201
    );
}

#[tokio::test]
async fn oversize_requests_are_413_naming_the_limit_and_the_flag() {
    let server =
        TestServer::start_with(&["--max-append-bytes", "4096", "--max-event-bytes", "1024"]);
    let big = "x".repeat(5000);
    let (status, body) = server
        .post(
            "/streams/big",
            &json!({"events": [{"type": "E", "data": big}]}),
        )
        .await;
    assert_error(status, &body, 413, "payload_too_large");
    assert_eq!(body["limit"], 4096);
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains("--max-append-bytes"),
        "{body}"
    );

    // Without a Content-Length (chunked) the limit holds too. Raw TCP, so the
    // client never races the early answer with the rest of its upload.
    let response = chunked_post(&server, "/streams/big", &"z".repeat(5000)).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("payload_too_large"), "{response}");

    let event = "y".repeat(2000);
    let (status, body) = server
        .post(
            "/streams/big",
            &json!({"events": [{"type": "Small", "data": 1}, {"type": "E", "data": event}]}),
        )
        .await;
    assert_error(status, &body, 413, "event_too_large");
    let message = body["message"].as_str().expect("message");
    assert!(
        message.contains("events[1]") && message.contains("--max-event-bytes"),
        "{body}"
    );
    assert_eq!(server.get("/all").await.1["head_position"], Value::Null);
}

#[tokio::test]
async fn bad_query_parameters_are_400() {
    let server = TestServer::start();
    server.append("q", json!("any"), &["E"]).await;
    for path in [
        "/streams/q?limit=0",
        "/streams/q?limit=4097",
        "/streams/q?limit=ten",
        "/streams/q?from=-1",
        "/streams/q?direction=sideways",
        "/streams/q?wait_ms=60001",
        "/streams/q?direction=backward&wait_ms=10",
        "/streams/q?frm=1",
        "/streams/q?from=1&from=2",
        "/all?from=x",
        "/all?limit=100000",
        "/all?colour=blue",
        "/streams/q/minus-one",
    ] {
        let (status, body) = server.get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("invalid_")),
            "{path}: {body}"
        );
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let server = TestServer::start();
    let (status, body) = server.get("/nothing/here").await;
    assert_error(status, &body, 404, "not_found");
    let response = server
        .http
        .delete(server.url("/all"))
        .send()
        .await
        .expect("request");
    let (status, body) = crate::support::status_json(response).await;
    assert_error(status, &body, 405, "method_not_allowed");
    let (status, body) = server.get("/health/live").await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    let (status, info) = server.get("/info").await;
    assert_eq!(status, 200);
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["head_position"], Value::Null);
    assert!(info["data_dir"].as_str().is_some());
}

/// Sends one chunk of a chunked POST (without the closing chunk) and reads the answer.
async fn chunked_post(server: &TestServer, path: &str, chunk: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server.base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n",
        chunk.len()
    );
    socket.write_all(request.as_bytes()).await.expect("write");
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), socket.read(&mut answer))
        .await
        .expect("an answer within 10 s")
        .expect("read");
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

/// Mangled versions of valid requests (bit flips, cuts, splices, garbage) never
/// get a 5xx or a non-JSON answer, and what is refused stores nothing.
#[tokio::test]
async fn mangled_requests_never_get_a_server_error() {
    let server = TestServer::start();
    let valid = br#"{"expected_revision":"any","events":[{"id":"01900000-0000-7000-8000-0000000000ff","type":"OrderPlaced","data":{"total":12.5,"items":["a","b"]},"metadata":{"user":"ann"}}]}"#;
    let mut state = crate::support::seed("mangled requests");
    let mut next = |below: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % below as u64) as usize
    };
    let (mut accepted, mut refused) = (0, 0);
    for round in 0..400 {
        let mut body = valid.to_vec();
        match round % 4 {
            0 => {
                for _ in 0..1 + next(4) {
                    let i = next(body.len());
                    body[i] ^= 1 << next(8);
                }
            }
            1 => body.truncate(next(body.len())),
            2 => {
                let (a, b) = (next(body.len()), next(body.len()));
                let piece = body[a.min(b)..a.max(b)].to_vec();
                let at = next(body.len());
                body.splice(at..at, piece);
            }
            _ => body = (0..next(300)).map(|_| next(256) as u8).collect(),
        }
        let stream = if next(10) == 0 {
            "%FF%00bad"
        } else {
            "mangled"
        };
        let response = server
            .http
            .post(server.url(&format!("/streams/{stream}")))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        assert!(
            status < 500,
            "round {round}: {status} for {:?}: {text}",
            String::from_utf8_lossy(&body)
        );
        let json: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("round {round}: not JSON ({e}): {text}"));
        if status >= 400 {
            assert!(
                json["error"].is_string() && json["message"].is_string(),
                "{json}"
            );
            refused += 1;
        } else {
            accepted += 1;
        }
    }
    assert!(
        refused > 300,
        "the mangling rarely broke the request: {refused} refused, {accepted} accepted"
    );
    // Whatever was accepted is readable and intact.
    for event in server.read_all_events().await {
        assert!(
            event["type"].is_string() && event["recorded_at"].is_string(),
            "{event}"
        );
    }
}

#[tokio::test]
async fn a_body_that_never_finishes_times_out_with_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start_with(&["--body-timeout-secs", "1"]);
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let request = format!(
        "POST /streams/slow HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"events\":"
    );
    socket.write_all(request.as_bytes()).await.expect("write");
    let started = std::time::Instant::now();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), socket.read(&mut answer))
        .await
        .expect("an answer within 10 s")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("request_timeout") && answer.contains("--body-timeout-secs"),
        "{answer}"
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
    assert_eq!(server.get("/all").await.1["head_position"], Value::Null);
}

/// Sends one complete HTTP/1.1 request over a raw socket (no URL normalisation,
/// unlike any URL-based client) and returns the status and JSON body.
async fn raw_request(server: &TestServer, method: &str, path: &str, body: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server.base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        socket.read_to_end(&mut answer),
    )
    .await
    .expect("an answer within 10 s")
    .expect("read");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

/// `.` and `..` cannot be addressed through a URL (normalisation drops them,
/// encoded or not), so the server refuses them as names and the client refuses
/// to send them instead of silently reaching another resource.
#[tokio::test]
async fn dot_segment_stream_names_are_refused_by_server_and_client() {
    let server = TestServer::start();
    let body = one_event().to_string();
    for path in ["/streams/%2E", "/streams/%2E%2E", "/streams/%2e"] {
        let (status, answer) = raw_request(&server, "POST", path, &body).await;
        assert_error(status, &answer, 400, "invalid_stream_name");
        let (status, answer) = raw_request(&server, "GET", path, "").await;
        assert_error(status, &answer, 400, "invalid_stream_name");
    }
    assert!(server.read_all_events().await.is_empty(), "nothing stored");

    let client = server.client();
    for name in [".", ".."] {
        let event = skald_client::EventData::json("T", &json!({})).expect("event");
        let err = client
            .append(name, skald_client::ExpectedRevision::Any, [event])
            .await
            .expect_err("refused");
        assert!(
            matches!(&err, skald_client::Error::BadRequest { code, .. } if code == "invalid_stream_name"),
            "{err:?}"
        );
        let err = client
            .read_stream_page(name, &skald_client::ReadOptions::default())
            .await
            .expect_err("refused");
        assert!(
            matches!(err, skald_client::Error::BadRequest { .. }),
            "{err:?}"
        );
    }
    // Names that merely contain dots are ordinary.
    for name in ["...", ".hidden", "a..b"] {
        let event = skald_client::EventData::json("T", &json!({})).expect("event");
        client
            .append(name, skald_client::ExpectedRevision::Any, [event])
            .await
            .expect("appended");
        let page = client
            .read_stream_page(name, &skald_client::ReadOptions::default())
            .await
            .expect("read back");
        assert_eq!(page.events.len(), 1, "{name}");
    }
}

/// Made-up methods and unmatched paths fold into one `other` label each: no
/// request can add a metrics series (each used to add one, for good).
#[tokio::test]
async fn request_metrics_labels_come_from_a_fixed_set() {
    let server = TestServer::start();
    for i in 0..40 {
        let method = reqwest::Method::from_bytes(format!("MADEUP{i}").as_bytes()).expect("method");
        let response = server
            .http
            .request(method, server.url("/streams/s"))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 405);
        let response = server
            .http
            .get(server.url(&format!("/no/such/route/{i}")))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 404);
    }
    let text = server.metrics_text().await;
    let values = |label: &str| -> std::collections::BTreeSet<String> {
        text.split(&format!("{label}=\""))
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .map(str::to_owned)
            .collect()
    };
    let methods = values("method");
    let allowed = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "other",
    ];
    assert!(
        methods.iter().all(|m| allowed.contains(&m.as_str())),
        "{methods:?}"
    );
    assert!(methods.contains("other"), "{methods:?}");
    let routes = values("route");
    assert!(routes.contains("other"), "{routes:?}");
    assert!(
        routes.iter().all(|r| !r.starts_with("/no/such")),
        "{routes:?}"
    );
}
