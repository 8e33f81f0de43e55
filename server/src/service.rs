//! The async facade over storage: the writer's handle, reads on the blocking pool,
//! the commit notification, and long-poll waits on it. HTTP handlers call this,
//! never `storage` directly, so nothing blocks the async runtime.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::model::{AppendOutcome, ExpectedRevision, NewEvent, RecordedEvent, StreamName};
use crate::storage::writer::{
    self, AppendError, CommitInfo, WriteOp, WriteOutcome, WriteRequest, WriterHandle,
};
use crate::storage::{
    AllFilter, AllSlice, Direction, StorageError, Store, StreamMetadata, StreamRead, StreamSlice,
    StreamState,
};

/// Most events one `$all` read examines, filtered-out ones included, before it
/// answers with what it found, so a narrow filter cannot pin a reader thread.
pub const MAX_EXAMINED_PER_READ: usize = 65_536;

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

/// The store, its writer and the commit notification, shared by every request.
pub struct Service {
    store: Arc<Store>,
    writer: WriterHandle,
    head: watch::Receiver<Option<u64>>,
    shutdown: CancellationToken,
}

impl Service {
    /// Starts the writer over `store`. Returns the service and the writer thread,
    /// which exits once every clone of the service is dropped.
    pub fn start(
        store: Arc<Store>,
        shutdown: CancellationToken,
    ) -> Result<(Arc<Self>, std::thread::JoinHandle<()>), StorageError> {
        let head_position = store.next_position()?.checked_sub(1);
        let (head_tx, head) = watch::channel(head_position);
        let on_commit = move |info: CommitInfo| {
            tracing::trace!(
                last_position = ?info.last_position,
                requests = info.requests,
                events = info.events,
                "group committed"
            );
            // Sent for every committed group, deletes and metadata changes too, so
            // waiting readers re-check what they may see.
            head_tx.send_replace(info.last_position);
        };
        let (writer, thread) = writer::spawn(Arc::clone(&store), on_commit)?;
        Ok((
            Arc::new(Self {
                store,
                writer,
                head,
                shutdown,
            }),
            thread,
        ))
    }

    /// A receiver of the commit notification: the last committed position.
    pub fn head_watch(&self) -> watch::Receiver<Option<u64>> {
        self.head.clone()
    }

    /// Cancelled when the server shuts down.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// The data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        self.store.path()
    }

    /// The last committed position, `None` for an empty store.
    pub fn head_position(&self) -> Option<u64> {
        *self.head.borrow()
    }

    /// Sends one request through the single writer and waits for its answer.
    pub async fn write(
        &self,
        stream: StreamName,
        op: WriteOp,
    ) -> Result<WriteOutcome, AppendError> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .submit(WriteRequest { stream, op, reply })
            .map_err(|_| AppendError::WriterStopped)?;
        answer.await.map_err(|_| AppendError::WriterStopped)?
    }

    /// Appends `events` to `stream` through the single writer.
    pub async fn append(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, AppendError> {
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
    ) -> Result<(), AppendError> {
        self.write(stream, WriteOp::Delete { expected, hard })
            .await
            .map(|_| ())
    }

    /// Replaces `stream`'s metadata; returns the stream's new state.
    pub async fn set_metadata(
        &self,
        stream: StreamName,
        metadata: StreamMetadata,
    ) -> Result<StreamState, AppendError> {
        match self.write(stream, WriteOp::SetMetadata(metadata)).await? {
            WriteOutcome::MetadataSet(state) => Ok(state),
            other => unreachable_outcome(&other),
        }
    }

    /// The state of `stream`, `None` when nothing was ever written for it.
    pub async fn stream_state(
        &self,
        stream: StreamName,
    ) -> Result<Option<StreamState>, StorageError> {
        self.blocking(move |store| store.stream_state(&stream))
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
        loop {
            head.borrow_and_update();
            let slice = self.read_stream_once(stream.clone(), query.clone()).await?;
            let found = match &slice {
                StreamRead::Found(s) => !s.events.is_empty(),
                StreamRead::Tombstoned => true,
                StreamRead::NotFound => false,
            };
            if found
                || query.direction == Direction::Backward
                || !self.wait_for_commit(&mut head, deadline).await
            {
                return Ok(slice);
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
    async fn wait_for_commit(
        &self,
        head: &mut watch::Receiver<Option<u64>>,
        deadline: Instant,
    ) -> bool {
        if Instant::now() >= deadline {
            return false;
        }
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
        let max_examined = max_examined.clamp(1, MAX_EXAMINED_PER_READ);
        self.blocking(move |store| {
            store.read_all(
                query.from,
                query.direction,
                query.limit,
                &query.filter,
                max_examined,
            )
        })
        .await
    }

    /// One stream read without waiting.
    pub async fn read_stream_once(
        &self,
        stream: StreamName,
        query: StreamQuery,
    ) -> Result<StreamRead<StreamSlice>, StorageError> {
        self.blocking(move |store| {
            store.read_stream(&stream, query.from, query.direction, query.limit)
        })
        .await
    }

    /// The last revision of `stream` as expected-revision checks see it.
    pub async fn last_revision(
        &self,
        stream: StreamName,
    ) -> Result<StreamRead<Option<u64>>, StorageError> {
        self.blocking(move |store| store.last_revision(&stream))
            .await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Store) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || read(&store))
            .await
            .map_err(|e| StorageError::Engine(format!("read task failed: {e}")))?
    }

    /// Flushes the store's memtables (shutdown).
    pub async fn flush(&self) -> Result<(), StorageError> {
        self.blocking(Store::flush).await
    }
}

/// How long a long-poll may wait at most.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

fn unreachable_outcome<T>(outcome: &WriteOutcome) -> Result<T, AppendError> {
    Err(AppendError::Storage(StorageError::Engine(format!(
        "the writer answered with {outcome:?}"
    ))))
}
