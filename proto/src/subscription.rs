//! The lines of a pushed subscription (`/subscriptions/...`): one JSON object
//! per NDJSON line or SSE `data:` field, told apart by `type`.

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::RecordedEvent;

/// One line of a subscription.
///
/// ```
/// use skald_proto::{Place, SubscriptionLine};
/// let line: SubscriptionLine = serde_json::from_str(r#"{"type":"checkpoint","position":41}"#)?;
/// assert_eq!(line, SubscriptionLine::Checkpoint(Place::Position(Some(41))));
/// assert_eq!(serde_json::to_string(&SubscriptionLine::<serde_json::Value>::Heartbeat)?, r#"{"type":"heartbeat"}"#);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SubscriptionLine<D = Value> {
    /// The next event.
    Event {
        /// The event.
        event: RecordedEvent<D>,
    },
    /// Everything committed up to this place was delivered; the subscriber is live.
    CaughtUp(Place),
    /// The subscriber fell far behind the head and is catching up again.
    FellBehind(Place),
    /// Everything up to and including this place was examined.
    Checkpoint(Place),
    /// Nothing happened for a while; the connection is alive.
    Heartbeat,
    /// The server ended the subscription (the last line).
    Error {
        /// The error code, as in error bodies.
        error: String,
        /// A sentence for people.
        message: String,
    },
}

/// Where a control line is: a global position (`$all` subscriptions) or a
/// stream revision (stream subscriptions); `None` for a caught-up before any
/// event existed. On the wire: `"position": n` or `"revision": n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// A global position.
    Position(Option<u64>),
    /// A stream revision.
    Revision(Option<u64>),
}

impl Place {
    /// The number, whichever kind it is.
    pub fn value(self) -> Option<u64> {
        match self {
            Self::Position(p) | Self::Revision(p) => p,
        }
    }
}

impl Serialize for Place {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        match self {
            Self::Position(p) => map.serialize_entry("position", p)?,
            Self::Revision(r) => map.serialize_entry("revision", r)?,
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Place {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PlaceVisitor;
        impl<'de> Visitor<'de> for PlaceVisitor {
            type Value = Place;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(r#"an object with "position" or "revision""#)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Place, A::Error> {
                let mut place = None;
                while let Some(key) = map.next_key::<String>()? {
                    let found = match key.as_str() {
                        "position" => Place::Position(map.next_value()?),
                        "revision" => Place::Revision(map.next_value()?),
                        _ => {
                            map.next_value::<de::IgnoredAny>()?;
                            continue;
                        }
                    };
                    if place.replace(found).is_some() {
                        return Err(de::Error::custom("both position and revision"));
                    }
                }
                place.ok_or_else(|| de::Error::missing_field("position"))
            }
        }
        deserializer.deserialize_map(PlaceVisitor)
    }
}
