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
//! the last stream it finished; the next one continues after it.

use std::sync::Arc;
use std::time::Duration;

use super::{Job, Jobs};
use crate::service::Service;
use crate::storage::keys;
use crate::storage::now_micros;
use crate::storage::writer::{WriteOp, WriteOutcome};

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

async fn run(service: &Service, job: &Job, dry_run: bool) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    job.set("disk_bytes_before", service.disk_bytes().await);
    let resume = if dry_run {
        None
    } else {
        service
            .meta(keys::META_SCAVENGE_RESUME)
            .await
            .map_err(|e| err(&e))?
    };
    let mut after = resume.map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
    if let Some(after) = &after {
        tracing::info!(after = %after, "scavenge resumes after an interrupted one");
        job.update(|r| {
            r.counters.insert("resumed".into(), 1);
        });
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
                if !dry_run {
                    let resume = after.as_deref().map(str::as_bytes).map(<[u8]>::to_vec);
                    service
                        .set_meta(keys::META_SCAVENGE_RESUME, resume)
                        .await
                        .map_err(|e| err(&e))?;
                }
                return Ok(());
            }
            job.add("streams_scanned", 1);
            if state.hides_anything() {
                scavenge_stream(service, job, &stream, &state, dry_run).await?;
            }
            after = Some(stream.as_str().to_owned());
        }
    }
    if !dry_run {
        job.update(|r| r.phase = "compacting".into());
        service.compact().await.map_err(|e| err(&e))?;
        service
            .set_meta(keys::META_SCAVENGE_RESUME, None)
            .await
            .map_err(|e| err(&e))?;
    }
    job.set("disk_bytes_after", service.disk_bytes().await);
    Ok(())
}

async fn scavenge_stream(
    service: &Service,
    job: &Job,
    stream: &crate::model::StreamName,
    state: &crate::storage::StreamState,
    dry_run: bool,
) -> Result<(), String> {
    let now = now_micros();
    let mut from = 0;
    loop {
        if job.is_cancelled() {
            return Ok(());
        }
        let page = service
            .hidden_events(stream.clone(), state.clone(), from, now, CHUNK)
            .await
            .map_err(|e| e.to_string())?;
        job.add("events_scanned", page.scanned);
        if page.events.is_empty() {
            return Ok(());
        }
        if dry_run {
            job.add("events_removed", page.events.len() as u64);
            job.add("bytes_reclaimed", page.events.iter().map(|e| e.bytes).sum());
        } else {
            let op = WriteOp::Remove {
                events: page.events,
                now_micros: now,
            };
            match service
                .write(stream.clone(), op)
                .await
                .map_err(|e| e.to_string())?
            {
                WriteOutcome::Removed { events, bytes } => {
                    job.add("events_removed", events);
                    job.add("bytes_reclaimed", bytes);
                }
                other => return Err(format!("unexpected writer answer {other:?}")),
            }
            tokio::time::sleep(PAUSE).await;
        }
        match page.next_revision {
            Some(next) => from = next,
            None => return Ok(()),
        }
    }
}
