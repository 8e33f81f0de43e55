//! The bytes of what the store keeps per stream (`model::StreamState`: its last
//! revision, deletion, limits and statistics; the visibility rules live there).
//!
//! Layout (version 3, big-endian): `version u8 | flags u8 | last_revision u64 |
//! deleted_before u64 | created_at µs u64 | last_appended_at µs u64 | bytes u64 |
//! [max_count u64] [max_age_secs u64] [truncate_before u64] [metadata revision
//! u64 | metadata set at µs u64 | metadata position u64]`, at most 90 bytes.
//! Custom metadata is not part of it (only its `HAS_CUSTOM` flag is): the writer
//! rewrites this state on every append, so it must cost the same whatever the
//! stream's custom metadata holds; the custom JSON lives in `CF_STREAM_CUSTOM`.
//! Version 2 (the same, followed by `[custom_len u32 custom]` when flagged) and
//! version 1 (`version u8 | last_revision u64`) are still read; the writer
//! moves a version 2 state's custom metadata out on its next write.

use super::codec::{CodecError, Reader};
pub use crate::model::{MetadataVersion, StreamMetadata, StreamState};

const VERSION: u8 = 3;
const VERSION_2: u8 = 2;
const HAS_LAST: u8 = 1;
const TOMBSTONED: u8 = 1 << 1;
const HAS_MAX_COUNT: u8 = 1 << 2;
const HAS_MAX_AGE: u8 = 1 << 3;
const HAS_TRUNCATE: u8 = 1 << 4;
const HAS_CUSTOM: u8 = 1 << 5;
const HAS_METADATA_VERSION: u8 = 1 << 6;

/// Encodes a stream state: everything but the custom metadata's bytes, which
/// the caller stores apart (see the module docs).
pub fn encode(state: &StreamState) -> Vec<u8> {
    let m = &state.metadata;
    let mut flags = 0;
    for (set, bit) in [
        (state.last_revision.is_some(), HAS_LAST),
        (state.tombstoned, TOMBSTONED),
        (m.max_count.is_some(), HAS_MAX_COUNT),
        (m.max_age_secs.is_some(), HAS_MAX_AGE),
        (m.truncate_before.is_some(), HAS_TRUNCATE),
        (state.has_custom || m.custom.is_some(), HAS_CUSTOM),
        (state.metadata_version.is_some(), HAS_METADATA_VERSION),
    ] {
        if set {
            flags |= bit;
        }
    }
    let mut out = Vec::with_capacity(48);
    out.push(VERSION);
    out.push(flags);
    for n in [
        state.last_revision.unwrap_or(0),
        state.deleted_before,
        state.created_at_micros,
        state.last_appended_micros,
        state.bytes,
    ] {
        out.extend_from_slice(&n.to_be_bytes());
    }
    for n in [m.max_count, m.max_age_secs, m.truncate_before]
        .into_iter()
        .flatten()
    {
        out.extend_from_slice(&n.to_be_bytes());
    }
    if let Some(v) = state.metadata_version {
        for n in [v.revision, v.set_at_micros, v.position] {
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
    out
}

/// Decodes a stream state (version 1, 2 or 3). A version 2 state brings its
/// custom metadata inline; a version 3 state only says whether it has some.
pub fn decode(bytes: &[u8]) -> Result<StreamState, CodecError> {
    let mut r = Reader(bytes);
    match r.u8()? {
        1 => Ok(StreamState {
            last_revision: Some(r.u64()?),
            ..StreamState::default()
        }),
        version @ (VERSION | VERSION_2) => {
            let flags = r.u8()?;
            let last = r.u64()?;
            let mut state = StreamState {
                last_revision: (flags & HAS_LAST != 0).then_some(last),
                deleted_before: r.u64()?,
                tombstoned: flags & TOMBSTONED != 0,
                created_at_micros: r.u64()?,
                last_appended_micros: r.u64()?,
                bytes: r.u64()?,
                metadata: StreamMetadata::default(),
                has_custom: flags & HAS_CUSTOM != 0,
                metadata_version: None,
            };
            let m = &mut state.metadata;
            m.max_count = if flags & HAS_MAX_COUNT != 0 {
                Some(r.u64()?)
            } else {
                None
            };
            m.max_age_secs = if flags & HAS_MAX_AGE != 0 {
                Some(r.u64()?)
            } else {
                None
            };
            m.truncate_before = if flags & HAS_TRUNCATE != 0 {
                Some(r.u64()?)
            } else {
                None
            };
            if flags & HAS_METADATA_VERSION != 0 {
                state.metadata_version = Some(MetadataVersion {
                    revision: r.u64()?,
                    set_at_micros: r.u64()?,
                    position: r.u64()?,
                });
            }
            let m = &mut state.metadata;
            m.custom = if version == VERSION_2 && flags & HAS_CUSTOM != 0 {
                let len = r.u32()? as usize;
                Some(r.text(len)?)
            } else {
                None
            };
            if !r.0.is_empty() {
                return Err(CodecError::Truncated);
            }
            Ok(state)
        }
        other => Err(CodecError::UnknownVersion(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_state() -> impl Strategy<Value = StreamState> {
        (
            proptest::option::of(any::<u64>()),
            any::<u64>(),
            any::<bool>(),
            any::<(u64, u64, u64)>(),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            any::<bool>(),
            proptest::option::of(any::<(u64, u64, u64)>()),
        )
            .prop_map(
                |(
                    last_revision,
                    deleted_before,
                    tombstoned,
                    (c, a, b),
                    mc,
                    ma,
                    tb,
                    has_custom,
                    mv,
                )| {
                    StreamState {
                        last_revision,
                        deleted_before,
                        tombstoned,
                        created_at_micros: c,
                        last_appended_micros: a,
                        bytes: b,
                        metadata: StreamMetadata {
                            max_count: mc,
                            max_age_secs: ma,
                            truncate_before: tb,
                            custom: None,
                        },
                        has_custom,
                        metadata_version: mv.map(|(revision, set_at_micros, position)| {
                            MetadataVersion {
                                revision,
                                set_at_micros,
                                position,
                            }
                        }),
                    }
                },
            )
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config(256))]
        #[test]
        fn states_round_trip(state in arb_state()) {
            prop_assert_eq!(decode(&encode(&state)), Ok(state));
        }

        #[test]
        fn a_state_cut_short_is_an_error(state in arb_state(), cut: usize) {
            let bytes = encode(&state);
            prop_assert!(decode(&bytes[..cut % bytes.len()]).is_err());
        }
    }

    /// What version 2 wrote: version 3's fields, then the custom JSON inline.
    fn encode_v2(state: &StreamState) -> Vec<u8> {
        let mut out = encode(state);
        out[0] = VERSION_2;
        if let Some(custom) = &state.metadata.custom {
            out.extend_from_slice(&(custom.len() as u32).to_be_bytes());
            out.extend_from_slice(custom.as_bytes());
        }
        out
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config(128))]
        #[test]
        fn version_2_states_still_decode_with_their_custom_metadata(
            mut state in arb_state(),
            custom in proptest::option::of("\\{.{0,20}\\}"),
        ) {
            state.has_custom = custom.is_some();
            state.metadata.custom = custom;
            prop_assert_eq!(decode(&encode_v2(&state)), Ok(state));
        }
    }

    #[test]
    fn custom_metadata_never_enters_the_encoded_state() {
        let mut state = StreamState {
            last_revision: Some(u64::MAX),
            deleted_before: u64::MAX,
            metadata: StreamMetadata {
                max_count: Some(1),
                max_age_secs: Some(2),
                truncate_before: Some(3),
                custom: Some(format!("{{\"k\":\"{}\"}}", "x".repeat(64 << 10))),
            },
            ..StreamState::default()
        };
        state.metadata_version = Some(MetadataVersion {
            revision: u64::MAX,
            set_at_micros: u64::MAX,
            position: u64::MAX,
        });
        let bytes = encode(&state);
        assert!(bytes.len() <= 90, "{} bytes", bytes.len());
        let decoded = decode(&bytes).expect("decodes");
        assert!(decoded.has_custom && decoded.metadata.custom.is_none());
        state.metadata.custom = None;
        assert!(!decode(&encode(&state)).expect("decodes").has_custom);
    }

    #[test]
    fn version_1_states_still_decode() {
        let mut v1 = vec![1];
        v1.extend_from_slice(&41u64.to_be_bytes());
        assert_eq!(decode(&v1).expect("v1").last_revision, Some(41));
    }

    #[test]
    fn visibility_rules() {
        let mut s = StreamState {
            last_revision: Some(9),
            ..StreamState::default()
        };
        assert!(s.exists() && s.is_visible(0, 0, 0));
        s.metadata.max_count = Some(3);
        assert_eq!(s.first_visible_revision(), 7);
        s.metadata.truncate_before = Some(8);
        assert_eq!(s.first_visible_revision(), 8);
        s.deleted_before = 10; // soft delete of 0..=9
        assert!(!s.exists());
        assert_eq!((s.current_revision(), s.next_revision()), (None, 10));
        s.last_revision = Some(10); // appended again
        assert!(s.exists() && s.is_visible(10, 0, 0) && !s.is_visible(9, 0, 0));
        s.metadata.max_age_secs = Some(60);
        assert!(s.is_visible(10, 1_000_000, 60_999_999));
        assert!(!s.is_visible(10, 1_000_000, 61_000_000));
        s.tombstoned = true;
        assert!(!s.exists() && !s.is_visible(10, 1_000_000, 1_000_000));
    }
}
