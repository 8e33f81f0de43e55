//! The domain types every layer shares: validated names, expected revisions,
//! events to append and events as recorded. Validation happens once, in the
//! constructors here; everything below the HTTP layer trusts these types.

use std::fmt;
use uuid::Uuid;

/// Longest stream name, in bytes.
pub const MAX_STREAM_NAME_BYTES: usize = 256;
/// Longest event type, in bytes.
pub const MAX_EVENT_TYPE_BYTES: usize = 256;
/// Most events in one append.
pub const MAX_EVENTS_PER_APPEND: usize = 10_000;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("is {len} bytes, longer than the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("must not contain control characters")]
    ControlCharacter,
    #[error("must not start with '$' (reserved for system streams)")]
    Reserved,
}

/// A user stream name: 1..=256 bytes of UTF-8, no control characters, not starting with `$`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamName(String);

impl StreamName {
    /// Validates `raw` as a stream name.
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        check_text(raw, MAX_STREAM_NAME_BYTES)?;
        if raw.starts_with('$') {
            return Err(NameError::Reserved);
        }
        Ok(Self(raw.to_owned()))
    }

    /// Wraps a name read back from storage, which was validated when it was written.
    pub(crate) fn from_stored(raw: String) -> Self {
        Self(raw)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks an event type: 1..=256 bytes, no control characters.
pub fn check_event_type(raw: &str) -> Result<(), NameError> {
    check_text(raw, MAX_EVENT_TYPE_BYTES)
}

fn check_text(raw: &str, max: usize) -> Result<(), NameError> {
    if raw.is_empty() {
        return Err(NameError::Empty);
    }
    if raw.len() > max {
        return Err(NameError::TooLong {
            len: raw.len(),
            max,
        });
    }
    if raw.chars().any(char::is_control) {
        return Err(NameError::ControlCharacter);
    }
    Ok(())
}

/// What the appender believes about the stream's last revision (the wire type
/// is the domain type: one definition, with its rule `admits`).
pub use skald_client::wire::ExpectedRevision;

/// Formats a stream's last revision for messages: the number, or "none" for no stream.
pub fn display_revision(revision: Option<u64>) -> String {
    revision.map_or_else(|| "none (no stream)".to_owned(), |r| r.to_string())
}

/// One event to append, already validated. `data` and `metadata` are JSON texts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub id: Uuid,
    pub event_type: String,
    pub data: String,
    pub metadata: Option<String>,
}

/// One event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub position: u64,
    pub stream: StreamName,
    pub revision: u64,
    pub id: Uuid,
    pub event_type: String,
    /// JSON text.
    pub data: String,
    /// JSON text of an object, when given.
    pub metadata: Option<String>,
    /// Commit time, microseconds since the Unix epoch (UTC).
    pub recorded_at_micros: u64,
}

/// Where an append's events landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    pub first_revision: u64,
    pub last_revision: u64,
    pub first_position: u64,
    pub last_position: u64,
    /// `true` when the request repeated an append that was already stored and
    /// nothing was written.
    pub idempotent_replay: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_are_validated() {
        assert!(StreamName::parse("order-42").is_ok());
        assert!(StreamName::parse("ünïcode/ok").is_ok());
        assert_eq!(StreamName::parse(""), Err(NameError::Empty));
        assert_eq!(StreamName::parse("$all"), Err(NameError::Reserved));
        assert_eq!(StreamName::parse("a\nb"), Err(NameError::ControlCharacter));
        assert_eq!(StreamName::parse("a\0b"), Err(NameError::ControlCharacter));
        assert!(StreamName::parse(&"x".repeat(256)).is_ok());
        assert_eq!(
            StreamName::parse(&"x".repeat(257)),
            Err(NameError::TooLong { len: 257, max: 256 })
        );
    }

    #[test]
    fn expected_revision_rules() {
        use ExpectedRevision::*;
        assert!(Any.admits(None) && Any.admits(Some(3)));
        assert!(NoStream.admits(None) && !NoStream.admits(Some(0)));
        assert!(!StreamExists.admits(None) && StreamExists.admits(Some(0)));
        assert!(Exact(2).admits(Some(2)) && !Exact(2).admits(Some(1)) && !Exact(0).admits(None));
    }
}
