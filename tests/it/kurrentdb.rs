//! KurrentDB's official Python client (`kurrentdbclient`, pinned in
//! tests/kurrentdb/requirements.txt) against `skald serve --grpc-listen`: the
//! test module tests/kurrentdb/test_kurrentdb_client.py appends, reads
//! streams and `$all` (filters included), subscribes (catch-up, live,
//! filtered with checkpoints), deletes and tombstones, and checks the errors
//! the client raises. The client runs in a virtual environment
//! in the target directory, created here when missing (`.ci/run` creates it).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::TestServer;

/// The virtual environment's Python, with the pinned client installed (made
/// once per test run: the tests here share it).
fn client_python() -> PathBuf {
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PYTHON.get_or_init(make_client_python).clone()
}

fn make_client_python() -> PathBuf {
    if let Ok(python) = std::env::var("SKALD_KURRENTDB_PYTHON") {
        return PathBuf::from(python);
    }
    crate::support::python_venv("kurrentdb-venv", "tests/kurrentdb/requirements.txt")
        .join("bin/python")
}

#[tokio::test]
async fn the_official_python_client_runs_against_skald() {
    let python = client_python();
    let server = TestServer::start_with(&["--grpc-listen", "127.0.0.1:0"]);
    let grpc = server.grpc.clone().expect("the gRPC address");
    let mut child = tokio::process::Command::new(&python)
        .args(["-m", "unittest", "-v", "test_kurrentdb_client"])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kurrentdb"))
        .env("SKALD_GRPC", &grpc)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("run the client's tests");
    let status = tokio::time::timeout(Duration::from_secs(300), child.wait())
        .await
        .expect("the client's tests did not finish within 300 s")
        .expect("wait for python");
    assert!(
        status.success(),
        "the KurrentDB client tests failed: {status}"
    );
}

/// Events appended over gRPC are the HTTP API's events, and the other way
/// round: one store, two front ends.
#[tokio::test]
async fn grpc_and_http_share_one_store() {
    let python = client_python();
    let server = TestServer::start_with(&["--grpc-listen", "127.0.0.1:0"]);
    let grpc = server.grpc.clone().expect("the gRPC address");
    let (status, _) = server
        .append("shared-1", json!("no_stream"), &["FromHttp"])
        .await;
    assert_eq!(status, 201);
    let metadata = json!({"max_count": 5, "custom": {"owner": "http"}});
    let response = server
        .http
        .put(server.url("/streams/shared-1/metadata"))
        .json(&metadata)
        .send()
        .await
        .expect("put metadata");
    assert_eq!(response.status(), 200);
    let script = r#"
import json, os
from kurrentdbclient import KurrentDBClient, NewEvent, StreamState
c = KurrentDBClient(uri=f"kurrentdb://{os.environ['SKALD_GRPC']}?tls=false")
print(",".join(e.type for e in c.get_stream("shared-1")))
metadata, version = c.get_stream_metadata("shared-1")
print(json.dumps(metadata, sort_keys=True), version)
c.set_stream_metadata("shared-1", metadata={"$maxAge": 86400, "owner": "grpc"}, current_version=0)
c.append_to_stream("shared-1", current_version=0, events=[NewEvent(type="FromGrpc", data=b'{"n": 1}')])
blob = NewEvent(type="Blob", data=bytes([0, 159, 146, 150, 255]), content_type="application/octet-stream")
c.append_to_stream("shared-2", current_version=StreamState.NO_STREAM, events=[blob])
c.close()
"#;
    let output = run_script(&python, script, &grpc).await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "FromHttp\n{\"$maxCount\": 5, \"owner\": \"http\"} 0"
    );
    let (status, body) = server.get("/streams/shared-1/metadata").await;
    assert_eq!(status, 200);
    assert_eq!(body["max_age_secs"], 86400, "{body}");
    // The HTTP PUT was version 0, the gRPC append to $$shared-1 version 1.
    assert_eq!(body["version"], 1, "{body}");
    assert_eq!(body["max_count"], Value::Null, "{body}");
    assert_eq!(body["custom"], json!({"owner": "grpc"}), "{body}");
    let (status, body) = server.get("/streams/shared-1").await;
    assert_eq!(status, 200);
    let types: Vec<&str> = body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["type"].as_str().expect("type"))
        .collect();
    assert_eq!(types, ["FromHttp", "FromGrpc"]);
    assert_eq!(body["events"][1]["data"], json!({"n": 1}));
    // JSON events carry no content type: the HTTP API's answers are unchanged.
    assert_eq!(body["events"][1].get("content_type"), None, "{body}");
    // A binary payload reads over HTTP as the base64 of its bytes, marked.
    let (status, body) = server.get("/streams/shared-2").await;
    assert_eq!(status, 200);
    assert_eq!(body["events"][0]["data"], json!("AJ+Slv8="), "{body}");
    assert_eq!(
        body["events"][0]["content_type"],
        "application/octet-stream"
    );
    let page = server
        .client()
        .read_stream_page("shared-2", &Default::default())
        .await
        .expect("the Rust client reads a binary event");
    assert_eq!(
        page.events[0].content_type.as_deref(),
        Some("application/octet-stream")
    );
}

/// The gRPC port takes at most `--max-connections` connections; one more is
/// closed at once and counted, and a place frees when a connection closes.
#[tokio::test]
async fn grpc_connections_are_capped() {
    use tokio::io::AsyncReadExt;
    let server =
        TestServer::start_with(&["--grpc-listen", "127.0.0.1:0", "--max-connections", "2"]);
    let grpc = server.grpc.clone().expect("the gRPC address");
    let first = tokio::net::TcpStream::connect(&grpc)
        .await
        .expect("connect");
    let _second = tokio::net::TcpStream::connect(&grpc)
        .await
        .expect("connect");
    server.wait_for_metric("skald_grpc_connections", 2).await;
    let mut third = tokio::net::TcpStream::connect(&grpc)
        .await
        .expect("connect");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), third.read(&mut buf))
        .await
        .expect("the third connection is closed, not left waiting");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(
        server.metric("skald_grpc_connections_rejected_total").await,
        Some(1)
    );
    drop(first);
    server.wait_for_metric("skald_grpc_connections", 1).await;
    // The freed place takes a new connection.
    let _fourth = tokio::net::TcpStream::connect(&grpc)
        .await
        .expect("connect");
    server.wait_for_metric("skald_grpc_connections", 2).await;
    assert_eq!(
        server.metric("skald_grpc_connections_rejected_total").await,
        Some(1)
    );
}

/// Appends past `--max-append-bytes` are refused as KurrentDB refuses them
/// (`MaximumAppendSizeExceeded`, which the Python client raises as its own
/// error), an event past `--max-event-bytes` as a bad request, and a message
/// past the gRPC limit (the append limit plus 1 MiB), which the transport
/// refuses before any handler sees it, with the same append-size status;
/// none writes anything.
#[tokio::test]
async fn grpc_appends_past_the_size_limits_are_refused_as_the_clients_expect() {
    let python = client_python();
    let server = TestServer::start_with(&[
        "--grpc-listen",
        "127.0.0.1:0",
        "--max-append-bytes",
        "100000",
        "--max-event-bytes",
        "60000",
    ]);
    let grpc = server.grpc.clone().expect("the gRPC address");
    let script = r#"
import os
from kurrentdbclient import KurrentDBClient, NewEvent, StreamState
from kurrentdbclient.exceptions import BadRequestError, GrpcError, MaximumAppendSizeExceededError
c = KurrentDBClient(uri=f"kurrentdb://{os.environ['SKALD_GRPC']}?tls=false")
def blob(n):
    return NewEvent(type="Blob", data=b"x" * n, content_type="application/octet-stream")
def outcome(events):
    try:
        c.append_to_stream("big", current_version=StreamState.ANY, events=events)
        return "appended"
    except MaximumAppendSizeExceededError as e:
        return "maximum append size: " + str(e)
    except BadRequestError as e:
        return "bad request: " + str(e)
    except GrpcError as e:
        said = "Maximum Append Size of 100000 Exceeded." in str(e)
        return "grpc error" + (", maximum append size" if said else "")
try:
    print(outcome([blob(50000), blob(50000)]))
    print(outcome([blob(70000)]))
    print(outcome([blob(1200000)]))
    print(outcome([blob(50000)]))
    print(len(c.get_stream("big")))
finally:
    c.close()
"#;
    let output = run_script(&python, script, &grpc).await;
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    assert!(
        lines[0].starts_with("maximum append size: ") && lines[0].contains("100000"),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("bad request: ") && lines[1].contains("60000"),
        "{stdout}"
    );
    assert_eq!(lines[2], "grpc error, maximum append size", "{stdout}");
    assert_eq!(&lines[3..], ["appended", "1"], "{stdout}");
}

/// With `--auth-file` and `--tls-cert`, the gRPC port speaks TLS and takes
/// the HTTP API's tokens as `user:password` (name:token): no or unknown
/// credentials are `UNAUTHENTICATED`, too small a role or a stream outside
/// the token's prefixes `PERMISSION_DENIED` (each counted), and a
/// prefix-limited token's `$all` reads and subscriptions hold only its streams.
#[tokio::test]
async fn grpc_over_tls_takes_the_http_apis_tokens() {
    use crate::tls::{pki, start_with_tls_and_auth};
    use skald_server::auth::{file_entry, new_token, Role};
    let python = client_python();
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = pki("grpc");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).expect("write the CA");
    let [admin, reader, writer] = [(); 3].map(|()| new_token().expect("random"));
    let prefixes = ["orders-".to_owned()];
    let entries = [
        file_entry("ops", Role::Admin, &[], &admin),
        file_entry("watch", Role::Reader, &[], &reader),
        file_entry("shop", Role::Writer, &prefixes, &writer),
    ];
    let server = start_with_tls_and_auth(
        dir.path(),
        &pki,
        &entries,
        &admin,
        &["--grpc-listen", "127.0.0.1:0"],
    );
    let grpc = server.grpc.clone().expect("the gRPC address");
    for stream in ["users-1", "orders-0"] {
        let (status, body) = server.append(stream, json!("any"), &["Placed"]).await;
        assert_eq!(status, 201, "{body}");
    }
    let script = r#"
import os
from kurrentdbclient import KurrentDBClient, NewEvent, StreamState
from kurrentdbclient.exceptions import AccessDeniedError, UnauthenticatedError
grpc_addr, ca = os.environ["SKALD_GRPC"], open(os.environ["SKALD_CA"]).read()
clients = []
def client(user, token):
    c = KurrentDBClient(uri=f"kurrentdb://{user}:{token}@{grpc_addr}?tls=true", root_certificates=ca)
    clients.append(c)
    return c
def event():
    return NewEvent(type="Placed", data=b'{"n": 1}')
def refused(kind, call):
    try:
        call()
    except kind:
        return
    raise SystemExit(f"not refused with {kind.__name__}")
def bare_call(metadata):
    # The client needs credentials with TLS; a bare call shows what the
    # server answers a call without (or with other) credentials.
    import grpc
    from kurrentdbclient.protos.v1 import persistent_pb2, persistent_pb2_grpc, shared_pb2
    with grpc.secure_channel(grpc_addr, grpc.ssl_channel_credentials(ca.encode())) as channel:
        stub = persistent_pb2_grpc.PersistentSubscriptionsStub(channel)
        options = persistent_pb2.ListReq.Options(list_all_subscriptions=shared_pb2.Empty())
        try:
            stub.List(persistent_pb2.ListReq(options=options), metadata=metadata, timeout=30)
            return "OK"
        except grpc.RpcError as e:
            return e.code().name
try:
    print("no credentials:", bare_call(()))
    print("bearer:", bare_call((("authorization", "Bearer " + os.environ["SKALD_READER"]),)))
    unknown = client("shop", "skald_" + "0" * 64)
    refused(UnauthenticatedError, lambda: unknown.get_stream("orders-0"))
    other_name = client("ops", os.environ["SKALD_WRITER"])
    refused(UnauthenticatedError, lambda: other_name.get_stream("orders-0"))
    reader = client("watch", os.environ["SKALD_READER"])
    print("reader reads", len(reader.get_stream("orders-0")))
    refused(AccessDeniedError, lambda: reader.append_to_stream("orders-1", current_version=StreamState.ANY, events=[event()]))
    shop = client("shop", os.environ["SKALD_WRITER"])
    shop.append_to_stream("orders-1", current_version=StreamState.NO_STREAM, events=[event()])
    shop.append_event("orders-1", current_version=0, event=event())
    refused(AccessDeniedError, lambda: shop.append_to_stream("users-2", current_version=StreamState.ANY, events=[event()]))
    refused(AccessDeniedError, lambda: shop.get_stream("users-1"))
    refused(AccessDeniedError, lambda: shop.delete_stream("orders-1", current_version=StreamState.ANY))
    refused(AccessDeniedError, lambda: shop.set_stream_metadata("orders-1", metadata={"$maxCount": 1}))
    print("shop sees", ",".join(e.stream_name for e in shop.read_all()))
    subscription = shop.subscribe_to_all(timeout=30)
    print("shop follows", ",".join(next(subscription).stream_name for _ in range(3)))
    subscription.stop()
    ops = client("ops", os.environ["SKALD_ADMIN"])
    ops.set_stream_metadata("orders-1", metadata={"$maxCount": 5})
    ops.delete_stream("orders-1", current_version=1)
    print("admin done")
finally:
    for c in clients:
        c.close()
"#;
    let child = tokio::process::Command::new(&python)
        .args(["-c", script])
        .env("SKALD_GRPC", &grpc)
        .env("SKALD_CA", &ca)
        .env("SKALD_ADMIN", &admin)
        .env("SKALD_READER", &reader)
        .env("SKALD_WRITER", &writer)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run python");
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the script did not finish within 120 s")
        .expect("wait for python");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "no credentials: UNAUTHENTICATED\nbearer: OK\nreader reads 1\nshop sees orders-0,orders-1,orders-1\nshop follows orders-0,orders-1,orders-1\nadmin done"
    );
    assert_eq!(
        server.metric("skald_auth_unauthorized_total").await,
        Some(3)
    );
    assert_eq!(server.metric("skald_auth_forbidden_total").await, Some(5));
}

/// gRPC subscriptions are capped by `--max-subscriptions` with the error the
/// clients recognise, and a place frees when a subscription ends.
#[tokio::test]
async fn grpc_subscriptions_are_capped() {
    let python = client_python();
    let server =
        TestServer::start_with(&["--grpc-listen", "127.0.0.1:0", "--max-subscriptions", "1"]);
    let grpc = server.grpc.clone().expect("the gRPC address");
    let script = r#"
import os
from kurrentdbclient import KurrentDBClient
from kurrentdbclient.exceptions import MaximumSubscriptionsReachedError
c = KurrentDBClient(uri=f"kurrentdb://{os.environ['SKALD_GRPC']}?tls=false")
first = c.subscribe_to_all(timeout=30)
try:
    c.subscribe_to_all(timeout=30)
    raise SystemExit("a second subscription was accepted")
except MaximumSubscriptionsReachedError as e:
    print("refused:", e)
first.stop()
for attempt in range(200):
    try:
        c.subscribe_to_all(timeout=30).stop()
        print("accepted after the first ended")
        break
    except MaximumSubscriptionsReachedError:
        import time; time.sleep(0.05)
else:
    raise SystemExit("the place never freed")
c.close()
"#;
    let output = run_script(&python, script, &grpc).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout.contains("refused: Maximum subscriptions reached"),
        "{stdout}"
    );
    assert!(
        stdout.contains("accepted after the first ended"),
        "{stdout}"
    );
}

/// Runs a Python `script` with the client, `SKALD_GRPC` set; bounded in time.
async fn run_script(python: &Path, script: &str, grpc: &str) -> std::process::Output {
    let child = tokio::process::Command::new(python)
        .args(["-c", script])
        .env("SKALD_GRPC", grpc)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run python");
    tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the script did not finish within 120 s")
        .expect("wait for python")
}
