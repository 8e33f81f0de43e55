//! The event-id index: which position holds each stored event id (exact
//! idempotency, forever). It owns the `event_ids` column family and its mark
//! in `meta`.
//!
//! The writer does not insert ids into RocksDB's memtable: clients' ids are
//! random, and a random-key skiplist insert per event was half of the serial
//! writer's CPU (docs/benchmarks.md). Instead the writer keeps the ids it
//! committed in memory (the *tail*) and hands them, a run of `run_len` at a
//! time, to the indexer thread, which sorts them, writes one SST file and
//! ingests it into `event_ids`, and only then records in `meta` that every id
//! below the run's end is indexed. On open, the ids of the log from that mark
//! on are read back into the tail, so a crash loses nothing: the log is the
//! truth and the index is rebuilt from it.
//!
//! A lookup asks the tail, then the run being ingested, then RocksDB for the
//! ids the id filter (`id_filter`) cannot rule out; the indexer thread fills
//! the filter, each run's ids before it ingests the run. Every
//! committed id is always in exactly one place the lookup sees: the writer
//! drops a run from memory only after the indexer said its file is ingested.
//! A removal (scavenge) of an id still in memory takes it out of the tail; one
//! in the run being ingested first waits for the ingestion, so that the
//! removal's delete is newer than the ingested entry.
//!
//! An append may bring its ids' RocksDB answers along (`KnownIds`, looked up
//! on the request's task before it was queued): the writer then asks only its
//! memory for them. Such an answer is still true as long as no id left the
//! writer's memory for `event_ids` and none left `event_ids` since; both move
//! the store's id generation (after the fact, as the lookup reads it before
//! asking RocksDB), and an answer of an older generation is asked again.
//!
//! Bounded: at most one run is being ingested; when the tail reaches
//! `MAX_RUNS_BEHIND` runs (the indexer is failing or slow), the writer waits
//! for it, which fills the writer's queue and answers appends 503.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use rocksdb::{IngestExternalFileOptions, SstFileWriter, WriteOptions};
use uuid::Uuid;

use super::{codec, keys, StorageError, Store};

/// Ids per run handed to the indexer (one SST file of about 12 MiB; a
/// tail of a run is about 26 MiB of memory).
pub(super) const RUN_IDS: usize = 524_288;
/// The tail waits for the indexer when it holds this many runs.
const MAX_RUNS_BEHIND: usize = 2;
/// The directory, inside the data directory, where runs' files are written
/// before RocksDB takes them over.
const RUN_DIR: &str = "id-runs";

/// Ids committed at positions below `before` that the index did not hold yet
/// when they were handed over.
struct Run {
    ids: HashMap<Uuid, u64>,
    before: u64,
}

/// The `event_ids` answers for one append's ids, read before the request
/// was queued; the writer takes them instead of asking RocksDB again while
/// the store's id generation is still `generation`.
#[derive(Debug, Clone)]
pub struct KnownIds {
    generation: u64,
    /// The ids `event_ids` held, with their positions.
    stored: HashMap<Uuid, u64>,
}

impl KnownIds {
    /// Looks `ids` up in `event_ids` (not in the writer's memory, which the
    /// writer asks itself).
    pub fn look_up(store: &Store, ids: impl Iterator<Item = Uuid>) -> Result<Self, StorageError> {
        // Read first: whatever leaves the writer's memory or the index after
        // this moves the generation and voids the answer.
        let generation = store.id_generation.load(Ordering::Acquire);
        let mut ids: Vec<Uuid> = ids.collect();
        let stored = store.stored_event_ids(&mut ids)?;
        Ok(Self { generation, stored })
    }
}

/// The writer's side of the index.
pub(super) struct IdIndex {
    store: Arc<Store>,
    run_len: usize,
    /// Committed ids not yet handed to the indexer.
    tail: HashMap<Uuid, u64>,
    /// The run the indexer is ingesting.
    in_flight: Option<Arc<Run>>,
    /// The end of the last run handed over (or of the index on open).
    handed_before: u64,
    runs: Option<mpsc::Sender<Arc<Run>>>,
    /// One message per ingested run.
    ingested: mpsc::Receiver<()>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl IdIndex {
    /// Reads the ids the log holds past the index's mark into the tail and
    /// starts the indexer thread. `next_position` is the store's.
    pub(super) fn open(
        store: Arc<Store>,
        next_position: u64,
        run_len: usize,
    ) -> Result<Self, StorageError> {
        let run_dir = store.path().join(RUN_DIR);
        // Files of runs a crash interrupted: their ids are re-read below.
        if run_dir.exists() {
            std::fs::remove_dir_all(&run_dir).map_err(|e| {
                StorageError::Io(format!("cannot clear {}: {e}", run_dir.display()))
            })?;
        }
        let indexed_before = store.ids_indexed_before()?.min(next_position);
        let started = std::time::Instant::now();
        let mut tail = HashMap::new();
        let mut it = store.db.raw_iterator_cf(store.cf(keys::CF_EVENTS));
        it.seek(keys::position_key(indexed_before));
        while let Some((key, value)) = it.item() {
            let position = keys::decode_position(key)
                .ok_or_else(|| StorageError::CorruptIndex("event key is not 8 bytes".into()))?;
            let id = codec::decode_id(position, value)
                .map_err(|source| StorageError::CorruptEvent { position, source })?;
            tail.insert(id, position);
            it.next();
        }
        it.status()?;
        drop(it);
        if !tail.is_empty() {
            tracing::info!(
                ids = tail.len(),
                from = indexed_before,
                elapsed_ms = started.elapsed().as_millis(),
                "event ids of the log's end read back for the id index"
            );
        }
        let (runs, jobs) = mpsc::channel();
        let (done, ingested) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("skald-id-index".into())
                .spawn(move || index_runs(&store, &jobs, &done, &stop))
                .map_err(|e| {
                    StorageError::Internal(format!("cannot start the id indexer thread: {e}"))
                })?
        };
        let mut index = Self {
            store,
            run_len: run_len.max(1),
            tail,
            in_flight: None,
            handed_before: indexed_before,
            runs: Some(runs),
            ingested,
            stop,
            thread: Some(thread),
        };
        // Answers read before this writer started are void.
        index.next_generation();
        index.hand_off_if_due(next_position);
        Ok(index)
    }

    /// Where each of `ids`, and of the ids of the appends that come with
    /// `known` RocksDB answers, is stored, for those that are. Known answers
    /// still valid are taken (their ids asked of the memory only); the others'
    /// ids are looked up with `ids`, which this sorts and dedups.
    pub(super) fn lookup<'a>(
        &mut self,
        ids: &mut Vec<Uuid>,
        known: impl Iterator<Item = (&'a KnownIds, &'a [crate::model::NewEvent])>,
    ) -> Result<HashMap<Uuid, u64>, StorageError> {
        // Nothing leaves the memory between this poll and the checks below.
        self.poll();
        let generation = self.store.id_generation.load(Ordering::Relaxed);
        let mut found = HashMap::new();
        let mut answered = Vec::new();
        for (known, events) in known {
            if known.generation == generation {
                answered.push(known);
                for event in events {
                    if let Some(&position) = self.in_memory(&event.id) {
                        found.insert(event.id, position);
                    }
                }
            } else {
                ids.extend(events.iter().map(|e| e.id));
            }
        }
        ids.retain(|id| match self.in_memory(id) {
            Some(&position) => {
                found.insert(*id, position);
                false
            }
            None => true,
        });
        let stored = self.store.stored_event_ids(ids)?;
        for (id, position) in answered.into_iter().flat_map(|k| &k.stored).chain(&stored) {
            // The memory is newer than the index (an id removed and appended again).
            found.entry(*id).or_insert(*position);
        }
        Ok(found)
    }

    fn in_memory(&self, id: &Uuid) -> Option<&u64> {
        self.tail
            .get(id)
            .or_else(|| self.in_flight.as_ref().and_then(|run| run.ids.get(id)))
    }

    /// Voids the `KnownIds` read so far.
    fn next_generation(&self) {
        self.store.id_generation.fetch_add(1, Ordering::Release);
    }

    /// Called before a group that removes `ids`: waits for the run being
    /// ingested when it holds any of them, so that the group's deletes are
    /// newer than the ingested entries.
    pub(super) fn prepare_removal<'a>(&mut self, mut ids: impl Iterator<Item = &'a Uuid>) {
        self.poll();
        if let Some(run) = &self.in_flight {
            if ids.any(|id| run.ids.contains_key(id)) {
                self.wait_for_ingestion();
            }
        }
    }

    /// Records a durable group: `removed` ids are gone, `added` ids are
    /// stored at their positions (removals first: a group may remove an id
    /// and then append it again). `next_position` is the store's after the group.
    pub(super) fn committed(
        &mut self,
        removed: impl Iterator<Item = Uuid>,
        added: impl Iterator<Item = (Uuid, u64)>,
        next_position: u64,
    ) {
        let mut any_removed = false;
        for id in removed {
            any_removed = true;
            self.tail.remove(&id);
        }
        if any_removed {
            // The group deleted ids from `event_ids` too.
            self.next_generation();
        }
        self.tail.extend(added);
        self.reserve_run();
        self.hand_off_if_due(next_position);
    }

    /// Committed ids the index does not hold yet (the tail and the run being ingested).
    pub(super) fn unindexed(&self) -> usize {
        self.tail.len() + self.in_flight.as_ref().map_or(0, |run| run.ids.len())
    }

    /// Hands the whole tail to the indexer and waits until it is ingested
    /// (shutdown: the next start then reads nothing back). A run that fails
    /// is not retried now: the next start reads its ids back.
    pub(super) fn finish(&mut self, next_position: u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.poll();
        if self.in_flight.is_some() {
            self.wait_for_ingestion();
        }
        if !self.tail.is_empty() || self.handed_before < next_position {
            self.hand_off(next_position);
            self.wait_for_ingestion();
        }
    }

    /// Once the tail holds an eighth of a run, room for the whole run: it
    /// then fills without growing (each growth rehashes every id it holds,
    /// on the writer's thread), while a small store keeps a small tail.
    fn reserve_run(&mut self) {
        if self.tail.len() >= self.run_len / 8 && self.tail.capacity() < self.run_len {
            self.tail.reserve(self.run_len - self.tail.len());
        }
    }

    fn hand_off_if_due(&mut self, next_position: u64) {
        if self.tail.len() < self.run_len {
            return;
        }
        self.poll();
        if self.in_flight.is_some() && self.tail.len() >= self.run_len * MAX_RUNS_BEHIND {
            tracing::warn!(
                ids = self.unindexed(),
                "the id indexer is behind; the writer waits for it"
            );
            self.wait_for_ingestion();
        }
        if self.in_flight.is_none() {
            self.hand_off(next_position);
        }
    }

    fn hand_off(&mut self, next_position: u64) {
        let run = Arc::new(Run {
            ids: std::mem::take(&mut self.tail),
            before: next_position,
        });
        let sent = self
            .runs
            .as_ref()
            .is_some_and(|runs| runs.send(Arc::clone(&run)).is_ok());
        if sent {
            self.handed_before = next_position;
            self.in_flight = Some(run);
        } else {
            // The indexer is gone (it cannot be while the writer runs); keep
            // the ids where lookups find them.
            tracing::error!("the id indexer has stopped; ids stay in memory");
            self.tail = Arc::try_unwrap(run).map_or_else(|run| run.ids.clone(), |run| run.ids);
        }
    }

    fn poll(&mut self) {
        while self.ingested.try_recv().is_ok() {
            self.dropped_in_flight();
        }
    }

    fn wait_for_ingestion(&mut self) {
        if self.in_flight.is_some() && self.ingested.recv().is_ok() {
            self.dropped_in_flight();
        }
    }

    /// The run being ingested is in `event_ids` now, and leaves the memory.
    fn dropped_in_flight(&mut self) {
        self.in_flight = None;
        self.next_generation();
    }
}

impl Drop for IdIndex {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.runs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The indexer thread: ingests each run, retrying a failed one (a full disk)
/// until it succeeds or the writer stops. Between runs, it first reads the
/// ids `event_ids` already holds into the id filter (`id_filter`).
fn index_runs(
    store: &Store,
    runs: &mpsc::Receiver<Arc<Run>>,
    done: &mpsc::Sender<()>,
    stop: &AtomicBool,
) {
    let mut scan = FilterScan::start(store);
    let mut failures = 0u32;
    loop {
        let run = match &mut scan {
            Some(pending) => match runs.try_recv() {
                Ok(run) => run,
                Err(mpsc::TryRecvError::Empty) => {
                    if pending.step() {
                        scan = None;
                    }
                    continue;
                }
                Err(mpsc::TryRecvError::Disconnected) => return,
            },
            None => match runs.recv() {
                Ok(run) => run,
                Err(_) => return,
            },
        };
        // Before `event_ids` has them, so before the writer lets them go.
        store.id_filter.insert(run.ids.keys().copied());
        loop {
            match ingest(store, &run) {
                Ok(()) => {
                    failures = 0;
                    let _ = done.send(());
                    break;
                }
                Err(e) => {
                    failures += 1;
                    tracing::error!(error = %e, failures, "cannot ingest a run of event ids; retrying");
                    if stop.load(Ordering::Relaxed) {
                        // Its ids are read back from the log on the next start.
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100 << failures.min(6)));
                }
            }
        }
    }
}

/// The id filter's start-up scan of `event_ids`, a chunk at a time. It
/// runs on the indexer thread, which inserts the ids of every run it ingests
/// meanwhile itself, so the iterator (a snapshot taken before any of them)
/// and those inserts together cover every id.
struct FilterScan<'a> {
    store: &'a Store,
    it: rocksdb::DBRawIteratorWithThreadMode<'a, rocksdb::DB>,
    started: std::time::Instant,
}

/// Keys a scan step reads before the thread looks for a run again.
const SCAN_CHUNK: usize = 65_536;

impl<'a> FilterScan<'a> {
    /// `None` when the filter is off.
    fn start(store: &'a Store) -> Option<Self> {
        let cf = store.cf(keys::CF_EVENT_IDS);
        let expected = store
            .db
            .property_int_value_cf(cf, "rocksdb.estimate-num-keys")
            .ok()
            .flatten()
            .unwrap_or(0);
        if !store.id_filter.start(expected) {
            return None;
        }
        let mut it = store.db.raw_iterator_cf(cf);
        it.seek_to_first();
        Some(Self {
            store,
            it,
            started: std::time::Instant::now(),
        })
    }

    /// Reads up to `SCAN_CHUNK` ids into the filter; `true` when the scan is
    /// over (the filter ready, or left off after a failed read, which sends
    /// every lookup to `event_ids` as before).
    fn step(&mut self) -> bool {
        for _ in 0..SCAN_CHUNK {
            let Some(key) = self.it.key() else {
                return self.finish();
            };
            match <[u8; 16]>::try_from(key) {
                Ok(bytes) => self.store.id_filter.insert_key(u128::from_be_bytes(bytes)),
                Err(_) => {
                    tracing::error!(
                        key_len = key.len(),
                        "an event_ids key is not an id; the id filter stays off"
                    );
                    return true;
                }
            }
            self.it.next();
        }
        false
    }

    fn finish(&self) -> bool {
        if let Err(e) = self.it.status() {
            tracing::error!(error = %e, "cannot read event_ids; the id filter stays off");
            return true;
        }
        self.store.id_filter.set_ready();
        let stats = self.store.id_filter.stats();
        if stats.ids > 0 {
            tracing::info!(
                ids = stats.ids,
                bytes = stats.bytes,
                elapsed_ms = self.started.elapsed().as_millis(),
                "event id filter ready"
            );
        }
        true
    }
}

/// Writes `run` as one sorted SST file, has RocksDB take it into `event_ids`,
/// then moves the mark.
fn ingest(store: &Store, run: &Run) -> Result<(), StorageError> {
    if !run.ids.is_empty() {
        // Sorted as big-endian integers: the order of the ids' bytes, at the
        // cost of an integer comparison instead of a byte-slice one (the
        // sort was a third of this thread's time: docs/benchmarks.md).
        let mut entries: Vec<(u128, u64)> = run
            .ids
            .iter()
            .map(|(id, position)| (id.as_u128(), *position))
            .collect();
        entries.sort_unstable_by_key(|&(id, _)| id);
        let dir = store.path().join(RUN_DIR);
        std::fs::create_dir_all(&dir)
            .map_err(|e| StorageError::Io(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(format!("ids-{:016x}.sst", run.before));
        let mut file = SstFileWriter::create(store.event_ids_options());
        let written = file.open(&path).and_then(|()| {
            for &(id, position) in &entries {
                file.put(id.to_be_bytes(), keys::position_key(position))?;
            }
            file.finish()
        });
        let result = written.and_then(|()| {
            let mut opts = IngestExternalFileOptions::default();
            opts.set_move_files(true);
            store
                .db
                .ingest_external_file_cf_opts(store.cf(keys::CF_EVENT_IDS), &opts, vec![&path])
        });
        if let Err(e) = result {
            let _ = std::fs::remove_file(&path);
            return Err(e.into());
        }
    }
    // Not synced: a lost mark only makes the next start read more back.
    store.db.put_cf_opt(
        store.cf(keys::CF_META),
        keys::META_IDS_INDEXED_BEFORE,
        keys::position_key(run.before),
        &WriteOptions::default(),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ContentType;

    /// Writes records for `ids` at positions 0.. and the store's next
    /// position, as the writer would; `indexed` of them also into `event_ids`.
    fn put_log(store: &Store, ids: &[Uuid], indexed: usize) {
        let mut batch = rocksdb::WriteBatch::default();
        for (position, id) in (0u64..).zip(ids) {
            let record = codec::encode_record(&codec::RecordRef {
                position,
                stream: "s",
                revision: position,
                recorded_at_micros: 1,
                id,
                event_type: "T",
                data: "{}",
                metadata: None,
                content_type: ContentType::Json,
            });
            batch.put_cf(
                store.cf(keys::CF_EVENTS),
                keys::position_key(position),
                record,
            );
            if (position as usize) < indexed {
                batch.put_cf(
                    store.cf(keys::CF_EVENT_IDS),
                    id.as_bytes(),
                    keys::position_key(position),
                );
            }
        }
        let meta = store.cf(keys::CF_META);
        let next = keys::position_key(ids.len() as u64);
        batch.put_cf(meta, keys::META_NEXT_POSITION, next);
        batch.put_cf(
            meta,
            keys::META_IDS_INDEXED_BEFORE,
            keys::position_key(indexed as u64),
        );
        store.db.write(batch).expect("write");
    }

    fn ids(n: u128) -> Vec<Uuid> {
        (1..=n).map(|i| Uuid::from_u128(i * 7919)).collect()
    }

    /// A new store whose log holds `n` events, the first `indexed` of them
    /// also in `event_ids`; their ids, and where each is.
    fn logged_store(
        n: u128,
        indexed: usize,
    ) -> (tempfile::TempDir, Arc<Store>, Vec<Uuid>, HashMap<Uuid, u64>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(Store::open(dir.path()).expect("open"));
        let all = ids(n);
        put_log(&store, &all, indexed);
        let want = all.iter().copied().zip(0u64..).collect();
        (dir, store, all, want)
    }

    fn positions(index: &mut IdIndex, ids: &[Uuid]) -> HashMap<Uuid, u64> {
        index
            .lookup(&mut ids.to_vec(), std::iter::empty())
            .expect("lookup")
    }

    #[test]
    fn ids_past_the_mark_are_read_back_and_indexed_on_finish() {
        let (_dir, store, all, want) = logged_store(5, 2);

        let mut index = IdIndex::open(Arc::clone(&store), 5, RUN_IDS).expect("open index");
        assert_eq!(index.unindexed(), 3, "positions 2, 3 and 4 are read back");
        assert_eq!(positions(&mut index, &all), want);
        index.finish(5);
        assert_eq!(index.unindexed(), 0);
        drop(index);
        assert_eq!(store.ids_indexed_before().expect("mark"), 5);
        assert_eq!(store.stored_event_ids(&mut all.clone()).expect("get"), want);

        let mut again = IdIndex::open(Arc::clone(&store), 5, RUN_IDS).expect("open index");
        assert_eq!(again.unindexed(), 0, "nothing left to read back");
        assert_eq!(positions(&mut again, &all), want);
    }

    #[test]
    fn a_tail_of_a_run_is_handed_over_and_found_throughout() {
        let (_dir, store, all, want) = logged_store(10, 0);
        // Runs of 3: opening hands the first run over at once.
        let mut index = IdIndex::open(Arc::clone(&store), 10, 3).expect("open index");
        assert_eq!(positions(&mut index, &all), want);
        index.wait_for_ingestion();
        assert_eq!(index.unindexed(), 0, "the whole tail was one run");
        assert_eq!(store.ids_indexed_before().expect("mark"), 10);
        // Ids committed later go to the tail, then out in a run of their own.
        let more = [Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3)];
        index.committed(std::iter::empty(), more.iter().copied().zip(10u64..), 13);
        assert_eq!(index.unindexed(), 3);
        assert_eq!(positions(&mut index, &more).len(), 3);
        index.wait_for_ingestion();
        assert_eq!(store.ids_indexed_before().expect("mark"), 13);
        assert_eq!(
            store
                .stored_event_ids(&mut more.to_vec())
                .expect("get")
                .len(),
            3
        );
    }

    #[test]
    fn the_tail_takes_room_for_a_whole_run_at_an_eighth_of_one() {
        let (_dir, store, _, _) = logged_store(0, 0);
        let run = 8_192;
        let mut index = IdIndex::open(Arc::clone(&store), 0, run).expect("open index");
        let commit = |index: &mut IdIndex, from: u64, count: u64| {
            let added = (from..from + count).map(|p| (Uuid::from_u128(u128::from(p) + 1), p));
            index.committed(std::iter::empty(), added, from + count);
        };
        // Below an eighth of a run the tail is as small as its ids need.
        commit(&mut index, 0, run as u64 / 8 - 1);
        assert!(index.tail.capacity() < run / 4, "{}", index.tail.capacity());
        // From an eighth on, it fills to a whole run without growing again.
        commit(&mut index, run as u64 / 8 - 1, 1);
        let reserved = index.tail.capacity();
        assert!(reserved >= run, "{reserved}");
        for from in (run as u64 / 8..run as u64 - 1).step_by(100) {
            commit(&mut index, from, 100.min(run as u64 - 1 - from));
            assert_eq!(index.tail.capacity(), reserved, "the tail grew at {from}");
        }
        assert_eq!(index.unindexed(), run - 1);
    }

    fn events(ids: &[Uuid]) -> Vec<crate::model::NewEvent> {
        ids.iter()
            .map(|id| crate::model::NewEvent {
                content_type: crate::model::ContentType::Json,
                id: *id,
                event_type: "T".into(),
                data: "{}".into(),
                metadata: None,
            })
            .collect()
    }

    /// What the writer finds for `ids` when they come with `known`.
    fn positions_known(index: &mut IdIndex, known: &KnownIds, ids: &[Uuid]) -> HashMap<Uuid, u64> {
        let events = events(ids);
        index
            .lookup(&mut Vec::new(), std::iter::once((known, events.as_slice())))
            .expect("lookup")
    }

    #[test]
    fn known_ids_are_taken_while_no_id_left_the_memory_or_the_index() {
        let (_dir, store, all, want) = logged_store(4, 2);
        let mut index = IdIndex::open(Arc::clone(&store), 4, 3).expect("open index");
        // Positions 0 and 1 in `event_ids`, 2 and 3 in the tail.
        let known = KnownIds::look_up(&store, all.iter().copied()).expect("look up");
        assert_eq!(known.stored.len(), 2);
        assert_eq!(positions_known(&mut index, &known, &all), want);
        // A valid answer is taken as it is: RocksDB is not asked again.
        let mut made_up = known.clone();
        made_up.stored.insert(Uuid::from_u128(5), 77);
        let found = positions_known(&mut index, &made_up, &[Uuid::from_u128(5)]);
        assert_eq!(found.get(&Uuid::from_u128(5)), Some(&77));

        // Ids committed after the answer are in the memory, found there...
        let late = Uuid::from_u128(6);
        let before = KnownIds::look_up(&store, [late].into_iter()).expect("look up");
        index.committed(std::iter::empty(), [(late, 4)].into_iter(), 5);
        assert_eq!(
            positions_known(&mut index, &before, &[late]).get(&late),
            Some(&4)
        );
        // ...and still found once their run left the memory for `event_ids`.
        index.wait_for_ingestion();
        assert!(index.in_memory(&late).is_none());
        assert_eq!(
            positions_known(&mut index, &before, &[late]).get(&late),
            Some(&4)
        );

        // An id removed after the answer found it is not taken from the answer.
        let first = all[0];
        let known = KnownIds::look_up(&store, [first].into_iter()).expect("look up");
        assert_eq!(known.stored.get(&first), Some(&0));
        store
            .db
            .delete_cf(store.cf(keys::CF_EVENT_IDS), first.as_bytes())
            .expect("delete");
        index.committed([first].into_iter(), std::iter::empty(), 5);
        assert_eq!(
            positions_known(&mut index, &known, &[first]).get(&first),
            None
        );
    }

    /// Waits (10 s at most) until the id filter answers lookups.
    fn wait_for_filter(store: &Store) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !store.id_filter_stats().ready {
            assert!(
                std::time::Instant::now() < deadline,
                "the id filter never got ready"
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn the_filter_holds_every_id_of_event_ids_once_it_answers() {
        // More ids stored than one scan step reads, and a run of the log's
        // end ingested while the scan may still run.
        let (_dir, store, all, want) = logged_store(70_000, 69_000);
        let mut index = IdIndex::open(Arc::clone(&store), 70_000, 500).expect("open index");
        wait_for_filter(&store);
        index.wait_for_ingestion();
        assert_eq!(index.unindexed(), 0, "every id is in event_ids");
        let stats = store.id_filter_stats();
        assert_eq!(
            stats.ids, 70_000,
            "scanned 69,000, inserted the run's 1,000"
        );
        assert_eq!(
            positions(&mut index, &all),
            want,
            "no stored id is ruled out"
        );

        let before = store.id_filter_stats().passed;
        let absent: Vec<Uuid> = (0..10_000).map(|_| Uuid::new_v4()).collect();
        assert!(positions(&mut index, &absent).is_empty());
        let passed = store.id_filter_stats().passed - before;
        assert!(
            passed < 100,
            "{passed} of 10,000 absent ids were looked up on disk"
        );
    }

    #[test]
    fn with_the_filter_off_every_id_is_looked_up_on_disk() {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = crate::storage::StoreOptions { id_filter_bytes: 0 };
        let store = Arc::new(Store::open_with(dir.path(), options).expect("open"));
        let all = ids(10);
        put_log(&store, &all, 10);
        let mut index = IdIndex::open(Arc::clone(&store), 10, RUN_IDS).expect("open index");
        assert_eq!(positions(&mut index, &all).len(), 10);
        let absent: Vec<Uuid> = (0..100).map(|_| Uuid::new_v4()).collect();
        assert!(positions(&mut index, &absent).is_empty());
        let stats = store.id_filter_stats();
        assert!(!stats.ready);
        assert_eq!((stats.bytes, stats.passed), (0, 110));
    }

    #[test]
    fn a_corrupt_record_past_the_mark_stops_the_open() {
        let (_dir, store, _, _) = logged_store(3, 1);
        let cf = store.cf(keys::CF_EVENTS);
        let mut record = store
            .db
            .get_cf(cf, keys::position_key(2))
            .expect("get")
            .expect("record");
        record[30] ^= 1;
        store
            .db
            .put_cf(cf, keys::position_key(2), record)
            .expect("put");
        match IdIndex::open(Arc::clone(&store), 3, RUN_IDS) {
            Err(StorageError::CorruptEvent { position: 2, .. }) => {}
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("opened over a corrupt record"),
        }
    }

    #[test]
    fn a_layout_1_store_is_marked_indexed_up_to_its_head() {
        let dir = tempfile::tempdir().expect("temp dir");
        let all = ids(4);
        {
            let store = Store::open(dir.path()).expect("open");
            put_log(&store, &all, 4);
            // What layout 1 looked like: every id indexed, no mark.
            let meta = store.cf(keys::CF_META);
            store
                .db
                .put_cf(meta, keys::META_LAYOUT_VERSION, [1])
                .expect("put");
            store
                .db
                .delete_cf(meta, keys::META_IDS_INDEXED_BEFORE)
                .expect("delete");
        }
        let store = Arc::new(Store::open(dir.path()).expect("upgrade"));
        assert_eq!(store.ids_indexed_before().expect("mark"), 4);
        let mut index = IdIndex::open(Arc::clone(&store), 4, RUN_IDS).expect("open index");
        assert_eq!(index.unindexed(), 0);
        assert_eq!(positions(&mut index, &all).len(), 4);
        drop(index);
        drop(store);

        // A layout this code does not know is refused, not guessed at.
        {
            let store = Store::open(dir.path()).expect("open");
            let meta = store.cf(keys::CF_META);
            store
                .db
                .put_cf(meta, keys::META_LAYOUT_VERSION, [4])
                .expect("put");
        }
        assert!(matches!(
            Store::open(dir.path()),
            Err(StorageError::UnsupportedLayout(4))
        ));
    }
}
