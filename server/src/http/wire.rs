//! The JSON shapes of requests and responses (see `docs/api.md`): the types of
//! `skald_client::wire`, defined once for server and client, with event payloads
//! as `Box<RawValue>` so stored JSON goes out without being parsed into a tree.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::value::RawValue;
use serde_json::Value;
use skald_client::wire;

use super::error::ApiError;
use crate::model::{AppendOutcome, ExpectedRevision, RecordedEvent};

/// Body of `POST /streams/{stream}`.
pub type AppendBody = wire::AppendRequest<Box<RawValue>>;
/// One event of an append body.
pub type EventBody = wire::NewEvent<Box<RawValue>>;
/// An event as every read returns it.
pub type EventJson = wire::RecordedEvent<Box<RawValue>>;
/// Answer of `GET /streams/{stream}`.
pub type StreamPage = wire::StreamPage<Box<RawValue>>;
/// Answer of `GET /all`.
pub type AllPage = wire::AllPage<Box<RawValue>>;

/// `expected_revision` as JSON: `"any"`, `"no_stream"`, `"stream_exists"` or a number.
pub fn expected_revision_json(expected: ExpectedRevision) -> Value {
    serde_json::to_value(expected).unwrap_or(Value::Null)
}

/// Answer of a successful append.
pub fn append_result(stream: &str, o: &AppendOutcome) -> wire::AppendResult {
    wire::AppendResult {
        stream: stream.to_owned(),
        first_revision: o.first_revision,
        last_revision: o.last_revision,
        first_position: o.first_position,
        last_position: o.last_position,
    }
}

/// A stored event for a response; its JSON is checked, not re-encoded.
pub fn event_json(e: RecordedEvent) -> Result<EventJson, ApiError> {
    let position = e.position;
    let corrupt = |what: &str, err: serde_json::Error| ApiError::CorruptEvent {
        position,
        detail: format!("stored {what} is not JSON: {err}"),
    };
    let data = RawValue::from_string(e.data).map_err(|err| corrupt("data", err))?;
    let metadata = e
        .metadata
        .map(RawValue::from_string)
        .transpose()
        .map_err(|err| corrupt("metadata", err))?;
    let at = UNIX_EPOCH + Duration::from_micros(e.recorded_at_micros);
    Ok(EventJson {
        stream: e.stream.as_str().to_owned(),
        revision: e.revision,
        position,
        id: e.id,
        event_type: e.event_type,
        data,
        metadata,
        recorded_at: humantime::format_rfc3339_micros(at).to_string(),
    })
}

/// Converts stored events for a response.
pub fn events_json(events: Vec<RecordedEvent>) -> Result<Vec<EventJson>, ApiError> {
    events.into_iter().map(event_json).collect()
}
