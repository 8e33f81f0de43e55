//! The one place where an error becomes an HTTP status and a JSON body
//! `{"error": "snake_case_code", "message": "...", ...details}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::wire::expected_revision_json;
use crate::model::{display_revision, ExpectedRevision, StreamName};
use crate::storage::writer::AppendError;
use crate::storage::StorageError;

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
    #[error("expected revision {expected}, but the stream's last revision is {}", display_revision(*actual))]
    WrongExpectedRevision {
        expected: ExpectedRevision,
        actual: Option<u64>,
    },
    #[error("event id {id} is already stored (position {position}) in a different append")]
    DuplicateEventId { id: Uuid, position: u64 },
    #[error("corrupt event at position {position}: {detail}")]
    CorruptEvent { position: u64, detail: String },
    #[error("storage error: {0}")]
    Storage(String),
    #[error("{0}")]
    Unavailable(String),
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
            Self::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Self::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            Self::WrongExpectedRevision { .. } => (StatusCode::CONFLICT, "wrong_expected_revision"),
            Self::DuplicateEventId { .. } => (StatusCode::CONFLICT, "duplicate_event_id"),
            Self::CorruptEvent { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "corrupt_event"),
            Self::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage_error"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }

    fn details(&self, body: &mut Map<String, Value>) {
        match self {
            Self::TooLarge { limit, .. } => {
                body.insert("limit".into(), json!(limit));
            }
            Self::StreamNotFound(stream) | Self::StreamDeleted(stream) => {
                body.insert("stream".into(), json!(stream.as_str()));
            }
            Self::EventNotFound { stream, revision } => {
                body.insert("stream".into(), json!(stream.as_str()));
                body.insert("revision".into(), json!(revision));
            }
            Self::WrongExpectedRevision { expected, actual } => {
                body.insert("expected".into(), expected_revision_json(*expected));
                body.insert("actual".into(), json!(actual));
            }
            Self::DuplicateEventId { id, position } => {
                body.insert("id".into(), json!(id));
                body.insert("position".into(), json!(position));
            }
            Self::CorruptEvent { position, .. } => {
                body.insert("position".into(), json!(position));
            }
            _ => {}
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::error!(error = %self, code, "request failed");
        }
        let mut body = Map::new();
        body.insert("error".into(), json!(code));
        body.insert("message".into(), json!(self.to_string()));
        self.details(&mut body);
        (status, axum::Json(Value::Object(body))).into_response()
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::CorruptEvent { position, source } => Self::CorruptEvent {
                position,
                detail: source.to_string(),
            },
            other => Self::Storage(other.to_string()),
        }
    }
}

impl From<AppendError> for ApiError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::WrongExpectedRevision { expected, actual } => {
                Self::WrongExpectedRevision { expected, actual }
            }
            AppendError::DuplicateEventId { id, position } => {
                Self::DuplicateEventId { id, position }
            }
            AppendError::StreamDeleted(stream) => Self::StreamDeleted(stream),
            AppendError::StreamNotFound(stream) => Self::StreamNotFound(stream),
            AppendError::Storage(e) => e.into(),
            AppendError::WriterStopped => Self::Unavailable(e.to_string()),
        }
    }
}
