//! Events to append, events as recorded, and the pages reads answer with.

use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::ExpectedRevision;

/// A wire value did not decode into what the caller asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

/// Where an append's events landed.
///
/// ```
/// let result: skald_proto::AppendResult = serde_json::from_str(r#"{"stream": "order-42",
///   "first_revision": 0, "last_revision": 1, "first_position": 7, "last_position": 8}"#)?;
/// assert_eq!(result.last_position, 8);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResult {
    /// The stream appended to.
    pub stream: String,
    /// Revision of the first event in its stream.
    pub first_revision: u64,
    /// Revision of the last event; the stream's last revision right after the append.
    pub last_revision: u64,
    /// Global position of the first event.
    pub first_position: u64,
    /// Global position of the last event.
    pub last_position: u64,
}

/// An event as stored.
///
/// ```
/// let event: skald_proto::RecordedEvent = serde_json::from_str(r#"{"stream": "order-1", "revision": 0,
///   "position": 7, "id": "01900000-0000-7000-8000-000000000001", "type": "OrderPlaced",
///   "data": {"total": 30}, "metadata": null, "recorded_at": "2026-11-26T15:00:00.123456Z"}"#)?;
/// assert_eq!((event.stream.as_str(), event.position, event.data["total"].as_u64()), ("order-1", 7, Some(30)));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent<D = Value> {
    /// The stream it belongs to.
    pub stream: String,
    /// Its number in the stream, from 0.
    pub revision: u64,
    /// Its number in the global log, from 0.
    pub position: u64,
    /// Its unique id.
    pub id: Uuid,
    /// Its type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Its data, as JSON.
    pub data: D,
    /// Its metadata, `None` when none was given.
    pub metadata: Option<D>,
    /// Commit time, UTC, as the server formats it (RFC 3339, microseconds).
    pub recorded_at: String,
    /// `Some("application/octet-stream")` for a binary payload appended
    /// through the KurrentDB-compatible gRPC front end: `data` is then a JSON
    /// string holding the standard base64 of its bytes. Absent for JSON data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

impl RecordedEvent {
    /// Deserializes the data into `T`.
    ///
    /// ```
    /// # let event: skald_proto::RecordedEvent = serde_json::from_value(serde_json::json!({
    /// #   "stream": "order-1", "revision": 0, "position": 0, "id": "01900000-0000-7000-8000-000000000001",
    /// #   "type": "OrderPlaced", "data": {"total": 30}, "metadata": null,
    /// #   "recorded_at": "2026-11-26T15:00:00.123456Z"})).unwrap();
    /// #[derive(serde::Deserialize)]
    /// struct OrderPlaced { total: u32 }
    /// let placed: OrderPlaced = event.data_as()?;
    /// assert_eq!(placed.total, 30);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        serde_json::from_value(self.data.clone()).map_err(|e| {
            DecodeError(format!(
                "data of event {} as {}: {e}",
                self.position,
                std::any::type_name::<T>()
            ))
        })
    }

    /// The commit time.
    pub fn recorded_at_time(&self) -> Result<SystemTime, DecodeError> {
        humantime::parse_rfc3339(&self.recorded_at)
            .map_err(|e| DecodeError(format!("recorded_at: {e}")))
    }
}

/// A page of a stream read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamPage<D = Value> {
    /// The stream read.
    pub stream: String,
    /// The events.
    pub events: Vec<RecordedEvent<D>>,
    /// Where the next page starts; `None` at the end.
    pub next_revision: Option<u64>,
    /// The stream's last revision.
    pub last_revision: u64,
}

/// A page of a `$all` read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AllPage<D = Value> {
    /// The events.
    pub events: Vec<RecordedEvent<D>>,
    /// Where to continue; `None` for a backward read that reached position 0.
    pub next_position: Option<u64>,
    /// The last committed position, `None` for an empty store.
    pub head_position: Option<u64>,
}

/// The body of an append.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppendRequest<D = Value> {
    /// The expectation on the stream's last revision (default `any`).
    #[serde(default)]
    pub expected_revision: ExpectedRevision,
    /// The events, 1..=10000.
    pub events: Vec<NewEvent<D>>,
}

/// One event of an append body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEvent<D = Value> {
    /// Its id; the server assigns a UUIDv7 when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    /// Its type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Its data.
    pub data: D,
    /// Its metadata, a JSON object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<D>,
}
