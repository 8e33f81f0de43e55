//! The append body's fast path: one pass over the bytes that decodes the
//! usual shape of an append (`{"expected_revision": .., "events": [{"id":
//! "..", "type": "..", "data": .., "metadata": {..}}, ..]}`) and checks every
//! payload against the JSON reader rules (`model::check_json_text`) on the
//! way, where the serde path parses each payload once to find its end and
//! scans it again for the rules.
//!
//! It answers only what it can vouch for: anything else (an error of any
//! kind, an escape in a key, type or id, an exponent, a surrogate escape,
//! nesting past the limit, a duplicate or unknown field, metadata that is
//! `null` or not an object) gets `None`, and the caller decodes the body on
//! the serde path, which explains the error. So this path can change what an
//! append costs, never what it answers; a property test holds it to that.

use uuid::Uuid;

use crate::model::{
    check_event_type, ExpectedRevision, MAX_EVENTS_PER_APPEND, MAX_JSON_DEPTH, PLAIN_NUMBER_BYTES,
};

/// One event of an append body, borrowed from the body, its payloads known
/// to pass the reader rules and its type a valid event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PlainEvent<'a> {
    pub id: Option<Uuid>,
    pub event_type: &'a str,
    pub data: &'a str,
    pub metadata: Option<&'a str>,
}

/// Decodes `body` if it is an append body this path vouches for (1 to
/// `MAX_EVENTS_PER_APPEND` events, each with a valid type); `None` means
/// "decode it on the serde path", not "refused".
pub(crate) fn parse(text: &str) -> Option<(ExpectedRevision, Vec<PlainEvent<'_>>)> {
    // UTF-8 already, so every span below is a `str` slice.
    let body = text.as_bytes();
    let mut cur = Cursor {
        text,
        bytes: body,
        at: 0,
    };
    let mut expected = None;
    let mut events = None;
    cur.open(b'{')?;
    loop {
        match cur.key()? {
            "expected_revision" if expected.is_none() => {
                let span = cur.value()?;
                expected = Some(serde_json::from_str::<ExpectedRevision>(span).ok()?);
            }
            "events" if events.is_none() => events = Some(cur.events()?),
            _ => return None,
        }
        if cur.next_or_close(b'}')? {
            break;
        }
    }
    cur.skip_ws();
    if cur.at != body.len() {
        return None;
    }
    let events = events?;
    if events.is_empty() || events.len() > MAX_EVENTS_PER_APPEND {
        return None;
    }
    Some((expected.unwrap_or_default(), events))
}

/// A position in the body.
struct Cursor<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    /// Skips whitespace and takes `byte`.
    fn eat(&mut self, byte: u8) -> Option<()> {
        self.skip_ws();
        (self.bytes.get(self.at) == Some(&byte)).then(|| self.at += 1)
    }

    /// Takes the `{` or `[` that opens a container.
    fn open(&mut self, byte: u8) -> Option<()> {
        self.eat(byte)
    }

    /// After a member: `true` at the container's `close`, `false` after a
    /// `,` (another member follows).
    fn next_or_close(&mut self, close: u8) -> Option<bool> {
        self.skip_ws();
        let byte = *self.bytes.get(self.at)?;
        self.at += 1;
        match byte {
            b',' => Some(false),
            _ if byte == close => Some(true),
            _ => None,
        }
    }

    /// Whether the container just opened is empty (and takes its `close`).
    fn empty(&mut self, close: u8) -> bool {
        self.skip_ws();
        let empty = self.bytes.get(self.at) == Some(&close);
        if empty {
            self.at += 1;
        }
        empty
    }

    /// A string without escapes; its contents.
    fn plain_string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        let stop = crate::model::string_stop(self.bytes, start);
        if self.bytes.get(stop) != Some(&b'"') {
            return None;
        }
        self.at = stop + 1;
        // The body is UTF-8 and `"` is ASCII, so both ends are boundaries.
        self.text.get(start..stop)
    }

    /// An object key without escapes and its `:`.
    fn key(&mut self) -> Option<&'a str> {
        let key = self.plain_string()?;
        self.eat(b':')?;
        Some(key)
    }

    /// The `events` array.
    fn events(&mut self) -> Option<Vec<PlainEvent<'a>>> {
        self.open(b'[')?;
        let mut events = Vec::new();
        if self.empty(b']') {
            return Some(events);
        }
        loop {
            if events.len() == MAX_EVENTS_PER_APPEND {
                return None;
            }
            events.push(self.event()?);
            if self.next_or_close(b']')? {
                return Some(events);
            }
        }
    }

    /// One event object.
    fn event(&mut self) -> Option<PlainEvent<'a>> {
        self.open(b'{')?;
        let (mut id, mut event_type, mut data, mut metadata) = (None, None, None, None);
        if self.empty(b'}') {
            return None;
        }
        loop {
            match self.key()? {
                "id" if id.is_none() => {
                    self.skip_ws();
                    id = Some(if self.literal(b"null") {
                        None
                    } else {
                        Some(Uuid::try_parse(self.plain_string()?).ok()?)
                    });
                }
                "type" if event_type.is_none() => {
                    let text = self.plain_string()?;
                    check_event_type(text).ok()?;
                    event_type = Some(text);
                }
                "data" if data.is_none() => data = Some(self.value()?),
                "metadata" if metadata.is_none() => {
                    self.skip_ws();
                    if self.bytes.get(self.at) != Some(&b'{') {
                        return None;
                    }
                    metadata = Some(self.value()?);
                }
                _ => return None,
            }
            if self.next_or_close(b'}')? {
                break;
            }
        }
        Some(PlainEvent {
            id: id.flatten(),
            event_type: event_type?,
            data: data?,
            metadata,
        })
    }

    /// Takes `word` if it is next.
    fn literal(&mut self, word: &[u8]) -> bool {
        let found = self.bytes[self.at..].starts_with(word);
        if found {
            self.at += word.len();
        }
        found
    }

    /// A JSON value that passes the reader rules; its text.
    fn value(&mut self) -> Option<&'a str> {
        self.skip_ws();
        let start = self.at;
        self.nested(0)?;
        self.text.get(start..self.at)
    }

    /// The value at the cursor (no whitespace before it), inside `depth`
    /// arrays and objects of the payload.
    fn nested(&mut self, depth: usize) -> Option<()> {
        match *self.bytes.get(self.at)? {
            b'"' => self.string(),
            b'-' | b'0'..=b'9' => self.number(),
            b't' => self.literal(b"true").then_some(()),
            b'f' => self.literal(b"false").then_some(()),
            b'n' => self.literal(b"null").then_some(()),
            open @ (b'[' | b'{') => {
                if depth == MAX_JSON_DEPTH {
                    return None;
                }
                self.at += 1;
                let close = if open == b'[' { b']' } else { b'}' };
                if self.empty(close) {
                    return Some(());
                }
                loop {
                    self.skip_ws();
                    if open == b'{' {
                        self.string()?;
                        self.eat(b':')?;
                        self.skip_ws();
                    }
                    self.nested(depth + 1)?;
                    if self.next_or_close(close)? {
                        return Some(());
                    }
                }
            }
            _ => None,
        }
    }

    /// A string at the cursor, escapes allowed except surrogate halves.
    fn string(&mut self) -> Option<()> {
        if self.bytes.get(self.at) != Some(&b'"') {
            return None;
        }
        self.at += 1;
        loop {
            self.at = crate::model::string_stop(self.bytes, self.at);
            match *self.bytes.get(self.at)? {
                b'"' => {
                    self.at += 1;
                    return Some(());
                }
                b'\\' => {}
                _ => return None,
            }
            match *self.bytes.get(self.at + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 2,
                b'u' => {
                    let hex = self.text.get(self.at + 2..self.at + 6)?;
                    let unit = u16::from_str_radix(hex, 16).ok()?;
                    // A surrogate half: whether it pairs is the full
                    // check's question (and so is a `+` sign, which
                    // `from_str_radix` takes and JSON does not).
                    if (0xD800..=0xDFFF).contains(&unit) || hex.starts_with('+') {
                        return None;
                    }
                    self.at += 6;
                }
                _ => return None,
            }
        }
    }

    /// A number without an exponent, at most `PLAIN_NUMBER_BYTES` long
    /// (so a finite f64): `-? (0 | [1-9][0-9]*) (. [0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        let start = self.at;
        if self.bytes[self.at] == b'-' {
            self.at += 1;
        }
        match *self.bytes.get(self.at)? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.bytes.get(self.at) == Some(&b'.') {
            self.at += 1;
            if !self.bytes.get(self.at)?.is_ascii_digit() {
                return None;
            }
            self.digits();
        }
        let plain = !matches!(self.bytes.get(self.at), Some(b'e' | b'E'))
            && self.at - start <= PLAIN_NUMBER_BYTES;
        plain.then_some(())
    }

    fn digits(&mut self) {
        while self.bytes.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
    }
}
