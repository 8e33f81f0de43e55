//! The single writer: one OS thread owns every write to the store.
//!
//! It takes every pending request from its queue (group commit), checks each
//! one in order (idempotency and expected revision for appends, the same for
//! deletes) against the store plus the earlier requests of the same group,
//! assigns revisions and gap-free global positions, writes the whole group as
//! one synced `WriteBatch`, and only then answers each request. A rejected
//! request adds nothing to the batch, so it never affects its neighbours. No
//! lock is needed: no other thread writes the log, the stream index or the
//! stream states (the id indexer only ingests ids this thread handed it; see
//! `id_index`). Deletes, metadata changes and scavenge removals go through the
//! same queue, so they are ordered with appends. A small group of appends
//! whose events are all visible hands those events to the commit notification
//! (`GroupEvents`), so that live readers need not read them back.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rocksdb::{WriteBatch, WriteOptions};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::id_index::{self, IdIndex};
use super::idle_wait::IdleWait;
use super::stream_index::{self, Run};
use super::stream_state::{self, MetadataVersion, StreamMetadata, StreamState};
use super::{codec, keys, now_micros, StorageError, Store};
use crate::model::{display_revision, AppendOutcome, ExpectedRevision, NewEvent, StreamName};

/// Most requests committed in one group.
const MAX_GROUP_REQUESTS: usize = 4096;
/// Most payload bytes committed in one group (a single larger request still goes alone).
const MAX_GROUP_BYTES: usize = 32 << 20;
/// Stream states the writer keeps in memory, per generation (two generations).
const STATE_CACHE_GENERATION: usize = 16_384;

/// Why a write was refused.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("expected revision {expected}, but the stream's last revision is {}", display_revision(*actual))]
    WrongExpectedRevision {
        expected: ExpectedRevision,
        actual: Option<u64>,
    },
    #[error("event id {id} is already stored at position {position}")]
    DuplicateEventId { id: Uuid, position: u64 },
    #[error("stream {0} is deleted for good (tombstoned)")]
    StreamDeleted(StreamName),
    #[error("stream {0} not found")]
    StreamNotFound(StreamName),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the writer has stopped after a storage failure; restart the server")]
    WriterStopped,
    /// The writer's queue stayed full for the whole admission timeout; nothing
    /// of the request was written.
    #[error(
        "the writer's queue is full (--writer-queue-requests / --writer-queue-bytes); retry later"
    )]
    Busy,
    /// Cluster mode: the replicated log did not take the write (no quorum, no
    /// answer in time, or the stream kept changing under it); nothing was
    /// acknowledged, and a retry with the same event ids is safe.
    #[error("the cluster's log did not take the write: {0}")]
    ClusterUnavailable(String),
    /// Cluster mode: the write is larger than one log message may be.
    #[error(
        "the write takes {bytes} bytes in the cluster's log, which takes at most {max} per message"
    )]
    TooLargeForCluster { bytes: usize, max: usize },
}

/// What a request asks the writer to do.
#[derive(Debug, Clone)]
pub enum WriteOp {
    Append {
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    },
    /// Soft delete (`hard: false`) or tombstone (`hard: true`).
    Delete {
        expected: ExpectedRevision,
        hard: bool,
    },
    /// Replaces the metadata when `expected` admits the current metadata
    /// version's revision (`None` before the first change).
    SetMetadata {
        metadata: StreamMetadata,
        expected: ExpectedRevision,
    },
    /// Removes these hidden events (scavenging); each is re-checked against the
    /// stream's current state first, so a change of limits since the scan can
    /// never make the scavenger remove a visible event.
    Remove {
        events: Vec<HiddenEvent>,
        now_micros: u64,
    },
}

/// An event the scavenger found hidden.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HiddenEvent {
    pub position: u64,
    pub revision: u64,
    pub id: Uuid,
    pub recorded_at_micros: u64,
    pub bytes: u64,
}

/// What a successful write reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    Appended(AppendOutcome),
    Deleted,
    MetadataSet(StreamState),
    /// How many events and bytes were removed.
    Removed {
        events: u64,
        bytes: u64,
    },
    /// `Origin::Check`: the request would write; the stream's last log
    /// sequence is this (0: none).
    Checked {
        subject_sequence: u64,
    },
}

/// Where a request comes from, which decides what the writer does with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Origin {
    /// A client's write on a single node: checked, then written.
    #[default]
    Client,
    /// Cluster mode, before publishing: checked against the committed store
    /// only, nothing written. An accepted request is answered
    /// `WriteOutcome::Checked`; refusals and replays as usual.
    Check,
    /// Cluster mode: a write of the replicated log, applied at its place.
    /// Applied whatever its outcome (a refusal applies as nothing), together
    /// with the log's sequence: the stream's last log sequence and the
    /// store's applied sequence move in the same batch.
    Log {
        sequence: u64,
        /// When the log stored it: the same on every node.
        recorded_at_micros: u64,
    },
}

/// One request waiting for the writer.
pub struct WriteRequest {
    pub stream: StreamName,
    pub op: WriteOp,
    pub origin: Origin,
    pub reply: oneshot::Sender<Result<WriteOutcome, WriteError>>,
    /// The request's place in the bounded queue, given back when the writer
    /// drops the request (after answering it).
    pub admission: Vec<tokio::sync::OwnedSemaphorePermit>,
    /// An append's ids looked up in `event_ids` before it was queued (off
    /// the writer thread); `None`: the writer looks them up.
    pub known_ids: Option<super::KnownIds>,
}

impl WriteRequest {
    pub fn payload_bytes(&self) -> usize {
        match &self.op {
            WriteOp::Append { events, .. } => events
                .iter()
                .map(|e| {
                    e.data.len() + e.metadata.as_ref().map_or(0, |m| m.len()) + e.event_type.len()
                })
                .sum(),
            _ => 64,
        }
    }

    /// The memory the request keeps alive until the writer drops it: each
    /// text its events share counted once (the events of an append body
    /// share the body, whitespace and all), at least `payload_bytes`.
    pub fn held_bytes(&self) -> usize {
        let WriteOp::Append { events, .. } = &self.op else {
            return self.payload_bytes();
        };
        let mut held = 0;
        let mut last: Option<&crate::model::Text> = None;
        let texts = events
            .iter()
            .flat_map(|e| [Some(&e.event_type), Some(&e.data), e.metadata.as_ref()])
            .flatten();
        for text in texts {
            if !last.is_some_and(|last| last.shares_bytes_with(text)) {
                held += text.held_len();
            }
            last = Some(text);
        }
        held
    }
}

/// Sizes of one committed group, reported to the commit observer.
#[derive(Debug, Clone)]
pub struct CommitInfo {
    /// Position of the last event committed so far (`None`: the store has none).
    pub last_position: Option<u64>,
    pub requests: usize,
    /// Events appended by this group.
    pub events: usize,
    /// Bytes of the records appended by this group.
    pub bytes: u64,
    /// How long the synced write took.
    pub write_duration: std::time::Duration,
    /// The streams this group wrote to (appends, deletes, metadata, removals).
    pub streams: Vec<StreamName>,
    /// Committed event ids the id index holds in memory only (see `id_index`).
    pub unindexed_ids: usize,
    /// Cluster mode: the last log sequence the store has applied.
    pub log_sequence: Option<u64>,
    /// The events the group wrote, for live readers to take from memory
    /// instead of reading them back (see `GroupEvents`).
    pub appended: Option<Arc<GroupEvents>>,
}

/// Most events a group hands to live readers in memory (`GroupEvents`):
/// as many as a live tail read near the head examines (the service's
/// inline reads use this same number), so a larger group would go unused.
pub const LIVE_GROUP_EVENTS: usize = 16;
/// Most record bytes of such a group: its events keep their append bodies
/// alive until the next commit replaces them.
pub const LIVE_GROUP_BYTES: u64 = 1 << 20;

/// Everything a group of client appends wrote, in position order: positions
/// `first_position..first_position + len()`, all of them visible on their
/// streams' states as the group left them. Only a group of appends (no
/// delete, metadata change or removal, not the cluster's log) of at most
/// `LIVE_GROUP_EVENTS` events and `LIVE_GROUP_BYTES` bytes, none on a stream
/// whose events age out (`max_age`), has one: then a read of the group's
/// positions on the store as the commit left it returns exactly these events.
#[derive(Debug)]
pub struct GroupEvents {
    pub first_position: u64,
    pub recorded_at_micros: u64,
    /// The group's appends in the order they were written.
    pub appends: Vec<GroupAppend>,
}

/// One append of a `GroupEvents`.
#[derive(Debug)]
pub struct GroupAppend {
    pub stream: StreamName,
    pub first_revision: u64,
    pub events: Vec<NewEvent>,
}

impl GroupEvents {
    /// How many events the group wrote.
    pub fn len(&self) -> usize {
        self.appends.iter().map(|a| a.events.len()).sum()
    }

    /// Whether the group wrote no event.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The events as a read returns them, in position order.
    pub fn recorded(&self) -> Vec<crate::model::RecordedEvent> {
        let mut position = self.first_position;
        let mut out = Vec::with_capacity(self.len());
        for append in &self.appends {
            for (revision, event) in (append.first_revision..).zip(&append.events) {
                out.push(crate::model::RecordedEvent {
                    position,
                    stream: append.stream.clone(),
                    revision,
                    id: event.id,
                    event_type: event.event_type.to_string(),
                    data: event.data.to_string(),
                    metadata: event.metadata.as_ref().map(ToString::to_string),
                    recorded_at_micros: self.recorded_at_micros,
                    content_type: event.content_type,
                });
                position += 1;
            }
        }
        out
    }
}

/// The appends a group collects for `GroupEvents` while it is prepared.
struct LiveGroup {
    appends: Vec<GroupAppend>,
    events: usize,
    /// Cleared by anything that rules the group out.
    eligible: bool,
}

impl LiveGroup {
    fn new() -> Self {
        Self {
            appends: Vec::new(),
            events: 0,
            eligible: true,
        }
    }

    /// Takes the events of `request`, which wrote `outcome`.
    fn add(&mut self, request: &mut WriteRequest, outcome: &WriteOutcome) {
        match (&mut request.op, outcome) {
            (WriteOp::Append { events, .. }, WriteOutcome::Appended(o)) if self.eligible => {
                self.events += events.len();
                if self.events > LIVE_GROUP_EVENTS {
                    self.rule_out();
                    return;
                }
                self.appends.push(GroupAppend {
                    stream: request.stream.clone(),
                    first_revision: o.first_revision,
                    events: std::mem::take(events),
                });
            }
            _ => self.rule_out(),
        }
    }

    fn rule_out(&mut self) {
        self.eligible = false;
        self.appends = Vec::new();
    }

    /// The group's events, when every one of them is visible on the states
    /// the group wrote (`states`) and will stay so until the store changes.
    fn finish(
        self,
        first_position: u64,
        bytes: u64,
        now_micros: u64,
        states: &HashMap<StreamName, StreamState>,
    ) -> Option<Arc<GroupEvents>> {
        if !self.eligible || self.appends.is_empty() || bytes > LIVE_GROUP_BYTES {
            return None;
        }
        let visible = self.appends.iter().all(|append| {
            states.get(&append.stream).is_some_and(|state| {
                state.metadata.max_age_secs.is_none()
                    && state.is_visible(append.first_revision, now_micros, now_micros)
            })
        });
        visible.then(|| {
            Arc::new(GroupEvents {
                first_position,
                recorded_at_micros: now_micros,
                appends: self.appends,
            })
        })
    }
}

/// Where the writer's requests go: cloneable, cheap.
#[derive(Clone)]
pub struct WriterHandle {
    queue: mpsc::UnboundedSender<WriteRequest>,
}

impl WriterHandle {
    /// Queues `request`; its reply arrives on the request's channel.
    /// `WriterStopped` when the writer has exited.
    pub fn submit(&self, request: WriteRequest) -> Result<(), WriteError> {
        self.queue
            .send(request)
            .map_err(|_| WriteError::WriterStopped)
    }
}

/// Starts the writer thread. `on_commit` runs on the writer thread after each
/// durable group, before the group's requests are answered. The thread exits when
/// every `WriterHandle` is dropped and the queue is drained; join it to know that
/// every acknowledged write is on disk. Never spins on its queue.
#[cfg(test)]
pub fn spawn(
    store: Arc<Store>,
    on_commit: impl FnMut(CommitInfo) + Send + 'static,
) -> Result<(WriterHandle, std::thread::JoinHandle<()>), StorageError> {
    let never_spins = IdleWait::new(
        std::time::Duration::ZERO,
        Default::default(),
        Default::default(),
    );
    spawn_with(store, on_commit, never_spins)
}

/// `spawn`, with the writer waiting for its requests as `wait` says.
pub fn spawn_with(
    store: Arc<Store>,
    on_commit: impl FnMut(CommitInfo) + Send + 'static,
    wait: IdleWait,
) -> Result<(WriterHandle, std::thread::JoinHandle<()>), StorageError> {
    #[cfg(feature = "fault-injection")]
    let run_len = super::fault::id_run().unwrap_or(id_index::RUN_IDS);
    #[cfg(not(feature = "fault-injection"))]
    let run_len = id_index::RUN_IDS;
    let writer = Writer::new(store, on_commit, run_len)?;
    let (queue, receiver) = mpsc::unbounded_channel();
    let thread = std::thread::Builder::new()
        .name("skald-writer".into())
        .spawn(move || writer.run(receiver, wait))
        .map_err(|e| StorageError::Internal(format!("cannot start the writer thread: {e}")))?;
    Ok((WriterHandle { queue }, thread))
}

struct Writer<F> {
    store: Arc<Store>,
    /// Where each stored event id is (the writer's side of the id index).
    ids: IdIndex,
    next_position: u64,
    /// Events removed by scavenging, ever (kept in `meta`).
    removed_events: u64,
    on_commit: F,
    /// The states of the streams written most recently, as committed.
    states: StateCache,
    /// Set after a failed write other than a full disk: the engine's state is
    /// then unknown, so the writer refuses further writes instead of guessing
    /// (fail-stop).
    failed: bool,
    /// Set while writes fail for lack of space (logged once per episode).
    disk_full: bool,
    /// Tests: the next group that writes fails with this error.
    #[cfg(test)]
    fail_next_write: Option<StorageError>,
}

/// The committed states of recently written streams, so that an append to a
/// stream written lately does not look its state up in RocksDB (a memtable
/// search per request). Only the writer changes states, so the cache is
/// exact: it takes a group's states once the group is on disk and nothing of a
/// failed group. States here never carry custom metadata (it lives in its own
/// column family). Bounded: two generations of `STATE_CACHE_GENERATION`
/// streams; when the newer fills up, the older is dropped, so a stream written
/// in either of the last two generations is found.
#[derive(Default)]
struct StateCache {
    current: HashMap<StreamName, StreamState>,
    previous: HashMap<StreamName, StreamState>,
}

impl StateCache {
    fn get(&self, stream: &StreamName) -> Option<&StreamState> {
        self.current
            .get(stream)
            .or_else(|| self.previous.get(stream))
    }

    fn insert(&mut self, stream: StreamName, state: StreamState) {
        debug_assert!(
            state.metadata.custom.is_none(),
            "custom metadata is never cached"
        );
        if self.current.len() >= STATE_CACHE_GENERATION && !self.current.contains_key(&stream) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(stream, state);
    }
}

/// What an earlier request of the same group wrote for an event id.
#[derive(Clone)]
struct PendingId {
    /// Shared by the ids of one append (no copy of the name per event).
    stream: std::rc::Rc<StreamName>,
    revision: u64,
    position: u64,
}

/// The effects of the group so far, seen by the requests after them.
#[derive(Default)]
struct GroupOverlay {
    states: HashMap<StreamName, StreamState>,
    ids: HashMap<Uuid, PendingId>,
    /// Which of the group's appended ids the store held when the group began
    /// (looked up in one batch), with their positions.
    stored_ids: HashMap<Uuid, u64>,
    /// Ids whose events an earlier removal of the group deleted: forgotten, as
    /// they will be once the group is written (the store still has them).
    removed_ids: std::collections::HashSet<Uuid>,
    removed_events: u64,
    /// Groups with a removal: the stream index runs the group wrote (`None`:
    /// deleted), by stream and first revision, so that a removal finds a run
    /// an earlier request of the group rewrote or appended.
    runs: Option<HashMap<StreamName, BTreeMap<u64, Option<Run>>>>,
}

/// The group's batch and counters.
struct GroupBatch {
    batch: WriteBatch,
    next_position: u64,
    now_micros: u64,
    events: usize,
    bytes: u64,
    /// A scratch buffer the group's records are encoded in.
    record: Vec<u8>,
}

type Reply = oneshot::Sender<Result<WriteOutcome, WriteError>>;

impl<F: FnMut(CommitInfo)> Writer<F> {
    /// A writer of `store`, whose id index hands its ids over `run_len` at a time.
    fn new(store: Arc<Store>, on_commit: F, run_len: usize) -> Result<Self, StorageError> {
        let next_position = store.next_position()?;
        Ok(Self {
            ids: IdIndex::open(Arc::clone(&store), next_position, run_len)?,
            removed_events: store.removed_events()?,
            store,
            next_position,
            on_commit,
            states: StateCache::default(),
            failed: false,
            disk_full: false,
            #[cfg(test)]
            fail_next_write: None,
        })
    }

    fn run(mut self, mut receiver: mpsc::UnboundedReceiver<WriteRequest>, mut wait: IdleWait) {
        let mut answered = 0;
        while let Some(first) = wait.next(&mut receiver, answered) {
            let mut bytes = first.payload_bytes();
            let mut group = vec![first];
            while group.len() < MAX_GROUP_REQUESTS && bytes < MAX_GROUP_BYTES {
                match receiver.try_recv() {
                    Ok(request) => {
                        bytes += request.payload_bytes();
                        group.push(request);
                    }
                    Err(_) => break,
                }
            }
            answered = group.len();
            self.commit_group(group);
        }
        tracing::debug!("writer queue closed; writer exiting");
        self.ids.finish(self.next_position);
    }

    fn commit_group(&mut self, group: Vec<WriteRequest>) {
        if self.failed {
            for request in group {
                let _ = request.reply.send(Err(WriteError::WriterStopped));
            }
            return;
        }
        let mut ids: Vec<Uuid> = group
            .iter()
            .filter_map(|r| match (&r.op, &r.known_ids) {
                (WriteOp::Append { events, .. }, None) => Some(events.iter().map(|e| e.id)),
                _ => None,
            })
            .flatten()
            .collect();
        let appended = group
            .iter()
            .map(|r| match &r.op {
                WriteOp::Append { events, .. } => events.len(),
                _ => 0,
            })
            .sum();
        let known = group.iter().filter_map(|r| match (&r.op, &r.known_ids) {
            (WriteOp::Append { events, .. }, Some(known)) => Some((known, events.as_slice())),
            _ => None,
        });
        self.ids.prepare_removal(
            group
                .iter()
                .flat_map(|r| match &r.op {
                    WriteOp::Remove { events, .. } => events.as_slice(),
                    _ => &[],
                })
                .map(|hidden| &hidden.id),
        );
        // Nothing but this thread writes states and the log, and the id
        // indexer only moves ids this thread keeps in memory until they are
        // in, so the store stays as read here until the group is written; the
        // overlay covers the group's own effects.
        let stored_ids = match self.ids.lookup(&mut ids, known) {
            Ok(found) => found,
            Err(e) => {
                // A failed read changes nothing: the group is answered, not stopped.
                tracing::error!(error = %e, "cannot look the group's event ids up");
                let message = e.to_string();
                for request in group {
                    let error = StorageError::Engine(message.clone());
                    let _ = request.reply.send(Err(WriteError::Storage(error)));
                }
                return;
            }
        };
        let removes = group.iter().any(|r| matches!(r.op, WriteOp::Remove { .. }));
        let mut overlay = GroupOverlay {
            removed_events: self.removed_events,
            stored_ids,
            ids: HashMap::with_capacity(appended),
            runs: removes.then(HashMap::new),
            ..GroupOverlay::default()
        };
        let mut out = GroupBatch {
            batch: WriteBatch::default(),
            next_position: self.next_position,
            now_micros: now_micros(),
            events: 0,
            bytes: 0,
            record: Vec::new(),
        };
        let mut answered: Vec<(Reply, Result<WriteOutcome, WriteError>)> = Vec::new();
        let mut written: Vec<(Reply, WriteOutcome)> = Vec::new();
        // Cluster mode: the log's writes, answered after the group is on disk
        // whatever their outcome (a refusal applied as nothing is applied too).
        let mut logged: Vec<(Reply, Result<WriteOutcome, WriteError>)> = Vec::new();
        let mut log_sequence = None;
        let requests = group.len();
        let mut touched = Vec::new();
        // Queue places are given back once the group is written (or failed),
        // before any answer goes out, so a client that got its answer sees
        // the queue without its request.
        let mut admissions = Vec::with_capacity(group.len());
        let mut live = LiveGroup::new();
        for mut request in group {
            admissions.push(std::mem::take(&mut request.admission));
            match request.origin {
                Origin::Client => match self.prepare(&request, &mut overlay, &mut out) {
                    Ok(outcome) if writes(&outcome) => {
                        live.add(&mut request, &outcome);
                        touched.push(request.stream);
                        written.push((request.reply, outcome));
                    }
                    other => answered.push((request.reply, other)),
                },
                Origin::Check => {
                    let answer = self.check(&request, &mut overlay, &out);
                    answered.push((request.reply, answer));
                }
                Origin::Log {
                    sequence,
                    recorded_at_micros,
                } => {
                    live.rule_out();
                    let group_time = std::mem::replace(&mut out.now_micros, recorded_at_micros);
                    let result = self.prepare(&request, &mut overlay, &mut out);
                    out.now_micros = group_time;
                    out.batch.put_cf(
                        self.store.cf(keys::CF_META),
                        keys::subject_sequence_key(request.stream.as_str()),
                        sequence.to_be_bytes(),
                    );
                    log_sequence = Some(sequence);
                    let meta = self.store.cf(keys::CF_META);
                    match &result {
                        Ok(WriteOutcome::Appended(o)) if !o.idempotent_replay => out.batch.put_cf(
                            meta,
                            keys::log_message_key(request.stream.as_str(), o.first_revision),
                            sequence.to_be_bytes(),
                        ),
                        Ok(WriteOutcome::Removed { events, .. }) if *events > 0 => {
                            out.batch.put_cf(
                                meta,
                                keys::log_removal_key(sequence),
                                request.stream.as_str(),
                            )
                        }
                        _ => {}
                    }
                    if result.as_ref().is_ok_and(writes) {
                        touched.push(request.stream);
                    }
                    logged.push((request.reply, result));
                }
            }
        }
        if let Some(sequence) = log_sequence {
            out.batch.put_cf(
                self.store.cf(keys::CF_META),
                keys::META_LOG_APPLIED,
                sequence.to_be_bytes(),
            );
        }
        if !written.is_empty() || log_sequence.is_some() {
            // The counters go in the same batch as what moved them (and only
            // then: a group of one append does not also rewrite the removal count).
            let meta = self.store.cf(keys::CF_META);
            if out.next_position != self.next_position {
                out.batch.put_cf(
                    meta,
                    keys::META_NEXT_POSITION,
                    keys::position_key(out.next_position),
                );
            }
            if overlay.removed_events != self.removed_events {
                out.batch.put_cf(
                    meta,
                    keys::META_REMOVED_EVENTS,
                    overlay.removed_events.to_be_bytes(),
                );
            }
            let mut opts = WriteOptions::default();
            opts.set_sync(true);
            let started = std::time::Instant::now();
            match self.write_batch(out.batch, &opts) {
                Ok(()) => {
                    if std::mem::take(&mut self.disk_full) {
                        tracing::info!("writes succeed again: the disk has room");
                    }
                    let appended = live.finish(
                        self.next_position,
                        out.bytes,
                        out.now_micros,
                        &overlay.states,
                    );
                    self.next_position = out.next_position;
                    self.removed_events = overlay.removed_events;
                    for (stream, state) in overlay.states.drain() {
                        self.states.insert(stream, state);
                    }
                    self.ids.committed(
                        overlay.removed_ids.drain(),
                        overlay.ids.drain().map(|(id, at)| (id, at.position)),
                        self.next_position,
                    );
                    (self.on_commit)(CommitInfo {
                        last_position: out.next_position.checked_sub(1),
                        requests,
                        events: out.events,
                        bytes: out.bytes,
                        write_duration: started.elapsed(),
                        streams: touched,
                        unindexed_ids: self.ids.unindexed(),
                        log_sequence,
                        appended,
                    });
                    admissions.clear();
                    for (reply, outcome) in written {
                        let _ = reply.send(Ok(outcome));
                    }
                    for (reply, result) in logged {
                        let _ = reply.send(result);
                    }
                }
                Err(e) => {
                    // A full disk is an answer, not a stop: RocksDB refused the
                    // batch whole (nothing of it is in the memtable, and its
                    // recovery flushes and switches the WAL before it accepts
                    // writes again), so the next group can simply try.
                    let no_space = matches!(e, StorageError::NoSpace(_));
                    if no_space && !self.disk_full {
                        tracing::error!(error = %e, "the disk is full: writes fail until space is freed");
                    } else if !no_space {
                        tracing::error!(error = %e, "group commit failed; writer stops accepting writes");
                        self.failed = true;
                    }
                    if log_sequence.is_some() && !self.failed {
                        // The log must be applied in order: a later message
                        // must not land without this group's, so stop.
                        tracing::error!(error = %e, "applying the cluster's log failed; writer stops accepting writes");
                        self.failed = true;
                    }
                    self.disk_full = no_space;
                    admissions.clear();
                    let error = |message: &str| {
                        WriteError::Storage(if no_space {
                            StorageError::NoSpace(message.to_owned())
                        } else {
                            StorageError::Engine(message.to_owned())
                        })
                    };
                    let message = match &e {
                        StorageError::NoSpace(m) | StorageError::Engine(m) => m.clone(),
                        other => other.to_string(),
                    };
                    for (reply, _) in written {
                        let _ = reply.send(Err(error(&message)));
                    }
                    for (reply, _) in logged {
                        let _ = reply.send(Err(error(&message)));
                    }
                    // A replay may have matched ids of this failed group: acknowledge none.
                    for (_, result) in &mut answered {
                        if result.is_ok() {
                            *result = Err(error(&message));
                        }
                    }
                }
            }
        }
        admissions.clear();
        for (reply, result) in answered {
            let _ = reply.send(result);
        }
    }

    fn write_batch(&mut self, batch: WriteBatch, opts: &WriteOptions) -> Result<(), StorageError> {
        #[cfg(test)]
        if let Some(error) = self.fail_next_write.take() {
            return Err(error);
        }
        #[cfg(feature = "fault-injection")]
        super::fault::write_delay();
        Ok(self.store.db.write_opt(batch, opts)?)
    }

    /// `Origin::Check`: the request checked against the committed store
    /// alone (not against the group's earlier requests), on a scratch batch.
    fn check(
        &self,
        request: &WriteRequest,
        overlay: &mut GroupOverlay,
        out: &GroupBatch,
    ) -> Result<WriteOutcome, WriteError> {
        if matches!(request.op, WriteOp::Remove { .. }) {
            return Err(WriteError::Storage(StorageError::Internal(
                "scavenge removals are not checked".into(),
            )));
        }
        // The group's lookup of stored ids is as of the committed store: lend it.
        let mut scratch = GroupOverlay {
            stored_ids: std::mem::take(&mut overlay.stored_ids),
            removed_events: self.removed_events,
            ..GroupOverlay::default()
        };
        let mut scratch_out = GroupBatch {
            batch: WriteBatch::default(),
            next_position: self.next_position,
            now_micros: out.now_micros,
            events: 0,
            bytes: 0,
            record: Vec::new(),
        };
        let result = self.prepare(request, &mut scratch, &mut scratch_out);
        overlay.stored_ids = scratch.stored_ids;
        match result {
            Ok(outcome) if writes(&outcome) => Ok(WriteOutcome::Checked {
                subject_sequence: self.store.subject_sequence(&request.stream)?,
            }),
            other => other,
        }
    }

    /// The stream's state as of this point of the group.
    fn state(
        &self,
        stream: &StreamName,
        overlay: &GroupOverlay,
    ) -> Result<Option<StreamState>, WriteError> {
        match overlay
            .states
            .get(stream)
            .or_else(|| self.states.get(stream))
        {
            Some(state) => Ok(Some(state.clone())),
            None => Ok(self.store.stream_state(stream)?),
        }
    }

    /// Writes `state`; custom metadata it carries (a new one, or one decoded
    /// from a version 2 state) goes to its own column family, out of the state.
    fn put_state(
        &self,
        stream: &StreamName,
        mut state: StreamState,
        overlay: &mut GroupOverlay,
        out: &mut GroupBatch,
    ) {
        if let Some(custom) = state.metadata.custom.take() {
            out.batch.put_cf(
                self.store.cf(keys::CF_STREAM_CUSTOM),
                keys::stream_key(stream.as_str()),
                custom,
            );
            state.has_custom = true;
        }
        out.batch.put_cf(
            self.store.cf(keys::CF_STREAMS),
            keys::stream_key(stream.as_str()),
            stream_state::encode(&state),
        );
        overlay.states.insert(stream.clone(), state);
    }

    /// Checks one request and, when it is accepted, adds its writes to the batch.
    fn prepare(
        &self,
        request: &WriteRequest,
        overlay: &mut GroupOverlay,
        out: &mut GroupBatch,
    ) -> Result<WriteOutcome, WriteError> {
        let stream = &request.stream;
        let state = self.state(stream, overlay)?;
        // A tombstone refuses everything but the scavenger's removals.
        let removing = matches!(request.op, WriteOp::Remove { .. });
        if !removing && state.as_ref().is_some_and(|s| s.tombstoned) {
            return Err(WriteError::StreamDeleted(stream.clone()));
        }
        let mut state = state.unwrap_or(StreamState {
            created_at_micros: out.now_micros,
            ..StreamState::default()
        });
        match &request.op {
            WriteOp::Append { expected, events } => {
                if let Some(outcome) = self.check_ids(stream, events, overlay)? {
                    return Ok(WriteOutcome::Appended(outcome));
                }
                let actual = state.current_revision();
                if !expected.admits(actual) {
                    return Err(WriteError::WrongExpectedRevision {
                        expected: *expected,
                        actual,
                    });
                }
                let outcome = self.append(stream, events, &mut state, overlay, out);
                self.put_state(stream, state, overlay, out);
                Ok(WriteOutcome::Appended(outcome))
            }
            WriteOp::Delete { expected, hard } => {
                let actual = state.current_revision();
                if !*hard && actual.is_none() {
                    return Err(WriteError::StreamNotFound(stream.clone()));
                }
                if !expected.admits(actual) {
                    return Err(WriteError::WrongExpectedRevision {
                        expected: *expected,
                        actual,
                    });
                }
                state.deleted_before = state.next_revision();
                state.tombstoned = *hard;
                self.put_state(stream, state, overlay, out);
                Ok(WriteOutcome::Deleted)
            }
            WriteOp::SetMetadata { metadata, expected } => {
                let actual = state.metadata_version.map(|v| v.revision);
                if !expected.admits(actual) {
                    return Err(WriteError::WrongExpectedRevision {
                        expected: *expected,
                        actual,
                    });
                }
                state.metadata_version = Some(MetadataVersion {
                    revision: actual.map_or(0, |r| r + 1),
                    set_at_micros: out.now_micros,
                    position: out.next_position.saturating_sub(1),
                });
                state.metadata = metadata.clone();
                state.has_custom = metadata.custom.is_some();
                if metadata.custom.is_none() {
                    out.batch.delete_cf(
                        self.store.cf(keys::CF_STREAM_CUSTOM),
                        keys::stream_key(stream.as_str()),
                    );
                }
                self.put_state(stream, state.clone(), overlay, out);
                Ok(WriteOutcome::MetadataSet(state))
            }
            WriteOp::Remove { events, now_micros } => {
                let (mut removed, mut bytes) = (0, 0);
                // Every read before the first change to the batch: a failed
                // read rejects the request whole.
                let stored = self.stored_runs(stream, events)?;
                // The index runs this request rewrote, written once at its end.
                let mut rewritten = std::collections::BTreeSet::new();
                for (hidden, stored) in events.iter().zip(stored) {
                    if state.is_visible(hidden.revision, hidden.recorded_at_micros, *now_micros) {
                        continue; // the limits changed since the scan
                    }
                    // Removed already, by this group or, in cluster mode
                    // (where two nodes may scavenge at once), by another
                    // scavenge: a single node runs one scavenge at a time,
                    // which never hands an event over twice, so only the log
                    // pays for the lookup (it costs a single node's appends
                    // about a tenth of their throughput during a scavenge:
                    // docs/benchmarks.md). An event this group appended is not
                    // in the store yet; its id may be one an earlier removal of
                    // the group freed, so the group's appends answer first.
                    let present = match (overlay.ids.get(&hidden.id), request.origin) {
                        (Some(pending), _) => pending.position == hidden.position,
                        (None, _) if overlay.removed_ids.contains(&hidden.id) => false,
                        (None, Origin::Log { .. }) => {
                            stored.and_then(|run| run.position_of(hidden.revision))
                                == Some(hidden.position)
                        }
                        (None, _) => true,
                    };
                    if !present {
                        continue;
                    }
                    out.batch.delete_cf(
                        self.store.cf(keys::CF_EVENTS),
                        keys::position_key(hidden.position),
                    );
                    Self::unindex(stream, hidden, stored, overlay, &mut rewritten);
                    out.batch
                        .delete_cf(self.store.cf(keys::CF_EVENT_IDS), hidden.id.as_bytes());
                    overlay.ids.remove(&hidden.id);
                    overlay.removed_ids.insert(hidden.id);
                    removed += 1;
                    bytes += hidden.bytes;
                }
                let index = self.store.cf(keys::CF_STREAM_INDEX);
                let runs = overlay.runs.as_ref().and_then(|runs| runs.get(stream));
                for first in rewritten {
                    let key = keys::stream_index_key(stream.as_str(), first);
                    match runs.and_then(|runs| runs.get(&first)).copied().flatten() {
                        Some(run) => out.batch.put_cf(
                            index,
                            key,
                            keys::stream_index_value(run.position, run.count),
                        ),
                        None => out.batch.delete_cf(index, key),
                    }
                }
                if removed > 0 {
                    state.bytes = state.bytes.saturating_sub(bytes);
                    overlay.removed_events += removed;
                    self.put_state(stream, state, overlay, out);
                }
                Ok(WriteOutcome::Removed {
                    events: removed,
                    bytes,
                })
            }
        }
    }

    /// The stored run of `stream`'s index holding each event's revision, as
    /// the group began (one seek per run: consecutive revisions share it).
    fn stored_runs(
        &self,
        stream: &StreamName,
        events: &[HiddenEvent],
    ) -> Result<Vec<Option<Run>>, StorageError> {
        let mut it = self
            .store
            .db
            .raw_iterator_cf(self.store.cf(keys::CF_STREAM_INDEX));
        let mut last: Option<Run> = None;
        let mut runs = Vec::with_capacity(events.len());
        for hidden in events {
            let run = match last.filter(|run| run.covers(hidden.revision)) {
                Some(run) => Some(run),
                None => stream_index::run_holding(&mut it, stream.as_str(), hidden.revision)?,
            };
            last = run.or(last);
            runs.push(run);
        }
        Ok(runs)
    }

    /// Takes `hidden`'s revision out of `stream`'s index in the group's
    /// overlay: its run (`stored` as the group began, or as the group has
    /// rewritten it since) becomes what is left of it, before and after; the
    /// first revisions of the runs changed go to `rewritten`. Nothing when the
    /// index does not hold it there.
    fn unindex(
        stream: &StreamName,
        hidden: &HiddenEvent,
        stored: Option<Run>,
        overlay: &mut GroupOverlay,
        rewritten: &mut std::collections::BTreeSet<u64>,
    ) {
        let revision = hidden.revision;
        let runs = overlay
            .runs
            .get_or_insert_with(HashMap::new)
            .entry(stream.clone())
            .or_default();
        let pending = runs
            .range(..=revision)
            .next_back()
            .map(|(first, run)| (*first, *run));
        let run = match (pending, stored) {
            // Runs never overlap: a run of the group's that holds it is the one.
            (Some((_, Some(run))), _) if run.covers(revision) => Some(run),
            // The group rewrote or deleted the stored run, or wrote one after it.
            (Some((first, _)), Some(stored)) if first >= stored.first_revision => None,
            (_, stored) => stored,
        };
        let Some(run) = run.filter(|run| run.position_of(revision) == Some(hidden.position)) else {
            return;
        };
        runs.insert(run.first_revision, None);
        rewritten.insert(run.first_revision);
        let (before, after) = run.without(revision);
        for part in before.into_iter().chain(after) {
            runs.insert(part.first_revision, Some(part));
            rewritten.insert(part.first_revision);
        }
    }

    /// Adds an accepted append's events to the batch and updates `state`.
    fn append(
        &self,
        stream: &StreamName,
        events: &[NewEvent],
        state: &mut StreamState,
        overlay: &mut GroupOverlay,
        out: &mut GroupBatch,
    ) -> AppendOutcome {
        let first_revision = state.next_revision();
        let first_position = out.next_position;
        let store = &self.store;
        let (events_cf, index_cf) = (store.cf(keys::CF_EVENTS), store.cf(keys::CF_STREAM_INDEX));
        let shared = std::rc::Rc::new(stream.clone());
        // One buffer for the records: the batch copies each.
        let mut record = std::mem::take(&mut out.record);
        for (offset, event) in (0u64..).zip(events) {
            let position = first_position + offset;
            let revision = first_revision + offset;
            codec::encode_record_into(
                &codec::RecordRef {
                    position,
                    stream: stream.as_str(),
                    revision,
                    recorded_at_micros: out.now_micros,
                    id: &event.id,
                    event_type: &event.event_type,
                    data: &event.data,
                    metadata: event.metadata.as_deref(),
                    content_type: event.content_type,
                },
                &mut record,
            );
            state.bytes += record.len() as u64;
            out.bytes += record.len() as u64;
            out.batch
                .put_cf(events_cf, keys::position_key(position), &record);
            overlay.ids.insert(
                event.id,
                PendingId {
                    stream: std::rc::Rc::clone(&shared),
                    revision,
                    position,
                },
            );
        }
        out.record = record;
        let count = events.len() as u64;
        // One index entry for the whole append (see `stream_index`).
        out.batch.put_cf(
            index_cf,
            keys::stream_index_key(stream.as_str(), first_revision),
            keys::stream_index_value(first_position, count),
        );
        if let Some(runs) = &mut overlay.runs {
            let run = Run {
                first_revision,
                position: first_position,
                count,
            };
            runs.entry(stream.clone())
                .or_default()
                .insert(first_revision, Some(run));
        }
        let last_revision = first_revision + count - 1;
        state.last_revision = Some(last_revision);
        state.last_appended_micros = out.now_micros;
        out.next_position += count;
        out.events += events.len();
        AppendOutcome {
            first_revision,
            last_revision,
            first_position,
            last_position: first_position + count - 1,
            idempotent_replay: false,
        }
    }

    /// Looks every event id up. Returns the original outcome when the request
    /// repeats a stored append exactly (same stream, same order, consecutive
    /// revisions), `DuplicateEventId` when it reuses any stored id otherwise, and
    /// `None` when every id is new.
    fn check_ids(
        &self,
        stream: &StreamName,
        events: &[NewEvent],
        overlay: &GroupOverlay,
    ) -> Result<Option<AppendOutcome>, WriteError> {
        let mut found = Vec::new();
        for event in events {
            if let Some(pending) = overlay.ids.get(&event.id) {
                found.push((event.id, pending.clone()));
            } else if overlay.removed_ids.contains(&event.id) {
                continue;
            } else if let Some(&position) = overlay.stored_ids.get(&event.id) {
                let stored = self.store.read_position(position)?;
                found.push((
                    event.id,
                    PendingId {
                        stream: std::rc::Rc::new(stored.stream),
                        revision: stored.revision,
                        position,
                    },
                ));
            }
        }
        let Some((first_id, first)) = found.first() else {
            return Ok(None);
        };
        let is_replay = found.len() == events.len()
            && found
                .iter()
                .zip(0u64..)
                .all(|((_, f), i)| *f.stream == *stream && f.revision == first.revision + i);
        if !is_replay {
            return Err(WriteError::DuplicateEventId {
                id: *first_id,
                position: first.position,
            });
        }
        let (_, last) = found.last().expect("found is not empty");
        Ok(Some(AppendOutcome {
            first_revision: first.revision,
            last_revision: last.revision,
            first_position: first.position,
            last_position: last.position,
            idempotent_replay: true,
        }))
    }
}

/// Whether an accepted request's outcome means something was added to the batch.
fn writes(outcome: &WriteOutcome) -> bool {
    match outcome {
        WriteOutcome::Appended(o) => !o.idempotent_replay,
        WriteOutcome::Removed { events, .. } => *events > 0,
        WriteOutcome::Deleted | WriteOutcome::MetadataSet(_) => true,
        WriteOutcome::Checked { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    //! The writer against a model of its rules: random appends (new, retried,
    //! mixed), deletes (soft and hard), metadata changes and scavenge removals,
    //! cut into random groups, with an injected failed write (a full disk,
    //! after which later groups succeed, or an engine error, after which the
    //! writer refuses everything), must get the model's answers, and the store must hold exactly the model's log and
    //! stream states afterwards. Drives `commit_group` directly: no thread, no
    //! timing.

    use super::*;
    use crate::model::{AllFilter, Direction};
    use crate::storage::KnownIds;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        New {
            stream: u8,
            expected: u8,
            exact: u64,
            count: usize,
        },
        Retry {
            earlier: usize,
            other_stream: Option<u8>,
            reverse: bool,
        },
        MixOldAndNew {
            earlier: usize,
        },
        Delete {
            stream: u8,
            hard: bool,
            expected: u8,
            exact: u64,
        },
        SetMaxCount {
            stream: u8,
            max_count: Option<u64>,
        },
        /// A removal request listing every stored event of the stream, visible
        /// ones included: the writer must remove only the hidden ones.
        Remove {
            stream: u8,
        },
        /// The writer stops without indexing its ids (as after `kill -9`) and a
        /// new one opens the store: it must read the unindexed ids back.
        Restart,
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u8..3, 0u8..4, 0u64..4, 1usize..4)
                .prop_map(|(stream, expected, exact, count)| Op::New { stream, expected, exact, count }),
            1 => (any::<usize>(), proptest::option::of(0u8..3), any::<bool>())
                .prop_map(|(earlier, other_stream, reverse)| Op::Retry { earlier, other_stream, reverse }),
            1 => any::<usize>().prop_map(|earlier| Op::MixOldAndNew { earlier }),
            1 => (0u8..3, proptest::bool::weighted(0.2), 0u8..4, 0u64..6)
                .prop_map(|(stream, hard, expected, exact)| Op::Delete { stream, hard, expected, exact }),
            1 => (0u8..3, proptest::option::of(1u64..4))
                .prop_map(|(stream, max_count)| Op::SetMaxCount { stream, max_count }),
            2 => (0u8..3).prop_map(|stream| Op::Remove { stream }),
            1 => Just(Op::Restart),
        ]
    }

    fn expectation(kind: u8, exact: u64) -> ExpectedRevision {
        match kind {
            0 => ExpectedRevision::Any,
            1 => ExpectedRevision::NoStream,
            2 => ExpectedRevision::StreamExists,
            _ => ExpectedRevision::Exact(exact),
        }
    }

    #[derive(Debug, Clone, PartialEq)]
    enum Answer {
        Appended(AppendOutcome),
        Wrong {
            actual: Option<u64>,
        },
        Duplicate,
        StreamDeleted,
        NotFound,
        Deleted,
        MetadataSet {
            max_count: Option<u64>,
        },
        Removed(u64),
        /// The group's write failed.
        Failed,
        /// A group after the failed one.
        Stopped,
    }

    impl Answer {
        /// Whether the writer added something to its batch for this answer.
        fn writes(&self) -> bool {
            match self {
                Self::Appended(o) => !o.idempotent_replay,
                Self::Removed(n) => *n > 0,
                Self::Deleted | Self::MetadataSet { .. } => true,
                _ => false,
            }
        }
    }

    #[derive(Debug, Clone, Default)]
    struct ModelStream {
        last: Option<u64>,
        deleted_before: u64,
        tombstoned: bool,
        max_count: Option<u64>,
    }

    impl ModelStream {
        fn current(&self) -> Option<u64> {
            let exists = !self.tombstoned && self.last.is_some_and(|l| l >= self.deleted_before);
            self.last.filter(|_| exists)
        }

        fn visible(&self, revision: u64) -> bool {
            let by_count = match (self.max_count, self.last) {
                (Some(max), Some(last)) => (last + 1).saturating_sub(max),
                _ => 0,
            };
            !self.tombstoned && revision >= self.deleted_before.max(by_count)
        }
    }

    /// One stored event: (position, stream, revision, id).
    type Stored = (u64, String, u64, Uuid);

    #[derive(Debug, Clone, Default)]
    struct Model {
        streams: HashMap<String, ModelStream>,
        ids: HashMap<Uuid, (String, u64, u64)>,
        /// Events stored (appended and not removed), by position.
        log: std::collections::BTreeMap<u64, Stored>,
        next_position: u64,
        /// Events removed by scavenging, ever.
        removed: u64,
    }

    impl Model {
        fn append(&mut self, stream: &str, expected: ExpectedRevision, ids: &[Uuid]) -> Answer {
            let state = self.streams.get(stream).cloned().unwrap_or_default();
            if state.tombstoned {
                return Answer::StreamDeleted;
            }
            let found: Vec<_> = ids
                .iter()
                .filter_map(|id| self.ids.get(id).cloned())
                .collect();
            if !found.is_empty() {
                let replay = found.len() == ids.len()
                    && found
                        .iter()
                        .zip(0u64..)
                        .all(|((s, r, _), i)| s == stream && *r == found[0].1 + i);
                if !replay {
                    return Answer::Duplicate;
                }
                let (first, last) = (&found[0], &found[found.len() - 1]);
                return Answer::Appended(AppendOutcome {
                    first_revision: first.1,
                    last_revision: last.1,
                    first_position: first.2,
                    last_position: last.2,
                    idempotent_replay: true,
                });
            }
            let actual = state.current();
            if !expected.admits(actual) {
                return Answer::Wrong { actual };
            }
            let first_revision = state.last.map_or(0, |r| r + 1);
            let first_position = self.next_position;
            for (i, id) in (0u64..).zip(ids) {
                let (revision, position) = (first_revision + i, first_position + i);
                self.ids
                    .insert(*id, (stream.to_owned(), revision, position));
                self.log
                    .insert(position, (position, stream.to_owned(), revision, *id));
            }
            let n = ids.len() as u64;
            self.next_position += n;
            self.streams.entry(stream.to_owned()).or_default().last = Some(first_revision + n - 1);
            Answer::Appended(AppendOutcome {
                first_revision,
                last_revision: first_revision + n - 1,
                first_position,
                last_position: first_position + n - 1,
                idempotent_replay: false,
            })
        }

        fn delete(&mut self, stream: &str, expected: ExpectedRevision, hard: bool) -> Answer {
            let state = self.streams.entry(stream.to_owned()).or_default();
            if state.tombstoned {
                return Answer::StreamDeleted;
            }
            let actual = state.current();
            if !hard && actual.is_none() {
                return Answer::NotFound;
            }
            if !expected.admits(actual) {
                return Answer::Wrong { actual };
            }
            state.deleted_before = state.last.map_or(0, |r| r + 1);
            state.tombstoned = hard;
            Answer::Deleted
        }

        fn set_max_count(&mut self, stream: &str, max_count: Option<u64>) -> Answer {
            let state = self.streams.entry(stream.to_owned()).or_default();
            if state.tombstoned {
                return Answer::StreamDeleted;
            }
            state.max_count = max_count;
            Answer::MetadataSet { max_count }
        }

        /// Every stored event of `stream`, as the removal request lists them.
        fn stored_of(&self, stream: &str) -> Vec<Stored> {
            self.log
                .values()
                .filter(|e| e.1 == stream)
                .cloned()
                .collect()
        }

        fn remove(&mut self, stream: &str, listed: &[Stored]) -> Answer {
            let state = self.streams.get(stream).cloned().unwrap_or_default();
            let mut removed = 0;
            for (position, _, revision, id) in listed {
                if !state.visible(*revision) {
                    self.log.remove(position);
                    self.ids.remove(id);
                    removed += 1;
                }
            }
            self.removed += removed;
            Answer::Removed(removed)
        }
    }

    fn ignore(_: CommitInfo) {}

    fn new_event(id: Uuid) -> NewEvent {
        NewEvent {
            content_type: crate::model::ContentType::Json,
            id,
            event_type: "T".into(),
            data: "{}".into(),
            metadata: None,
        }
    }

    fn answer_of(result: Result<WriteOutcome, WriteError>) -> Answer {
        match result {
            Ok(WriteOutcome::Appended(outcome)) => Answer::Appended(outcome),
            Ok(WriteOutcome::Deleted) => Answer::Deleted,
            Ok(WriteOutcome::MetadataSet(state)) => Answer::MetadataSet {
                max_count: state.metadata.max_count,
            },
            Ok(WriteOutcome::Removed { events, .. }) => Answer::Removed(events),
            Err(WriteError::WrongExpectedRevision { actual, .. }) => Answer::Wrong { actual },
            Err(WriteError::DuplicateEventId { .. }) => Answer::Duplicate,
            Err(WriteError::StreamDeleted(_)) => Answer::StreamDeleted,
            Err(WriteError::StreamNotFound(_)) => Answer::NotFound,
            Err(WriteError::Storage(_)) => Answer::Failed,
            Err(WriteError::WriterStopped) => Answer::Stopped,
            Ok(WriteOutcome::Checked { .. }) => panic!("no request of the model is a check"),
            Err(
                WriteError::Busy
                | WriteError::ClusterUnavailable(_)
                | WriteError::TooLargeForCluster { .. },
            ) => panic!("the writer itself never answers that"),
        }
    }

    /// The model's answers for one group, and the model after it: a group whose
    /// write fails changes nothing, fails every request that wrote or replayed,
    /// keeps the refusals, and stops the writer.
    fn settle_group(
        model: &mut Model,
        before: Model,
        wants: &mut [Answer],
        failure_pending: &mut bool,
        stopped: &mut bool,
        disk_full: bool,
    ) {
        if *stopped {
            *model = before;
            wants.iter_mut().for_each(|w| *w = Answer::Stopped);
            return;
        }
        if *failure_pending && wants.iter().any(Answer::writes) {
            *model = before;
            for want in wants.iter_mut() {
                if matches!(
                    want,
                    Answer::Appended(_)
                        | Answer::Deleted
                        | Answer::MetadataSet { .. }
                        | Answer::Removed(_)
                ) {
                    *want = Answer::Failed;
                }
            }
            *failure_pending = false;
            // A full disk fails the group only; any other failure stops the writer.
            *stopped = !disk_full;
        }
    }

    #[test]
    fn a_request_holds_its_append_body_once_and_its_own_texts_each() {
        let request = |events| WriteRequest {
            stream: StreamName::parse("s").expect("valid"),
            op: WriteOp::Append {
                expected: ExpectedRevision::Any,
                events,
            },
            origin: Origin::Client,
            reply: oneshot::channel().0,
            admission: Vec::new(),
            known_ids: None,
        };
        // Decoded on the fast path: the events share the body, padding and all.
        let body = format!(
            r#"{{"events":[{{"type":"a","data":{{"k":1}}}},{{"type":"b","data":[2],"metadata":{{}}}}]}}{}"#,
            " ".repeat(4096)
        );
        let (_, events) =
            crate::http::streams::decode_append(body.as_bytes(), 1 << 20).expect("valid");
        let shared = request(events);
        assert_eq!(shared.payload_bytes(), 1 + 7 + 1 + 3 + 2);
        assert_eq!(shared.held_bytes(), body.len());
        // Built field by field (the serde path, gRPC): each text on its own.
        let own = NewEvent {
            id: Uuid::from_u128(1),
            event_type: "ab".into(),
            data: "[1]".into(),
            metadata: Some("{}".into()),
            content_type: crate::model::ContentType::Json,
        };
        assert_eq!(
            request(vec![own.clone(), own]).held_bytes(),
            2 * (2 + 3 + 2)
        );
    }

    /// Sends `requests` as one group; returns their answers.
    fn one_group(
        writer: &mut TestWriter,
        requests: Vec<(&str, WriteOp, Origin)>,
    ) -> Vec<Result<WriteOutcome, WriteError>> {
        let mut answers = Vec::new();
        let group = requests
            .into_iter()
            .map(|(stream, op, origin)| {
                let (reply, answer) = oneshot::channel();
                answers.push(answer);
                let stream = StreamName::parse(stream).expect("valid");
                WriteRequest {
                    stream,
                    op,
                    origin,
                    reply,
                    admission: Vec::new(),
                    known_ids: None,
                }
            })
            .collect();
        writer.commit_group(group);
        answers
            .into_iter()
            .map(|mut a| a.try_recv().expect("answered"))
            .collect()
    }

    fn append_op(expected: ExpectedRevision, ids: &[u128]) -> WriteOp {
        let events = ids
            .iter()
            .map(|id| new_event(Uuid::from_u128(*id)))
            .collect();
        WriteOp::Append { expected, events }
    }

    type TestWriter = Writer<fn(CommitInfo)>;

    /// A writer over a new store (kept in the returned temp dir).
    fn fresh_writer() -> (tempfile::TempDir, Arc<Store>, TestWriter) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(Store::open(dir.path()).expect("open"));
        let writer =
            Writer::new(Arc::clone(&store), ignore as fn(CommitInfo), 1024).expect("writer");
        (dir, store, writer)
    }

    #[test]
    fn a_check_sees_the_committed_store_and_writes_nothing() {
        let (_dir, store, mut writer) = fresh_writer();
        let first = one_group(
            &mut writer,
            vec![(
                "s",
                append_op(ExpectedRevision::NoStream, &[1]),
                Origin::Client,
            )],
        );
        assert!(first[0].is_ok());
        let answers = one_group(
            &mut writer,
            vec![
                (
                    "s",
                    append_op(ExpectedRevision::Exact(0), &[2]),
                    Origin::Client,
                ),
                // Checked against the committed store, where s is at 0: not
                // against the append before it in the same group.
                (
                    "s",
                    append_op(ExpectedRevision::Exact(0), &[3]),
                    Origin::Check,
                ),
                (
                    "s",
                    append_op(ExpectedRevision::Exact(5), &[4]),
                    Origin::Check,
                ),
                ("s", append_op(ExpectedRevision::Any, &[1]), Origin::Check),
                ("s", append_op(ExpectedRevision::Any, &[2]), Origin::Check),
            ],
        );
        assert!(matches!(&answers[0], Ok(WriteOutcome::Appended(o)) if o.first_revision == 1));
        assert!(
            matches!(
                answers[1],
                Ok(WriteOutcome::Checked {
                    subject_sequence: 0
                })
            ),
            "{:?}",
            answers[1]
        );
        assert!(matches!(
            answers[2],
            Err(WriteError::WrongExpectedRevision {
                actual: Some(0),
                ..
            })
        ));
        assert!(
            matches!(&answers[3], Ok(WriteOutcome::Appended(o)) if o.idempotent_replay && o.first_position == 0)
        );
        // Id 2 is not committed yet when the group begins: a new id to the check.
        assert!(
            matches!(answers[4], Ok(WriteOutcome::Checked { .. })),
            "{:?}",
            answers[4]
        );
        assert_eq!(
            store.next_position().expect("next"),
            2,
            "checks write nothing"
        );
        assert_eq!(store.log_applied().expect("applied"), 0);
    }

    #[test]
    fn log_writes_move_the_applied_sequence_even_when_refused() {
        let (_dir, store, mut writer) = fresh_writer();
        let log = |sequence| Origin::Log {
            sequence,
            recorded_at_micros: 1_000_000 + sequence,
        };
        let answers = one_group(
            &mut writer,
            vec![
                ("s", append_op(ExpectedRevision::NoStream, &[1]), log(5)),
                ("s", append_op(ExpectedRevision::NoStream, &[2]), log(6)),
                ("t", append_op(ExpectedRevision::Any, &[3]), log(7)),
            ],
        );
        assert!(matches!(answers[0], Ok(WriteOutcome::Appended(_))));
        assert!(matches!(
            answers[1],
            Err(WriteError::WrongExpectedRevision { .. })
        ));
        assert!(matches!(answers[2], Ok(WriteOutcome::Appended(_))));
        assert_eq!(store.log_applied().expect("applied"), 7);
        let s = StreamName::parse("s").expect("valid");
        let t = StreamName::parse("t").expect("valid");
        assert_eq!(
            store.subject_sequence(&s).expect("s"),
            6,
            "a refused message still moves its subject"
        );
        assert_eq!(store.subject_sequence(&t).expect("t"), 7);
        // Every node stamps the log's time, not its own.
        assert_eq!(
            store.read_position(0).expect("event").recorded_at_micros,
            1_000_005
        );
        assert_eq!(
            store.read_position(1).expect("event").recorded_at_micros,
            1_000_007
        );
        // A group of refusals only still records how far the log was applied.
        let refused = one_group(
            &mut writer,
            vec![("s", append_op(ExpectedRevision::NoStream, &[9]), log(8))],
        );
        assert!(refused[0].is_err());
        assert_eq!(store.log_applied().expect("applied"), 8);
        // A failed apply stops the writer even on a full disk: a later
        // message must not land without this one.
        writer.fail_next_write = Some(StorageError::NoSpace("injected".into()));
        let failed = one_group(
            &mut writer,
            vec![("s", append_op(ExpectedRevision::Any, &[10]), log(9))],
        );
        assert!(matches!(
            failed[0],
            Err(WriteError::Storage(StorageError::NoSpace(_)))
        ));
        let after = one_group(
            &mut writer,
            vec![("s", append_op(ExpectedRevision::Any, &[11]), log(10))],
        );
        assert!(matches!(after[0], Err(WriteError::WriterStopped)));
        assert_eq!(store.log_applied().expect("applied"), 8);
    }

    /// Two nodes may scavenge at once in cluster mode, so the log can carry
    /// the same removal twice: the second removes and counts nothing.
    /// A scavenge frees an event's id; a client appends it again in the same
    /// group; a later removal of the group must still remove that new event.
    #[test]
    fn an_id_freed_and_appended_again_in_one_group_can_be_removed_again() {
        let (_dir, store, mut writer) = fresh_writer();
        let delete = || WriteOp::Delete {
            expected: ExpectedRevision::Any,
            hard: false,
        };
        let removal = |position, revision| WriteOp::Remove {
            events: vec![HiddenEvent {
                position,
                revision,
                id: Uuid::from_u128(1),
                recorded_at_micros: 0,
                bytes: 1,
            }],
            now_micros: 0,
        };
        one_group(
            &mut writer,
            vec![
                (
                    "s",
                    append_op(ExpectedRevision::NoStream, &[1]),
                    Origin::Client,
                ),
                ("s", delete(), Origin::Client),
            ],
        );
        let answers = one_group(
            &mut writer,
            vec![
                ("s", removal(0, 0), Origin::Client),
                ("s", append_op(ExpectedRevision::Any, &[1]), Origin::Client),
                ("s", delete(), Origin::Client),
                ("s", removal(1, 1), Origin::Client),
            ],
        );
        let removed = |answer: &Result<WriteOutcome, WriteError>| match answer {
            Ok(WriteOutcome::Removed { events, .. }) => Some(*events),
            _ => None,
        };
        assert_eq!(removed(&answers[0]), Some(1), "{answers:?}");
        assert!(
            matches!(&answers[1], Ok(WriteOutcome::Appended(o)) if o.first_position == 1 && !o.idempotent_replay),
            "{answers:?}"
        );
        assert_eq!(removed(&answers[3]), Some(1), "{answers:?}");
        assert_eq!(store.removed_events().expect("removed"), 2);
        let mut it = store.db.raw_iterator_cf(store.cf(keys::CF_EVENTS));
        it.seek_to_first();
        assert!(!it.valid(), "no event is left");
        drop(it);
        // The id is free again: a new append with it is not a replay.
        let again = one_group(
            &mut writer,
            vec![("s", append_op(ExpectedRevision::Any, &[1]), Origin::Client)],
        );
        assert!(
            matches!(&again[0], Ok(WriteOutcome::Appended(o)) if o.first_position == 2 && !o.idempotent_replay),
            "{again:?}"
        );
    }

    #[test]
    fn a_removal_of_events_already_removed_counts_nothing() {
        let (_dir, store, mut writer) = fresh_writer();
        let log = |sequence| Origin::Log {
            sequence,
            recorded_at_micros: 1_000_000,
        };
        let delete = WriteOp::Delete {
            expected: ExpectedRevision::Any,
            hard: false,
        };
        one_group(
            &mut writer,
            vec![
                (
                    "s",
                    append_op(ExpectedRevision::NoStream, &[1, 2, 3]),
                    log(1),
                ),
                ("s", delete, log(2)),
            ],
        );
        let s = StreamName::parse("s").expect("valid");
        let state = store.stream_state(&s).expect("state").expect("exists");
        let hidden = store
            .hidden_events(&s, &state, 0, 2_000_000, 100)
            .expect("hidden")
            .events;
        assert_eq!(hidden.len(), 3);
        let removal = || WriteOp::Remove {
            events: hidden.clone(),
            now_micros: 2_000_000,
        };
        // Twice in one group, then once more in the next.
        let answers = one_group(
            &mut writer,
            vec![("s", removal(), log(3)), ("s", removal(), log(4))],
        );
        let later = one_group(&mut writer, vec![("s", removal(), log(5))]);
        let counts: Vec<u64> = answers
            .iter()
            .chain(&later)
            .map(|a| match a {
                Ok(WriteOutcome::Removed { events, .. }) => *events,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(counts, [3, 0, 0]);
        assert_eq!(store.removed_events().expect("removed"), 3);
        assert_eq!(
            store
                .stream_state(&s)
                .expect("state")
                .expect("exists")
                .bytes,
            0
        );
        assert_eq!(store.log_applied().expect("applied"), 5);
        // A node catching up may apply an append, its deletion and its
        // removal in one group: the events are not in the store yet, and
        // are removed all the same.
        let removal = |ids: std::ops::Range<u64>| WriteOp::Remove {
            events: ids
                .map(|n| HiddenEvent {
                    position: n + 3,
                    revision: n,
                    id: Uuid::from_u128(u128::from(n) + 7),
                    recorded_at_micros: 1_000_000,
                    bytes: 1,
                })
                .collect(),
            now_micros: 2_000_000,
        };
        let t = StreamName::parse("t").expect("valid");
        let answers = one_group(
            &mut writer,
            vec![
                ("t", append_op(ExpectedRevision::NoStream, &[7, 8]), log(6)),
                (
                    "t",
                    WriteOp::Delete {
                        expected: ExpectedRevision::Any,
                        hard: false,
                    },
                    log(7),
                ),
                ("t", removal(0..2), log(8)),
            ],
        );
        assert!(
            matches!(answers[2], Ok(WriteOutcome::Removed { events: 2, .. })),
            "{answers:?}"
        );
        assert_eq!(store.removed_events().expect("removed"), 5);
        let t_state = store.stream_state(&t).expect("state").expect("exists");
        assert_eq!(
            store
                .hidden_events(&t, &t_state, 0, 2_000_000, 100)
                .expect("hidden")
                .events
                .len(),
            0
        );
    }

    /// Cluster mode: the JetStream purge a removal allows keeps the message
    /// holding the stream's first remaining event, the stream's last message,
    /// and everything after the horizon.
    #[test]
    fn purge_plans_keep_the_first_remaining_event_and_the_last_message() {
        use crate::storage::purge::Purge;
        let (_dir, store, mut writer) = fresh_writer();
        let log = |sequence| Origin::Log {
            sequence,
            recorded_at_micros: 1_000_000,
        };
        let removal = |stream: &str| {
            let name = StreamName::parse(stream).expect("valid");
            let state = store.stream_state(&name).expect("state").expect("exists");
            let events = store
                .hidden_events(&name, &state, 0, 2_000_000, 100)
                .expect("hidden")
                .events;
            WriteOp::Remove {
                events,
                now_micros: 2_000_000,
            }
        };
        let truncate = WriteOp::SetMetadata {
            metadata: StreamMetadata {
                truncate_before: Some(3),
                ..StreamMetadata::default()
            },
            expected: ExpectedRevision::Any,
        };
        let delete = WriteOp::Delete {
            expected: ExpectedRevision::Any,
            hard: true,
        };
        one_group(
            &mut writer,
            vec![
                // s: revisions 0-1 in message 1, 2-3 in 2, 4 in 3; t: 0 in 4.
                ("s", append_op(ExpectedRevision::NoStream, &[1, 2]), log(1)),
                ("s", append_op(ExpectedRevision::Any, &[3, 4]), log(2)),
                ("s", append_op(ExpectedRevision::Any, &[5]), log(3)),
                ("t", append_op(ExpectedRevision::NoStream, &[6]), log(4)),
                ("s", truncate, log(5)),
                ("t", delete, log(6)),
            ],
        );
        let removed = one_group(&mut writer, vec![("s", removal("s"), log(7))]);
        assert!(matches!(
            removed[0],
            Ok(WriteOutcome::Removed { events: 3, .. })
        ));
        let removed = one_group(&mut writer, vec![("t", removal("t"), log(8))]);
        assert!(matches!(
            removed[0],
            Ok(WriteOutcome::Removed { events: 1, .. })
        ));
        let purge = |stream: &str, before| Purge {
            stream: StreamName::parse(stream).expect("valid"),
            before,
        };
        // Revision 3, the first left of s, is in message 2: only 1 goes. All
        // of t is gone: everything but its last message (8, the removal).
        assert_eq!(
            store.purge_plan(0, 8).expect("plan"),
            [purge("s", 2), purge("t", 8)]
        );
        // Never past the horizon, and only for removals after `from`.
        assert_eq!(store.purge_plan(0, 7).expect("plan"), [purge("s", 2)]);
        assert_eq!(store.purge_plan(7, 8).expect("plan"), [purge("t", 8)]);
        assert_eq!(store.purge_plan(0, 6).expect("plan"), []);
    }

    #[test]
    fn the_state_cache_keeps_the_last_two_generations() {
        let name = |i: usize| StreamName::parse(&format!("s{i}")).expect("valid");
        let state = |i: usize| StreamState {
            last_revision: Some(i as u64),
            ..StreamState::default()
        };
        let mut cache = StateCache::default();
        let total = 3 * STATE_CACHE_GENERATION + 5;
        for i in 0..total {
            cache.insert(name(i), state(i));
            // Rewriting a stream already in the newer generation never rolls it over.
            cache.insert(name(i), state(i));
            assert!(cache.current.len() + cache.previous.len() <= 2 * STATE_CACHE_GENERATION);
        }
        // The newest two generations are found, with their latest states...
        for i in total - STATE_CACHE_GENERATION - 5..total {
            assert_eq!(cache.get(&name(i)), Some(&state(i)), "stream {i}");
        }
        // ...and the oldest are gone (the writer then reads them from the store).
        assert_eq!(cache.get(&name(0)), None);
        assert_eq!(cache.get(&name(STATE_CACHE_GENERATION)), None);
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config(96))]
        #[test]
        fn the_writer_follows_its_rules(
            ops in proptest::collection::vec(arb_op(), 1..48),
            cuts in proptest::collection::vec(any::<bool>(), 48),
            fail_at in proptest::option::weighted(0.3, 0usize..12),
            disk_full: bool,
        ) {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = Arc::new(Store::open(dir.path()).expect("open"));
            // Runs of two ids: many are handed over, ingested and read back.
            const RUN: usize = 2;
            let mut writer = Writer::new(Arc::clone(&store), ignore as fn(CommitInfo), RUN).expect("writer");
            let mut model = Model::default();
            let mut group_start = model.clone();
            // Each append's ids with what `event_ids` said of them when it was last sent.
            let mut sent: Vec<(String, Vec<Uuid>, KnownIds)> = Vec::new();
            let mut fresh = 0u128;
            let mut next_id = || { fresh += 1; Uuid::from_u128(fresh) };
            let (mut group, mut wants, mut answers) = (Vec::new(), Vec::new(), Vec::new());
            let (mut groups, mut failure_pending, mut stopped) = (0usize, false, false);
            let mut results: Vec<(Answer, oneshot::Receiver<_>)> = Vec::new();
            let count = ops.len();
            for (i, op) in ops.iter().enumerate() {
                // Appends come without their ids looked up, looked up now, or
                // (retries) with the answer of their previous sending: stale.
                let look_up = |ids: &[Uuid], stale: Option<&KnownIds>| match (i % 3, stale) {
                    (0, _) => None,
                    (2, Some(stale)) => Some(stale.clone()),
                    _ => Some(KnownIds::look_up(&store, ids.iter().copied()).expect("look up")),
                };
                let request = match op {
                    Op::New { stream, expected, exact, count } => {
                        let stream = format!("s{stream}");
                        let expected = expectation(*expected, *exact);
                        let ids: Vec<_> = (0..*count).map(|_| next_id()).collect();
                        let want = model.append(&stream, expected, &ids);
                        let known = KnownIds::look_up(&store, ids.iter().copied()).expect("look up");
                        sent.push((stream.clone(), ids.clone(), known));
                        let known = look_up(&ids, None);
                        let events = ids.into_iter().map(new_event).collect();
                        Some((stream, WriteOp::Append { expected, events }, want, known))
                    }
                    Op::Retry { earlier, other_stream, reverse } if !sent.is_empty() => {
                        let k = earlier % sent.len();
                        let (stream, mut ids, first) = sent[k].clone();
                        // The next retry's stale answer: this one, as of now.
                        sent[k].2 = KnownIds::look_up(&store, ids.iter().copied()).expect("look up");
                        if *reverse { ids.reverse(); }
                        let stream = other_stream.map_or(stream, |s| format!("s{s}"));
                        let expected = ExpectedRevision::NoStream;
                        let want = model.append(&stream, expected, &ids);
                        let known = look_up(&ids, Some(&first));
                        let events = ids.into_iter().map(new_event).collect();
                        Some((stream, WriteOp::Append { expected, events }, want, known))
                    }
                    Op::MixOldAndNew { earlier } if !sent.is_empty() => {
                        let k = earlier % sent.len();
                        let (stream, ids, first) = sent[k].clone();
                        sent[k].2 = KnownIds::look_up(&store, ids.iter().copied()).expect("look up");
                        let ids = vec![ids[0], next_id()];
                        let expected = ExpectedRevision::Any;
                        let want = model.append(&stream, expected, &ids);
                        let known = look_up(&ids, Some(&first));
                        let events = ids.into_iter().map(new_event).collect();
                        Some((stream, WriteOp::Append { expected, events }, want, known))
                    }
                    Op::Delete { stream, hard, expected, exact } => {
                        let stream = format!("s{stream}");
                        let expected = expectation(*expected, *exact);
                        let want = model.delete(&stream, expected, *hard);
                        Some((stream, WriteOp::Delete { expected, hard: *hard }, want, None))
                    }
                    Op::SetMaxCount { stream, max_count } => {
                        let stream = format!("s{stream}");
                        let want = model.set_max_count(&stream, *max_count);
                        let metadata = StreamMetadata { max_count: *max_count, ..StreamMetadata::default() };
                        let op = WriteOp::SetMetadata { metadata, expected: ExpectedRevision::Any };
                        Some((stream, op, want, None))
                    }
                    Op::Remove { stream } => {
                        let stream = format!("s{stream}");
                        let listed = model.stored_of(&stream);
                        if listed.is_empty() {
                            None
                        } else {
                        let want = model.remove(&stream, &listed);
                        let events = listed.iter().map(|(position, _, revision, id)| HiddenEvent {
                            position: *position, revision: *revision, id: *id,
                            recorded_at_micros: 0, bytes: 1,
                        }).collect();
                        Some((stream, WriteOp::Remove { events, now_micros: now_micros() }, want, None))
                        }
                    }
                    Op::Restart if group.is_empty() => {
                        drop(writer);
                        writer = Writer::new(Arc::clone(&store), ignore as fn(CommitInfo), RUN).expect("writer");
                        stopped = false;
                        None
                    }
                    _ => None,
                };
                if let Some((stream, op, want, known_ids)) = request {
                    let (reply, answer) = oneshot::channel();
                    let stream = StreamName::parse(&stream).expect("valid");
                    group.push(WriteRequest { stream, op, origin: Origin::Client, reply, admission: Vec::new(), known_ids });
                    wants.push(want);
                    answers.push(answer);
                }
                if !group.is_empty() && (cuts[i % cuts.len()] || i + 1 == count) {
                    if fail_at == Some(groups) { failure_pending = true; }
                    writer.fail_next_write = failure_pending.then(|| if disk_full {
                        StorageError::NoSpace("injected: no space left on device".into())
                    } else {
                        StorageError::Engine("injected write failure".into())
                    });
                    let before = std::mem::replace(&mut group_start, model.clone());
                    settle_group(&mut model, before, &mut wants, &mut failure_pending, &mut stopped, disk_full);
                    group_start = model.clone();
                    writer.commit_group(std::mem::take(&mut group));
                    results.extend(std::mem::take(&mut wants).into_iter().zip(answers.drain(..)));
                    groups += 1;
                }
            }
            for (index, (want, mut answer)) in results.into_iter().enumerate() {
                let got = answer_of(answer.try_recv().expect("every request is answered"));
                prop_assert_eq!(got, want, "request {}", index);
            }
            // What is stored, raw (visible or not), is the model's log.
            let mut stored = Vec::new();
            let mut it = store.db.raw_iterator_cf(store.cf(keys::CF_EVENTS));
            it.seek_to_first();
            while let Some((key, value)) = it.item() {
                let position = keys::decode_position(key).expect("8-byte key");
                let e = codec::decode_event(position, value).expect("record");
                stored.push((position, e.stream.to_string(), e.revision, e.id));
                it.next();
            }
            prop_assert_eq!(stored, model.log.values().cloned().collect::<Vec<_>>());
            // The stream index's runs cover exactly the stored events, each
            // revision at its position, and no two runs of a stream overlap.
            let mut indexed = Vec::new();
            let mut it = store.db.raw_iterator_cf(store.cf(keys::CF_STREAM_INDEX));
            it.seek_to_first();
            while let Some((key, value)) = it.item() {
                let (stream, first) = keys::decode_stream_index_key(key).expect("index key");
                let (position, count) = keys::decode_stream_index_value(value).expect("index value");
                for i in 0..count {
                    indexed.push((stream.to_owned(), first + i, position + i));
                }
                it.next();
            }
            drop(it);
            let mut want_indexed: Vec<_> = model.log.values().map(|(p, s, r, _)| (s.clone(), *r, *p)).collect();
            want_indexed.sort();
            prop_assert_eq!(indexed, want_indexed);
            // The id index holds exactly the stored ids, at their positions,
            // once the writer has handed everything over.
            writer.ids.finish(writer.next_position);
            let mut indexed = Vec::new();
            let mut it = store.db.raw_iterator_cf(store.cf(keys::CF_EVENT_IDS));
            it.seek_to_first();
            while let Some((key, value)) = it.item() {
                let id = Uuid::from_slice(key).expect("16-byte key");
                indexed.push((id, keys::decode_position(value).expect("8-byte value")));
                it.next();
            }
            drop(it);
            let mut want_indexed: Vec<_> = model.log.values().map(|(p, _, _, id)| (*id, *p)).collect();
            want_indexed.sort_unstable();
            prop_assert_eq!(indexed, want_indexed);
            prop_assert_eq!(store.ids_indexed_before().expect("mark"), model.next_position);
            prop_assert_eq!(store.next_position().expect("next"), model.next_position);
            prop_assert_eq!(store.removed_events().expect("removed"), model.removed);
            // Reads show exactly what the model says is visible.
            let all = store
                .read_all(None, Direction::Forward, 4096, &AllFilter::default(), usize::MAX)
                .expect("read all");
            let visible: Vec<_> = all.events.iter().map(|e| (e.position, e.stream.to_string(), e.revision, e.id)).collect();
            let want_visible: Vec<_> = model.log.values()
                .filter(|(_, s, r, _)| model.streams[s].visible(*r))
                .cloned().collect();
            prop_assert_eq!(visible, want_visible);
            for (stream, m) in &model.streams {
                let name = StreamName::parse(stream).expect("valid");
                let state = store.stream_state(&name).expect("state").unwrap_or_default();
                prop_assert_eq!(
                    (state.last_revision, state.deleted_before, state.tombstoned, state.metadata.max_count),
                    (m.last, m.deleted_before, m.tombstoned, m.max_count),
                    "stream {}", stream
                );
            }
        }
    }
}
