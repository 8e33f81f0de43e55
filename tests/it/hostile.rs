//! Malformed and adversarial requests, byte for byte over raw TCP, against one
//! running server: each gets a 4xx (or is served correctly), the server stays
//! up, and the log is the same before and after.

use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::support::{read_until_closed, TestServer};

/// What a case must get.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    /// A 4xx answer.
    Client,
    /// A 2xx answer: the request is odd but valid.
    Served,
    /// A 2xx or a 4xx answer (what is right depends on reading the RFC leniently).
    ServedOrClient,
    /// A 4xx answer, or the connection closed without one (the client hung up
    /// before its request was complete).
    ClientOrClosed,
    /// These statuses, in order, on one connection (pipelining).
    Pipelined(&'static [u16]),
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    want: Want,
    /// Half-close after sending (the client gives up mid-request).
    hang_up: bool,
}

/// A complete request with `connection: close`; `content-length` is added
/// when the body is not empty and no such header was given.
fn request(method: &str, target: &[u8], headers: &[(&str, &[u8])], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\nhost: skald\r\nconnection: close\r\n");
    let has_length = headers.iter().any(|(n, _)| {
        n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding")
    });
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() && !has_length {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

fn get(target: &str) -> Vec<u8> {
    request("GET", target.as_bytes(), &[], b"")
}

const JSON: (&str, &[u8]) = ("content-type", b"application/json");

fn post(target: &str, body: &[u8]) -> Vec<u8> {
    request("POST", target.as_bytes(), &[JSON], body)
}

fn put(target: &str, body: &[u8]) -> Vec<u8> {
    request("PUT", target.as_bytes(), &[JSON], body)
}

fn case(name: &'static str, bytes: Vec<u8>, want: Want) -> Case {
    Case {
        name,
        bytes,
        want,
        hang_up: false,
    }
}

fn hang_up(name: &'static str, bytes: Vec<u8>) -> Case {
    Case {
        name,
        bytes,
        want: Want::ClientOrClosed,
        hang_up: true,
    }
}

const EVENT: &str = r#"{"type":"E","data":{}}"#;

fn append_with(field: &str) -> Vec<u8> {
    post(
        "/streams/victim",
        format!(r#"{{{field},"events":[{EVENT}]}}"#).as_bytes(),
    )
}

fn event_with(fields: &str) -> Vec<u8> {
    post(
        "/streams/victim",
        format!(r#"{{"events":[{{{fields}}}]}}"#).as_bytes(),
    )
}

fn cases() -> Vec<Case> {
    use Want::*;
    let big_u64 = "18446744073709551616";
    let mut cases = vec![
        // Paths and stream names.
        case(
            "percent-encoded invalid UTF-8 name",
            get("/streams/%FF%FE"),
            Client,
        ),
        case(
            "raw invalid UTF-8 in the path",
            request("GET", b"/streams/\xff\xfe", &[], b""),
            Client,
        ),
        case("overlong UTF-8 dots", get("/streams/%C0%AE%C0%AE"), Client),
        case(
            "NUL in a name",
            post(
                "/streams/a%00b",
                format!(r#"{{"events":[{EVENT}]}}"#).as_bytes(),
            ),
            Client,
        ),
        case("control character in a name", get("/streams/a%0Ab"), Client),
        case("encoded dot-dot name", get("/streams/%2E%2E"), Client),
        case(
            "raw dot-dot traversal",
            get("/streams/../../admin/stats"),
            Client,
        ),
        case(
            "encoded slashes in a name",
            get("/streams/..%2F..%2Fetc%2Fpasswd"),
            Client,
        ),
        case("double-encoded dots", get("/streams/%252E%252E"), Client),
        case("bad percent escape", get("/streams/x%ZZ"), Client),
        case("empty stream name", get("/streams/"), Client),
        case(
            "name over 256 bytes",
            get(&format!("/streams/{}", "n".repeat(300))),
            Client,
        ),
        case("doubled slashes", get("//streams//victim"), Client),
        case(
            "revision past u64",
            get(&format!("/streams/victim/{big_u64}")),
            Client,
        ),
        case("negative revision", get("/streams/victim/-1"), Client),
        case(
            "revision in exponent form",
            get("/streams/victim/1e3"),
            Client,
        ),
        // Numbers in query strings.
        case(
            "$all from past u64",
            get(&format!("/all?from={big_u64}")),
            Client,
        ),
        case("$all negative from", get("/all?from=-1"), Client),
        case("$all negative limit", get("/all?limit=-5"), Client),
        case(
            "$all limit of 20 digits",
            get("/all?limit=99999999999999999999"),
            Client,
        ),
        case("$all fractional limit", get("/all?limit=1.5"), Client),
        case("$all hex limit", get("/all?limit=0x10"), Client),
        case("$all negative wait", get("/all?wait_ms=-1"), Client),
        case(
            "$all wait past u64",
            get(&format!("/all?wait_ms={big_u64}")),
            Client,
        ),
        case(
            "stream read negative from",
            get("/streams/victim?from=-1"),
            Client,
        ),
        case(
            "stream read from past u64",
            get(&format!("/streams/victim?from={big_u64}")),
            Client,
        ),
        case(
            "duplicate limit",
            get("/streams/victim?limit=1&limit=2"),
            Client,
        ),
        case("duplicate from", get("/all?from=1&from=1"), Client),
        case("unknown parameter", get("/all?bogus=1"), Client),
        case("empty limit", get("/all?limit="), Client),
        case(
            "invalid UTF-8 in a query value",
            get("/all?stream_prefix=%FF%FE"),
            Client,
        ),
        case(
            "raw invalid UTF-8 in the query",
            request("GET", b"/all?stream_prefix=\xff", &[], b""),
            Client,
        ),
        case(
            "catalog negative limit",
            get("/admin/streams?limit=-1"),
            Client,
        ),
        case(
            "catalog limit past u64",
            get(&format!("/admin/streams?limit={big_u64}")),
            Client,
        ),
        case(
            "delete negative expected revision",
            request("DELETE", b"/streams/victim?expected_revision=-1", &[], b""),
            Client,
        ),
        case(
            "delete expected revision past u64",
            request(
                "DELETE",
                format!("/streams/victim?expected_revision={big_u64}").as_bytes(),
                &[],
                b"",
            ),
            Client,
        ),
        case(
            "subscription negative from",
            get("/subscriptions/all?from=-1"),
            Client,
        ),
        case(
            "subscription from past u64",
            get(&format!("/subscriptions/all?from={big_u64}")),
            Client,
        ),
        case(
            "subscription negative heartbeat",
            get("/subscriptions/all?heartbeat_ms=-1"),
            Client,
        ),
        case(
            "subscription checkpoint past u64",
            get(&format!("/subscriptions/all?checkpoint_every={big_u64}")),
            Client,
        ),
        case(
            "SSE negative Last-Event-ID",
            request(
                "GET",
                b"/subscriptions/all",
                &[("accept", b"text/event-stream"), ("last-event-id", b"-1")],
                b"",
            ),
            Client,
        ),
        case(
            "SSE Last-Event-ID past u64",
            request(
                "GET",
                b"/subscriptions/all",
                &[
                    ("accept", b"text/event-stream"),
                    ("last-event-id", big_u64.as_bytes()),
                ],
                b"",
            ),
            Client,
        ),
        case(
            "scavenge dry_run not a boolean",
            request("POST", b"/admin/scavenge?dry_run=maybe", &[], b""),
            Client,
        ),
        // Numbers in bodies.
        case(
            "negative expected revision",
            append_with(r#""expected_revision":-1"#),
            Client,
        ),
        case(
            "expected revision past u64",
            append_with(&format!(r#""expected_revision":{big_u64}"#)),
            Client,
        ),
        case(
            "expected revision in exponent form",
            append_with(r#""expected_revision":1e3"#),
            Client,
        ),
        case(
            "expected revision as odd text",
            append_with(r#""expected_revision":"12abc""#),
            Client,
        ),
        case(
            "negative max_count",
            put("/streams/victim/metadata", br#"{"max_count":-1}"#),
            Client,
        ),
        case(
            "max_age past u64",
            put(
                "/streams/victim/metadata",
                format!(r#"{{"max_age_secs":{big_u64}}}"#).as_bytes(),
            ),
            Client,
        ),
        case(
            "fractional truncate_before",
            put("/streams/victim/metadata", br#"{"truncate_before":1.5}"#),
            Client,
        ),
        case(
            "zero max_count",
            put("/streams/victim/metadata", br#"{"max_count":0}"#),
            Client,
        ),
        // Bodies.
        case(
            "invalid UTF-8 inside a JSON string",
            post(
                "/streams/victim",
                b"{\"events\":[{\"type\":\"E\xff\",\"data\":{}}]}",
            ),
            Client,
        ),
        case(
            "truncated JSON",
            post("/streams/victim", br#"{"events":["#),
            Client,
        ),
        case("JSON null body", post("/streams/victim", b"null"), Client),
        case(
            "no events",
            post("/streams/victim", br#"{"events":[]}"#),
            Client,
        ),
        case(
            "empty event type",
            event_with(r#""type":"","data":{}"#),
            Client,
        ),
        case(
            "lone surrogate in data",
            event_with(r#""type":"E","data":"\ud800""#),
            Client,
        ),
        case(
            "event id not a UUID",
            event_with(r#""id":"not-a-uuid","type":"E","data":{}"#),
            Client,
        ),
        case(
            "data nested 100 deep",
            event_with(&format!(
                r#""type":"E","data":{}{}"#,
                "[".repeat(100),
                "]".repeat(100)
            )),
            Client,
        ),
        case(
            "byte order mark before the JSON",
            post(
                "/streams/victim",
                format!("\u{feff}{{\"events\":[{EVENT}]}}").as_bytes(),
            ),
            Client,
        ),
        case(
            "garbage after the JSON",
            post(
                "/streams/victim",
                format!(r#"{{"events":[{EVENT}]}} x"#).as_bytes(),
            ),
            Client,
        ),
        case(
            "unknown body field",
            append_with(r#""sneaky":true"#),
            Client,
        ),
        case(
            "text/plain body",
            request(
                "POST",
                b"/streams/victim",
                &[("content-type", b"text/plain")],
                format!(r#"{{"events":[{EVENT}]}}"#).as_bytes(),
            ),
            Client,
        ),
        case(
            "XML content type",
            request(
                "POST",
                b"/streams/victim",
                &[("content-type", b"application/xml")],
                b"<events/>",
            ),
            Client,
        ),
        case(
            "multipart content type",
            request(
                "POST",
                b"/streams/victim",
                &[("content-type", b"multipart/form-data; boundary=x")],
                b"--x--",
            ),
            Client,
        ),
        case(
            "invalid UTF-8 content type",
            request(
                "POST",
                b"/streams/victim",
                &[("content-type", b"application/\xffjson")],
                format!(r#"{{"events":[{EVENT}]}}"#).as_bytes(),
            ),
            Client,
        ),
        case(
            "declared body far over the limit",
            request(
                "POST",
                b"/streams/victim",
                &[JSON, ("content-length", b"99999999999")],
                b"",
            ),
            Client,
        ),
        case(
            "body over the limit with expect-continue",
            request(
                "POST",
                b"/streams/victim",
                &[
                    JSON,
                    ("expect", b"100-continue"),
                    ("content-length", b"999999999"),
                ],
                b"",
            ),
            Client,
        ),
        case(
            "negative content-length",
            request(
                "POST",
                b"/streams/victim",
                &[JSON, ("content-length", b"-1")],
                b"",
            ),
            Client,
        ),
        case(
            "two different content-lengths",
            request(
                "POST",
                b"/streams/victim",
                &[JSON, ("content-length", b"5"), ("content-length", b"7")],
                b"{}{}{}{",
            ),
            Client,
        ),
        case(
            "content-length and chunked together",
            request(
                "POST",
                b"/streams/victim",
                &[
                    JSON,
                    ("content-length", b"4"),
                    ("transfer-encoding", b"chunked"),
                ],
                b"0\r\n\r\n",
            ),
            Client,
        ),
        case(
            "bad chunk size",
            request(
                "POST",
                b"/streams/victim",
                &[JSON, ("transfer-encoding", b"chunked")],
                b"zz\r\n{}\r\n0\r\n\r\n",
            ),
            Client,
        ),
        hang_up(
            "body cut short, then hang-up",
            request(
                "POST",
                b"/streams/victim",
                &[JSON, ("content-length", b"1000")],
                br#"{"events":[{"ty"#,
            ),
        ),
        hang_up(
            "chunked body cut short, then hang-up",
            request(
                "POST",
                b"/streams/victim",
                &[JSON, ("transfer-encoding", b"chunked")],
                b"10\r\n{\"events\":[{\"ty\r\n",
            ),
        ),
        hang_up(
            "metadata body cut short, then hang-up",
            request(
                "PUT",
                b"/streams/victim/metadata",
                &[JSON, ("content-length", b"500")],
                br#"{"max_count":"#,
            ),
        ),
        hang_up(
            "head cut short, then hang-up",
            b"POST /streams/victim HTTP/1.1\r\nhost: skald\r\ncontent-le".to_vec(),
        ),
        // Heads.
        case(
            "150 headers",
            request("GET", b"/health/live", &vec![("x-h", &b"v"[..]); 150], b""),
            Client,
        ),
        case(
            "one 100 KiB header",
            request(
                "GET",
                b"/health/live",
                &[("x-big", "v".repeat(100 << 10).as_bytes())],
                b"",
            ),
            Client,
        ),
        case(
            "space in a header name",
            request("GET", b"/health/live", &[("bad header", b"x")], b""),
            Client,
        ),
        case(
            "invalid UTF-8 in an unused header",
            request("GET", b"/health/live", &[("x-junk", b"\xff\xfe")], b""),
            Served,
        ),
        case("garbage request line", b"GARBAGE\r\n\r\n".to_vec(), Client),
        case(
            "HTTP/0.9 request",
            b"GET /all\r\n\r\n".to_vec(),
            ClientOrClosed,
        ),
        case(
            "unsupported HTTP version",
            b"GET /all HTTP/3.0\r\nhost: skald\r\n\r\n".to_vec(),
            ClientOrClosed,
        ),
        case("made-up method", request("BREW", b"/all", &[], b""), Client),
        case(
            "absolute-form target",
            request("GET", b"http://elsewhere.example/health/live", &[], b""),
            ServedOrClient,
        ),
        case(
            "no host header",
            b"GET /health/live HTTP/1.1\r\nconnection: close\r\n\r\n".to_vec(),
            ServedOrClient,
        ),
    ];
    // Pipelining: several requests in one write, answered in order.
    let keep = |target: &str| {
        let mut r = get(target);
        let at = r
            .windows(19)
            .position(|w| w == b"connection: close\r\n")
            .expect("header");
        r.drain(at..at + 19);
        r
    };
    cases.push(case(
        "two pipelined reads",
        [keep("/all?limit=1"), get("/health/live")].concat(),
        Pipelined(&[200, 200]),
    ));
    cases.push(case(
        "pipelined read, bad read, read",
        [
            keep("/health/live"),
            keep("/all?limit=-1"),
            get("/health/live"),
        ]
        .concat(),
        Pipelined(&[200, 400, 200]),
    ));
    cases.push(case(
        "pipelined bad appends",
        [
            {
                let mut r = append_with(r#""expected_revision":-1"#);
                let at = r
                    .windows(19)
                    .position(|w| w == b"connection: close\r\n")
                    .expect("header");
                r.drain(at..at + 19);
                r
            },
            append_with(r#""expected_revision":"x""#),
        ]
        .concat(),
        Pipelined(&[400, 400]),
    ));
    cases.push(case(
        "pipelined read then garbage",
        [keep("/health/live"), b"NONSENSE\r\n\r\n".to_vec()].concat(),
        Pipelined(&[200, 400]),
    ));
    cases
}

/// Sends `case` on a fresh connection and returns the statuses answered and
/// the raw answer.
async fn send(server: &TestServer, case: &Case) -> (Vec<u16>, String) {
    let addr = server.base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The server may answer and close before reading everything (431, 413):
    // a failed write is part of the answer, not an error of the test.
    let _ = socket.write_all(&case.bytes).await;
    if case.hang_up {
        let _ = socket.shutdown().await;
    }
    // Panics (naming the limit) when the server neither answers nor closes.
    let text = read_until_closed(&mut socket, Duration::from_secs(20)).await;
    let statuses = text
        .match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| text[at + 9..].get(..3)?.parse().ok())
        .collect();
    (statuses, text)
}

/// An error the API itself produced has the JSON error shape.
fn check_error_body(name: &str, text: &str) {
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return;
    };
    let head = head.to_ascii_lowercase();
    if !head.contains("content-type: application/json") {
        return;
    }
    // The first answer's body (more may follow, pipelined).
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(body.len());
    let body = body.get(..length).unwrap_or(body);
    let body: Value = serde_json::from_str(body.trim())
        .unwrap_or_else(|e| panic!("{name}: error body is not JSON ({e}): {body:?}"));
    let code = body["error"].as_str().unwrap_or_default();
    assert!(
        !code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
        "{name}: error code {code:?} is not snake_case: {body}"
    );
    assert!(body["message"].is_string(), "{name}: no message: {body}");
}

#[tokio::test]
async fn hostile_requests_get_a_client_error_and_change_nothing() {
    let server = TestServer::start();
    // Something to protect: a stream the cases aim at, and another one.
    for stream in ["victim", "bystander"] {
        let (status, body) = server
            .append(stream, serde_json::json!("any"), &["Real"])
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let before = server.read_all_events().await;
    let (_, catalog_before) = server.get("/admin/streams").await;
    let cases = cases();
    assert!(cases.len() >= 60, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let (statuses, text) = send(&server, case).await;
        let first = statuses.first().copied();
        let ok = match case.want {
            Want::Client => first.is_some_and(|s| (400..500).contains(&s)),
            Want::Served => first.is_some_and(|s| (200..300).contains(&s)),
            Want::ServedOrClient => first.is_some_and(|s| (200..500).contains(&s)),
            Want::ClientOrClosed => first.is_none_or(|s| (400..500).contains(&s)),
            Want::Pipelined(want) => statuses == want,
        };
        if !ok {
            failures.push(format!(
                "{}: want {:?}, got {statuses:?}: {}",
                case.name,
                case.want,
                text.chars().take(300).collect::<String>()
            ));
        }
        if first.is_some_and(|s| (400..500).contains(&s)) {
            check_error_body(case.name, &text);
        }
        // The server is still up after every case.
        let (status, _) = server.get("/health/live").await;
        assert_eq!(
            status, 200,
            "the server stopped answering after {}",
            case.name
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert_eq!(server.read_all_events().await, before, "the log changed");
    assert_eq!(
        server.get("/admin/streams").await.1,
        catalog_before,
        "the catalog changed"
    );
}

/// Requests assembled at random from hostile pieces: methods, paths, query
/// strings, headers and bodies. None may get a 5xx or stop the server, and
/// unless one was accepted as a write, the log stays as it was. (Routes that
/// hold the connection open, subscriptions and valid long-polls, are left out.)
#[test]
fn generated_hostile_requests_never_get_a_server_error() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

    fn piece(options: &'static [&'static str]) -> impl Strategy<Value = String> {
        proptest::sample::select(options).prop_map(str::to_owned)
    }
    let method = piece(&[
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "BREW",
    ]);
    let name = piece(&[
        "victim", "%FF", "%2E%2E", "..", "%00", "a%2Fb", "%C3%A9", "$all", "", "x%ZZ", "%252E",
    ]);
    let path = (
        name,
        piece(&[
            "",
            "/metadata",
            "/0",
            "/-1",
            "/18446744073709551616",
            "/x/y",
        ]),
    )
        .prop_map(|(name, rest)| format!("/streams/{name}{rest}"));
    let path = prop_oneof![
        path,
        piece(&[
            "/all",
            "/admin/streams",
            "/admin/stats",
            "/admin/scavenge",
            "/admin/verify",
            "/info",
            "/nope",
            "//",
            "/streams"
        ]),
    ];
    let query = proptest::collection::vec(
        (
            piece(&[
                "from",
                "limit",
                "direction",
                "stream_prefix",
                "expected_revision",
                "hard",
                "dry_run",
                "wait_ms",
                "bogus",
                "%FF",
            ]),
            piece(&[
                "-1",
                "0",
                "1",
                "4097",
                "18446744073709551616",
                "backward",
                "true",
                "maybe",
                "%FF",
                "",
                "1e3",
            ]),
        ),
        0..4,
    )
    .prop_map(|pairs| {
        let pairs: Vec<String> = pairs
            .into_iter()
            // A valid long-poll would hold the connection for its whole wait.
            .map(|(k, v)| {
                if k == "wait_ms" {
                    format!("{k}=-{v}")
                } else {
                    format!("{k}={v}")
                }
            })
            .collect();
        if pairs.is_empty() {
            String::new()
        } else {
            format!("?{}", pairs.join("&"))
        }
    });
    let content_type = piece(&[
        "application/json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/vnd.x+json",
        "\u{ff}",
    ]);
    let body = proptest::collection::vec(
        piece(&[
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            "\"events\"",
            "\"type\"",
            "\"data\"",
            "\"expected_revision\"",
            "\"custom\"",
            "\"max_count\"",
            "-1",
            "1e400",
            "\"\\ud800\"",
            "null",
            "\"E\"",
            "0",
            "18446744073709551616",
            "\u{feff}",
            "\"any\"",
        ]),
        0..24,
    )
    .prop_map(|parts| parts.concat());
    let request =
        (method, path, query, content_type, body).prop_map(|(method, path, query, ct, body)| {
            let target = format!("{path}{query}");
            request(
                &method,
                target.as_bytes(),
                &[("content-type", ct.as_bytes())],
                body.as_bytes(),
            )
        });

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let server = TestServer::start();
    runtime.block_on(async {
        for stream in ["victim", "bystander"] {
            let (status, _) = server
                .append(stream, serde_json::json!("any"), &["Real"])
                .await;
            assert_eq!(status, 201);
        }
    });
    let before = runtime.block_on(server.read_all_events());
    let seed = crate::support::seed("generated_hostile_requests_never_get_a_server_error");
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases: 96,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let wrote = std::cell::Cell::new(false);
    let result = runner.run(&request, |bytes| {
        let case = Case {
            name: "generated",
            bytes: bytes.clone(),
            want: Want::ServedOrClient,
            hang_up: false,
        };
        let (statuses, text) = runtime.block_on(send(&server, &case));
        prop_assert!(
            statuses.iter().all(|s| *s < 500),
            "{}\n-> {}",
            String::from_utf8_lossy(&bytes),
            text
        );
        let (status, _) = runtime.block_on(server.get("/health/live"));
        prop_assert_eq!(status, 200);
        let method = bytes.split(|b| *b == b' ').next().unwrap_or_default();
        let writes = [&b"POST"[..], b"PUT", b"DELETE"].contains(&method);
        if writes && statuses.first().is_some_and(|s| (200..300).contains(s)) {
            wrote.set(true);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    if !wrote.get() {
        assert_eq!(
            runtime.block_on(server.read_all_events()),
            before,
            "the log changed"
        );
    }
}
