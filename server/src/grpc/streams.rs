//! `event_store.client.streams.Streams`: Append, BatchAppend, Read (stream
//! and `$all`, forward and backward, with KurrentDB's stream-name and
//! event-type filters), Delete and Tombstone, each through the same service
//! (single writer, snapshot reads) as the HTTP API. Appends to and reads of a
//! `$$name` metadata stream set and show the stream's metadata (`metadata`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::auth::Access;
use super::convert::{self, any, expected_number, Target};
use super::metadata;
use super::pb::event_store::client::streams::{
    append_req, append_resp, batch_append_req, batch_append_resp, delete_req, delete_resp,
    read_req, read_resp, streams_server::Streams, tombstone_req, tombstone_resp, AppendReq,
    AppendResp, BatchAppendReq, BatchAppendResp, DeleteReq, DeleteResp, ReadReq, ReadResp,
    TombstoneReq, TombstoneResp,
};
use super::pb::event_store::client::{
    AllStreamPosition, BadRequest, MaximumAppendSizeExceeded, StreamDeleted, StreamIdentifier,
    Uuid, WrongExpectedVersion,
};
use super::pb::google::rpc::{Code as RpcCode, Status as RpcStatus};
use super::GrpcConfig;
use crate::auth::Role;
use crate::model::{
    AllFilter, AppendOutcome, Direction, ExpectedRevision, NewEvent, RecordedEvent, StreamMetadata,
    StreamName, StreamRead, StreamState, MAX_EVENTS_PER_APPEND,
};
use crate::service::{AllQuery, Service, StreamQuery};
use crate::storage::WriteError;

/// Events per page read from storage while answering a `Read`.
const READ_PAGE: usize = 500;
/// Answers buffered ahead of a slow reader, per call.
const READ_BUFFER: usize = 256;
/// Batches one `BatchAppend` call may have open (sent, not final) at once.
const MAX_OPEN_BATCHES: usize = 64;
/// The longest filter regular expression accepted, in bytes.
const MAX_REGEX_BYTES: usize = 4096;
/// Backtracking steps one filter match may take (fancy-regex's limit), so a
/// hostile pattern cannot spin a worker.
const REGEX_BACKTRACK_LIMIT: usize = 100_000;

pub struct StreamsService {
    service: Arc<Service>,
    config: GrpcConfig,
    /// One permit per open subscription (`--max-subscriptions`, counted
    /// apart from the HTTP API's).
    subscriptions: Arc<tokio::sync::Semaphore>,
}

impl StreamsService {
    pub fn new(service: Arc<Service>, config: GrpcConfig) -> Self {
        let subscriptions = Arc::new(tokio::sync::Semaphore::new(config.max_subscriptions));
        Self {
            service,
            config,
            subscriptions,
        }
    }
}

// ---- expected revisions ------------------------------------------------------

/// `expected_*`: one request kind's expected-revision oneof as Skald's
/// expectation (absent: any). The generated types differ per request; the
/// variants are the same.
macro_rules! expected_revision {
    ($name:ident, $oneof:path) => {
        fn $name(option: Option<$oneof>) -> ExpectedRevision {
            use $oneof as E;
            match option {
                Some(E::Revision(r)) => ExpectedRevision::Exact(r),
                Some(E::NoStream(_)) => ExpectedRevision::NoStream,
                Some(E::StreamExists(_)) => ExpectedRevision::StreamExists,
                Some(E::Any(_)) | None => ExpectedRevision::Any,
            }
        }
    };
}

expected_revision!(expected_append, append_req::options::ExpectedStreamRevision);
expected_revision!(expected_delete, delete_req::options::ExpectedStreamRevision);
expected_revision!(
    expected_tombstone,
    tombstone_req::options::ExpectedStreamRevision
);

fn expected_batch(
    option: Option<&batch_append_req::options::ExpectedStreamPosition>,
) -> ExpectedRevision {
    use batch_append_req::options::ExpectedStreamPosition as E;
    match option {
        Some(E::StreamPosition(r)) => ExpectedRevision::Exact(*r),
        Some(E::NoStream(_)) => ExpectedRevision::NoStream,
        Some(E::StreamExists(_)) => ExpectedRevision::StreamExists,
        Some(E::Any(_)) | None => ExpectedRevision::Any,
    }
}

// ---- appends -------------------------------------------------------------------

/// Collects proposed events, refusing an append past the size and count limits.
struct Collector<'a> {
    config: &'a GrpcConfig,
    events: Vec<NewEvent>,
    bytes: usize,
    ids: std::collections::HashSet<::uuid::Uuid>,
}

/// Why a batch of proposed events cannot be appended.
enum Refusal {
    TooLarge,
    Invalid(Status),
}

impl<'a> Collector<'a> {
    fn new(config: &'a GrpcConfig) -> Self {
        Self {
            config,
            events: Vec::new(),
            bytes: 0,
            ids: std::collections::HashSet::new(),
        }
    }

    fn push(
        &mut self,
        id: Option<&Uuid>,
        metadata: &HashMap<String, String>,
        custom_metadata: &[u8],
        data: &[u8],
    ) -> Result<(), Refusal> {
        self.bytes +=
            data.len() + custom_metadata.len() + metadata.values().map(String::len).sum::<usize>();
        if self.bytes > self.config.max_append_bytes {
            return Err(Refusal::TooLarge);
        }
        if self.events.len() == MAX_EVENTS_PER_APPEND {
            return Err(Refusal::Invalid(Status::invalid_argument(format!(
                "an append holds at most {MAX_EVENTS_PER_APPEND} events"
            ))));
        }
        let index = self.events.len();
        let event = convert::new_event(
            index,
            id,
            metadata,
            custom_metadata,
            data,
            self.config.max_event_bytes,
        )
        .map_err(Refusal::Invalid)?;
        if !self.ids.insert(event.id) {
            return Err(Refusal::Invalid(Status::invalid_argument(format!(
                "event id {} appears twice in this append",
                event.id
            ))));
        }
        self.events.push(event);
        Ok(())
    }
}

fn max_append_status(max: usize) -> Status {
    convert::status_with_trailers(
        tonic::Code::InvalidArgument,
        format!("Maximum Append Size of {max} Exceeded."),
        &[
            ("exception", "maximum-append-size-exceeded".to_owned()),
            ("maximum-append-size", max.to_string()),
        ],
    )
}

/// The position option of a delete's or a tombstone's answer: the two
/// messages differ only in their module's name.
macro_rules! deletion_position {
    ($module:ident, $position:expr) => {
        Some(match $position {
            Some(p) => $module::PositionOption::Position($module::Position {
                commit_position: p,
                prepare_position: p,
            }),
            None => $module::PositionOption::NoPosition(Default::default()),
        })
    };
}

/// A request message past the transport's limit (the append limit plus
/// 1 MiB) as the append-size refusal the clients know; any other status as
/// it is.
fn oversized(status: Status, max_append_bytes: usize) -> Status {
    let too_large = status.code() == tonic::Code::OutOfRange
        && status.message().contains("message length too large");
    if too_large {
        max_append_status(max_append_bytes)
    } else {
        status
    }
}

/// What an append came to.
enum Appended {
    Done(AppendOutcome),
    /// No events: the expectation held; the stream's last revision.
    Checked(Option<u64>),
    WrongExpected {
        expected: ExpectedRevision,
        actual: Option<u64>,
    },
}

impl StreamsService {
    async fn append_events(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<Appended, WriteError> {
        if events.is_empty() {
            // KurrentDB answers an empty append as a check of the expectation.
            let actual = match self.service.last_revision(stream.clone()).await? {
                StreamRead::Found(last) => last,
                StreamRead::NotFound => None,
                StreamRead::Tombstoned => return Err(WriteError::StreamDeleted(stream.clone())),
            };
            return Ok(if expected.admits(actual) {
                Appended::Checked(actual)
            } else {
                Appended::WrongExpected { expected, actual }
            });
        }
        match self.service.append(stream.clone(), expected, events).await {
            Ok(outcome) => Ok(Appended::Done(outcome)),
            Err(WriteError::WrongExpectedRevision { expected, actual }) => {
                Ok(Appended::WrongExpected { expected, actual })
            }
            Err(e) => Err(e),
        }
    }
}

impl StreamsService {
    /// Appending to a stream needs a writer, setting its metadata an admin,
    /// each within the caller's stream prefixes.
    fn check_write(&self, access: &Access, target: &Target) -> Result<(), Status> {
        let metrics = self.service.metrics();
        match target {
            Target::Stream(stream) => access.need_stream(Role::Writer, stream, metrics),
            Target::Metadata(stream) => access.need_stream(Role::Admin, stream, metrics),
        }
    }

    /// The metadata that an append to a `$$` stream sets: one `$metadata`
    /// event, whose JSON `metadata::from_json` maps.
    fn metadata_of(&self, events: Vec<NewEvent>) -> Result<StreamMetadata, Status> {
        let [event] = <[NewEvent; 1]>::try_from(events).map_err(|events| {
            Status::invalid_argument(format!(
                "an append to a metadata stream holds exactly one {} event, not {}",
                metadata::EVENT_TYPE,
                events.len()
            ))
        })?;
        if event.event_type != metadata::EVENT_TYPE {
            return Err(Status::invalid_argument(format!(
                "a metadata stream takes {} events, not {:?}",
                metadata::EVENT_TYPE,
                event.event_type
            )));
        }
        metadata::from_json(event.data.as_bytes(), self.config.max_custom_metadata_bytes)
    }

    /// Sets `stream`'s metadata, the expectation checked against the
    /// revision of its current version, as an append to `$$stream` would be.
    async fn set_metadata(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        metadata: StreamMetadata,
    ) -> Result<Appended, WriteError> {
        match self
            .service
            .set_metadata(stream.clone(), metadata, expected)
            .await
        {
            Ok(state) => {
                let version = state.metadata_version.unwrap_or_default();
                tracing::info!(stream = %stream, revision = version.revision, "stream metadata set over gRPC");
                Ok(Appended::Done(AppendOutcome {
                    first_revision: version.revision,
                    last_revision: version.revision,
                    first_position: version.position,
                    last_position: version.position,
                    idempotent_replay: false,
                }))
            }
            Err(WriteError::WrongExpectedRevision { expected, actual }) => {
                Ok(Appended::WrongExpected { expected, actual })
            }
            Err(e) => Err(e),
        }
    }
}

fn append_success(appended: &Appended) -> append_resp::Success {
    use append_resp::success::{CurrentRevisionOption, PositionOption};
    let (revision, position) = match appended {
        Appended::Done(o) => (Some(o.last_revision), Some(o.last_position)),
        Appended::Checked(actual) => (*actual, None),
        Appended::WrongExpected { .. } => (None, None),
    };
    append_resp::Success {
        current_revision_option: Some(match revision {
            Some(r) => CurrentRevisionOption::CurrentRevision(r),
            None => CurrentRevisionOption::NoStream(Default::default()),
        }),
        position_option: Some(match position {
            Some(p) => PositionOption::Position(append_resp::Position {
                commit_position: p,
                prepare_position: p,
            }),
            None => PositionOption::NoPosition(Default::default()),
        }),
    }
}

fn append_wrong_expected(
    expected: ExpectedRevision,
    actual: Option<u64>,
) -> append_resp::WrongExpectedVersion {
    use append_resp::wrong_expected_version::{
        CurrentRevisionOption as Cur, CurrentRevisionOption2060 as Cur2060,
        ExpectedRevisionOption as Exp, ExpectedRevisionOption2060 as Exp2060,
    };
    let empty = super::pb::event_store::client::Empty::default;
    append_resp::WrongExpectedVersion {
        current_revision_option_20_6_0: Some(match actual {
            Some(r) => Cur2060::CurrentRevision2060(r),
            None => Cur2060::NoStream2060(empty()),
        }),
        expected_revision_option_20_6_0: Some(match expected {
            ExpectedRevision::Exact(r) => Exp2060::ExpectedRevision2060(r),
            ExpectedRevision::StreamExists => Exp2060::StreamExists2060(empty()),
            ExpectedRevision::Any | ExpectedRevision::NoStream => Exp2060::Any2060(empty()),
        }),
        current_revision_option: Some(match actual {
            Some(r) => Cur::CurrentRevision(r),
            None => Cur::CurrentNoStream(empty()),
        }),
        expected_revision_option: Some(match expected {
            ExpectedRevision::Exact(r) => Exp::ExpectedRevision(r),
            ExpectedRevision::Any => Exp::ExpectedAny(empty()),
            ExpectedRevision::StreamExists => Exp::ExpectedStreamExists(empty()),
            ExpectedRevision::NoStream => Exp::ExpectedNoStream(empty()),
        }),
    }
}

/// A `BatchAppend` answer's error, with the detail the clients unpack.
fn batch_error(stream: &StreamName, error: BatchError) -> RpcStatus {
    let (code, message, details) = match error {
        BatchError::WrongExpected { expected, actual } => {
            use super::pb::event_store::client::wrong_expected_version::{
                CurrentStreamRevisionOption as Cur, ExpectedStreamPositionOption as Exp,
            };
            let detail = WrongExpectedVersion {
                current_stream_revision_option: Some(match actual {
                    Some(r) => Cur::CurrentStreamRevision(r),
                    None => Cur::CurrentNoStream(()),
                }),
                expected_stream_position_option: Some(match expected {
                    ExpectedRevision::Exact(r) => Exp::ExpectedStreamPosition(r),
                    ExpectedRevision::Any => Exp::ExpectedAny(()),
                    ExpectedRevision::StreamExists => Exp::ExpectedStreamExists(()),
                    ExpectedRevision::NoStream => Exp::ExpectedNoStream(()),
                }),
            };
            (
                RpcCode::FailedPrecondition,
                format!(
                    "WrongExpectedVersion. Stream: {stream}, Expected version: {}, Actual version: {}",
                    expected_number(expected),
                    convert::version_number(actual)
                ),
                any("event_store.client.WrongExpectedVersion", &detail),
            )
        }
        BatchError::Deleted => (
            RpcCode::FailedPrecondition,
            format!("Event stream '{stream}' is deleted."),
            any(
                "event_store.client.StreamDeleted",
                &StreamDeleted {
                    stream_identifier: Some(convert::stream_identifier(stream)),
                },
            ),
        ),
        BatchError::TooLarge(max) => (
            RpcCode::InvalidArgument,
            format!("Maximum Append Size of {max} Exceeded."),
            any(
                "event_store.client.MaximumAppendSizeExceeded",
                &MaximumAppendSizeExceeded {
                    max_append_size: u32::try_from(max).unwrap_or(u32::MAX),
                },
            ),
        ),
        BatchError::Other(status) => (
            RpcCode::try_from(status.code() as i32).unwrap_or(RpcCode::Unknown),
            status.message().to_owned(),
            any(
                "event_store.client.BadRequest",
                &BadRequest {
                    message: status.message().to_owned(),
                },
            ),
        ),
    };
    RpcStatus {
        code: code as i32,
        message,
        details: Some(details),
    }
}

enum BatchError {
    WrongExpected {
        expected: ExpectedRevision,
        actual: Option<u64>,
    },
    Deleted,
    TooLarge(usize),
    Other(Status),
}

/// One batch of a `BatchAppend` call, until its final chunk.
struct OpenBatch {
    options: batch_append_req::Options,
    target: Result<Target, Status>,
    events: Vec<NewEvent>,
    bytes: usize,
    refused: Option<BatchError>,
}

#[tonic::async_trait]
impl Streams for StreamsService {
    type ReadStream = ReceiverStream<Result<ReadResp, Status>>;
    type BatchAppendStream = ReceiverStream<Result<BatchAppendResp, Status>>;

    async fn append(
        &self,
        request: Request<Streaming<AppendReq>>,
    ) -> Result<Response<AppendResp>, Status> {
        let _in_progress = self.service.append_started();
        let access = Access::of(&request)?;
        let mut messages = request.into_inner();
        let max = self.config.max_append_bytes;
        let Some(first) = messages.message().await.map_err(|e| oversized(e, max))? else {
            return Err(Status::invalid_argument(
                "an append must start with its options",
            ));
        };
        let Some(append_req::Content::Options(options)) = first.content else {
            return Err(Status::invalid_argument(
                "an append must start with its options",
            ));
        };
        let target = convert::target(options.stream_identifier.as_ref())?;
        self.check_write(&access, &target)?;
        let expected = expected_append(options.expected_stream_revision);
        let mut collector = Collector::new(&self.config);
        while let Some(message) = messages.message().await.map_err(|e| oversized(e, max))? {
            let Some(append_req::Content::ProposedMessage(m)) = message.content else {
                return Err(Status::invalid_argument(
                    "only the first message carries options",
                ));
            };
            collector
                .push(m.id.as_ref(), &m.metadata, &m.custom_metadata, &m.data)
                .map_err(|refusal| match refusal {
                    Refusal::TooLarge => max_append_status(self.config.max_append_bytes),
                    Refusal::Invalid(status) => status,
                })?;
        }
        let appended = match &target {
            Target::Stream(stream) => self.append_events(stream, expected, collector.events).await,
            Target::Metadata(stream) => {
                let metadata = self.metadata_of(collector.events)?;
                self.set_metadata(stream, expected, metadata).await
            }
        };
        let appended = appended.map_err(|e| match &target {
            Target::Stream(stream) | Target::Metadata(stream) => convert::write_error(stream, e),
        })?;
        let result = match appended {
            Appended::WrongExpected { expected, actual } => {
                append_resp::Result::WrongExpectedVersion(append_wrong_expected(expected, actual))
            }
            done => append_resp::Result::Success(append_success(&done)),
        };
        Ok(Response::new(AppendResp {
            result: Some(result),
        }))
    }

    async fn batch_append(
        &self,
        request: Request<Streaming<BatchAppendReq>>,
    ) -> Result<Response<Self::BatchAppendStream>, Status> {
        let access = Access::of(&request)?;
        access.need(Role::Writer, self.service.metrics())?;
        let mut messages = request.into_inner();
        let (tx, rx) = mpsc::channel(MAX_OPEN_BATCHES);
        let this = StreamsService {
            service: Arc::clone(&self.service),
            config: self.config.clone(),
            subscriptions: Arc::clone(&self.subscriptions),
        };
        let shutdown = self.service.shutdown_token().clone();
        self.service.spawn(async move {
            let mut open: HashMap<::uuid::Uuid, OpenBatch> = HashMap::new();
            loop {
                let next = tokio::select! {
                    next = messages.message() => next,
                    () = shutdown.cancelled() => return,
                };
                let message = match next {
                    Ok(Some(m)) => m,
                    Ok(None) => return,
                    Err(status) => {
                        let status = oversized(status, this.config.max_append_bytes);
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                let correlation = match convert::event_id(message.correlation_id.as_ref()) {
                    Ok(id) => id,
                    Err(_) => {
                        let _ = tx
                            .send(Err(Status::invalid_argument("a batch needs a correlation id")))
                            .await;
                        return;
                    }
                };
                if !open.contains_key(&correlation) {
                    if open.len() == MAX_OPEN_BATCHES {
                        let _ = tx
                            .send(Err(Status::resource_exhausted(format!(
                                "at most {MAX_OPEN_BATCHES} batches may be open in one BatchAppend call"
                            ))))
                            .await;
                        return;
                    }
                    let Some(options) = message.options.clone() else {
                        let _ = tx
                            .send(Err(Status::invalid_argument(
                                "the first chunk of a batch must carry its options",
                            )))
                            .await;
                        return;
                    };
                    let target = convert::target(options.stream_identifier.as_ref());
                    // A batch the caller may not write ends the call, with
                    // the status the clients raise as access denied.
                    if let Some(Err(denied)) = target.as_ref().ok().map(|t| this.check_write(&access, t)) {
                        let _ = tx.send(Err(denied)).await;
                        return;
                    }
                    open.insert(
                        correlation,
                        OpenBatch {
                            options,
                            target,
                            events: Vec::new(),
                            bytes: 0,
                            refused: None,
                        },
                    );
                }
                let Some(batch) = open.get_mut(&correlation) else {
                    return;
                };
                if batch.refused.is_none() && batch.target.is_ok() {
                    let mut collector = Collector {
                        config: &this.config,
                        events: std::mem::take(&mut batch.events),
                        bytes: batch.bytes,
                        ids: Default::default(),
                    };
                    collector.ids.extend(collector.events.iter().map(|e| e.id));
                    for m in &message.proposed_messages {
                        if let Err(refusal) = collector.push(
                            m.id.as_ref(),
                            &m.metadata,
                            &m.custom_metadata,
                            &m.data,
                        ) {
                            batch.refused = Some(match refusal {
                                Refusal::TooLarge => {
                                    BatchError::TooLarge(this.config.max_append_bytes)
                                }
                                Refusal::Invalid(status) => BatchError::Other(status),
                            });
                            break;
                        }
                    }
                    batch.bytes = collector.bytes;
                    batch.events = collector.events;
                    if batch.refused.is_some() {
                        // Keep nothing of a refused batch but the refusal.
                        batch.events = Vec::new();
                    }
                }
                if !message.is_final {
                    continue;
                }
                let Some(batch) = open.remove(&correlation) else {
                    return;
                };
                let answer = this.finish_batch(correlation, batch).await;
                if tx.send(Ok(answer)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn read(&self, request: Request<ReadReq>) -> Result<Response<Self::ReadStream>, Status> {
        use read_req::options::{CountOption, StreamOption};
        let access = Access::of(&request)?;
        let metrics = self.service.metrics();
        access.need(Role::Reader, metrics)?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("a read needs options"))?;
        let count = match options.count_option {
            Some(CountOption::Count(n)) => n,
            Some(CountOption::Subscription(_)) => return self.subscribe(options, &access).await,
            None => u64::MAX,
        };
        let direction =
            if options.read_direction == read_req::options::ReadDirection::Backwards as i32 {
                Direction::Backward
            } else {
                Direction::Forward
            };
        let structured = matches!(
            options.uuid_option.and_then(|u| u.content),
            Some(read_req::options::uuid_option::Content::Structured(_))
        );
        let (tx, rx) = mpsc::channel(READ_BUFFER);
        let service = Arc::clone(&self.service);
        match options.stream_option {
            Some(StreamOption::Stream(s)) => {
                use read_req::options::stream_options::RevisionOption;
                let target = convert::target(s.stream_identifier.as_ref())?;
                let (Target::Stream(stream) | Target::Metadata(stream)) = &target;
                access.check_stream(stream, metrics)?;
                let from = match s.revision_option {
                    Some(RevisionOption::Revision(r)) => Some(r),
                    // Backward from the end: the last revision; forward: nothing.
                    Some(RevisionOption::End(_)) => {
                        Some(u64::MAX).filter(|_| direction == Direction::Forward)
                    }
                    Some(RevisionOption::Start(_)) | None => Some(0),
                };
                match target {
                    Target::Stream(stream) => service.spawn(read_stream(
                        service.clone(),
                        stream,
                        from,
                        direction,
                        count,
                        structured,
                        tx,
                    )),
                    Target::Metadata(stream) => service.spawn(read_metadata(
                        service.clone(),
                        stream,
                        from,
                        direction,
                        count,
                        structured,
                        tx,
                    )),
                };
            }
            Some(StreamOption::All(a)) => {
                use read_req::options::all_options::AllOption;
                let head = service.head_position();
                let from = match (a.all_option, direction) {
                    (Some(AllOption::Position(p)), _) => Some(p.commit_position),
                    (Some(AllOption::End(_)), Direction::Forward) => {
                        Some(head.map_or(0, |h| h + 1))
                    }
                    (Some(AllOption::End(_)), Direction::Backward) => None,
                    (_, Direction::Forward) => Some(0),
                    (_, Direction::Backward) => Some(0),
                };
                let filters = Filters {
                    kurrent: Filter::parse(options.filter_option)?,
                    store: AllFilter {
                        scope: access.scope(),
                        ..AllFilter::default()
                    },
                };
                service.spawn(read_all(
                    service.clone(),
                    from,
                    direction,
                    count,
                    filters,
                    structured,
                    tx,
                ));
            }
            None => return Err(Status::invalid_argument("a read names a stream or $all")),
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delete(&self, request: Request<DeleteReq>) -> Result<Response<DeleteResp>, Status> {
        let access = Access::of(&request)?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("a delete needs options"))?;
        let expected = expected_delete(options.expected_stream_revision);
        let id = options.stream_identifier.as_ref();
        let position = self.delete_stream(&access, id, expected, false).await?;
        Ok(Response::new(DeleteResp {
            position_option: deletion_position!(delete_resp, position),
        }))
    }

    async fn tombstone(
        &self,
        request: Request<TombstoneReq>,
    ) -> Result<Response<TombstoneResp>, Status> {
        let access = Access::of(&request)?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("a tombstone needs options"))?;
        let expected = expected_tombstone(options.expected_stream_revision);
        let id = options.stream_identifier.as_ref();
        let position = self.delete_stream(&access, id, expected, true).await?;
        Ok(Response::new(TombstoneResp {
            position_option: deletion_position!(tombstone_resp, position),
        }))
    }
}

impl StreamsService {
    /// Deletes (or tombstones) the stream `id` names, which takes an admin
    /// within its prefixes, through the writer; the head position afterwards
    /// (a delete takes no position of its own in Skald).
    async fn delete_stream(
        &self,
        access: &Access,
        id: Option<&StreamIdentifier>,
        expected: ExpectedRevision,
        hard: bool,
    ) -> Result<Option<u64>, Status> {
        let stream = &convert::stream_name(id)?;
        access.need_stream(Role::Admin, stream, self.service.metrics())?;
        match self.service.delete(stream.clone(), expected, hard).await {
            Ok(()) => Ok(self.service.head_position()),
            Err(WriteError::StreamNotFound(_)) => {
                Err(convert::wrong_expected_version(stream, expected, None))
            }
            Err(e) => Err(convert::write_error(stream, e)),
        }
    }

    async fn finish_batch(&self, correlation: ::uuid::Uuid, batch: OpenBatch) -> BatchAppendResp {
        use batch_append_resp::success::{CurrentRevisionOption, PositionOption};
        let expected = expected_batch(batch.options.expected_stream_position.as_ref());
        let echo = batch.options.expected_stream_position.as_ref().map(|e| {
            use batch_append_req::options::ExpectedStreamPosition as In;
            use batch_append_resp::ExpectedStreamPosition as Out;
            match e {
                In::StreamPosition(r) => Out::StreamPosition(*r),
                In::NoStream(()) => Out::NoStream(()),
                In::Any(()) => Out::Any(()),
                In::StreamExists(()) => Out::StreamExists(()),
            }
        });
        let mut answer = BatchAppendResp {
            correlation_id: Some(convert::pb_uuid(correlation, false)),
            stream_identifier: batch.options.stream_identifier.clone(),
            expected_stream_position: echo,
            result: None,
        };
        let target = match batch.target {
            Ok(target) => target,
            Err(status) => {
                answer.result = Some(batch_append_resp::Result::Error(RpcStatus {
                    code: RpcCode::InvalidArgument as i32,
                    message: status.message().to_owned(),
                    details: Some(any(
                        "event_store.client.BadRequest",
                        &BadRequest {
                            message: status.message().to_owned(),
                        },
                    )),
                }));
                return answer;
            }
        };
        let (Target::Stream(stream) | Target::Metadata(stream)) = &target;
        let write_error = |e| match e {
            WriteError::StreamDeleted(_) => BatchError::Deleted,
            e => BatchError::Other(convert::write_error(stream, e)),
        };
        let appended = match (batch.refused, &target) {
            (Some(refusal), _) => Err(refusal),
            (None, Target::Stream(_)) => self
                .append_events(stream, expected, batch.events)
                .await
                .map_err(write_error),
            (None, Target::Metadata(_)) => match self.metadata_of(batch.events) {
                Ok(metadata) => self
                    .set_metadata(stream, expected, metadata)
                    .await
                    .map_err(write_error),
                Err(status) => Err(BatchError::Other(status)),
            },
        };
        let outcome = match appended {
            Ok(Appended::WrongExpected { expected, actual }) => {
                Err(BatchError::WrongExpected { expected, actual })
            }
            other => other,
        };
        answer.result = Some(match outcome {
            Ok(appended) => {
                let (revision, position) = match appended {
                    Appended::Done(o) => (Some(o.last_revision), Some(o.last_position)),
                    Appended::Checked(actual) => (actual, None),
                    Appended::WrongExpected { .. } => (None, None),
                };
                batch_append_resp::Result::Success(batch_append_resp::Success {
                    current_revision_option: Some(match revision {
                        Some(r) => CurrentRevisionOption::CurrentRevision(r),
                        None => CurrentRevisionOption::NoStream(()),
                    }),
                    position_option: Some(match position {
                        Some(p) => PositionOption::Position(AllStreamPosition {
                            commit_position: p,
                            prepare_position: p,
                        }),
                        None => PositionOption::NoPosition(()),
                    }),
                })
            }
            Err(error) => batch_append_resp::Result::Error(batch_error(stream, error)),
        });
        answer
    }
}

// ---- reads -----------------------------------------------------------------------

fn event_resp(event: RecordedEvent, structured: bool) -> ReadResp {
    ReadResp {
        content: Some(read_resp::Content::Event(convert::read_event(
            event, structured,
        ))),
    }
}

/// Hands one answer to the call; `false` when the client is gone or the
/// server is shutting down (a reader that stopped reading holds no task
/// past shutdown).
async fn send(
    service: &Service,
    tx: &mpsc::Sender<Result<ReadResp, Status>>,
    item: Result<ReadResp, Status>,
) -> bool {
    tokio::select! {
        sent = tx.send(item) => sent.is_ok(),
        () = service.shutdown_token().cancelled() => false,
    }
}

/// What a `$all` read passes: the client's filter, and the store's (the
/// caller's stream prefixes, when its token is limited to some).
struct Filters {
    kurrent: Option<Filter>,
    store: AllFilter,
}

/// Streams one stream's events to `tx`, a page at a time, until `count`
/// events went out or the stream ends.
async fn read_stream(
    service: Arc<Service>,
    stream: StreamName,
    mut from: Option<u64>,
    direction: Direction,
    mut count: u64,
    structured: bool,
    tx: mpsc::Sender<Result<ReadResp, Status>>,
) {
    let mut first = true;
    while count > 0 {
        let query = StreamQuery {
            from,
            direction,
            limit: READ_PAGE.min(usize::try_from(count).unwrap_or(usize::MAX)),
            wait: Duration::ZERO,
        };
        let slice = match service.read_stream_once(stream.clone(), query).await {
            Ok(StreamRead::Found(slice)) => slice,
            Ok(StreamRead::NotFound) => {
                if first {
                    let _ = tx
                        .send(Ok(ReadResp {
                            content: Some(read_resp::Content::StreamNotFound(
                                read_resp::StreamNotFound {
                                    stream_identifier: Some(convert::stream_identifier(&stream)),
                                },
                            )),
                        }))
                        .await;
                }
                return;
            }
            Ok(StreamRead::Tombstoned) => {
                let _ = tx.send(Err(convert::stream_deleted(&stream))).await;
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "a gRPC stream read failed");
                let _ = tx
                    .send(Err(Status::internal(
                        "storage failure; see the server's log",
                    )))
                    .await;
                return;
            }
        };
        first = false;
        for event in slice.events {
            count -= 1;
            if !send(&service, &tx, Ok(event_resp(event, structured))).await {
                return;
            }
        }
        match slice.next_revision {
            Some(next) if Some(next) != from => from = Some(next),
            _ => return,
        }
    }
}

/// Reads `$$stream`: one event, the current metadata at its version's
/// revision, when that revision is in the range asked for; not found before
/// the first metadata change.
async fn read_metadata(
    service: Arc<Service>,
    stream: StreamName,
    from: Option<u64>,
    direction: Direction,
    count: u64,
    structured: bool,
    tx: mpsc::Sender<Result<ReadResp, Status>>,
) {
    let answer = match service.stream_state(stream.clone()).await {
        Ok(Some(state)) if state.tombstoned => Err(convert::stream_deleted(&stream)),
        Ok(Some(StreamState {
            metadata_version: Some(version),
            metadata,
            ..
        })) => {
            let in_range = from.is_none_or(|from| match direction {
                Direction::Forward => version.revision >= from,
                Direction::Backward => version.revision <= from,
            });
            if !in_range || count == 0 {
                return;
            }
            Ok(ReadResp {
                content: Some(read_resp::Content::Event(convert::metadata_event(
                    &stream, &metadata, &version, structured,
                ))),
            })
        }
        Ok(_) => Ok(ReadResp {
            content: Some(read_resp::Content::StreamNotFound(
                read_resp::StreamNotFound {
                    stream_identifier: Some(convert::metadata_identifier(&stream)),
                },
            )),
        }),
        Err(e) => {
            tracing::error!(error = %e, "a gRPC metadata read failed");
            Err(Status::internal("storage failure; see the server's log"))
        }
    };
    send(&service, &tx, answer).await;
}

/// KurrentDB's server-side filter: stream names or event types, matching any
/// of a list of prefixes or a regular expression (.NET syntax, lookarounds
/// included, run by fancy-regex).
struct Filter {
    on_stream: bool,
    prefixes: Vec<String>,
    regex: Option<fancy_regex::Regex>,
}

impl Filter {
    fn parse(option: Option<read_req::options::FilterOption>) -> Result<Option<Self>, Status> {
        use read_req::options::filter_options::Filter as Which;
        use read_req::options::FilterOption;
        let Some(FilterOption::Filter(filter)) = option else {
            return Ok(None);
        };
        let (on_stream, expression) = match filter.filter {
            Some(Which::StreamIdentifier(e)) => (true, e),
            Some(Which::EventType(e)) => (false, e),
            None => return Ok(None),
        };
        let regex = if expression.regex.is_empty() {
            None
        } else {
            if expression.regex.len() > MAX_REGEX_BYTES {
                return Err(Status::invalid_argument(format!(
                    "the filter's regular expression is longer than {MAX_REGEX_BYTES} bytes"
                )));
            }
            Some(
                fancy_regex::RegexBuilder::new(&expression.regex)
                    .backtrack_limit(REGEX_BACKTRACK_LIMIT)
                    .build()
                    .map_err(|e| {
                        Status::invalid_argument(format!("the filter's regular expression: {e}"))
                    })?,
            )
        };
        Ok(Some(Self {
            on_stream,
            prefixes: expression.prefix,
            regex,
        }))
    }

    fn matches(&self, event: &RecordedEvent) -> bool {
        let subject = if self.on_stream {
            event.stream.as_str()
        } else {
            event.event_type.as_str()
        };
        let by_prefix = self.prefixes.is_empty()
            || self
                .prefixes
                .iter()
                .any(|p| subject.starts_with(p.as_str()));
        // A match that exceeds the backtracking limit counts as no match.
        let by_regex = self
            .regex
            .as_ref()
            .is_none_or(|r| r.is_match(subject).unwrap_or(false));
        by_prefix && by_regex
    }
}

/// Streams `$all` to `tx`, a page at a time, until `count` matching events
/// went out or the log ends in that direction.
async fn read_all(
    service: Arc<Service>,
    mut from: Option<u64>,
    direction: Direction,
    mut count: u64,
    filters: Filters,
    structured: bool,
    tx: mpsc::Sender<Result<ReadResp, Status>>,
) {
    while count > 0 {
        let query = AllQuery {
            from,
            direction,
            limit: READ_PAGE,
            filter: filters.store.clone(),
            wait: Duration::ZERO,
        };
        let slice = match service.read_all_once(query, READ_PAGE).await {
            Ok(slice) => slice,
            Err(e) => {
                tracing::error!(error = %e, "a gRPC $all read failed");
                let _ = tx
                    .send(Err(Status::internal(
                        "storage failure; see the server's log",
                    )))
                    .await;
                return;
            }
        };
        for event in slice.events {
            if count == 0 {
                return;
            }
            if filters.kurrent.as_ref().is_some_and(|f| !f.matches(&event)) {
                continue;
            }
            count -= 1;
            if !send(&service, &tx, Ok(event_resp(event, structured))).await {
                return;
            }
        }
        let past_head = match (slice.next_position, slice.head_position) {
            (Some(next), Some(head)) => direction == Direction::Forward && next > head,
            (None, _) | (_, None) => true,
        };
        if past_head || slice.next_position == from {
            return;
        }
        from = slice.next_position;
    }
}

// ---- subscriptions -----------------------------------------------------------------

impl StreamsService {
    /// A catch-up subscription: the confirmation, then events from after the
    /// start (exclusive, as KurrentDB's), caught-up and fell-behind markers,
    /// and for a filtered `$all` a checkpoint every `window x multiplier`
    /// examined events; live until the client goes or the server stops.
    async fn subscribe(
        &self,
        options: read_req::Options,
        access: &Access,
    ) -> Result<Response<ReceiverStream<Result<ReadResp, Status>>>, Status> {
        use crate::subscriptions::{self as subs, Start, Target};
        use read_req::options::StreamOption;
        let slot = Arc::clone(&self.subscriptions)
            .try_acquire_owned()
            .map_err(|_| {
                Status::failed_precondition(format!(
                    "Maximum subscriptions reached: at most {} gRPC subscriptions (--max-subscriptions)",
                    self.config.max_subscriptions
                ))
            })?;
        let structured = matches!(
            options.uuid_option.and_then(|u| u.content),
            Some(read_req::options::uuid_option::Content::Structured(_))
        );
        let (target, start, filter, checkpoint_every, stream) = match options.stream_option {
            Some(StreamOption::Stream(s)) => {
                use read_req::options::stream_options::RevisionOption;
                let stream = convert::stream_name(s.stream_identifier.as_ref())?;
                access.check_stream(&stream, self.service.metrics())?;
                let start = match s.revision_option {
                    Some(RevisionOption::Revision(r)) => Start::At(r.saturating_add(1)),
                    // Resolved now, before the confirmation: whatever the
                    // client appends after it has seen that is delivered.
                    Some(RevisionOption::End(_)) => {
                        match self.service.last_revision(stream.clone()).await {
                            Ok(StreamRead::Found(Some(last))) => Start::At(last + 1),
                            Ok(_) => Start::At(0),
                            Err(e) => {
                                tracing::error!(error = %e, "a gRPC subscription could not start");
                                return Err(Status::internal(
                                    "storage failure; see the server's log",
                                ));
                            }
                        }
                    }
                    Some(RevisionOption::Start(_)) | None => Start::At(0),
                };
                (
                    Target::Stream(stream.clone()),
                    start,
                    None,
                    u64::MAX,
                    Some(stream),
                )
            }
            Some(StreamOption::All(a)) => {
                use read_req::options::all_options::AllOption;
                use read_req::options::filter_options::Window;
                use read_req::options::FilterOption;
                let start = match a.all_option {
                    Some(AllOption::Position(p)) => Start::At(p.commit_position.saturating_add(1)),
                    // Resolved now, before the confirmation (see above).
                    Some(AllOption::End(_)) => {
                        Start::At(self.service.head_position().map_or(0, |h| h + 1))
                    }
                    Some(AllOption::Start(_)) | None => Start::At(0),
                };
                let every = match &options.filter_option {
                    Some(FilterOption::Filter(f)) => {
                        let window = match f.window {
                            Some(Window::Max(max)) => u64::from(max.max(1)),
                            _ => 32,
                        };
                        window.saturating_mul(u64::from(f.checkpoint_interval_multiplier.max(1)))
                    }
                    _ => u64::MAX,
                };
                let filter = Filter::parse(options.filter_option)?;
                let scope = AllFilter {
                    scope: access.scope(),
                    ..AllFilter::default()
                };
                (Target::All(scope), start, filter, every, None)
            }
            None => {
                return Err(Status::invalid_argument(
                    "a subscription names a stream or $all",
                ))
            }
        };
        let subscription = subs::subscribe(
            Arc::clone(&self.service),
            subs::Options {
                target,
                start,
                // Skald's own checkpoints are not forwarded: KurrentDB's count
                // examined events against the client's window (below).
                checkpoint_every: 10_000_000,
                heartbeat: Duration::from_secs(60),
                fell_behind_after: 10_000,
            },
        );
        let (tx, rx) = mpsc::channel(READ_BUFFER);
        let service = Arc::clone(&self.service);
        self.service.spawn(async move {
            let _slot = slot;
            follow(
                service,
                subscription,
                stream,
                filter,
                checkpoint_every,
                structured,
                tx,
            )
            .await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn now_timestamp() -> prost_types::Timestamp {
    let micros = crate::storage::now_micros();
    prost_types::Timestamp {
        seconds: i64::try_from(micros / 1_000_000).unwrap_or(i64::MAX),
        nanos: i32::try_from((micros % 1_000_000) * 1000).unwrap_or(0),
    }
}

/// Turns Skald's subscription messages into KurrentDB's answers.
async fn follow(
    service: Arc<Service>,
    subscription: impl futures::Stream<Item = crate::subscriptions::Message> + Send,
    stream: Option<StreamName>,
    filter: Option<Filter>,
    checkpoint_every: u64,
    structured: bool,
    tx: mpsc::Sender<Result<ReadResp, Status>>,
) {
    use crate::subscriptions::Message;
    use futures::StreamExt;
    let confirmation = ReadResp {
        content: Some(read_resp::Content::Confirmation(
            read_resp::SubscriptionConfirmation {
                subscription_id: ::uuid::Uuid::now_v7().to_string(),
            },
        )),
    };
    if !send(&service, &tx, Ok(confirmation)).await {
        return;
    }
    let position = |p: u64| read_resp::Position {
        commit_position: p,
        prepare_position: p,
    };
    let mut examined: u64 = 0;
    let mut subscription = std::pin::pin!(subscription);
    // Where a subscription is: a stream revision, or a `$all` position.
    let place = |at: Option<u64>| match &stream {
        Some(_) => (at.and_then(|r| i64::try_from(r).ok()), None),
        None => (None, at.map(position)),
    };
    loop {
        // A client that went away frees its place at once, not at the next
        // event (a quiet subscription may wait long for one).
        let message = tokio::select! {
            message = subscription.next() => message,
            () = tx.closed() => return,
        };
        let Some(message) = message else {
            return;
        };
        let answer = match message {
            Message::Event(event) => {
                let at = event.position;
                examined += 1;
                if filter.as_ref().is_none_or(|f| f.matches(&event)) {
                    examined = 0;
                    Ok(event_resp(event, structured))
                } else if examined >= checkpoint_every {
                    examined = 0;
                    Ok(checkpoint_resp(at))
                } else {
                    continue;
                }
            }
            Message::CaughtUp { position: at } => {
                let (stream_revision, all_position) = place(at);
                Ok(ReadResp {
                    content: Some(read_resp::Content::CaughtUp(read_resp::CaughtUp {
                        timestamp: Some(now_timestamp()),
                        stream_revision,
                        position: all_position,
                    })),
                })
            }
            Message::FellBehind { position: at } => {
                let (stream_revision, all_position) = place(Some(at));
                Ok(ReadResp {
                    content: Some(read_resp::Content::FellBehind(read_resp::FellBehind {
                        timestamp: Some(now_timestamp()),
                        stream_revision,
                        position: all_position,
                    })),
                })
            }
            // Events outside a prefix-limited token's streams never reach
            // this loop: Skald's own checkpoints (every 3 s while such
            // events pass) keep a filtered subscription's checkpoints moving.
            Message::Checkpoint { position: at } if filter.is_some() => {
                examined = 0;
                Ok(checkpoint_resp(at))
            }
            Message::Checkpoint { .. } | Message::Heartbeat => continue,
            Message::Error { code, message } => {
                let status = match (code, &stream) {
                    ("stream_deleted", Some(stream)) => convert::stream_deleted(stream),
                    ("shutting_down", _) => Status::unavailable(message),
                    _ => Status::aborted(message),
                };
                let _ = send(&service, &tx, Err(status)).await;
                return;
            }
        };
        if !send(&service, &tx, answer).await {
            return;
        }
    }
}

/// A checkpoint at `at`, as both halves of KurrentDB's position.
fn checkpoint_resp(at: u64) -> ReadResp {
    ReadResp {
        content: Some(read_resp::Content::Checkpoint(read_resp::Checkpoint {
            commit_position: at,
            prepare_position: at,
            timestamp: Some(now_timestamp()),
        })),
    }
}
