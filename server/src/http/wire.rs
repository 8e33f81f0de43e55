//! The JSON shapes of requests and responses (see `docs/api.md`): the types of
//! `skald-proto`, defined once for server and client, with payloads as
//! `Box<RawValue>` so stored JSON goes out without being parsed into a tree;
//! and the conversions from domain types into them.

use std::time::{Duration, UNIX_EPOCH};

use axum::response::IntoResponse;
use serde_json::value::RawValue;
use skald_proto as wire;

use super::error::ApiError;
use crate::model::{AppendOutcome, RecordedEvent};
use crate::model::{ContentType, StreamState};

/// Body of `POST /streams/{stream}`.
pub type AppendBody = wire::AppendRequest<Box<RawValue>>;
/// One event of an append body.
pub type EventBody = wire::NewEvent<Box<RawValue>>;
/// An event as every read returns it.
pub type EventJson = wire::RecordedEvent<Box<RawValue>>;
/// Answer of `GET /streams/{stream}`.
pub type StreamPage = wire::StreamPage<Box<RawValue>>;
/// Answer of `GET /all`.
pub type AllPage = wire::AllPage<Box<RawValue>>;
/// Body of `PUT /streams/{stream}/metadata`.
pub type MetadataBody = wire::StreamMetadata<Box<RawValue>>;
/// Answer of `GET`/`PUT /streams/{stream}/metadata`.
pub type MetadataAnswer = wire::StreamMetadataAnswer<Box<RawValue>>;
/// A catalog entry.
pub type StreamInfo = wire::StreamInfo<Box<RawValue>>;
/// A page of the catalog.
pub type CatalogPage = wire::CatalogPage<Box<RawValue>>;
/// One line of a subscription.
pub type SubscriptionLine = wire::SubscriptionLine<Box<RawValue>>;

/// A stream's metadata as the API shows it.
pub fn metadata_answer(stream: &str, state: &StreamState) -> MetadataAnswer {
    let metadata = &state.metadata;
    MetadataAnswer {
        version: state.metadata_version.map(|v| v.revision),
        stream: stream.to_owned(),
        max_count: metadata.max_count,
        max_age_secs: metadata.max_age_secs,
        truncate_before: metadata.truncate_before,
        // Stored only after being parsed as a JSON object.
        custom: metadata
            .custom
            .clone()
            .and_then(|c| RawValue::from_string(c).ok()),
    }
}

/// Answer of a successful append.
pub fn append_result(stream: &str, o: &AppendOutcome) -> wire::AppendResult {
    wire::AppendResult {
        stream: stream.to_owned(),
        first_revision: o.first_revision,
        last_revision: o.last_revision,
        first_position: o.first_position,
        last_position: o.last_position,
    }
}

/// A stored event for a response; its JSON is checked, not re-encoded.
pub fn event_json(e: RecordedEvent) -> Result<EventJson, ApiError> {
    let position = e.position;
    let corrupt = |what: &str, err: serde_json::Error| ApiError::CorruptEvent {
        position,
        detail: format!("stored {what} is not JSON: {err}"),
    };
    let data = RawValue::from_string(e.data).map_err(|err| corrupt("data", err))?;
    let metadata = e
        .metadata
        .map(RawValue::from_string)
        .transpose()
        .map_err(|err| corrupt("metadata", err))?;
    let at = system_time(e.recorded_at_micros);
    Ok(EventJson {
        stream: e.stream.as_str().to_owned(),
        revision: e.revision,
        position,
        id: e.id,
        event_type: e.event_type,
        data,
        metadata,
        recorded_at: humantime::format_rfc3339_micros(at).to_string(),
        content_type: match e.content_type {
            ContentType::Json => None,
            binary => Some(binary.media_type().to_owned()),
        },
    })
}

/// Converts stored events for a response.
pub fn events_json(events: Vec<RecordedEvent>) -> Result<Vec<EventJson>, ApiError> {
    events.into_iter().map(event_json).collect()
}

/// The JSON body of a page: `page` (built with no events) serialized with
/// `events` in its `events` field, each event converted and written in turn and
/// dropped once written, so a page's events and their JSON text are never both
/// whole in memory (a page of 1 MiB events costs about one page, not two).
pub fn page_body<P: serde::Serialize>(
    page: &P,
    events: Vec<RecordedEvent>,
) -> Result<axum::response::Response, ApiError> {
    const EMPTY: &[u8] = br#""events":[]"#;
    let internal = |e: serde_json::Error| ApiError::Internal(e.to_string());
    let shell = serde_json::to_vec(page).map_err(internal)?;
    // `"events":[]` cannot occur inside a JSON string (its quotes would be
    // escaped), so its first occurrence is the field.
    let at = shell
        .windows(EMPTY.len())
        .position(|w| w == EMPTY)
        .ok_or_else(|| ApiError::Internal("a page without an empty events field".into()))?;
    let split = at + EMPTY.len() - 1;
    let payload: usize = events
        .iter()
        .map(|e| e.data.len() + e.metadata.as_ref().map_or(0, String::len) + 256)
        .sum();
    let mut body = Vec::with_capacity(shell.len() + payload);
    body.extend_from_slice(&shell[..split]);
    for (i, event) in events.into_iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        write_event(&mut body, &event, false).map_err(internal)?;
    }
    body.extend_from_slice(&shell[split..]);
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// Writes `e` as [`event_json`] serializes it, with its data and metadata as
/// stored: they were checked as JSON when they were appended, and the
/// record's CRC when it was read, so a page does not parse each event's JSON
/// again (that was a fifth of the CPU of a `$all` scan: docs/benchmarks.md,
/// "Issue 11, thirteenth pass").
///
/// With `one_line`, every line break in the payloads becomes a space, so the
/// event fits on one NDJSON line or one SSE `data:` field: a payload is kept
/// as the client sent it, pretty-printed or not, and in valid JSON text a raw
/// `\n` or `\r` can only be whitespace between tokens (inside strings they
/// are escaped), where a space means the same.
fn write_event(
    body: &mut Vec<u8>,
    e: &RecordedEvent,
    one_line: bool,
) -> Result<(), serde_json::Error> {
    use std::io::Write as _;
    body.extend_from_slice(br#"{"stream":"#);
    serde_json::to_writer(&mut *body, e.stream.as_str())?;
    body.extend_from_slice(br#","revision":"#);
    serde_json::to_writer(&mut *body, &e.revision)?;
    body.extend_from_slice(br#","position":"#);
    serde_json::to_writer(&mut *body, &e.position)?;
    body.extend_from_slice(br#","id":""#);
    body.extend_from_slice(
        e.id.hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer())
            .as_bytes(),
    );
    body.extend_from_slice(br#"","type":"#);
    serde_json::to_writer(&mut *body, &e.event_type)?;
    body.extend_from_slice(br#","data":"#);
    write_payload(body, &e.data, one_line);
    body.extend_from_slice(br#","metadata":"#);
    write_payload(body, e.metadata.as_deref().unwrap_or("null"), one_line);
    write!(
        body,
        r#","recorded_at":"{}""#,
        humantime::format_rfc3339_micros(system_time(e.recorded_at_micros))
    )
    .map_err(serde_json::Error::io)?;
    if e.content_type != ContentType::Json {
        body.extend_from_slice(br#","content_type":"#);
        serde_json::to_writer(&mut *body, e.content_type.media_type())?;
    }
    body.push(b'}');
    Ok(())
}

/// Stored JSON text, its line breaks as spaces when `one_line`.
fn write_payload(body: &mut Vec<u8>, text: &str, one_line: bool) {
    let start = body.len();
    body.extend_from_slice(text.as_bytes());
    if one_line {
        for byte in &mut body[start..] {
            if matches!(*byte, b'\n' | b'\r') {
                *byte = b' ';
            }
        }
    }
}

/// One subscription line's JSON for `e` (`{"type":"event","event":{..}}`, as
/// serializing [`SubscriptionLine::Event`] of [`event_json`] writes it, but
/// on one line whatever the payloads' whitespace), appended to `line`.
pub fn write_event_line(line: &mut Vec<u8>, e: &RecordedEvent) {
    line.extend_from_slice(br#"{"type":"event","event":"#);
    // Writing into a `Vec` cannot fail, and a `str` or an integer always
    // serializes.
    write_event(line, e, true).expect("an event serializes into memory");
    line.push(b'}');
}

/// A time in µs since the Unix epoch.
fn system_time(micros: u64) -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_micros(micros)
}

/// A time in µs since the Unix epoch as RFC 3339 text; `None` for 0 (never).
pub fn time_text(micros: u64) -> Option<String> {
    (micros > 0).then(|| humantime::format_rfc3339_micros(system_time(micros)).to_string())
}

#[cfg(test)]
mod tests {
    //! Every wire type: what the server writes (payloads as `Box<RawValue>`), the
    //! client's type (payloads as `serde_json::Value`) reads back the same; and
    //! what the client sends, the server parses.

    use serde::de::DeserializeOwned;
    use serde::Serialize;
    use serde_json::{json, Value};
    use skald_proto::{
        AppendResult, EngineStats, ErrorBody, ErrorDetails, Health, JobReport, JobResult,
        JobStarted, Problem, ScavengeHistory, ServerInfo, Stats, VerifyHistory,
    };

    use super::*;
    use crate::http::error::ApiError;
    use crate::model::{ExpectedRevision, StreamName};

    /// Serializes `sent` and reads it as `T`.
    fn read_as<T: DeserializeOwned>(sent: &impl Serialize) -> T {
        let text = serde_json::to_string(sent).expect("serialize");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    fn stored_event() -> RecordedEvent {
        RecordedEvent {
            content_type: crate::model::ContentType::Json,
            position: 12,
            stream: StreamName::parse("order-1").expect("name"),
            revision: 3,
            id: uuid::Uuid::from_u128(0xabc),
            event_type: "OrderPlaced".into(),
            data: r#"{"total": 30, "items": ["a"]}"#.into(),
            metadata: None,
            recorded_at_micros: 1_000_001,
        }
    }

    async fn body_of(response: axum::response::Response) -> Vec<u8> {
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await;
        body.expect("body").to_vec()
    }

    proptest::proptest! {
        #![proptest_config(crate::testing::proptest_config(256))]

        /// A page's hand-written event is byte for byte what serializing
        /// `event_json` writes, whatever the names, payloads and numbers.
        #[test]
        fn a_written_event_is_the_event_json_serialized(
            stream in "[a-z0-9/\\-]{1,8}|.{1,8}",
            event_type in "\\PC{1,8}|[\"\\\\\u{0}-\u{1f}]{1,4}",
            data in crate::testing::arb_json(),
            metadata in proptest::option::of(crate::testing::arb_json()),
            (position, revision, id) in (proptest::prelude::any::<u64>(), proptest::prelude::any::<u64>(), proptest::prelude::any::<u128>()),
            recorded_at_micros in 0u64..253_402_300_799_999_999,
            binary in proptest::prelude::any::<bool>(),
        ) {
            let event = RecordedEvent {
                content_type: if binary { crate::model::ContentType::Binary } else { crate::model::ContentType::Json },
                position,
                stream: StreamName::from_stored(stream),
                revision,
                id: uuid::Uuid::from_u128(id),
                event_type,
                data,
                metadata,
                recorded_at_micros,
            };
            let mut written = Vec::new();
            write_event(&mut written, &event, false).expect("written");
            let serialized = serde_json::to_vec(&event_json(event).expect("JSON")).expect("serialized");
            proptest::prop_assert_eq!(String::from_utf8(written).expect("UTF-8"), String::from_utf8(serialized).expect("UTF-8"));
        }
    }

    /// `arb_json` texts spread over lines: a line break after every `,` and
    /// `:` (which `arb_json` writes only between tokens), as pretty-printers do.
    fn arb_multiline_json() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::strategy::Strategy as _;
        crate::testing::arb_json().prop_map(|j| j.replace(',', ",\n  ").replace(':', ":\r\n"))
    }

    proptest::proptest! {
        #![proptest_config(crate::testing::proptest_config(256))]

        /// A subscription's event line is one line, whatever line breaks the
        /// payloads hold, and is otherwise what serializing the line of
        /// `event_json` writes, the payloads' line breaks read as spaces.
        #[test]
        fn an_event_line_is_one_line_of_the_event_json(
            data in arb_multiline_json(),
            metadata in proptest::option::of(arb_multiline_json()),
            binary in proptest::prelude::any::<bool>(),
        ) {
            let mut event = stored_event();
            event.content_type = if binary { crate::model::ContentType::Binary } else { crate::model::ContentType::Json };
            event.data = data;
            event.metadata = metadata;
            let mut line = Vec::new();
            write_event_line(&mut line, &event);
            proptest::prop_assert!(!line.iter().any(|b| matches!(b, b'\n' | b'\r')));
            fn spaced(text: &str) -> String {
                text.replace(['\n', '\r'], " ")
            }
            event.data = spaced(&event.data);
            event.metadata = event.metadata.as_deref().map(spaced);
            let serialized = serde_json::to_vec(&SubscriptionLine::Event {
                event: event_json(event).expect("JSON"),
            })
            .expect("serialized");
            proptest::prop_assert_eq!(String::from_utf8(line).expect("UTF-8"), String::from_utf8(serialized).expect("UTF-8"));
        }
    }

    /// A pretty-printed payload comes out of an event line as the same JSON.
    #[test]
    fn a_pretty_printed_payload_reads_back_from_an_event_line() {
        let data = json!({"order": {"lines": [1, 2.5, "x\ny"], "note": null}});
        let mut event = stored_event();
        event.data = serde_json::to_string_pretty(&data).expect("pretty");
        event.metadata = Some("{\r\n\t\"k\": [\r\n]\r\n}".into());
        assert!(event.data.contains('\n'));
        let mut line = Vec::new();
        write_event_line(&mut line, &event);
        let read: skald_proto::SubscriptionLine = serde_json::from_slice(&line).expect("a line");
        match read {
            skald_proto::SubscriptionLine::Event { event } => {
                assert_eq!(event.data, data);
                assert_eq!(event.metadata, Some(json!({"k": []})));
            }
            other => panic!("{other:?}"),
        }
    }

    /// `page_body` writes exactly what serializing the whole page would.
    #[tokio::test]
    async fn page_bodies_are_the_pages_serialized() {
        let events: Vec<_> = (0..3)
            .map(|n| {
                let mut event = stored_event();
                event.revision = n;
                event.metadata = (n == 1).then(|| r#"{"k": "\"events\":[]"}"#.into());
                event
            })
            .collect();
        for count in [0, 1, 3] {
            let events = events[..count].to_vec();
            let whole: Vec<_> = events
                .iter()
                .cloned()
                .map(|e| event_json(e).expect("event"))
                .collect();
            let page = StreamPage {
                stream: r#"a"events":[]b"#.into(),
                events: Vec::new(),
                next_revision: Some(4),
                last_revision: 9,
            };
            let body = body_of(page_body(&page, events.clone()).expect("body")).await;
            let full = StreamPage {
                events: whole.clone(),
                ..page
            };
            assert_eq!(body, serde_json::to_vec(&full).expect("json"));
            let page = AllPage {
                events: Vec::new(),
                next_position: None,
                head_position: Some(12),
            };
            let body = body_of(page_body(&page, events).expect("body")).await;
            let full = AllPage {
                events: whole,
                ..page
            };
            assert_eq!(body, serde_json::to_vec(&full).expect("json"));
        }
    }

    #[test]
    fn events_and_pages() {
        let event = event_json(stored_event()).expect("event");
        let client: skald_proto::RecordedEvent = read_as(&event);
        assert_eq!(
            (
                client.position,
                client.revision,
                client.stream.as_str(),
                client.event_type.as_str()
            ),
            (12, 3, "order-1", "OrderPlaced")
        );
        assert_eq!(client.data, json!({"total": 30, "items": ["a"]}));
        assert_eq!(
            (client.metadata, client.recorded_at.as_str()),
            (None, "1970-01-01T00:00:01.000001Z")
        );
        assert_eq!(client.id, uuid::Uuid::from_u128(0xabc));

        let page = StreamPage {
            stream: "order-1".into(),
            events: vec![event_json(stored_event()).expect("event")],
            next_revision: Some(4),
            last_revision: 9,
        };
        let client: skald_proto::StreamPage = read_as(&page);
        assert_eq!(
            (
                client.events.len(),
                client.next_revision,
                client.last_revision
            ),
            (1, Some(4), 9)
        );
        let page = AllPage {
            events: vec![event_json(stored_event()).expect("event")],
            next_position: None,
            head_position: Some(12),
        };
        let client: skald_proto::AllPage = read_as(&page);
        assert_eq!(
            (
                client.events.len(),
                client.next_position,
                client.head_position
            ),
            (1, None, Some(12))
        );
        let outcome = AppendOutcome {
            first_revision: 0,
            last_revision: 1,
            first_position: 5,
            last_position: 6,
            idempotent_replay: false,
        };
        let result = append_result("s", &outcome);
        assert_eq!(read_as::<AppendResult>(&result), result);
    }

    #[test]
    fn requests_the_client_sends_the_server_parses() {
        let request = skald_proto::AppendRequest {
            expected_revision: ExpectedRevision::Exact(4),
            events: vec![skald_proto::NewEvent {
                id: Some(uuid::Uuid::from_u128(1)),
                event_type: "T".into(),
                data: json!({"a": 1}),
                metadata: Some(json!({"m": "x"})),
            }],
        };
        let parsed: AppendBody = read_as(&request);
        assert_eq!(parsed.expected_revision, ExpectedRevision::Exact(4));
        assert_eq!(parsed.events[0].data.get(), r#"{"a":1}"#);
        assert_eq!(
            parsed.events[0].metadata.as_ref().map(|m| m.get()),
            Some(r#"{"m":"x"}"#)
        );
        let metadata = skald_proto::StreamMetadata::<Value> {
            max_count: Some(3),
            custom: Some(json!({"owner": "ann"})),
            ..Default::default()
        };
        let parsed: MetadataBody = read_as(&metadata);
        assert_eq!((parsed.max_count, parsed.max_age_secs), (Some(3), None));
        assert_eq!(
            parsed.custom.map(|c| c.get().to_owned()).as_deref(),
            Some(r#"{"owner":"ann"}"#)
        );
    }

    #[test]
    fn metadata_and_the_catalog() {
        let metadata = crate::model::StreamMetadata {
            max_count: Some(10),
            max_age_secs: None,
            truncate_before: Some(2),
            custom: Some(r#"{"k":[1]}"#.into()),
        };
        let state = StreamState {
            metadata,
            metadata_version: Some(crate::model::MetadataVersion {
                revision: 3,
                ..Default::default()
            }),
            ..StreamState::default()
        };
        let answer = metadata_answer("s", &state);
        let client: skald_proto::StreamMetadataAnswer = read_as(&answer);
        assert_eq!((client.stream.as_str(), client.version), ("s", Some(3)));
        let client = client.into_metadata();
        assert_eq!(
            (client.max_count, client.truncate_before),
            (Some(10), Some(2))
        );
        assert_eq!(client.custom, Some(json!({"k": [1]})));
        let page = CatalogPage {
            streams: vec![StreamInfo {
                stream: "s".into(),
                first_revision: Some(2),
                last_revision: Some(9),
                event_count: 8,
                bytes: 800,
                created_at: time_text(1),
                last_appended_at: None,
                deleted: false,
                tombstoned: false,
                metadata: metadata_answer("s", &state),
            }],
            next_after: Some("s".into()),
        };
        let client: skald_proto::CatalogPage = read_as(&page);
        assert_eq!(client.next_after.as_deref(), Some("s"));
        assert_eq!(client.streams[0].event_count, 8);
        assert_eq!(
            client.streams[0].created_at.as_deref(),
            Some("1970-01-01T00:00:00.000001Z")
        );
        assert_eq!(client.streams[0].metadata.custom, Some(json!({"k": [1]})));
    }

    #[test]
    fn jobs_stats_and_info() {
        let report = JobReport {
            id: "j".into(),
            dry_run: true,
            phase: "done".into(),
            result: JobResult::Completed,
            error: None,
            started_at: "2026-11-26T15:00:00Z".into(),
            finished_at: Some("2026-11-26T15:00:01Z".into()),
            counters: [("events_removed".to_owned(), 7)].into(),
            problems: vec![Problem {
                position: Some(3),
                message: "bad".into(),
            }],
        };
        assert_eq!(read_as::<JobReport>(&report), report);
        let history = ScavengeHistory {
            scavenges: vec![report.clone()],
        };
        assert_eq!(read_as::<ScavengeHistory>(&history), history);
        let history = VerifyHistory {
            verifies: vec![report.clone()],
        };
        assert_eq!(read_as::<VerifyHistory>(&history), history);
        let started = JobStarted { id: "j".into() };
        assert_eq!(read_as::<JobStarted>(&started), started);
        let stats = Stats {
            head_position: Some(4),
            stream_count_estimate: None,
            event_count: 5,
            events_removed_by_scavenging: 0,
            disk_bytes: 1 << 20,
            rocksdb: EngineStats::default(),
            append_rate_per_sec_1m: 1.5,
            append_history: vec![0.0, 2.5],
            read_rate_per_sec_1m: 0.0,
            live_subscriptions: 2,
            long_polls_waiting: 1,
            writer_queue_requests: 3,
            writer_queue_kib: 12,
            open_connections: 3,
            scavenge: Some(report),
            replication: Some(skald_proto::ReplicationStats {
                applied_sequence: 7,
                lag_messages: 2,
                ready: true,
                stopped: false,
            }),
        };
        assert_eq!(read_as::<Stats>(&stats), stats);
        let info = ServerInfo {
            version: "1".into(),
            data_dir: Some("d".into()),
            auth: true,
            tls: false,
            head_position: None,
            worker_threads: Some(3),
            caller: Some(skald_proto::CallerInfo {
                name: "ops".into(),
                role: "reader".into(),
                stream_prefixes: Some(vec!["billing-".into()]),
            }),
        };
        assert_eq!(read_as::<ServerInfo>(&info), info);
        let hidden = ServerInfo {
            data_dir: None,
            worker_threads: None,
            ..info
        };
        assert_eq!(read_as::<ServerInfo>(&hidden), hidden);
        let health = Health {
            status: "ok".into(),
        };
        assert_eq!(read_as::<Health>(&health), health);
    }

    #[test]
    fn every_error_body_reads_back_with_its_details() {
        let stream = || StreamName::parse("s").expect("name");
        let cases = [
            (
                ApiError::WrongExpectedRevision {
                    expected: ExpectedRevision::NoStream,
                    actual: None,
                },
                ErrorDetails::WrongExpectedRevision {
                    expected: ExpectedRevision::NoStream,
                    actual: None,
                },
            ),
            (
                ApiError::DuplicateEventId {
                    id: uuid::Uuid::from_u128(5),
                    position: 9,
                },
                ErrorDetails::DuplicateEventId {
                    id: uuid::Uuid::from_u128(5),
                    position: 9,
                },
            ),
            (
                ApiError::EventNotFound {
                    stream: stream(),
                    revision: 4,
                },
                ErrorDetails::Event {
                    stream: "s".into(),
                    revision: 4,
                },
            ),
            (
                ApiError::StreamNotFound(stream()),
                ErrorDetails::Stream { stream: "s".into() },
            ),
            (
                ApiError::TooLarge {
                    code: "payload_too_large",
                    message: "m".into(),
                    limit: 1024,
                },
                ErrorDetails::TooLarge { limit: 1024 },
            ),
            (
                ApiError::CorruptEvent {
                    position: 3,
                    detail: "crc".into(),
                },
                ErrorDetails::Corrupt { position: 3 },
            ),
            (ApiError::MethodNotAllowed, ErrorDetails::None {}),
        ];
        for (error, details) in cases {
            let body = error.body();
            let text = serde_json::to_string(&body).expect("serialize");
            let read: ErrorBody = serde_json::from_str(&text).expect("parse");
            assert_eq!(read, body, "{text}");
            assert_eq!(read.details, details, "{text}");
        }
        // A wrong expected revision on a missing stream says so: `"actual": null`.
        let text = serde_json::to_string(
            &ApiError::WrongExpectedRevision {
                expected: ExpectedRevision::Exact(0),
                actual: None,
            }
            .body(),
        )
        .expect("serialize");
        assert!(text.contains(r#""actual":null"#), "{text}");
    }
}
