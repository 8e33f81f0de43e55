//! Starts the real `skald` binary on an ephemeral loopback port with a temp data
//! dir, and small helpers to drive it over HTTP.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

/// The seed of a randomized test: `SKALD_TEST_SEED` when set (to replay a run),
/// else a fresh one; printed either way, so a failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = match std::env::var("SKALD_TEST_SEED") {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("SKALD_TEST_SEED must be a u64, got {text:?}")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos() as u64,
    } | 1; // xorshift needs a non-zero state
    eprintln!("{test}: seed {seed} (replay with SKALD_TEST_SEED={seed})");
    seed
}

/// A Python virtual environment `name` in the target directory with the
/// packages of `requirements` (a path from the project root) installed: made
/// when missing, remade when the file changed since (`.ci/run` makes the
/// same ones first, so CI shows the installs). Returns the environment's
/// directory. Callers make each environment once per run.
pub fn python_venv(name: &str, requirements: &str) -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join(name);
    let python = venv.join("bin/python");
    let requirements = Path::new(env!("CARGO_MANIFEST_DIR")).join(requirements);
    let installed = venv.join("requirements.txt");
    let current = std::fs::read(&installed).ok() == std::fs::read(&requirements).ok();
    if !python.exists() || !current {
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("these tests need python3 (with venv) on PATH");
        assert!(
            status.success(),
            "python3 -m venv {} failed",
            venv.display()
        );
        let status = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "-r"])
            .arg(&requirements)
            .status()
            .expect("run pip");
        assert!(
            status.success(),
            "pip install -r {} failed",
            requirements.display()
        );
        std::fs::copy(&requirements, &installed).expect("record the installed requirements");
    }
    venv
}

/// Bytes of the files under `dir` (a data directory, WAL included). The live
/// WAL is preallocated (tens of MiB) while the server runs; a closed one is
/// trimmed to what was written, so measure a stopped server's directory.
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| {
            let entry = entry.expect("entry");
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                dir_bytes(&entry.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

/// The lengths of the files in `dir` (a data directory) named `*.{ext}`.
fn lengths(dir: &Path, ext: &str) -> Vec<u64> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == ext))
        .map(|path| std::fs::metadata(path).expect("metadata").len())
        .collect()
}

/// Bytes of the SST files in `dir` (a data directory): the stored data once
/// memtables are flushed, without the WAL.
pub fn sst_bytes(dir: &Path) -> u64 {
    lengths(dir, "sst").iter().sum()
}

/// The lengths of the write-ahead log files in `dir` (a data directory).
pub fn wal_lengths(dir: &Path) -> Vec<u64> {
    lengths(dir, "log")
}

/// Runs a verify job to its end and checks that it completed without
/// problems; returns its report.
pub async fn verify_clean(server: &TestServer) -> Value {
    let (status, started) = server.post("/admin/verify", &Value::Null).await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().expect("id");
    let report = wait_job(server, &format!("/admin/verify/{id}")).await;
    assert_eq!(
        (report["result"].as_str(), report["problems_found"].as_u64()),
        (Some("completed"), Some(0)),
        "{report}"
    );
    report
}

/// Polls a job report (`/admin/scavenge/{id}`, `/admin/verify/{id}`) until it
/// is no longer running; panics after 300 s.
pub async fn wait_job(server: &TestServer, path: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let (status, report) = server.get(path).await;
        assert_eq!(status, 200, "{report}");
        if report["result"] != "running" {
            return report;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job still running: {report}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads until the server closes the connection (or resets it), within
/// `within`; returns what it sent.
pub async fn read_until_closed(socket: &mut tokio::net::TcpStream, within: Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server kept the connection open past {within:?}"
    );
    String::from_utf8_lossy(&answer).into_owned()
}

/// A running server; killed (SIGKILL) on drop.
pub struct TestServer {
    child: Option<Child>,
    pub base: String,
    /// `host:port` of the KurrentDB-compatible gRPC front end, when the
    /// server was started with `--grpc-listen`.
    pub grpc: Option<String>,
    pub http: reqwest::Client,
    data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    secure: Secure,
}

/// How the test talks to a server with access control or TLS on.
#[derive(Debug, Clone, Default)]
pub struct Secure {
    /// Sent as the bearer token by `http`, `client()` and every helper.
    pub token: Option<String>,
    /// The CA the test's clients trust (the server's certificate is its).
    pub ca_pem: Option<Vec<u8>>,
    /// Where the server's log goes (at info level) instead of the test's stderr.
    pub log_file: Option<PathBuf>,
}

impl TestServer {
    /// A server on a fresh temp data dir.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server with extra `serve` flags.
    pub fn start_with(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// A server with extra `serve` flags and environment variables (the test
    /// build's fault-injection knobs among them).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let temp = tempfile::tempdir().expect("temp dir");
        let data_dir = temp.path().join("data");
        Self::launch_new(data_dir, Some(temp), args, env, Secure::default())
    }

    /// A server whose data lives in `data_dir` (which the caller cleans up).
    pub fn start_in(data_dir: PathBuf, args: &[&str]) -> Self {
        Self::launch_new(data_dir, None, args, &[], Secure::default())
    }

    /// A server with access control or TLS flags in `args`, talked to as `secure` says.
    pub fn start_secure(args: &[&str], secure: Secure) -> Self {
        Self::start_secure_with_env(args, &[], secure)
    }

    /// As `start_secure`, with environment variables (fault-injection knobs).
    pub fn start_secure_with_env(args: &[&str], env: &[(&str, &str)], secure: Secure) -> Self {
        let temp = tempfile::tempdir().expect("temp dir");
        let data_dir = temp.path().join("data");
        Self::launch_new(data_dir, Some(temp), args, env, secure)
    }

    fn launch_new(
        data_dir: PathBuf,
        temp: Option<tempfile::TempDir>,
        args: &[&str],
        env: &[(&str, &str)],
        secure: Secure,
    ) -> Self {
        let extra_args = args.iter().map(|a| a.to_string()).collect();
        let mut server = Self {
            child: None,
            base: String::new(),
            grpc: None,
            http: reqwest::Client::new(),
            data_dir,
            _temp: temp,
            extra_args,
            secure,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        // A restart keeps the address, so clients can reconnect.
        let listen = self
            .base
            .split_once("://")
            .map_or("127.0.0.1:0", |(_, addr)| addr)
            .to_owned();
        let mut command = Command::new(env!("CARGO_BIN_EXE_skald"));
        command
            .arg("serve")
            .arg("--listen")
            .arg(&listen)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra_args)
            .env("RUST_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(path) = &self.secure.log_file {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("log file");
            command.env("RUST_LOG", "info").stderr(log);
        }
        let mut child = command.spawn().expect("start skald");
        let stdout = child.stdout.take().expect("stdout piped");
        let mut line = String::new();
        let mut stdout = BufReader::new(stdout);
        stdout
            .read_line(&mut line)
            .expect("read the listening line");
        self.grpc = if self.extra_args.iter().any(|a| a == "--grpc-listen") {
            let mut grpc = String::new();
            stdout.read_line(&mut grpc).expect("read the gRPC line");
            let addr = grpc
                .trim()
                .strip_prefix("skald grpc listening on ")
                .unwrap_or_else(|| panic!("unexpected second line: {grpc:?}"));
            Some(addr.to_owned())
        } else {
            None
        };
        let url = line
            .trim()
            .strip_prefix("skald listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_owned();
        self.base = url;
        self.child = Some(child);
        // Pooled connections to the previous process are dead.
        self.http = self.http_client();
    }

    /// A plain HTTP client that sends the token and trusts the CA of `secure`.
    fn http_client(&self) -> reqwest::Client {
        let mut builder = reqwest::Client::builder();
        if let Some(token) = &self.secure.token {
            let mut headers = reqwest::header::HeaderMap::new();
            let value = format!("Bearer {token}").parse().expect("header value");
            headers.insert(reqwest::header::AUTHORIZATION, value);
            builder = builder.default_headers(headers);
        }
        if let Some(pem) = &self.secure.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).expect("CA PEM");
            builder = builder.tls_certs_only(certs);
        }
        builder.build().expect("http client")
    }

    /// The process id of the running server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// SIGKILLs the server (no shutdown, no flush) and starts it again on the same data.
    pub fn kill_and_restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// SIGKILLs the server.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("server running");
        let pid = child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        for _ in 0..200 {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        panic!("server did not exit within 10 s of SIGTERM");
    }

    /// Restarts after `terminate`.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server first");
        self.launch();
    }

    /// A `skald-client` for this server.
    pub fn client(&self) -> skald_client::Client {
        self.client_with(self.secure.token.as_deref())
    }

    /// A `skald-client` for this server with another token (or none).
    pub fn client_with(&self, token: Option<&str>) -> skald_client::Client {
        let mut builder =
            skald_client::Client::builder(&self.base).initial_backoff(Duration::from_millis(50));
        if let Some(token) = token {
            builder = builder.auth_token(token);
        }
        if let Some(pem) = &self.secure.ca_pem {
            builder = builder.ca_certificate_pem(pem.clone());
        }
        builder.build().expect("client")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// POSTs `body` to `path`; returns status and JSON.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request");
        status_json(response).await
    }

    /// POSTs raw bytes to `path`.
    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let response = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        status_json(response).await
    }

    /// GETs `path`; returns status and JSON.
    /// The Prometheus text of `GET /metrics`.
    pub async fn metrics_text(&self) -> String {
        let response = self.http.get(self.url("/metrics")).send().await;
        let response = response.expect("GET /metrics");
        assert_eq!(response.status(), 200);
        response.text().await.expect("metrics text")
    }

    /// Polls `GET /admin/stats` until the gauge `field` (e.g. `long_polls_waiting`,
    /// `live_subscriptions`) reaches `at_least`: a request has reached the server
    /// and is waiting, whatever the machine's speed. Panics after 60 s.
    pub async fn wait_for_gauge(&self, field: &str, at_least: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (status, stats) = self.get("/admin/stats").await;
            assert_eq!(status, 200, "{stats}");
            if stats[field].as_u64().is_some_and(|n| n >= at_least) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{field} never reached {at_least}: {stats}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(self.url(path)).send().await.expect("request");
        status_json(response).await
    }

    /// Appends events of the given types to `stream` with `expected`.
    pub async fn append(&self, stream: &str, expected: Value, types: &[&str]) -> (u16, Value) {
        let events: Vec<Value> = types
            .iter()
            .enumerate()
            .map(|(i, t)| json!({"type": t, "data": {"i": i}}))
            .collect();
        self.post(
            &format!("/streams/{stream}"),
            &json!({"expected_revision": expected, "events": events}),
        )
        .await
    }

    /// Reads all of `$all` forward, page by page.
    pub async fn read_all_events(&self) -> Vec<Value> {
        let mut from = 0;
        let mut events = Vec::new();
        loop {
            let (status, page) = self.get(&format!("/all?from={from}&limit=4096")).await;
            assert_eq!(status, 200, "{page}");
            let batch = page["events"].as_array().expect("events").clone();
            if batch.is_empty() {
                return events;
            }
            events.extend(batch);
            from = page["next_position"].as_u64().expect("next_position");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub async fn status_json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status {status}: body is not JSON ({e}): {text:?}"));
    (status, value)
}

/// Asserts the JSON error shape and code.
pub fn assert_error(status: u16, body: &Value, want_status: u16, code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// Reads a streamed response line by line (NDJSON) or event by event (SSE).
pub struct LineReader {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: Vec<u8>,
}

impl LineReader {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            body: Box::pin(response.bytes_stream()),
            buffer: Vec::new(),
        }
    }

    /// The next piece ending in `separator`, or `None` when the body ended.
    async fn next_piece(&mut self, separator: &[u8], timeout: Duration) -> Option<String> {
        use futures::StreamExt;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(at) = self
                .buffer
                .windows(separator.len())
                .position(|w| w == separator)
            {
                let piece: Vec<u8> = self.buffer.drain(..at + separator.len()).collect();
                return Some(String::from_utf8(piece[..at].to_vec()).expect("UTF-8"));
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.buffer.extend_from_slice(&chunk),
                Ok(Some(Err(e))) => panic!("body error: {e}"),
                Ok(None) => return None,
                Err(_) => panic!("no complete line within {timeout:?}"),
            }
        }
    }

    /// The next NDJSON line as JSON; `None` at the end of the body.
    pub async fn next_json(&mut self, timeout: Duration) -> Option<Value> {
        let line = self.next_piece(b"\n", timeout).await?;
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}")))
    }

    /// The next SSE event as (event, id, data); `None` at the end of the body.
    pub async fn next_sse(&mut self, timeout: Duration) -> Option<(String, Option<u64>, Value)> {
        let block = self.next_piece(b"\n\n", timeout).await?;
        let (mut event, mut id, mut data) = (String::new(), None, Value::Null);
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event: ") {
                event = v.to_owned();
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.parse().expect("numeric id"));
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = serde_json::from_str(v).expect("JSON data");
            }
        }
        Some((event, id, data))
    }
}

impl TestServer {
    /// Opens a subscription (NDJSON unless `accept` says otherwise).
    pub async fn subscribe(&self, path: &str, headers: &[(&str, &str)]) -> LineReader {
        let mut request = self.http.get(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("subscribe");
        assert_eq!(response.status(), 200, "{path}");
        LineReader::new(response)
    }

    /// The server's resident set size in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.proc_status_kib("VmRSS:")
    }

    /// The server's peak resident set size so far, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.proc_status_kib("VmHWM:")
    }

    /// One unlabelled counter or gauge of `/metrics` (`None` when absent).
    pub async fn metric(&self, name: &str) -> Option<u64> {
        self.metrics_text()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Polls `/metrics` until `name` reads exactly `value`. Panics after 30 s.
    pub async fn wait_for_metric(&self, name: &str, value: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.metric(name).await != Some(value) {
            assert!(
                std::time::Instant::now() < deadline,
                "{name} never read {value}: {:?}",
                self.metric(name).await
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn proc_status_kib(&self, field: &str) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
    }
}
