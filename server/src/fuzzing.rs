//! Entry points for the fuzz targets in `fuzz/` and for the hostile-input
//! property tests below: each takes raw bytes, decodes them exactly as the
//! server does, and panics when an invariant that must hold for any input
//! breaks (a decoder must never panic; what it accepts must round-trip; what
//! the API accepts, the project's client must read back). Compiled for tests
//! and with the `fuzzing` feature only.

use serde_json::Value;

use crate::http::extract::QueryParams;
use crate::http::wire::event_json;
use crate::model::{RecordedEvent, StreamName};
use crate::storage::{codec, stream_state};

/// An event record as stored: decoding never panics, and a decoded record
/// encodes to exactly the bytes it came from.
pub fn record(bytes: &[u8]) {
    if let Ok(event) = codec::decode_event(7, bytes) {
        assert_eq!(
            codec::encode_event(&event),
            bytes,
            "a record is not canonical"
        );
    }
}

/// A stream state as stored: decoding never panics, and a decoded state
/// survives an encode and decode (custom metadata, kept apart since version 3,
/// aside).
pub fn stream_state(bytes: &[u8]) {
    if let Ok(mut state) = stream_state::decode(bytes) {
        let again = stream_state::decode(&stream_state::encode(&state)).expect("re-decodes");
        state.metadata.custom = None;
        assert_eq!(again, state);
    }
}

/// A query string: parsing and taking every parameter kind never panics.
pub fn query(raw: &[u8]) {
    let Ok(text) = std::str::from_utf8(raw) else {
        return;
    };
    if let Ok(mut params) = QueryParams::parse(Some(text)) {
        let _ = params.take_u64("from");
        let _ = params.take_bounded("limit", 1, 4096, 100);
        let _ = params.take_bool("hard");
        let _ = params.take_str("stream_prefix");
        let _ = params.finish();
    }
}

/// An append body: decoding never panics, and every event the API accepts is
/// served back as JSON that the client's types decode, payloads intact.
pub fn append_body(bytes: &[u8]) {
    // The fast path answers only what the serde path answers the same.
    let (fast, slow) = crate::http::streams::decode_append_both_ways(bytes, 1 << 20);
    if let Some(fast) = fast {
        assert_eq!(Some(fast), slow.ok(), "the fast path disagrees");
    }
    let Ok((_, events)) = crate::http::streams::decode_append(bytes, 1 << 20) else {
        return;
    };
    for (revision, event) in events.into_iter().enumerate() {
        let stored = RecordedEvent {
            content_type: crate::model::ContentType::Json,
            position: revision as u64,
            stream: StreamName::parse("fuzz").expect("valid"),
            revision: revision as u64,
            id: event.id,
            event_type: event.event_type.into(),
            data: event.data.into(),
            metadata: event.metadata.map(String::from),
            recorded_at_micros: 1,
        };
        let data: Value = serde_json::from_str(&stored.data).expect("accepted data decodes");
        let line = serde_json::to_string(&event_json(stored).expect("serves")).expect("encodes");
        let read: skald_proto::RecordedEvent =
            serde_json::from_str(&line).expect("the client reads what was accepted");
        assert_eq!(read.data, data);
    }
}

/// A metadata body: decoding never panics, and accepted custom metadata is a
/// JSON object the client decodes.
pub fn metadata_body(bytes: &[u8]) {
    if let Ok(metadata) = crate::http::stream_admin::decode_metadata(bytes, 64 << 10) {
        if let Some(custom) = metadata.custom {
            let value: Value = serde_json::from_str(&custom).expect("accepted custom decodes");
            assert!(value.is_object());
        }
    }
}

/// A stream name (a path segment): parsing never panics, and an accepted name
/// keeps the rules every layer relies on.
pub fn stream_name(raw: &[u8]) {
    let Ok(text) = std::str::from_utf8(raw) else {
        return;
    };
    if let Ok(name) = StreamName::parse(text) {
        let name = name.as_str();
        assert!(!name.is_empty() && name.len() <= crate::model::MAX_STREAM_NAME_BYTES);
        assert!(!name.chars().any(char::is_control) && !name.starts_with('$'));
        assert!(name != "." && name != "..");
    }
}

#[cfg(test)]
mod tests {
    //! Hostile inputs generated two ways: raw bytes, and texts assembled from
    //! fragments that sit near the edges of the decoders (numbers past u64,
    //! escapes, nesting, surrogates, stray bytes), so that most cases get past
    //! the first syntax check.

    use super::*;
    use proptest::prelude::*;

    fn fragment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("{".to_owned()),
            Just("}".to_owned()),
            Just("[".to_owned()),
            Just("]".to_owned()),
            Just(",".to_owned()),
            Just(":".to_owned()),
            Just(r#""events""#.to_owned()),
            Just(r#""type""#.to_owned()),
            Just(r#""data""#.to_owned()),
            Just(r#""metadata""#.to_owned()),
            Just(r#""id""#.to_owned()),
            Just(r#""expected_revision""#.to_owned()),
            Just(r#""custom""#.to_owned()),
            Just(r#""max_count""#.to_owned()),
            Just("18446744073709551616".to_owned()),
            Just("-1".to_owned()),
            Just("1e400".to_owned()),
            Just("0".to_owned()),
            Just(r#""\ud800""#.to_owned()),
            Just(r#""\ud83d\ude00""#.to_owned()),
            Just(r#""\u0000""#.to_owned()),
            Just(r#""any""#.to_owned()),
            Just(r#""no_stream""#.to_owned()),
            Just(r#""0190a1b2-0000-7000-8000-000000000001""#.to_owned()),
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("\u{feff}".to_owned()),
            Just("%FF".to_owned()),
            Just("&".to_owned()),
            Just("=".to_owned()),
            "[ -~]{0,8}".prop_map(|s| s),
        ]
    }

    fn assembled() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(fragment(), 0..40).prop_map(|parts| parts.concat().into_bytes())
    }

    /// A valid append body, so that mutations of it reach the validation.
    fn near_valid_append() -> impl Strategy<Value = Vec<u8>> {
        (fragment(), fragment(), 0usize..80).prop_map(|(data, metadata, depth)| {
            format!(
                r#"{{"events":[{{"type":"E","data":{}{data}{},"metadata":{{"m":{metadata}}}}}]}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            )
            .into_bytes()
        })
    }

    fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target);
        let mut seeds: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| {
                let path = entry.expect("entry").path();
                let name = path.display().to_string();
                (name, std::fs::read(&path).expect("seed"))
            })
            .collect();
        seeds.sort();
        assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
        seeds
    }

    /// The checked-in seed corpus is valid input, so the fuzzers start from
    /// inside the decoders rather than at their first check.
    #[test]
    fn the_seed_corpus_decodes() {
        for (name, bytes) in seeds("record") {
            assert!(codec::decode_event(7, &bytes).is_ok(), "{name}");
            record(&bytes);
        }
        for (name, bytes) in seeds("stream_state") {
            assert!(stream_state::decode(&bytes).is_ok(), "{name}");
            stream_state(&bytes);
        }
        for (name, bytes) in seeds("append_body") {
            assert!(
                crate::http::streams::decode_append(&bytes, 1 << 20).is_ok(),
                "{name}"
            );
        }
        for (name, bytes) in seeds("metadata_body") {
            let decoded = crate::http::stream_admin::decode_metadata(&bytes, 64 << 10);
            assert!(decoded.is_ok(), "{name}");
        }
        for (name, bytes) in seeds("query") {
            let text = std::str::from_utf8(&bytes).expect("utf-8");
            assert!(QueryParams::parse(Some(text)).is_ok(), "{name}");
        }
        for (name, bytes) in seeds("stream_name") {
            let text = std::str::from_utf8(&bytes).expect("utf-8");
            assert!(StreamName::parse(text).is_ok(), "{name}");
        }
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config(512))]

        #[test]
        fn decoders_survive_raw_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            record(&bytes);
            stream_state(&bytes);
            query(&bytes);
            append_body(&bytes);
            metadata_body(&bytes);
            stream_name(&bytes);
        }

        #[test]
        fn decoders_survive_assembled_texts(bytes in assembled()) {
            query(&bytes);
            append_body(&bytes);
            metadata_body(&bytes);
            stream_name(&bytes);
        }

        #[test]
        fn what_an_append_accepts_the_client_reads(bytes in near_valid_append()) {
            append_body(&bytes);
        }

        #[test]
        fn records_cut_or_flipped_never_panic(
            data in "[ -~]{0,40}",
            cut in any::<usize>(),
            flip in any::<(usize, u8)>(),
        ) {
            let event = RecordedEvent {
                content_type: crate::model::ContentType::Json,
                position: 7,
                stream: StreamName::parse("s").expect("valid"),
                revision: 1,
                id: uuid::Uuid::from_u128(1),
                event_type: "T".into(),
                data: serde_json::to_string(&data).expect("json"),
                metadata: None,
                recorded_at_micros: 2,
            };
            let mut bytes = codec::encode_event(&event);
            record(&bytes);
            let at = flip.0 % bytes.len();
            bytes[at] ^= flip.1.max(1);
            record(&bytes);
            record(&bytes[..cut % bytes.len()]);
        }
    }
}
