//! Where a projection's checkpoint (the last position it has applied) is kept.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::BoxError;

/// Keeps projections' checkpoints.
///
/// For exactly-once read models, keep the checkpoint in the read model's own
/// database and write it in the same transaction as the rows, inside
/// [`Projection::commit`](super::Projection::commit); then give the runner a store
/// whose `load` reads it from there and whose `save` does nothing (the
/// `order_summary` example does this with SQLite).
///
/// ```
/// use skald_client::projection::{BoxError, CheckpointStore};
/// /// Keeps the checkpoint in a field (e.g. of a struct that also owns the read model).
/// struct InField(Option<u64>);
/// impl CheckpointStore for InField {
///     async fn load(&mut self, _: &str) -> Result<Option<u64>, BoxError> { Ok(self.0) }
///     async fn save(&mut self, _: &str, position: u64) -> Result<(), BoxError> { self.0 = Some(position); Ok(()) }
///     async fn clear(&mut self, _: &str) -> Result<(), BoxError> { self.0 = None; Ok(()) }
/// }
/// ```
pub trait CheckpointStore: Send {
    /// The last position `projection` applied, `None` when it never ran.
    fn load(
        &mut self,
        projection: &str,
    ) -> impl Future<Output = Result<Option<u64>, BoxError>> + Send;
    /// Records that `projection` applied everything up to `position`.
    fn save(
        &mut self,
        projection: &str,
        position: u64,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;
    /// Forgets `projection`'s checkpoint (for a rebuild).
    fn clear(&mut self, projection: &str) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// Checkpoints in memory (tests, or projections rebuilt at every start). Clones share.
///
/// ```
/// # tokio_test_block(async {
/// use skald_client::projection::{CheckpointStore, MemoryCheckpointStore};
/// let mut store = MemoryCheckpointStore::default();
/// store.save("totals", 41).await.unwrap();
/// assert_eq!(store.load("totals").await.unwrap(), Some(41));
/// # });
/// # fn tokio_test_block(f: impl std::future::Future<Output = ()>) {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryCheckpointStore {
    positions: Arc<Mutex<HashMap<String, u64>>>,
}

impl CheckpointStore for MemoryCheckpointStore {
    async fn load(&mut self, projection: &str) -> Result<Option<u64>, BoxError> {
        Ok(self
            .positions
            .lock()
            .map_err(|_| "checkpoint lock poisoned")?
            .get(projection)
            .copied())
    }

    async fn save(&mut self, projection: &str, position: u64) -> Result<(), BoxError> {
        self.positions
            .lock()
            .map_err(|_| "checkpoint lock poisoned")?
            .insert(projection.to_owned(), position);
        Ok(())
    }

    async fn clear(&mut self, projection: &str) -> Result<(), BoxError> {
        self.positions
            .lock()
            .map_err(|_| "checkpoint lock poisoned")?
            .remove(projection);
        Ok(())
    }
}

/// Checkpoints in files, one per projection (`<dir>/<name>.checkpoint`), each
/// replaced atomically: written to a temporary file, synced, renamed over the old
/// one, and the directory synced, so a crash leaves the old or the new value.
///
/// ```no_run
/// use skald_client::projection::FileCheckpointStore;
/// let store = FileCheckpointStore::new("/var/lib/billing/checkpoints")?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct FileCheckpointStore {
    dir: PathBuf,
}

impl FileCheckpointStore {
    /// A store in `dir`, created when missing.
    pub fn new(dir: impl AsRef<Path>) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir.as_ref())?;
        Ok(Self {
            dir: dir.as_ref().to_owned(),
        })
    }

    fn path(&self, projection: &str) -> PathBuf {
        // Names become file names: keep them to a safe alphabet.
        let safe: String = projection
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!("{safe}.checkpoint"))
    }
}

impl CheckpointStore for FileCheckpointStore {
    async fn load(&mut self, projection: &str) -> Result<Option<u64>, BoxError> {
        let path = self.path(projection);
        tokio::task::spawn_blocking(move || match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(
                text.trim()
                    .parse::<u64>()
                    .map_err(|e| format!("{}: {e}", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        })
        .await?
    }

    async fn save(&mut self, projection: &str, position: u64) -> Result<(), BoxError> {
        let (path, dir) = (self.path(projection), self.dir.clone());
        tokio::task::spawn_blocking(move || -> Result<(), BoxError> {
            use std::io::Write;
            let tmp = path.with_extension("checkpoint.tmp");
            let mut file = std::fs::File::create(&tmp)?;
            writeln!(file, "{position}")?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            sync_dir(&dir)?;
            Ok(())
        })
        .await?
    }

    /// Removes the file and syncs the directory, so that a crash after a rebuild
    /// cannot bring the old checkpoint back beside a reset read model.
    async fn clear(&mut self, projection: &str) -> Result<(), BoxError> {
        let (path, dir) = (self.path(projection), self.dir.clone());
        tokio::task::spawn_blocking(move || -> Result<(), BoxError> {
            match std::fs::remove_file(&path) {
                Ok(()) => sync_dir(&dir)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            Ok(())
        })
        .await?
    }
}

/// Makes a rename or removal in `dir` durable (the directory's entry list is
/// data of its own, which `fsync` on the directory writes out).
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()?;
    #[cfg(test)]
    tests::SYNCED_DIRS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(dir.to_owned());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every directory `sync_dir` synced, so tests can check that a change of a
    /// directory's entries was made durable (tests run in parallel: each looks
    /// for its own temporary directory only).
    pub(super) static SYNCED_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    fn syncs_of(dir: &Path) -> usize {
        SYNCED_DIRS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|d| d.as_path() == dir)
            .count()
    }

    #[tokio::test]
    async fn save_and_clear_sync_the_directory() {
        let dir = tempfile::tempdir().expect("dir");
        let mut store = FileCheckpointStore::new(dir.path()).expect("store");
        store.save("p", 7).await.expect("save");
        assert_eq!(syncs_of(dir.path()), 1, "the rename is made durable");
        store.clear("p").await.expect("clear");
        assert_eq!(syncs_of(dir.path()), 2, "the removal is made durable");
        assert_eq!(store.load("p").await.expect("load"), None);
        store.clear("p").await.expect("clearing nothing is fine");
        assert_eq!(syncs_of(dir.path()), 2, "nothing removed, nothing to sync");
    }

    #[tokio::test]
    async fn the_file_store_round_trips_replaces_and_clears() {
        let dir = tempfile::tempdir().expect("dir");
        let mut store = FileCheckpointStore::new(dir.path().join("nested")).expect("store");
        assert_eq!(store.load("p/1").await.expect("load"), None);
        store.save("p/1", 7).await.expect("save");
        store.save("p/1", 1_000_000_000_000).await.expect("save");
        store.save("other", 3).await.expect("save");
        // A new store over the same directory (a restarted process) sees the values.
        let mut reopened = FileCheckpointStore::new(dir.path().join("nested")).expect("store");
        assert_eq!(
            reopened.load("p/1").await.expect("load"),
            Some(1_000_000_000_000)
        );
        assert_eq!(reopened.load("other").await.expect("load"), Some(3));
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("nested"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("name"))
            .collect();
        assert!(
            names.iter().all(|n| n.ends_with(".checkpoint")),
            "{names:?}"
        );
        reopened.clear("p/1").await.expect("clear");
        reopened
            .clear("never-saved")
            .await
            .expect("clearing nothing is fine");
        assert_eq!(reopened.load("p/1").await.expect("load"), None);
        assert_eq!(reopened.load("other").await.expect("load"), Some(3));
    }

    #[tokio::test]
    async fn a_damaged_checkpoint_file_is_an_error_not_a_restart_from_zero() {
        let dir = tempfile::tempdir().expect("dir");
        let mut store = FileCheckpointStore::new(dir.path()).expect("store");
        std::fs::write(dir.path().join("p.checkpoint"), "not a number").expect("write");
        assert!(store.load("p").await.is_err());
    }

    #[tokio::test]
    async fn memory_store_clones_share_positions() {
        let mut a = MemoryCheckpointStore::default();
        let mut b = a.clone();
        a.save("p", 5).await.expect("save");
        assert_eq!(b.load("p").await.expect("load"), Some(5));
        b.clear("p").await.expect("clear");
        assert_eq!(a.load("p").await.expect("load"), None);
    }
}
