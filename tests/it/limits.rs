//! Resource limits a client can run into: custom stream metadata, read memory,
//! connections.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{self, assert_error, read_until_closed, status_json, TestServer};

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
    let mut server = TestServer::start();
    let custom = json!({"blob": "x".repeat(60 << 10)});
    let (status, body) = put_metadata(&server, "heavy", &json!({"custom": custom})).await;
    assert_eq!(status, 200, "{body}");
    // Measured stopped: a running server's WAL is preallocated.
    assert!(server.terminate().success());
    let before = support::dir_bytes(server.data_dir());
    server.restart();
    for _ in 0..300 {
        let (status, body) = server.append("heavy", json!("any"), &["E"]).await;
        assert_eq!(status, 201, "{body}");
    }
    assert!(server.terminate().success());
    let wals = support::wal_lengths(server.data_dir());
    assert!(
        wals.iter().all(|&len| len < 1 << 20),
        "a stopped server's WAL was not trimmed to what it holds: {wals:?}"
    );
    let grown = support::dir_bytes(server.data_dir()).saturating_sub(before);
    server.restart();
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
    append_megabyte_events(&server, 64).await;
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

/// A response the client reads none of is given up after the write stall
/// timeout: the connection closes and frees what the server buffered for it
/// (here a page of 16 MiB; 20 such readers held 370-490 MiB of RSS for as
/// long as they liked before). A client reading a page slowly but steadily,
/// for longer than the timeout in all, gets all of it.
#[tokio::test]
async fn a_response_nobody_reads_is_given_up_after_the_write_stall_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start_with(&["--write-stall-timeout-secs", "2"]);
    append_megabyte_events(&server, 16).await;
    let request = b"GET /streams/big?limit=100 HTTP/1.1\r\nhost: skald\r\n\r\n";
    // Reads nothing (through a small receive window, so that the page does
    // not fit in the kernel's buffers).
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let addr = server
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("addr");
    let mut stalled = socket.connect(addr).await.expect("connect");
    stalled.write_all(request).await.expect("write");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = server.metrics_text().await;
        if metrics.contains("skald_connections_write_stalled_total 1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the unread response still holds its connection after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answer = read_until_closed(&mut stalled, Duration::from_secs(10)).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{}",
        &answer[..answer.len().min(200)]
    );
    assert!(
        answer.len() < 16 << 20,
        "the whole page went out: {}",
        answer.len()
    );

    // Reads half a MiB every 400 ms: a page of 4 MiB takes longer than the
    // timeout (the pauses alone take 2.8 s).
    let mut steady = connect(&server).await;
    steady
        .write_all(b"GET /streams/big?limit=4 HTTP/1.1\r\nhost: skald\r\n\r\n")
        .await
        .expect("write");
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut since_pause = 0;
    loop {
        let n = steady.read(&mut buf).await.expect("read");
        assert!(
            n > 0,
            "closed before the page was complete: {} bytes",
            answer.len()
        );
        answer.extend_from_slice(&buf[..n]);
        if let Some(at) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..at]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().expect("length"))
                .expect("content-length");
            if answer.len() - (at + 4) >= length {
                assert_eq!(answer.len() - (at + 4), length);
                break;
            }
        }
        since_pause += n;
        if since_pause >= 512 << 10 {
            since_pause = 0;
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    }
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "the page went out in {:?}, too fast to test a slow reader",
        started.elapsed()
    );
    let metrics = server.metrics_text().await;
    assert!(
        metrics.contains("skald_connections_write_stalled_total 1"),
        "the steady reader was counted as stalled"
    );
}

/// Appends `count` events of just under 1 MiB to the stream `big`, 8 at a time.
async fn append_megabyte_events(server: &TestServer, count: usize) {
    let data = "x".repeat((1 << 20) - 1024);
    for _ in 0..count.div_ceil(8) {
        let events: Vec<_> = (0..8)
            .map(|_| json!({"type": "Big", "data": data}))
            .collect();
        let (status, body) = server
            .post("/streams/big", &json!({"events": events}))
            .await;
        assert_eq!(status, 201, "{body}");
    }
}

/// A raw connection to the server.
async fn connect(server: &TestServer) -> tokio::net::TcpStream {
    let addr = server.base.trim_start_matches("http://");
    tokio::net::TcpStream::connect(addr).await.expect("connect")
}

/// One request on an open keep-alive connection; returns the status line.
async fn request_on(socket: &mut tokio::net::TcpStream, path: &str) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let request = format!("GET {path} HTTP/1.1\r\nhost: skald\r\n\r\n");
    socket.write_all(request.as_bytes()).await.expect("write");
    let mut reader = tokio::io::BufReader::new(socket);
    let mut status = String::new();
    reader.read_line(&mut status).await.expect("status line");
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.expect("header");
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().expect("length");
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.expect("body");
    status
}

/// Connections that never send a byte, or never finish their request head,
/// are closed after the header timeout (the issue saw 3,000 such connections
/// all still open after 75 s).
#[tokio::test]
async fn connections_without_a_complete_request_head_are_closed() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start_with(&["--header-timeout-secs", "1"]);
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(connect(&server).await);
    }
    let mut partial = connect(&server).await;
    partial
        .write_all(b"GET /health/live HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write");
    for socket in &mut silent {
        read_until_closed(socket, Duration::from_secs(30)).await;
    }
    read_until_closed(&mut partial, Duration::from_secs(30)).await;
    let metrics = server.metrics_text().await;
    let timed_out = metrics
        .lines()
        .find_map(|l| l.strip_prefix("skald_connections_timed_out_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .expect("skald_connections_timed_out_total");
    assert!(
        timed_out >= 201,
        "{timed_out} connections counted as timed out"
    );
}

/// Between two requests a keep-alive connection has the idle timeout (here
/// 30 s), not the header timeout (1 s); once the next head starts, the header
/// timeout applies from its first byte.
#[tokio::test]
async fn keep_alive_connections_get_the_idle_timeout_between_requests() {
    use tokio::io::AsyncWriteExt;
    let server =
        TestServer::start_with(&["--header-timeout-secs", "1", "--idle-timeout-secs", "30"]);
    let mut socket = connect(&server).await;
    assert!(request_on(&mut socket, "/health/live")
        .await
        .contains("200"));
    // Idle for twice the header timeout: still open, and served.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(request_on(&mut socket, "/health/live")
        .await
        .contains("200"));
    // A head that starts but never ends is cut at the header timeout, far
    // sooner than the idle timeout.
    socket
        .write_all(b"GET /health/live HTTP/1.1\r\n")
        .await
        .expect("write");
    let started = std::time::Instant::now();
    read_until_closed(&mut socket, Duration::from_secs(20)).await;
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// Past `--max-connections`, a new connection is answered 503 with
/// Retry-After and a JSON error; once one closes, new connections are served.
#[tokio::test]
async fn connections_over_the_cap_are_answered_503() {
    let server = TestServer::start_with(&["--max-connections", "5"]);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect(&server).await);
    }
    // Four raw connections plus the client's own.
    server.wait_for_gauge("open_connections", 5).await;
    let mut over = connect(&server).await;
    let answer = read_until_closed(&mut over, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    let body: Value =
        serde_json::from_str(answer.split_once("\r\n\r\n").expect("body").1).expect("JSON body");
    assert_eq!(body["error"], "too_many_connections");
    let metrics = server.metrics_text().await;
    assert!(
        metrics.contains("skald_connections_rejected_total 1"),
        "{metrics}"
    );
    drop(held.pop());
    // A fresh connection is served once the server has seen the close.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut socket = connect(&server).await;
        if request_on(&mut socket, "/health/live")
            .await
            .contains("200")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no connection served after one closed"
        );
    }
}
