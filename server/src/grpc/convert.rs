//! Between KurrentDB's v1 messages and Skald's domain types: stream names,
//! event ids, expected revisions, proposed and recorded events, positions,
//! and the errors as the official clients recognise them (status codes,
//! messages, trailers and status details).

use std::collections::HashMap;

use prost::Message;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use super::metadata;
use super::pb::event_store::client::streams::read_resp::read_event::{
    self, RecordedEvent as PbRecordedEvent,
};
use super::pb::event_store::client::streams::read_resp::ReadEvent;
use super::pb::event_store::client::{uuid, StreamIdentifier, Uuid};
use crate::model::{check_event_type, check_raw_json, ExpectedRevision, NewEvent, RecordedEvent};
use crate::model::{ContentType, MetadataVersion, StreamMetadata, StreamName, Text};
use crate::storage::WriteError;

/// .NET ticks (100 ns) per microsecond: KurrentDB's `created` is ticks since
/// the Unix epoch.
const TICKS_PER_MICRO: u64 = 10;

/// KurrentDB's content types: JSON data is stored as the HTTP API's events
/// are; anything else is stored as binary (see `ContentType`).
pub const JSON: &str = "application/json";
pub const OCTET_STREAM: &str = "application/octet-stream";

pub fn ticks(micros: u64) -> i64 {
    i64::try_from(micros.saturating_mul(TICKS_PER_MICRO)).unwrap_or(i64::MAX)
}

/// What a stream identifier names.
pub enum Target {
    Stream(StreamName),
    /// `$$name`: the stream's metadata (see `metadata`).
    Metadata(StreamName),
}

/// A stream, or a stream's metadata stream, from its identifier;
/// `INVALID_ARGUMENT` when it is neither (KurrentDB's other system streams,
/// `$`-prefixed, are not served).
pub fn target(id: Option<&StreamIdentifier>) -> Result<Target, Status> {
    let raw = id
        .map(|id| id.stream_name.as_slice())
        .ok_or_else(|| Status::invalid_argument("a stream identifier is required"))?;
    let text = std::str::from_utf8(raw)
        .map_err(|_| Status::invalid_argument("the stream name is not UTF-8"))?;
    let (name, metadata) = match text.strip_prefix(metadata::PREFIX) {
        Some(name) => (name, true),
        None => (text, false),
    };
    let stream = StreamName::parse(name)
        .map_err(|e| Status::invalid_argument(format!("stream name {name:?} {e}")))?;
    Ok(if metadata {
        Target::Metadata(stream)
    } else {
        Target::Stream(stream)
    })
}

/// A stream name from its identifier, for the calls that do not take a
/// metadata stream (deletes, subscriptions).
pub fn stream_name(id: Option<&StreamIdentifier>) -> Result<StreamName, Status> {
    match target(id)? {
        Target::Stream(stream) => Ok(stream),
        Target::Metadata(stream) => Err(Status::invalid_argument(format!(
            "metadata stream $${stream}: Skald reads and appends stream metadata, it does not delete or subscribe to it"
        ))),
    }
}

pub fn stream_identifier(stream: &StreamName) -> StreamIdentifier {
    StreamIdentifier {
        stream_name: stream.as_str().as_bytes().to_vec(),
    }
}

/// An event id in either of the protocol's two forms.
pub fn event_id(id: Option<&Uuid>) -> Result<::uuid::Uuid, Status> {
    match id.and_then(|id| id.value.as_ref()) {
        Some(uuid::Value::String(text)) => ::uuid::Uuid::parse_str(text)
            .map_err(|e| Status::invalid_argument(format!("event id {text:?}: {e}"))),
        Some(uuid::Value::Structured(s)) => {
            let high = s.most_significant_bits as u64;
            let low = s.least_significant_bits as u64;
            Ok(::uuid::Uuid::from_u64_pair(high, low))
        }
        None => Err(Status::invalid_argument("an event id is required")),
    }
}

/// An id as the client asked for it (`structured` or `string`).
pub fn pb_uuid(id: ::uuid::Uuid, structured: bool) -> Uuid {
    let value = if structured {
        let (high, low) = id.as_u64_pair();
        uuid::Value::Structured(uuid::Structured {
            most_significant_bits: high as i64,
            least_significant_bits: low as i64,
        })
    } else {
        uuid::Value::String(id.to_string())
    };
    Uuid { value: Some(value) }
}

/// One proposed event as the writer stores it. KurrentDB's `type` and
/// `content-type` travel in `metadata`; `custom_metadata` is the event's own
/// metadata (bytes: Skald takes a JSON object, or nothing).
pub fn new_event(
    index: usize,
    id: Option<&Uuid>,
    metadata: &HashMap<String, String>,
    custom_metadata: &[u8],
    data: &[u8],
    max_event_bytes: usize,
) -> Result<NewEvent, Status> {
    let id = event_id(id)?;
    let event_type = metadata
        .get("type")
        .ok_or_else(|| Status::invalid_argument(format!("event {index} has no type")))?;
    check_event_type(event_type)
        .map_err(|e| Status::invalid_argument(format!("event {index}: type {e}")))?;
    let (data_text, content_type) = match metadata.get("content-type").map_or(JSON, String::as_str)
    {
        JSON => (json_text(index, "data", data)?, ContentType::Json),
        OCTET_STREAM => (binary_text(data), ContentType::Binary),
        other => {
            return Err(Status::invalid_argument(format!(
                "event {index}: content-type {other:?} is not supported: {JSON} or {OCTET_STREAM}"
            )))
        }
    };
    let metadata = if custom_metadata.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let text = json_text(index, "metadata", custom_metadata)?;
        if !text.trim_start().starts_with('{') {
            return Err(Status::invalid_argument(format!(
                "event {index}: metadata must be a JSON object"
            )));
        }
        Some(text)
    };
    // The size the client sent (binary data is stored a third larger).
    let size = data.len() + metadata.as_ref().map_or(0, String::len) + event_type.len();
    if size > max_event_bytes {
        return Err(Status::invalid_argument(format!(
            "event {index} is {size} bytes, above the limit of {max_event_bytes} bytes"
        )));
    }
    Ok(NewEvent {
        id,
        event_type: event_type.as_str().into(),
        data: data_text.into(),
        metadata: metadata.map(Text::from),
        content_type,
    })
}

/// Binary data as stored: its base64 in a JSON string.
fn binary_text(bytes: &[u8]) -> String {
    use base64::Engine;
    let mut text = String::with_capacity(bytes.len() / 3 * 4 + 6);
    text.push('"');
    base64::engine::general_purpose::STANDARD.encode_string(bytes, &mut text);
    text.push('"');
    text
}

/// An event's data as KurrentDB's clients get it: the stored JSON text, or
/// the bytes of binary data.
fn payload(event: &RecordedEvent) -> Vec<u8> {
    use base64::Engine;
    match event.content_type {
        ContentType::Json => event.data.clone().into_bytes(),
        ContentType::Binary => {
            let encoded = event.data.trim_matches('"');
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .unwrap_or_else(|e| {
                    // Written by `binary_text` under the record's CRC: only a
                    // bug gets here. Hand over what is stored, and say so.
                    tracing::error!(position = event.position, error = %e, "stored binary data is not base64");
                    event.data.clone().into_bytes()
                })
        }
    }
}

fn json_text(index: usize, field: &str, bytes: &[u8]) -> Result<String, Status> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| Status::invalid_argument(format!("event {index}: {field} is not UTF-8")))?;
    let raw = serde_json::from_str::<&serde_json::value::RawValue>(text).map_err(|e| {
        Status::invalid_argument(format!("event {index}: {field} is not JSON: {e}"))
    })?;
    check_raw_json(raw)
        .map_err(|e| Status::invalid_argument(format!("event {index}: {field} {e}")))?;
    Ok(text.to_owned())
}

/// A stored event as a read answers it.
pub fn read_event(event: RecordedEvent, structured_ids: bool) -> ReadEvent {
    let data = payload(&event);
    pb_read_event(
        PbRecordedEvent {
            id: Some(pb_uuid(event.id, structured_ids)),
            stream_identifier: Some(stream_identifier(&event.stream)),
            stream_revision: event.revision,
            prepare_position: event.position,
            commit_position: event.position,
            metadata: HashMap::new(),
            custom_metadata: event.metadata.map(String::into_bytes).unwrap_or_default(),
            data,
        },
        event.event_type,
        event.content_type,
        event.recorded_at_micros,
    )
}

/// A metadata version as the event of `$$stream` that stands for it.
pub fn metadata_event(
    stream: &StreamName,
    metadata: &StreamMetadata,
    version: &MetadataVersion,
    structured_ids: bool,
) -> ReadEvent {
    pb_read_event(
        PbRecordedEvent {
            id: Some(pb_uuid(metadata::event_id(stream, version), structured_ids)),
            stream_identifier: Some(metadata_identifier(stream)),
            stream_revision: version.revision,
            prepare_position: version.position,
            commit_position: version.position,
            metadata: HashMap::new(),
            custom_metadata: Vec::new(),
            data: metadata::to_json(metadata),
        },
        metadata::EVENT_TYPE.to_owned(),
        ContentType::Json,
        version.set_at_micros,
    )
}

pub fn metadata_identifier(stream: &StreamName) -> StreamIdentifier {
    StreamIdentifier {
        stream_name: format!("{}{stream}", metadata::PREFIX).into_bytes(),
    }
}

/// `recorded` with KurrentDB's system metadata (type, content type, created
/// in ticks) filled in.
fn pb_read_event(
    mut recorded: PbRecordedEvent,
    event_type: String,
    content_type: ContentType,
    recorded_at_micros: u64,
) -> ReadEvent {
    recorded.metadata.insert("type".to_owned(), event_type);
    recorded.metadata.insert(
        "content-type".to_owned(),
        content_type.media_type().to_owned(),
    );
    recorded
        .metadata
        .insert("created".to_owned(), ticks(recorded_at_micros).to_string());
    let position = recorded.commit_position;
    ReadEvent {
        event: Some(recorded),
        link: None,
        position: Some(read_event::Position::CommitPosition(position)),
    }
}

/// KurrentDB's number for a revision: -1 for "no stream".
pub fn version_number(revision: Option<u64>) -> i64 {
    revision.map_or(-1, |r| i64::try_from(r).unwrap_or(i64::MAX))
}

/// KurrentDB's number for an expectation: -1 no stream, -2 any, -4 exists.
pub fn expected_number(expected: ExpectedRevision) -> i64 {
    match expected {
        ExpectedRevision::NoStream => -1,
        ExpectedRevision::Any => -2,
        ExpectedRevision::StreamExists => -4,
        ExpectedRevision::Exact(r) => i64::try_from(r).unwrap_or(i64::MAX),
    }
}

/// A status with KurrentDB's error trailers (`exception` and its details),
/// which the .NET, Java, Go and Rust clients match on.
pub fn status_with_trailers(
    code: Code,
    message: String,
    trailers: &[(&'static str, String)],
) -> Status {
    let mut status = Status::new(code, message);
    for (key, value) in trailers {
        if let Ok(value) = MetadataValue::try_from(value.as_str()) {
            status.metadata_mut().insert(*key, value);
        }
    }
    status
}

pub fn stream_deleted(stream: &StreamName) -> Status {
    status_with_trailers(
        Code::FailedPrecondition,
        format!("Event stream '{stream}' is deleted."),
        &[
            ("exception", "stream-deleted".to_owned()),
            ("stream-name", stream.to_string()),
        ],
    )
}

/// A wrong expected version of a delete or tombstone, as KurrentDB answers it
/// (the Python client parses the message, the others the trailers).
pub fn wrong_expected_version(
    stream: &StreamName,
    expected: ExpectedRevision,
    actual: Option<u64>,
) -> Status {
    let (expected, actual) = (expected_number(expected), version_number(actual));
    status_with_trailers(
        Code::FailedPrecondition,
        format!(
            "WrongExpectedVersion. Stream: {stream}, Expected version: {expected}, Actual version: {actual}"
        ),
        &[
            ("exception", "wrong-expected-version".to_owned()),
            ("stream-name", stream.to_string()),
            ("expected-version", expected.to_string()),
            ("actual-version", actual.to_string()),
        ],
    )
}

/// A write failure that is not a wrong expected version.
pub fn write_error(stream: &StreamName, error: WriteError) -> Status {
    match error {
        WriteError::StreamDeleted(_) => stream_deleted(stream),
        WriteError::WrongExpectedRevision { expected, actual } => {
            wrong_expected_version(stream, expected, actual)
        }
        WriteError::StreamNotFound(_) => {
            wrong_expected_version(stream, ExpectedRevision::StreamExists, None)
        }
        WriteError::DuplicateEventId { id, position } => Status::failed_precondition(format!(
            "event id {id} is already stored (position {position}) in a different append"
        )),
        WriteError::Busy | WriteError::WriterStopped | WriteError::ClusterUnavailable(_) => {
            Status::unavailable(error.to_string())
        }
        WriteError::TooLargeForCluster { .. } => Status::invalid_argument(error.to_string()),
        WriteError::Storage(e) => {
            tracing::error!(error = %e, "a gRPC write failed in storage");
            Status::internal("storage failure; see the server's log")
        }
    }
}

/// `google.protobuf.Any` holding `message` as KurrentDB packs it.
pub fn any<M: Message>(name: &str, message: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: format!("type.googleapis.com/{name}"),
        value: message.encode_to_vec(),
    }
}
