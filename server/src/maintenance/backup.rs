//! Backup: a consistent online copy of the store (a RocksDB checkpoint) in a
//! new directory `--backup-dir/<job id>`, taken while appends go on, with a
//! `skald-backup.json` manifest beside it. `skald restore` turns such a
//! directory into a data directory (see `Store::restore`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Job, Jobs};
use crate::service::Service;
use crate::storage::BACKUP_MANIFEST;

/// Starts a backup into a new directory under `backup_dir`; returns the job.
pub fn start(
    service: Arc<Service>,
    jobs: Arc<Jobs>,
    backup_dir: PathBuf,
) -> Result<Arc<Job>, super::JobError> {
    super::spawn(service, jobs, false, move |service, job| async move {
        let dir = backup_dir.join(job.report().id);
        let result = run(&service, &job, &backup_dir, &dir).await;
        if result.is_err() || job.is_cancelled() {
            // A failed or cancelled backup leaves nothing half-written behind.
            let _ = tokio::fs::remove_dir_all(&dir).await;
        }
        result
    })
}

async fn run(service: &Service, job: &Job, backup_dir: &Path, dir: &Path) -> Result<(), String> {
    tokio::fs::create_dir_all(backup_dir)
        .await
        .map_err(|e| format!("cannot create the backup directory: {e}"))?;
    job.update(|r| r.phase = "checkpoint".into());
    let head = service
        .backup(dir.to_owned())
        .await
        .map_err(|e| format!("checkpoint failed: {e}"))?;
    if job.is_cancelled() {
        return Ok(());
    }
    job.update(|r| r.phase = "manifest".into());
    let (files, bytes) = dir_size(dir)
        .await
        .map_err(|e| format!("cannot list the backup: {e}"))?;
    if let Some(head) = head {
        job.set("head_position", head);
    }
    job.set("files", files);
    job.set("bytes", bytes);
    let manifest = serde_json::json!({
        "id": job.report().id,
        "head_position": head,
        "created_at": job.report().started_at,
        "skald_version": env!("CARGO_PKG_VERSION"),
    });
    let manifest = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
    tokio::fs::write(dir.join(BACKUP_MANIFEST), manifest)
        .await
        .map_err(|e| format!("cannot write the manifest: {e}"))?;
    tracing::info!(id = %job.report().id, ?head, files, bytes, "backup written");
    Ok(())
}

/// Files and bytes in `dir`.
async fn dir_size(dir: &Path) -> std::io::Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    let mut entries = tokio::fs::read_dir(dir).await?;
    while let Some(entry) = entries.next_entry().await? {
        let meta = entry.metadata().await?;
        if meta.is_file() {
            files += 1;
            bytes += meta.len();
        }
    }
    Ok((files, bytes))
}
