//! HTTPS end to end: certificates made at test time (rcgen), appends, reads
//! and a subscription over TLS with a token, the CLI's `--ca-file`, clients
//! that do not trust the certificate, a certificate renewed by SIGHUP, and the
//! handshake's time limit.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::json;
use skald_client::{Error, EventData, ExpectedRevision, ReadOptions, SubscribeOptions};
use skald_server::auth::{file_entry, new_token, Role};

use crate::support::{read_until_closed, Secure, TestServer};

/// A private CA and a server certificate it signed for 127.0.0.1 and localhost.
pub(crate) struct Pki {
    pub ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

pub(crate) fn pki(name: &str) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("CA");
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("certificate");
    Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// Writes the server's certificate and key into `dir`; their paths.
pub(crate) fn install(dir: &Path, pki: &Pki) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &pki.cert_pem).expect("write cert");
    std::fs::write(&key, &pki.key_pem).expect("write key");
    (cert, key)
}

pub(crate) fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Starts a server that serves `pki`'s certificate (installed in `dir`) and
/// takes the tokens of the auth file lines `entries` (written to `dir`), with
/// `extra` flags first; the test client trusts `pki`'s CA and sends `token`.
pub(crate) fn start_with_tls_and_auth(
    dir: &Path,
    pki: &Pki,
    entries: &[String],
    token: &str,
    extra: &[&str],
) -> TestServer {
    let (cert, key) = install(dir, pki);
    let auth = dir.join("auth.toml");
    std::fs::write(&auth, entries.join("\n")).expect("auth file");
    let mut args = extra.to_vec();
    args.extend([
        "--tls-cert",
        path(&cert),
        "--tls-key",
        path(&key),
        "--auth-file",
        path(&auth),
    ]);
    TestServer::start_secure(
        &args,
        Secure {
            token: Some(token.to_owned()),
            ca_pem: Some(pki.ca_pem.clone().into_bytes()),
            ..Secure::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_reads_and_a_subscription_work_over_tls_with_a_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = pki("main");
    let token = new_token().expect("random");
    let entries = [file_entry("ops", Role::Admin, &[], &token)];
    let server = start_with_tls_and_auth(dir.path(), &pki, &entries, &token, &[]);
    assert!(
        server.base.starts_with("https://127.0.0.1:"),
        "{}",
        server.base
    );
    let client = server.client();
    let info = client.info().await.expect("info over TLS");
    assert!(info.tls && info.auth, "{info:?}");

    let mut live = client.subscribe_stream("order-1", SubscribeOptions::default());
    let event = |n: u64| EventData::json("Placed", &json!({ "n": n })).expect("event");
    client
        .append("order-1", ExpectedRevision::NoStream, [event(0), event(1)])
        .await
        .expect("append over TLS");
    let page = client
        .read_stream_page("order-1", &ReadOptions::default())
        .await
        .expect("read over TLS");
    assert_eq!(page.events.len(), 2);
    let mut revisions = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while revisions.len() < 3 {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(remaining, live.next())
            .await
            .expect("subscription within 10 s")
            .expect("open")
            .expect("message");
        match message {
            skald_client::SubscriptionMessage::Event(e) => revisions.push(e.revision),
            skald_client::SubscriptionMessage::CaughtUp { .. } => {
                // Live now: this one arrives pushed.
                client
                    .append("order-1", ExpectedRevision::Exact(1), [event(2)])
                    .await
                    .expect("append");
            }
            _ => {}
        }
    }
    assert_eq!(revisions, [0, 1, 2]);

    // A client that does not trust the CA is refused by its own TLS, and a
    // plain-HTTP client gets nothing: both are counted as failed handshakes.
    let untrusting = skald_client::Client::builder(&server.base)
        .auth_token(&token)
        .max_retries(0)
        .build()
        .expect("client");
    let err = untrusting.info().await.expect_err("unknown issuer");
    assert!(matches!(err, Error::Transport(_)), "{err:?}");
    let plain = server.base.replace("https://", "http://");
    let answer = reqwest::Client::new()
        .get(format!("{plain}/health/live"))
        .send()
        .await;
    assert!(answer.is_err(), "{answer:?}");
    let failures = server
        .metric("skald_tls_handshake_failures_total")
        .await
        .expect("counter");
    assert!(failures >= 2, "{failures}");

    // The CLI: --ca-file and a token; without the CA it fails.
    let skald = env!("CARGO_BIN_EXE_skald");
    let cli = |extra: &[&str]| {
        Command::new(skald)
            .args([
                "read",
                "order-1",
                "--json",
                "--url",
                &server.base,
                "--token",
                &token,
            ])
            .args(extra)
            .env_remove("SKALD_CA_FILE")
            .output()
            .expect("run skald")
    };
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).expect("write CA");
    let read = cli(&["--ca-file", path(&ca_file)]);
    assert!(read.status.success(), "{read:?}");
    assert_eq!(String::from_utf8_lossy(&read.stdout).lines().count(), 3);
    let refused = cli(&[]);
    assert!(!refused.status.success(), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_after_sighup() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (first, second) = (pki("first"), pki("second"));
    let (cert, key) = install(dir.path(), &first);
    let server = TestServer::start_secure(
        &["--tls-cert", path(&cert), "--tls-key", path(&key)],
        Secure {
            ca_pem: Some(first.ca_pem.clone().into_bytes()),
            ..Secure::default()
        },
    );
    let trusting = |pki: &Pki| {
        skald_client::Client::builder(&server.base)
            .ca_certificate_pem(pki.ca_pem.clone())
            .max_retries(0)
            .build()
            .expect("client")
    };
    trusting(&first).info().await.expect("first certificate");
    assert!(trusting(&second).info().await.is_err());

    install(dir.path(), &second);
    let status = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
    // New connections get the new certificate once the reload ran.
    let deadline = Instant::now() + Duration::from_secs(20);
    while trusting(&second).info().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(trusting(&first).info().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_completes_its_handshake_is_closed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = pki("slow");
    let (cert, key) = install(dir.path(), &pki);
    let server = TestServer::start_secure(
        &[
            "--tls-cert",
            path(&cert),
            "--tls-key",
            path(&key),
            "--header-timeout-secs",
            "1",
        ],
        Secure {
            ca_pem: Some(pki.ca_pem.into_bytes()),
            ..Secure::default()
        },
    );
    let addr = server.base.trim_start_matches("https://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let started = Instant::now();
    // Closed by the server (EOF) well before the test's own limit.
    let answer = read_until_closed(&mut socket, Duration::from_secs(10)).await;
    assert!(answer.is_empty(), "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(9));
    let metrics = server.metrics_text().await;
    assert!(
        metrics.contains("skald_connections_timed_out_total 1"),
        "{metrics}"
    );
}

#[test]
fn a_missing_or_bad_certificate_stops_the_server_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = pki("bad");
    let (cert, key) = install(dir.path(), &pki);
    std::fs::write(dir.path().join("garbage.pem"), "not PEM at all").expect("write");
    let cases = [
        (
            dir.path().join("none.pem"),
            key.clone(),
            "cannot read the certificate chain",
        ),
        (
            dir.path().join("garbage.pem"),
            key.clone(),
            "no CERTIFICATE block",
        ),
        (
            cert.clone(),
            dir.path().join("garbage.pem"),
            "cannot read the private key",
        ),
    ];
    for (cert, key, expected) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_skald"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .output()
            .expect("run skald");
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
}
