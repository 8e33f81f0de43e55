//! The web console: its files are served by the binary (without a token, with
//! a strict content security policy), `/info` and `/admin/stats` give it what it
//! shows, and the console itself works in headless Chromium (tests/ui, driven
//! by playwright-core), which also writes screenshots and runs axe-core.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use skald_server::auth::{file_entry, new_token, Role};

use crate::support::{assert_error, Secure, TestServer};

struct Tokens {
    admin: String,
    reader: String,
}

/// A server with access control on: an admin token (the helpers' default) and
/// a reader limited to streams starting with `order-`. Each range of a
/// scavenge's compaction takes at least `compaction_delay_ms` (the test
/// build's fault injection), so a browser can watch one run and cancel it.
fn secured(dir: &Path, compaction_delay_ms: u64) -> (TestServer, Tokens) {
    let tokens = Tokens {
        admin: new_token().expect("random"),
        reader: new_token().expect("random"),
    };
    let file = dir.join("auth.toml");
    let text = [
        file_entry("ops", Role::Admin, &[], &tokens.admin),
        file_entry(
            "viewer",
            Role::Reader,
            &["order-".to_owned()],
            &tokens.reader,
        ),
    ]
    .join("\n");
    std::fs::write(&file, text).expect("write auth file");
    let delay = compaction_delay_ms.to_string();
    let server = TestServer::start_secure_with_env(
        &["--auth-file", file.to_str().expect("utf-8 path")],
        &[("SKALD_FAULT_COMPACTION_DELAY_MS", &delay)],
        Secure {
            token: Some(tokens.admin.clone()),
            ..Secure::default()
        },
    );
    (server, tokens)
}

#[tokio::test]
async fn console_files_are_served_without_a_token_and_nothing_else_is() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, _tokens) = secured(dir.path(), 0);
    let anonymous = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");

    let root = anonymous.get(server.url("/")).send().await.expect("GET /");
    assert_eq!(root.status().as_u16(), 308);
    assert_eq!(root.headers()["location"], "/ui/");

    let page = anonymous
        .get(server.url("/ui/"))
        .send()
        .await
        .expect("GET /ui/");
    assert_eq!(page.status().as_u16(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(policy.contains("connect-src 'self'"), "{policy}");
    let html = page.text().await.expect("body");
    assert!(
        html.contains(r#"<script type="module" src="app.js">"#),
        "{html}"
    );
    // Nothing is loaded from elsewhere: no absolute URLs in the page.
    assert!(!html.contains("http://") && !html.contains("https://"));

    for (file, content_type) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("api.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let answer = anonymous
            .get(server.url(&format!("/ui/{file}")))
            .send()
            .await
            .expect("GET a console file");
        assert_eq!(answer.status().as_u16(), 200, "{file}");
        assert_eq!(answer.headers()["content-type"], content_type, "{file}");
        assert_eq!(answer.headers()["x-content-type-options"], "nosniff");
    }

    let missing = anonymous
        .get(server.url("/ui/secret.toml"))
        .send()
        .await
        .expect("GET");
    let status = missing.status().as_u16();
    let body: Value = missing.json().await.expect("json");
    assert_error(status, &body, 404, "not_found");

    // Only reading the console's files is open: the API still wants a token.
    let info = anonymous
        .get(server.url("/info"))
        .send()
        .await
        .expect("GET");
    assert_eq!(info.status().as_u16(), 401);
    let post = anonymous
        .post(server.url("/ui/"))
        .send()
        .await
        .expect("POST");
    assert_eq!(post.status().as_u16(), 401);
}

#[tokio::test]
async fn info_names_the_caller_and_stats_keep_an_append_history() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, tokens) = secured(dir.path(), 0);
    let (status, _) = server
        .append("order-1", json!("no_stream"), &["A", "B", "C"])
        .await;
    assert_eq!(status, 201);

    let reader: Value = reqwest::Client::new()
        .get(server.url("/info"))
        .bearer_auth(&tokens.reader)
        .send()
        .await
        .expect("GET /info")
        .json()
        .await
        .expect("json");
    assert_eq!(
        reader["caller"],
        json!({"name": "viewer", "role": "reader", "stream_prefixes": ["order-"]})
    );
    assert!(reader.get("data_dir").is_none(), "{reader}");
    let (_, admin) = server.get("/info").await;
    assert_eq!(admin["caller"], json!({"name": "ops", "role": "admin"}));

    let (status, stats) = server.get("/admin/stats").await;
    assert_eq!(status, 200);
    let history = stats["append_history"].as_array().expect("append_history");
    assert_eq!(history.len(), 60, "{stats}");
    // The three events are in the last interval, or in the one before when
    // the append and the stats request straddle a 10-second boundary.
    let recent: f64 = history[58..]
        .iter()
        .map(|r| r.as_f64().expect("number"))
        .sum();
    assert!(recent > 0.0, "{history:?}");

    // Access control off: no caller.
    let open = TestServer::start();
    let (_, info) = open.get("/info").await;
    assert!(info.get("caller").is_none(), "{info}");
}

/// Where the screenshots go: `ui-screenshots` in the target directory.
fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("ui-screenshots")
}

/// The browser tests' directory, with its npm packages installed.
fn ui_tests_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui");
    let installed = dir
        .join("node_modules/playwright-core/package.json")
        .exists()
        && dir.join("node_modules/axe-core/axe.min.js").exists();
    if !installed {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("the console's browser tests need Node.js and npm on PATH");
        assert!(status.success(), "npm ci in {} failed", dir.display());
    }
    dir
}

#[tokio::test]
async fn the_console_works_in_headless_chromium() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "the console's browser tests need Chromium at {chromium} (Debian: apt-get install chromium; \
         .ci/run installs it), or CHROMIUM=/path/to/chrome"
    );
    let ui = ui_tests_dir();
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, tokens) = secured(dir.path(), 250);
    for stream in [
        "order-1", "order-2", "order-3", "order-4", "order-5", "secret-1",
    ] {
        let sku = format!("A-{}", stream.rsplit('-').next().expect("suffix"));
        let (status, body) = server
            .post(
                &format!("/streams/{stream}"),
                &json!({"expected_revision": "no_stream", "events": [
                    {"type": "OrderPlaced", "data": {"total": 30}},
                    {"type": "ItemAdded", "data": {"sku": sku}, "metadata": {"user": "ann"}},
                    {"type": "ItemAdded", "data": {"sku": sku}},
                ]}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }

    let shots = screenshot_dir();
    let _ = std::fs::remove_dir_all(&shots);
    let mut child = tokio::process::Command::new("node")
        .arg("console.test.mjs")
        .current_dir(&ui)
        .env("SKALD_URL", &server.base)
        .env("SKALD_ADMIN_TOKEN", &tokens.admin)
        .env("SKALD_READER_TOKEN", &tokens.reader)
        .env("SCREENSHOT_DIR", &shots)
        .env("CHROMIUM", &chromium)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the console's browser tests need Node.js on PATH");
    // Every step in the script waits at most 15 s; the whole run is bounded too.
    let status = tokio::time::timeout(Duration::from_secs(240), child.wait())
        .await
        .expect("the browser tests did not finish within 240 s")
        .expect("wait for node");
    assert!(status.success(), "the browser tests failed: {status}");

    for page in ["dashboard", "streams", "stream", "all", "jobs"] {
        for width in ["laptop", "phone"] {
            let file = shots.join(format!("{page}-{width}.png"));
            let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            assert!(size > 1000, "{} missing or empty", file.display());
        }
    }
}
