//! The single writer: one OS thread owns every write to the store.
//!
//! It takes every pending append from its queue (group commit), checks each
//! request's idempotency and expected revision in order, against the store plus
//! the earlier requests of the same group, assigns revisions and gap-free global
//! positions, writes the whole group as one synced `WriteBatch`, and only then
//! answers each request. A rejected request adds nothing to the batch, so it never
//! affects its neighbours. No lock is needed: no other thread writes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rocksdb::{WriteBatch, WriteOptions};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{codec, keys, StorageError, Store};
use crate::model::{
    display_revision, AppendOutcome, ExpectedRevision, NewEvent, RecordedEvent, StreamName,
};

/// Most requests committed in one group.
const MAX_GROUP_REQUESTS: usize = 4096;
/// Most payload bytes committed in one group (a single larger request still goes alone).
const MAX_GROUP_BYTES: usize = 32 << 20;

/// Why an append was refused.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("expected revision {expected}, but the stream's last revision is {}", display_revision(*actual))]
    WrongExpectedRevision {
        expected: ExpectedRevision,
        actual: Option<u64>,
    },
    #[error("event id {id} is already stored at position {position}")]
    DuplicateEventId { id: Uuid, position: u64 },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the writer has stopped after a storage failure; restart the server")]
    WriterStopped,
}

/// One append waiting for the writer.
pub struct AppendRequest {
    pub stream: StreamName,
    pub expected: ExpectedRevision,
    pub events: Vec<NewEvent>,
    pub reply: oneshot::Sender<Result<AppendOutcome, AppendError>>,
}

impl AppendRequest {
    fn payload_bytes(&self) -> usize {
        self.events
            .iter()
            .map(|e| e.data.len() + e.metadata.as_ref().map_or(0, String::len) + e.event_type.len())
            .sum()
    }
}

/// Sizes of one committed group, reported to the commit observer.
#[derive(Debug, Clone, Copy)]
pub struct CommitInfo {
    /// Position of the last event now committed.
    pub last_position: u64,
    pub requests: usize,
    pub events: usize,
}

/// Where the writer sends appends: cloneable, cheap.
#[derive(Clone)]
pub struct WriterHandle {
    queue: mpsc::UnboundedSender<AppendRequest>,
}

impl WriterHandle {
    /// Queues `request`; its reply arrives on the request's channel. Returns the
    /// request back when the writer has exited.
    pub fn submit(&self, request: AppendRequest) -> Result<(), AppendRequest> {
        self.queue.send(request).map_err(|e| e.0)
    }
}

/// Starts the writer thread. `on_commit` runs on the writer thread after each
/// durable group, before the group's requests are answered. The thread exits when
/// every `WriterHandle` is dropped and the queue is drained; join it to know that
/// every acknowledged append was written.
pub fn spawn(
    store: Arc<Store>,
    on_commit: impl FnMut(CommitInfo) + Send + 'static,
) -> Result<(WriterHandle, std::thread::JoinHandle<()>), StorageError> {
    let next_position = store.next_position()?;
    let (queue, receiver) = mpsc::unbounded_channel();
    let writer = Writer {
        store,
        next_position,
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
    on_commit: F,
    /// Set after a failed write: the engine's state is then unknown, so the writer
    /// refuses further appends instead of guessing (fail-stop).
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
    last_revisions: HashMap<StreamName, u64>,
    ids: HashMap<Uuid, PendingId>,
}

type Reply = oneshot::Sender<Result<AppendOutcome, AppendError>>;

impl<F: FnMut(CommitInfo)> Writer<F> {
    fn run(mut self, mut receiver: mpsc::UnboundedReceiver<AppendRequest>) {
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

    fn commit_group(&mut self, group: Vec<AppendRequest>) {
        if self.failed {
            for request in group {
                let _ = request.reply.send(Err(AppendError::WriterStopped));
            }
            return;
        }
        let recorded_at_micros = now_micros();
        let mut batch = WriteBatch::default();
        let mut overlay = GroupOverlay::default();
        let mut next_position = self.next_position;
        let mut answered: Vec<(Reply, Result<AppendOutcome, AppendError>)> = Vec::new();
        let mut written: Vec<(Reply, AppendOutcome)> = Vec::new();
        let (requests, mut events) = (group.len(), 0);
        for request in group {
            let result = self.prepare(
                &request,
                &mut overlay,
                &mut batch,
                &mut next_position,
                recorded_at_micros,
            );
            match result {
                Ok(outcome) if !outcome.idempotent_replay => {
                    events += request.events.len();
                    written.push((request.reply, outcome));
                }
                other => answered.push((request.reply, other)),
            }
        }
        if !written.is_empty() {
            batch.put_cf(
                self.store.cf(keys::CF_META),
                keys::META_NEXT_POSITION,
                keys::position_key(next_position),
            );
            let mut opts = WriteOptions::default();
            opts.set_sync(true);
            match self.store.db.write_opt(batch, &opts) {
                Ok(()) => {
                    self.next_position = next_position;
                    (self.on_commit)(CommitInfo {
                        last_position: next_position - 1,
                        requests,
                        events,
                    });
                    for (reply, outcome) in written {
                        let _ = reply.send(Ok(outcome));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "group commit failed; writer stops accepting appends");
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

    /// Checks one request and, when it is accepted and new, adds its writes to `batch`.
    fn prepare(
        &self,
        request: &AppendRequest,
        overlay: &mut GroupOverlay,
        batch: &mut WriteBatch,
        next_position: &mut u64,
        recorded_at_micros: u64,
    ) -> Result<AppendOutcome, AppendError> {
        let stream = &request.stream;
        if let Some(outcome) = self.check_ids(request, overlay)? {
            return Ok(outcome);
        }
        let actual = match overlay.last_revisions.get(stream) {
            Some(&revision) => Some(revision),
            None => self.store.last_revision(stream)?,
        };
        if !request.expected.admits(actual) {
            return Err(AppendError::WrongExpectedRevision {
                expected: request.expected,
                actual,
            });
        }
        let first_revision = actual.map_or(0, |r| r + 1);
        let first_position = *next_position;
        let store = &self.store;
        let (events_cf, index_cf, ids_cf) = (
            store.cf(keys::CF_EVENTS),
            store.cf(keys::CF_STREAM_INDEX),
            store.cf(keys::CF_EVENT_IDS),
        );
        for (offset, event) in (0u64..).zip(&request.events) {
            let position = first_position + offset;
            let revision = first_revision + offset;
            let record = RecordedEvent {
                position,
                stream: stream.clone(),
                revision,
                id: event.id,
                event_type: event.event_type.clone(),
                data: event.data.clone(),
                metadata: event.metadata.clone(),
                recorded_at_micros,
            };
            batch.put_cf(
                events_cf,
                keys::position_key(position),
                codec::encode_event(&record),
            );
            batch.put_cf(
                index_cf,
                keys::stream_index_key(stream.as_str(), revision),
                keys::position_key(position),
            );
            batch.put_cf(ids_cf, event.id.as_bytes(), keys::position_key(position));
            overlay.ids.insert(
                event.id,
                PendingId {
                    stream: stream.clone(),
                    revision,
                    position,
                },
            );
        }
        let count = request.events.len() as u64;
        let last_revision = first_revision + count - 1;
        batch.put_cf(
            store.cf(keys::CF_STREAMS),
            stream.as_str(),
            codec::encode_stream_state(&codec::StreamState { last_revision }),
        );
        overlay.last_revisions.insert(stream.clone(), last_revision);
        *next_position += count;
        Ok(AppendOutcome {
            first_revision,
            last_revision,
            first_position,
            last_position: first_position + count - 1,
            idempotent_replay: false,
        })
    }

    /// Looks every event id up. Returns the original outcome when the request
    /// repeats a stored append exactly (same stream, same order, consecutive
    /// revisions), `DuplicateEventId` when it reuses any stored id otherwise, and
    /// `None` when every id is new.
    fn check_ids(
        &self,
        request: &AppendRequest,
        overlay: &GroupOverlay,
    ) -> Result<Option<AppendOutcome>, AppendError> {
        let mut found = Vec::new();
        for event in &request.events {
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
        let is_replay = found.len() == request.events.len()
            && found
                .iter()
                .zip(0u64..)
                .all(|((_, f), i)| f.stream == request.stream && f.revision == first.revision + i);
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

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
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
            let mut writer = Writer { store: Arc::clone(&store), next_position: 0, on_commit: |_| {}, failed: false };
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
                group.push(AppendRequest { stream, expected, events, reply });
                pending.push((want, answer));
                if cuts[i % cuts.len()] {
                    writer.commit_group(std::mem::take(&mut group));
                }
            }
            writer.commit_group(group);
            for (want, mut answer) in pending {
                let got = match answer.try_recv().expect("every request is answered") {
                    Ok(outcome) => Answer::Ok(outcome),
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
                prop_assert_eq!(store.last_revision(&name).expect("state"), Some(*last));
            }
        }
    }
}
