//! The RocksDB `Env` Skald's store opens with: RocksDB's default (its
//! threads, its POSIX files), except that a write-ahead log file's
//! preallocation extends the file's size instead of keeping it
//! (`fallocate` without `FALLOC_FL_KEEP_SIZE`).
//!
//! Why: a WAL preallocated with `KEEP_SIZE` still grows with every append, so
//! each `fdatasync` commits a new file size to the filesystem's journal as
//! well as the data. With the size set once per preallocated block (about 1.1
//! x the write buffer), a small append's `fdatasync` writes the data alone:
//! 1.3 to 1.5 times as many `write` + `fdatasync` per second on this
//! project's machines (docs/benchmarks.md, "Issue 11, seventh pass").
//!
//! Also [`with_stream_key_insert_hints`]: column family options whose
//! memtable keeps, per stream, where its last key went, so that an append's
//! keys are inserted there instead of being searched for from the top of the
//! skip list (`src/insert_hints.cc`).
//!
//! The wrapper is C++ (`src/wal_env.cc`, a `FileSystemWrapper` overriding
//! `OptimizeForLogWrite`), compiled against the headers of the RocksDB that
//! librocksdb-sys links; it refuses (and Skald keeps RocksDB's own `Env`) if
//! the library's version is not the headers'; so does the extractor. This
//! crate holds the workspace's only `unsafe` code: the calls into the shims
//! and the hand-over of the `Env`'s pointer.
//!
//! ```no_run
//! let mut options = rocksdb::Options::default();
//! if let Some(env) = skald_rocksdb_env::preallocated_wal_env() {
//!     options.set_env(&env);
//! }
//! options.create_if_missing(true);
//! let db = rocksdb::DB::open(&options, "/tmp/example").expect("open");
//! ```

use std::ffi::c_void;

#[allow(unsafe_code)]
extern "C" {
    /// `src/wal_env.cc`: a new `rocksdb_env_t` owned by the caller, or null
    /// when the linked RocksDB is not the version of the headers.
    fn skald_preallocated_wal_env() -> *mut c_void;
}

#[allow(unsafe_code)]
extern "C" {
    /// `src/insert_hints.cc`: registers `skald.StreamKeyPrefix` with
    /// RocksDB's object library; false when the linked RocksDB is not the
    /// version of the headers.
    fn skald_register_stream_key_prefix() -> bool;
}

/// `options` with memtable insert hints by stream: RocksDB's
/// `memtable_insert_with_hint_prefix_extractor` set to the prefix of a key up
/// to and including its first 0x00 byte, or the whole key when it has none
/// (`src/insert_hints.cc`). For column families whose keys are a stream's
/// name, alone or followed by 0x00 and a number that grows: the next key of a
/// stream is inserted where its last one went instead of searching the
/// memtable's skip list from the top. `Ok(None)` when the linked RocksDB is
/// not the version the extractor was compiled for.
///
/// The returned options are a copy of `options` (RocksDB's options string
/// applied to them) that keep what the C++ side holds (table factory, block
/// cache) but not what the Rust wrapper keeps alive for the database's life
/// (an `Env`, a `WriteBufferManager`): use it for a column family's options,
/// not a database's.
///
/// ```no_run
/// let mut cf = rocksdb::Options::default();
/// let cf = skald_rocksdb_env::with_stream_key_insert_hints(&mut cf)
///     .expect("valid options")
///     .unwrap_or(cf);
/// ```
pub fn with_stream_key_insert_hints(
    options: &mut rocksdb::Options,
) -> Result<Option<rocksdb::Options>, rocksdb::Error> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    #[allow(unsafe_code)]
    // SAFETY: the shim takes no arguments, returns a bool, and only adds a
    // factory to RocksDB's default object library (itself locked); the
    // `OnceLock` calls it once per process.
    let registered = *REGISTERED.get_or_init(|| unsafe { skald_register_stream_key_prefix() });
    if !registered {
        return Ok(None);
    }
    options
        .get_options_from_string(STREAM_KEY_INSERT_HINTS)
        .map(Some)
}

/// The options string that names the extractor.
const STREAM_KEY_INSERT_HINTS: &str =
    "memtable_insert_with_hint_prefix_extractor=skald.StreamKeyPrefix";

/// A new `Env` that preallocates WAL files with their size set, or `None`
/// when the linked RocksDB is not the version the wrapper was compiled for.
pub fn preallocated_wal_env() -> Option<rocksdb::Env> {
    #[allow(unsafe_code)]
    // SAFETY: the shim takes no arguments and returns either null or a
    // `rocksdb_env_t` it allocated with `new`, whose ownership passes to the
    // `Env`, which frees it with `rocksdb_env_destroy` (the C API's own
    // deleter for that type) when its last clone is dropped.
    let env = unsafe {
        let raw = skald_preallocated_wal_env();
        (!raw.is_null()).then(|| rocksdb::Env::from_raw(raw.cast()))
    };
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use rocksdb::{Options, WriteBatch, WriteOptions, DB};
    use std::path::Path;

    fn options() -> Options {
        let mut options = Options::default();
        options.set_env(&preallocated_wal_env().expect("the linked RocksDB is the headers'"));
        options.create_if_missing(true);
        options
    }

    /// The WAL files in `dir` with their sizes.
    fn wals(dir: &Path) -> Vec<u64> {
        std::fs::read_dir(dir)
            .expect("read dir")
            .map(|entry| entry.expect("entry").path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
            .map(|path| std::fs::metadata(path).expect("metadata").len())
            .collect()
    }

    fn synced_put(db: &DB, key: &[u8]) {
        let mut batch = WriteBatch::default();
        batch.put(key, b"value");
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        db.write_opt(batch, &sync).expect("write");
    }

    /// Copies every file of `from` into `to`: what a `kill -9` leaves on
    /// disk, since the process's writes are all in the page cache.
    fn crash_image(from: &Path, to: &Path) {
        for entry in std::fs::read_dir(from).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.file_name().is_some_and(|name| name != "LOCK") {
                std::fs::copy(&path, to.join(path.file_name().expect("name"))).expect("copy");
            }
        }
    }

    /// Opens `dir` with one column family, `cf`, with or without insert hints.
    fn open_hinted(dir: &Path, hints: bool) -> DB {
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        let mut cf_opts = Options::default();
        if hints {
            cf_opts = with_stream_key_insert_hints(&mut cf_opts)
                .expect("a valid options string")
                .expect("the linked RocksDB is the headers'");
        }
        DB::open_cf_descriptors(
            &db_opts,
            dir,
            [rocksdb::ColumnFamilyDescriptor::new("cf", cf_opts)],
        )
        .expect("open")
    }

    /// Streams' keys as the store writes them, interleaved: `name 0x00
    /// revision` and the bare name, rewritten with each revision.
    fn write_streams(db: &DB, streams: u32, revisions: u64) {
        let cf = db.cf_handle("cf").expect("cf");
        for revision in 0..revisions {
            for stream in 0..streams {
                let name = format!("stream-{stream}");
                let mut indexed = name.clone().into_bytes();
                indexed.push(0);
                indexed.extend_from_slice(&revision.to_be_bytes());
                db.put_cf(&cf, &indexed, b"entry").expect("put");
                db.put_cf(&cf, name.as_bytes(), revision.to_be_bytes())
                    .expect("put");
            }
        }
    }

    fn memtable_bytes(db: &DB) -> u64 {
        let cf = db.cf_handle("cf").expect("cf");
        db.property_int_value_cf(&cf, "rocksdb.cur-size-active-mem-table")
            .expect("property")
            .expect("a memtable size")
    }

    #[test]
    fn insert_hints_by_stream_keep_every_key_in_order() {
        let (streams, revisions) = (4_000u32, 3u64);
        let hinted = tempfile::tempdir().expect("tempdir");
        let db = open_hinted(hinted.path(), true);
        write_streams(&db, streams, revisions);
        let cf = db.cf_handle("cf").expect("cf");
        let got: Vec<(Vec<u8>, Vec<u8>)> = db
            .iterator_cf(&cf, rocksdb::IteratorMode::Start)
            .map(|item| {
                let (key, value) = item.expect("read");
                (key.to_vec(), value.to_vec())
            })
            .collect();
        let mut expected = Vec::new();
        for stream in 0..streams {
            let name = format!("stream-{stream}");
            expected.push((
                name.clone().into_bytes(),
                (revisions - 1).to_be_bytes().to_vec(),
            ));
            for revision in 0..revisions {
                let mut key = name.clone().into_bytes();
                key.push(0);
                key.extend_from_slice(&revision.to_be_bytes());
                expected.push((key, b"entry".to_vec()));
            }
        }
        expected.sort();
        assert_eq!(got, expected);

        // The hints are in use: each stream's two prefixes (with and without
        // the 0x00) hold a hint in the memtable's arena, which a memtable
        // without the extractor does not.
        let plain = tempfile::tempdir().expect("tempdir");
        let plain_db = open_hinted(plain.path(), false);
        write_streams(&plain_db, streams, revisions);
        let (with, without) = (memtable_bytes(&db), memtable_bytes(&plain_db));
        assert!(
            with >= without + u64::from(streams) * 2 * 100,
            "no hints in the memtable: {with} bytes with the extractor, {without} without"
        );
        let options = std::fs::read_dir(hinted.path())
            .expect("read dir")
            .map(|entry| entry.expect("entry").path())
            .filter(|path| {
                path.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("OPTIONS-"))
            })
            .map(|path| std::fs::read_to_string(path).expect("read"))
            .collect::<String>();
        assert!(
            options.contains("memtable_insert_with_hint_prefix_extractor=skald.StreamKeyPrefix"),
            "the options file does not name the extractor"
        );
    }

    #[test]
    fn the_live_wal_is_preallocated_with_its_size_and_trimmed_when_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = DB::open(&options(), dir.path()).expect("open");
        synced_put(&db, b"k");
        let live = wals(dir.path());
        assert!(
            live.iter().any(|&len| len >= 1 << 20),
            "no WAL preallocated with its size: {live:?}"
        );
        drop(db);
        let closed = wals(dir.path());
        assert!(
            closed.iter().all(|&len| len < 1 << 20),
            "a closed WAL kept its preallocation: {closed:?}"
        );
        let db = DB::open(&options(), dir.path()).expect("reopen");
        assert_eq!(db.get(b"k").expect("get").as_deref(), Some(&b"value"[..]));
    }

    #[test]
    fn a_crash_with_a_preallocated_wal_loses_no_synced_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = DB::open(&options(), dir.path()).expect("open");
        let keys: Vec<Vec<u8>> = (0..1000u32).map(|i| i.to_be_bytes().to_vec()).collect();
        for key in &keys {
            synced_put(&db, key);
        }
        let image = tempfile::tempdir().expect("tempdir");
        crash_image(dir.path(), image.path());
        drop(db);
        assert!(
            wals(image.path()).iter().any(|&len| len >= 1 << 20),
            "the image's WAL has no zero-filled tail to recover past"
        );
        // Three recoveries in a row: each recovery's new WAL is preallocated too.
        let mut current = image;
        for round in 0..3 {
            let db = DB::open(&options(), current.path()).expect("recover");
            for key in &keys {
                assert_eq!(db.get(key).expect("get").as_deref(), Some(&b"value"[..]));
            }
            for earlier in 0..round {
                let key = format!("after-{earlier}");
                assert!(db.get(&key).expect("get").is_some(), "{key} lost");
            }
            synced_put(&db, format!("after-{round}").as_bytes());
            let next = tempfile::tempdir().expect("tempdir");
            crash_image(current.path(), next.path());
            drop(db);
            assert!(
                wals(next.path()).iter().any(|&len| len >= 1 << 20),
                "round {round}: no preallocated WAL in the image"
            );
            current = next;
        }
    }
}
