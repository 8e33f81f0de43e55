//! Projections: user read models fed from `$all`, one batch at a time, in global
//! order, from a single task, with checkpoints, restartable and rebuildable.
//!
//! Each batch goes through four steps, in this order:
//!
//! 1. [`Projection::apply`] prepares the read model's changes and may emit
//!    derived events; nothing of it needs to be durable yet.
//! 2. The runner appends the emitted events. Their ids are deterministic (the
//!    projection's name, the source position and a rank), so appending them
//!    again after a crash is answered with the original result, not stored twice.
//! 3. [`Projection::commit`] makes the changes durable with the batch's
//!    checkpoint (exactly-once read models: in one transaction).
//! 4. The runner saves the checkpoint in its [`CheckpointStore`] (a no-op store
//!    for read models that keep it themselves in step 3).
//!
//! A crash before step 3 replays the batch: the read model never saw it, and the
//! emitted events are appended again idempotently. A crash after step 3 resumes
//! after the batch, whose emitted events are already stored. No crash point
//! loses an emitted event or applies a batch twice to an exactly-once model.
//!
//! ```no_run
//! use skald_client::projection::{Batch, BoxError, Emitter, MemoryCheckpointStore, Projection, ProjectionRunner};
//! use skald_client::Client;
//!
//! #[derive(Default)]
//! struct OrderCount { orders: u64 }
//!
//! impl Projection for OrderCount {
//!     fn name(&self) -> &str { "order-count" }
//!     async fn apply(&mut self, batch: Batch<'_>, _emit: &mut Emitter) -> Result<(), BoxError> {
//!         self.orders += batch.events.iter().filter(|e| e.event_type == "OrderPlaced").count() as u64;
//!         Ok(())
//!     }
//!     async fn reset(&mut self) -> Result<(), BoxError> { self.orders = 0; Ok(()) }
//! }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::new("http://127.0.0.1:2114")?;
//! let mut runner = ProjectionRunner::new(client, OrderCount::default(), MemoryCheckpointStore::default());
//! let stop = tokio_util::sync::CancellationToken::new();
//! runner.run(stop).await?;
//! # Ok(()) }
//! ```

mod checkpoint;
pub mod fault;

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use checkpoint::{CheckpointStore, FileCheckpointStore, MemoryCheckpointStore};

use crate::{
    Client, Error, EventData, ExpectedRevision, RecordedEvent, SubscribeOptions,
    SubscriptionMessage,
};

/// The error type projections and checkpoint stores return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Which events a projection wants. Events it does not want still move its checkpoint.
///
/// ```
/// use skald_client::projection::Filter;
/// let orders_placed = Filter { stream_prefix: Some("order-".into()), event_types: vec!["OrderPlaced".into()] };
/// # let _ = orders_placed;
/// ```
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only streams starting with this (filtered on the server).
    pub stream_prefix: Option<String>,
    /// Only these event types (empty: all types).
    pub event_types: Vec<String>,
}

impl Filter {
    fn wants(&self, event: &RecordedEvent) -> bool {
        self.event_types.is_empty() || self.event_types.contains(&event.event_type)
    }
}

/// Events handed to [`Projection::apply`], in global order.
///
/// ```
/// use skald_client::projection::Batch;
/// let empty = Batch { events: &[], position: 41 }; // only the checkpoint moves
/// assert!(empty.events.is_empty());
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    /// The events (possibly none, when only the checkpoint moves).
    pub events: &'a [RecordedEvent],
    /// The checkpoint to record with them: every position up to and including
    /// this one has been examined. Exactly-once read models store it in the same
    /// transaction as their rows.
    pub position: u64,
}

/// Collects the events a projection derives, for the runner to append with
/// deterministic ids.
///
/// ```
/// use skald_client::projection::{Batch, BoxError, Emitter};
/// use skald_client::EventData;
/// fn translate(batch: Batch<'_>, emit: &mut Emitter) -> Result<(), BoxError> {
///     for event in batch.events {
///         let public = EventData::json("OrderChanged", &serde_json::json!({"order": event.stream}))?;
///         emit.emit(event, "public-orders", public);
///     }
///     Ok(())
/// }
/// # let _ = translate;
/// ```
#[derive(Debug, Default)]
pub struct Emitter {
    pending: Vec<(u64, String, EventData)>,
}

impl Emitter {
    /// Appends `event` to `stream` once this batch is applied. Its id is derived
    /// from the projection's name, `source`'s position and the event's rank among
    /// those emitted for `source`, so a replay after a crash never emits twice.
    pub fn emit(&mut self, source: &RecordedEvent, stream: impl Into<String>, event: EventData) {
        self.pending.push((source.position, stream.into(), event));
    }
}

/// A read model.
///
/// ```
/// use skald_client::projection::{Batch, BoxError, Emitter, Filter, Projection};
/// #[derive(Default)]
/// struct Revenue { cents: i64 }
/// impl Projection for Revenue {
///     fn name(&self) -> &str { "revenue" }
///     fn filter(&self) -> Filter { Filter { stream_prefix: Some("order-".into()), event_types: vec!["OrderPaid".into()] } }
///     async fn apply(&mut self, batch: Batch<'_>, _emit: &mut Emitter) -> Result<(), BoxError> {
///         for event in batch.events {
///             self.cents += event.data["cents"].as_i64().unwrap_or(0);
///         }
///         Ok(())
///     }
///     async fn reset(&mut self) -> Result<(), BoxError> { self.cents = 0; Ok(()) }
/// }
/// ```
pub trait Projection: Send {
    /// A unique, stable name (keys the checkpoint and the ids of emitted events).
    fn name(&self) -> &str;

    /// Which events to receive; all by default.
    fn filter(&self) -> Filter {
        Filter::default()
    }

    /// Prepares a batch: the read model's changes and the events it emits. Called
    /// from one task only, batches in order. Do not make the changes durable
    /// together with `batch.position` here: the emitted events are not stored
    /// yet; do that in [`commit`](Projection::commit). (A projection whose
    /// checkpoint lives in the runner's [`CheckpointStore`] may simply apply.)
    fn apply(
        &mut self,
        batch: Batch<'_>,
        emit: &mut Emitter,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Makes the last applied batch durable, with `position` as the checkpoint,
    /// once the events it emitted are stored. Exactly-once read models commit
    /// their transaction here. Does nothing by default.
    fn commit(&mut self, position: u64) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = position;
        async { Ok(()) }
    }

    /// Drops the read model's state, for a rebuild from position 0.
    fn reset(&mut self) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// Why a runner stopped with an error.
///
/// ```no_run
/// # async fn demo<P: skald_client::projection::Projection, S: skald_client::projection::CheckpointStore>(
/// #     mut runner: skald_client::projection::ProjectionRunner<P, S>, stop: tokio_util::sync::CancellationToken) {
/// use skald_client::projection::RunnerError;
/// match runner.run(stop).await {
///     Ok(()) => println!("stopped"),
///     Err(RunnerError::Projection(e)) => eprintln!("the read model failed: {e}"),
///     Err(e) => eprintln!("{e}"),
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunnerError {
    /// The server refused something the runner cannot retry.
    #[error("client error: {0}")]
    Client(#[from] Error),
    /// `apply` or `reset` failed.
    #[error("projection failed: {0}")]
    Projection(BoxError),
    /// The checkpoint store failed.
    #[error("checkpoint store failed: {0}")]
    Checkpoint(BoxError),
}

/// Where a runner is.
///
/// ```
/// use skald_client::projection::{RunnerState, RunnerStatus};
/// let status = RunnerStatus { state: RunnerState::Live, checkpoint: Some(90), head: Some(100) };
/// assert_eq!(status.lag(), 10);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunnerState {
    /// Not running.
    Stopped,
    /// Reading history.
    CatchingUp,
    /// At the head, applying events as they commit.
    Live,
}

/// A runner's progress, published on [`ProjectionRunner::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunnerStatus {
    /// Catching up or live.
    pub state: RunnerState,
    /// The last position applied and checkpointed.
    pub checkpoint: Option<u64>,
    /// The server's head as last seen.
    pub head: Option<u64>,
}

impl RunnerStatus {
    /// How many positions the read model is behind the head.
    pub fn lag(&self) -> u64 {
        match (self.head, self.checkpoint) {
            (Some(head), Some(checkpoint)) => head.saturating_sub(checkpoint),
            (Some(head), None) => head + 1,
            _ => 0,
        }
    }
}

/// Settings of a runner.
///
/// ```
/// use std::time::Duration;
/// use skald_client::projection::RunnerOptions;
/// let big_batches = RunnerOptions { batch_size: 5_000, linger: Duration::from_millis(20) };
/// # let _ = big_batches;
/// ```
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Most events per `apply`. Default 500.
    pub batch_size: usize,
    /// How long to wait for more events before applying a partial batch. Default 5 ms.
    pub linger: Duration,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            linger: Duration::from_millis(5),
        }
    }
}

/// Runs one projection: loads its checkpoint, catches up from it, goes live,
/// applies batches and records checkpoints, reconnects across server restarts,
/// and stops on cancellation.
///
/// ```no_run
/// # use skald_client::projection::{Batch, BoxError, Emitter, Projection};
/// # #[derive(Default)] struct Totals;
/// # impl Projection for Totals {
/// #     fn name(&self) -> &str { "totals" }
/// #     async fn apply(&mut self, _: Batch<'_>, _: &mut Emitter) -> Result<(), BoxError> { Ok(()) }
/// #     async fn reset(&mut self) -> Result<(), BoxError> { Ok(()) }
/// # }
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use skald_client::projection::{FileCheckpointStore, ProjectionRunner};
/// let client = skald_client::Client::new("http://127.0.0.1:2114")?;
/// let mut runner = ProjectionRunner::new(client, Totals::default(), FileCheckpointStore::new("checkpoints")?);
/// let mut status = runner.status();
/// tokio::spawn(async move {
///     while status.changed().await.is_ok() {
///         let s = *status.borrow();
///         println!("{:?}, lag {}", s.state, s.lag());
///     }
/// });
/// let stop = tokio_util::sync::CancellationToken::new();
/// runner.run_until_caught_up(stop.clone()).await?; // history first
/// runner.rebuild().await?;                          // or start over from position 0
/// runner.run(stop).await?;                          // then follow live until cancelled
/// # Ok(()) }
/// ```
pub struct ProjectionRunner<P, S> {
    client: Client,
    projection: P,
    store: S,
    options: RunnerOptions,
    status: watch::Sender<RunnerStatus>,
    #[cfg(feature = "fault-injection")]
    crash: Option<(fault::CrashPoint, u32)>,
}

impl<P: Projection, S: CheckpointStore> ProjectionRunner<P, S> {
    /// A runner of `projection` whose checkpoints live in `store`.
    pub fn new(client: Client, projection: P, store: S) -> Self {
        let (status, _) = watch::channel(RunnerStatus {
            state: RunnerState::Stopped,
            checkpoint: None,
            head: None,
        });
        Self {
            client,
            projection,
            store,
            options: RunnerOptions::default(),
            status,
            #[cfg(feature = "fault-injection")]
            crash: None,
        }
    }

    /// Makes the runner fail (as if the process died there) the `nth` time
    /// (from 1) it reaches `point`: tests of crash safety.
    #[cfg(feature = "fault-injection")]
    pub fn crash_at(mut self, point: fault::CrashPoint, nth: u32) -> Self {
        self.crash = Some((point, nth));
        self
    }

    fn crash_point(&mut self, _reached: fault::CrashPoint) -> Result<(), RunnerError> {
        #[cfg(feature = "fault-injection")]
        if let Some((point, nth)) = &mut self.crash {
            if *point == _reached {
                *nth = nth.saturating_sub(1);
                if *nth == 0 {
                    self.crash = None;
                    return Err(RunnerError::Projection(
                        format!("injected crash {_reached:?}").into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Replaces the default options.
    pub fn with_options(mut self, options: RunnerOptions) -> Self {
        self.options = options;
        self
    }

    /// Progress updates (state, checkpoint, head, lag).
    pub fn status(&self) -> watch::Receiver<RunnerStatus> {
        self.status.subscribe()
    }

    /// The projection (its read model).
    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// Runs until `stop` is cancelled.
    pub async fn run(&mut self, stop: CancellationToken) -> Result<(), RunnerError> {
        self.run_inner(stop, false).await
    }

    /// Runs until the projection has caught up with the head (or `stop`).
    pub async fn run_until_caught_up(
        &mut self,
        stop: CancellationToken,
    ) -> Result<(), RunnerError> {
        self.run_inner(stop, true).await
    }

    /// Resets the read model and forgets the checkpoint, so the next run replays
    /// from position 0.
    pub async fn rebuild(&mut self) -> Result<(), RunnerError> {
        let name = self.projection.name().to_owned();
        self.projection
            .reset()
            .await
            .map_err(RunnerError::Projection)?;
        self.store
            .clear(&name)
            .await
            .map_err(RunnerError::Checkpoint)?;
        self.status.send_modify(|s| s.checkpoint = None);
        Ok(())
    }

    async fn run_inner(
        &mut self,
        stop: CancellationToken,
        until_caught_up: bool,
    ) -> Result<(), RunnerError> {
        let name = self.projection.name().to_owned();
        let filter = self.projection.filter();
        let checkpoint = self
            .store
            .load(&name)
            .await
            .map_err(RunnerError::Checkpoint)?;
        self.status.send_modify(|s| {
            s.state = RunnerState::CatchingUp;
            s.checkpoint = checkpoint;
        });
        let mut options = SubscribeOptions::default().from(checkpoint.map_or(0, |c| c + 1));
        if let Some(prefix) = &filter.stream_prefix {
            options = options.stream_prefix(prefix.clone());
        }
        let mut subscription = self.client.subscribe_all(options);
        let mut batch: Vec<RecordedEvent> = Vec::new();
        let mut examined: Option<u64> = None;
        let result = loop {
            let next = if batch.is_empty() {
                tokio::select! {
                    () = stop.cancelled() => break Ok(()),
                    next = subscription.next() => next,
                }
            } else {
                tokio::select! {
                    () = stop.cancelled() => break Ok(()),
                    next = tokio::time::timeout(self.options.linger, subscription.next()) => match next {
                        Ok(next) => next,
                        Err(_) => {
                            // Nothing more right now: apply what we have.
                            if let Err(e) = self.flush(&name, &mut batch, examined, &stop).await {
                                break Err(e);
                            }
                            continue;
                        }
                    },
                }
            };
            let message = match next {
                None => break Ok(()),
                Some(Err(e)) => break Err(RunnerError::Client(e)),
                Some(Ok(message)) => message,
            };
            match message {
                SubscriptionMessage::Event(event) => {
                    examined = Some(event.position);
                    self.status
                        .send_modify(|s| s.head = s.head.max(Some(event.position)));
                    if filter.wants(&event) {
                        batch.push(event);
                    }
                    if batch.len() >= self.options.batch_size {
                        if let Err(e) = self.flush(&name, &mut batch, examined, &stop).await {
                            break Err(e);
                        }
                    }
                }
                SubscriptionMessage::Checkpoint { position } => {
                    examined = Some(position);
                    if let Err(e) = self.flush(&name, &mut batch, examined, &stop).await {
                        break Err(e);
                    }
                }
                SubscriptionMessage::CaughtUp { position } => {
                    // Everything up to the head was examined, filtered-out tail included.
                    examined = examined.max(position);
                    if let Err(e) = self.flush(&name, &mut batch, examined, &stop).await {
                        break Err(e);
                    }
                    self.status.send_modify(|s| {
                        s.state = RunnerState::Live;
                        s.head = s.head.max(position);
                    });
                    if until_caught_up {
                        break Ok(());
                    }
                }
                SubscriptionMessage::FellBehind { .. } => {
                    self.status
                        .send_modify(|s| s.state = RunnerState::CatchingUp);
                }
            }
        };
        self.status.send_modify(|s| s.state = RunnerState::Stopped);
        result
    }

    /// Applies the batch, appends what it emitted, commits it, then records the
    /// checkpoint (the order the module documentation explains).
    async fn flush(
        &mut self,
        name: &str,
        batch: &mut Vec<RecordedEvent>,
        examined: Option<u64>,
        stop: &CancellationToken,
    ) -> Result<(), RunnerError> {
        let Some(position) = examined else {
            return Ok(());
        };
        if self.status.borrow().checkpoint == Some(position) && batch.is_empty() {
            return Ok(());
        }
        let mut emitter = Emitter::default();
        self.projection
            .apply(
                Batch {
                    events: batch,
                    position,
                },
                &mut emitter,
            )
            .await
            .map_err(RunnerError::Projection)?;
        self.crash_point(fault::CrashPoint::AfterApply)?;
        self.append_emitted(name, emitter, stop).await?;
        self.crash_point(fault::CrashPoint::AfterEmit)?;
        self.projection
            .commit(position)
            .await
            .map_err(RunnerError::Projection)?;
        self.crash_point(fault::CrashPoint::AfterCommit)?;
        self.store
            .save(name, position)
            .await
            .map_err(RunnerError::Checkpoint)?;
        batch.clear();
        self.status.send_modify(|s| s.checkpoint = Some(position));
        Ok(())
    }

    async fn append_emitted(
        &mut self,
        name: &str,
        emitter: Emitter,
        stop: &CancellationToken,
    ) -> Result<(), RunnerError> {
        // One append per (source event, target stream), ids from (name, source, rank).
        let mut rank = 0u32;
        let mut previous_source = None;
        let mut groups: Vec<(String, Vec<EventData>)> = Vec::new();
        let mut group_key = None;
        for (source, stream, event) in emitter.pending {
            if previous_source != Some(source) {
                rank = 0;
                previous_source = Some(source);
            }
            let id = emitted_id(name, source, rank);
            rank += 1;
            if group_key.as_ref() != Some(&(source, stream.clone())) {
                group_key = Some((source, stream.clone()));
                groups.push((stream, Vec::new()));
            }
            groups
                .last_mut()
                .expect("pushed above")
                .1
                .push(event.id(id));
        }
        for (stream, events) in groups {
            let mut backoff = Duration::from_millis(100);
            loop {
                match self
                    .client
                    .append(&stream, ExpectedRevision::Any, events.clone())
                    .await
                {
                    Ok(_) => {
                        self.crash_point(fault::CrashPoint::AfterOneEmitted)?;
                        break;
                    }
                    Err(e) if e.is_retryable() && !stop.is_cancelled() => {
                        tracing::warn!(error = %e, "emitting failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                    Err(e) => return Err(RunnerError::Client(e)),
                }
            }
        }
        Ok(())
    }
}

/// The id of the `rank`-th event `projection` emitted for the event at `source`.
///
/// ```
/// use skald_client::projection::emitted_id;
/// assert_eq!(emitted_id("public-orders", 17, 0), emitted_id("public-orders", 17, 0));
/// assert_ne!(emitted_id("public-orders", 17, 0), emitted_id("public-orders", 17, 1));
/// ```
pub fn emitted_id(projection: &str, source: u64, rank: u32) -> Uuid {
    const NAMESPACE: Uuid = Uuid::from_u128(0x5ca1_d000_0000_4000_8000_0000_0000_0001);
    Uuid::new_v5(
        &NAMESPACE,
        format!("{projection}/{source}/{rank}").as_bytes(),
    )
}
