//! Every column family and key encoding of the store, in one place.
//!
//! Numbers are written big-endian so that RocksDB's byte order is numeric order;
//! stream names are followed by a `0x00` separator, which cannot occur inside a
//! valid name (control characters are rejected), so `(stream, revision)` keys sort
//! by stream and then by revision and a stream's keys never interleave with another's.

/// Events by global position: `position (u64 BE)` -> encoded record (see `codec`).
pub const CF_EVENTS: &str = "events";
/// Stream index: `stream bytes, 0x00, first revision (u64 BE)` -> a run of
/// consecutive revisions at consecutive positions (see `stream_index_value`):
/// one entry per append, split when a scavenge removes events from its middle.
pub const CF_STREAM_INDEX: &str = "stream_index";
/// Stream state: `stream bytes` -> encoded `StreamState` (see `codec`).
pub const CF_STREAMS: &str = "streams";
/// Custom stream metadata: `stream bytes` -> the JSON object's text. Apart from
/// `CF_STREAMS` so that the state rewritten on every append stays small.
pub const CF_STREAM_CUSTOM: &str = "stream_custom";
/// Idempotency index: `event id (16 bytes)` -> `position (u64 BE)`, up to
/// `META_IDS_INDEXED_BEFORE` (see `id_index`).
pub const CF_EVENT_IDS: &str = "event_ids";
/// Store-wide values, keyed by the constants below.
pub const CF_META: &str = "meta";

/// Every column family the store opens, in a fixed order.
pub const ALL_CFS: [&str; 6] = [
    CF_EVENTS,
    CF_STREAM_INDEX,
    CF_STREAMS,
    CF_STREAM_CUSTOM,
    CF_EVENT_IDS,
    CF_META,
];

/// `CF_META` key of the next global position to assign (u64 BE). Kept explicitly,
/// not derived from the last event key, so that a position is never reused even
/// when the newest events are later removed.
pub const META_NEXT_POSITION: &[u8] = b"next_position";
/// `CF_META` key of the number of events scavenging has removed, ever (u64 BE).
pub const META_REMOVED_EVENTS: &[u8] = b"removed_events";
/// `CF_META` key of the stream after which an interrupted scavenge resumes.
pub const META_SCAVENGE_RESUME: &[u8] = b"scavenge_resume_after";
/// `CF_META` key of the scavenge history (JSON).
pub const META_SCAVENGE_HISTORY: &[u8] = b"scavenge_history";
/// `CF_META` key of the verify history (JSON).
pub const META_VERIFY_HISTORY: &[u8] = b"verify_history";
/// `CF_META` key of the backup history (JSON).
pub const META_BACKUP_HISTORY: &[u8] = b"backup_history";
/// The `CF_META` key of the history of `kind` jobs.
pub fn job_history_key(kind: crate::model::JobKind) -> &'static [u8] {
    match kind {
        crate::model::JobKind::Scavenge => META_SCAVENGE_HISTORY,
        crate::model::JobKind::Verify => META_VERIFY_HISTORY,
        crate::model::JobKind::Backup => META_BACKUP_HISTORY,
    }
}
/// `CF_META` key of the on-disk layout version (one byte).
pub const META_LAYOUT_VERSION: &[u8] = b"layout_version";
/// The layout version this code writes and reads. 3: a stream index entry
/// may cover a run of revisions (a 16-byte value); 2 (upgraded on open, as
/// its 8-byte entries are runs of one): `event_ids` may lag the log
/// (`META_IDS_INDEXED_BEFORE`); 1 (upgraded on open): every id indexed at
/// commit.
pub const LAYOUT_VERSION: u8 = 3;
/// Cluster mode: the last sequence of the replicated log applied to the store.
pub const META_LOG_APPLIED: &[u8] = b"log_applied";

/// Cluster mode: the `meta` key of a stream's last log sequence (the log
/// message that last wrote to it, or was refused on it).
pub fn subject_sequence_key(stream: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(16 + stream.len());
    key.extend_from_slice(b"log_subject/");
    key.extend_from_slice(stream.as_bytes());
    key
}

/// Cluster mode: the `meta` key of the log message that appended `stream`'s
/// events from `first_revision` on (value: its log sequence, u64 BE). Finds
/// which of JetStream's messages hold only scavenged events.
pub fn log_message_key(stream: &str, first_revision: u64) -> Vec<u8> {
    let mut key = log_message_prefix(stream);
    key.extend_from_slice(&first_revision.to_be_bytes());
    key
}

/// The prefix of every `log_message_key` of `stream`.
pub fn log_message_prefix(stream: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(21 + stream.len());
    key.extend_from_slice(b"log_message/");
    key.extend_from_slice(stream.as_bytes());
    key.push(0);
    key
}

/// Cluster mode: the `meta` key of the log message `sequence` that removed
/// events (value: the stream's name), in sequence order.
pub fn log_removal_key(sequence: u64) -> Vec<u8> {
    let mut key = b"log_removal/".to_vec();
    key.extend_from_slice(&sequence.to_be_bytes());
    key
}

/// `CF_META` key of the id index's mark (u64 BE): every stored event id at a
/// position below it is in `CF_EVENT_IDS`.
pub const META_IDS_INDEXED_BEFORE: &[u8] = b"ids_indexed_before";

/// Key of a stream's state in `CF_STREAMS`: the name's bytes.
pub fn stream_key(stream: &str) -> &[u8] {
    stream.as_bytes()
}

/// The smallest `CF_STREAMS` key after `stream`'s (catalog paging).
pub fn stream_key_after(stream: &str) -> Vec<u8> {
    let mut key = stream.as_bytes().to_vec();
    key.push(0);
    key
}

/// The stream name of a `CF_STREAMS` key; `None` when it is not UTF-8.
pub fn decode_stream_key(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key).ok()
}

/// Key of an event in `CF_EVENTS`.
pub fn position_key(position: u64) -> [u8; 8] {
    position.to_be_bytes()
}

/// Decodes a `CF_EVENTS` key or a position value.
pub fn decode_position(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// Key of `(stream, revision)` in `CF_STREAM_INDEX`.
pub fn stream_index_key(stream: &str, revision: u64) -> Vec<u8> {
    let mut key = stream_index_prefix(stream);
    key.extend_from_slice(&revision.to_be_bytes());
    key
}

/// A `CF_STREAM_INDEX` value: the position of the entry's first revision,
/// then, for a run of more than one, how many revisions it covers (u64 BE
/// each). A run of one is the 8-byte value of layouts 1 and 2.
#[derive(Debug, Clone, Copy)]
pub struct StreamIndexValue {
    bytes: [u8; 16],
    len: usize,
}

impl AsRef<[u8]> for StreamIndexValue {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The `CF_STREAM_INDEX` value of `count` (at least one) revisions from `position` on.
pub fn stream_index_value(position: u64, count: u64) -> StreamIndexValue {
    let mut bytes = [0; 16];
    bytes[..8].copy_from_slice(&position.to_be_bytes());
    let len = if count > 1 {
        bytes[8..].copy_from_slice(&count.to_be_bytes());
        16
    } else {
        8
    };
    StreamIndexValue { bytes, len }
}

/// Decodes a `CF_STREAM_INDEX` value into its first position and count;
/// `None` when it is neither 8 bytes nor 16 with a count of at least two.
pub fn decode_stream_index_value(bytes: &[u8]) -> Option<(u64, u64)> {
    match bytes.len() {
        8 => Some((decode_position(bytes)?, 1)),
        16 => {
            let count = decode_position(&bytes[8..])?;
            (count > 1).then_some((decode_position(&bytes[..8])?, count))
        }
        _ => None,
    }
}

/// The prefix every `CF_STREAM_INDEX` key of `stream` starts with.
pub fn stream_index_prefix(stream: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream.len() + 9);
    key.extend_from_slice(stream.as_bytes());
    key.push(0);
    key
}

/// The revision of a `CF_STREAM_INDEX` key (its last 8 bytes).
pub fn decode_stream_index_revision(key: &[u8]) -> Option<u64> {
    let tail = key.len().checked_sub(8)?;
    decode_position(&key[tail..])
}

/// Splits a `CF_STREAM_INDEX` key into its stream name and revision; `None` when
/// it is not `name, 0x00, revision` with a UTF-8 name.
pub fn decode_stream_index_key(key: &[u8]) -> Option<(&str, u64)> {
    let separator = key.len().checked_sub(9)?;
    if key[separator] != 0 {
        return None;
    }
    let stream = std::str::from_utf8(&key[..separator]).ok()?;
    Some((stream, decode_stream_index_revision(key)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::testing::proptest_config(256))]
        #[test]
        fn stream_index_values_round_trip(position: u64, count in 1u64..) {
            let value = stream_index_value(position, count);
            prop_assert_eq!(value.as_ref().len(), if count == 1 { 8 } else { 16 });
            prop_assert_eq!(decode_stream_index_value(value.as_ref()), Some((position, count)));
        }

        #[test]
        fn malformed_stream_index_values_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..24)) {
            let decoded = decode_stream_index_value(&bytes);
            match bytes.len() {
                8 => prop_assert_eq!(decoded, Some((decode_position(&bytes).expect("8 bytes"), 1))),
                16 => {
                    let count = decode_position(&bytes[8..]).expect("8 bytes");
                    prop_assert_eq!(decoded.is_some(), count > 1);
                }
                _ => prop_assert_eq!(decoded, None),
            }
        }

        #[test]
        fn position_keys_sort_numerically(a: u64, b: u64) {
            prop_assert_eq!(a.cmp(&b), position_key(a).cmp(&position_key(b)));
            prop_assert_eq!(decode_position(&position_key(a)), Some(a));
        }

        #[test]
        fn stream_index_keys_sort_by_stream_then_revision(
            s1 in "[a-z0-9-]{1,8}", r1: u64, s2 in "[a-z0-9-]{1,8}", r2: u64,
        ) {
            let expected = s1.as_bytes().cmp(s2.as_bytes()).then(r1.cmp(&r2));
            prop_assert_eq!(expected, stream_index_key(&s1, r1).cmp(&stream_index_key(&s2, r2)));
            prop_assert_eq!(decode_stream_index_revision(&stream_index_key(&s1, r1)), Some(r1));
            let key = stream_index_key(&s1, r1);
            prop_assert_eq!(decode_stream_index_key(&key), Some((s1.as_str(), r1)));
        }

        #[test]
        fn stream_keys_round_trip_and_page_in_name_order(a in "[a-z0-9-]{1,8}", b in "[a-z0-9-]{1,8}") {
            prop_assert_eq!(decode_stream_key(stream_key(&a)), Some(a.as_str()));
            // Every name after `a` sorts at or after the key after `a`; `a` itself before it.
            prop_assert!(stream_key(&a) < stream_key_after(&a).as_slice());
            if b > a {
                prop_assert!(stream_key(&b) >= stream_key_after(&a).as_slice());
            }
        }

        #[test]
        fn malformed_index_keys_do_not_decode(bytes in proptest::collection::vec(any::<u8>(), 0..9)) {
            prop_assert_eq!(decode_stream_index_key(&bytes), None);
        }

        #[test]
        fn a_stream_prefix_never_matches_a_longer_name(s in "[a-z]{1,8}", suffix in "[a-z]{1,4}", r: u64) {
            let other = format!("{s}{suffix}");
            prop_assert!(!stream_index_key(&other, r).starts_with(&stream_index_prefix(&s)));
        }
    }
}
