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
use crate::model::{ContentType, Direction, StreamRead, Text};
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
    append_to(&state, &caller, stream, &headers, body).await
}

/// The append handler after its path: the router's (`append`) and the
/// connection's own way to the same route (`api`).
pub(super) async fn append_to(
    state: &AppState,
    caller: &Caller,
    stream: StreamName,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    caller.check_stream(&stream)?;
    let bytes = read_body(
        headers,
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

/// An append body decoded: the expectation and the events.
pub type DecodedAppend = (ExpectedRevision, Vec<NewEvent>);

/// Decodes and checks an append body: the expected revision and the events
/// as the writer stores them (public for `benches/codec.rs`).
pub fn decode_append(bytes: &[u8], max_event_bytes: usize) -> Result<DecodedAppend, ApiError> {
    decode_append_with(bytes, max_event_bytes, &mut uuid::Uuid::now_v7)
}

/// `decode_append`, with `new_id` giving the ids of events without one.
fn decode_append_with(
    bytes: &[u8],
    max_event_bytes: usize,
    new_id: &mut dyn FnMut() -> uuid::Uuid,
) -> Result<DecodedAppend, ApiError> {
    if let Some(decoded) = decode_plain(bytes, max_event_bytes, new_id) {
        return Ok(decoded);
    }
    let body: AppendBody = parse_json(bytes)?;
    let events = validate_events(body.events, max_event_bytes, new_id)?;
    Ok((body.expected_revision, events))
}

/// The fast path of `decode_append` (see `append_body`): the events of a
/// body it vouches for that also pass the checks below; `None` sends the
/// body down the serde path, which has every answer and explains refusals.
fn decode_plain(
    bytes: &[u8],
    max_event_bytes: usize,
    new_id: &mut dyn FnMut() -> uuid::Uuid,
) -> Option<DecodedAppend> {
    // One copy of the body that the events' texts share (see `Text`).
    let whole = std::sync::Arc::new(std::str::from_utf8(bytes).ok()?.to_owned());
    let (expected, plain) = super::append_body::parse(&whole)?;
    let mut seen = HashSet::with_capacity(plain.len());
    let text = |part: &str| Text::part_of(&whole, part);
    let events = plain
        .into_iter()
        .map(|event| {
            let size =
                event.data.len() + event.metadata.map_or(0, str::len) + event.event_type.len();
            let id = event.id.unwrap_or_else(&mut *new_id);
            if size > max_event_bytes || !seen.insert(id) {
                return None;
            }
            Some(NewEvent {
                content_type: ContentType::Json,
                id,
                event_type: text(event.event_type)?,
                data: text(event.data)?,
                metadata: match event.metadata {
                    Some(metadata) => Some(text(metadata)?),
                    None => None,
                },
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some((expected, events))
}

/// The fast path's answer and the serde path's, each on its own, events
/// without an id numbered 1, 2, 3, ... (for the property tests and the fuzz
/// target, which hold the first to agree with the second).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn decode_append_both_ways(
    bytes: &[u8],
    max_event_bytes: usize,
) -> (Option<DecodedAppend>, Result<DecodedAppend, ApiError>) {
    let counter = || {
        let mut next = 0u128;
        move || {
            next += 1;
            uuid::Uuid::from_u128(next)
        }
    };
    let fast = decode_plain(bytes, max_event_bytes, &mut counter());
    let slow = parse_json::<AppendBody>(bytes).and_then(|body| {
        let events = validate_events(body.events, max_event_bytes, &mut counter())?;
        Ok((body.expected_revision, events))
    });
    (fast, slow)
}

/// The text of a parsed JSON value, without copying it.
fn raw_text(raw: Box<serde_json::value::RawValue>) -> String {
    Box::<str>::from(raw).into()
}

/// Checks every event of an append and turns it into what the writer stores.
fn validate_events(
    events: Vec<EventBody>,
    max_event_bytes: usize,
    new_id: &mut dyn FnMut() -> uuid::Uuid,
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
            let id = event.id.unwrap_or_else(&mut *new_id);
            if !seen.insert(id) {
                return Err(ApiError::bad_request(
                    "duplicate_event_id_in_batch",
                    format!("events[{i}].id {id} appears twice in this append"),
                ));
            }
            Ok(NewEvent {
                content_type: ContentType::Json,
                id,
                event_type: event.event_type.into(),
                data: raw_text(event.data).into(),
                metadata: event.metadata.map(|m| raw_text(m).into()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{arb_json, json_tree, proptest_config};
    use proptest::prelude::*;

    fn slow(bytes: &[u8], max_event_bytes: usize) -> Result<DecodedAppend, ApiError> {
        decode_append_both_ways(bytes, max_event_bytes).1
    }

    fn fast(bytes: &[u8], max_event_bytes: usize) -> Option<DecodedAppend> {
        decode_append_both_ways(bytes, max_event_bytes).0
    }

    /// Whitespace as JSON allows it.
    fn ws() -> impl Strategy<Value = &'static str> {
        prop_oneof![Just(""), Just(" "), Just("\n\t"), Just("\r\n  ")]
    }

    /// `"key": value` members, each with whitespace around its tokens.
    fn object(members: Vec<(String, String)>, pad: &[&str]) -> String {
        let pad = |i: usize| pad[i % pad.len()];
        let fields: Vec<String> = members
            .into_iter()
            .enumerate()
            .map(|(i, (k, v))| {
                format!(
                    "{}\"{k}\"{}:{}{v}{}",
                    pad(i),
                    pad(i + 1),
                    pad(i + 2),
                    pad(i + 3)
                )
            })
            .collect();
        format!("{{{}}}", fields.join(","))
    }

    /// Event fields, right and wrong: every kind of value the serde path
    /// takes or refuses for each.
    fn arb_event() -> impl Strategy<Value = Vec<(String, String)>> {
        let id = prop_oneof![
            4 => any::<u128>().prop_map(|n| format!("\"{}\"", uuid::Uuid::from_u128(n))),
            // A few ids, so that appends repeat them (and repeat the ids
            // given to events without one: 1, 2, 3, ...).
            3 => (0u128..4).prop_map(|n| format!("\"{}\"", uuid::Uuid::from_u128(n))),
            1 => Just("null".to_owned()),
            1 => Just("\"0190a1b2000070008000000000000001\"".to_owned()),
            1 => Just("\"{0190a1b2-0000-7000-8000-000000000001}\"".to_owned()),
            1 => Just("\"urn:uuid:0190a1b2-0000-7000-8000-000000000001\"".to_owned()),
            1 => Just("\"0190A1B2-0000-7000-8000-00000000000F\"".to_owned()),
            1 => Just("\"\\u0030190a1b2-0000-7000-8000-000000000001\"".to_owned()),
            1 => Just("\"not-a-uuid\"".to_owned()),
            1 => Just("7".to_owned()),
        ];
        let event_type = prop_oneof![
            6 => "\"[A-Za-z.é-]{1,12}\"",
            1 => Just("\"\"".to_owned()),
            1 => Just(format!("\"{}\"", "t".repeat(300))),
            1 => Just("\"Order\\u0041\"".to_owned()),
            1 => Just("\"tab\there\"".to_owned()),
            1 => Just("3".to_owned()),
        ];
        // Mostly payloads the fast path takes, so its answers get compared.
        let data = prop_oneof![3 => plain_json(), 1 => arb_json()];
        let metadata = prop_oneof![
            4 => data.clone().prop_map(|j| format!("{{\"m\":{j}}}")),
            1 => data.clone(),
            1 => Just("null".to_owned()),
            1 => Just("{}".to_owned()),
        ];
        let field = |name: &str, value: BoxedStrategy<String>, keep: u32, drop: u32| {
            let name = name.to_owned();
            prop_oneof![keep => value.prop_map(move |v| Some((name.clone(), v))), drop => Just(None)]
        };
        (
            field("id", id.boxed(), 3, 1),
            field("type", event_type.boxed(), 12, 1),
            field("data", data.boxed(), 12, 1),
            field("metadata", metadata.boxed(), 2, 1),
            field("surprise", Just("1".to_owned()).boxed(), 1, 15),
            field("data", Just("2".to_owned()).boxed(), 1, 20),
            Just(()).prop_perturb(|(), mut rng| rng.next_u32()),
        )
            .prop_map(|(a, b, c, d, e, f, order)| {
                let mut fields: Vec<(String, String)> =
                    [a, b, c, d, e, f].into_iter().flatten().collect();
                let turn = order as usize % fields.len().max(1);
                fields.rotate_left(turn);
                fields
            })
    }

    /// Append bodies: mostly what clients send, with every kind of fault.
    fn arb_body() -> impl Strategy<Value = Vec<u8>> {
        let expected = prop_oneof![
            Just(None),
            Just(Some("\"any\"".to_owned())),
            Just(Some("\"no_stream\"".to_owned())),
            Just(Some("\"stream_exists\"".to_owned())),
            (0u64..5).prop_map(|n| Some(n.to_string())),
            Just(Some("\"bogus\"".to_owned())),
            Just(Some("-1".to_owned())),
            Just(Some("1e2".to_owned())),
        ];
        let events = proptest::collection::vec(arb_event(), 0..4);
        let fault = prop_oneof![
            12 => Just(None),
            1 => (0usize..400).prop_map(|at| Some(("truncate", at, 0u8))),
            1 => (0usize..400, any::<u8>()).prop_map(|(at, b)| Some(("replace", at, b))),
            1 => (0usize..400, prop_oneof![Just(b','), Just(b']'), Just(b'}'), Just(b'"'), Just(0xff)])
                .prop_map(|(at, b)| Some(("insert", at, b))),
        ];
        (
            expected,
            events,
            proptest::collection::vec(ws(), 4),
            fault,
            any::<bool>(),
        )
            .prop_map(|(expected, events, pad, fault, events_first)| {
                let events: Vec<String> = events.into_iter().map(|e| object(e, &pad)).collect();
                let events = (
                    "events".to_owned(),
                    format!(
                        "[{}{}{}]",
                        pad[0],
                        events.join(&format!(",{}", pad[1])),
                        pad[2]
                    ),
                );
                let mut members = vec![events];
                if let Some(expected) = expected {
                    members.push(("expected_revision".to_owned(), expected));
                }
                if !events_first {
                    members.reverse();
                }
                let mut bytes =
                    format!("{}{}{}", pad[3], object(members, &pad), pad[1]).into_bytes();
                match fault {
                    Some(("truncate", at, _)) => bytes.truncate(at.min(bytes.len())),
                    Some(("replace", at, b)) if !bytes.is_empty() => {
                        let at = at % bytes.len();
                        bytes[at] = b;
                    }
                    Some(("insert", at, b)) => bytes.insert(at.min(bytes.len()), b),
                    _ => {}
                }
                bytes
            })
    }

    /// JSON without anything the fast path hands on: no exponents, no
    /// surrogate escapes, shallow.
    fn plain_json() -> impl Strategy<Value = String> {
        let string = proptest::collection::vec(
            prop_oneof![
                "[a-z 😀é/]{0,6}",
                Just("\\\"".to_owned()),
                Just("\\u00e9".to_owned()),
                Just("\\n".to_owned())
            ],
            0..4,
        )
        .prop_map(|p| format!("\"{}\"", p.concat()));
        let leaf = prop_oneof![
            string.clone(),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<i32>().prop_map(|n| format!("{}.25", n)),
            Just("0".to_owned()),
            Just("true".to_owned()),
            Just("false".to_owned()),
            Just("null".to_owned()),
        ];
        json_tree(leaf.boxed(), string.boxed(), 4, " \n")
    }

    /// Nesting in a payload: the fast path takes the limit and hands on
    /// one more, which the serde path refuses.
    #[test]
    fn the_fast_path_stops_at_the_nesting_limit() {
        let body = |depth: usize| {
            let data = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
            format!(r#"{{"events":[{{"type":"t","data":{data}}}]}}"#)
        };
        let limit = body(crate::model::MAX_JSON_DEPTH);
        assert!(fast(limit.as_bytes(), 1 << 20).is_some());
        assert!(slow(limit.as_bytes(), 1 << 20).is_ok());
        let past = body(crate::model::MAX_JSON_DEPTH + 1);
        assert!(fast(past.as_bytes(), 1 << 20).is_none());
        assert!(slow(past.as_bytes(), 1 << 20).is_err());
    }

    proptest! {
        #![proptest_config(proptest_config(4000))]

        /// The fast path answers only what the serde path answers the same.
        #[test]
        fn the_fast_path_agrees_with_serde(body in arb_body(), small in any::<bool>()) {
            let max = if small { 96 } else { 1 << 20 };
            if let Some(decoded) = fast(&body, max) {
                let text = String::from_utf8_lossy(&body);
                prop_assert_eq!(Some(decoded), slow(&body, max).ok(), "{}", text);
            }
        }

        /// And it does answer the usual appends.
        #[test]
        fn the_fast_path_takes_usual_appends(
            events in proptest::collection::vec(
                (any::<Option<u128>>(), "[A-Za-z-]{1,12}", plain_json(), proptest::option::of(plain_json())),
                1..20,
            ),
            pad in proptest::collection::vec(ws(), 4),
            expected in proptest::option::of(0u64..9),
        ) {
            let events: Vec<String> = events
                .into_iter()
                .map(|(id, event_type, data, metadata)| {
                    let mut fields = vec![("type".to_owned(), format!("\"{event_type}\"")), ("data".to_owned(), data)];
                    if let Some(id) = id {
                        fields.insert(0, ("id".to_owned(), format!("\"{}\"", uuid::Uuid::from_u128(id))));
                    }
                    if let Some(metadata) = metadata {
                        fields.push(("metadata".to_owned(), format!("{{\"m\": {metadata}}}")));
                    }
                    object(fields, &pad)
                })
                .collect();
            let mut members = vec![("events".to_owned(), format!("[{}]", events.join(",")))];
            if let Some(expected) = expected {
                members.push(("expected_revision".to_owned(), expected.to_string()));
            }
            let body = object(members, &pad);
            let decoded = fast(body.as_bytes(), 1 << 20);
            prop_assert!(decoded.is_some(), "{}", body);
            prop_assert_eq!(decoded, slow(body.as_bytes(), 1 << 20).ok(), "{}", body);
        }
    }
}
