//! The JSON shapes of Skald's HTTP API, as typed Rust values.

use std::fmt;
use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::Error;

/// What an append expects of the stream's last revision.
///
/// ```
/// use skald_client::ExpectedRevision;
/// assert_eq!(ExpectedRevision::Exact(3).to_string(), "3");
/// assert_eq!(ExpectedRevision::NoStream.to_string(), "no_stream");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpectedRevision {
    /// No check.
    #[default]
    Any,
    /// The stream must have no events.
    NoStream,
    /// The stream must have at least one event.
    StreamExists,
    /// The stream's last revision must be exactly this.
    Exact(u64),
}

impl ExpectedRevision {
    pub(crate) fn to_json(self) -> Value {
        match self {
            Self::Any => "any".into(),
            Self::NoStream => "no_stream".into(),
            Self::StreamExists => "stream_exists".into(),
            Self::Exact(n) => n.into(),
        }
    }

    pub(crate) fn from_json(value: &Value) -> Option<Self> {
        match value {
            Value::Number(n) => n.as_u64().map(Self::Exact),
            Value::String(s) => match s.as_str() {
                "any" => Some(Self::Any),
                "no_stream" => Some(Self::NoStream),
                "stream_exists" => Some(Self::StreamExists),
                _ => None,
            },
            _ => None,
        }
    }
}

impl fmt::Display for ExpectedRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::NoStream => f.write_str("no_stream"),
            Self::StreamExists => f.write_str("stream_exists"),
            Self::Exact(n) => write!(f, "{n}"),
        }
    }
}

/// An event to append.
///
/// ```
/// use skald_client::EventData;
/// #[derive(serde::Serialize)]
/// struct OrderPlaced { total: u32 }
/// let event = EventData::json("OrderPlaced", &OrderPlaced { total: 30 })?
///     .metadata(&serde_json::json!({"user": "ann"}))?;
/// assert_eq!(event.event_type(), "OrderPlaced");
/// # Ok::<(), skald_client::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct EventData {
    pub(crate) id: Uuid,
    pub(crate) event_type: String,
    pub(crate) data: Value,
    pub(crate) metadata: Option<Value>,
}

impl EventData {
    /// An event of type `event_type` whose data is `data` as JSON. It gets a new
    /// UUIDv7 id, which retries of the append keep.
    pub fn json(event_type: impl Into<String>, data: &impl Serialize) -> Result<Self, Error> {
        Ok(Self {
            id: Uuid::now_v7(),
            event_type: event_type.into(),
            data: serde_json::to_value(data).map_err(Error::Serialize)?,
            metadata: None,
        })
    }

    /// Sets the event id (for idempotency across processes).
    pub fn id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }

    /// Sets the metadata, which must serialize to a JSON object.
    pub fn metadata(mut self, metadata: &impl Serialize) -> Result<Self, Error> {
        self.metadata = Some(serde_json::to_value(metadata).map_err(Error::Serialize)?);
        Ok(self)
    }

    /// The event id.
    pub fn event_id(&self) -> Uuid {
        self.id
    }

    /// The event type.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    pub(crate) fn to_json(&self) -> Value {
        let mut event =
            serde_json::json!({"id": self.id, "type": self.event_type, "data": self.data});
        if let Some(metadata) = &self.metadata {
            event["metadata"] = metadata.clone();
        }
        event
    }
}

/// Where an append's events landed.
///
/// ```no_run
/// # async fn demo(client: skald_client::Client, event: skald_client::EventData) -> Result<(), skald_client::Error> {
/// let result = client.append("order-42", skald_client::ExpectedRevision::Any, [event]).await?;
/// println!("revisions {}..={} at positions {}..={}", result.first_revision, result.last_revision, result.first_position, result.last_position);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct AppendResult {
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
/// let event: skald_client::RecordedEvent = serde_json::from_str(r#"{"stream": "order-1", "revision": 0,
///   "position": 7, "id": "01900000-0000-7000-8000-000000000001", "type": "OrderPlaced",
///   "data": {"total": 30}, "metadata": null, "recorded_at": "2026-11-26T15:00:00.123456Z"}"#)?;
/// assert_eq!((event.stream.as_str(), event.position, event.data["total"].as_u64()), ("order-1", 7, Some(30)));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RecordedEvent {
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
    pub data: Value,
    /// Its metadata, `None` when none was given.
    pub metadata: Option<Value>,
    /// Commit time, UTC, as the server formats it (RFC 3339, microseconds).
    pub recorded_at: String,
}

impl RecordedEvent {
    /// Deserializes the data into `T`.
    ///
    /// ```
    /// # let event: skald_client::RecordedEvent = serde_json::from_value(serde_json::json!({
    /// #   "stream": "order-1", "revision": 0, "position": 0, "id": "01900000-0000-7000-8000-000000000001",
    /// #   "type": "OrderPlaced", "data": {"total": 30}, "metadata": null,
    /// #   "recorded_at": "2026-11-26T15:00:00.123456Z"})).unwrap();
    /// #[derive(serde::Deserialize)]
    /// struct OrderPlaced { total: u32 }
    /// let placed: OrderPlaced = event.data_as()?;
    /// assert_eq!(placed.total, 30);
    /// # Ok::<(), skald_client::Error>(())
    /// ```
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_value(self.data.clone()).map_err(|e| {
            Error::Decode(format!(
                "data of event {} as {}: {e}",
                self.position,
                std::any::type_name::<T>()
            ))
        })
    }

    /// The commit time.
    pub fn recorded_at_time(&self) -> Result<SystemTime, Error> {
        humantime::parse_rfc3339(&self.recorded_at)
            .map_err(|e| Error::Decode(format!("recorded_at: {e}")))
    }
}

/// A page of a stream read.
///
/// ```no_run
/// # async fn demo(client: skald_client::Client, event: skald_client::EventData) -> Result<(), skald_client::Error> {
/// let page = client.read_stream_page("order-42", &skald_client::ReadOptions::default()).await?;
/// println!("last revision {}", page.last_revision);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Deserialize)]
pub struct StreamPage {
    /// The events.
    pub events: Vec<RecordedEvent>,
    /// Where the next page starts; `None` at the end.
    pub next_revision: Option<u64>,
    /// The stream's last revision.
    pub last_revision: u64,
}

/// A page of a `$all` read.
///
/// ```no_run
/// # async fn demo(client: skald_client::Client, event: skald_client::EventData) -> Result<(), skald_client::Error> {
/// let page = client.read_all_page(&skald_client::ReadOptions::default()).await?;
/// println!("{} events", page.events.len());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Deserialize)]
pub struct AllPage {
    /// The events.
    pub events: Vec<RecordedEvent>,
    /// Where to continue; `None` for a backward read that reached position 0.
    pub next_position: Option<u64>,
    /// The last committed position, `None` for an empty store.
    pub head_position: Option<u64>,
}

/// What `GET /info` tells.
///
/// ```no_run
/// # async fn demo(client: skald_client::Client, event: skald_client::EventData) -> Result<(), skald_client::Error> {
/// let info = client.info().await?;
/// println!("{}", info.data_dir);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Deserialize)]
pub struct ServerInfo {
    /// Server version.
    pub version: String,
    /// Data directory.
    pub data_dir: String,
    /// The last committed position, `None` for an empty store.
    pub head_position: Option<u64>,
}
