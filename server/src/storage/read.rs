//! Stream and `$all` reads over one RocksDB snapshot each, so a page never mixes
//! two states of the store. Every record read is checked by `codec::decode_event`.

use rocksdb::{DBRawIteratorWithThreadMode, SnapshotWithThreadMode, DB};

use super::{codec, keys, StorageError, Store};
use crate::model::{RecordedEvent, StreamName};

/// Which way a read walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    Forward,
    Backward,
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
}

impl AllFilter {
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        self.stream_prefix
            .as_deref()
            .is_none_or(|p| event.stream.as_str().starts_with(p))
            && self
                .type_prefix
                .as_deref()
                .is_none_or(|p| event.event_type.starts_with(p))
    }

    pub fn is_empty(&self) -> bool {
        self.stream_prefix.is_none() && self.type_prefix.is_none()
    }
}

/// A page of `$all`.
#[derive(Debug, Clone)]
pub struct AllSlice {
    pub events: Vec<RecordedEvent>,
    /// Where to continue, past every event examined (filtered-out ones too).
    /// `None` only for a backward read that reached position 0.
    pub next_position: Option<u64>,
    /// The last committed position when the read ran; `None` for an empty store.
    pub head_position: Option<u64>,
}

type Snapshot<'a> = SnapshotWithThreadMode<'a, DB>;

impl Store {
    /// The last revision of `stream`, or `None` when it has no events.
    pub fn last_revision(&self, stream: &StreamName) -> Result<Option<u64>, StorageError> {
        match self.db.get_cf(self.cf(keys::CF_STREAMS), stream.as_str())? {
            Some(bytes) => Ok(Some(decode_state(stream, &bytes)?.last_revision)),
            None => Ok(None),
        }
    }

    /// Reads up to `limit` events of `stream` starting at revision `from` (inclusive).
    /// `from` defaults to 0 forward and to the last revision backward.
    /// Returns `None` when the stream has never been written.
    pub fn read_stream(
        &self,
        stream: &StreamName,
        from: Option<u64>,
        direction: Direction,
        limit: usize,
    ) -> Result<Option<StreamSlice>, StorageError> {
        let snapshot = self.db.snapshot();
        let Some(state) = snapshot.get_cf(self.cf(keys::CF_STREAMS), stream.as_str())? else {
            return Ok(None);
        };
        let last_revision = decode_state(stream, &state)?.last_revision;
        let prefix = keys::stream_index_prefix(stream.as_str());
        let mut it = snapshot.raw_iterator_cf(self.cf(keys::CF_STREAM_INDEX));
        let step: fn(&mut DBRawIteratorWithThreadMode<DB>) = match direction {
            Direction::Forward => {
                it.seek(keys::stream_index_key(stream.as_str(), from.unwrap_or(0)));
                |it| it.next()
            }
            Direction::Backward => {
                let from = from.unwrap_or(last_revision);
                it.seek_for_prev(keys::stream_index_key(stream.as_str(), from));
                |it| it.prev()
            }
        };
        let mut positions = Vec::with_capacity(limit.min(1024));
        let mut next_revision = None;
        while let Some((key, value)) = it.item() {
            if !key.starts_with(&prefix) {
                break;
            }
            if positions.len() == limit {
                next_revision = keys::decode_stream_index_revision(key);
                break;
            }
            let position = keys::decode_position(value).ok_or_else(|| {
                StorageError::CorruptIndex(format!("stream index value of {stream} is not 8 bytes"))
            })?;
            positions.push(position);
            step(&mut it);
        }
        it.status()?;
        let events = self.fetch(&snapshot, &positions)?;
        Ok(Some(StreamSlice {
            events,
            next_revision,
            last_revision,
        }))
    }

    /// Reads the event at `revision` of `stream`, if there is one.
    pub fn read_event(
        &self,
        stream: &StreamName,
        revision: u64,
    ) -> Result<Option<RecordedEvent>, StorageError> {
        let snapshot = self.db.snapshot();
        let key = keys::stream_index_key(stream.as_str(), revision);
        let Some(value) = snapshot.get_cf(self.cf(keys::CF_STREAM_INDEX), key)? else {
            return Ok(None);
        };
        let position = keys::decode_position(&value).ok_or_else(|| {
            StorageError::CorruptIndex(format!("stream index value of {stream} is not 8 bytes"))
        })?;
        Ok(self.fetch(&snapshot, &[position])?.pop())
    }

    /// Reads `$all` from `from` (inclusive), returning up to `limit` events that pass
    /// `filter` and examining at most `max_examined` events. `from` defaults to 0
    /// forward and to the head backward.
    pub fn read_all(
        &self,
        from: Option<u64>,
        direction: Direction,
        limit: usize,
        filter: &AllFilter,
        max_examined: usize,
    ) -> Result<AllSlice, StorageError> {
        let snapshot = self.db.snapshot();
        let next = match snapshot.get_cf(self.cf(keys::CF_META), keys::META_NEXT_POSITION)? {
            Some(bytes) => keys::decode_position(&bytes)
                .ok_or_else(|| StorageError::CorruptIndex("next_position is not 8 bytes".into()))?,
            None => 0,
        };
        let head_position = next.checked_sub(1);
        let mut it = snapshot.raw_iterator_cf(self.cf(keys::CF_EVENTS));
        let forward = direction == Direction::Forward;
        if forward {
            it.seek(keys::position_key(from.unwrap_or(0)));
        } else {
            it.seek_for_prev(keys::position_key(from.unwrap_or(u64::MAX)));
        }
        let mut events = Vec::new();
        let mut examined = 0;
        let mut last_examined = None;
        while let Some((key, value)) = it.item() {
            if events.len() == limit || examined == max_examined {
                break;
            }
            let position = keys::decode_position(key)
                .ok_or_else(|| StorageError::CorruptIndex("event key is not 8 bytes".into()))?;
            let event = codec::decode_event(position, value)
                .map_err(|source| StorageError::CorruptEvent { position, source })?;
            examined += 1;
            last_examined = Some(position);
            if filter.matches(&event) {
                events.push(event);
            }
            if forward {
                it.next();
            } else {
                it.prev();
            }
        }
        it.status()?;
        // An exhausted iterator means nothing at or past the cursor exists in this
        // snapshot: forward reads continue from the head, backward reads are done.
        let exhausted = !it.valid();
        let next_position = if forward {
            let cursor = last_examined.map_or(from.unwrap_or(0), |p| p + 1);
            Some(if exhausted { cursor.max(next) } else { cursor })
        } else if exhausted {
            None
        } else {
            last_examined.and_then(|p| p.checked_sub(1)).or(from)
        };
        Ok(AllSlice {
            events,
            next_position,
            head_position,
        })
    }

    fn fetch(
        &self,
        snapshot: &Snapshot<'_>,
        positions: &[u64],
    ) -> Result<Vec<RecordedEvent>, StorageError> {
        let cf = self.cf(keys::CF_EVENTS);
        let values = snapshot.multi_get_cf(positions.iter().map(|p| (cf, keys::position_key(*p))));
        positions
            .iter()
            .zip(values)
            .map(|(&position, value)| {
                let bytes = value?.ok_or_else(|| {
                    StorageError::CorruptIndex(format!("index points at missing event {position}"))
                })?;
                codec::decode_event(position, &bytes)
                    .map_err(|source| StorageError::CorruptEvent { position, source })
            })
            .collect()
    }
}

fn decode_state(stream: &StreamName, bytes: &[u8]) -> Result<codec::StreamState, StorageError> {
    codec::decode_stream_state(bytes)
        .map_err(|e| StorageError::CorruptIndex(format!("state of stream {stream}: {e}")))
}

impl Store {
    /// Where the event with `id` is stored, if it is.
    pub(super) fn event_id_position(&self, id: &uuid::Uuid) -> Result<Option<u64>, StorageError> {
        match self.db.get_cf(self.cf(keys::CF_EVENT_IDS), id.as_bytes())? {
            Some(bytes) => Ok(Some(keys::decode_position(&bytes).ok_or_else(|| {
                StorageError::CorruptIndex(format!("event id index value of {id} is not 8 bytes"))
            })?)),
            None => Ok(None),
        }
    }

    /// Reads the event at `position`, which an index says exists.
    pub(super) fn read_position(&self, position: u64) -> Result<RecordedEvent, StorageError> {
        let bytes = self
            .db
            .get_cf(self.cf(keys::CF_EVENTS), keys::position_key(position))?
            .ok_or_else(|| {
                StorageError::CorruptIndex(format!("index points at missing event {position}"))
            })?;
        codec::decode_event(position, &bytes)
            .map_err(|source| StorageError::CorruptEvent { position, source })
    }
}
