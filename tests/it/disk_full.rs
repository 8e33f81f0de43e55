//! A full disk, for real: the data directory on a small tmpfs the test mounts,
//! filled by a ballast file. Needs root (or CAP_SYS_ADMIN); where mounting is
//! refused the test says so and skips.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{verify_clean, LineReader, TestServer};

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size_mib: u64) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_owned());
        }
        Ok(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the filesystem of `path` up to `leave` free bytes: writes until it is
/// full, then gives back `leave` (tmpfs frees truncated pages at once).
fn fill_leaving(path: &Path, leave: u64) -> PathBuf {
    let ballast = path.join("ballast");
    let mut file = std::fs::File::create(&ballast).expect("ballast");
    let chunk = vec![0xa5u8; 1 << 20];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    file.set_len(written.saturating_sub(leave))
        .expect("truncate");
    ballast
}

/// Hex text that does not compress (so the memtable's flush needs real room).
fn noise(seed: &mut u64, bytes: usize) -> String {
    let mut out = String::with_capacity(bytes);
    while out.len() < bytes {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        out.push_str(&format!("{:016x}", *seed));
    }
    out
}

async fn append(server: &TestServer, events: Vec<Value>) -> (u16, Option<String>, Value) {
    let response = server
        .http
        .post(server.url("/streams/full"))
        .json(&json!({ "events": events }))
        .send()
        .await
        .expect("send");
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().expect("ascii").to_owned());
    (status, retry, response.json().await.expect("json"))
}

/// The next event a subscription delivers, skipping control lines.
async fn next_event(subscription: &mut LineReader) -> Value {
    loop {
        let line = subscription.next_json(Duration::from_secs(30)).await;
        let line = line.expect("a subscription line within 30 s");
        if line["type"] == "event" {
            return line["event"].clone();
        }
    }
}

/// Appends fail with 507 while the disk is full, reads and subscriptions go
/// on, appends succeed again once space is freed (no restart), and after a
/// `kill -9` exactly the acknowledged events are there.
#[tokio::test]
async fn a_full_disk_refuses_appends_then_recovers_without_a_restart() {
    let fs = match Tmpfs::mount(256) {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("SKIPPED a_full_disk_refuses_appends_then_recovers_without_a_restart: cannot mount a tmpfs here ({why}); run the tests as root to cover the disk-full path");
            return;
        }
    };
    let mut server = TestServer::start_in(fs.path().join("data"), &[]);
    let mut subscription = server.subscribe("/subscriptions/all", &[]).await;
    let ballast = fill_leaving(fs.path(), 6 << 20);

    // Batches of 16 incompressible 30 KB events until the disk is full: the
    // WAL's preallocated space, then the memtable's flush, run out.
    let mut seed = 0x5eed_u64;
    let (mut acknowledged, mut refused) = (0u64, None);
    for _ in 0..400 {
        let events = (0..16)
            .map(|_| json!({"type": "Noise", "data": noise(&mut seed, 30_000)}))
            .collect();
        match append(&server, events).await {
            (201, _, _) => acknowledged += 16,
            other => {
                refused = Some(other);
                break;
            }
        }
    }
    let (status, retry, body) = refused.expect("the disk never filled up");
    assert_eq!(
        (status, body["error"].as_str()),
        (507, Some("insufficient_storage")),
        "{body}"
    );
    assert_eq!(retry.as_deref(), Some("5"));
    let message = body["message"].as_str().expect("message");
    assert!(
        !message.contains(fs.path().to_str().expect("utf-8")),
        "a path leaked: {message}"
    );
    let (status, _, _) = append(&server, vec![json!({"type": "Small", "data": 1})]).await;
    assert_eq!(status, 507, "still full");

    // Reads and subscriptions go on.
    let (status, page) = server.get("/all?limit=5").await;
    assert_eq!(
        (status, page["events"].as_array().map(Vec::len)),
        (200, Some(5))
    );
    let first = next_event(&mut subscription).await;
    assert_eq!(first["position"], 0);
    let metrics = server.metrics_text().await;
    assert!(metrics.contains("skald_disk_full 1"), "{metrics}");

    // Space comes back: RocksDB notices (it checks every few seconds) and
    // appends succeed again, without a restart.
    std::fs::remove_file(&ballast).expect("remove ballast");
    let deadline = Instant::now() + Duration::from_secs(60);
    let recovered = loop {
        match append(&server, vec![json!({"type": "After", "data": "space"})]).await {
            (201, _, body) => break body,
            (507, _, _) => {}
            other => panic!("unexpected answer while recovering: {other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "appends still fail 60 s after space was freed"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    acknowledged += 1;
    assert_eq!(recovered["last_position"], acknowledged - 1, "{recovered}");
    let metrics = server.metrics_text().await;
    assert!(metrics.contains("skald_disk_full 0"), "{metrics}");
    // The subscription delivers everything, the new event last.
    for position in 1..acknowledged {
        assert_eq!(next_event(&mut subscription).await["position"], position);
    }

    // Nothing acknowledged is lost, nothing refused appears.
    server.kill_and_restart();
    let (_, page) = server.get("/streams/full?direction=backward&limit=1").await;
    assert_eq!(page["last_revision"], acknowledged - 1, "{page}");
    assert_eq!(page["events"][0]["type"], "After");
    let (_, head) = server.get("/all?direction=backward&limit=1").await;
    assert_eq!(head["head_position"], acknowledged - 1);
    verify_clean(&server).await;
    server.kill();
}
