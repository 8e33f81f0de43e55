//! Stream and `$all` reads over one RocksDB snapshot each, so a page never mixes
//! two states of the store. Every record read is checked by `codec::decode_event`.

use std::collections::HashMap;

use rocksdb::{SnapshotWithThreadMode, DB};

use super::stream_index::{self, Cursor};
use super::stream_state::{self, StreamState};
use super::{codec, keys, now_micros, StorageError, Store};
use crate::model::{
    AllFilter, AllSlice, Direction, RecordedEvent, StreamName, StreamRead, StreamSlice,
};

/// A page stops once its events' data and metadata reach this many bytes (it
/// always holds at least one event), so `limit=4096` of 1 MiB events cannot
/// make one answer 4 GiB.
pub const MAX_PAGE_BYTES: usize = 16 << 20;

pub(crate) fn event_bytes(event: &RecordedEvent) -> usize {
    event.data.len() + event.metadata.as_ref().map_or(0, String::len)
}

pub(super) type Snapshot<'a> = SnapshotWithThreadMode<'a, DB>;

impl Store {
    /// The state of `stream`, `None` when nothing was ever written for it.
    pub fn stream_state(&self, stream: &StreamName) -> Result<Option<StreamState>, StorageError> {
        match self
            .db
            .get_cf(self.cf(keys::CF_STREAMS), keys::stream_key(stream.as_str()))?
        {
            Some(bytes) => Ok(Some(decode_state(stream.as_str(), &bytes)?)),
            None => Ok(None),
        }
    }

    /// The state of `stream` with its custom metadata loaded, for the reads that
    /// show it (`stream_state` leaves `metadata.custom` empty).
    pub fn stream_state_with_custom(
        &self,
        stream: &StreamName,
    ) -> Result<Option<StreamState>, StorageError> {
        self.stream_state_with_custom_at(&self.db.snapshot(), stream)
    }

    /// `stream_state_with_custom` as of `snapshot`.
    pub(super) fn stream_state_with_custom_at(
        &self,
        snapshot: &Snapshot<'_>,
        stream: &StreamName,
    ) -> Result<Option<StreamState>, StorageError> {
        let Some(bytes) =
            snapshot.get_cf(self.cf(keys::CF_STREAMS), keys::stream_key(stream.as_str()))?
        else {
            return Ok(None);
        };
        let mut state = decode_state(stream.as_str(), &bytes)?;
        self.load_custom(snapshot, stream.as_str(), &mut state)?;
        Ok(Some(state))
    }

    /// Fills in `state`'s custom metadata from `snapshot` when it has some and
    /// it was not decoded with the state.
    pub(super) fn load_custom(
        &self,
        snapshot: &Snapshot<'_>,
        stream: &str,
        state: &mut StreamState,
    ) -> Result<(), StorageError> {
        if state.has_custom && state.metadata.custom.is_none() {
            let bytes = snapshot
                .get_cf(self.cf(keys::CF_STREAM_CUSTOM), keys::stream_key(stream))?
                .ok_or_else(|| {
                    StorageError::CorruptIndex(format!("custom metadata of {stream} is missing"))
                })?;
            let text = String::from_utf8(bytes).map_err(|_| {
                StorageError::CorruptIndex(format!("custom metadata of {stream} is not UTF-8"))
            })?;
            state.metadata.custom = Some(text);
        }
        Ok(())
    }

    /// The last revision of `stream` as expected-revision checks see it.
    pub fn last_revision(
        &self,
        stream: &StreamName,
    ) -> Result<StreamRead<Option<u64>>, StorageError> {
        Ok(match self.stream_state(stream)? {
            Some(state) if state.tombstoned => StreamRead::Tombstoned,
            Some(state) => StreamRead::Found(state.current_revision()),
            None => StreamRead::Found(None),
        })
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
    ) -> Result<StreamRead<StreamSlice>, StorageError> {
        let snapshot = self.db.snapshot();
        let Some(state) =
            snapshot.get_cf(self.cf(keys::CF_STREAMS), keys::stream_key(stream.as_str()))?
        else {
            return Ok(StreamRead::NotFound);
        };
        let state = decode_state(stream.as_str(), &state)?;
        if state.tombstoned {
            return Ok(StreamRead::Tombstoned);
        }
        let (true, Some(last_revision)) = (state.exists(), state.last_revision) else {
            return Ok(StreamRead::NotFound);
        };
        let first_visible = state.first_visible_revision();
        let it = snapshot.raw_iterator_cf(self.cf(keys::CF_STREAM_INDEX));
        let mut cursor = match direction {
            Direction::Forward => {
                Cursor::forward(it, stream.as_str(), from.unwrap_or(0).max(first_visible))?
            }
            Direction::Backward => {
                Cursor::backward(it, stream.as_str(), from.unwrap_or(last_revision))?
            }
        };
        let now = now_micros();
        let mut events = Vec::with_capacity(limit.min(1024));
        let mut next_revision = None;
        let mut bytes = 0;
        // The revision under the cursor, if it is in the visible range.
        let current = |cursor: &Cursor<'_>| cursor.current().filter(|&(r, _)| r >= first_visible);
        // One record at a time, each pinned only while it is decoded: a page
        // holds at most MAX_PAGE_BYTES plus one event, and never reads a
        // record it will not return (visibility by age needs the record).
        while events.len() < limit {
            let Some((revision, position)) = current(&cursor) else {
                break;
            };
            if bytes >= MAX_PAGE_BYTES {
                next_revision = Some(revision);
                break;
            }
            let event = self.fetch(&snapshot, position)?;
            if state.is_visible(event.revision, event.recorded_at_micros, now) {
                bytes += event_bytes(&event);
                events.push(event);
            }
            cursor.advance()?;
        }
        if next_revision.is_none() && (events.len() == limit || bytes >= MAX_PAGE_BYTES) {
            next_revision = current(&cursor).map(|(revision, _)| revision);
        }
        Ok(StreamRead::Found(StreamSlice {
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
    ) -> Result<StreamRead<Option<RecordedEvent>>, StorageError> {
        let snapshot = self.db.snapshot();
        let Some(state) =
            snapshot.get_cf(self.cf(keys::CF_STREAMS), keys::stream_key(stream.as_str()))?
        else {
            return Ok(StreamRead::Found(None));
        };
        let state = decode_state(stream.as_str(), &state)?;
        if state.tombstoned {
            return Ok(StreamRead::Tombstoned);
        }
        let mut it = snapshot.raw_iterator_cf(self.cf(keys::CF_STREAM_INDEX));
        let Some(position) = stream_index::run_holding(&mut it, stream.as_str(), revision)?
            .and_then(|run| run.position_of(revision))
        else {
            return Ok(StreamRead::Found(None));
        };
        let now = now_micros();
        let event = Some(self.fetch(&snapshot, position)?)
            .filter(|e| state.is_visible(e.revision, e.recorded_at_micros, now));
        Ok(StreamRead::Found(event))
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
        let now = now_micros();
        let mut states = StateCache::default();
        let mut bytes = 0;
        let mut events = Vec::new();
        let mut examined = 0;
        let mut last_examined = None;
        while let Some((key, value)) = it.item() {
            if events.len() == limit || examined == max_examined || bytes >= MAX_PAGE_BYTES {
                break;
            }
            let position = keys::decode_position(key)
                .ok_or_else(|| StorageError::CorruptIndex("event key is not 8 bytes".into()))?;
            let event = codec::decode_event(position, value)
                .map_err(|source| StorageError::CorruptEvent { position, source })?;
            examined += 1;
            last_examined = Some(position);
            if filter.matches(&event) && states.visible(self, &snapshot, &event, now)? {
                bytes += event_bytes(&event);
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
            examined,
        })
    }

    /// The event at `position`, which an index entry points at.
    fn fetch(&self, snapshot: &Snapshot<'_>, position: u64) -> Result<RecordedEvent, StorageError> {
        let bytes = snapshot
            .get_pinned_cf(self.cf(keys::CF_EVENTS), keys::position_key(position))?
            .ok_or_else(|| {
                StorageError::CorruptIndex(format!("index points at missing event {position}"))
            })?;
        codec::decode_event(position, &bytes)
            .map_err(|source| StorageError::CorruptEvent { position, source })
    }
}

pub(super) fn decode_state(stream: &str, bytes: &[u8]) -> Result<StreamState, StorageError> {
    stream_state::decode(bytes)
        .map_err(|e| StorageError::CorruptIndex(format!("state of stream {stream}: {e}")))
}

/// Stream states looked up during one `$all` read (one lookup per stream per page).
#[derive(Default)]
struct StateCache(HashMap<String, Option<StreamState>>);

impl StateCache {
    fn visible(
        &mut self,
        store: &Store,
        snapshot: &Snapshot<'_>,
        event: &RecordedEvent,
        now: u64,
    ) -> Result<bool, StorageError> {
        let name = event.stream.as_str();
        if !self.0.contains_key(name) {
            let state = match snapshot.get_cf(store.cf(keys::CF_STREAMS), keys::stream_key(name))? {
                Some(bytes) => Some(decode_state(name, &bytes)?),
                None => None,
            };
            self.0.insert(name.to_owned(), state);
        }
        Ok(match &self.0[name] {
            Some(state) => state.is_visible(event.revision, event.recorded_at_micros, now),
            None => true,
        })
    }
}

impl Store {
    /// The positions of those of `ids` that `event_ids` holds, in one batched
    /// lookup (sorted, as RocksDB's batched `MultiGet` wants them) of the ids
    /// the id filter cannot rule out, which is what `ids` keeps. The id
    /// index's newest ids are in its memory, not here (`id_index::lookup`).
    pub(super) fn stored_event_ids(
        &self,
        ids: &mut Vec<uuid::Uuid>,
    ) -> Result<std::collections::HashMap<uuid::Uuid, u64>, StorageError> {
        // The ids' byte order, compared as integers.
        ids.sort_unstable_by_key(|id| id.as_u128());
        ids.dedup();
        self.id_filter.retain_possible(ids);
        if ids.is_empty() {
            return Ok(std::collections::HashMap::new());
        }
        let values = self.db.batched_multi_get_cf(
            self.cf(keys::CF_EVENT_IDS),
            ids.iter().map(uuid::Uuid::as_bytes),
            true,
        );
        let mut found = std::collections::HashMap::new();
        for (id, value) in ids.iter().zip(values) {
            if let Some(bytes) = value? {
                let position = keys::decode_position(&bytes).ok_or_else(|| {
                    StorageError::CorruptIndex(format!(
                        "event id index value of {id} is not 8 bytes"
                    ))
                })?;
                found.insert(*id, position);
            }
        }
        Ok(found)
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
