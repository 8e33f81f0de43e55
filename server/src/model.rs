//! The domain types every layer shares: validated names, expected revisions,
//! events to append and events as recorded, read requests and their pages,
//! stream states with their visibility rules, catalog entries, job kinds.
//! Validation happens once, in the constructors here; everything below the
//! HTTP layer trusts these types. (Their bytes on disk are storage's business.)

use std::fmt;
use uuid::Uuid;

/// Longest stream name, in bytes.
pub const MAX_STREAM_NAME_BYTES: usize = 256;
/// Longest event type, in bytes.
pub const MAX_EVENT_TYPE_BYTES: usize = 256;
/// Most events in one append.
pub const MAX_EVENTS_PER_APPEND: usize = 10_000;

/// Deepest nesting of arrays and objects accepted in event data, event metadata
/// and custom stream metadata. Every reader must decode what was stored, and
/// serde_json (the project's client among them) stops at 128 levels for a whole
/// document, of which a page or a subscription line uses up to 3 around the
/// event: 64 leaves room.
pub const MAX_JSON_DEPTH: usize = 64;

/// Why a JSON payload was refused (see `check_json_text`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonTextError {
    #[error("nests arrays and objects more than {MAX_JSON_DEPTH} levels deep; the limit is {MAX_JSON_DEPTH} levels")]
    TooDeep,
    #[error("holds a value JSON readers cannot decode: {0}")]
    Unreadable(String),
}

/// Checks that `json`, a valid JSON text, is one every reader decodes: arrays
/// and objects nest at most `MAX_JSON_DEPTH` levels, numbers are within f64's
/// range (`1e400` is valid JSON that serde_json, and so `skald-client`,
/// refuses), strings are Unicode text (no escaped half of a surrogate pair,
/// `"\ud800"`). One pass with serde_json's own decoder, building nothing.
pub fn check_json_text(json: &str) -> Result<(), JsonTextError> {
    use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};

    const TOO_DEEP: &str = "too deep";
    /// Walks one value `depth` levels down.
    #[derive(Clone, Copy)]
    struct Walk(usize);
    impl<'de> DeserializeSeed<'de> for Walk {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl Walk {
        fn nested<E: Error>(self) -> Result<Walk, E> {
            if self.0 >= MAX_JSON_DEPTH {
                Err(E::custom(TOO_DEEP))
            } else {
                Ok(Walk(self.0 + 1))
            }
        }
    }
    impl<'de> Visitor<'de> for Walk {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let inner = self.nested()?;
            while seq.next_element_seed(inner)?.is_some() {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let inner = self.nested()?;
            while map.next_key_seed(inner)?.is_some() {
                map.next_value_seed(inner)?;
            }
            Ok(())
        }
    }
    let mut de = serde_json::Deserializer::from_str(json);
    Walk(0).deserialize(&mut de).map_err(|e| {
        if e.to_string().starts_with(TOO_DEEP) {
            JsonTextError::TooDeep
        } else {
            JsonTextError::Unreadable(e.to_string())
        }
    })
}

/// [`check_json_text`] for a text serde_json already parsed as valid JSON:
/// one scan of its bytes answers the common case (no nesting past the limit,
/// no number long enough or with an exponent that could overflow f64, no
/// escaped surrogate), and anything else gets the full check, so the answer
/// and its message are always `check_json_text`'s. Appends check every
/// event's data and metadata with it: the full check decodes every string
/// (about 30% of an append's handler time for small events, measured with
/// callgrind: docs/benchmarks.md).
pub fn check_raw_json(raw: &serde_json::value::RawValue) -> Result<(), JsonTextError> {
    if plainly_readable(raw.get().as_bytes()) {
        Ok(())
    } else {
        check_json_text(raw.get())
    }
}

/// Numbers up to this many bytes, without an exponent, are finite f64s
/// (at most 10^300).
pub(crate) const PLAIN_NUMBER_BYTES: usize = 300;

/// The index of the first byte at or after `i` that ends a JSON string's
/// plain run: `"`, `\\` or a control character (`json.len()` if none), eight
/// bytes at a time: strings in events are mostly short keys and identifiers,
/// too short for a vectorised search's setup to pay.
pub(crate) fn string_stop(json: &[u8], mut i: usize) -> usize {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    const SPACES: u64 = u64::from_le_bytes([0x20; 8]);
    const QUOTES: u64 = u64::from_le_bytes([b'"'; 8]);
    const BACKSLASHES: u64 = u64::from_le_bytes([b'\\'; 8]);
    // Flags every byte below `n` in the word, and maybe bytes above a
    // flagged one (a borrow runs upwards): the lowest flag is always a true
    // one, so the word's first stop is its lowest flagged byte (the word is
    // read little-endian: its lowest byte is the first).
    let has_below = |x: u64, n: u64| x.wrapping_sub(n) & !x & HIGHS;
    while let Some(chunk) = json.get(i..i + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let stops = has_below(word ^ QUOTES, ONES)
            | has_below(word ^ BACKSLASHES, ONES)
            | has_below(word, SPACES);
        if stops != 0 {
            return i + (stops.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&b) = json.get(i) {
        if b == b'"' || b == b'\\' || b < 0x20 {
            break;
        }
        i += 1;
    }
    i
}

/// Whether `json`, a valid JSON text, is certainly one [`check_json_text`]
/// accepts; `false` means "ask it", not "refused".
fn plainly_readable(json: &[u8]) -> bool {
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&byte) = json.get(i) {
        match byte {
            b'"' => {
                // Up to the closing quote; escapes skip the byte they escape.
                i += 1;
                loop {
                    i = string_stop(json, i);
                    match json.get(i) {
                        Some(b'"') => break,
                        Some(b'\\') => {}
                        // A control character: not in a valid text.
                        Some(_) | None => return false,
                    }
                    match json.get(i + 1..i + 4) {
                        // `\uD800` to `\uDFFF`: half of a surrogate pair.
                        Some([b'u', b'd' | b'D', b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F']) => {
                            return false
                        }
                        _ => i += 2,
                    }
                }
                i += 1;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return false;
                }
                i += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while let Some(b'0'..=b'9' | b'.' | b'-' | b'+') = json.get(i) {
                    i += 1;
                }
                if matches!(json.get(i), Some(b'e' | b'E')) || i - start > PLAIN_NUMBER_BYTES {
                    return false;
                }
            }
            _ => i += 1,
        }
    }
    true
}

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("is {len} bytes, longer than the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("must not contain control characters")]
    ControlCharacter,
    #[error("must not start with '$' (reserved for system streams)")]
    Reserved,
    /// `.` and `..` are path segments that URL normalisation removes, so no
    /// HTTP client could address such a stream.
    #[error("must not be '.' or '..' (URLs cannot address them)")]
    DotSegment,
}

/// A user stream name: 1..=256 bytes of UTF-8, no control characters, not starting
/// with `$`, and not `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamName(String);

impl StreamName {
    /// Validates `raw` as a stream name.
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        check_text(raw, MAX_STREAM_NAME_BYTES)?;
        if raw.starts_with('$') {
            return Err(NameError::Reserved);
        }
        if raw == "." || raw == ".." {
            return Err(NameError::DotSegment);
        }
        Ok(Self(raw.to_owned()))
    }

    /// Wraps a name read back from storage, which was validated when it was written.
    pub(crate) fn from_stored(raw: String) -> Self {
        Self(raw)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks an event type: 1..=256 bytes, no control characters.
pub fn check_event_type(raw: &str) -> Result<(), NameError> {
    check_text(raw, MAX_EVENT_TYPE_BYTES)
}

fn check_text(raw: &str, max: usize) -> Result<(), NameError> {
    if raw.is_empty() {
        return Err(NameError::Empty);
    }
    if raw.len() > max {
        return Err(NameError::TooLong {
            len: raw.len(),
            max,
        });
    }
    if raw.chars().any(char::is_control) {
        return Err(NameError::ControlCharacter);
    }
    Ok(())
}

/// What the appender believes about the stream's last revision (the wire type
/// is the domain type: one definition, with its rule `admits`).
pub use skald_proto::ExpectedRevision;

/// Formats a stream's last revision for messages: the number, or "none" for no stream.
pub fn display_revision(revision: Option<u64>) -> String {
    revision.map_or_else(|| "none (no stream)".to_owned(), |r| r.to_string())
}

/// One event to append, already validated. `data` and `metadata` are JSON texts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub id: Uuid,
    pub event_type: Text,
    pub data: Text,
    pub metadata: Option<Text>,
    pub content_type: ContentType,
}

/// Immutable UTF-8 text that may share its bytes with other `Text`s: the
/// events of one append body are slices of the body, so decoding an append
/// allocates nothing per event, and the writer thread that drops the events
/// only releases references (freeing another thread's allocations was a
/// tenth of an append's request-side CPU: docs/benchmarks.md).
#[derive(Clone)]
pub struct Text {
    // A `String` behind the `Arc` (not an `Arc<str>`): a text decoded on its
    // own (the serde path, gRPC) is shared without copying it again.
    whole: std::sync::Arc<String>,
    range: std::ops::Range<usize>,
}

impl Text {
    /// `part`, which must be a slice of `whole`, sharing `whole`'s bytes;
    /// `None` if it is not a slice of it.
    pub fn part_of(whole: &std::sync::Arc<String>, part: &str) -> Option<Self> {
        // Addresses, not contents: a `start` in bounds means `part` is the
        // bytes of `whole` at `start` (no unsafe code reads through them).
        let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
        let range = start..start.checked_add(part.len())?;
        whole.get(range.clone())?;
        Some(Self {
            whole: std::sync::Arc::clone(whole),
            range,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.whole[self.range.clone()]
    }

    /// The bytes this text keeps alive: all of the text it is a part of.
    pub fn held_len(&self) -> usize {
        self.whole.len()
    }

    /// Whether the two are parts of the same text.
    pub fn shares_bytes_with(&self, other: &Text) -> bool {
        std::sync::Arc::ptr_eq(&self.whole, &other.whole)
    }
}

impl std::ops::Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<String> for Text {
    fn from(text: String) -> Self {
        let len = text.len();
        Self {
            whole: std::sync::Arc::new(text),
            range: 0..len,
        }
    }
}

impl From<&str> for Text {
    fn from(text: &str) -> Self {
        text.to_owned().into()
    }
}

impl From<Text> for String {
    fn from(text: Text) -> Self {
        text.as_str().to_owned()
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Text {}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an event's data is. The HTTP API stores JSON; the gRPC front end
/// also stores KurrentDB's `application/octet-stream` payloads, byte for
/// byte, as the base64 of the bytes in a JSON string, so that every stored
/// `data` stays a JSON text every reader decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContentType {
    #[default]
    Json,
    /// `data` is a JSON string holding the standard, padded base64 of the
    /// payload's bytes.
    Binary,
}

impl ContentType {
    /// The media type KurrentDB's clients (and the HTTP API's
    /// `content_type`) name it by.
    pub fn media_type(self) -> &'static str {
        match self {
            ContentType::Json => "application/json",
            ContentType::Binary => "application/octet-stream",
        }
    }
}

/// One event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub position: u64,
    pub stream: StreamName,
    pub revision: u64,
    pub id: Uuid,
    pub event_type: String,
    /// JSON text.
    pub data: String,
    /// JSON text of an object, when given.
    pub metadata: Option<String>,
    /// Commit time, microseconds since the Unix epoch (UTC).
    pub recorded_at_micros: u64,
    pub content_type: ContentType,
}

/// The kinds of maintenance jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    Scavenge,
    Verify,
    Backup,
}

impl JobKind {
    /// Its name in routes, logs and error codes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scavenge => "scavenge",
            Self::Verify => "verify",
            Self::Backup => "backup",
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an append's events landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    pub first_revision: u64,
    pub last_revision: u64,
    pub first_position: u64,
    pub last_position: u64,
    /// `true` when the request repeated an append that was already stored and
    /// nothing was written.
    pub idempotent_replay: bool,
}

/// Which way a read walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    Forward,
    Backward,
}

/// What a read of one stream found.
#[derive(Debug, Clone)]
pub enum StreamRead<T> {
    Found(T),
    /// Never written, or soft-deleted and not written since.
    NotFound,
    /// Hard-deleted.
    Tombstoned,
}

/// A page of one stream.
#[derive(Debug, Clone)]
pub struct StreamSlice {
    pub events: Vec<RecordedEvent>,
    /// Where the next page starts; `None` when this read reached the end in its direction.
    pub next_revision: Option<u64>,
    pub last_revision: u64,
}

/// Server-side filter of `$all` reads; `None` fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllFilter {
    pub stream_prefix: Option<String>,
    pub type_prefix: Option<String>,
    /// The stream prefixes the caller's token is limited to (any of them);
    /// `None`: every stream.
    pub scope: Option<std::sync::Arc<[String]>>,
}

impl AllFilter {
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        let stream = event.stream.as_str();
        self.stream_prefix
            .as_deref()
            .is_none_or(|p| stream.starts_with(p))
            && self
                .type_prefix
                .as_deref()
                .is_none_or(|p| event.event_type.starts_with(p))
            && self
                .scope
                .as_deref()
                .is_none_or(|scope| scope.iter().any(|p| stream.starts_with(p.as_str())))
    }

    pub fn is_empty(&self) -> bool {
        self.stream_prefix.is_none() && self.type_prefix.is_none() && self.scope.is_none()
    }
}

/// A page of `$all`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllSlice {
    pub events: Vec<RecordedEvent>,
    /// Where to continue, past every event examined (filtered-out ones too).
    /// `None` only for a backward read that reached position 0.
    pub next_position: Option<u64>,
    /// The last committed position when the read ran; `None` for an empty store.
    pub head_position: Option<u64>,
    /// Events examined (filtered-out ones too).
    pub examined: usize,
}

/// A stream in the catalog: its state and the first visible revision still stored.
#[derive(Debug, Clone)]
pub struct CatalogEntry {
    pub name: StreamName,
    pub state: StreamState,
    /// `None`: no visible event is stored.
    pub first_stored_revision: Option<u64>,
}

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
    /// The user's own JSON object, stored as given. Kept apart from the
    /// stream's state on disk, so it is here only where a caller asked for it
    /// (see `StreamState::has_custom`).
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
    /// Whether the stream has custom metadata. The state the writer reads and
    /// rewrites on every append carries only this flag; `metadata.custom` is
    /// loaded separately, by the reads that show it.
    pub has_custom: bool,
    /// Which change of the metadata this is; `None` before the first.
    pub metadata_version: Option<MetadataVersion>,
}

/// When a stream's metadata was last set: what KurrentDB's clients see as the
/// last event of the stream's `$$` metadata stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetadataVersion {
    /// 0 for the first change, then one more for each.
    pub revision: u64,
    /// When the change committed, µs since the epoch.
    pub set_at_micros: u64,
    /// The last position committed before it (0 for an empty store).
    pub position: u64,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::arb_json;
    use proptest::prelude::*;

    #[test]
    fn a_text_is_a_slice_of_the_text_it_shares() {
        let whole = std::sync::Arc::new(r#"{"type":"é1","data":{}}"#.to_owned());
        let start = whole.find('é').expect("present");
        let part = Text::part_of(&whole, &whole[start..start + 3]).expect("a slice of it");
        assert_eq!(part, "é1");
        assert_eq!(
            std::sync::Arc::strong_count(&whole),
            2,
            "shared, not copied"
        );
        let elsewhere = String::from("é1");
        assert!(Text::part_of(&whole, &elsewhere).is_none());
        assert!(Text::part_of(&whole, &whole[..]).is_some());
        assert_eq!(Text::from("abc"), Text::from(String::from("abc")));
        assert_eq!(format!("{:?}", Text::from("a\"b")), r#""a\"b""#);
    }

    #[test]
    fn values_readers_cannot_hold_are_found() {
        for lone in [
            r#""\ud800""#,
            r#""\udc00""#,
            r#"{"a":"x\ud83dy"}"#,
            r#"["\ud83d\ud83d\ude00"]"#,
            r#""\ud83d\n""#,
            r#""\ud83d\u0041""#,
            "1e400",
            r#"{"a":[-1e309]}"#,
        ] {
            assert!(
                matches!(check_json_text(lone), Err(JsonTextError::Unreadable(_))),
                "{lone}"
            );
            // Which is why: the project's client cannot decode it.
            assert!(
                serde_json::from_str::<serde_json::Value>(lone).is_err(),
                "{lone}"
            );
        }
        for fine in [
            r#""\ud83d\ude00""#,
            r#"{"\\ud800":"\\udc00"}"#,
            r#""\u00e9\n\"""#,
            r#"[1,"\ud83d\ude00",{"k":"\uD83D\uDE00"}]"#,
            "\"plain 😀\"",
            "18446744073709551616",
            "-1e-400",
            "1.7976931348623157e308",
        ] {
            assert_eq!(check_json_text(fine), Ok(()), "{fine}");
            assert!(
                serde_json::from_str::<serde_json::Value>(fine).is_ok(),
                "{fine}"
            );
        }
    }

    fn raw(json: &str) -> &serde_json::value::RawValue {
        serde_json::from_str(json).expect("valid JSON")
    }

    #[test]
    fn the_scan_answers_common_payloads_itself() {
        for plain in [
            r#"{"accountId":"acc-000001","amount":101,"currency":"EUR","note":"x \" \\ \u00e9"}"#,
            r#"{"correlationId":"4b1f0c8e-1d1a-4f53-9d0e-1a2b3c4d5e6f","source":"esbench"}"#,
            r#"[-1.5,0,true,null,{"a":[]},"\ue000\uffff"]"#,
        ] {
            assert!(plainly_readable(plain.as_bytes()), "{plain}");
            assert_eq!(check_raw_json(raw(plain)), Ok(()));
        }
        let too_deep = format!(
            "{}{}",
            "[".repeat(MAX_JSON_DEPTH + 1),
            "]".repeat(MAX_JSON_DEPTH + 1)
        );
        for asks in [r#""\ud83d\ude00""#, "1e5", &too_deep] {
            assert!(!plainly_readable(asks.as_bytes()), "{asks}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn the_scan_agrees_with_the_full_check(json in arb_json()) {
            let raw = raw(&json);
            prop_assert_eq!(check_raw_json(raw), check_json_text(&json), "{}", json);
        }

        #[test]
        fn string_stop_finds_the_first_quote_backslash_or_control(
            bytes in proptest::collection::vec(
                prop_oneof![
                    Just(b'"'), Just(b'\\'), Just(0x1f), Just(0x20), 0x80u8..,
                    // Bytes a borrow out of a stop's byte could flag.
                    Just(b'"' + 1), Just(b'\\' + 1), Just(0x21), Just(0x01),
                    any::<u8>(),
                ],
                0..40,
            ),
            from in 0usize..40,
        ) {
            let from = from.min(bytes.len());
            let naive = bytes[from..]
                .iter()
                .position(|b| *b == b'"' || *b == b'\\' || *b < 0x20)
                .map_or(bytes.len(), |at| from + at);
            prop_assert_eq!(string_stop(&bytes, from), naive);
        }
    }

    #[test]
    fn nesting_is_counted_outside_strings() {
        let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(check_json_text(&nest(MAX_JSON_DEPTH)), Ok(()));
        assert_eq!(
            check_json_text(&nest(MAX_JSON_DEPTH + 1)),
            Err(JsonTextError::TooDeep)
        );
        assert_eq!(check_json_text(&nest(200)), Err(JsonTextError::TooDeep));
        let objects = format!(
            "{}1{}",
            r#"{"a":"#.repeat(MAX_JSON_DEPTH),
            "}".repeat(MAX_JSON_DEPTH)
        );
        assert_eq!(check_json_text(&objects), Ok(()));
        assert_eq!(
            check_json_text(&format!("[{objects}]")),
            Err(JsonTextError::TooDeep)
        );
        let in_string = format!(r#"{{"a":"{}","b":[[]]}}"#, "[".repeat(100));
        assert_eq!(check_json_text(&in_string), Ok(()));
    }

    #[test]
    fn stream_names_are_validated() {
        assert!(StreamName::parse("order-42").is_ok());
        assert!(StreamName::parse("ünïcode/ok").is_ok());
        assert_eq!(StreamName::parse(""), Err(NameError::Empty));
        assert_eq!(StreamName::parse("$all"), Err(NameError::Reserved));
        assert_eq!(StreamName::parse("a\nb"), Err(NameError::ControlCharacter));
        assert_eq!(StreamName::parse("a\0b"), Err(NameError::ControlCharacter));
        assert_eq!(StreamName::parse("."), Err(NameError::DotSegment));
        assert_eq!(StreamName::parse(".."), Err(NameError::DotSegment));
        assert!(StreamName::parse("...").is_ok() && StreamName::parse(".a").is_ok());
        assert!(StreamName::parse(&"x".repeat(256)).is_ok());
        assert_eq!(
            StreamName::parse(&"x".repeat(257)),
            Err(NameError::TooLong { len: 257, max: 256 })
        );
    }
}
