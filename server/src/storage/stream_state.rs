//! What the store keeps per stream: its last revision, deletion, limits
//! (metadata) and statistics, the visibility rules they imply, and their bytes.
//!
//! Layout (version 2, big-endian): `version u8 | flags u8 | last_revision u64 |
//! deleted_before u64 | created_at µs u64 | last_appended_at µs u64 | bytes u64 |
//! [max_count u64] [max_age_secs u64] [truncate_before u64] [custom_len u32 custom]`.
//! Version 1 (`version u8 | last_revision u64`) is still read.

use super::codec::{CodecError, Reader};

const VERSION: u8 = 2;
const HAS_LAST: u8 = 1;
const TOMBSTONED: u8 = 1 << 1;
const HAS_MAX_COUNT: u8 = 1 << 2;
const HAS_MAX_AGE: u8 = 1 << 3;
const HAS_TRUNCATE: u8 = 1 << 4;
const HAS_CUSTOM: u8 = 1 << 5;

/// A stream's limits; events past them are hidden from every read at once and
/// removed by the next scavenge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamMetadata {
    /// Keep only the newest this many events.
    pub max_count: Option<u64>,
    /// Keep only events younger than this.
    pub max_age_secs: Option<u64>,
    /// Hide every revision below this one.
    pub truncate_before: Option<u64>,
    /// The user's own JSON object, stored as given.
    pub custom: Option<String>,
}

/// The state of one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamState {
    /// Revision of the last event ever appended; `None` before the first append.
    pub last_revision: Option<u64>,
    /// Soft delete: revisions below this are deleted (0: never deleted).
    pub deleted_before: u64,
    /// Hard delete: the stream is gone for good and its name cannot be reused.
    pub tombstoned: bool,
    /// When the state was first written, µs since the epoch.
    pub created_at_micros: u64,
    /// When the last append committed, µs since the epoch (0: never).
    pub last_appended_micros: u64,
    /// Bytes of the stream's stored records (scavenged ones subtracted).
    pub bytes: u64,
    pub metadata: StreamMetadata,
}

impl StreamState {
    /// Whether the stream can be read: not tombstoned, and appended to since its
    /// last soft delete.
    pub fn exists(&self) -> bool {
        !self.tombstoned
            && self
                .last_revision
                .is_some_and(|last| last >= self.deleted_before)
    }

    /// The last revision as expected-revision checks see it: `None` when the
    /// stream does not exist (never written, or soft-deleted since).
    pub fn current_revision(&self) -> Option<u64> {
        if self.exists() {
            self.last_revision
        } else {
            None
        }
    }

    /// The revision the next append gets: numbering continues after a soft delete.
    pub fn next_revision(&self) -> u64 {
        self.last_revision.map_or(0, |last| last + 1)
    }

    /// The first revision not hidden by deletion, `truncate_before` or `max_count`
    /// (`max_age` is checked per event, see `is_visible`).
    pub fn first_visible_revision(&self) -> u64 {
        let by_count = match (self.metadata.max_count, self.last_revision) {
            (Some(max), Some(last)) => (last + 1).saturating_sub(max),
            _ => 0,
        };
        self.deleted_before
            .max(self.metadata.truncate_before.unwrap_or(0))
            .max(by_count)
    }

    /// Whether the event at `revision`, recorded at `recorded_at_micros`, is
    /// visible at `now_micros`.
    pub fn is_visible(&self, revision: u64, recorded_at_micros: u64, now_micros: u64) -> bool {
        !self.tombstoned
            && revision >= self.first_visible_revision()
            && self.metadata.max_age_secs.is_none_or(|age| {
                recorded_at_micros.saturating_add(age.saturating_mul(1_000_000)) > now_micros
            })
    }

    /// Whether any rule may hide events of this stream.
    pub fn hides_anything(&self) -> bool {
        self.tombstoned || self.first_visible_revision() > 0 || self.metadata.max_age_secs.is_some()
    }
}

/// Encodes a stream state.
pub fn encode(state: &StreamState) -> Vec<u8> {
    let m = &state.metadata;
    let mut flags = 0;
    for (set, bit) in [
        (state.last_revision.is_some(), HAS_LAST),
        (state.tombstoned, TOMBSTONED),
        (m.max_count.is_some(), HAS_MAX_COUNT),
        (m.max_age_secs.is_some(), HAS_MAX_AGE),
        (m.truncate_before.is_some(), HAS_TRUNCATE),
        (m.custom.is_some(), HAS_CUSTOM),
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
    if let Some(custom) = &m.custom {
        let len =
            u32::try_from(custom.len()).expect("custom metadata is capped by the request limit");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(custom.as_bytes());
    }
    out
}

/// Decodes a stream state (version 1 or 2).
pub fn decode(bytes: &[u8]) -> Result<StreamState, CodecError> {
    let mut r = Reader(bytes);
    match r.u8()? {
        1 => Ok(StreamState {
            last_revision: Some(r.u64()?),
            ..StreamState::default()
        }),
        VERSION => {
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
            m.custom = if flags & HAS_CUSTOM != 0 {
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
            proptest::option::of("\\{.{0,20}\\}"),
        )
            .prop_map(
                |(last_revision, deleted_before, tombstoned, (c, a, b), mc, ma, tb, custom)| {
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
                            custom,
                        },
                    }
                },
            )
    }

    proptest! {
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
