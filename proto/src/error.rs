//! The body of every error answer: `{"error": "snake_case_code", "message": "...",
//! ...details}`.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ExpectedRevision;

/// What a 4xx or 5xx answer carries.
///
/// ```
/// use skald_proto::{ErrorBody, ErrorDetails, ExpectedRevision};
/// let body: ErrorBody = serde_json::from_str(r#"{"error": "wrong_expected_revision",
///   "message": "expected revision 0, but the stream's last revision is 1", "expected": 0, "actual": 1}"#)?;
/// assert_eq!(body.details, ErrorDetails::WrongExpectedRevision { expected: ExpectedRevision::Exact(0), actual: Some(1) });
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable snake_case code, e.g. `stream_not_found`.
    pub error: String,
    /// A sentence for people.
    pub message: String,
    /// Fields some errors add.
    #[serde(flatten)]
    pub details: ErrorDetails,
}

/// The fields some errors add beside `error` and `message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum ErrorDetails {
    /// `wrong_expected_revision`: what the request expected and the stream's
    /// last revision (`null`: no stream).
    WrongExpectedRevision {
        /// The request's expectation.
        expected: ExpectedRevision,
        /// The stream's last revision.
        actual: Option<u64>,
    },
    /// `duplicate_event_id`: the id and where it is stored.
    DuplicateEventId {
        /// The id.
        id: Uuid,
        /// Where the event with that id is stored.
        position: u64,
    },
    /// `event_not_found`.
    Event {
        /// The stream.
        stream: String,
        /// The missing revision.
        revision: u64,
    },
    /// `stream_not_found`, `stream_deleted`.
    Stream {
        /// The stream.
        stream: String,
    },
    /// `payload_too_large` and other 413s: the limit, in bytes.
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// `corrupt_event`: where.
    Corrupt {
        /// The position of the damaged record.
        position: u64,
    },
    /// Nothing more.
    None {},
}

impl ErrorBody {
    /// An error without details.
    pub fn new(error: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            message: message.into(),
            details: ErrorDetails::None {},
        }
    }

    /// With `details`.
    pub fn with(mut self, details: ErrorDetails) -> Self {
        self.details = details;
        self
    }
}
