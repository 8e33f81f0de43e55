//! `/subscriptions/...`: catch-up subscriptions pushed as NDJSON, or as
//! server-sent events when the client's `Accept` asks for `text/event-stream`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;

use super::error::ApiError;
use super::extract::QueryParams;
use super::streams::parse_stream;
use super::wire::{event_json, EventJson};
use super::AppState;
use crate::storage::AllFilter;
use crate::subscriptions::{self, Message, Options, Start, Target};

/// Default and bounds of `heartbeat_ms`.
const HEARTBEAT_MS: (u64, u64, u64) = (100, 300_000, 10_000);
/// Default and bounds of `checkpoint_every`.
const CHECKPOINT_EVERY: (u64, u64, u64) = (1, 10_000_000, 1_000);
/// Default and bounds of `fell_behind_after`.
const FELL_BEHIND_AFTER: (u64, u64, u64) = (1, u64::MAX, 10_000);

pub async fn all(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut params = QueryParams::parse(raw.as_deref())?;
    let filter = AllFilter {
        stream_prefix: params.take_str("stream_prefix").filter(|p| !p.is_empty()),
        type_prefix: params.take_str("type_prefix").filter(|p| !p.is_empty()),
    };
    let (c_min, c_max, c_default) = CHECKPOINT_EVERY;
    let checkpoint_every = params.take_bounded("checkpoint_every", c_min, c_max, c_default)?;
    start_subscription(
        state,
        &headers,
        params,
        Target::All(filter),
        checkpoint_every,
    )
}

pub async fn stream(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let Path(raw_stream) =
        path.map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))?;
    let stream = parse_stream(&raw_stream)?;
    let params = QueryParams::parse(raw.as_deref())?;
    start_subscription(
        state,
        &headers,
        params,
        Target::Stream(stream),
        CHECKPOINT_EVERY.2,
    )
}

fn start_subscription(
    state: AppState,
    headers: &HeaderMap,
    mut params: QueryParams,
    target: Target,
    checkpoint_every: u64,
) -> Result<Response, ApiError> {
    let sse = wants_sse(headers);
    let mut start = match params.take_str("from").as_deref() {
        None => Start::At(0),
        Some("end") => Start::End,
        Some(raw) => Start::At(raw.parse().map_err(|_| {
            ApiError::bad_request(
                "invalid_query",
                format!(
                    "query parameter 'from' must be a non-negative integer or 'end', got '{raw}'"
                ),
            )
        })?),
    };
    if sse {
        if let Some(last) = last_event_id(headers)? {
            // Resume after the last event (or checkpoint) the client saw.
            start = Start::At(last.saturating_add(1));
        }
    }
    let (h_min, h_max, h_default) = HEARTBEAT_MS;
    let heartbeat =
        Duration::from_millis(params.take_bounded("heartbeat_ms", h_min, h_max, h_default)?);
    let (f_min, f_max, f_default) = FELL_BEHIND_AFTER;
    let fell_behind_after = params.take_bounded("fell_behind_after", f_min, f_max, f_default)?;
    params.finish()?;
    let by_revision = matches!(target, Target::Stream(_));
    let options = Options {
        target,
        start,
        checkpoint_every,
        heartbeat,
        fell_behind_after,
    };
    let messages = subscriptions::subscribe(Arc::clone(&state.service), options);
    // Stop right after the first line that ends the subscription.
    let lines = messages
        .map(move |message| encode(message, sse, by_revision))
        .scan(false, |ended, (bytes, last)| {
            if *ended {
                return futures::future::ready(None);
            }
            *ended = last;
            futures::future::ready(Some(Ok::<_, Infallible>(bytes)))
        });
    let content_type = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    let mut response = Body::from_stream(lines).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("").trim();
    text.parse().map(Some).map_err(|_| {
        ApiError::bad_request(
            "invalid_header",
            format!("Last-Event-ID must be a non-negative integer, got '{text}'"),
        )
    })
}

#[derive(serde::Serialize)]
struct EventLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    event: &'a EventJson,
}

/// One message as bytes, and whether it is the last one. Stream subscriptions
/// count in revisions (`"revision"`, SSE ids), `$all` in positions.
fn encode(message: Message, sse: bool, by_revision: bool) -> (Bytes, bool) {
    let place = if by_revision { "revision" } else { "position" };
    let (kind, id, line, last) = match message {
        Message::Event(event) => {
            let id = if by_revision {
                event.revision
            } else {
                event.position
            };
            match event_json(event) {
                Ok(event) => {
                    let line = serde_json::to_string(&EventLine {
                        kind: "event",
                        event: &event,
                    })
                    .expect("events serialize to JSON");
                    ("event", Some(id), line, false)
                }
                Err(e) => {
                    let body = json!({"type": "error", "error": "corrupt_event", "message": e.to_string()});
                    ("error", None, body.to_string(), true)
                }
            }
        }
        Message::CaughtUp { position } => (
            "caught_up",
            None,
            control("caught_up", place, position),
            false,
        ),
        Message::FellBehind { position } => (
            "fell_behind",
            None,
            control("fell_behind", place, Some(position)),
            false,
        ),
        Message::Checkpoint { position } => {
            let line = control("checkpoint", place, Some(position));
            ("checkpoint", Some(position), line, false)
        }
        Message::Heartbeat => (
            "heartbeat",
            None,
            r#"{"type":"heartbeat"}"#.to_owned(),
            false,
        ),
        Message::Error { code, message } => {
            let line = format!(
                r#"{{"type":"error","error":{},"message":{}}}"#,
                json!(code),
                json!(message)
            );
            ("error", None, line, true)
        }
    };
    let bytes = if sse {
        let id = id.map(|id| format!("id: {id}\n")).unwrap_or_default();
        format!("event: {kind}\n{id}data: {line}\n\n")
    } else {
        format!("{line}\n")
    };
    (Bytes::from(bytes), last)
}

/// A control line with `type` first: `{"type":"caught_up","position":17}`.
fn control(kind: &str, place: &str, value: Option<u64>) -> String {
    format!(r#"{{"type":"{kind}","{place}":{}}}"#, json!(value))
}
