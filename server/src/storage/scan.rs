//! Whole-store scans for maintenance: the stream catalog in name order, the
//! hidden events of a stream (what scavenging removes), integrity checks
//! (verify), compaction and disk usage.

use rocksdb::{CompactOptions, Direction as RocksDirection, IteratorMode};

use super::read::{decode_state, Snapshot};
use super::stream_index::{self, Cursor, Run};
use super::stream_state::StreamState;
use super::writer::HiddenEvent;
use super::{codec, keys, StorageError, Store};
use crate::model::{CatalogEntry, JobKind, StreamName};

/// One page of hidden events of a stream.
#[derive(Debug, Default)]
pub struct HiddenPage {
    pub events: Vec<HiddenEvent>,
    /// Index entries examined.
    pub scanned: u64,
    /// Where to continue in this stream; `None` when no more can be hidden.
    pub next_revision: Option<u64>,
}

/// One key range of one column family, compacted in one call (see
/// `Store::compaction_plan`); opaque outside storage.
#[derive(Debug, Clone)]
pub struct CompactionSlice {
    cf: &'static str,
    start: Option<Vec<u8>>,
    end: Option<Vec<u8>>,
}

/// A problem `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The position concerned, when there is one.
    pub position: Option<u64>,
    pub message: String,
}

/// Where a verify pass continues: opaque outside storage (a key of the column
/// family the pass walks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyCursor(Vec<u8>);

impl VerifyCursor {
    /// The start of a pass.
    pub fn start() -> Self {
        Self::default()
    }
}

/// One step of a verify pass.
#[derive(Debug, Default)]
pub struct VerifyPage {
    pub checked: u64,
    pub problems: Vec<Problem>,
    /// Where to continue; `None` when the pass is done.
    pub next: Option<VerifyCursor>,
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
            Some(after) if after >= prefix => keys::stream_key_after(after),
            _ => keys::stream_key(prefix).to_vec(),
        };
        let mode = IteratorMode::From(&start, RocksDirection::Forward);
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(keys::CF_STREAMS), mode) {
            let (key, value) = item?;
            if !key.starts_with(prefix.as_bytes()) || out.len() == limit {
                break;
            }
            let name = keys::decode_stream_key(&key)
                .ok_or_else(|| StorageError::CorruptIndex("a stream name is not UTF-8".into()))?;
            let state = decode_state(name, &value)?;
            out.push((StreamName::from_stored(name.to_owned()), state));
        }
        Ok(out)
    }

    /// A page of the stream catalog: up to `limit` streams in name order after
    /// `after` under `prefix`, each with its custom metadata and first stored
    /// visible revision, all from one snapshot and one call (one blocking task
    /// per page, not one per stream). The page ends early once the custom
    /// metadata it holds reaches `MAX_PAGE_BYTES`; the flag says whether more
    /// streams follow.
    pub fn catalog_page(
        &self,
        prefix: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<CatalogEntry>, bool), StorageError> {
        let prefix = prefix.unwrap_or("");
        let start = match after {
            Some(after) if after >= prefix => keys::stream_key_after(after),
            _ => keys::stream_key(prefix).to_vec(),
        };
        let snapshot = self.db.snapshot();
        let mode = IteratorMode::From(&start, RocksDirection::Forward);
        let (mut out, mut custom_bytes) = (Vec::new(), 0);
        for item in snapshot.iterator_cf(self.cf(keys::CF_STREAMS), mode) {
            let (key, value) = item?;
            if !key.starts_with(prefix.as_bytes()) {
                break;
            }
            if out.len() == limit || custom_bytes >= super::read::MAX_PAGE_BYTES {
                return Ok((out, true));
            }
            let name = keys::decode_stream_key(&key)
                .ok_or_else(|| StorageError::CorruptIndex("a stream name is not UTF-8".into()))?;
            let mut state = decode_state(name, &value)?;
            self.load_custom(&snapshot, name, &mut state)?;
            custom_bytes += state.metadata.custom.as_ref().map_or(0, String::len);
            let name = StreamName::from_stored(name.to_owned());
            out.push(self.catalog_entry_of(&snapshot, name, state)?);
        }
        Ok((out, false))
    }

    /// One stream's catalog entry, `None` when nothing was ever written for it.
    pub fn catalog_entry(&self, stream: &StreamName) -> Result<Option<CatalogEntry>, StorageError> {
        let snapshot = self.db.snapshot();
        self.stream_state_with_custom_at(&snapshot, stream)?
            .map(|state| self.catalog_entry_of(&snapshot, stream.clone(), state))
            .transpose()
    }

    fn catalog_entry_of(
        &self,
        snapshot: &Snapshot<'_>,
        name: StreamName,
        state: StreamState,
    ) -> Result<CatalogEntry, StorageError> {
        let first_stored_revision = if state.exists() {
            let it = snapshot.raw_iterator_cf(self.cf(keys::CF_STREAM_INDEX));
            Cursor::forward(it, name.as_str(), state.first_visible_revision())?
                .current()
                .map(|(revision, _)| revision)
        } else {
            None
        };
        Ok(CatalogEntry {
            name,
            state,
            first_stored_revision,
        })
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
        let it = self.db.raw_iterator_cf(self.cf(keys::CF_STREAM_INDEX));
        let mut cursor = Cursor::forward(it, stream.as_str(), from)?;
        let mut page = HiddenPage::default();
        while let Some((revision, position)) = cursor.current() {
            if page.events.len() == max {
                page.next_revision = Some(revision);
                break;
            }
            let bytes = self
                .db
                .get_cf(self.cf(keys::CF_EVENTS), keys::position_key(position))?;
            page.scanned += 1;
            let Some(bytes) = bytes else {
                cursor.advance()?;
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
            cursor.advance()?;
        }
        Ok(page)
    }

    /// Checks up to `max` event records from `from`: CRC, and that the stream
    /// index and the id index point back at each (the id index only below its
    /// mark: the ids after it are in the writer's memory, read back from the
    /// log itself on open). Everything a page compares is
    /// read from one snapshot, so a scavenge removing events meanwhile cannot
    /// make a consistent store look corrupt.
    pub fn verify_events(
        &self,
        from: &VerifyCursor,
        max: usize,
    ) -> Result<VerifyPage, StorageError> {
        self.verify_events_at(&self.db.snapshot(), from, max)
    }

    fn verify_events_at(
        &self,
        snapshot: &Snapshot<'_>,
        from: &VerifyCursor,
        max: usize,
    ) -> Result<VerifyPage, StorageError> {
        let mut page = VerifyPage::default();
        let ids_indexed_before = snapshot
            .get_cf(self.cf(keys::CF_META), keys::META_IDS_INDEXED_BEFORE)?
            .as_deref()
            .and_then(keys::decode_position)
            .unwrap_or(0);
        let mut index = snapshot.raw_iterator_cf(self.cf(keys::CF_STREAM_INDEX));
        let mut it = snapshot.raw_iterator_cf(self.cf(keys::CF_EVENTS));
        it.seek(&from.0);
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
                page.next = Some(VerifyCursor(key.to_vec()));
                break;
            }
            page.checked += 1;
            match codec::decode_event(position, value) {
                Err(e) => page.problems.push(Problem {
                    position: Some(position),
                    message: e.to_string(),
                }),
                Ok(event) => {
                    let stream = event.stream.as_str();
                    let indexed =
                        match stream_index::run_holding(&mut index, stream, event.revision) {
                            Ok(run) => run.and_then(|run| run.position_of(event.revision)),
                            // A malformed entry: reported here as a missing one, and by the index pass.
                            Err(StorageError::CorruptIndex(_)) => None,
                            Err(e) => return Err(e),
                        };
                    if indexed != Some(position) {
                        page.problems.push(Problem {
                            position: Some(position),
                            message: format!(
                                "stream index of {}@{} does not point at this event",
                                event.stream, event.revision
                            ),
                        });
                    }
                    if position < ids_indexed_before {
                        let by_id =
                            snapshot.get_cf(self.cf(keys::CF_EVENT_IDS), event.id.as_bytes())?;
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
            }
            it.next();
        }
        it.status()?;
        Ok(page)
    }

    /// Checks up to `max` stream index entries from `from`: each must point at a
    /// stored event of that stream and revision. One snapshot per page, as above.
    pub fn verify_index(
        &self,
        from: &VerifyCursor,
        max: usize,
    ) -> Result<VerifyPage, StorageError> {
        self.verify_index_at(&self.db.snapshot(), from, max)
    }

    fn verify_index_at(
        &self,
        snapshot: &Snapshot<'_>,
        from: &VerifyCursor,
        max: usize,
    ) -> Result<VerifyPage, StorageError> {
        let mut page = VerifyPage::default();
        let mut it = snapshot.raw_iterator_cf(self.cf(keys::CF_STREAM_INDEX));
        it.seek(&from.0);
        while let Some((key, value)) = it.item() {
            if page.checked as usize >= max {
                page.next = Some(VerifyCursor(key.to_vec()));
                break;
            }
            let entry = keys::decode_stream_index_key(key);
            let run = keys::decode_stream_index_value(value);
            let (Some((stream, first_revision)), Some((position, count))) = (entry, run) else {
                page.checked += 1;
                page.problems.push(Problem {
                    position: None,
                    message: format!("malformed stream index entry {key:?}"),
                });
                it.next();
                continue;
            };
            // Every revision of the run, each against its record.
            let run = Run {
                first_revision,
                position,
                count,
            };
            for revision in first_revision..=run.last_revision() {
                let position = position + (revision - first_revision);
                page.checked += 1;
                let message = match snapshot
                    .get_pinned_cf(self.cf(keys::CF_EVENTS), keys::position_key(position))?
                {
                    None => format!("index entry {stream}@{revision} points at a missing event"),
                    Some(bytes) => match codec::decode_event(position, &bytes) {
                        Ok(e) if e.stream.as_str() == stream && e.revision == revision => continue,
                        Ok(e) => format!(
                            "index entry {stream}@{revision} points at {}@{}",
                            e.stream, e.revision
                        ),
                        Err(_) => continue, // reported by the events pass
                    },
                };
                page.problems.push(Problem {
                    position: Some(position),
                    message,
                });
            }
            it.next();
        }
        it.status()?;
        Ok(page)
    }

    /// The whole store cut into key ranges to compact one at a time, so that a
    /// cancelled scavenge (or a shutdown) stops between two of them instead of
    /// after a whole-store compaction: `$all` in 32 position ranges, the other
    /// column families in 16 ranges of their first key byte.
    pub fn compaction_plan(&self) -> Result<Vec<CompactionSlice>, StorageError> {
        const EVENT_SLICES: u64 = 32;
        const BYTE_SLICES: u16 = 16;
        let next = self.next_position()?;
        let step = next.div_ceil(EVENT_SLICES).max(1);
        let mut plan: Vec<CompactionSlice> = (0..EVENT_SLICES)
            .map(|i| CompactionSlice {
                cf: keys::CF_EVENTS,
                start: (i > 0).then(|| keys::position_key(i * step).to_vec()),
                end: (i + 1 < EVENT_SLICES).then(|| keys::position_key((i + 1) * step).to_vec()),
            })
            .collect();
        let width = 256 / BYTE_SLICES;
        for cf in keys::ALL_CFS
            .into_iter()
            .filter(|cf| *cf != keys::CF_EVENTS)
        {
            plan.extend((0..BYTE_SLICES).map(|i| CompactionSlice {
                cf,
                start: (i > 0).then(|| vec![(i * width) as u8]),
                end: (i + 1 < BYTE_SLICES).then(|| vec![((i + 1) * width) as u8]),
            }));
        }
        Ok(plan)
    }

    /// Compacts one range of the plan (bottommost level included, so space freed
    /// by deletions goes back to the file system).
    pub fn compact_slice(&self, slice: &CompactionSlice) -> Result<(), StorageError> {
        let mut opts = CompactOptions::default();
        opts.set_exclusive_manual_compaction(false);
        // Files this compaction wrote are not rewritten again.
        opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::ForceOptimized);
        #[cfg(feature = "fault-injection")]
        super::fault::compaction_delay();
        self.db.compact_range_cf_opt(
            self.cf(slice.cf),
            slice.start.as_deref(),
            slice.end.as_deref(),
            &opts,
        );
        Ok(())
    }

    /// Disk space the data directory's files take, as `du` counts it
    /// (allocated blocks): the WAL's preallocation included, which a file's
    /// length would also show for the live WAL but not for files RocksDB
    /// preallocates beyond their length.
    pub fn disk_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fn walk(path: &std::path::Path) -> u64 {
            std::fs::read_dir(path).map_or(0, |entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| match e.metadata() {
                        Ok(m) if m.is_dir() => walk(&e.path()),
                        Ok(m) => m.blocks() * 512,
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

    /// The stream after which an interrupted scavenge resumes, if one was interrupted.
    pub fn scavenge_resume_point(&self) -> Result<Option<String>, StorageError> {
        let stored = self.meta(keys::META_SCAVENGE_RESUME)?;
        stored
            .map(|bytes| {
                String::from_utf8(bytes).map_err(|_| {
                    StorageError::CorruptIndex("the scavenge resume point is not UTF-8".into())
                })
            })
            .transpose()
    }

    /// Records where the next scavenge resumes (`None`: from the start).
    pub fn set_scavenge_resume_point(&self, after: Option<&str>) -> Result<(), StorageError> {
        self.set_meta(keys::META_SCAVENGE_RESUME, after.map(str::as_bytes))
    }

    /// The stored history of `kind` jobs, as its owner serialized it.
    pub fn job_history(&self, kind: JobKind) -> Result<Option<Vec<u8>>, StorageError> {
        self.meta(keys::job_history_key(kind))
    }

    /// Replaces the stored history of `kind` jobs.
    pub fn set_job_history(&self, kind: JobKind, json: &[u8]) -> Result<(), StorageError> {
        self.set_meta(keys::job_history_key(kind), Some(json))
    }

    fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get_cf(self.cf(keys::CF_META), key)?)
    }

    /// Maintenance bookkeeping is not part of the event log, so it does not go
    /// through the writer (and is synced by the next group commit's WAL sync
    /// or flush; losing the last update in a crash only repeats work).
    fn set_meta(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), StorageError> {
        let cf = self.cf(keys::CF_META);
        match value {
            Some(value) => self.db.put_cf(cf, key, value)?,
            None => self.db.delete_cf(cf, key)?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::oneshot;
    use uuid::Uuid;

    use super::*;
    use crate::model::{ExpectedRevision, NewEvent, StreamMetadata};
    use crate::storage::writer::{
        self, WriteError, WriteOp, WriteOutcome, WriteRequest, WriterHandle,
    };

    fn write(writer: &WriterHandle, stream: &StreamName, op: WriteOp) -> WriteOutcome {
        let (reply, answer) = oneshot::channel();
        assert!(writer
            .submit(WriteRequest {
                stream: stream.clone(),
                op,
                origin: writer::Origin::Client,
                reply,
                admission: Vec::new(),
                known_ids: None,
            })
            .is_ok());
        answer
            .blocking_recv()
            .expect("answered")
            .expect("write accepted")
    }

    /// A store in `dir` with its writer running and events 1..=`count` (ids
    /// 1, 2, ...) appended to stream `s` in one append.
    fn store_with_events(
        dir: &std::path::Path,
        count: u128,
    ) -> (
        Arc<Store>,
        WriterHandle,
        std::thread::JoinHandle<()>,
        StreamName,
    ) {
        let store = Arc::new(Store::open(dir).expect("open"));
        let (writer, thread) = writer::spawn(Arc::clone(&store), |_| {}).expect("writer");
        let stream = StreamName::parse("s").expect("valid");
        let events = (1..=count)
            .map(|n| NewEvent {
                content_type: crate::model::ContentType::Json,
                id: Uuid::from_u128(n),
                event_type: "T".into(),
                data: "{}".into(),
                metadata: None,
            })
            .collect();
        let expected = ExpectedRevision::Any;
        write(&writer, &stream, WriteOp::Append { expected, events });
        (store, writer, thread, stream)
    }

    /// A malformed stream index entry is a problem both passes report, not
    /// an error that stops the verify.
    #[test]
    fn verify_reports_a_malformed_index_entry() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, writer, thread, _) = store_with_events(dir.path(), 2);
        drop(writer);
        thread.join().expect("writer thread");
        store
            .db
            .put_cf(
                store.cf(keys::CF_STREAM_INDEX),
                keys::stream_index_key("s", 0),
                [0u8; 5],
            )
            .expect("put");
        let start = VerifyCursor::start();
        let events = store.verify_events(&start, 100).expect("verify events");
        assert_eq!(events.checked, 2);
        assert_eq!(events.problems.len(), 2, "{:?}", events.problems);
        let index = store.verify_index(&start, 100).expect("verify index");
        assert_eq!(index.problems.len(), 1, "{:?}", index.problems);
        assert!(index.problems[0].message.contains("malformed"));
    }

    /// A verify page reads everything it compares from one snapshot: events a
    /// scavenge removes after the snapshot was taken (event, index entry and id
    /// together) are not reported as a broken index.
    #[test]
    fn verify_reads_one_snapshot_while_a_scavenge_removes_events() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, writer, thread, stream) = store_with_events(dir.path(), 3);
        let expected = ExpectedRevision::Any;
        let hard = false;
        write(&writer, &stream, WriteOp::Delete { expected, hard });
        let state = store.stream_state(&stream).expect("state").expect("exists");
        let now = crate::storage::now_micros();
        let hidden = store
            .hidden_events(&stream, &state, 0, now, 100)
            .expect("hidden");
        assert_eq!(hidden.events.len(), 3);

        let snapshot = store.db.snapshot();
        let removal = WriteOp::Remove {
            events: hidden.events,
            now_micros: now,
        };
        let removed = write(&writer, &stream, removal);
        assert!(matches!(removed, WriteOutcome::Removed { events: 3, .. }));

        let start = VerifyCursor::start();
        let events = store
            .verify_events_at(&snapshot, &start, 100)
            .expect("verify events");
        assert_eq!(events.checked, 3, "the snapshot still holds the events");
        assert_eq!(events.problems, Vec::new());
        let index = store
            .verify_index_at(&snapshot, &start, 100)
            .expect("verify index");
        assert_eq!(index.checked, 3);
        assert_eq!(index.problems, Vec::new());
        // And the live store is consistent too, with nothing left.
        let live = store.verify_events(&start, 100).expect("verify");
        assert_eq!((live.checked, live.problems.len()), (0, 0));
        drop(snapshot);
        drop(writer);
        thread.join().expect("writer exits");
    }

    fn custom_of(bytes: usize) -> String {
        format!("{{\"k\":\"{}\"}}", "x".repeat(bytes))
    }

    fn set_custom(writer: &WriterHandle, stream: &StreamName, custom: Option<String>) {
        let metadata = StreamMetadata {
            max_count: Some(1000),
            custom,
            ..StreamMetadata::default()
        };
        let set = write(
            writer,
            stream,
            WriteOp::SetMetadata {
                metadata,
                expected: ExpectedRevision::Any,
            },
        );
        assert!(matches!(set, WriteOutcome::MetadataSet(_)));
    }

    fn append_one(writer: &WriterHandle, stream: &StreamName, n: u128) {
        let events = vec![NewEvent {
            content_type: crate::model::ContentType::Json,
            id: Uuid::from_u128(n),
            event_type: "T".into(),
            data: "{}".into(),
            metadata: None,
        }];
        let expected = ExpectedRevision::Any;
        write(writer, stream, WriteOp::Append { expected, events });
    }

    fn raw_state_len(store: &Store, stream: &StreamName) -> usize {
        let cf = store.cf(keys::CF_STREAMS);
        let raw = store.db.get_cf(cf, keys::stream_key(stream.as_str()));
        raw.expect("read").expect("stored").len()
    }

    /// The state every append rewrites holds a flag for custom metadata, not
    /// the metadata: its size does not depend on the custom object's.
    #[test]
    fn custom_metadata_stays_out_of_the_state_appends_rewrite() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(Store::open(dir.path()).expect("open"));
        let (writer, thread) = writer::spawn(Arc::clone(&store), |_| {}).expect("writer");
        let stream = StreamName::parse("s").expect("valid");
        let custom = custom_of(64 << 10);
        set_custom(&writer, &stream, Some(custom.clone()));
        for n in 0..20 {
            append_one(&writer, &stream, n);
        }
        assert!(raw_state_len(&store, &stream) <= 90);
        let lean = store.stream_state(&stream).expect("state").expect("exists");
        assert!(lean.has_custom && lean.metadata.custom.is_none());
        let full = store.stream_state_with_custom(&stream).expect("state");
        assert_eq!(full.expect("exists").metadata.custom, Some(custom.clone()));
        let entry = store
            .catalog_entry(&stream)
            .expect("entry")
            .expect("exists");
        assert_eq!(entry.state.metadata.custom, Some(custom));
        assert_eq!(entry.state.last_revision, Some(19));

        set_custom(&writer, &stream, None);
        let cleared = store.stream_state_with_custom(&stream).expect("state");
        let cleared = cleared.expect("exists");
        assert!(!cleared.has_custom && cleared.metadata.custom.is_none());
        let cf = store.cf(keys::CF_STREAM_CUSTOM);
        assert_eq!(store.db.get_cf(cf, b"s").expect("read"), None);
        drop(writer);
        thread.join().expect("writer exits");
    }

    /// Each metadata change takes the next version, checked like an append's
    /// expected revision; a refused change changes nothing.
    #[test]
    fn metadata_changes_are_versioned_and_checked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(Store::open(dir.path()).expect("open"));
        let (writer, thread) = writer::spawn(Arc::clone(&store), |_| {}).expect("writer");
        let stream = StreamName::parse("s").expect("valid");
        let set = |max_count: u64, expected: ExpectedRevision| {
            let (reply, answer) = oneshot::channel();
            let metadata = StreamMetadata {
                max_count: Some(max_count),
                ..StreamMetadata::default()
            };
            let op = WriteOp::SetMetadata { metadata, expected };
            let request = WriteRequest {
                stream: stream.clone(),
                op,
                origin: writer::Origin::Client,
                reply,
                admission: Vec::new(),
                known_ids: None,
            };
            assert!(writer.submit(request).is_ok());
            answer.blocking_recv().expect("answered")
        };
        let version = || {
            let state = store.stream_state(&stream).expect("state");
            state.and_then(|s| s.metadata_version).map(|v| v.revision)
        };
        assert!(matches!(
            set(5, ExpectedRevision::Exact(0)),
            Err(WriteError::WrongExpectedRevision { actual: None, .. })
        ));
        assert_eq!(version(), None);
        assert!(set(5, ExpectedRevision::NoStream).is_ok());
        append_one(&writer, &stream, 1);
        assert!(set(6, ExpectedRevision::Exact(0)).is_ok());
        assert_eq!(version(), Some(1));
        assert!(matches!(
            set(7, ExpectedRevision::NoStream),
            Err(WriteError::WrongExpectedRevision {
                actual: Some(1),
                ..
            })
        ));
        let state = store.stream_state(&stream).expect("state").expect("exists");
        assert_eq!(state.metadata.max_count, Some(6));
        let v = state.metadata_version.expect("versioned");
        assert_eq!(v.position, 0, "set after the event at position 0");
        assert!(set(8, ExpectedRevision::StreamExists).is_ok());
        assert!(set(9, ExpectedRevision::Any).is_ok());
        assert_eq!(version(), Some(3));
        drop(writer);
        thread.join().expect("writer exits");
    }

    /// A state written by the previous layout (custom metadata inline) is read
    /// as it was, and its next write moves the custom metadata out.
    #[test]
    fn a_version_2_state_moves_its_custom_metadata_out_on_the_next_write() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(Store::open(dir.path()).expect("open"));
        let stream = StreamName::parse("old").expect("valid");
        let custom = custom_of(10_000);
        // Version 2: flags HAS_LAST | HAS_CUSTOM, five u64s, then the custom text.
        let mut v2 = vec![2u8, 1 | 1 << 5];
        for n in [4u64, 0, 1, 2, 100] {
            v2.extend_from_slice(&n.to_be_bytes());
        }
        v2.extend_from_slice(&(custom.len() as u32).to_be_bytes());
        v2.extend_from_slice(custom.as_bytes());
        let cf = store.cf(keys::CF_STREAMS);
        store.db.put_cf(cf, b"old", &v2).expect("put");
        let before = store.stream_state_with_custom(&stream).expect("state");
        let before = before.expect("exists");
        assert_eq!(before.last_revision, Some(4));
        assert_eq!(before.metadata.custom.as_deref(), Some(custom.as_str()));

        let (writer, thread) = writer::spawn(Arc::clone(&store), |_| {}).expect("writer");
        append_one(&writer, &stream, 1);
        assert!(raw_state_len(&store, &stream) <= 90);
        let after = store.stream_state_with_custom(&stream).expect("state");
        let after = after.expect("exists");
        assert_eq!(after.last_revision, Some(5));
        assert_eq!(after.metadata.custom, Some(custom));
        drop(writer);
        thread.join().expect("writer exits");
    }

    /// A catalog page stops once the custom metadata it loaded reaches the page
    /// budget, and says that more streams follow.
    #[test]
    fn a_catalog_page_is_bounded_by_the_custom_metadata_it_holds() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(Store::open(dir.path()).expect("open"));
        let (writer, thread) = writer::spawn(Arc::clone(&store), |_| {}).expect("writer");
        for name in ["a", "b", "c", "d"] {
            let stream = StreamName::parse(name).expect("valid");
            set_custom(&writer, &stream, Some(custom_of(6 << 20)));
        }
        let (page, more) = store.catalog_page(None, None, 100).expect("page");
        let names: Vec<_> = page.iter().map(|e| e.name.as_str()).collect();
        assert_eq!((names, more), (vec!["a", "b", "c"], true));
        let (page, more) = store.catalog_page(None, Some("c"), 100).expect("page");
        assert_eq!((page.len(), more), (1, false));
        let (page, more) = store.catalog_page(None, None, 2).expect("page");
        assert_eq!((page.len(), more), (2, true));
        drop(writer);
        thread.join().expect("writer exits");
    }
}
