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
//! The wrapper is C++ (`src/wal_env.cc`, a `FileSystemWrapper` overriding
//! `OptimizeForLogWrite`), compiled against the headers of the RocksDB that
//! librocksdb-sys links; it refuses (and Skald keeps RocksDB's own `Env`) if
//! the library's version is not the headers'. This crate holds the
//! workspace's only `unsafe` code: the call into the shim and the hand-over
//! of its pointer.
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
