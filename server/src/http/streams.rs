//! `/streams/{stream}`: appends, stream reads (with long-poll) and single events.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::collections::HashSet;
use std::time::Duration;

use super::auth::Caller;
use super::error::ApiError;
use super::extract::{parse_json, read_body, QueryParams};
use super::wire::{append_result, event_json, page_body, AppendBody, EventBody, StreamPage};
use super::{parse_direction, AppState};
use crate::model::{
    check_event_type, ExpectedRevision, NewEvent, StreamName, MAX_EVENTS_PER_APPEND,
};
use crate::model::{ContentType, Direction, StreamRead};
use crate::service::{StreamQuery, MAX_WAIT};

/// Most events one read returns.
pub const MAX_READ_LIMIT: u64 = 4096;
/// Events a read returns when `limit` is absent.
pub const DEFAULT_READ_LIMIT: u64 = 100;

pub async fn append(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let stream = stream_name(path)?;
    caller.check_stream(&stream)?;
    let bytes = read_body(
        &headers,
        body,
        state.limits.max_append_bytes,
        "--max-append-bytes",
        state.limits.body_timeout,
    )
    .await?;
    let (expected, events) = decode_append(&bytes, state.limits.max_event_bytes)?;
    let outcome = state
        .service
        .append(stream.clone(), expected, events)
        .await?;
    tracing::debug!(
        stream = %stream,
        first_position = outcome.first_position,
        last_position = outcome.last_position,
        replay = outcome.idempotent_replay,
        "appended"
    );
    let status = if outcome.idempotent_replay {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(append_result(stream.as_str(), &outcome))).into_response())
}

pub async fn read(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let stream = stream_name(path)?;
    caller.check_stream(&stream)?;
    let mut params = QueryParams::parse(raw.as_deref())?;
    let from = params.take_u64("from")?;
    let direction = parse_direction(params.take_str("direction"))?;
    let limit = params.take_bounded("limit", 1, MAX_READ_LIMIT, DEFAULT_READ_LIMIT)?;
    let wait = wait_param(&mut params, direction)?;
    params.finish()?;
    let _slot = (!wait.is_zero())
        .then(|| state.slots.long_poll())
        .transpose()?;
    let query = StreamQuery {
        from,
        direction,
        limit: limit as usize,
        wait,
    };
    let slice = found(
        state.service.read_stream(stream.clone(), query).await?,
        &stream,
    )?;
    let page = StreamPage {
        stream: stream.as_str().to_owned(),
        events: Vec::new(),
        next_revision: slice.next_revision,
        last_revision: slice.last_revision,
    };
    page_body(&page, slice.events)
}

pub async fn read_one(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((raw_stream, raw_revision)) = path.map_err(path_error)?;
    let stream = parse_stream(&raw_stream)?;
    caller.check_stream(&stream)?;
    let revision = raw_revision.parse::<u64>().map_err(|_| {
        ApiError::bad_request(
            "invalid_revision",
            format!("revision must be a non-negative integer, got '{raw_revision}'"),
        )
    })?;
    let event = found(
        state.service.read_event(stream.clone(), revision).await?,
        &stream,
    )?
    .ok_or(ApiError::EventNotFound { stream, revision })?;
    Ok(Json(event_json(event)?).into_response())
}

/// The found value, or the 404/410 error for a missing or tombstoned stream.
pub(super) fn found<T>(read: StreamRead<T>, stream: &StreamName) -> Result<T, ApiError> {
    match read {
        StreamRead::Found(value) => Ok(value),
        StreamRead::NotFound => Err(ApiError::StreamNotFound(stream.clone())),
        StreamRead::Tombstoned => Err(ApiError::StreamDeleted(stream.clone())),
    }
}

/// `wait_ms` (0..=60000), valid on forward reads only.
pub fn wait_param(params: &mut QueryParams, direction: Direction) -> Result<Duration, ApiError> {
    let max = MAX_WAIT.as_millis() as u64;
    let wait_ms = params.take_bounded("wait_ms", 0, max, 0)?;
    if wait_ms > 0 && direction == Direction::Backward {
        return Err(ApiError::bad_request(
            "invalid_query",
            "wait_ms applies to forward reads only",
        ));
    }
    Ok(Duration::from_millis(wait_ms))
}

pub(super) fn stream_name(
    path: Result<Path<String>, PathRejection>,
) -> Result<StreamName, ApiError> {
    let Path(raw) = path.map_err(path_error)?;
    parse_stream(&raw)
}

pub(super) fn parse_stream(raw: &str) -> Result<StreamName, ApiError> {
    StreamName::parse(raw)
        .map_err(|e| ApiError::bad_request("invalid_stream_name", format!("stream name {e}")))
}

pub(super) fn path_error(e: PathRejection) -> ApiError {
    ApiError::bad_request("invalid_path", e.body_text())
}

/// Checks that every JSON reader can decode `json` (see `check_raw_json`);
/// `field` names it in the error (formatted only then).
pub(super) fn check_json_text(
    field: std::fmt::Arguments<'_>,
    json: &serde_json::value::RawValue,
) -> Result<(), ApiError> {
    crate::model::check_raw_json(json)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("{field} {e}")))
}

/// Decodes and checks an append body: the expected revision and the events
/// as the writer stores them.
pub(crate) fn decode_append(
    bytes: &[u8],
    max_event_bytes: usize,
) -> Result<(ExpectedRevision, Vec<NewEvent>), ApiError> {
    let body: AppendBody = parse_json(bytes)?;
    let events = validate_events(body.events, max_event_bytes)?;
    Ok((body.expected_revision, events))
}

/// The text of a parsed JSON value, without copying it.
fn raw_text(raw: Box<serde_json::value::RawValue>) -> String {
    Box::<str>::from(raw).into()
}

/// Checks every event of an append and turns it into what the writer stores.
fn validate_events(
    events: Vec<EventBody>,
    max_event_bytes: usize,
) -> Result<Vec<NewEvent>, ApiError> {
    if events.is_empty() || events.len() > MAX_EVENTS_PER_APPEND {
        return Err(ApiError::bad_request(
            "invalid_body",
            format!(
                "events: an append holds 1 to {MAX_EVENTS_PER_APPEND} events, got {}",
                events.len()
            ),
        ));
    }
    let mut seen = HashSet::with_capacity(events.len());
    events
        .into_iter()
        .enumerate()
        .map(|(i, event)| {
            check_event_type(&event.event_type).map_err(|e| {
                ApiError::bad_request("invalid_body", format!("events[{i}].type {e}"))
            })?;
            if let Some(metadata) = &event.metadata {
                if !metadata.get().trim_start().starts_with('{') {
                    return Err(ApiError::bad_request(
                        "invalid_body",
                        format!("events[{i}].metadata must be a JSON object"),
                    ));
                }
            }
            check_json_text(format_args!("events[{i}].data"), &event.data)?;
            if let Some(metadata) = &event.metadata {
                check_json_text(format_args!("events[{i}].metadata"), metadata)?;
            }
            let size = event.data.get().len()
                + event.metadata.as_ref().map_or(0, |m| m.get().len())
                + event.event_type.len();
            if size > max_event_bytes {
                return Err(ApiError::TooLarge {
                    code: "event_too_large",
                    message: format!(
                        "events[{i}] is {size} bytes, above the limit of {max_event_bytes} bytes (set by --max-event-bytes)"
                    ),
                    limit: max_event_bytes,
                });
            }
            let id = event.id.unwrap_or_else(uuid::Uuid::now_v7);
            if !seen.insert(id) {
                return Err(ApiError::bad_request(
                    "duplicate_event_id_in_batch",
                    format!("events[{i}].id {id} appears twice in this append"),
                ));
            }
            Ok(NewEvent {
                content_type: ContentType::Json,
                id,
                event_type: event.event_type,
                data: raw_text(event.data),
                metadata: event.metadata.map(raw_text),
            })
        })
        .collect()
}
