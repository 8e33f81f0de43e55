//! The one place where an error becomes an HTTP status and a JSON body
//! `{"error": "snake_case_code", "message": "...", ...details}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use skald_proto::{ErrorBody, ErrorDetails};
use uuid::Uuid;

use crate::model::{display_revision, ExpectedRevision, StreamName};
use crate::service::{StorageError, WriteError};

/// Every error the HTTP API answers with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed input; `code` is the snake_case error code.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{message}")]
    TooLarge {
        code: &'static str,
        message: String,
        limit: usize,
    },
    #[error("stream {0} not found")]
    StreamNotFound(StreamName),
    #[error("stream {0} is deleted for good (tombstoned)")]
    StreamDeleted(StreamName),
    #[error("stream {stream} has no event at revision {revision}")]
    EventNotFound { stream: StreamName, revision: u64 },
    #[error("no route for {0}")]
    RouteNotFound(String),
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("the request body did not arrive within {0:?} (set by --body-timeout-secs)")]
    RequestTimeout(std::time::Duration),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("the request body must be JSON (content-type application/json), not {0:?}")]
    UnsupportedMediaType(String),
    #[error("expected revision {expected}, but the stream's last revision is {}", display_revision(*actual))]
    WrongExpectedRevision {
        expected: ExpectedRevision,
        actual: Option<u64>,
    },
    /// A metadata change whose expected version did not hold; `actual` is
    /// the metadata's current version (`None`: never set).
    #[error("expected metadata version {expected}, but the stream's metadata is at version {}", display_revision(*actual))]
    WrongExpectedVersion {
        expected: ExpectedRevision,
        actual: Option<u64>,
    },
    #[error("event id {id} is already stored (position {position}) in a different append")]
    DuplicateEventId { id: Uuid, position: u64 },
    #[error("corrupt event at position {position}: {detail}")]
    CorruptEvent { position: u64, detail: String },
    #[error("storage error: {0}")]
    Storage(String),
    /// A fault of the server itself (a panicked handler, a failed task); the
    /// details are logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
    #[error("{0}")]
    Unavailable(String),
    /// The disk is full: 507 with `Retry-After`; nothing was written. (The
    /// engine's message, with its paths, is logged by the writer, not sent.)
    #[error("the disk holding the data is full; nothing of this request was written, retry once space is freed")]
    InsufficientStorage,
    /// No token, or an unknown one: 401 with `WWW-Authenticate: Bearer`.
    #[error("{message}")]
    Unauthorized {
        message: String,
        /// A token was given but is not known (`error="invalid_token"`).
        invalid_token: bool,
    },
    /// A known token without the right: 403.
    #[error("{0}")]
    Forbidden(String),
    /// A capped resource is exhausted: 503 with `Retry-After`.
    #[error("{message}")]
    Overloaded { code: &'static str, message: String },
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            Self::TooLarge { code, .. } => (StatusCode::PAYLOAD_TOO_LARGE, code),
            Self::StreamNotFound(_) => (StatusCode::NOT_FOUND, "stream_not_found"),
            Self::EventNotFound { .. } => (StatusCode::NOT_FOUND, "event_not_found"),
            Self::StreamDeleted(_) => (StatusCode::GONE, "stream_deleted"),
            Self::RouteNotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Self::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            Self::WrongExpectedRevision { .. } => (StatusCode::CONFLICT, "wrong_expected_revision"),
            Self::WrongExpectedVersion { .. } => (StatusCode::CONFLICT, "wrong_expected_version"),
            Self::DuplicateEventId { .. } => (StatusCode::CONFLICT, "duplicate_event_id"),
            Self::CorruptEvent { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "corrupt_event"),
            Self::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage_error"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::InsufficientStorage => (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage"),
            Self::Overloaded { code, .. } => (StatusCode::SERVICE_UNAVAILABLE, code),
            Self::Unauthorized { .. } => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
        }
    }

    fn details(&self) -> ErrorDetails {
        match self {
            Self::TooLarge { limit, .. } => ErrorDetails::TooLarge {
                limit: *limit as u64,
            },
            Self::StreamNotFound(stream) | Self::StreamDeleted(stream) => ErrorDetails::Stream {
                stream: stream.as_str().to_owned(),
            },
            Self::EventNotFound { stream, revision } => ErrorDetails::Event {
                stream: stream.as_str().to_owned(),
                revision: *revision,
            },
            Self::WrongExpectedRevision { expected, actual }
            | Self::WrongExpectedVersion { expected, actual } => {
                ErrorDetails::WrongExpectedRevision {
                    expected: *expected,
                    actual: *actual,
                }
            }
            Self::DuplicateEventId { id, position } => ErrorDetails::DuplicateEventId {
                id: *id,
                position: *position,
            },
            Self::CorruptEvent { position, .. } => ErrorDetails::Corrupt {
                position: *position,
            },
            _ => ErrorDetails::None {},
        }
    }

    /// The JSON body of this error. The engine's and the server's own faults
    /// are logged in full but answered in general terms: their text may name
    /// files and paths.
    pub fn body(&self) -> ErrorBody {
        let (_, code) = self.status_and_code();
        let message = match self {
            Self::Storage(_) => {
                "the storage engine failed; the details are in the server's log".into()
            }
            Self::Internal(_) => "the server failed; the details are in the server's log".into(),
            other => other.to_string(),
        };
        ErrorBody::new(code, message).with(self.details())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if matches!(self, Self::Overloaded { .. }) {
            // Load or a cluster leader change: retryable, and said so to the client.
            tracing::warn!(error = %self, code, "request refused for now");
        } else if status.is_server_error() {
            tracing::error!(error = %self, code, "request failed");
        }
        let mut response = (status, axum::Json(self.body())).into_response();
        if let Self::Unauthorized { invalid_token, .. } = &self {
            let challenge = if *invalid_token {
                r#"Bearer realm="skald", error="invalid_token""#
            } else {
                r#"Bearer realm="skald""#
            };
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static(challenge),
            );
        }
        let retry_after = match self {
            Self::Overloaded { .. } => Some("1"),
            Self::InsufficientStorage => Some("5"),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static(seconds),
            );
        }
        response
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::CorruptEvent { position, source } => Self::CorruptEvent {
                position,
                detail: source.to_string(),
            },
            StorageError::Internal(detail) => Self::Internal(detail),
            StorageError::NoSpace(_) => Self::InsufficientStorage,
            other => Self::Storage(other.to_string()),
        }
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::WrongExpectedRevision { expected, actual } => {
                Self::WrongExpectedRevision { expected, actual }
            }
            WriteError::DuplicateEventId { id, position } => {
                Self::DuplicateEventId { id, position }
            }
            WriteError::StreamDeleted(stream) => Self::StreamDeleted(stream),
            WriteError::StreamNotFound(stream) => Self::StreamNotFound(stream),
            WriteError::Storage(e) => e.into(),
            WriteError::WriterStopped => Self::Unavailable(e.to_string()),
            WriteError::Busy => Self::Overloaded {
                code: "writer_busy",
                message: e.to_string(),
            },
            WriteError::ClusterUnavailable(_) => Self::Overloaded {
                code: "cluster_unavailable",
                message: e.to_string(),
            },
            WriteError::TooLargeForCluster { max, .. } => Self::TooLarge {
                code: "append_too_large",
                message: e.to_string(),
                limit: max,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_and_internal_faults_keep_their_details_in_the_log() {
        let path = "/srv/skald/data/000123.log";
        for error in [
            ApiError::Storage(format!("IO error: While appending to file: {path}")),
            ApiError::Internal(format!("join failed reading {path}")),
        ] {
            let body = serde_json::to_string(&error.body()).expect("JSON");
            assert!(!body.contains(path), "{body}");
            assert!(body.contains("server's log"), "{body}");
        }
    }

    #[test]
    fn a_401_carries_the_bearer_challenge() {
        for (invalid_token, challenge) in [
            (false, r#"Bearer realm="skald""#),
            (true, r#"Bearer realm="skald", error="invalid_token""#),
        ] {
            let response = ApiError::Unauthorized {
                message: "m".into(),
                invalid_token,
            }
            .into_response();
            assert_eq!(response.status(), 401);
            assert_eq!(
                response.headers()[axum::http::header::WWW_AUTHENTICATE],
                challenge
            );
        }
    }
}
