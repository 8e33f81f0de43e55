//! End-to-end load generator: starts the real `skald` binary on a loopback port
//! with a temp data dir and measures appends (by concurrency and batch size) and
//! `$all` reads over HTTP. Every loop is bounded in count and in time.
//!
//! Run: `cargo bench --bench load` (env `SKALD_BENCH_SECS`, default 5 per scenario).
//!
//! Every row also shows how fast the disk synced just before it (a short
//! `write` + `fdatasync` probe beside the server's data): on shared machines
//! that moves more than most changes under test, so rows of two runs compare
//! only where the probes are alike.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod support;
use support::{append, start_server, Server};

const MAX_REQUESTS_PER_SCENARIO: usize = 200_000;

struct Outcome {
    requests: usize,
    events: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Outcome {
    fn percentile(&mut self, p: f64) -> Duration {
        self.latencies.sort_unstable();
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies.get(i).copied().unwrap_or_default()
    }
}

/// What each appended event carries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Payload {
    /// ~130 B of data, no id (the server assigns one), no metadata: the same
    /// body for every request.
    Plain,
    /// What `../shared/bench` (esbench) sends: a client-chosen random UUID per
    /// event, ~150 B of data and ~70 B of metadata, a fresh body per request.
    Harness,
}

/// One request's body.
fn append_body(payload: Payload, batch: usize, seq: &mut u64) -> anyhow::Result<Vec<u8>> {
    let events: Vec<Value> = (0..batch)
        .map(|i| match payload {
            Payload::Plain => {
                json!({"type": "BenchEvent", "data": {"i": i, "payload": "x".repeat(100)}})
            }
            Payload::Harness => {
                *seq += 1;
                json!({
                    "id": uuid::Uuid::new_v4(),
                    "type": "FundsDeposited",
                    "data": {
                        "accountId": format!("acc-{:06}", *seq % 1_000_000),
                        "amount": 100 + *seq % 900,
                        "currency": "EUR",
                        "reference": format!("inv-{:010}", *seq),
                        "note": "esbench payload of about one hundred and fifty bytes",
                    },
                    "metadata": {"correlationId": uuid::Uuid::new_v4(), "source": "esbench"},
                })
            }
        })
        .collect();
    Ok(serde_json::to_vec(&json!({"events": events}))?)
}

async fn append_scenario(
    server: &Server,
    clients: usize,
    batch: usize,
    payload: Payload,
    duration: Duration,
) -> anyhow::Result<Outcome> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;
    let deadline = Instant::now() + duration;
    let per_client = MAX_REQUESTS_PER_SCENARIO / clients;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let http = http.clone();
        let kind = if payload == Payload::Plain {
            "plain"
        } else {
            "harness"
        };
        let url = format!(
            "{}/streams/bench-{kind}-{clients}-{batch}-{client}",
            server.base
        );
        tasks.push(tokio::spawn(async move {
            let mut seq = 0;
            let mut body = append_body(payload, batch, &mut seq)?;
            let mut latencies = Vec::new();
            for _ in 0..per_client {
                if Instant::now() >= deadline {
                    break;
                }
                if payload == Payload::Harness {
                    body = append_body(payload, batch, &mut seq)?;
                }
                let t = Instant::now();
                append(&http, &url, &body).await?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    Ok(Outcome {
        requests: latencies.len(),
        events: latencies.len() * batch,
        elapsed,
        latencies,
    })
}

async fn read_all_scenario(
    server: &Server,
    limit: usize,
    duration: Duration,
) -> anyhow::Result<Outcome> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut from = 0u64;
    let mut latencies = Vec::new();
    let mut events = 0;
    for _ in 0..MAX_REQUESTS_PER_SCENARIO {
        if Instant::now() >= deadline {
            break;
        }
        let t = Instant::now();
        let page: Value = http
            .get(format!("{}/all?from={from}&limit={limit}", server.base))
            .send()
            .await?
            .json()
            .await?;
        latencies.push(t.elapsed());
        let n = page["events"].as_array().map_or(0, Vec::len);
        events += n;
        from = if n == 0 {
            0
        } else {
            page["next_position"].as_u64().unwrap_or(0)
        };
    }
    Ok(Outcome {
        requests: latencies.len(),
        events,
        elapsed: started.elapsed(),
        latencies,
    })
}

/// Latency from append acknowledgement to delivery, at `subscribers` live `$all`
/// subscriptions, under a steady load of `rate` single-event appends per second.
async fn subscription_scenario(
    server: &Server,
    subscribers: usize,
    rate: u64,
    duration: Duration,
) -> anyhow::Result<Outcome> {
    use futures::StreamExt;
    let http = reqwest::Client::new();
    let head: Value = http
        .get(format!("{}/info", server.base))
        .send()
        .await?
        .json()
        .await?;
    let first = head["head_position"].as_u64().map_or(0, |h| h + 1);
    let total = (rate * duration.as_secs()).max(1);
    let last = first + total - 1;
    let deadline = Instant::now() + duration + Duration::from_secs(30);
    let mut readers = Vec::new();
    for _ in 0..subscribers {
        let response = http
            .get(format!("{}/subscriptions/all?from={first}", server.base))
            .send()
            .await?;
        let mut body = response.bytes_stream();
        // Wait for caught_up so that every subscriber is live before the load starts.
        let mut buffer = Vec::new();
        while !String::from_utf8_lossy(&buffer).contains("caught_up") {
            buffer.extend_from_slice(&body.next().await.expect("caught_up line")?);
        }
        readers.push(tokio::spawn(async move {
            let mut received = Vec::with_capacity(total as usize);
            let mut pending = Vec::new();
            while let Ok(Some(chunk)) = tokio::time::timeout_at(deadline.into(), body.next()).await
            {
                let now = Instant::now();
                pending.extend_from_slice(&chunk?);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    if let Some(position) = event_position(&line) {
                        received.push((position, now));
                    }
                }
                if received.last().is_some_and(|(p, _)| *p >= last) {
                    break;
                }
            }
            anyhow::Ok(received)
        }));
    }
    let mut acks = Vec::with_capacity(total as usize);
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let body = serde_json::to_vec(&json!({"events": [{"type": "Tick", "data": {"n": 1}}]}))?;
    let started = Instant::now();
    for _ in 0..total {
        ticker.tick().await;
        let response = http
            .post(format!("{}/streams/ticks", server.base))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await?;
        let acked = Instant::now();
        let result: Value = response.json().await?;
        acks.push((result["first_position"].as_u64().expect("position"), acked));
    }
    let elapsed = started.elapsed();
    let acked_at: std::collections::HashMap<u64, Instant> = acks.into_iter().collect();
    let mut latencies = Vec::new();
    for reader in readers {
        for (position, at) in reader.await?? {
            if let Some(acked) = acked_at.get(&position) {
                // Delivery may precede the client's view of the ack: count it as 0.
                latencies.push(at.saturating_duration_since(*acked));
            }
        }
    }
    anyhow::ensure!(
        latencies.len() as u64 == total * subscribers as u64,
        "delivered {} of {} events",
        latencies.len(),
        total * subscribers as u64
    );
    Ok(Outcome {
        requests: total as usize,
        events: latencies.len(),
        elapsed,
        latencies,
    })
}

/// The `position` of an NDJSON event line, without parsing the whole line.
fn event_position(line: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(line).ok()?;
    if !text.starts_with(r#"{"type":"event""#) {
        return None;
    }
    let rest = &text[text.find(r#""position":"#)? + 11..];
    rest[..rest.find(|c: char| !c.is_ascii_digit())?]
        .parse()
        .ok()
}

/// Append throughput with and without a scavenge running, on the same server:
/// fills `streams` x 500 events, deletes them all, measures 16 appending clients,
/// starts a scavenge and measures again while it runs.
async fn scavenge_scenario(
    server: &Server,
    streams: usize,
    duration: Duration,
) -> anyhow::Result<(Outcome, Outcome, Value)> {
    let http = reqwest::Client::new();
    let pad = "p".repeat(100);
    let body = serde_json::to_vec(
        &json!({"events": (0..500).map(|i| json!({"type": "Old", "data": {"i": i, "pad": pad}})).collect::<Vec<_>>()}),
    )?;
    for s in 0..streams {
        let url = format!("{}/streams/old-{s}", server.base);
        append(&http, &url, &body).await?;
        let response = http.delete(&url).send().await?;
        anyhow::ensure!(
            response.status() == 204,
            "delete failed: {}",
            response.status()
        );
    }
    let baseline = append_scenario(server, 16, 1, Payload::Plain, duration).await?;
    let started: Value = http
        .post(format!("{}/admin/scavenge", server.base))
        .send()
        .await?
        .json()
        .await?;
    let id = started["id"].as_str().unwrap_or_default().to_owned();
    let during = append_scenario(server, 16, 1, Payload::Plain, duration).await?;
    let report: Value = http
        .get(format!("{}/admin/scavenge/{id}", server.base))
        .send()
        .await?
        .json()
        .await?;
    // Let it finish before the next scenario (bounded).
    for _ in 0..600 {
        let r: Value = http
            .get(format!("{}/admin/scavenge/{id}", server.base))
            .send()
            .await?
            .json()
            .await?;
        if r["result"] != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((baseline, during, report))
}

fn report(name: &str, mut outcome: Outcome, syncs_per_s: f64) {
    let secs = outcome.elapsed.as_secs_f64();
    let (p50, p99) = (outcome.percentile(0.50), outcome.percentile(0.99));
    println!(
        "| {name} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {syncs_per_s:.0} |",
        outcome.requests,
        outcome.requests as f64 / secs,
        outcome.events as f64 / secs,
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
    );
}

/// Syncs per second of the temp directory's disk just now: 8 KiB `write` +
/// `fdatasync` on a growing file, for at most 250 ms or 2,000 syncs.
async fn fsync_probe() -> anyhow::Result<f64> {
    tokio::task::spawn_blocking(|| {
        use std::io::Write;
        let mut file = tempfile::NamedTempFile::new()?;
        let block = [0u8; 8192];
        let started = Instant::now();
        let mut syncs = 0u32;
        while syncs < 2_000 && started.elapsed() < Duration::from_millis(250) {
            file.write_all(&block)?;
            file.as_file().sync_data()?;
            syncs += 1;
        }
        Ok(f64::from(syncs) / started.elapsed().as_secs_f64())
    })
    .await?
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let secs: u64 = std::env::var("SKALD_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let duration = Duration::from_secs(secs);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let server = Arc::new(start_server()?);
        println!("| scenario | requests | requests/s | events/s | p50 ms | p99 ms | disk syncs/s before |");
        println!("|---|---|---|---|---|---|---|");
        for (clients, batch) in [(1, 1), (16, 1), (64, 1), (256, 1), (16, 100)] {
            let disk = fsync_probe().await?;
            let outcome = append_scenario(&server, clients, batch, Payload::Plain, duration).await?;
            report(
                &format!("append, {clients} clients x {batch} event(s)"),
                outcome,
                disk,
            );
        }
        // The shared harness's payload (W1, W2 and W3 shapes).
        for (clients, batch) in [(1, 1), (32, 1), (8, 100)] {
            let disk = fsync_probe().await?;
            let outcome =
                append_scenario(&server, clients, batch, Payload::Harness, duration).await?;
            report(
                &format!("append, {clients} clients x {batch} event(s), harness payload (ids, metadata)"),
                outcome,
                disk,
            );
        }
        for subscribers in [1, 100] {
            let disk = fsync_probe().await?;
            let outcome = subscription_scenario(&server, subscribers, 200, duration).await?;
            report(
                &format!("append -> live delivery, {subscribers} subscriber(s), 200 appends/s"),
                outcome,
                disk,
            );
        }
        let disk = fsync_probe().await?;
        let (baseline, during, scavenge) = scavenge_scenario(&server, 600, duration).await?;
        let ratio = during.requests as f64 / during.elapsed.as_secs_f64()
            / (baseline.requests as f64 / baseline.elapsed.as_secs_f64());
        report("append, 16 clients, before the scavenge", baseline, disk);
        report("append, 16 clients, during the scavenge", during, disk);
        println!(
            "\nappend throughput during scavenge / before: {ratio:.2} (scavenge still {} at the end of the window, {} events removed by then)\n",
            scavenge["result"], scavenge["events_removed"]
        );
        for limit in [100, 1000] {
            let disk = fsync_probe().await?;
            let outcome = read_all_scenario(&server, limit, duration).await?;
            report(&format!("read $all, pages of {limit}"), outcome, disk);
        }
        anyhow::Ok(())
    })
}
