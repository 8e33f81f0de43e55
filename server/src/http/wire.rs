//! The JSON shapes of requests and responses (see `docs/api.md`).

use std::time::{Duration, UNIX_EPOCH};

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use uuid::Uuid;

use super::error::ApiError;
use crate::model::{AppendOutcome, ExpectedRevision, RecordedEvent};

/// `expected_revision` as JSON: `"any"`, `"no_stream"`, `"stream_exists"` or a number.
pub fn expected_revision_json(expected: ExpectedRevision) -> Value {
    match expected {
        ExpectedRevision::Any => json!("any"),
        ExpectedRevision::NoStream => json!("no_stream"),
        ExpectedRevision::StreamExists => json!("stream_exists"),
        ExpectedRevision::Exact(n) => json!(n),
    }
}

/// Body of `POST /streams/{stream}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppendBody {
    #[serde(default = "any_revision", deserialize_with = "expected_revision")]
    pub expected_revision: ExpectedRevision,
    pub events: Vec<EventBody>,
}

fn any_revision() -> ExpectedRevision {
    ExpectedRevision::Any
}

/// One event of an append body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBody {
    #[serde(default)]
    pub id: Option<Uuid>,
    #[serde(rename = "type")]
    pub event_type: String,
    pub data: Box<RawValue>,
    #[serde(default)]
    pub metadata: Option<Box<RawValue>>,
}

fn expected_revision<'de, D: Deserializer<'de>>(d: D) -> Result<ExpectedRevision, D::Error> {
    struct ExpectedVisitor;
    impl Visitor<'_> for ExpectedVisitor {
        type Value = ExpectedRevision;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str(r#""any", "no_stream", "stream_exists" or a non-negative integer"#)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(ExpectedRevision::Exact(v))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            // A number in a string is not accepted here: JSON has numbers.
            match v.parse() {
                Ok(ExpectedRevision::Exact(_)) | Err(_) => {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
                Ok(expected) => Ok(expected),
            }
        }
    }
    d.deserialize_any(ExpectedVisitor)
}

/// Answer of a successful append.
#[derive(Debug, Serialize)]
pub struct AppendResponse<'a> {
    pub stream: &'a str,
    pub first_revision: u64,
    pub last_revision: u64,
    pub first_position: u64,
    pub last_position: u64,
}

impl<'a> AppendResponse<'a> {
    pub fn new(stream: &'a str, o: &AppendOutcome) -> Self {
        Self {
            stream,
            first_revision: o.first_revision,
            last_revision: o.last_revision,
            first_position: o.first_position,
            last_position: o.last_position,
        }
    }
}

/// An event as every read returns it.
#[derive(Debug, Serialize)]
pub struct EventJson {
    pub stream: String,
    pub revision: u64,
    pub position: u64,
    pub id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub data: Box<RawValue>,
    pub metadata: Option<Box<RawValue>>,
    pub recorded_at: String,
}

impl TryFrom<RecordedEvent> for EventJson {
    type Error = ApiError;

    fn try_from(e: RecordedEvent) -> Result<Self, ApiError> {
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
        Ok(Self {
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
}

/// Converts stored events for a response.
pub fn events_json(events: Vec<RecordedEvent>) -> Result<Vec<EventJson>, ApiError> {
    events.into_iter().map(EventJson::try_from).collect()
}

/// Answer of `GET /streams/{stream}`.
#[derive(Debug, Serialize)]
pub struct StreamPage<'a> {
    pub stream: &'a str,
    pub events: Vec<EventJson>,
    pub next_revision: Option<u64>,
    pub last_revision: u64,
}

/// Answer of `GET /all`.
#[derive(Debug, Serialize)]
pub struct AllPage {
    pub events: Vec<EventJson>,
    pub next_position: Option<u64>,
    pub head_position: Option<u64>,
}
