//! The stream catalog at a million streams: creates 1,000,000 streams (one event
//! each) through HTTP, then times catalog pages at the start, in the middle
//! (`after=`), with a prefix, and one stream's entry. Bounded: the fill stops
//! after 1,000,000 streams or 10 minutes.
//!
//! Run: `cargo bench --bench catalog` (env `SKALD_CATALOG_STREAMS`, default 1,000,000).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod support;

fn main() -> anyhow::Result<()> {
    let streams: usize = std::env::var("SKALD_CATALOG_STREAMS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let server = support::start_server()?;
    let base = server.base.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let http = reqwest::Client::new();
        let next = Arc::new(AtomicUsize::new(0));
        let deadline = Instant::now() + Duration::from_secs(600);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (http, base, next) = (http.clone(), base.clone(), Arc::clone(&next));
            tasks.push(tokio::spawn(async move {
                let body =
                    serde_json::to_vec(&json!({"events": [{"type": "Created", "data": {}}]}))?;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= streams || Instant::now() > deadline {
                        return anyhow::Ok(());
                    }
                    let url = format!("{base}/streams/tenant-{:02}-stream-{i:07}", i % 100);
                    support::append(&http, &url, &body).await?;
                }
            }));
        }
        for task in tasks {
            task.await??;
        }
        let created = next.load(Ordering::Relaxed).min(streams);
        println!(
            "created {created} streams in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let middle = format!("tenant-50-stream-{:07}", created / 2);
        let cases = [
            (
                "first page of 100".to_owned(),
                "/admin/streams?limit=100".to_owned(),
            ),
            (
                "page of 100 in the middle (after=)".to_owned(),
                format!("/admin/streams?limit=100&after={middle}"),
            ),
            (
                "page of 1000 in the middle".to_owned(),
                format!("/admin/streams?limit=1000&after={middle}"),
            ),
            (
                "prefix tenant-77-, first page".to_owned(),
                "/admin/streams?prefix=tenant-77-&limit=100".to_owned(),
            ),
            (
                "one stream".to_owned(),
                format!(
                    "/admin/streams/tenant-{:02}-stream-{:07}",
                    (created / 3) % 100,
                    created / 3
                ),
            ),
        ];
        println!("| catalog request ({created} streams) | median ms | max ms |");
        println!("|---|---|---|");
        for (name, path) in cases {
            let mut times = Vec::new();
            for _ in 0..21 {
                let t = Instant::now();
                let response: Value = http
                    .get(format!("{base}{path}"))
                    .send()
                    .await?
                    .json()
                    .await?;
                times.push(t.elapsed());
                anyhow::ensure!(response.get("error").is_none(), "{response}");
            }
            times.sort_unstable();
            println!(
                "| {name} | {:.2} | {:.2} |",
                times[10].as_secs_f64() * 1e3,
                times[20].as_secs_f64() * 1e3
            );
        }
        anyhow::Ok(())
    });
    drop(server);
    result
}
