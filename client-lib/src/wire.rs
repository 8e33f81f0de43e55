//! The JSON shapes of Skald's HTTP API, defined once: the client reads and
//! writes them, and the server (which depends on this crate without its `http`
//! feature) serializes the same types. Event payloads are generic: the client
//! uses `serde_json::Value`, the server `Box<RawValue>` (no re-parse).

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
    /// Whether a stream whose last revision is `actual` (`None`: no stream)
    /// satisfies this expectation.
    ///
    /// ```
    /// use skald_client::ExpectedRevision;
    /// assert!(ExpectedRevision::NoStream.admits(None));
    /// assert!(!ExpectedRevision::Exact(2).admits(Some(3)));
    /// ```
    pub fn admits(self, actual: Option<u64>) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => actual.is_none(),
            Self::StreamExists => actual.is_some(),
            Self::Exact(expected) => actual == Some(expected),
        }
    }
}

impl std::str::FromStr for ExpectedRevision {
    type Err = String;

    /// Parses `any`, `no_stream`, `stream_exists` or a non-negative integer.
    ///
    /// ```
    /// use skald_client::ExpectedRevision;
    /// assert_eq!("7".parse(), Ok(ExpectedRevision::Exact(7)));
    /// assert!("latest".parse::<ExpectedRevision>().is_err());
    /// ```
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "any" => Ok(Self::Any),
            "no_stream" => Ok(Self::NoStream),
            "stream_exists" => Ok(Self::StreamExists),
            n => n.parse().map(Self::Exact).map_err(|_| {
                format!("expected revision must be any, no_stream, stream_exists or a non-negative integer, got '{n}'")
            }),
        }
    }
}

/// JSON: `"any"`, `"no_stream"`, `"stream_exists"` or a number.
impl Serialize for ExpectedRevision {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Any => serializer.serialize_str("any"),
            Self::NoStream => serializer.serialize_str("no_stream"),
            Self::StreamExists => serializer.serialize_str("stream_exists"),
            Self::Exact(n) => serializer.serialize_u64(*n),
        }
    }
}

impl<'de> Deserialize<'de> for ExpectedRevision {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ExpectedVisitor;
        impl serde::de::Visitor<'_> for ExpectedVisitor {
            type Value = ExpectedRevision;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#""any", "no_stream", "stream_exists" or a non-negative integer"#)
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(ExpectedRevision::Exact(v))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "any" => Ok(ExpectedRevision::Any),
                    "no_stream" => Ok(ExpectedRevision::NoStream),
                    "stream_exists" => Ok(ExpectedRevision::StreamExists),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        deserializer.deserialize_any(ExpectedVisitor)
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

/// Where an append's events landed.
///
/// ```no_run
/// # async fn demo(client: skald_client::Client, event: skald_client::EventData) -> Result<(), skald_client::Error> {
/// let result = client.append("order-42", skald_client::ExpectedRevision::Any, [event]).await?;
/// println!("revisions {}..={} at positions {}..={}", result.first_revision, result.last_revision, result.first_position, result.last_position);
/// # Ok(()) }
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
/// let event: skald_client::RecordedEvent = serde_json::from_str(r#"{"stream": "order-1", "revision": 0,
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
///
/// ```no_run
/// # async fn demo(client: skald_client::Client, event: skald_client::EventData) -> Result<(), skald_client::Error> {
/// let page = client.read_all_page(&skald_client::ReadOptions::default()).await?;
/// println!("{} events", page.events.len());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AllPage<D = Value> {
    /// The events.
    pub events: Vec<RecordedEvent<D>>,
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Server version.
    pub version: String,
    /// Data directory.
    pub data_dir: String,
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
