//! The projection runner with the `order_summary` (SQLite, exactly once) and
//! `public_events` (emitting) examples, under crashes of both sides.

#[allow(dead_code)]
#[path = "../../client-lib/examples/order_summary.rs"]
mod order_summary;
#[allow(dead_code)]
#[path = "../../client-lib/examples/public_events.rs"]
mod public_events;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::TryStreamExt;
use serde_json::json;
use skald_client::projection::{
    BoxError, CheckpointStore, MemoryCheckpointStore, ProjectionRunner, RunnerOptions,
};
use skald_client::{Client, EventData, ExpectedRevision, ReadOptions};
use tokio_util::sync::CancellationToken;

use crate::support::TestServer;

/// A small deterministic generator (xorshift), seeded per test run and printed.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// Appends `n` random order events (retrying across server restarts).
async fn write_orders(client: &Client, rng: &mut Rng, n: usize) {
    for _ in 0..n {
        let order = format!("order-{}", rng.next(40));
        let (kind, data) = match rng.next(10) {
            0..=3 => ("OrderPlaced", json!({"total": rng.next(100)})),
            4..=8 => ("ItemAdded", json!({"amount": rng.next(20)})),
            _ => ("OrderCancelled", json!({})),
        };
        let event = EventData::json(kind, &data).expect("json");
        client
            .append(&order, ExpectedRevision::Any, [event])
            .await
            .expect("append");
    }
    // Noise the projection filters out.
    client
        .append(
            "customer-1",
            ExpectedRevision::Any,
            [EventData::json("Noise", &json!({})).expect("json")],
        )
        .await
        .expect("append");
}

/// The order totals recounted from `$all`.
async fn recount(client: &Client) -> Vec<(String, i64, i64, bool)> {
    let events: Vec<_> = client
        .read_all(ReadOptions::default().page_size(1000))
        .try_collect()
        .await
        .expect("read");
    let mut orders: BTreeMap<String, (i64, i64, bool)> = BTreeMap::new();
    for e in events.iter().filter(|e| e.stream.starts_with("order-")) {
        let id = e.stream.trim_start_matches("order-").to_owned();
        match e.event_type.as_str() {
            "OrderPlaced" => {
                orders.entry(id).or_default().0 += e.data["total"].as_i64().expect("total")
            }
            "ItemAdded" => {
                if let Some(o) = orders.get_mut(&id) {
                    o.0 += e.data["amount"].as_i64().expect("amount");
                    o.1 += 1;
                }
            }
            "OrderCancelled" => {
                if let Some(o) = orders.get_mut(&id) {
                    o.2 = true;
                }
            }
            _ => {}
        }
    }
    orders
        .into_iter()
        .map(|(id, (t, i, c))| (id, t, i, c))
        .collect()
}

/// A checkpoint store that "crashes" (fails before saving) at random saves: the
/// runner stops right after `commit`, before the checkpoint store is saved, the
/// window in which an at-least-once read model would count twice.
struct CrashBeforeSave<S> {
    inner: S,
    rng: Rng,
}

impl<S: CheckpointStore> CheckpointStore for CrashBeforeSave<S> {
    async fn load(&mut self, projection: &str) -> Result<Option<u64>, BoxError> {
        self.inner.load(projection).await
    }

    async fn save(&mut self, projection: &str, position: u64) -> Result<(), BoxError> {
        if self.rng.next(4) == 0 {
            return Err("simulated crash between commit and checkpoint".into());
        }
        self.inner.save(projection, position).await
    }

    async fn clear(&mut self, projection: &str) -> Result<(), BoxError> {
        self.inner.clear(projection).await
    }
}

fn small_batches() -> RunnerOptions {
    RunnerOptions {
        batch_size: 7,
        linger: Duration::from_millis(2),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn order_summary_is_exactly_once_across_crashes_and_rebuilds_to_the_same_model() {
    let seed = crate::support::seed("order_summary crash test");
    let mut rng = Rng(seed);
    let mut server = TestServer::start();
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("orders.sqlite");
    let mut crashes = (0, 0);
    for _round in 0..12 {
        let client = server.client();
        write_orders(&client, &mut rng, 150).await;
        // The projection process: killed mid-flight by aborting its task, which
        // drops any open SQLite transaction uncommitted.
        let (projection, checkpoints) = order_summary::OrderSummary::open(&db).expect("open");
        let checkpoints = CrashBeforeSave {
            inner: checkpoints,
            rng: Rng(rng.next(u64::MAX) | 1),
        };
        let mut runner = ProjectionRunner::new(client.clone(), projection, checkpoints)
            .with_options(small_batches());
        let task = tokio::spawn(async move {
            // Each simulated crash stops the runner; restart it as a supervisor would.
            let mut crashes = 0;
            while runner.run(CancellationToken::new()).await.is_err() {
                crashes += 1;
            }
            crashes
        });
        tokio::time::sleep(Duration::from_millis(rng.next(150))).await;
        if rng.next(3) == 0 {
            // Kill the server under the running projection, then the projection.
            server.kill_and_restart();
            crashes.0 += 1;
            tokio::time::sleep(Duration::from_millis(rng.next(300))).await;
        }
        task.abort();
        crashes.1 += 1;
        let _ = task.await;
    }
    eprintln!(
        "server killed {} times, projection killed {} times",
        crashes.0, crashes.1
    );
    // The crash windows were exercised (counted by a run that is not aborted).
    let (projection, checkpoints) = order_summary::OrderSummary::open(&db).expect("open");
    let checkpoints = CrashBeforeSave {
        inner: checkpoints,
        rng: Rng(seed),
    };
    let mut runner = ProjectionRunner::new(server.client(), projection, checkpoints)
        .with_options(small_batches());
    runner.rebuild().await.expect("rebuild");
    let mut simulated = 0;
    while runner
        .run_until_caught_up(CancellationToken::new())
        .await
        .is_err()
    {
        simulated += 1;
    }
    eprintln!("{simulated} crashes between commit and checkpoint during one replay");
    assert!(simulated > 10, "the crash window was not exercised");

    // Restart the projection one last time and let it catch up.
    let client = server.client();
    let (projection, checkpoints) = order_summary::OrderSummary::open(&db).expect("open");
    let mut runner = ProjectionRunner::new(client.clone(), projection, checkpoints)
        .with_options(small_batches());
    runner
        .run_until_caught_up(CancellationToken::new())
        .await
        .expect("catch up");
    let live = runner.projection().rows().expect("rows");
    let expected = recount(&client).await;
    assert!(!expected.is_empty());
    assert_eq!(
        live, expected,
        "the SQLite read model differs from a recount of $all"
    );
    let status = *runner.status().borrow();
    assert_eq!(status.lag(), 0, "{status:?}");

    // Rebuild from position 0 gives the same read model.
    runner.rebuild().await.expect("rebuild");
    assert!(runner.projection().rows().expect("rows").is_empty());
    runner
        .run_until_caught_up(CancellationToken::new())
        .await
        .expect("replay");
    assert_eq!(runner.projection().rows().expect("rows"), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn emitted_events_get_deterministic_ids_and_a_replay_emits_nothing_twice() {
    let server = TestServer::start();
    let client = server.client();
    let mut rng = Rng(crate::support::seed("emitted ids"));
    write_orders(&client, &mut rng, 60).await;
    let checkpoints = MemoryCheckpointStore::default();
    let mut runner = ProjectionRunner::new(
        client.clone(),
        public_events::PublicOrders::default(),
        checkpoints.clone(),
    );
    runner
        .run_until_caught_up(CancellationToken::new())
        .await
        .expect("run");
    let public: Vec<_> = client
        .read_stream(public_events::PUBLIC_STREAM, ReadOptions::default())
        .try_collect()
        .await
        .expect("public stream");
    let sources = recount_sources(&client).await;
    assert_eq!(
        public.len(),
        sources,
        "one public event per placed/item event"
    );
    for event in &public {
        assert_eq!(event.event_type, "OrderUpdated");
        assert!(
            event.data["total"].is_i64() && event.data["order_id"].is_string(),
            "{}",
            event.data
        );
    }

    // A crash that lost the checkpoint: the replay re-emits the same ids, which
    // the server recognises, so the public stream does not grow.
    let mut again = ProjectionRunner::new(
        client.clone(),
        public_events::PublicOrders::default(),
        MemoryCheckpointStore::default(),
    );
    again
        .run_until_caught_up(CancellationToken::new())
        .await
        .expect("replay");
    let after: Vec<_> = client
        .read_stream(public_events::PUBLIC_STREAM, ReadOptions::default())
        .try_collect()
        .await
        .expect("public stream");
    assert_eq!(after, public);
}

async fn recount_sources(client: &Client) -> usize {
    let events: Vec<_> = client
        .read_all(ReadOptions::default())
        .try_collect()
        .await
        .expect("read");
    events
        .iter()
        .filter(|e| {
            e.stream.starts_with("order-")
                && matches!(e.event_type.as_str(), "OrderPlaced" | "ItemAdded")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_projection_survives_a_server_restart() {
    let mut server = TestServer::start();
    let client = server.client();
    let mut rng = Rng(crate::support::seed("projection across a restart"));
    write_orders(&client, &mut rng, 50).await;
    let dir = tempfile::tempdir().expect("dir");
    let (projection, checkpoints) =
        order_summary::OrderSummary::open(&dir.path().join("o.sqlite")).expect("open");
    let mut runner = ProjectionRunner::new(client.clone(), projection, checkpoints)
        .with_options(small_batches());
    let mut status = runner.status();
    let stop = CancellationToken::new();
    let task = {
        let stop = stop.clone();
        tokio::spawn(async move {
            runner
                .run(stop)
                .await
                .expect("the runner survives the restart");
            runner
        })
    };
    let head = |client: Client| async move { client.info().await.expect("info").head_position };
    let wait_for =
        |status: &mut tokio::sync::watch::Receiver<skald_client::projection::RunnerStatus>,
         target: Option<u64>| {
            let mut status = status.clone();
            async move {
                tokio::time::timeout(
                    Duration::from_secs(60),
                    status.wait_for(|s| s.checkpoint >= target),
                )
                .await
                .expect("the projection reached the head in time")
                .expect("runner alive")
                .state
            }
        };
    wait_for(&mut status, head(client.clone()).await).await;
    // The checkpoint can reach the head just before the caught-up marker arrives.
    let live = status.wait_for(|s| s.state == skald_client::projection::RunnerState::Live);
    tokio::time::timeout(Duration::from_secs(60), live)
        .await
        .expect("live in time")
        .expect("runner alive");

    server.kill_and_restart();
    let client = server.client();
    write_orders(&client, &mut rng, 50).await;
    wait_for(&mut status, head(client.clone()).await).await;
    stop.cancel();
    let runner = task.await.expect("runner task");
    assert_eq!(
        runner.projection().rows().expect("rows"),
        recount(&client).await
    );
}

/// The durable side of an exactly-once read model that also emits: positions it
/// applied and its checkpoint, changed together by `commit` (one "transaction").
#[derive(Default)]
struct Durable {
    applied: Vec<u64>,
    checkpoint: Option<u64>,
}

/// Mirrors every `src-*` event as one emitted event on its output stream and
/// records the source position in the durable model.
struct Mirror {
    name: String,
    output: String,
    durable: std::sync::Arc<std::sync::Mutex<Durable>>,
    pending: Vec<u64>,
}

impl skald_client::projection::Projection for Mirror {
    fn name(&self) -> &str {
        &self.name
    }

    fn filter(&self) -> skald_client::projection::Filter {
        skald_client::projection::Filter {
            stream_prefix: Some("src-".into()),
            event_types: Vec::new(),
        }
    }

    async fn apply(
        &mut self,
        batch: skald_client::projection::Batch<'_>,
        emit: &mut skald_client::projection::Emitter,
    ) -> Result<(), BoxError> {
        self.pending.clear();
        for event in batch.events {
            self.pending.push(event.position);
            let mirrored = EventData::json("Mirrored", &json!({"source": event.position}))?;
            emit.emit(event, self.output.clone(), mirrored);
        }
        Ok(())
    }

    async fn commit(&mut self, position: u64) -> Result<(), BoxError> {
        let mut durable = self.durable.lock().map_err(|_| "poisoned")?;
        durable.applied.append(&mut self.pending);
        durable.checkpoint = Some(position);
        Ok(())
    }

    async fn reset(&mut self) -> Result<(), BoxError> {
        *self.durable.lock().map_err(|_| "poisoned")? = Durable::default();
        Ok(())
    }
}

/// Reads the checkpoint `Mirror::commit` keeps; saving is part of `commit`.
struct MirrorCheckpoint(std::sync::Arc<std::sync::Mutex<Durable>>);

impl CheckpointStore for MirrorCheckpoint {
    async fn load(&mut self, _: &str) -> Result<Option<u64>, BoxError> {
        Ok(self.0.lock().map_err(|_| "poisoned")?.checkpoint)
    }

    async fn save(&mut self, _: &str, _: u64) -> Result<(), BoxError> {
        Ok(())
    }

    async fn clear(&mut self, _: &str) -> Result<(), BoxError> {
        self.0.lock().map_err(|_| "poisoned")?.checkpoint = None;
        Ok(())
    }
}

/// A crash at every step of a batch (after apply, after one emitted append,
/// after all of them, after commit) loses no emitted event and applies nothing
/// twice: after a restart from the durable state, the read model holds every
/// source event once and the output stream one mirrored event per source event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_step_of_a_batch_loses_no_emitted_event() {
    use skald_client::projection::fault::CrashPoint;
    let server = TestServer::start();
    let client = server.client();
    let mut sources = Vec::new();
    for i in 0..4 {
        let events = (0..6).map(|n| EventData::json("Placed", &json!({"n": n})).expect("json"));
        let appended = client
            .append(&format!("src-{i}"), ExpectedRevision::Any, events)
            .await
            .expect("append");
        sources.extend(appended.first_position..=appended.last_position);
    }
    let options = || RunnerOptions {
        batch_size: 5,
        linger: Duration::from_millis(2),
    };
    for point in [
        CrashPoint::AfterApply,
        CrashPoint::AfterOneEmitted,
        CrashPoint::AfterEmit,
        CrashPoint::AfterCommit,
    ] {
        let name = format!("mirror-{point:?}");
        let output = format!("out-{point:?}");
        let durable = std::sync::Arc::default();
        let process = || Mirror {
            name: name.clone(),
            output: output.clone(),
            durable: std::sync::Arc::clone(&durable),
            pending: Vec::new(),
        };
        // The second batch crashes at `point`; a new process (nothing kept in
        // memory) restarts from what is durable.
        let store = MirrorCheckpoint(std::sync::Arc::clone(&durable));
        let crashed = ProjectionRunner::new(client.clone(), process(), store)
            .with_options(options())
            .crash_at(point, 2)
            .run_until_caught_up(CancellationToken::new())
            .await;
        assert!(crashed.is_err(), "{point:?}: the crash was not reached");
        let store = MirrorCheckpoint(std::sync::Arc::clone(&durable));
        ProjectionRunner::new(client.clone(), process(), store)
            .with_options(options())
            .run_until_caught_up(CancellationToken::new())
            .await
            .expect("the restarted runner catches up");

        let applied = durable.lock().expect("lock").applied.clone();
        assert_eq!(applied, sources, "{point:?}: read model");
        let mirrored: Vec<u64> = client
            .read_stream(&output, ReadOptions::default())
            .map_ok(|e| e.data["source"].as_u64().expect("source"))
            .try_collect()
            .await
            .expect("read the output stream");
        assert_eq!(mirrored, sources, "{point:?}: emitted events");
    }
}
