//! The single writer: one OS thread owns every write to the store.
//!
//! It takes every pending request from its queue (group commit), checks each
//! one in order (idempotency and expected revision for appends, the same for
//! deletes) against the store plus the earlier requests of the same group,
//! assigns revisions and gap-free global positions, writes the whole group as
//! one synced `WriteBatch`, and only then answers each request. A rejected
//! request adds nothing to the batch, so it never affects its neighbours. No
//! lock is needed: no other thread writes. Deletes, metadata changes and
//! scavenge removals go through the same queue, so they are ordered with appends.

use std::collections::HashMap;
use std::sync::Arc;

use rocksdb::{WriteBatch, WriteOptions};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::stream_state::{self, StreamMetadata, StreamState};
use super::{codec, keys, now_micros, StorageError, Store};
use crate::model::{
    display_revision, AppendOutcome, ExpectedRevision, NewEvent, RecordedEvent, StreamName,
};

/// Most requests committed in one group.
const MAX_GROUP_REQUESTS: usize = 4096;
/// Most payload bytes committed in one group (a single larger request still goes alone).
const MAX_GROUP_BYTES: usize = 32 << 20;

/// Why a write was refused.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
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
}

/// What a request asks the writer to do.
#[derive(Debug)]
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
    SetMetadata(StreamMetadata),
    /// Removes these hidden events (scavenging); each is re-checked against the
    /// stream's current state first, so a change of limits since the scan can
    /// never make the scavenger remove a visible event.
    Remove {
        events: Vec<HiddenEvent>,
        now_micros: u64,
    },
}

/// An event the scavenger found hidden.
#[derive(Debug, Clone)]
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
}

/// One request waiting for the writer.
pub struct WriteRequest {
    pub stream: StreamName,
    pub op: WriteOp,
    pub reply: oneshot::Sender<Result<WriteOutcome, AppendError>>,
}

impl WriteRequest {
    fn payload_bytes(&self) -> usize {
        match &self.op {
            WriteOp::Append { events, .. } => events
                .iter()
                .map(|e| {
                    e.data.len() + e.metadata.as_ref().map_or(0, String::len) + e.event_type.len()
                })
                .sum(),
            _ => 64,
        }
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
}

/// Where the writer's requests go: cloneable, cheap.
#[derive(Clone)]
pub struct WriterHandle {
    queue: mpsc::UnboundedSender<WriteRequest>,
}

impl WriterHandle {
    /// Queues `request`; its reply arrives on the request's channel. Returns the
    /// request back when the writer has exited.
    pub fn submit(&self, request: WriteRequest) -> Result<(), WriteRequest> {
        self.queue.send(request).map_err(|e| e.0)
    }
}

/// Starts the writer thread. `on_commit` runs on the writer thread after each
/// durable group, before the group's requests are answered. The thread exits when
/// every `WriterHandle` is dropped and the queue is drained; join it to know that
/// every acknowledged write is on disk.
pub fn spawn(
    store: Arc<Store>,
    on_commit: impl FnMut(CommitInfo) + Send + 'static,
) -> Result<(WriterHandle, std::thread::JoinHandle<()>), StorageError> {
    let next_position = store.next_position()?;
    let removed_events = store.removed_events()?;
    let (queue, receiver) = mpsc::unbounded_channel();
    let writer = Writer {
        store,
        next_position,
        removed_events,
        on_commit,
        failed: false,
    };
    let thread = std::thread::Builder::new()
        .name("skald-writer".into())
        .spawn(move || writer.run(receiver))
        .map_err(|e| StorageError::Engine(format!("cannot start the writer thread: {e}")))?;
    Ok((WriterHandle { queue }, thread))
}

struct Writer<F> {
    store: Arc<Store>,
    next_position: u64,
    /// Events removed by scavenging, ever (kept in `meta`).
    removed_events: u64,
    on_commit: F,
    /// Set after a failed write: the engine's state is then unknown, so the writer
    /// refuses further writes instead of guessing (fail-stop).
    failed: bool,
}

/// What an earlier request of the same group wrote for an event id.
#[derive(Clone)]
struct PendingId {
    stream: StreamName,
    revision: u64,
    position: u64,
}

/// The effects of the group so far, seen by the requests after them.
#[derive(Default)]
struct GroupOverlay {
    states: HashMap<StreamName, StreamState>,
    ids: HashMap<Uuid, PendingId>,
    removed_events: u64,
}

/// The group's batch and counters.
struct GroupBatch {
    batch: WriteBatch,
    next_position: u64,
    now_micros: u64,
    events: usize,
    bytes: u64,
}

type Reply = oneshot::Sender<Result<WriteOutcome, AppendError>>;

impl<F: FnMut(CommitInfo)> Writer<F> {
    fn run(mut self, mut receiver: mpsc::UnboundedReceiver<WriteRequest>) {
        while let Some(first) = receiver.blocking_recv() {
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
            self.commit_group(group);
        }
        tracing::debug!("writer queue closed; writer exiting");
    }

    fn commit_group(&mut self, group: Vec<WriteRequest>) {
        if self.failed {
            for request in group {
                let _ = request.reply.send(Err(AppendError::WriterStopped));
            }
            return;
        }
        let mut overlay = GroupOverlay {
            removed_events: self.removed_events,
            ..GroupOverlay::default()
        };
        let mut out = GroupBatch {
            batch: WriteBatch::default(),
            next_position: self.next_position,
            now_micros: now_micros(),
            events: 0,
            bytes: 0,
        };
        let mut answered: Vec<(Reply, Result<WriteOutcome, AppendError>)> = Vec::new();
        let mut written: Vec<(Reply, WriteOutcome)> = Vec::new();
        let requests = group.len();
        let mut touched = Vec::new();
        for request in group {
            match self.prepare(&request, &mut overlay, &mut out) {
                Ok(outcome) if writes(&outcome) => {
                    touched.push(request.stream);
                    written.push((request.reply, outcome));
                }
                other => answered.push((request.reply, other)),
            }
        }
        if !written.is_empty() {
            let meta = self.store.cf(keys::CF_META);
            out.batch.put_cf(
                meta,
                keys::META_NEXT_POSITION,
                keys::position_key(out.next_position),
            );
            out.batch.put_cf(
                meta,
                keys::META_REMOVED_EVENTS,
                overlay.removed_events.to_be_bytes(),
            );
            let mut opts = WriteOptions::default();
            opts.set_sync(true);
            let started = std::time::Instant::now();
            match self.store.db.write_opt(out.batch, &opts) {
                Ok(()) => {
                    self.next_position = out.next_position;
                    self.removed_events = overlay.removed_events;
                    (self.on_commit)(CommitInfo {
                        last_position: out.next_position.checked_sub(1),
                        requests,
                        events: out.events,
                        bytes: out.bytes,
                        write_duration: started.elapsed(),
                        streams: touched,
                    });
                    for (reply, outcome) in written {
                        let _ = reply.send(Ok(outcome));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "group commit failed; writer stops accepting writes");
                    self.failed = true;
                    let message = e.into_string();
                    for (reply, _) in written {
                        let err = StorageError::Engine(message.clone());
                        let _ = reply.send(Err(AppendError::Storage(err)));
                    }
                    // A replay may have matched ids of this failed group: acknowledge none.
                    for (_, result) in &mut answered {
                        if result.is_ok() {
                            *result =
                                Err(AppendError::Storage(StorageError::Engine(message.clone())));
                        }
                    }
                }
            }
        }
        for (reply, result) in answered {
            let _ = reply.send(result);
        }
    }

    /// The stream's state as of this point of the group.
    fn state(
        &self,
        stream: &StreamName,
        overlay: &GroupOverlay,
    ) -> Result<Option<StreamState>, AppendError> {
        match overlay.states.get(stream) {
            Some(state) => Ok(Some(state.clone())),
            None => Ok(self.store.stream_state(stream)?),
        }
    }

    fn put_state(
        &self,
        stream: &StreamName,
        state: StreamState,
        overlay: &mut GroupOverlay,
        out: &mut GroupBatch,
    ) {
        out.batch.put_cf(
            self.store.cf(keys::CF_STREAMS),
            stream.as_str(),
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
    ) -> Result<WriteOutcome, AppendError> {
        let stream = &request.stream;
        let state = self.state(stream, overlay)?;
        // A tombstone refuses everything but the scavenger's removals.
        let removing = matches!(request.op, WriteOp::Remove { .. });
        if !removing && state.as_ref().is_some_and(|s| s.tombstoned) {
            return Err(AppendError::StreamDeleted(stream.clone()));
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
                    return Err(AppendError::WrongExpectedRevision {
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
                    return Err(AppendError::StreamNotFound(stream.clone()));
                }
                if !expected.admits(actual) {
                    return Err(AppendError::WrongExpectedRevision {
                        expected: *expected,
                        actual,
                    });
                }
                state.deleted_before = state.next_revision();
                state.tombstoned = *hard;
                self.put_state(stream, state, overlay, out);
                Ok(WriteOutcome::Deleted)
            }
            WriteOp::SetMetadata(metadata) => {
                state.metadata = metadata.clone();
                self.put_state(stream, state.clone(), overlay, out);
                Ok(WriteOutcome::MetadataSet(state))
            }
            WriteOp::Remove { events, now_micros } => {
                let (mut removed, mut bytes) = (0, 0);
                for hidden in events {
                    if state.is_visible(hidden.revision, hidden.recorded_at_micros, *now_micros) {
                        continue; // the limits changed since the scan
                    }
                    out.batch.delete_cf(
                        self.store.cf(keys::CF_EVENTS),
                        keys::position_key(hidden.position),
                    );
                    out.batch.delete_cf(
                        self.store.cf(keys::CF_STREAM_INDEX),
                        keys::stream_index_key(stream.as_str(), hidden.revision),
                    );
                    out.batch
                        .delete_cf(self.store.cf(keys::CF_EVENT_IDS), hidden.id.as_bytes());
                    removed += 1;
                    bytes += hidden.bytes;
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
        let (events_cf, index_cf, ids_cf) = (
            store.cf(keys::CF_EVENTS),
            store.cf(keys::CF_STREAM_INDEX),
            store.cf(keys::CF_EVENT_IDS),
        );
        for (offset, event) in (0u64..).zip(events) {
            let position = first_position + offset;
            let revision = first_revision + offset;
            let record = codec::encode_event(&RecordedEvent {
                position,
                stream: stream.clone(),
                revision,
                id: event.id,
                event_type: event.event_type.clone(),
                data: event.data.clone(),
                metadata: event.metadata.clone(),
                recorded_at_micros: out.now_micros,
            });
            state.bytes += record.len() as u64;
            out.bytes += record.len() as u64;
            out.batch
                .put_cf(events_cf, keys::position_key(position), record);
            out.batch.put_cf(
                index_cf,
                keys::stream_index_key(stream.as_str(), revision),
                keys::position_key(position),
            );
            out.batch
                .put_cf(ids_cf, event.id.as_bytes(), keys::position_key(position));
            overlay.ids.insert(
                event.id,
                PendingId {
                    stream: stream.clone(),
                    revision,
                    position,
                },
            );
        }
        let count = events.len() as u64;
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
    ) -> Result<Option<AppendOutcome>, AppendError> {
        let mut found = Vec::new();
        for event in events {
            if let Some(pending) = overlay.ids.get(&event.id) {
                found.push((event.id, pending.clone()));
            } else if let Some(position) = self.store.event_id_position(&event.id)? {
                let stored = self.store.read_position(position)?;
                found.push((
                    event.id,
                    PendingId {
                        stream: stored.stream,
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
                .all(|((_, f), i)| f.stream == *stream && f.revision == first.revision + i);
        if !is_replay {
            return Err(AppendError::DuplicateEventId {
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
    }
}

#[cfg(test)]
mod tests {
    //! The writer against a model of the concurrency rules: random requests, cut
    //! into random groups, must get the model's answers, and the store must hold
    //! exactly the model's log afterwards.

    use super::*;
    use crate::storage::{AllFilter, Direction};
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
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..3, 0u8..4, 0u64..4, 1usize..4)
                .prop_map(|(stream, expected, exact, count)| Op::New { stream, expected, exact, count }),
            1 => (any::<usize>(), proptest::option::of(0u8..3), any::<bool>())
                .prop_map(|(earlier, other_stream, reverse)| Op::Retry { earlier, other_stream, reverse }),
            1 => any::<usize>().prop_map(|earlier| Op::MixOldAndNew { earlier }),
        ]
    }

    #[derive(Debug, PartialEq)]
    enum Answer {
        Ok(AppendOutcome),
        Wrong { actual: Option<u64> },
        Duplicate,
    }

    #[derive(Default)]
    struct Model {
        streams: HashMap<String, u64>,
        ids: HashMap<Uuid, (String, u64, u64)>,
        log: Vec<(String, u64, Uuid)>,
    }

    impl Model {
        fn apply(&mut self, stream: &str, expected: ExpectedRevision, ids: &[Uuid]) -> Answer {
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
                return Answer::Ok(AppendOutcome {
                    first_revision: first.1,
                    last_revision: last.1,
                    first_position: first.2,
                    last_position: last.2,
                    idempotent_replay: true,
                });
            }
            let actual = self.streams.get(stream).copied();
            if !expected.admits(actual) {
                return Answer::Wrong { actual };
            }
            let first_revision = actual.map_or(0, |r| r + 1);
            let first_position = self.log.len() as u64;
            for (i, id) in (0u64..).zip(ids) {
                self.ids.insert(
                    *id,
                    (stream.to_owned(), first_revision + i, first_position + i),
                );
                self.log.push((stream.to_owned(), first_revision + i, *id));
            }
            let n = ids.len() as u64;
            self.streams
                .insert(stream.to_owned(), first_revision + n - 1);
            Answer::Ok(AppendOutcome {
                first_revision,
                last_revision: first_revision + n - 1,
                first_position,
                last_position: first_position + n - 1,
                idempotent_replay: false,
            })
        }
    }

    fn new_event(id: Uuid) -> NewEvent {
        NewEvent {
            id,
            event_type: "T".into(),
            data: "{}".into(),
            metadata: None,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn the_writer_follows_the_concurrency_rules(
            ops in proptest::collection::vec(arb_op(), 1..40),
            cuts in proptest::collection::vec(any::<bool>(), 40),
        ) {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = Arc::new(Store::open(dir.path()).expect("open"));
            let mut writer =
                Writer { store: Arc::clone(&store), next_position: 0, removed_events: 0, on_commit: |_| {}, failed: false };
            let mut model = Model::default();
            let mut sent: Vec<(String, Vec<Uuid>)> = Vec::new();
            let mut fresh = 0u128;
            let mut next_id = || { fresh += 1; Uuid::from_u128(fresh) };
            let mut group = Vec::new();
            let mut pending = Vec::new();
            for (i, op) in ops.iter().enumerate() {
                let (stream, expected, ids) = match op {
                    Op::New { stream, expected, exact, count } => {
                        let expected = match expected {
                            0 => ExpectedRevision::Any,
                            1 => ExpectedRevision::NoStream,
                            2 => ExpectedRevision::StreamExists,
                            _ => ExpectedRevision::Exact(*exact),
                        };
                        (format!("s{stream}"), expected, (0..*count).map(|_| next_id()).collect::<Vec<_>>())
                    }
                    Op::Retry { earlier, other_stream, reverse } if !sent.is_empty() => {
                        let (stream, mut ids) = sent[earlier % sent.len()].clone();
                        if *reverse { ids.reverse(); }
                        let stream = other_stream.map_or(stream, |s| format!("s{s}"));
                        (stream, ExpectedRevision::NoStream, ids)
                    }
                    Op::MixOldAndNew { earlier } if !sent.is_empty() => {
                        let (stream, ids) = sent[earlier % sent.len()].clone();
                        (stream, ExpectedRevision::Any, vec![ids[0], next_id()])
                    }
                    _ => continue,
                };
                let want = model.apply(&stream, expected, &ids);
                sent.push((stream.clone(), ids.clone()));
                let (reply, answer) = oneshot::channel();
                let events = ids.into_iter().map(new_event).collect();
                let stream = StreamName::parse(&stream).expect("valid");
                group.push(WriteRequest { stream, op: WriteOp::Append { expected, events }, reply });
                pending.push((want, answer));
                if cuts[i % cuts.len()] {
                    writer.commit_group(std::mem::take(&mut group));
                }
            }
            writer.commit_group(group);
            for (want, mut answer) in pending {
                let got = match answer.try_recv().expect("every request is answered") {
                    Ok(WriteOutcome::Appended(outcome)) => Answer::Ok(outcome),
                    Ok(other) => panic!("unexpected outcome {other:?}"),
                    Err(AppendError::WrongExpectedRevision { actual, .. }) => Answer::Wrong { actual },
                    Err(AppendError::DuplicateEventId { .. }) => Answer::Duplicate,
                    Err(other) => panic!("unexpected error {other}"),
                };
                prop_assert_eq!(got, want);
            }
            let all = store
                .read_all(None, Direction::Forward, 4096, &AllFilter::default(), usize::MAX)
                .expect("read all");
            let stored: Vec<_> = all.events.iter().map(|e| (e.stream.to_string(), e.revision, e.id)).collect();
            prop_assert_eq!(stored, model.log.clone());
            prop_assert_eq!(store.next_position().expect("next"), model.log.len() as u64);
            for (stream, last) in &model.streams {
                let name = StreamName::parse(stream).expect("valid");
                let state = store.stream_state(&name).expect("state").expect("exists");
                prop_assert_eq!(state.last_revision, Some(*last));
            }
        }
    }
}
