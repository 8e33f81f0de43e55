//! What the end-to-end benchmarks share: the real server on a loopback port with
//! a temp data dir, and a checked append.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A running `skald serve`; killed on drop.
pub struct Server {
    child: Child,
    pub base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the release binary (or `SKALD_BENCH_BIN`, to compare two builds
/// with the same load generator) on `127.0.0.1:0` with a fresh data dir.
pub fn start_server() -> anyhow::Result<Server> {
    let dir = tempfile::tempdir()?;
    let binary =
        std::env::var("SKALD_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_skald").to_owned());
    let mut child = Command::new(binary)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    let base = line
        .trim()
        .trim_start_matches("skald listening on ")
        .to_owned();
    Ok(Server {
        child,
        base,
        _dir: dir,
    })
}

/// POSTs an append body to `url` and checks for 201.
pub async fn append(http: &reqwest::Client, url: &str, body: &[u8]) -> anyhow::Result<()> {
    let response = http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == 201,
        "append to {url} failed: {}",
        response.status()
    );
    response.bytes().await?;
    Ok(())
}
