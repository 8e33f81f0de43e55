//! The store: the only module that touches RocksDB. It exposes a synchronous API
//! (`Store` for reads, `writer` for appends); callers run it off the async
//! runtime, through `service`. Key layouts and `meta` keys never leave it.

// Sealed: the rest of the crate reaches storage through `service`; only the
// record codec (benchmarked), `Store::open` and the test-only `fault` hooks are
// public.
pub mod codec;
mod id_filter;
mod id_index;
pub(crate) mod idle_wait;
pub use id_filter::{IdFilterStats, DEFAULT_FILTER_MIB};
pub use id_index::KnownIds;
pub(crate) mod keys;
pub mod purge;
mod read;
pub(crate) use read::{event_bytes, MAX_PAGE_BYTES};
pub(crate) mod scan;
mod stream_index;
pub(crate) mod stream_state;
pub(crate) mod writer;

use std::path::{Path, PathBuf};

use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, Options, DB};

pub use codec::CodecError;
pub use writer::WriteError;

/// The file a backup job writes beside the checkpoint (what it holds, when);
/// `restore` leaves it out.
pub const BACKUP_MANIFEST: &str = "skald-backup.json";

/// Now, in µs since the Unix epoch (the unit of `recorded_at`).
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// An error of the storage engine or of the data it holds.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// RocksDB refused or failed an operation.
    #[error("storage engine error: {0}")]
    Engine(String),
    /// The disk is full: nothing of the failed write was acknowledged, and
    /// writes succeed again once RocksDB sees free space (it checks, and
    /// resumes by itself).
    #[error("the disk is full: {0}")]
    NoSpace(String),
    /// A fault of Skald itself rather than of the data or the engine: a task
    /// that panicked or was cancelled, a thread that could not start, an answer
    /// the protocol between layers does not allow.
    #[error("internal error: {0}")]
    Internal(String),
    #[error("corrupt event at position {position}: {source}")]
    CorruptEvent { position: u64, source: CodecError },
    #[error("corrupt index entry: {0}")]
    CorruptIndex(String),
    #[error("data directory was written by an unsupported layout version {0}")]
    UnsupportedLayout(u8),
    /// A file operation outside RocksDB (backup, restore) failed.
    #[error("{0}")]
    Io(String),
}

impl From<rocksdb::Error> for StorageError {
    fn from(e: rocksdb::Error) -> Self {
        let no_space = e.kind() == rocksdb::ErrorKind::IOError
            && e.as_ref().contains("No space left on device");
        if no_space {
            Self::NoSpace(e.into_string())
        } else {
            Self::Engine(e.into_string())
        }
    }
}

/// What `Store::engine_stats` reports; `None` where RocksDB did not say.
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineStats {
    /// Bytes RocksDB wrote in flushes and compactions per byte written to it.
    pub write_amplification: Option<f64>,
    pub pending_compaction_bytes: Option<u64>,
    pub memtable_bytes: Option<u64>,
    pub block_cache_bytes: Option<u64>,
    /// Index and filter blocks of open table files, held outside the block cache.
    pub table_readers_bytes: Option<u64>,
    pub sst_bytes: Option<u64>,
    pub running_compactions: Option<u64>,
    /// RocksDB's estimate of the number of stream states.
    pub estimated_streams: Option<u64>,
}

/// The event store on disk.
pub struct Store {
    db: DB,
    path: PathBuf,
    /// Kept for the statistics tickers (write amplification).
    options: Options,
    /// The options of `event_ids`, which the id index's files are written with.
    event_ids_options: Options,
    /// Moves whenever an id may have left the id index's memory without
    /// being in `event_ids`, or left `event_ids` (see `id_index::KnownIds`).
    id_generation: std::sync::atomic::AtomicU64,
    /// Rules out most absent ids before `event_ids` is asked (`id_filter`).
    id_filter: id_filter::IdFilter,
}

/// How a store is opened.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// The most memory of the event-id filter (`--id-filter-mib`); 0 turns it off.
    pub id_filter_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            id_filter_bytes: (DEFAULT_FILTER_MIB as u64) << 20,
        }
    }
}

/// RocksDB's default block size, which every column family but `events` keeps.
const DEFAULT_BLOCK_BYTES: usize = 4 << 10;

/// The block size of `events`. Its blocks hold runs of consecutive positions,
/// read in order by `$all` scans and subscriptions: a 16 KiB block costs a
/// flush less work per event (fewer blocks, index entries and compression
/// calls) and compresses better; a cold read of one interleaved stream, which
/// decompresses a block per event or two, was no dearer (docs/benchmarks.md,
/// "Issue 11, thirteenth pass").
const EVENTS_BLOCK_BYTES: usize = 16 << 10;

/// A column family's options: blocks of about `block_bytes` (before
/// compression) cached in `cache`, Bloom filters of `bloom_bits` per key (none
/// for `None`), blocks compressed with `compression`.
fn table_options(
    cache: &Cache,
    block_bytes: usize,
    bloom_bits: Option<f64>,
    compression: DBCompressionType,
) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_block_size(block_bytes);
    if let Some(bits) = bloom_bits {
        table.set_bloom_filter(bits, false);
    }
    let mut opts = Options::default();
    opts.set_compression_type(compression);
    opts.set_block_based_table_factory(&table);
    opts
}

/// The options of every column family but `events`, `stream_index` and
/// `event_ids`: point lookups (stream state, custom metadata, meta) skip
/// files by their filters.
fn cf_options(cache: &Cache) -> Options {
    table_options(
        cache,
        DEFAULT_BLOCK_BYTES,
        Some(10.0),
        DBCompressionType::Lz4,
    )
}

/// The options of `events`: no Bloom filters. Its keys are positions that
/// appends write in order, so a file holds a range of them that others
/// seldom overlap (a scavenge's deletes until they are compacted), and a
/// point read skips the other files by their key ranges. A filter would be
/// built on every flush and compaction and held in memory (1.25 bytes per
/// event, outside the block cache) to spare the rare read of a position
/// that is not there.
fn events_options(cache: &Cache) -> Options {
    table_options(cache, EVENTS_BLOCK_BYTES, None, DBCompressionType::Lz4)
}

/// The options of `stream_index`: no Bloom filters either. Every read of it
/// is a seek (the run holding a revision is found backwards from it: see
/// `stream_index`), which a whole-key filter cannot answer.
fn stream_index_options(cache: &Cache) -> Options {
    table_options(cache, DEFAULT_BLOCK_BYTES, None, DBCompressionType::Lz4)
}

/// The options of `event_ids`, whose files the id index writes itself.
/// Random ids do not compress, and every lookup a filter lets through would
/// decompress a block for nothing: no compression.
fn event_ids_options(cache: &Cache) -> Options {
    let mut opts = table_options(
        cache,
        DEFAULT_BLOCK_BYTES,
        Some(EVENT_IDS_BLOOM_BITS),
        DBCompressionType::None,
    );
    // Its level 0 files are the id index's sorted runs of random ids, each
    // overlapping all the others: merging them every 8 runs (4M ids, as
    // often as its flushes were merged when the ids went through the
    // memtable) instead of every 4 halves the rewriting of level 1
    // (docs/benchmarks.md).
    opts.set_level_zero_file_num_compaction_trigger(8);
    opts
}

/// `opts` with the memtable's inserts hinted by stream (the
/// skald-rocksdb-env crate): for `stream_index` and `streams`, whose keys
/// are a stream's name (followed by its revision in `stream_index`), so that
/// each append's keys go in next to its stream's last ones instead of being
/// searched for from the top of the memtable's skip list (docs/benchmarks.md,
/// "Issue 11, seventeenth pass"). Without the extractor (another RocksDB
/// version linked), `opts` as they are.
fn with_insert_hints(mut opts: Options) -> Result<Options, StorageError> {
    Ok(skald_rocksdb_env::with_stream_key_insert_hints(&mut opts)?.unwrap_or(opts))
}

/// WAL files kept for reuse once past their use (each about a write
/// buffer, 64 MiB; only a store that has filled a WAL has any).
const RECYCLED_WALS: usize = 2;

/// The most WAL bytes kept before the column families holding the oldest
/// WAL are flushed: bounds the WALs on disk (RocksDB's default is four
/// times every column family's write buffers, gigabytes) and the replay
/// after a crash, and lets WALs be recycled.
const MAX_TOTAL_WAL_BYTES: u64 = 128 << 20;

/// Bits per id in `event_ids`' Bloom filters. Every append looks its ids up
/// there and nearly all are absent, so each false positive is a block read
/// for nothing: at 10 bits one lookup in 100 got one per file, at 16 one in
/// 1,200 (measured; 2 bytes of memory per stored id instead of 1.25).
const EVENT_IDS_BLOOM_BITS: f64 = 16.0;

impl Store {
    /// Opens (or creates) the store in `path` with the default options and
    /// checks its layout version.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        Self::open_with(path, StoreOptions::default())
    }

    /// [`Store::open`] with `options`.
    pub fn open_with(path: &Path, options: StoreOptions) -> Result<Self, StorageError> {
        let cache = Cache::new_lru_cache(128 << 20);
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        // WAL files preallocated with their size set, so that a small
        // append's fdatasync writes its data and no new file size (the
        // skald-rocksdb-env crate). Set first: `increase_parallelism` sizes
        // the thread pools of the options' Env.
        match skald_rocksdb_env::preallocated_wal_env() {
            Some(env) => db_opts.set_env(&env),
            None => tracing::warn!(
                "the linked RocksDB is not the version the WAL preallocation was built for; \
                 using RocksDB's own Env"
            ),
        }
        db_opts.increase_parallelism(2);
        db_opts.set_max_background_jobs(2);
        // Flushes and compactions write their files out a megabyte at a time
        // instead of leaving it all to the final sync, whose burst of
        // writeback the WAL's fdatasync then waits behind (the append
        // latency tail: docs/benchmarks.md, "Issue 11, sixth pass").
        db_opts.set_bytes_per_sync(1 << 20);
        // WALs past their use are renamed into new ones instead of deleted
        // (RocksDB's recycling, with its record format that tells a record of
        // the file's earlier life from one of this), so that a group's
        // fdatasync lands on blocks written before: no extent to convert and
        // commit to the journal, about half the time of an 80 KiB write +
        // fdatasync on preallocated blocks. A WAL is past its use once every
        // column family with data in it has flushed; the small ones rarely
        // fill, so the WALs' total is capped, which flushes them when it is
        // reached (docs/benchmarks.md, "Issue 11, nineteenth pass").
        db_opts.set_recycle_log_file_num(RECYCLED_WALS);
        db_opts.set_max_total_wal_size(MAX_TOTAL_WAL_BYTES);
        // Counters only (no histograms, no timers): what /admin/stats reports.
        // Histograms cost about 500 instructions per point lookup (measured
        // with callgrind: docs/benchmarks.md).
        db_opts.enable_statistics();
        db_opts.set_statistics_level(rocksdb::statistics::StatsLevel::ExceptHistogramOrTimers);
        let mut cfs = Vec::with_capacity(keys::ALL_CFS.len());
        for name in keys::ALL_CFS {
            let opts = match name {
                keys::CF_EVENT_IDS => event_ids_options(&cache),
                keys::CF_EVENTS => events_options(&cache),
                keys::CF_STREAM_INDEX => with_insert_hints(stream_index_options(&cache))?,
                keys::CF_STREAMS => with_insert_hints(cf_options(&cache))?,
                _ => cf_options(&cache),
            };
            cfs.push(ColumnFamilyDescriptor::new(name, opts));
        }
        let db = DB::open_cf_descriptors(&db_opts, path, cfs)?;
        // `events` is written once, in key order: its flushed files move
        // down to the last level as they are (trivial moves), where RocksDB
        // would by default rewrite every one of them again once no snapshot
        // is older, only to zero the sequence numbers of its keys ("bottommost
        // files" compactions). That doubled the bytes the column family wrote
        // and, after a burst of appends, kept a core and the disk busy for
        // seconds, behind which the next appends' fdatasync waited
        // (docs/benchmarks.md, "Issue 11, fifteenth pass"). The delay is in
        // seconds since a file was written; the largest means never. The
        // events a scavenge deletes are dropped by its own compaction of
        // the last level (`compact_slice`), not by these. Not settable
        // through the crate's `Options`, so set on the open store.
        if let Some(events) = db.cf_handle(keys::CF_EVENTS) {
            db.set_options_cf(
                events,
                &[(
                    "bottommost_file_compaction_delay",
                    u32::MAX.to_string().as_str(),
                )],
            )?;
        }
        let store = Self {
            db,
            path: path.to_owned(),
            options: db_opts,
            event_ids_options: event_ids_options(&cache),
            id_generation: std::sync::atomic::AtomicU64::new(0),
            id_filter: id_filter::IdFilter::new(options.id_filter_bytes),
        };
        store.check_layout()?;
        Ok(store)
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("every column family is opened in Store::open")
    }

    /// Checks the layout version; a new store gets the current one, a store
    /// of layout 1 (every event id indexed at commit) gets the id index's
    /// mark at its head, and one of layout 2 (stream index entries of one
    /// revision each, which layout 3 reads as runs of one) only the new
    /// version, so that older binaries refuse it.
    fn check_layout(&self) -> Result<(), StorageError> {
        let meta = self.cf(keys::CF_META);
        let mark = |batch: &mut rocksdb::WriteBatch, before: u64| {
            batch.put_cf(
                meta,
                keys::META_IDS_INDEXED_BEFORE,
                keys::position_key(before),
            );
            batch.put_cf(meta, keys::META_LAYOUT_VERSION, [keys::LAYOUT_VERSION]);
        };
        let mut batch = rocksdb::WriteBatch::default();
        match self.db.get_cf(meta, keys::META_LAYOUT_VERSION)?.as_deref() {
            Some([keys::LAYOUT_VERSION]) => return Ok(()),
            Some([1]) => {
                let head = self.next_position()?;
                tracing::info!(
                    from = 1,
                    to = keys::LAYOUT_VERSION,
                    "data directory layout upgraded (the id index marks position {head})"
                );
                mark(&mut batch, head);
            }
            Some([2]) => {
                tracing::info!(
                    from = 2,
                    to = keys::LAYOUT_VERSION,
                    "data directory layout upgraded (stream index entries may now cover runs)"
                );
                batch.put_cf(meta, keys::META_LAYOUT_VERSION, [keys::LAYOUT_VERSION]);
            }
            Some(v) => {
                return Err(StorageError::UnsupportedLayout(
                    v.first().copied().unwrap_or(0),
                ))
            }
            None => mark(&mut batch, 0),
        }
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts)?;
        Ok(())
    }

    /// Every stored event id at a position below this is in `event_ids`; the
    /// others are read back from the log on open (`id_index`).
    fn ids_indexed_before(&self) -> Result<u64, StorageError> {
        self.db
            .get_cf(self.cf(keys::CF_META), keys::META_IDS_INDEXED_BEFORE)?
            .as_deref()
            .and_then(keys::decode_position)
            .ok_or_else(|| StorageError::CorruptIndex("the id index's mark is missing".into()))
    }

    /// The options `event_ids` was opened with.
    fn event_ids_options(&self) -> &Options {
        &self.event_ids_options
    }

    /// What the event-id filter holds and how many lookups got past it.
    pub fn id_filter_stats(&self) -> IdFilterStats {
        self.id_filter.stats()
    }

    /// The next global position to assign, recovered from disk.
    pub fn next_position(&self) -> Result<u64, StorageError> {
        let stored = match self
            .db
            .get_cf(self.cf(keys::CF_META), keys::META_NEXT_POSITION)?
        {
            Some(bytes) => keys::decode_position(&bytes)
                .ok_or_else(|| StorageError::CorruptIndex("next_position is not 8 bytes".into()))?,
            None => 0,
        };
        // The counter is written in the same batch as the events, so it can never be
        // behind the last event; check anyway rather than reuse a position.
        let mut it = self.db.raw_iterator_cf(self.cf(keys::CF_EVENTS));
        it.seek_to_last();
        if let Some(key) = it.key() {
            let last = keys::decode_position(key)
                .ok_or_else(|| StorageError::CorruptIndex("event key is not 8 bytes".into()))?;
            if last >= stored {
                return Err(StorageError::CorruptIndex(format!(
                    "next_position {stored} is not past the last stored event {last}"
                )));
            }
        }
        it.status()?;
        Ok(stored)
    }

    /// What the storage engine says about itself.
    pub fn engine_stats(&self) -> EngineStats {
        use rocksdb::statistics::Ticker;
        let user = self.options.get_ticker_count(Ticker::BytesWritten);
        let engine = self.options.get_ticker_count(Ticker::FlushWriteBytes)
            + self.options.get_ticker_count(Ticker::CompactWriteBytes);
        let int = |cf: &str, property: &str| {
            self.db
                .property_int_value_cf(self.cf(cf), property)
                .ok()
                .flatten()
        };
        EngineStats {
            write_amplification: (user > 0).then(|| engine as f64 / user as f64),
            pending_compaction_bytes: self
                .property_sum("rocksdb.estimate-pending-compaction-bytes"),
            memtable_bytes: self.property_sum("rocksdb.cur-size-all-mem-tables"),
            // One cache is shared by every column family: read it once.
            block_cache_bytes: int(keys::CF_EVENTS, "rocksdb.block-cache-usage"),
            table_readers_bytes: self.property_sum("rocksdb.estimate-table-readers-mem"),
            sst_bytes: self.property_sum("rocksdb.total-sst-files-size"),
            running_compactions: int(keys::CF_EVENTS, "rocksdb.num-running-compactions"),
            estimated_streams: int(keys::CF_STREAMS, "rocksdb.estimate-num-keys"),
        }
    }

    /// How many events scavenging has removed, ever.
    pub fn removed_events(&self) -> Result<u64, StorageError> {
        match self
            .db
            .get_cf(self.cf(keys::CF_META), keys::META_REMOVED_EVENTS)?
        {
            Some(bytes) => keys::decode_position(&bytes)
                .ok_or_else(|| StorageError::CorruptIndex("removed_events is not 8 bytes".into())),
            None => Ok(0),
        }
    }

    /// Cluster mode: the last log sequence applied to the store (0: none).
    pub fn log_applied(&self) -> Result<u64, StorageError> {
        self.meta_u64(keys::META_LOG_APPLIED)
    }

    /// Cluster mode: the log sequence that last wrote to `stream` (0: none).
    pub fn subject_sequence(&self, stream: &crate::model::StreamName) -> Result<u64, StorageError> {
        self.meta_u64(&keys::subject_sequence_key(stream.as_str()))
    }

    fn meta_u64(&self, key: &[u8]) -> Result<u64, StorageError> {
        match self.db.get_cf(self.cf(keys::CF_META), key)? {
            Some(bytes) => keys::decode_position(&bytes).ok_or_else(|| {
                StorageError::CorruptIndex(format!(
                    "meta {} is not 8 bytes",
                    String::from_utf8_lossy(key)
                ))
            }),
            None => Ok(0),
        }
    }

    /// Writes a consistent copy of the store into `dir`, which must not exist,
    /// while writes go on: a RocksDB checkpoint (memtables flushed first; SST
    /// files hard-linked when `dir` is on the same filesystem, copied
    /// otherwise). Every group commit is one atomic batch, so the copy holds
    /// whole commits: a gap-free log up to its own head.
    pub fn checkpoint(&self, dir: &Path) -> Result<(), StorageError> {
        let checkpoint = rocksdb::checkpoint::Checkpoint::new(&self.db)?;
        checkpoint.create_checkpoint(dir)?;
        Ok(())
    }

    /// Opens the store in `path` without writing to it (a backup) and returns
    /// its head position, `None` for an empty store.
    pub fn head_of(path: &Path) -> Result<Option<u64>, StorageError> {
        let opts = Options::default();
        let db = DB::open_cf_for_read_only(&opts, path, keys::ALL_CFS, false)?;
        let store = Self {
            db,
            path: path.to_owned(),
            event_ids_options: Options::default(),
            options: opts,
            id_generation: std::sync::atomic::AtomicU64::new(0),
            id_filter: id_filter::IdFilter::new(0),
        };
        Ok(store.next_position()?.checked_sub(1))
    }

    /// Restores the backup in `backup` into `data_dir`, which must not exist or
    /// be empty, for a server that is not running: copies every file (and
    /// syncs it), then opens the result to check it. Returns the restored
    /// head position.
    pub fn restore(backup: &Path, data_dir: &Path) -> Result<Option<u64>, StorageError> {
        let io = |what: &str, path: &Path, e: std::io::Error| {
            StorageError::Io(format!("{what} {}: {e}", path.display()))
        };
        let head = Self::head_of(backup)?;
        if let Ok(mut entries) = std::fs::read_dir(data_dir) {
            if entries.next().is_some() {
                return Err(StorageError::Io(format!(
                    "{} is not empty; restore into a new directory",
                    data_dir.display()
                )));
            }
        }
        std::fs::create_dir_all(data_dir).map_err(|e| io("cannot create", data_dir, e))?;
        let entries = std::fs::read_dir(backup).map_err(|e| io("cannot read", backup, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io("cannot read", backup, e))?;
            let from = entry.path();
            let is_file = entry.file_type().is_ok_and(|t| t.is_file());
            if !is_file || entry.file_name() == BACKUP_MANIFEST {
                continue;
            }
            let to = data_dir.join(entry.file_name());
            std::fs::copy(&from, &to).map_err(|e| io("cannot copy", &from, e))?;
            std::fs::File::open(&to)
                .and_then(|f| f.sync_all())
                .map_err(|e| io("cannot sync", &to, e))?;
        }
        std::fs::File::open(data_dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("cannot sync", data_dir, e))?;
        let store = Self::open(data_dir)?;
        let restored = store.next_position()?.checked_sub(1);
        if restored != head {
            return Err(StorageError::CorruptIndex(format!(
                "the restored store's head is {restored:?}, the backup's {head:?}"
            )));
        }
        Ok(restored)
    }

    /// Flushes memtables to disk (used on shutdown to shorten the next start's WAL replay).
    pub fn flush(&self) -> Result<(), StorageError> {
        let cfs: Vec<_> = keys::ALL_CFS.iter().map(|name| self.cf(name)).collect();
        self.db
            .flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())?;
        Ok(())
    }
}

/// Deliberate damage, for tests of corruption detection. Compiled only with the
/// `fault-injection` feature, which nothing but tests enables.
#[cfg(feature = "fault-injection")]
pub mod fault {
    use super::{keys, StorageError, Store};
    use std::path::Path;

    /// Makes every group commit take at least `SKALD_FAULT_WRITE_DELAY_MS` more
    /// (when set), so a test can fill the writer's queue; with
    /// `SKALD_FAULT_WRITE_GATE` set to a path, holds every group commit until
    /// that file exists, so a test can look at a node that cannot have
    /// written anything yet.
    pub(super) fn write_delay() {
        let delay = std::env::var("SKALD_FAULT_WRITE_DELAY_MS")
            .ok()
            .and_then(|ms| ms.parse().ok());
        if let Some(ms) = delay {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        if let Some(gate) = std::env::var_os("SKALD_FAULT_WRITE_GATE") {
            while !Path::new(&gate).exists() {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }

    /// The id index's run length from `SKALD_FAULT_ID_RUN` (when set), so a
    /// test can have runs ingested and read back after a few events.
    pub(super) fn id_run() -> Option<usize> {
        std::env::var("SKALD_FAULT_ID_RUN")
            .ok()
            .and_then(|n| n.parse().ok())
    }

    /// Makes every compaction range take at least `SKALD_FAULT_COMPACTION_DELAY_MS`
    /// (when set), so a test can act while a scavenge is compacting.
    pub(super) fn compaction_delay() {
        let delay = std::env::var("SKALD_FAULT_COMPACTION_DELAY_MS")
            .ok()
            .and_then(|ms| ms.parse().ok());
        if let Some(ms) = delay {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }

    /// Flips one bit inside the data of the record at `position`, in a store that
    /// no server has open.
    pub fn flip_bit(data_dir: &Path, position: u64) -> Result<(), StorageError> {
        let store = Store::open(data_dir)?;
        let cf = store.cf(keys::CF_EVENTS);
        let key = keys::position_key(position);
        let mut bytes = store
            .db
            .get_cf(cf, key)?
            .ok_or_else(|| StorageError::CorruptIndex(format!("no event at {position}")))?;
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        store.db.put_cf_opt(cf, key, bytes, &opts)?;
        Ok(())
    }
}

#[cfg(feature = "fault-injection")]
impl Store {
    /// How many entries each column family holds: its keys, but for the
    /// stream index the revisions its runs cover (tests check that scavenged
    /// events are gone from every one).
    pub fn count_keys(&self) -> Result<Vec<(&'static str, usize)>, StorageError> {
        keys::ALL_CFS
            .iter()
            .map(|name| {
                let mut it = self.db.raw_iterator_cf(self.cf(name));
                it.seek_to_first();
                let mut n = 0;
                while let Some(value) = it.value() {
                    n += match *name {
                        keys::CF_STREAM_INDEX => keys::decode_stream_index_value(value)
                            .map_or(1, |(_, count)| usize::try_from(count).unwrap_or(usize::MAX)),
                        _ => 1,
                    };
                    it.next();
                }
                it.status()?;
                Ok((*name, n))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table property `name` a column family's files report together.
    fn table_property(store: &Store, cf: &str, name: &str) -> u64 {
        store.db.flush_cf(store.cf(cf)).expect("flush");
        let properties = store
            .db
            .property_value_cf(store.cf(cf), "rocksdb.aggregated-table-properties")
            .expect("property")
            .expect("a table file");
        let value = properties
            .split(';')
            .find_map(|p| p.trim().strip_prefix(name)?.trim().strip_prefix('='))
            .unwrap_or_else(|| panic!("no {name} in {properties}"));
        value.trim().parse().expect("a number")
    }

    /// The "filter block size" a column family's table files report together.
    fn filter_bytes(store: &Store, cf: &str) -> u64 {
        table_property(store, cf, "filter block size")
    }

    #[test]
    fn stream_keyed_memtables_insert_with_hints_by_stream() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _store = Store::open(dir.path()).expect("open");
        // RocksDB writes the options every column family opened with to an
        // OPTIONS file, one `[CFOptions "name"]` section each.
        let newest = std::fs::read_dir(dir.path())
            .expect("read dir")
            .map(|entry| entry.expect("entry").path())
            .filter(|path| {
                path.file_name()
                    .is_some_and(|name| name.to_string_lossy().starts_with("OPTIONS-"))
            })
            .max()
            .expect("an OPTIONS file");
        let text = std::fs::read_to_string(newest).expect("read");
        let extractor = |cf: &str| -> String {
            let section = text
                .split("[CFOptions ")
                .find(|section| section.starts_with(&format!("\"{cf}\"")))
                .unwrap_or_else(|| panic!("no section for {cf}"));
            section
                .lines()
                .find_map(|line| {
                    line.trim()
                        .strip_prefix("memtable_insert_with_hint_prefix_extractor=")
                })
                .unwrap_or_else(|| panic!("{cf}: no insert hint option"))
                .to_owned()
        };
        for cf in [keys::CF_STREAMS, keys::CF_STREAM_INDEX] {
            assert_eq!(extractor(cf), "skald.StreamKeyPrefix", "{cf}");
        }
        for cf in [keys::CF_EVENTS, keys::CF_EVENT_IDS, keys::CF_META] {
            assert_eq!(extractor(cf), "nullptr", "{cf}");
        }
    }

    #[test]
    fn event_files_are_written_in_blocks_of_16_kib_and_the_others_in_4_kib() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        // 1,000 values of 1 KiB that do not compress (a counter's bytes
        // hashed): about 1 MiB of blocks in each column family.
        let value = |i: u64| -> Vec<u8> {
            (0..128u64)
                .flat_map(|j| {
                    (i * 131 + j)
                        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                        .to_le_bytes()
                })
                .collect()
        };
        for i in 0..1_000u64 {
            let key = keys::position_key(i);
            store
                .db
                .put_cf(store.cf(keys::CF_EVENTS), key, value(i))
                .expect("put");
            store
                .db
                .put_cf(
                    store.cf(keys::CF_STREAMS),
                    keys::stream_key(&format!("s-{i}")),
                    value(i),
                )
                .expect("put");
        }
        let blocks = |cf| table_property(&store, cf, "# data blocks");
        let events = blocks(keys::CF_EVENTS);
        let streams = blocks(keys::CF_STREAMS);
        // A block closes at the first value that takes it past its size: 16
        // values of 1 KiB per 16 KiB block, 4 per 4 KiB one.
        assert!((55..=70).contains(&events), "events: {events} blocks");
        assert!((220..=260).contains(&streams), "streams: {streams} blocks");
    }

    #[test]
    fn event_files_move_to_the_last_level_and_are_not_written_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let events = store.cf(keys::CF_EVENTS);
        let event_files = |store: &Store| -> Vec<(String, i32)> {
            let mut files: Vec<_> = store
                .db
                .live_files()
                .expect("live files")
                .into_iter()
                .filter(|f| f.column_family_name == keys::CF_EVENTS)
                .map(|f| (f.name, f.level))
                .collect();
            files.sort();
            files
        };
        // Four flushes of positions in order: four level 0 files side by
        // side, which RocksDB's compactions move down as they are.
        for file in 0..4u64 {
            for i in file * 100..(file + 1) * 100 {
                store
                    .db
                    .put_cf(events, keys::position_key(i), [7u8; 200])
                    .expect("put");
            }
            store.db.flush_cf(events).expect("flush");
        }
        let flushed: Vec<String> = event_files(&store).into_iter().map(|(f, _)| f).collect();
        assert_eq!(flushed.len(), 4, "{flushed:?}");
        // Waits (30 s at most) until RocksDB has nothing left to compact.
        fn wait_idle(store: &Store) {
            let int = |property| {
                store
                    .db
                    .property_int_value_cf(store.cf(keys::CF_EVENTS), property)
                    .expect("property")
                    .expect("known property")
            };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while int("rocksdb.compaction-pending") != 0
                || int("rocksdb.num-running-compactions") != 0
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "compactions still pending after 30 s"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        wait_idle(&store);
        // RocksDB looks for last-level files to rewrite when a snapshot is
        // released (reads take them).
        drop(store.db.snapshot());
        wait_idle(&store);
        // The same files, some of them below level 0 now: moved, not
        // rewritten to zero their sequence numbers.
        let settled = event_files(&store);
        assert!(settled.iter().any(|(_, level)| *level > 0), "{settled:?}");
        assert_eq!(
            settled.iter().map(|(f, _)| f.clone()).collect::<Vec<_>>(),
            flushed,
            "{settled:?}"
        );
        // And after a restart (the setting is not in the options the crate
        // opens with).
        drop(store);
        let store = Store::open(dir.path()).expect("reopen");
        drop(store.db.snapshot());
        wait_idle(&store);
        assert_eq!(event_files(&store), settled);
    }

    #[test]
    fn a_layout_2_store_is_upgraded_and_its_single_revision_entries_read_as_runs() {
        use stream_state::StreamState;
        let dir = tempfile::tempdir().expect("temp dir");
        let stream = crate::model::StreamName::parse("s").expect("name");
        {
            let store = Store::open(dir.path()).expect("open");
            // What layout 2 wrote for a stream of two events: one 8-byte
            // index entry per revision.
            for revision in 0..2u64 {
                let record = codec::encode_record(&codec::RecordRef {
                    position: revision,
                    stream: "s",
                    revision,
                    recorded_at_micros: 1,
                    id: &uuid::Uuid::from_u128(u128::from(revision) + 1),
                    event_type: "t",
                    data: "{}",
                    metadata: None,
                    content_type: crate::model::ContentType::Json,
                });
                let mut batch = rocksdb::WriteBatch::default();
                batch.put_cf(
                    store.cf(keys::CF_EVENTS),
                    keys::position_key(revision),
                    record,
                );
                batch.put_cf(
                    store.cf(keys::CF_STREAM_INDEX),
                    keys::stream_index_key("s", revision),
                    keys::position_key(revision),
                );
                store.db.write(batch).expect("write");
            }
            let state = StreamState {
                last_revision: Some(1),
                ..StreamState::default()
            };
            let meta = store.cf(keys::CF_META);
            store
                .db
                .put_cf(
                    store.cf(keys::CF_STREAMS),
                    keys::stream_key("s"),
                    stream_state::encode(&state),
                )
                .expect("state");
            store
                .db
                .put_cf(meta, keys::META_NEXT_POSITION, keys::position_key(2))
                .expect("next");
            store
                .db
                .put_cf(meta, keys::META_LAYOUT_VERSION, [2])
                .expect("layout");
        }
        let store = Store::open(dir.path()).expect("upgrade");
        let layout = store
            .db
            .get_cf(store.cf(keys::CF_META), keys::META_LAYOUT_VERSION)
            .expect("get");
        assert_eq!(layout.as_deref(), Some(&[keys::LAYOUT_VERSION][..]));
        let read = store
            .read_stream(&stream, None, crate::model::Direction::Backward, 10)
            .expect("read");
        let crate::model::StreamRead::Found(slice) = read else {
            panic!("stream not found");
        };
        let revisions: Vec<_> = slice
            .events
            .iter()
            .map(|e| (e.revision, e.position))
            .collect();
        assert_eq!(revisions, vec![(1, 1), (0, 0)]);
        let one = store.read_event(&stream, 0).expect("read one");
        assert!(matches!(one, crate::model::StreamRead::Found(Some(e)) if e.position == 0));
    }

    #[test]
    fn event_and_stream_index_files_are_written_without_bloom_filters() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        for position in 0..1_000u64 {
            let key = keys::position_key(position);
            store
                .db
                .put_cf(store.cf(keys::CF_EVENTS), key, b"record")
                .expect("put");
            let index_key = keys::stream_index_key(&format!("s-{}", position % 7), position);
            store
                .db
                .put_cf(store.cf(keys::CF_STREAM_INDEX), index_key, key)
                .expect("put");
            let name = format!("s-{position}");
            store
                .db
                .put_cf(
                    store.cf(keys::CF_STREAMS),
                    keys::stream_key(&name),
                    b"state",
                )
                .expect("put");
        }
        assert_eq!(filter_bytes(&store, keys::CF_EVENTS), 0);
        assert_eq!(filter_bytes(&store, keys::CF_STREAM_INDEX), 0);
        // The stream states, looked up by name, keep theirs.
        assert!(filter_bytes(&store, keys::CF_STREAMS) > 0);
        let stats = store.engine_stats();
        assert!(
            stats.table_readers_bytes.is_some_and(|b| b > 0),
            "{stats:?}"
        );
    }
}
