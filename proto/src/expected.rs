//! The expected revision of an append (or a delete) and the rule that checks it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What an append expects of the stream's last revision.
///
/// ```
/// use skald_proto::ExpectedRevision;
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
    /// use skald_proto::ExpectedRevision;
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
    /// use skald_proto::ExpectedRevision;
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

#[cfg(test)]
mod tests {
    use super::ExpectedRevision::{self, *};

    #[test]
    fn the_rule() {
        assert!(Any.admits(None) && Any.admits(Some(3)));
        assert!(NoStream.admits(None) && !NoStream.admits(Some(0)));
        assert!(!StreamExists.admits(None) && StreamExists.admits(Some(0)));
        assert!(Exact(2).admits(Some(2)) && !Exact(2).admits(Some(1)) && !Exact(0).admits(None));
    }

    #[test]
    fn json_and_text_round_trip() {
        for expected in [Any, NoStream, StreamExists, Exact(0), Exact(u64::MAX)] {
            let json = serde_json::to_string(&expected).expect("serialize");
            let back: ExpectedRevision = serde_json::from_str(&json).expect("parse");
            assert_eq!(back, expected);
            assert_eq!(
                expected.to_string().parse::<ExpectedRevision>(),
                Ok(expected)
            );
        }
        assert!(serde_json::from_str::<ExpectedRevision>("\"latest\"").is_err());
        assert!(serde_json::from_str::<ExpectedRevision>("-1").is_err());
    }
}
