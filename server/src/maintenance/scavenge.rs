//! Scavenging: physically removes the events that deletion, tombstones,
//! `max_count`, `max_age` and `truncate_before` hide, from every column family,
//! then compacts so the disk space comes back.
//!
//! It walks the stream catalog in name order; for each stream whose state hides
//! something it reads the hidden prefix in chunks and hands each chunk to the
//! single writer as a `Remove` request. The writer re-checks every event against
//! the stream's current state, so a scavenge never removes a visible event, even
//! if limits change under it. Each chunk is one atomic batch: a crash leaves
//! the store consistent, and the next scavenge finishes the job. Between chunks
//! it pauses, so appends keep most of the writer. A cancelled scavenge records
//! the last stream it finished; the next one continues after it (so a stream
//! left half-done is taken up again from its start). The final compaction goes
//! range by range and stops between ranges when cancelled.
//!
//! In cluster mode the removals go through the replicated log (the service's
//! internal writes do), so every node removes the same events at the same
//! point of the log, re-checked there. Instead of compacting, the scavenge
//! then logs its end; every node, this one included, compacts as a job of its
//! own when it applies that end (`compact_after_log_scavenges`), so a node
//! that was offline compacts too once it has caught up.

use std::sync::Arc;
use std::time::Duration;

use super::{Job, Jobs};
use crate::service::Service;
use crate::storage::now_micros;

/// Hidden events removed per writer request.
pub const CHUNK: usize = 500;
/// Pause after each chunk (throttling; see docs/benchmarks.md).
pub const PAUSE: Duration = Duration::from_millis(10);
/// Streams read from the catalog at a time.
const STREAMS_PER_PAGE: usize = 200;

/// Starts a scavenge in the background; returns the job.
pub fn start(
    service: Arc<Service>,
    jobs: Arc<Jobs>,
    dry_run: bool,
) -> Result<Arc<Job>, super::JobError> {
    super::spawn(service, jobs, dry_run, move |service, job| async move {
        run(&service, &job, dry_run).await
    })
}

/// Cluster mode: compacts the store once the removals of the scavenge that
/// ended at log sequence `sequence` are applied here, as a job of its own.
pub fn start_compaction(
    service: Arc<Service>,
    jobs: Arc<Jobs>,
    sequence: u64,
) -> Result<Arc<Job>, super::JobError> {
    super::spawn(service, jobs, false, move |service, job| async move {
        job.set("log_sequence", sequence);
        job.set("disk_bytes_before", service.disk_bytes().await);
        job.update(|r| r.phase = "compacting".into());
        compact(&service, &job).await?;
        job.set("disk_bytes_after", service.disk_bytes().await);
        Ok(())
    })
}

/// Cluster mode: starts a compaction job each time this node applies the end
/// of a scavenge (`ends` carries its log sequence), after the scavenge job
/// running here, if any, has finished; until shutdown.
pub async fn compact_after_log_scavenges(
    service: Arc<Service>,
    jobs: Arc<Jobs>,
    mut ends: tokio::sync::watch::Receiver<u64>,
) {
    let shutdown = service.shutdown_token().clone();
    loop {
        tokio::select! {
            changed = ends.changed() => if changed.is_err() { return },
            () = shutdown.cancelled() => return,
        }
        let sequence = *ends.borrow_and_update();
        loop {
            let idle = jobs.idle();
            match start_compaction(Arc::clone(&service), Arc::clone(&jobs), sequence) {
                Ok(job) => {
                    tracing::info!(id = %job.report().id, sequence, "compacting after a scavenge in the log");
                    break;
                }
                Err(super::JobError::AlreadyRunning { .. }) => tokio::select! {
                    () = idle => {}
                    () = shutdown.cancelled() => return,
                },
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the compaction after a scavenge");
                    break;
                }
            }
        }
    }
}

/// Whether a stream (or the compaction) was finished or left when the job was
/// cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Finished,
    Cancelled,
}

async fn run(service: &Service, job: &Job, dry_run: bool) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    job.set("disk_bytes_before", service.disk_bytes().await);
    let resume = if dry_run {
        None
    } else {
        service.scavenge_resume_point().await.map_err(|e| err(&e))?
    };
    // The last stream finished; the next run starts after it.
    let mut after = resume;
    if let Some(after) = &after {
        tracing::info!(after = %after, "scavenge resumes after an interrupted one");
        job.set("resumed", 1);
    }
    job.update(|r| r.phase = "scanning".into());
    for name in [
        "streams_scanned",
        "events_scanned",
        "events_removed",
        "bytes_reclaimed",
    ] {
        job.set(name, 0);
    }
    loop {
        let page = service
            .streams_page(None, after.clone(), STREAMS_PER_PAGE)
            .await
            .map_err(|e| err(&e))?;
        if page.is_empty() {
            break;
        }
        for (stream, state) in page {
            if job.is_cancelled() {
                return stop(service, after, dry_run).await;
            }
            job.add("streams_scanned", 1);
            if state.hides_anything()
                && scavenge_stream(service, job, &stream, &state, dry_run).await? == Step::Cancelled
            {
                // This stream is not finished: the next run starts with it again.
                return stop(service, after, dry_run).await;
            }
            after = Some(stream.as_str().to_owned());
        }
    }
    if !dry_run {
        if let Some(cluster) = service.cluster() {
            job.update(|r| r.phase = "logging the end".into());
            let sequence = cluster.scavenged().await.map_err(|e| err(&e))?;
            job.set("log_sequence", sequence);
        } else {
            job.update(|r| r.phase = "compacting".into());
            if compact(service, job).await? == Step::Cancelled {
                return stop(service, after, dry_run).await;
            }
        }
        service
            .set_scavenge_resume_point(None)
            .await
            .map_err(|e| err(&e))?;
    }
    job.set("disk_bytes_after", service.disk_bytes().await);
    Ok(())
}

/// Records where the next run resumes (after the last finished stream) and ends
/// a cancelled run.
async fn stop(service: &Service, after: Option<String>, dry_run: bool) -> Result<(), String> {
    if !dry_run {
        service
            .set_scavenge_resume_point(after)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Compacts the store range by range, stopping between ranges when cancelled;
/// a cancel during a range stops waiting for it (the range finishes in the
/// background, which is safe at any point: compaction is crash-safe).
async fn compact(service: &Service, job: &Job) -> Result<Step, String> {
    let plan = service.compaction_plan().await.map_err(|e| e.to_string())?;
    job.set("compaction_ranges", plan.len() as u64);
    job.set("compaction_ranges_done", 0);
    for slice in plan {
        if job.is_cancelled() {
            return Ok(Step::Cancelled);
        }
        tokio::select! {
            done = service.compact_slice(slice) => done.map_err(|e| e.to_string())?,
            () = job.cancelled() => return Ok(Step::Cancelled),
        }
        job.add("compaction_ranges_done", 1);
    }
    Ok(Step::Finished)
}

async fn scavenge_stream(
    service: &Service,
    job: &Job,
    stream: &crate::model::StreamName,
    state: &crate::model::StreamState,
    dry_run: bool,
) -> Result<Step, String> {
    let now = now_micros();
    let mut from = 0;
    loop {
        if job.is_cancelled() {
            return Ok(Step::Cancelled);
        }
        let page = service
            .hidden_events(stream.clone(), state.clone(), from, now, CHUNK)
            .await
            .map_err(|e| e.to_string())?;
        job.add("events_scanned", page.scanned);
        if page.events.is_empty() {
            return Ok(Step::Finished);
        }
        if dry_run {
            job.add("events_removed", page.events.len() as u64);
            job.add("bytes_reclaimed", page.events.iter().map(|e| e.bytes).sum());
        } else {
            let (events, bytes) = service
                .remove_hidden(stream.clone(), page.events, now)
                .await
                .map_err(|e| e.to_string())?;
            job.add("events_removed", events);
            job.add("bytes_reclaimed", bytes);
            tokio::time::sleep(PAUSE).await;
        }
        match page.next_revision {
            Some(next) => from = next,
            None => return Ok(Step::Finished),
        }
    }
}
