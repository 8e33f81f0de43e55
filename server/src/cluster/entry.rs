//! The replicated log's messages: one write (a client's append, delete or
//! metadata change, or a scavenge's removal of hidden events) and its stream,
//! or the end of a scavenge; encoded for JetStream. Binary, versioned and
//! CRC-checked like the store's records: every node applies exactly the bytes
//! the log holds, so a damaged message stops a node instead of making it
//! diverge.

use uuid::Uuid;

use crate::model::{ContentType, ExpectedRevision, NewEvent, StreamMetadata, StreamName, Text};
use crate::storage::writer::{HiddenEvent, WriteOp};

const VERSION: u8 = 1;
const APPEND: u8 = 1;
const DELETE: u8 = 2;
const METADATA: u8 = 3;
const REMOVE: u8 = 4;
const SCAVENGED: u8 = 5;
/// The encoded size of one removed event (position, revision, id, time, bytes).
const REMOVED_EVENT_BYTES: usize = 48;

/// One message of the log.
#[derive(Debug)]
pub enum Entry {
    /// A write on one Skald stream, applied by the single writer.
    Write(StreamName, WriteOp),
    /// A scavenge's removals are all in the log before this: every node
    /// compacts its store so the space comes back.
    Scavenged,
}

/// Why a log message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("log message is truncated")]
    Truncated,
    #[error("log message checksum mismatch")]
    Checksum,
    #[error("log message has unknown version {0}")]
    Version(u8),
    #[error("log message has unknown kind {0}")]
    Kind(u8),
    #[error("log message has an invalid field: {0}")]
    Invalid(&'static str),
}

/// Encodes `op` on `stream`.
pub fn encode(stream: &StreamName, op: &WriteOp) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(VERSION);
    out.push(match op {
        WriteOp::Append { .. } => APPEND,
        WriteOp::Delete { .. } => DELETE,
        WriteOp::SetMetadata { .. } => METADATA,
        WriteOp::Remove { .. } => REMOVE,
    });
    put_bytes(&mut out, stream.as_str().as_bytes());
    match op {
        WriteOp::Append { expected, events } => {
            put_expected(&mut out, *expected);
            put_count(&mut out, events.len());
            for event in events {
                out.extend_from_slice(event.id.as_bytes());
                out.push(match event.content_type {
                    ContentType::Json => 0,
                    ContentType::Binary => 1,
                });
                put_bytes(&mut out, event.event_type.as_bytes());
                put_bytes(&mut out, event.data.as_bytes());
                put_optional(&mut out, event.metadata.as_deref());
            }
        }
        WriteOp::Delete { expected, hard } => {
            put_expected(&mut out, *expected);
            out.push(u8::from(*hard));
        }
        WriteOp::SetMetadata { metadata, expected } => {
            put_expected(&mut out, *expected);
            for limit in [
                metadata.max_count,
                metadata.max_age_secs,
                metadata.truncate_before,
            ] {
                match limit {
                    Some(value) => {
                        out.push(1);
                        out.extend_from_slice(&value.to_le_bytes());
                    }
                    None => out.push(0),
                }
            }
            put_optional(&mut out, metadata.custom.as_deref());
        }
        WriteOp::Remove { events, now_micros } => {
            out.extend_from_slice(&now_micros.to_le_bytes());
            put_count(&mut out, events.len());
            out.reserve(events.len() * REMOVED_EVENT_BYTES);
            for event in events {
                out.extend_from_slice(&event.position.to_le_bytes());
                out.extend_from_slice(&event.revision.to_le_bytes());
                out.extend_from_slice(event.id.as_bytes());
                out.extend_from_slice(&event.recorded_at_micros.to_le_bytes());
                out.extend_from_slice(&event.bytes.to_le_bytes());
            }
        }
    }
    seal(out)
}

/// Encodes the end of a scavenge.
pub fn encode_scavenged() -> Vec<u8> {
    seal(vec![VERSION, SCAVENGED])
}

fn seal(mut out: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a log message.
pub fn decode(bytes: &[u8]) -> Result<Entry, EntryError> {
    let (body, crc) = bytes.split_last_chunk::<4>().ok_or(EntryError::Truncated)?;
    if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
        return Err(EntryError::Checksum);
    }
    let mut r = Reader(body);
    let version = r.u8()?;
    if version != VERSION {
        return Err(EntryError::Version(version));
    }
    let kind = r.u8()?;
    if kind == SCAVENGED {
        return r.end().map(|()| Entry::Scavenged);
    }
    let stream = StreamName::parse(r.text()?).map_err(|_| EntryError::Invalid("stream name"))?;
    let op = match kind {
        REMOVE => {
            let now_micros = r.u64()?;
            let count = r.u32()? as usize;
            let mut events = Vec::with_capacity(count.min(r.0.len() / REMOVED_EVENT_BYTES));
            for _ in 0..count {
                events.push(HiddenEvent {
                    position: r.u64()?,
                    revision: r.u64()?,
                    id: Uuid::from_bytes(r.take(16)?.try_into().expect("16 bytes")),
                    recorded_at_micros: r.u64()?,
                    bytes: r.u64()?,
                });
            }
            WriteOp::Remove { events, now_micros }
        }
        APPEND => {
            let expected = r.expected()?;
            let count = r.u32()? as usize;
            // Each event takes at least 30 bytes: no count can reserve more than the message.
            let mut events = Vec::with_capacity(count.min(r.0.len() / 30));
            for _ in 0..count {
                let id = Uuid::from_bytes(r.take(16)?.try_into().expect("16 bytes"));
                let content_type = match r.u8()? {
                    0 => ContentType::Json,
                    1 => ContentType::Binary,
                    _ => return Err(EntryError::Invalid("content type")),
                };
                events.push(NewEvent {
                    id,
                    content_type,
                    event_type: r.text()?.into(),
                    data: r.text()?.into(),
                    metadata: r.optional()?.map(Text::from),
                });
            }
            WriteOp::Append { expected, events }
        }
        DELETE => WriteOp::Delete {
            expected: r.expected()?,
            hard: match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(EntryError::Invalid("hard")),
            },
        },
        METADATA => {
            let expected = r.expected()?;
            let mut limits = [None; 3];
            for limit in &mut limits {
                *limit = match r.u8()? {
                    0 => None,
                    1 => Some(r.u64()?),
                    _ => return Err(EntryError::Invalid("limit")),
                };
            }
            let [max_count, max_age_secs, truncate_before] = limits;
            let metadata = StreamMetadata {
                max_count,
                max_age_secs,
                truncate_before,
                custom: r.optional()?,
            };
            WriteOp::SetMetadata { metadata, expected }
        }
        other => return Err(EntryError::Kind(other)),
    };
    r.end()?;
    Ok(Entry::Write(stream, op))
}

fn put_count(out: &mut Vec<u8>, count: usize) {
    let count = u32::try_from(count).expect("a write holds fewer than 2^32 events");
    out.extend_from_slice(&count.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("a field is below 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_optional(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        Some(text) => {
            out.push(1);
            put_bytes(out, text.as_bytes());
        }
        None => out.push(0),
    }
}

fn put_expected(out: &mut Vec<u8>, expected: ExpectedRevision) {
    let (tag, revision) = match expected {
        ExpectedRevision::Any => (0, 0),
        ExpectedRevision::NoStream => (1, 0),
        ExpectedRevision::StreamExists => (2, 0),
        ExpectedRevision::Exact(revision) => (3, revision),
    };
    out.push(tag);
    out.extend_from_slice(&revision.to_le_bytes());
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EntryError> {
        if self.0.len() < n {
            return Err(EntryError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, EntryError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, EntryError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, EntryError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn end(&self) -> Result<(), EntryError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(EntryError::Invalid("trailing bytes"))
        }
    }

    fn text(&mut self) -> Result<&'a str, EntryError> {
        let len = self.u32()? as usize;
        std::str::from_utf8(self.take(len)?).map_err(|_| EntryError::Invalid("UTF-8"))
    }

    fn optional(&mut self) -> Result<Option<String>, EntryError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.text()?.to_owned())),
            _ => Err(EntryError::Invalid("optional flag")),
        }
    }

    fn expected(&mut self) -> Result<ExpectedRevision, EntryError> {
        let tag = self.u8()?;
        let revision = self.u64()?;
        match tag {
            0 => Ok(ExpectedRevision::Any),
            1 => Ok(ExpectedRevision::NoStream),
            2 => Ok(ExpectedRevision::StreamExists),
            3 => Ok(ExpectedRevision::Exact(revision)),
            _ => Err(EntryError::Invalid("expected revision")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_expected() -> impl Strategy<Value = ExpectedRevision> {
        prop_oneof![
            Just(ExpectedRevision::Any),
            Just(ExpectedRevision::NoStream),
            Just(ExpectedRevision::StreamExists),
            any::<u64>().prop_map(ExpectedRevision::Exact),
        ]
    }

    fn arb_event() -> impl Strategy<Value = NewEvent> {
        (
            any::<u128>(),
            any::<bool>(),
            "[a-zA-Z.]{1,12}",
            ".{0,40}",
            proptest::option::of(".{0,20}"),
        )
            .prop_map(|(id, binary, event_type, data, metadata)| NewEvent {
                id: Uuid::from_u128(id),
                content_type: if binary {
                    ContentType::Binary
                } else {
                    ContentType::Json
                },
                event_type: event_type.into(),
                data: data.into(),
                metadata: metadata.map(Text::from),
            })
    }

    fn arb_op() -> impl Strategy<Value = WriteOp> {
        prop_oneof![
            (arb_expected(), proptest::collection::vec(arb_event(), 0..6))
                .prop_map(|(expected, events)| WriteOp::Append { expected, events }),
            (arb_expected(), any::<bool>())
                .prop_map(|(expected, hard)| WriteOp::Delete { expected, hard }),
            (
                arb_expected(),
                proptest::option::of(any::<u64>()),
                proptest::option::of(any::<u64>()),
                proptest::option::of(any::<u64>()),
                proptest::option::of("\\{.{0,20}\\}"),
            )
                .prop_map(
                    |(expected, max_count, max_age_secs, truncate_before, custom)| {
                        WriteOp::SetMetadata {
                            expected,
                            metadata: StreamMetadata {
                                max_count,
                                max_age_secs,
                                truncate_before,
                                custom,
                            },
                        }
                    }
                ),
            (
                any::<u64>(),
                proptest::collection::vec(
                    (
                        any::<u64>(),
                        any::<u64>(),
                        any::<u128>(),
                        any::<u64>(),
                        any::<u64>()
                    ),
                    0..6
                ),
            )
                .prop_map(|(now_micros, events)| WriteOp::Remove {
                    now_micros,
                    events: events
                        .into_iter()
                        .map(
                            |(position, revision, id, recorded_at_micros, bytes)| HiddenEvent {
                                position,
                                revision,
                                id: Uuid::from_u128(id),
                                recorded_at_micros,
                                bytes,
                            }
                        )
                        .collect(),
                }),
        ]
    }

    fn same(a: &WriteOp, b: &WriteOp) -> bool {
        match (a, b) {
            (
                WriteOp::Append { expected, events },
                WriteOp::Append {
                    expected: e2,
                    events: v2,
                },
            ) => expected == e2 && events == v2,
            (
                WriteOp::Delete { expected, hard },
                WriteOp::Delete {
                    expected: e2,
                    hard: h2,
                },
            ) => expected == e2 && hard == h2,
            (
                WriteOp::SetMetadata { metadata, expected },
                WriteOp::SetMetadata {
                    metadata: m2,
                    expected: e2,
                },
            ) => metadata == m2 && expected == e2,
            (
                WriteOp::Remove { events, now_micros },
                WriteOp::Remove {
                    events: v2,
                    now_micros: n2,
                },
            ) => events == v2 && now_micros == n2,
            _ => false,
        }
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config(256))]
        #[test]
        fn every_write_round_trips(stream in "[a-z][a-z0-9 .*>-]{0,20}", op in arb_op()) {
            let stream = StreamName::parse(&stream).expect("valid name");
            let bytes = encode(&stream, &op);
            let Entry::Write(back_stream, back) = decode(&bytes).expect("decodes") else {
                panic!("not a write");
            };
            prop_assert_eq!(back_stream, stream);
            prop_assert!(same(&back, &op), "{:?} != {:?}", back, op);
        }

        #[test]
        fn a_damaged_message_is_refused(
            op in arb_op(),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
            cut in any::<prop::sample::Index>(),
        ) {
            let stream = StreamName::parse("s").expect("valid");
            let bytes = encode(&stream, &op);
            let mut flipped = bytes.clone();
            flipped[flip.index(bytes.len())] ^= 1 << bit;
            prop_assert!(decode(&flipped).is_err());
            let cut = cut.index(bytes.len());
            prop_assert!(decode(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn the_end_of_a_scavenge_round_trips_and_refuses_damage() {
        let bytes = encode_scavenged();
        assert!(matches!(decode(&bytes), Ok(Entry::Scavenged)));
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            assert!(decode(&flipped).is_err(), "flip at {at}");
            assert!(decode(&bytes[..at]).is_err(), "cut at {at}");
        }
    }
}
