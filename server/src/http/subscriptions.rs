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
use skald_proto::Place;

use super::auth::Caller;
use super::error::ApiError;
use super::extract::QueryParams;
use super::streams::parse_stream;
use super::wire::{write_event_line, SubscriptionLine};
use super::AppState;
use crate::model::AllFilter;
use crate::subscriptions::{self, Message, Options, Start, Target};

/// Default and bounds of `heartbeat_ms`.
const HEARTBEAT_MS: (u64, u64, u64) = (100, 300_000, 10_000);
/// Default and bounds of `checkpoint_every`.
const CHECKPOINT_EVERY: (u64, u64, u64) = (1, 10_000_000, 1_000);
/// Default and bounds of `fell_behind_after`.
const FELL_BEHIND_AFTER: (u64, u64, u64) = (1, u64::MAX, 10_000);

pub async fn all(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut params = QueryParams::parse(raw.as_deref())?;
    let filter = AllFilter {
        stream_prefix: params.take_str("stream_prefix").filter(|p| !p.is_empty()),
        type_prefix: params.take_str("type_prefix").filter(|p| !p.is_empty()),
        scope: caller.scope(),
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
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let Path(raw_stream) =
        path.map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))?;
    let stream = parse_stream(&raw_stream)?;
    caller.check_stream(&stream)?;
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
    // Held by the body until the subscription ends.
    let slot = state.slots.subscription()?;
    let messages = subscriptions::subscribe(Arc::clone(&state.service), options);
    // Stop right after the first line that ends the subscription.
    let lines = messages
        .map(move |message| {
            let _slot = &slot;
            encode(message, sse, by_revision)
        })
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

/// One message as bytes, and whether it is the last one. Stream subscriptions
/// count in revisions (`"revision"`, SSE ids), `$all` in positions.
fn encode(message: Message, sse: bool, by_revision: bool) -> (Bytes, bool) {
    let place = |value: Option<u64>| {
        if by_revision {
            Place::Revision(value)
        } else {
            Place::Position(value)
        }
    };
    let (line, id) = match message {
        Message::Event(event) => {
            let id = if by_revision {
                event.revision
            } else {
                event.position
            };
            // Written by hand, as pages are (`wire::write_event_line`): the
            // event's JSON is not parsed again for every subscriber.
            let payload = event.data.len() + event.metadata.as_ref().map_or(0, String::len);
            let mut bytes = Vec::with_capacity(payload + 320);
            if sse {
                bytes.extend_from_slice(format!("event: event\nid: {id}\ndata: ").as_bytes());
            }
            write_event_line(&mut bytes, &event);
            bytes.extend_from_slice(if sse { b"\n\n" } else { b"\n" });
            return (Bytes::from(bytes), false);
        }
        Message::CaughtUp { position } => (SubscriptionLine::CaughtUp(place(position)), None),
        Message::FellBehind { position } => {
            (SubscriptionLine::FellBehind(place(Some(position))), None)
        }
        Message::Checkpoint { position } => (
            SubscriptionLine::Checkpoint(place(Some(position))),
            Some(position),
        ),
        Message::Heartbeat => (SubscriptionLine::Heartbeat, None),
        Message::Error { code, message } => (
            SubscriptionLine::Error {
                error: code.to_owned(),
                message,
            },
            None,
        ),
    };
    let last = matches!(line, SubscriptionLine::Error { .. });
    let json = serde_json::to_string(&line).expect("subscription lines serialize to JSON");
    let bytes = if sse {
        let kind = match &line {
            SubscriptionLine::Event { .. } => "event",
            SubscriptionLine::CaughtUp(_) => "caught_up",
            SubscriptionLine::FellBehind(_) => "fell_behind",
            SubscriptionLine::Checkpoint(_) => "checkpoint",
            SubscriptionLine::Heartbeat => "heartbeat",
            SubscriptionLine::Error { .. } => "error",
        };
        let id = id.map(|id| format!("id: {id}\n")).unwrap_or_default();
        format!("event: {kind}\n{id}data: {json}\n\n")
    } else {
        format!("{json}\n")
    };
    (Bytes::from(bytes), last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RecordedEvent;

    /// What the server writes for each message, the client's type reads back.
    #[test]
    fn every_line_round_trips_into_the_client_type() {
        let event = RecordedEvent {
            content_type: crate::model::ContentType::Json,
            position: 7,
            stream: crate::model::StreamName::parse("s").expect("name"),
            revision: 2,
            id: uuid::Uuid::from_u128(9),
            event_type: "T".into(),
            data: r#"{"a":[1,2]}"#.into(),
            metadata: Some(r#"{"m":true}"#.into()),
            recorded_at_micros: 1_700_000_000_000_000,
        };
        let cases: Vec<(Message, bool, skald_proto::SubscriptionLine)> = vec![
            (
                Message::Heartbeat,
                false,
                skald_proto::SubscriptionLine::Heartbeat,
            ),
            (
                Message::CaughtUp { position: None },
                false,
                skald_proto::SubscriptionLine::CaughtUp(Place::Position(None)),
            ),
            (
                Message::FellBehind { position: 3 },
                true,
                skald_proto::SubscriptionLine::FellBehind(Place::Revision(Some(3))),
            ),
            (
                Message::Checkpoint { position: 41 },
                false,
                skald_proto::SubscriptionLine::Checkpoint(Place::Position(Some(41))),
            ),
            (
                Message::Error {
                    code: "shutting_down",
                    message: "bye".into(),
                },
                false,
                skald_proto::SubscriptionLine::Error {
                    error: "shutting_down".into(),
                    message: "bye".into(),
                },
            ),
        ];
        for (message, by_revision, want) in cases {
            let (bytes, _) = encode(message, false, by_revision);
            let got: skald_proto::SubscriptionLine =
                serde_json::from_slice(&bytes).expect("the client reads the line");
            assert_eq!(got, want);
        }
        let (bytes, last) = encode(Message::Event(event), false, false);
        assert!(!last);
        match serde_json::from_slice(&bytes).expect("an event line") {
            skald_proto::SubscriptionLine::<serde_json::Value>::Event { event } => {
                assert_eq!(
                    (event.position, event.revision, event.stream.as_str()),
                    (7, 2, "s")
                );
                assert_eq!(event.data, serde_json::json!({"a": [1, 2]}));
                assert_eq!(event.metadata, Some(serde_json::json!({"m": true})));
                assert_eq!(event.recorded_at, "2023-11-14T22:13:20.000000Z");
            }
            other => panic!("{other:?}"),
        }
    }
}
