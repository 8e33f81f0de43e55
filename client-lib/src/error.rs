//! The client's error type: one variant per failure a caller may handle differently.

use std::time::Duration;

use crate::ExpectedRevision;

/// Everything a [`Client`](crate::Client) call can fail with.
///
/// ```no_run
/// # async fn demo(client: skald_client::Client, event: skald_client::EventData) -> Result<(), skald_client::Error> {
/// use skald_client::{Error, ExpectedRevision};
/// match client.append("order-42", ExpectedRevision::NoStream, [event]).await {
///     Ok(_) => {}
///     Err(Error::WrongExpectedRevision { actual, .. }) => println!("already at {actual:?}"),
///     Err(e) if e.is_retryable() => println!("try again later: {e}"),
///     Err(e) => return Err(e),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The stream's last revision was not what the append expected.
    #[error("wrong expected revision: expected {expected}, actual {}", actual.map_or("none".to_owned(), |a| a.to_string()))]
    WrongExpectedRevision {
        /// What the append expected.
        expected: ExpectedRevision,
        /// The stream's last revision, `None` when it has no events.
        actual: Option<u64>,
    },
    /// An event id of the append is already stored in another append.
    #[error("duplicate event id: {message}")]
    DuplicateEventId {
        /// The server's explanation.
        message: String,
    },
    /// The stream has never been written (or the event does not exist).
    #[error("not found: {message}")]
    StreamNotFound {
        /// The server's explanation.
        message: String,
    },
    /// The stream was deleted.
    #[error("stream deleted: {message}")]
    StreamDeleted {
        /// The server's explanation.
        message: String,
    },
    /// The request or one event is larger than the server accepts.
    #[error("too large: {message}")]
    TooLarge {
        /// The server's explanation (names the limit and the flag that sets it).
        message: String,
        /// The limit, in bytes.
        limit: Option<u64>,
    },
    /// The server refused the request as malformed.
    #[error("bad request ({code}): {message}")]
    BadRequest {
        /// The server's error code, e.g. `invalid_body`.
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// The server needs a token, or does not know the one given (401).
    #[error("unauthorized: {message}")]
    Unauthorized {
        /// The server's explanation.
        message: String,
    },
    /// The token is known but may not do this: its role is too low, or the
    /// stream is outside its prefixes (403).
    #[error("forbidden: {message}")]
    Forbidden {
        /// The server's explanation (names the token and what it lacks).
        message: String,
    },
    /// The server failed (5xx).
    #[error("server error {status} ({code}): {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// The server's error code, e.g. `corrupt_event`.
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// The server ended a subscription with an error line.
    #[error("subscription ended by the server ({code}): {message}")]
    SubscriptionEnded {
        /// The server's error code, e.g. `shutting_down`.
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// The request could not be sent or its answer not received.
    #[cfg(feature = "http")]
    #[error("transport error: {0}")]
    Transport(#[source] reqwest::Error),
    /// The operation did not finish in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The server's answer was not what this client understands.
    #[error("unexpected response: {0}")]
    Decode(String),
    /// Event data or metadata could not be serialized.
    #[error("cannot serialize event: {0}")]
    Serialize(#[source] serde_json::Error),
    /// The CA certificate given to the builder is not usable PEM.
    #[error("invalid CA certificate: {0}")]
    InvalidCertificate(String),
    /// The URL given to the builder is not valid.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
}

impl Error {
    /// Whether the same request may succeed if sent again later: transport
    /// failures, time-outs, 5xx answers and subscriptions ended by a shutdown.
    /// Appends are retried by the client itself only on transport failures, with
    /// the same event ids, which the server's idempotency makes safe.
    ///
    /// ```
    /// use skald_client::{Error, ExpectedRevision};
    /// let conflict = Error::WrongExpectedRevision { expected: ExpectedRevision::Exact(1), actual: Some(2) };
    /// assert!(!conflict.is_retryable());
    /// assert!(Error::Timeout(std::time::Duration::from_secs(1)).is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        match self {
            #[cfg(feature = "http")]
            Self::Transport(_) => true,
            Self::Timeout(_) | Self::Server { .. } => true,
            Self::SubscriptionEnded { code, .. } => code == "shutting_down",
            _ => false,
        }
    }

    /// Builds the error for a non-success answer from its status and JSON body.
    #[cfg(feature = "http")]
    pub(crate) fn from_response(status: u16, body: &[u8]) -> Self {
        use skald_proto::{ErrorBody, ErrorDetails};
        // A body that is not an error body (a proxy's page) still gives a readable error.
        let parsed: ErrorBody = serde_json::from_slice(body)
            .unwrap_or_else(|_| ErrorBody::new("", String::from_utf8_lossy(body).into_owned()));
        let ErrorBody {
            error: code,
            message,
            details,
        } = parsed;
        match (status, code.as_str(), details) {
            (409, _, ErrorDetails::WrongExpectedRevision { expected, actual }) => {
                Self::WrongExpectedRevision { expected, actual }
            }
            (409, "duplicate_event_id", _) => Self::DuplicateEventId { message },
            (404, "stream_not_found" | "event_not_found", _) => Self::StreamNotFound { message },
            (410, _, _) => Self::StreamDeleted { message },
            (413, _, details) => Self::TooLarge {
                message,
                limit: match details {
                    ErrorDetails::TooLarge { limit } => Some(limit),
                    _ => None,
                },
            },
            (401, _, _) => Self::Unauthorized { message },
            (403, _, _) => Self::Forbidden { message },
            (500..=599, _, _) => Self::Server {
                status,
                code,
                message,
            },
            _ => Self::BadRequest { code, message },
        }
    }
}

impl From<skald_proto::DecodeError> for Error {
    fn from(e: skald_proto::DecodeError) -> Self {
        Self::Decode(e.0)
    }
}

#[cfg(all(test, feature = "http"))]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_codes_map_to_variants() {
        let body = |code: &str| format!(r#"{{"error":"{code}","message":"m"}}"#).into_bytes();
        assert!(matches!(
            Error::from_response(401, &body("unauthorized")),
            Error::Unauthorized { .. }
        ));
        assert!(matches!(
            Error::from_response(403, &body("forbidden")),
            Error::Forbidden { .. }
        ));
        assert!(matches!(
            Error::from_response(410, &body("stream_deleted")),
            Error::StreamDeleted { .. }
        ));
        assert!(matches!(
            Error::from_response(503, &body("unavailable")),
            Error::Server { status: 503, .. }
        ));
        let conflict = br#"{"error":"wrong_expected_revision","message":"m","expected":"no_stream","actual":4}"#;
        assert!(matches!(
            Error::from_response(409, conflict),
            Error::WrongExpectedRevision {
                expected: ExpectedRevision::NoStream,
                actual: Some(4)
            }
        ));
        let too_large = br#"{"error":"payload_too_large","message":"m","limit":1024}"#;
        assert!(matches!(
            Error::from_response(413, too_large),
            Error::TooLarge {
                limit: Some(1024),
                ..
            }
        ));
        // A body that is not JSON (a proxy's error page) still gives a readable error.
        match Error::from_response(502, b"<html>bad gateway</html>") {
            Error::Server {
                status: 502,
                message,
                ..
            } => assert!(message.contains("bad gateway")),
            other => panic!("{other:?}"),
        }
    }
}
