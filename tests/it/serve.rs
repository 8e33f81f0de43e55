//! `skald serve` itself: refusing bad flags and a data directory in use.

use std::process::{Command, Stdio};

use crate::support::TestServer;

fn serve(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_skald"))
        .arg("serve")
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .output()
        .expect("run skald serve")
}

#[test]
fn inconsistent_limits_are_refused_with_a_message() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("d");
    let data = data.to_str().expect("utf-8");
    let out = serve(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data,
        "--max-append-bytes",
        "1000",
        "--max-event-bytes",
        "2000",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--max-event-bytes") && err.contains("--max-append-bytes"),
        "{err}"
    );
    let out = serve(&["--listen", "not-an-address", "--data-dir", data]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));
}

/// Without access control, a non-loopback address is refused unless the
/// operator says `--insecure-no-auth` (checked before anything is bound; the
/// flag's acceptance is a unit test of the config, so no test listens beyond
/// loopback).
#[test]
fn a_non_loopback_address_without_auth_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("d");
    for listen in ["0.0.0.0:0", "[::]:0", "192.0.2.7:2114"] {
        let out = serve(&[
            "--listen",
            listen,
            "--data-dir",
            data.to_str().expect("utf-8"),
        ]);
        assert!(!out.status.success(), "{listen}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--insecure-no-auth") && err.contains("refusing"),
            "{err}"
        );
        assert!(!data.exists(), "nothing may be created before the refusal");
    }
}

#[test]
fn a_data_directory_in_use_is_refused() {
    let server = TestServer::start();
    let data = server.data_dir().to_str().expect("utf-8").to_owned();
    let out = serve(&["--listen", "127.0.0.1:0", "--data-dir", &data]);
    assert!(
        !out.status.success(),
        "a second server opened the same data directory"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot open the store") && err.contains("lock"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "it must not claim to listen");
}

/// Every flag of `skald serve` is in the flag table of docs/operations.md,
/// and the table lists no flag the binary does not have.
#[test]
fn every_serve_flag_is_documented() {
    fn flags(text: &str) -> std::collections::BTreeSet<String> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(str::to_owned)
            .collect()
    }
    let help = serve(&["--help"]);
    assert!(help.status.success());
    let mut in_help = flags(&String::from_utf8_lossy(&help.stdout));
    in_help.remove("--help");
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .expect("docs/operations.md");
    let table: String = docs
        .split("## Running")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Running section")
        .lines()
        .filter(|l| l.starts_with("| `--"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(flags(&table), in_help);
}

/// The async runtime has the workers `--worker-threads` asks for, one per
/// CPU by default, as `/info` reads them from the runtime itself; 0 is
/// refused.
#[tokio::test]
async fn the_runtime_has_the_worker_threads_asked_for() {
    let default = TestServer::start();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (_, info) = default.get("/info").await;
    assert_eq!(info["worker_threads"], cpus, "{info}");
    let other = cpus + 1;
    let asked = TestServer::start_with(&["--worker-threads", &other.to_string()]);
    let (_, info) = asked.get("/info").await;
    assert_eq!(info["worker_threads"], other, "{info}");

    let out = serve(&["--worker-threads", "0", "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--worker-threads"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
