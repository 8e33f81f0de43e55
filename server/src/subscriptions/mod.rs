//! Catch-up subscriptions: a cursor over the store plus the commit notification.
//!
//! A subscription is pulled, not pushed into a buffer: it reads the next batch
//! from storage only when the consumer (the HTTP body, i.e. TCP backpressure) has
//! taken every message of the previous one, and waits on the commit notification
//! when it has reached the head. A slow consumer therefore never loses events,
//! never makes the server buffer more than one batch, and is never dropped.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::metrics::GaugeGuard;
use crate::model::{AllFilter, Direction, StreamRead};
use crate::model::{RecordedEvent, StreamName};
use crate::service::StorageError;
use crate::service::{AllQuery, Commit, Service, StreamQuery};

/// Events read from storage per batch: the most a subscription holds in memory.
pub const BATCH_EVENTS: usize = 256;
/// How long filtered-out events may pass without a checkpoint.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(3);

/// What a subscription follows.
#[derive(Debug, Clone)]
pub enum Target {
    /// `$all`, in position order, through a filter.
    All(AllFilter),
    /// One stream, in revision order.
    Stream(StreamName),
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The first position (or revision) to deliver, inclusive.
    At(u64),
    /// Only events committed after the subscription starts.
    End,
}

/// Settings of one subscription.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: Target,
    pub start: Start,
    /// A checkpoint at least every this many positions examined (`$all` only).
    pub checkpoint_every: u64,
    /// A heartbeat after this long without any message.
    pub heartbeat: Duration,
    /// A live subscriber this many events behind the head is no longer live.
    pub fell_behind_after: u64,
}

/// One message of a subscription. For `$all`, positions are global positions;
/// for a stream, they are revisions.
#[derive(Debug)]
pub enum Message {
    Event(RecordedEvent),
    /// Everything up to `position` (the head when the subscriber reached it; `None`
    /// when there was nothing) has been delivered; the subscriber is now live.
    CaughtUp {
        position: Option<u64>,
    },
    /// The subscriber is `position`-cursor behind the head by more than the threshold.
    FellBehind {
        position: u64,
    },
    /// Every event up to and including `position` has been examined.
    Checkpoint {
        position: u64,
    },
    Heartbeat,
    /// The last message: the server ended the subscription.
    Error {
        code: &'static str,
        message: String,
    },
}

/// Starts a subscription; the stream ends after an `Error` message.
pub fn subscribe(service: Arc<Service>, options: Options) -> impl Stream<Item = Message> + Send {
    let head = service.head_watch();
    let service_metrics = Arc::clone(service.metrics());
    // Counted among the server's tasks until the subscription's body is dropped.
    let service_task = service.track();
    let now = Instant::now();
    let cursor = match options.start {
        Start::At(at) => Some(at),
        Start::End => None,
    };
    let state = Subscription {
        service,
        options,
        head,
        cursor,
        buffer: VecDeque::new(),
        live: false,
        since_checkpoint: 0,
        last_examined: None,
        unreported_since: None,
        last_sent: now,
        done: false,
        existed: false,
        seen_seq: 0,
        _live: GaugeGuard::new(&service_metrics.subscriptions),
        _task: service_task,
    };
    futures::stream::unfold(state, |mut state| async move {
        let message = state.next().await?;
        Some((message, state))
    })
}

struct Subscription {
    _task: TaskTrackerToken,
    service: Arc<Service>,
    options: Options,
    head: watch::Receiver<Commit>,
    /// The commit sequence number seen before the last read.
    seen_seq: u64,
    /// Next position (or revision) to read; `None` until `Start::End` is resolved.
    cursor: Option<u64>,
    buffer: VecDeque<Message>,
    live: bool,
    /// Positions examined since the last checkpoint or delivered event.
    since_checkpoint: u64,
    last_examined: Option<u64>,
    /// When filtered-out events started passing without a checkpoint.
    unreported_since: Option<Instant>,
    last_sent: Instant,
    done: bool,
    /// The followed stream has existed during this subscription.
    existed: bool,
    /// Counts this subscription in the metrics while it lives.
    _live: GaugeGuard,
}

/// What one read found.
enum Progress {
    /// Read a batch; more may follow right away.
    Read,
    /// Nothing more is committed.
    AtHead { head: Option<u64> },
    /// The followed stream was deleted.
    Deleted,
}

impl Subscription {
    async fn next(&mut self) -> Option<Message> {
        loop {
            if let Some(message) = self.buffer.pop_front() {
                self.last_sent = Instant::now();
                return Some(message);
            }
            if self.done {
                return None;
            }
            if self.service.shutdown_token().is_cancelled() {
                return Some(self.end("shutting_down", "the server is shutting down"));
            }
            self.seen_seq = self.head.borrow_and_update().seq;
            match self.read_batch().await {
                Err(e) => {
                    // The engine's text may name files: it goes to the log only.
                    tracing::error!(error = %e, "a subscription's read failed");
                    let (code, message) = match e {
                        StorageError::CorruptEvent { position, .. } => (
                            "corrupt_event",
                            format!("the event at position {position} is corrupt"),
                        ),
                        _ => (
                            "storage_error",
                            "the storage engine failed; the details are in the server's log"
                                .to_owned(),
                        ),
                    };
                    return Some(self.end(code, &message));
                }
                Ok(Progress::Read) => {}
                Ok(Progress::Deleted) => {
                    return Some(self.end("stream_deleted", "the stream was deleted"));
                }
                Ok(Progress::AtHead { head }) => {
                    if !self.live {
                        self.live = true;
                        self.buffer.push_back(Message::CaughtUp { position: head });
                    }
                    if self.buffer.is_empty() {
                        self.wait().await;
                    }
                }
            }
        }
    }

    fn end(&mut self, code: &'static str, message: &str) -> Message {
        self.done = true;
        self.buffer.clear();
        Message::Error {
            code,
            message: message.to_owned(),
        }
    }

    /// Waits for a commit, a heartbeat or checkpoint deadline, or shutdown.
    async fn wait(&mut self) {
        let heartbeat_at = self.last_sent + self.options.heartbeat;
        let checkpoint_at = self
            .unreported_since
            .map(|since| since + CHECKPOINT_INTERVAL);
        let checkpoint = async {
            match checkpoint_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(checkpoint);
        loop {
            tokio::select! {
                changed = self.head.changed() => {
                    if changed.is_err() {
                        let last = self.end("shutting_down", "the writer has stopped");
                        self.buffer.push_back(last);
                    } else if self.unchanged_stream() {
                        continue;
                    }
                }
                () = tokio::time::sleep_until(heartbeat_at) => self.buffer.push_back(Message::Heartbeat),
                () = &mut checkpoint => self.push_checkpoint(),
                () = self.service.shutdown_token().cancelled() => {}
            }
            return;
        }
    }

    /// Whether a commit certainly left the followed stream alone: exactly one
    /// group committed since the last read, and it did not write this stream.
    /// Then a stream subscription skips the read (thousands of them need not
    /// each hit storage for every commit to other streams).
    fn unchanged_stream(&mut self) -> bool {
        let Target::Stream(stream) = &self.options.target else {
            return false;
        };
        let commit = self.head.borrow_and_update();
        if commit.seq == self.seen_seq + 1 && !commit.may_touch(stream) {
            self.seen_seq = commit.seq;
            return true;
        }
        false
    }

    fn push_checkpoint(&mut self) {
        if let Some(position) = self.last_examined {
            self.buffer.push_back(Message::Checkpoint { position });
        }
        self.since_checkpoint = 0;
        self.unreported_since = None;
    }

    async fn read_batch(&mut self) -> Result<Progress, StorageError> {
        match self.options.target.clone() {
            Target::All(filter) => self.read_all(filter).await,
            Target::Stream(stream) => self.read_stream(stream).await,
        }
    }

    async fn read_all(&mut self, filter: AllFilter) -> Result<Progress, StorageError> {
        let Some(from) = self.cursor else {
            // `from=end`: start past the current head.
            let head = self.head.borrow().last_position;
            self.cursor = Some(head.map_or(0, |h| h + 1));
            return Ok(Progress::AtHead { head });
        };
        let query = AllQuery {
            from: Some(from),
            direction: Direction::Forward,
            limit: BATCH_EVENTS,
            filter,
            wait: Duration::ZERO,
        };
        // Stop at the next checkpoint boundary, so checkpoints come at least every
        // `checkpoint_every` positions even through long filtered-out stretches.
        let until_checkpoint = self
            .options
            .checkpoint_every
            .saturating_sub(self.since_checkpoint)
            .max(1);
        let max_examined = usize::try_from(until_checkpoint).unwrap_or(usize::MAX);
        let slice = self.service.read_all_once(query, max_examined).await?;
        let next = slice.next_position.unwrap_or(from);
        let examined = next.saturating_sub(from);
        let delivered = slice.events.len() as u64;
        let last_delivered = slice.events.last().map(|e| e.position);
        for event in slice.events {
            self.buffer.push_back(Message::Event(event));
        }
        if examined > 0 {
            self.last_examined = Some(next - 1);
            self.cursor = Some(next);
            if last_delivered == Some(next - 1) {
                // The last examined event was delivered: the consumer knows its place.
                self.since_checkpoint = 0;
                self.unreported_since = None;
            } else {
                self.since_checkpoint += examined;
                if delivered < examined && self.unreported_since.is_none() {
                    self.unreported_since = Some(Instant::now());
                }
            }
            let interval_passed = self
                .unreported_since
                .is_some_and(|since| since.elapsed() >= CHECKPOINT_INTERVAL);
            if self.since_checkpoint >= self.options.checkpoint_every || interval_passed {
                self.push_checkpoint();
            }
        }
        let head = slice.head_position;
        let at_head = head.is_none_or(|h| next > h);
        if at_head {
            return Ok(Progress::AtHead { head });
        }
        let lag = head.map_or(0, |h| h + 1 - next);
        self.note_lag(lag, next);
        Ok(Progress::Read)
    }

    async fn read_stream(&mut self, stream: StreamName) -> Result<Progress, StorageError> {
        let from = match self.cursor {
            Some(from) => from,
            None => {
                let last = match self.service.last_revision(stream).await? {
                    StreamRead::Found(last) => last,
                    StreamRead::NotFound => None,
                    StreamRead::Tombstoned => return Ok(Progress::Deleted),
                };
                self.existed = last.is_some();
                self.cursor = Some(last.map_or(0, |r| r + 1));
                return Ok(Progress::AtHead { head: last });
            }
        };
        let query = StreamQuery {
            from: Some(from),
            direction: Direction::Forward,
            limit: BATCH_EVENTS,
            wait: Duration::ZERO,
        };
        let slice = match self.service.read_stream_once(stream, query).await? {
            StreamRead::Found(slice) => slice,
            StreamRead::Tombstoned => return Ok(Progress::Deleted),
            StreamRead::NotFound if self.existed => return Ok(Progress::Deleted),
            StreamRead::NotFound => return Ok(Progress::AtHead { head: None }),
        };
        self.existed = true;
        if let Some(last) = slice.events.last() {
            self.cursor = Some(last.revision + 1);
        }
        for event in slice.events {
            self.buffer.push_back(Message::Event(event));
        }
        match slice.next_revision {
            None => Ok(Progress::AtHead {
                head: Some(slice.last_revision),
            }),
            Some(next) => {
                self.cursor = Some(next);
                let lag = (slice.last_revision + 1).saturating_sub(next);
                self.note_lag(lag, next);
                Ok(Progress::Read)
            }
        }
    }

    fn note_lag(&mut self, lag: u64, cursor: u64) {
        if self.live && lag > self.options.fell_behind_after {
            self.live = false;
            self.buffer.push_back(Message::FellBehind {
                position: cursor.saturating_sub(1),
            });
        }
    }
}
