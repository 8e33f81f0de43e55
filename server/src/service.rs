//! The async facade over storage: the writer's handle, reads on the blocking pool,
//! the commit notification, and long-poll waits on it. HTTP handlers call this,
//! never `storage` directly, so nothing blocks the async runtime.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

use crate::metrics::{GaugeGuard, Metrics};
use crate::model::{
    AllFilter, AllSlice, AppendOutcome, CatalogEntry, Direction, ExpectedRevision, JobKind,
    NewEvent, RecordedEvent, StreamMetadata, StreamName, StreamRead, StreamSlice, StreamState,
};
use crate::storage::idle_wait::{AppendGuard, AppendsInProgress, IdleWait};
use crate::storage::scan::{CompactionSlice, HiddenPage, VerifyCursor, VerifyPage};
use crate::storage::writer::{
    self, CommitInfo, GroupEvents, HiddenEvent, Origin, WriteOp, WriteOutcome, WriteRequest,
    WriterHandle,
};
use crate::storage::{EngineStats, KnownIds, Store};
/// The errors of the layers below, as the service hands them out.
pub use crate::storage::{StorageError, WriteError};

/// Most events one `$all` read examines, filtered-out ones included, before it
/// answers with what it found, so a narrow filter cannot pin a reader thread.
pub const MAX_EXAMINED_PER_READ: usize = 65_536;
/// A forward `$all` read this close to the head (at most this many events
/// committed at or after its start) runs on the calling task instead of the
/// blocking pool. The same number bounds the groups the writer hands to
/// these reads in memory.
const INLINE_READ_EVENTS: u64 = writer::LIVE_GROUP_EVENTS as u64;
/// Tail reads kept for other readers of the same commit, at most.
const SHARED_TAILS: usize = 4;
/// Payload bytes a shared tail read may hold, at most (larger ones are not kept).
const SHARED_TAIL_BYTES: usize = 1 << 20;

/// A `$all` read request.
#[derive(Debug, Clone)]
pub struct AllQuery {
    pub from: Option<u64>,
    pub direction: Direction,
    pub limit: usize,
    pub filter: AllFilter,
    /// How long a forward read waits for a matching event when none is there yet.
    pub wait: Duration,
}

/// A stream read request.
#[derive(Debug, Clone)]
pub struct StreamQuery {
    pub from: Option<u64>,
    pub direction: Direction,
    pub limit: usize,
    pub wait: Duration,
}

/// Bounds of the writer's queue, and how the writer waits on it.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Requests queued or being committed at most.
    pub requests: usize,
    /// KiB of payload queued or being committed at most (a larger single
    /// request takes the whole budget and goes alone).
    pub kib: usize,
    /// How long a request waits for a place before it is refused.
    pub timeout: Duration,
    /// How long the writer may spin on its empty queue before it sleeps,
    /// when appends come back to back (`storage::idle_wait`); zero: never.
    pub spin: Duration,
}

/// The writer's bounded queue: a request holds permits of both semaphores
/// from admission until the writer has answered it.
struct WriteQueue {
    limits: QueueLimits,
    requests: Arc<tokio::sync::Semaphore>,
    kib: Arc<tokio::sync::Semaphore>,
}

impl WriteQueue {
    fn new(limits: QueueLimits) -> Self {
        Self {
            limits,
            requests: Arc::new(tokio::sync::Semaphore::new(limits.requests)),
            kib: Arc::new(tokio::sync::Semaphore::new(limits.kib)),
        }
    }

    /// A place for a request of `kib` KiB, waiting at most `timeout` (`None`:
    /// as long as it takes).
    async fn admit(
        &self,
        kib: usize,
        timeout: Option<Duration>,
    ) -> Result<Vec<tokio::sync::OwnedSemaphorePermit>, WriteError> {
        let kib = u32::try_from(kib.min(self.limits.kib)).unwrap_or(u32::MAX);
        let acquire = async {
            let request = Arc::clone(&self.requests).acquire_owned().await;
            let bytes = Arc::clone(&self.kib).acquire_many_owned(kib).await;
            match (request, bytes) {
                (Ok(request), Ok(bytes)) => Ok(vec![request, bytes]),
                _ => Err(WriteError::WriterStopped),
            }
        };
        match timeout {
            Some(timeout) => tokio::time::timeout(timeout, acquire)
                .await
                .map_err(|_| WriteError::Busy)?,
            None => acquire.await,
        }
    }

    fn depth(&self) -> (u64, u64) {
        let used = |max: usize, sem: &tokio::sync::Semaphore| {
            max.saturating_sub(sem.available_permits()) as u64
        };
        (
            used(self.limits.requests, &self.requests),
            used(self.limits.kib, &self.kib),
        )
    }
}

/// The store, its writer and the commit notification, shared by every request.
pub struct Service {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    writer: WriterHandle,
    /// Appends received and not yet answered, by any front end: the writer
    /// spins on its queue only when no append but the one it just answered
    /// is in progress (`storage::idle_wait`).
    appends: AppendsInProgress,
    head: watch::Receiver<Commit>,
    shutdown: CancellationToken,
    queue: WriteQueue,
    /// Every task and long-lived response the service starts (maintenance jobs,
    /// subscriptions, long-polls): `Server::serve` closes it and waits for it
    /// before the final flush.
    tasks: TaskTracker,
    /// Cluster mode: the replicated log writes go through.
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// The last live tail reads of `$all`, for the other readers at the same
    /// place (see `read_all_once`).
    tails: std::sync::Mutex<Vec<Arc<SharedTail>>>,
}

/// A live tail read of `$all`, unfiltered: what every reader that starts at
/// `from` while the commit notification still says `seq` may be answered from.
#[derive(Debug)]
struct SharedTail {
    seq: u64,
    from: u64,
    /// Every visible event from `from` on, at most `INLINE_READ_EVENTS`
    /// examined, no filter.
    slice: AllSlice,
    /// The events' payload bytes (under `SHARED_TAIL_BYTES`, so under
    /// `MAX_PAGE_BYTES`: the read was not cut short by its size).
    bytes: usize,
}

impl SharedTail {
    /// The answer `store.read_all(from, Forward, query.limit, &query.filter,
    /// max_examined)` gives on this read's snapshot, when this read holds
    /// all of it: it examined no more than `max_examined` events and stopped
    /// where that read would (the end of the log, or `max_examined`), and
    /// fewer than `query.limit` of its events match (so that read does not
    /// stop early at its limit).
    fn answer(&self, query: &AllQuery, max_examined: usize) -> Option<AllSlice> {
        let slice = &self.slice;
        let exhausted = match (slice.next_position, slice.head_position) {
            (Some(next), Some(head)) => next > head,
            (_, None) => true,
            (None, Some(_)) => false,
        };
        let stops_alike =
            (slice.examined < max_examined && exhausted) || slice.examined == max_examined;
        if !stops_alike || self.bytes >= crate::storage::MAX_PAGE_BYTES {
            return None;
        }
        let events: Vec<RecordedEvent> = slice
            .events
            .iter()
            .filter(|e| query.filter.matches(e))
            .cloned()
            .collect();
        (events.len() < query.limit).then_some(AllSlice {
            events,
            next_position: slice.next_position,
            head_position: slice.head_position,
            examined: slice.examined,
        })
    }
}

/// Most stream names a commit notification lists; past that it says "any".
const MAX_TOUCHED: usize = 1024;

/// The commit notification: what the last durable group changed.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    /// Counts groups: a waiter that saw `seq - 1` has missed nothing else.
    pub seq: u64,
    /// The last committed position, `None` for an empty store.
    pub last_position: Option<u64>,
    /// The streams the group wrote to; `None` when there were too many to list.
    pub touched: Option<Arc<HashSet<StreamName>>>,
    /// The group's events, when the writer handed them over (a small group
    /// of appends whose events are all visible): the live tail reads at the
    /// group's first position take them from here instead of the store.
    pub appended: Option<Arc<GroupEvents>>,
}

impl Commit {
    /// Whether this commit may have changed `stream`.
    pub fn may_touch(&self, stream: &StreamName) -> bool {
        self.touched.as_ref().is_none_or(|t| t.contains(stream))
    }
}

impl Service {
    /// Starts the writer over `store`. Returns the service and the writer thread,
    /// which exits once every clone of the service is dropped.
    pub fn start(
        store: Arc<Store>,
        shutdown: CancellationToken,
        queue: QueueLimits,
    ) -> Result<(Arc<Self>, std::thread::JoinHandle<()>), StorageError> {
        let head_position = store.next_position()?.checked_sub(1);
        let first = Commit {
            seq: 0,
            last_position: head_position,
            touched: Some(Arc::default()),
            appended: None,
        };
        let (head_tx, head) = watch::channel(first);
        let mut seq = 0;
        let metrics = Arc::new(Metrics::default());
        let commit_metrics = Arc::clone(&metrics);
        let on_commit = move |info: CommitInfo| {
            commit_metrics.on_commit(&info);
            tracing::trace!(
                last_position = ?info.last_position,
                requests = info.requests,
                events = info.events,
                "group committed"
            );
            // Sent for every committed group, deletes and metadata changes too, so
            // waiting readers re-check what they may see.
            seq += 1;
            let touched = (info.streams.len() <= MAX_TOUCHED)
                .then(|| Arc::new(info.streams.iter().cloned().collect::<HashSet<_>>()));
            head_tx.send_replace(Commit {
                seq,
                last_position: info.last_position,
                touched,
                appended: info.appended,
            });
        };
        let appends = AppendsInProgress::default();
        let wait = IdleWait::new(queue.spin, appends.clone(), metrics.writer_spins());
        let (writer, thread) = writer::spawn_with(Arc::clone(&store), on_commit, wait)?;
        Ok((
            Arc::new(Self {
                store,
                metrics,
                writer,
                appends,
                head,
                shutdown,
                queue: WriteQueue::new(queue),
                tasks: TaskTracker::new(),
                cluster: std::sync::OnceLock::new(),
                tails: std::sync::Mutex::new(Vec::new()),
            }),
            thread,
        ))
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// What the storage engine says about itself.
    pub async fn engine_stats(&self) -> EngineStats {
        self.blocking(|store| Ok(store.engine_stats()))
            .await
            .unwrap_or_default()
    }

    /// The event-id filter's size and the lookups that got past it (memory
    /// only: no I/O).
    pub fn id_filter_stats(&self) -> crate::storage::IdFilterStats {
        self.store.id_filter_stats()
    }

    /// A receiver of the commit notification: the last committed position.
    pub fn head_watch(&self) -> watch::Receiver<Commit> {
        self.head.clone()
    }

    /// Cancelled when the server shuts down.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Runs `task` in the background as one of the service's tasks, which
    /// shutdown waits for.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Counts the caller (a long-lived response) among the service's tasks
    /// until the token is dropped.
    pub fn track(&self) -> TaskTrackerToken {
        self.tasks.token()
    }

    /// The service's tasks (shutdown closes and awaits them).
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// The data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        self.store.path()
    }

    /// The last committed position, `None` for an empty store.
    pub fn head_position(&self) -> Option<u64> {
        self.head.borrow().last_position
    }

    /// Sends one request through the single writer and waits for its answer.
    /// It first takes its place in the bounded queue, waiting at most the
    /// queue timeout (`WriteError::Busy` after that, nothing written). In
    /// cluster mode the write goes through the replicated log instead.
    pub async fn write(&self, stream: StreamName, op: WriteOp) -> Result<WriteOutcome, WriteError> {
        if let Some(cluster) = self.cluster.get() {
            return cluster.write(self, stream, op).await;
        }
        self.write_with(stream, op, Origin::Client, Some(self.queue.limits.timeout))
            .await
    }

    /// Cluster mode: turns writes over to `cluster` and starts applying its log.
    pub fn join_cluster(self: &Arc<Self>, cluster: Arc<crate::cluster::Cluster>) {
        if self.cluster.set(Arc::clone(&cluster)).is_ok() {
            cluster.start_applier(self);
        }
    }

    /// The cluster link, in cluster mode.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.get()
    }

    /// Cluster mode: checks `op` against the committed store (nothing written).
    pub async fn check(&self, stream: StreamName, op: WriteOp) -> Result<WriteOutcome, WriteError> {
        self.write_with(stream, op, Origin::Check, Some(self.queue.limits.timeout))
            .await
    }

    /// Cluster mode: hands the log message `sequence` to the writer; the
    /// answer comes once it is applied. Outside the bounded queue: the
    /// applier bounds how many it has handed over.
    pub fn apply_log(
        &self,
        stream: StreamName,
        op: WriteOp,
        sequence: u64,
        recorded_at_micros: u64,
    ) -> impl std::future::Future<Output = Result<Result<WriteOutcome, WriteError>, WriteError>>
    {
        let (reply, answer) = oneshot::channel();
        let submitted = self.writer.submit(WriteRequest {
            stream,
            op,
            origin: Origin::Log {
                sequence,
                recorded_at_micros,
            },
            reply,
            admission: Vec::new(),
            known_ids: None,
        });
        async move {
            submitted?;
            answer.await.map_err(|_| WriteError::WriterStopped)
        }
    }

    /// `write` for the server's own requests (scavenge removals): waits for a
    /// place in the queue as long as it takes. In cluster mode they go
    /// through the log, so every node removes the same events.
    async fn write_internal(
        &self,
        stream: StreamName,
        op: WriteOp,
    ) -> Result<WriteOutcome, WriteError> {
        if let Some(cluster) = self.cluster.get() {
            return cluster.write(self, stream, op).await;
        }
        self.write_with(stream, op, Origin::Client, None).await
    }

    async fn write_with(
        &self,
        stream: StreamName,
        op: WriteOp,
        origin: Origin,
        timeout: Option<Duration>,
    ) -> Result<WriteOutcome, WriteError> {
        let (reply, answer) = oneshot::channel();
        let mut request = WriteRequest {
            stream,
            op,
            origin,
            reply,
            admission: Vec::new(),
            known_ids: None,
        };
        let kib = request.held_bytes().div_ceil(1024).max(1);
        request.admission = self.queue.admit(kib, timeout).await?;
        if let (Origin::Client, WriteOp::Append { events, .. }) = (origin, &request.op) {
            // The id lookup in RocksDB runs here, off the single writer; on an
            // error the writer looks the ids up itself. Inline, not on the
            // blocking pool: a batched lookup that bloom filters mostly answer
            // from cached blocks, where two thread hand-offs would cost more
            // than the read (as for live tails, docs/benchmarks.md).
            let ids = events.iter().map(|e| e.id);
            request.known_ids = KnownIds::look_up(&self.store, ids).ok();
        }
        self.writer.submit(request)?;
        let result = answer.await.map_err(|_| WriteError::WriterStopped)?;
        let metrics = &self.metrics;
        match &result {
            Err(WriteError::Storage(StorageError::NoSpace(_))) => {
                metrics.write_failures.inc();
                metrics.disk_full.set(1);
            }
            Err(WriteError::Storage(_)) => {
                metrics.write_failures.inc();
            }
            Ok(_) => {
                metrics.disk_full.set(0);
            }
            Err(_) => {}
        }
        result
    }

    /// Counts an append as in progress (from its first byte to its answer)
    /// until the guard is dropped; front ends take one per append request.
    pub fn append_started(&self) -> AppendGuard<'_> {
        self.appends.start()
    }

    /// Requests and KiB waiting in or being committed by the writer.
    pub fn writer_queue(&self) -> (u64, u64) {
        self.queue.depth()
    }

    /// Appends `events` to `stream` through the single writer.
    pub async fn append(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, WriteError> {
        match self
            .write(stream, WriteOp::Append { expected, events })
            .await?
        {
            WriteOutcome::Appended(outcome) => Ok(outcome),
            other => unreachable_outcome(&other),
        }
    }

    /// Soft-deletes (or, with `hard`, tombstones) `stream`.
    pub async fn delete(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
        hard: bool,
    ) -> Result<(), WriteError> {
        self.write(stream, WriteOp::Delete { expected, hard })
            .await
            .map(|_| ())
    }

    /// Replaces `stream`'s metadata when `expected` admits the revision of
    /// its current metadata version; returns the stream's new state.
    pub async fn set_metadata(
        &self,
        stream: StreamName,
        metadata: StreamMetadata,
        expected: ExpectedRevision,
    ) -> Result<StreamState, WriteError> {
        let op = WriteOp::SetMetadata { metadata, expected };
        match self.write(stream, op).await? {
            WriteOutcome::MetadataSet(state) => Ok(state),
            other => unreachable_outcome(&other),
        }
    }

    /// The state of `stream` with its custom metadata, `None` when nothing was
    /// ever written for it.
    pub async fn stream_state(
        &self,
        stream: StreamName,
    ) -> Result<Option<StreamState>, StorageError> {
        self.blocking(move |store| store.stream_state_with_custom(&stream))
            .await
    }

    /// Reads one event of a stream.
    pub async fn read_event(
        &self,
        stream: StreamName,
        revision: u64,
    ) -> Result<StreamRead<Option<RecordedEvent>>, StorageError> {
        self.blocking(move |store| store.read_event(&stream, revision))
            .await
    }

    /// Reads a page of a stream; a forward read with a wait holds until the stream
    /// has an event at or after `from`, the wait ends, or the server shuts down.
    /// `None` means the stream does not exist (still, after any wait).
    pub async fn read_stream(
        &self,
        stream: StreamName,
        query: StreamQuery,
    ) -> Result<StreamRead<StreamSlice>, StorageError> {
        let deadline = Instant::now() + query.wait;
        let mut head = self.head.clone();
        let mut seen = head.borrow_and_update().seq;
        loop {
            let slice = self.read_stream_once(stream.clone(), query.clone()).await?;
            let found = match &slice {
                StreamRead::Found(s) => !s.events.is_empty(),
                StreamRead::Tombstoned => true,
                StreamRead::NotFound => false,
            };
            if found || query.direction == Direction::Backward {
                return Ok(slice);
            }
            // Wait for a commit that may concern this stream: one that is exactly
            // the next after our read and wrote elsewhere needs no new read.
            loop {
                if !self.wait_for_commit(&mut head, deadline).await {
                    return Ok(slice);
                }
                let (seq, may_touch) = {
                    let commit = head.borrow_and_update();
                    (commit.seq, commit.may_touch(&stream))
                };
                let skip = seq == seen + 1 && !may_touch;
                seen = seq;
                if !skip {
                    break;
                }
            }
        }
    }

    /// Reads a page of `$all`; a forward read with a wait holds until an event
    /// matching the filter commits, the wait ends, or the server shuts down.
    pub async fn read_all(&self, query: AllQuery) -> Result<AllSlice, StorageError> {
        let deadline = Instant::now() + query.wait;
        let mut head = self.head.clone();
        let mut from = query.from;
        loop {
            head.borrow_and_update();
            let q = AllQuery {
                from,
                ..query.clone()
            };
            let slice = self.read_all_once(q, MAX_EXAMINED_PER_READ).await?;
            if !slice.events.is_empty() || query.direction == Direction::Backward {
                return Ok(slice);
            }
            from = slice.next_position;
            let more_stored = match (slice.next_position, slice.head_position) {
                (Some(next), Some(head)) => next <= head,
                _ => false,
            };
            if more_stored && Instant::now() < deadline && !self.shutdown.is_cancelled() {
                // The scan budget ran out before the head: keep scanning.
                continue;
            }
            if !self.wait_for_commit(&mut head, deadline).await {
                return Ok(slice);
            }
        }
    }

    /// Waits for the next commit. `false` when the deadline passed, the server is
    /// shutting down, or the writer is gone.
    async fn wait_for_commit(&self, head: &mut watch::Receiver<Commit>, deadline: Instant) -> bool {
        if Instant::now() >= deadline {
            return false;
        }
        let _waiting = GaugeGuard::new(&self.metrics.long_polls);
        let _task = self.track();
        tokio::select! {
            changed = head.changed() => changed.is_ok(),
            () = tokio::time::sleep_until(deadline) => false,
            () = self.shutdown.cancelled() => false,
        }
    }

    /// One `$all` read without waiting (subscriptions do their own waiting).
    /// At most `max_examined` events are examined (capped at `MAX_EXAMINED_PER_READ`).
    pub async fn read_all_once(
        &self,
        query: AllQuery,
        max_examined: usize,
    ) -> Result<AllSlice, StorageError> {
        let mut max_examined = max_examined.clamp(1, MAX_EXAMINED_PER_READ);
        let (seq, head) = {
            let commit = self.head.borrow();
            (commit.seq, commit.last_position)
        };
        let tail = match (query.direction, query.from, head) {
            (Direction::Forward, Some(from), Some(head)) => head.checked_sub(from),
            _ => None,
        };
        // A live subscriber or long-poll reading the few events just committed
        // (still in the memtable) reads them here: the blocking pool's hand-off
        // costs two thread wake-ups, more than the read. Anything longer goes
        // to the pool; the inline read examines at most `INLINE_READ_EVENTS`
        // even if more commit meanwhile (the caller reads on from where it ends).
        let inline = tail.is_some_and(|t| t < INLINE_READ_EVENTS);
        if inline {
            max_examined = max_examined.min(INLINE_READ_EVENTS as usize);
            if let Some(from) = query.from {
                if let Some(slice) = self.shared_tail_read(seq, from, &query, max_examined)? {
                    self.metrics.on_read(slice.events.len());
                    return Ok(slice);
                }
            }
        }
        let read = move |store: &Store| {
            store.read_all(
                query.from,
                query.direction,
                query.limit,
                &query.filter,
                max_examined,
            )
        };
        let slice = if inline {
            read(&self.store)?
        } else {
            self.blocking(read).await?
        };
        self.metrics.on_read(slice.events.len());
        Ok(slice)
    }

    /// A live tail read answered from one unfiltered read per commit and
    /// place, shared by every reader there: a commit's subscribers all read
    /// the same few events from the same place, and each read of its own
    /// costs RocksDB's fixed work (a snapshot, an iterator over every
    /// table, the head) many times over what the events cost. `None` when
    /// the shared read does not hold this reader's whole answer (then it
    /// reads on its own). The answer is the one a read of its own would
    /// give on the shared read's snapshot, taken after the commit `seq`
    /// was announced, as its own read's would be.
    fn shared_tail_read(
        &self,
        seq: u64,
        from: u64,
        query: &AllQuery,
        max_examined: usize,
    ) -> Result<Option<AllSlice>, StorageError> {
        let lock = || self.tails.lock().unwrap_or_else(|e| e.into_inner());
        let found = lock()
            .iter()
            .find(|t| t.seq == seq && t.from == from)
            .cloned();
        if let Some(shared) = found {
            let answer = shared.answer(query, max_examined);
            if answer.is_some() {
                self.metrics.shared_tail_reads.inc();
            }
            return Ok(answer);
        }
        // The commit's own events when it handed them over and this read
        // starts at them: the read it spares would return exactly these
        // (`GroupEvents`), as of the commit `seq`.
        let written = {
            let commit = self.head.borrow();
            (commit.seq == seq)
                .then(|| commit.appended.clone())
                .flatten()
                .filter(|group| {
                    group.first_position == from
                        && !group.is_empty()
                        && group.len() <= INLINE_READ_EVENTS as usize
                })
        };
        let slice = match written {
            Some(group) => {
                self.metrics.live_tails_from_memory.inc();
                let events = group.recorded();
                let last = from + events.len() as u64 - 1;
                AllSlice {
                    examined: events.len(),
                    events,
                    next_position: Some(last + 1),
                    head_position: Some(last),
                }
            }
            None => self.store.read_all(
                Some(from),
                Direction::Forward,
                usize::MAX,
                &AllFilter::default(),
                INLINE_READ_EVENTS as usize,
            )?,
        };
        let bytes = slice.events.iter().map(crate::storage::event_bytes).sum();
        let shared = Arc::new(SharedTail {
            seq,
            from,
            slice,
            bytes,
        });
        if bytes < SHARED_TAIL_BYTES {
            let mut tails = lock();
            // Only the newest commit's reads are worth keeping.
            tails.retain(|t| t.seq >= seq);
            let newest = tails.iter().all(|t| t.seq == seq);
            if newest && !tails.iter().any(|t| t.from == from) {
                if tails.len() == SHARED_TAILS {
                    tails.remove(0);
                }
                tails.push(Arc::clone(&shared));
            }
        }
        Ok(shared.answer(query, max_examined))
    }

    /// One stream read without waiting.
    pub async fn read_stream_once(
        &self,
        stream: StreamName,
        query: StreamQuery,
    ) -> Result<StreamRead<StreamSlice>, StorageError> {
        let read = self
            .blocking(move |store| {
                store.read_stream(&stream, query.from, query.direction, query.limit)
            })
            .await?;
        if let StreamRead::Found(slice) = &read {
            self.metrics.on_read(slice.events.len());
        }
        Ok(read)
    }

    /// The last revision of `stream` as expected-revision checks see it.
    pub async fn last_revision(
        &self,
        stream: StreamName,
    ) -> Result<StreamRead<Option<u64>>, StorageError> {
        self.blocking(move |store| store.last_revision(&stream))
            .await
    }

    /// A page of the stream catalog.
    pub async fn streams_page(
        &self,
        prefix: Option<String>,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<(StreamName, StreamState)>, StorageError> {
        self.blocking(move |store| store.streams_page(prefix.as_deref(), after.as_deref(), limit))
            .await
    }

    /// A page of the stream catalog, in one blocking task, and whether more
    /// streams follow.
    pub async fn catalog_page(
        &self,
        prefix: Option<String>,
        after: Option<String>,
        limit: usize,
    ) -> Result<(Vec<CatalogEntry>, bool), StorageError> {
        self.blocking(move |store| store.catalog_page(prefix.as_deref(), after.as_deref(), limit))
            .await
    }

    /// One stream's catalog entry, `None` when nothing was ever written for it.
    pub async fn catalog_entry(
        &self,
        stream: StreamName,
    ) -> Result<Option<CatalogEntry>, StorageError> {
        self.blocking(move |store| store.catalog_entry(&stream))
            .await
    }

    /// Hidden events of `stream` (scavenging).
    pub async fn hidden_events(
        &self,
        stream: StreamName,
        state: StreamState,
        from: u64,
        now_micros: u64,
        max: usize,
    ) -> Result<HiddenPage, StorageError> {
        self.blocking(move |store| store.hidden_events(&stream, &state, from, now_micros, max))
            .await
    }

    /// Verifies event records from `from`.
    pub async fn verify_events(
        &self,
        from: VerifyCursor,
        max: usize,
    ) -> Result<VerifyPage, StorageError> {
        self.blocking(move |store| store.verify_events(&from, max))
            .await
    }

    /// Verifies stream index entries from `from`.
    pub async fn verify_index(
        &self,
        from: VerifyCursor,
        max: usize,
    ) -> Result<VerifyPage, StorageError> {
        self.blocking(move |store| store.verify_index(&from, max))
            .await
    }

    /// The store cut into ranges to compact one at a time.
    pub async fn compaction_plan(&self) -> Result<Vec<CompactionSlice>, StorageError> {
        self.blocking(Store::compaction_plan).await
    }

    /// Compacts one range of the plan.
    pub async fn compact_slice(&self, slice: CompactionSlice) -> Result<(), StorageError> {
        self.blocking(move |store| store.compact_slice(&slice))
            .await
    }

    /// Bytes of the data directory on disk.
    pub async fn disk_bytes(&self) -> u64 {
        self.blocking(|store| Ok(store.disk_bytes()))
            .await
            .unwrap_or(0)
    }

    /// A RocksDB integer property summed over the column families.
    pub async fn property_sum(&self, property: &'static str) -> Option<u64> {
        self.blocking(move |store| Ok(store.property_sum(property)))
            .await
            .ok()
            .flatten()
    }

    /// The stream after which an interrupted scavenge resumes.
    pub async fn scavenge_resume_point(&self) -> Result<Option<String>, StorageError> {
        self.blocking(Store::scavenge_resume_point).await
    }

    /// Records (or with `None` clears) where the next scavenge resumes.
    pub async fn set_scavenge_resume_point(
        &self,
        after: Option<String>,
    ) -> Result<(), StorageError> {
        self.blocking(move |store| store.set_scavenge_resume_point(after.as_deref()))
            .await
    }

    /// The stored history of `kind` jobs (JSON, as the job module wrote it).
    pub async fn job_history(&self, kind: JobKind) -> Result<Option<Vec<u8>>, StorageError> {
        self.blocking(move |store| store.job_history(kind)).await
    }

    /// Replaces the stored history of `kind` jobs.
    pub async fn set_job_history(&self, kind: JobKind, json: Vec<u8>) -> Result<(), StorageError> {
        self.blocking(move |store| store.set_job_history(kind, &json))
            .await
    }

    /// Removes `events` (found hidden by `hidden_events`) through the writer,
    /// which re-checks each against the stream's state; returns how many events
    /// and bytes went.
    pub async fn remove_hidden(
        &self,
        stream: StreamName,
        events: Vec<HiddenEvent>,
        now_micros: u64,
    ) -> Result<(u64, u64), WriteError> {
        match self
            .write_internal(stream, WriteOp::Remove { events, now_micros })
            .await?
        {
            WriteOutcome::Removed { events, bytes } => Ok((events, bytes)),
            other => unreachable_outcome(&other),
        }
    }

    /// Cluster mode: the JetStream purges for the removals applied from log
    /// sequences `from..to` (see `Store::purge_plan`).
    pub async fn purge_plan(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Vec<crate::storage::purge::Purge>, StorageError> {
        self.blocking(move |store| store.purge_plan(from, to)).await
    }

    /// Events removed by scavenging, ever.
    pub async fn removed_events(&self) -> Result<u64, StorageError> {
        self.blocking(Store::removed_events).await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Store) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || read(&store))
            .await
            .map_err(|e| StorageError::Internal(format!("read task failed: {e}")))?
    }

    /// Writes a consistent copy of the store into `dir` (see
    /// `Store::checkpoint`) and returns the copy's head position.
    pub async fn backup(&self, dir: std::path::PathBuf) -> Result<Option<u64>, StorageError> {
        self.blocking(move |store| {
            store.checkpoint(&dir)?;
            Store::head_of(&dir)
        })
        .await
    }

    /// Flushes the store's memtables (shutdown).
    pub async fn flush(&self) -> Result<(), StorageError> {
        self.blocking(Store::flush).await
    }
}

/// How long a long-poll may wait at most.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

fn unreachable_outcome<T>(outcome: &WriteOutcome) -> Result<T, WriteError> {
    Err(WriteError::Storage(StorageError::Internal(format!(
        "the writer answered with {outcome:?}"
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ContentType;

    /// A service over a new store holding one event per `(stream, type)`.
    async fn service_with(events: &[(&str, &str)]) -> (tempfile::TempDir, Arc<Service>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(Store::open(dir.path()).expect("open"));
        let limits = QueueLimits {
            requests: 64,
            kib: 1024,
            timeout: Duration::from_secs(10),
            spin: Duration::ZERO,
        };
        let (service, _writer) =
            Service::start(store, CancellationToken::new(), limits).expect("start");
        for (stream, event_type) in events {
            let event = NewEvent {
                id: uuid::Uuid::new_v4(),
                event_type: (*event_type).into(),
                data: r#"{"n":1}"#.into(),
                metadata: None,
                content_type: ContentType::Json,
            };
            let stream = StreamName::parse(stream).expect("name");
            let appended = service.append(stream, ExpectedRevision::Any, vec![event]);
            appended.await.expect("append");
        }
        // The notification follows the answer: wait until it names the head.
        let mut head = service.head.clone();
        let last = events.len() as u64 - 1;
        head.wait_for(|c| c.last_position == Some(last))
            .await
            .expect("the writer runs");
        (dir, service)
    }

    /// Every `$all` read near the head, whatever its filter, limit and
    /// examination budget, answers what a read of its own answers, and
    /// readers at one place share one read.
    #[tokio::test]
    async fn tail_reads_shared_by_readers_answer_as_their_own_reads() {
        let streams = [("a-1", "X"), ("b-1", "Y"), ("a-2", "Y"), ("b-1", "X")];
        let events: Vec<_> = (0..10).map(|i| streams[i % 4]).collect();
        let (_dir, service) = service_with(&events).await;
        let filters = [
            AllFilter::default(),
            AllFilter {
                stream_prefix: Some("a-".into()),
                ..AllFilter::default()
            },
            AllFilter {
                type_prefix: Some("Y".into()),
                ..AllFilter::default()
            },
            AllFilter {
                scope: Some(Arc::from(vec!["b-".to_owned()])),
                ..AllFilter::default()
            },
            AllFilter {
                stream_prefix: Some("none-".into()),
                ..AllFilter::default()
            },
        ];
        let mut asked = 0;
        for from in 0..=11 {
            for filter in &filters {
                for limit in [1, 2, 3, 256] {
                    for max_examined in [1, 2, 5, 16, MAX_EXAMINED_PER_READ] {
                        let query = AllQuery {
                            from: Some(from),
                            direction: Direction::Forward,
                            limit,
                            filter: filter.clone(),
                            wait: Duration::ZERO,
                        };
                        let answer = service.read_all_once(query, max_examined).await;
                        // A read of its own examines at most this many near the head.
                        let budget = if from <= 9 {
                            max_examined.min(INLINE_READ_EVENTS as usize)
                        } else {
                            max_examined
                        };
                        let own = service.store.read_all(
                            Some(from),
                            Direction::Forward,
                            limit,
                            filter,
                            budget,
                        );
                        assert_eq!(
                            answer.expect("shared"),
                            own.expect("own"),
                            "from {from}, {filter:?}, limit {limit}, max {max_examined}"
                        );
                        asked += 1;
                    }
                }
            }
        }
        let shared = service.metrics.shared_tail_reads.get();
        // One read per place; every other reader there with a budget of
        // 16 or more and a limit above its matches is answered from it.
        assert!(shared > asked / 4, "{shared} of {asked} reads shared");
    }

    /// A commit makes the next readers read again.
    #[tokio::test]
    async fn a_commit_retires_the_shared_tail_reads() {
        let (_dir, service) = service_with(&[("s-1", "T")]).await;
        let query = AllQuery {
            from: Some(0),
            direction: Direction::Forward,
            limit: 256,
            filter: AllFilter::default(),
            wait: Duration::ZERO,
        };
        let first = service
            .read_all_once(query.clone(), 256)
            .await
            .expect("read");
        assert_eq!(first.events.len(), 1);
        let event = NewEvent {
            id: uuid::Uuid::new_v4(),
            event_type: "T".into(),
            data: "1".into(),
            metadata: None,
            content_type: ContentType::Json,
        };
        let stream = StreamName::parse("s-1").expect("name");
        service
            .append(stream, ExpectedRevision::Any, vec![event])
            .await
            .expect("append");
        let mut head = service.head.clone();
        head.wait_for(|c| c.last_position == Some(1))
            .await
            .expect("the writer runs");
        let second = service.read_all_once(query, 256).await.expect("read");
        assert_eq!(second.events.len(), 2);
        assert_eq!(second.head_position, Some(1));
        assert_eq!(service.metrics.shared_tail_reads.get(), 0);
        assert!(service.tails.lock().expect("lock").len() <= SHARED_TAILS);
    }

    /// A live reader at the first position of a commit takes the events the
    /// commit wrote from memory and gets what the store's own read returns;
    /// a commit whose events are not all visible (a stream that keeps only
    /// its last event) or may age out (`max_age`) is read from the store.
    #[tokio::test]
    async fn live_tail_reads_take_a_commits_own_events_when_all_are_visible() {
        let (_dir, service) = service_with(&[("s-1", "T")]).await;
        let mut head = service.head.clone();
        let keep_one = StreamMetadata {
            max_count: Some(1),
            ..StreamMetadata::default()
        };
        let age_out = StreamMetadata {
            max_age_secs: Some(3600),
            ..StreamMetadata::default()
        };
        // Stream, its metadata, events in one append, how many stay visible,
        // whether the live read takes them from memory.
        let cases = [
            ("s-2", None, 3, 3, true),
            ("s-3", Some(keep_one), 3, 1, false),
            ("s-4", Some(age_out), 1, 1, false),
        ];
        let mut from = 1;
        let mut from_memory = 0;
        for (stream, metadata, count, visible, in_memory) in cases {
            let stream = StreamName::parse(stream).expect("name");
            if let Some(metadata) = metadata {
                let set = service.set_metadata(stream.clone(), metadata, ExpectedRevision::Any);
                set.await.expect("metadata");
            }
            let events = (0..count)
                .map(|n: u64| NewEvent {
                    id: uuid::Uuid::new_v4(),
                    event_type: format!("T{n}").into(),
                    data: format!(r#"{{"n": {n}}}"#).into(),
                    metadata: n.is_multiple_of(2).then(|| r#"{"m":1}"#.into()),
                    content_type: ContentType::Json,
                })
                .collect();
            let appended = service.append(stream.clone(), ExpectedRevision::Any, events);
            appended.await.expect("append");
            let last = from + count - 1;
            head.wait_for(|c| c.last_position == Some(last))
                .await
                .expect("commit");
            let query = AllQuery {
                from: Some(from),
                direction: Direction::Forward,
                limit: 256,
                filter: AllFilter::default(),
                wait: Duration::ZERO,
            };
            let live = service.read_all_once(query, 256).await.expect("live read");
            let own = service.store.read_all(
                Some(from),
                Direction::Forward,
                256,
                &AllFilter::default(),
                INLINE_READ_EVENTS as usize,
            );
            assert_eq!(live, own.expect("own read"), "{stream}");
            assert_eq!(live.events.len(), visible, "{stream}");
            from_memory += u64::from(in_memory);
            let taken = service.metrics.live_tails_from_memory.get();
            assert_eq!(taken, from_memory, "{stream}");
            from = last + 1;
        }
    }
}
