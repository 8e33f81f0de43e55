//! Events to append, as the caller builds them.

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::Error;
#[cfg(feature = "http")]
use skald_proto::NewEvent;

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

    #[cfg(feature = "http")]
    pub(crate) fn into_wire(self) -> NewEvent {
        NewEvent {
            id: Some(self.id),
            event_type: self.event_type,
            data: self.data,
            metadata: self.metadata,
        }
    }
}
