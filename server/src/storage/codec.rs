//! The bytes of an event record (a stream's state is in `stream_state`).
//!
//! Record layout (all integers big-endian):
//!
//! ```text
//! version u8 (=1) | position u64 | revision u64 | recorded_at µs u64 | id [16]
//! | stream_len u16 | stream | type_len u16 | type | data_len u32 | data
//! | flags u8 | [metadata_len u32 | metadata] | crc32 u32
//! ```
//!
//! `flags`: bit 0, the record has metadata; bit 1, its data is binary (the
//! base64 of the payload in a JSON string, `ContentType::Binary`). Records
//! written before binary data existed have 0 or 1 there, so they read as
//! they were. The CRC32 covers every byte before it, the version byte
//! included. The record repeats its position so that a record found under
//! the wrong key is detected.

use crate::model::{ContentType, RecordedEvent, StreamName};
use uuid::Uuid;

/// Record format version written by this code.
pub const RECORD_VERSION: u8 = 1;
const HAS_METADATA: u8 = 1;
const BINARY_DATA: u8 = 1 << 1;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("record is truncated")]
    Truncated,
    #[error("unknown format version {0}")]
    UnknownVersion(u8),
    #[error("text field is not UTF-8")]
    InvalidUtf8,
    #[error("record carries position {found}, stored under {expected}")]
    MisplacedRecord { expected: u64, found: u64 },
}

/// Encodes `event` as a record.
pub fn encode_event(event: &RecordedEvent) -> Vec<u8> {
    encode_record(&RecordRef {
        position: event.position,
        stream: event.stream.as_str(),
        revision: event.revision,
        recorded_at_micros: event.recorded_at_micros,
        id: &event.id,
        event_type: &event.event_type,
        data: &event.data,
        metadata: event.metadata.as_deref(),
        content_type: event.content_type,
    })
}

/// The fields of a record, borrowed: what the writer encodes from a request's
/// event without copying it into a `RecordedEvent` first.
pub struct RecordRef<'a> {
    pub position: u64,
    pub stream: &'a str,
    pub revision: u64,
    pub recorded_at_micros: u64,
    pub id: &'a Uuid,
    pub event_type: &'a str,
    pub data: &'a str,
    pub metadata: Option<&'a str>,
    pub content_type: ContentType,
}

/// Encodes a record from its borrowed fields.
pub fn encode_record(event: &RecordRef<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_record_into(event, &mut out);
    out
}

/// `encode_record` into `out`, which it clears first (a buffer reused for
/// many records saves an allocation per record).
pub fn encode_record_into(event: &RecordRef<'_>, out: &mut Vec<u8>) {
    let meta_len = event.metadata.map_or(0, |m| 4 + m.len());
    out.clear();
    out.reserve(
        1 + 8 * 3
            + 16
            + 2
            + event.stream.len()
            + 2
            + event.event_type.len()
            + 4
            + event.data.len()
            + 1
            + meta_len
            + 4,
    );
    out.push(RECORD_VERSION);
    out.extend_from_slice(&event.position.to_be_bytes());
    out.extend_from_slice(&event.revision.to_be_bytes());
    out.extend_from_slice(&event.recorded_at_micros.to_be_bytes());
    out.extend_from_slice(event.id.as_bytes());
    put_short(out, event.stream);
    put_short(out, event.event_type);
    put_long(out, event.data);
    let binary = match event.content_type {
        ContentType::Json => 0,
        ContentType::Binary => BINARY_DATA,
    };
    match event.metadata {
        Some(metadata) => {
            out.push(HAS_METADATA | binary);
            put_long(out, metadata);
        }
        None => out.push(binary),
    }
    let crc = crc32fast::hash(out);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// The event id of a record stored under `position`, checked like
/// `decode_event` checks the whole record (the id index reads the log's end
/// back with it on open).
pub fn decode_id(position: u64, bytes: &[u8]) -> Result<Uuid, CodecError> {
    let mut r = checked(position, bytes)?;
    r.take(16)?; // revision and recorded_at
    Ok(Uuid::from_bytes(
        r.take(16)?.try_into().map_err(|_| CodecError::Truncated)?,
    ))
}

/// The record's body, its CRC, version and position checked, read up to the
/// revision.
fn checked(position: u64, bytes: &[u8]) -> Result<Reader<'_>, CodecError> {
    let body_len = bytes.len().checked_sub(4).ok_or(CodecError::Truncated)?;
    let (body, crc) = bytes.split_at(body_len);
    let stored = u32::from_be_bytes(crc.try_into().map_err(|_| CodecError::Truncated)?);
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(CodecError::Checksum { stored, computed });
    }
    let mut r = Reader(body);
    let version = r.u8()?;
    if version != RECORD_VERSION {
        return Err(CodecError::UnknownVersion(version));
    }
    let found = r.u64()?;
    if found != position {
        return Err(CodecError::MisplacedRecord {
            expected: position,
            found,
        });
    }
    Ok(r)
}

/// Decodes and checks a record stored under `position`.
pub fn decode_event(position: u64, bytes: &[u8]) -> Result<RecordedEvent, CodecError> {
    let mut r = checked(position, bytes)?;
    let revision = r.u64()?;
    let recorded_at_micros = r.u64()?;
    let id = Uuid::from_bytes(r.take(16)?.try_into().map_err(|_| CodecError::Truncated)?);
    let stream_len = usize::from(r.u16()?);
    let stream = r.text(stream_len)?;
    let type_len = usize::from(r.u16()?);
    let event_type = r.text(type_len)?;
    let data_len = r.u32()? as usize;
    let data = r.text(data_len)?;
    let flags = r.u8()?;
    let metadata = if flags & HAS_METADATA != 0 {
        let len = r.u32()? as usize;
        Some(r.text(len)?)
    } else {
        None
    };
    let content_type = if flags & BINARY_DATA != 0 {
        ContentType::Binary
    } else {
        ContentType::Json
    };
    if !r.0.is_empty() {
        return Err(CodecError::Truncated);
    }
    Ok(RecordedEvent {
        position,
        stream: StreamName::from_stored(stream),
        revision,
        id,
        event_type,
        data,
        metadata,
        recorded_at_micros,
        content_type,
    })
}

fn put_short(out: &mut Vec<u8>, text: &str) {
    // Names and types are validated to at most 256 bytes.
    let len = u16::try_from(text.len()).expect("names are at most 256 bytes");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

fn put_long(out: &mut Vec<u8>, text: &str) {
    // Events are capped far below 4 GiB by --max-event-bytes.
    let len = u32::try_from(text.len()).expect("event bodies are below 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

pub(super) struct Reader<'a>(pub(super) &'a [u8]);

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.0.len() < n {
            return Err(CodecError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    pub(super) fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    pub(super) fn u16(&mut self) -> Result<u16, CodecError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(super) fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(super) fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        self.take(N)?.try_into().map_err(|_| CodecError::Truncated)
    }

    pub(super) fn text(&mut self, n: usize) -> Result<String, CodecError> {
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| CodecError::InvalidUtf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_event() -> impl Strategy<Value = RecordedEvent> {
        (
            any::<u64>(),
            "[a-z0-9-]{1,40}",
            any::<u64>(),
            any::<u128>(),
            "[A-Za-z]{1,30}",
            ".{0,200}",
            proptest::option::of(".{0,50}"),
            any::<u64>(),
            any::<bool>(),
        )
            .prop_map(
                |(position, stream, revision, id, event_type, data, metadata, at, binary)| {
                    RecordedEvent {
                        position,
                        stream: StreamName::parse(&stream).expect("valid by construction"),
                        revision,
                        id: Uuid::from_u128(id),
                        event_type,
                        data,
                        metadata,
                        recorded_at_micros: at,
                        content_type: if binary {
                            ContentType::Binary
                        } else {
                            ContentType::Json
                        },
                    }
                },
            )
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config(256))]
        #[test]
        fn records_round_trip(event in arb_event()) {
            let bytes = encode_event(&event);
            prop_assert_eq!(decode_event(event.position, &bytes), Ok(event));
        }

        #[test]
        fn any_flipped_bit_is_detected(event in arb_event(), index: usize, bit in 0u8..8) {
            let mut bytes = encode_event(&event);
            let i = index % bytes.len();
            bytes[i] ^= 1 << bit;
            prop_assert!(decode_event(event.position, &bytes).is_err());
            prop_assert!(decode_id(event.position, &bytes).is_err());
        }

        #[test]
        fn the_id_alone_reads_as_the_whole_record_does(event in arb_event()) {
            let bytes = encode_event(&event);
            prop_assert_eq!(decode_id(event.position, &bytes), Ok(event.id));
            prop_assert!(decode_id(event.position.wrapping_add(1), &bytes).is_err());
        }

        #[test]
        fn a_reused_buffer_encodes_as_a_new_one(first in arb_event(), second in arb_event()) {
            let mut buffer = encode_event(&first);
            let e = &second;
            let record = RecordRef {
                position: e.position,
                stream: e.stream.as_str(),
                revision: e.revision,
                recorded_at_micros: e.recorded_at_micros,
                id: &e.id,
                event_type: &e.event_type,
                data: &e.data,
                metadata: e.metadata.as_deref(),
                content_type: e.content_type,
            };
            encode_record_into(&record, &mut buffer);
            prop_assert_eq!(&buffer, &encode_event(&second));
        }

        #[test]
        fn truncation_is_detected(event in arb_event(), cut: usize) {
            let bytes = encode_event(&event);
            let len = cut % bytes.len();
            prop_assert!(decode_event(event.position, &bytes[..len]).is_err());
        }

    }

    /// The layout before binary data: a flags byte of 0 or 1 (metadata or
    /// not) reads as JSON data, as it was written.
    #[test]
    fn records_from_before_binary_data_read_as_json() {
        for metadata in [None, Some("{\"m\":1}".to_owned())] {
            let mut body = vec![RECORD_VERSION];
            for n in [3u64, 0, 42] {
                body.extend_from_slice(&n.to_be_bytes());
            }
            body.extend_from_slice(&[7; 16]);
            for text in ["s", "T"] {
                body.extend_from_slice(&(text.len() as u16).to_be_bytes());
                body.extend_from_slice(text.as_bytes());
            }
            body.extend_from_slice(&2u32.to_be_bytes());
            body.extend_from_slice(b"{}");
            match &metadata {
                Some(m) => {
                    body.push(1);
                    body.extend_from_slice(&(m.len() as u32).to_be_bytes());
                    body.extend_from_slice(m.as_bytes());
                }
                None => body.push(0),
            }
            let crc = crc32fast::hash(&body);
            body.extend_from_slice(&crc.to_be_bytes());
            let event = decode_event(3, &body).expect("decodes");
            assert_eq!(event.content_type, ContentType::Json);
            assert_eq!((event.data.as_str(), event.metadata), ("{}", metadata));
        }
    }

    #[test]
    fn a_record_under_the_wrong_key_is_detected() {
        let event = RecordedEvent {
            content_type: ContentType::Json,
            position: 7,
            stream: StreamName::parse("s").expect("valid"),
            revision: 0,
            id: Uuid::nil(),
            event_type: "T".into(),
            data: "{}".into(),
            metadata: None,
            recorded_at_micros: 0,
        };
        let bytes = encode_event(&event);
        assert_eq!(
            decode_event(8, &bytes),
            Err(CodecError::MisplacedRecord {
                expected: 8,
                found: 7
            })
        );
    }
}
