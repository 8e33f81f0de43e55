//! Whole-store scans for maintenance: the stream catalog in name order, the
//! hidden events of a stream (what scavenging removes), integrity checks
//! (verify), compaction and disk usage.

use rocksdb::{CompactOptions, Direction as RocksDirection, IteratorMode};

use super::read::decode_state;
use super::stream_state::StreamState;
use super::writer::HiddenEvent;
use super::{codec, keys, StorageError, Store};
use crate::model::StreamName;

/// One page of hidden events of a stream.
#[derive(Debug, Default)]
pub struct HiddenPage {
    pub events: Vec<HiddenEvent>,
    /// Index entries examined.
    pub scanned: u64,
    /// Where to continue in this stream; `None` when no more can be hidden.
    pub next_revision: Option<u64>,
}

/// A problem `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The position concerned, when there is one.
    pub position: Option<u64>,
    pub message: String,
}

/// One step of a verify pass.
#[derive(Debug, Default)]
pub struct VerifyPage {
    pub checked: u64,
    pub problems: Vec<Problem>,
    /// Where to continue (a position for events, a raw key for the index); `None` when done.
    pub next: Option<Vec<u8>>,
}

impl Store {
    /// Up to `limit` streams in name order, starting after `after`, whose names
    /// start with `prefix`.
    pub fn streams_page(
        &self,
        prefix: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(StreamName, StreamState)>, StorageError> {
        let prefix = prefix.unwrap_or("");
        let start = match after {
            Some(after) if after >= prefix => {
                let mut key = after.as_bytes().to_vec();
                key.push(0); // the smallest name greater than `after`
                key
            }
            _ => prefix.as_bytes().to_vec(),
        };
        let mode = IteratorMode::From(&start, RocksDirection::Forward);
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(keys::CF_STREAMS), mode) {
            let (key, value) = item?;
            if !key.starts_with(prefix.as_bytes()) || out.len() == limit {
                break;
            }
            let name = String::from_utf8(key.to_vec())
                .map_err(|_| StorageError::CorruptIndex("a stream name is not UTF-8".into()))?;
            let state = decode_state(&name, &value)?;
            out.push((StreamName::from_stored(name), state));
        }
        Ok(out)
    }

    /// The first revision still stored for `stream` at or after `from` (its
    /// index entries may start later than 0 after scavenging).
    pub fn first_stored_revision(
        &self,
        stream: &StreamName,
        from: u64,
    ) -> Result<Option<u64>, StorageError> {
        let prefix = keys::stream_index_prefix(stream.as_str());
        let mut it = self.db.raw_iterator_cf(self.cf(keys::CF_STREAM_INDEX));
        it.seek(keys::stream_index_key(stream.as_str(), from));
        let found = it
            .key()
            .filter(|k| k.starts_with(&prefix))
            .and_then(keys::decode_stream_index_revision);
        it.status()?;
        Ok(found)
    }

    /// Up to `max` events of `stream`, from revision `from`, that `state` hides at
    /// `now_micros`. Stops at the first visible event: hidden events are always a
    /// prefix of the stream (deletion, truncation, count and age all hide the oldest).
    pub fn hidden_events(
        &self,
        stream: &StreamName,
        state: &StreamState,
        from: u64,
        now_micros: u64,
        max: usize,
    ) -> Result<HiddenPage, StorageError> {
        let prefix = keys::stream_index_prefix(stream.as_str());
        let mut it = self.db.raw_iterator_cf(self.cf(keys::CF_STREAM_INDEX));
        it.seek(keys::stream_index_key(stream.as_str(), from));
        let mut page = HiddenPage::default();
        while let Some((key, value)) = it.item() {
            let Some(revision) =
                keys::decode_stream_index_revision(key).filter(|_| key.starts_with(&prefix))
            else {
                break;
            };
            if page.events.len() == max {
                page.next_revision = Some(revision);
                break;
            }
            let position = keys::decode_position(value).ok_or_else(|| {
                StorageError::CorruptIndex(format!("stream index value of {stream} is not 8 bytes"))
            })?;
            let bytes = self
                .db
                .get_cf(self.cf(keys::CF_EVENTS), keys::position_key(position))?;
            page.scanned += 1;
            let Some(bytes) = bytes else {
                it.next();
                continue; // a dangling index entry: verify reports it
            };
            let event = codec::decode_event(position, &bytes)
                .map_err(|source| StorageError::CorruptEvent { position, source })?;
            if state.is_visible(revision, event.recorded_at_micros, now_micros) {
                break;
            }
            page.events.push(HiddenEvent {
                position,
                revision,
                id: event.id,
                recorded_at_micros: event.recorded_at_micros,
                bytes: bytes.len() as u64,
            });
            it.next();
        }
        it.status()?;
        Ok(page)
    }

    /// Checks up to `max` event records from position `from`: CRC, and that the
    /// stream index and the id index point back at each.
    pub fn verify_events(&self, from: u64, max: usize) -> Result<VerifyPage, StorageError> {
        let mut page = VerifyPage::default();
        let mut it = self.db.raw_iterator_cf(self.cf(keys::CF_EVENTS));
        it.seek(keys::position_key(from));
        while let Some((key, value)) = it.item() {
            let Some(position) = keys::decode_position(key) else {
                page.problems.push(Problem {
                    position: None,
                    message: format!("event key {key:?} is not 8 bytes"),
                });
                it.next();
                continue;
            };
            if page.checked as usize == max {
                page.next = Some(key.to_vec());
                break;
            }
            page.checked += 1;
            match codec::decode_event(position, value) {
                Err(e) => page.problems.push(Problem {
                    position: Some(position),
                    message: e.to_string(),
                }),
                Ok(event) => {
                    let index_key = keys::stream_index_key(event.stream.as_str(), event.revision);
                    let indexed = self.db.get_cf(self.cf(keys::CF_STREAM_INDEX), index_key)?;
                    if indexed.as_deref().and_then(keys::decode_position) != Some(position) {
                        page.problems.push(Problem {
                            position: Some(position),
                            message: format!(
                                "stream index of {}@{} does not point at this event",
                                event.stream, event.revision
                            ),
                        });
                    }
                    let by_id = self
                        .db
                        .get_cf(self.cf(keys::CF_EVENT_IDS), event.id.as_bytes())?;
                    if by_id.as_deref().and_then(keys::decode_position) != Some(position) {
                        page.problems.push(Problem {
                            position: Some(position),
                            message: format!(
                                "id index of {} does not point at this event",
                                event.id
                            ),
                        });
                    }
                }
            }
            it.next();
        }
        it.status()?;
        Ok(page)
    }

    /// Checks up to `max` stream index entries from raw key `from`: each must
    /// point at a stored event of that stream and revision.
    pub fn verify_index(&self, from: &[u8], max: usize) -> Result<VerifyPage, StorageError> {
        let mut page = VerifyPage::default();
        let mut it = self.db.raw_iterator_cf(self.cf(keys::CF_STREAM_INDEX));
        it.seek(from);
        while let Some((key, value)) = it.item() {
            if page.checked as usize == max {
                page.next = Some(key.to_vec());
                break;
            }
            page.checked += 1;
            let position = keys::decode_position(value);
            let revision = keys::decode_stream_index_revision(key);
            let stream = key
                .len()
                .checked_sub(9)
                .map(|n| String::from_utf8_lossy(&key[..n]).into_owned());
            let problem = match (position, revision, stream) {
                (Some(position), Some(revision), Some(stream)) => {
                    match self
                        .db
                        .get_cf(self.cf(keys::CF_EVENTS), keys::position_key(position))?
                    {
                        None => Some((
                            Some(position),
                            format!("index entry {stream}@{revision} points at a missing event"),
                        )),
                        Some(bytes) => match codec::decode_event(position, &bytes) {
                            Ok(e) if e.stream.as_str() == stream && e.revision == revision => None,
                            Ok(e) => Some((
                                Some(position),
                                format!(
                                    "index entry {stream}@{revision} points at {}@{}",
                                    e.stream, e.revision
                                ),
                            )),
                            Err(_) => None, // reported by the events pass
                        },
                    }
                }
                _ => Some((None, format!("malformed stream index entry {key:?}"))),
            };
            if let Some((position, message)) = problem {
                page.problems.push(Problem { position, message });
            }
            it.next();
        }
        it.status()?;
        Ok(page)
    }

    /// Compacts every column family over its whole range, so space freed by
    /// deletions is given back to the file system.
    pub fn compact_all(&self) -> Result<(), StorageError> {
        let mut opts = CompactOptions::default();
        opts.set_exclusive_manual_compaction(false);
        opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        for name in keys::ALL_CFS {
            self.db
                .compact_range_cf_opt(self.cf(name), None::<&[u8]>, None::<&[u8]>, &opts);
        }
        Ok(())
    }

    /// Bytes of every file in the data directory.
    pub fn disk_bytes(&self) -> u64 {
        fn walk(path: &std::path::Path) -> u64 {
            std::fs::read_dir(path).map_or(0, |entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| match e.metadata() {
                        Ok(m) if m.is_dir() => walk(&e.path()),
                        Ok(m) => m.len(),
                        Err(_) => 0,
                    })
                    .sum()
            })
        }
        walk(self.path())
    }

    /// A RocksDB integer property summed over the column families (`None` when unknown).
    pub fn property_sum(&self, property: &str) -> Option<u64> {
        let mut total = None;
        for name in keys::ALL_CFS {
            if let Ok(Some(v)) = self.db.property_int_value_cf(self.cf(name), property) {
                total = Some(total.unwrap_or(0) + v);
            }
        }
        total
    }

    /// Reads a `meta` value.
    pub fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get_cf(self.cf(keys::CF_META), key)?)
    }

    /// Writes (or with `None` deletes) a `meta` value of maintenance bookkeeping
    /// (scavenge resume point, history). Not part of the event log, so it does not
    /// go through the writer.
    pub fn set_meta(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), StorageError> {
        let cf = self.cf(keys::CF_META);
        match value {
            Some(value) => self.db.put_cf(cf, key, value)?,
            None => self.db.delete_cf(cf, key)?,
        }
        Ok(())
    }
}
