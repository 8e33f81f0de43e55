//! Verify: reads every stored event and checks its CRC, and that the stream
//! index and the id index agree with the events; reports problems by position.
//! Each step reads one snapshot, so it may run beside a scavenge: events the
//! scavenger removes between steps are simply not seen by the later steps.

use std::sync::Arc;

use super::{Job, Jobs};
use crate::service::Service;
use crate::storage::scan::VerifyCursor;
use skald_proto::Problem;

/// Records checked per step.
const STEP: usize = 10_000;
/// Problems listed in the report at most (all are counted).
const MAX_LISTED: usize = 1_000;

/// Starts a verify in the background; returns the job.
pub fn start(service: Arc<Service>, jobs: Arc<Jobs>) -> Result<Arc<Job>, super::JobError> {
    super::spawn(service, jobs, false, |service, job| async move {
        run(&service, &job).await
    })
}

fn record(job: &Job, problems: Vec<crate::storage::scan::Problem>) {
    job.add("problems_found", problems.len() as u64);
    job.update(|r| {
        for p in problems {
            if r.problems.len() < MAX_LISTED {
                r.problems.push(Problem {
                    position: p.position,
                    message: p.message,
                });
            }
        }
    });
}

async fn run(service: &Service, job: &Job) -> Result<(), String> {
    for name in ["events_checked", "index_entries_checked", "problems_found"] {
        job.set(name, 0);
    }
    job.update(|r| r.phase = "events".into());
    let mut from = Some(VerifyCursor::start());
    while let Some(cursor) = from {
        if job.is_cancelled() {
            return Ok(());
        }
        let page = service
            .verify_events(cursor, STEP)
            .await
            .map_err(|e| e.to_string())?;
        job.add("events_checked", page.checked);
        from = page.next;
        record(job, page.problems);
    }
    job.update(|r| r.phase = "index".into());
    let mut from = Some(VerifyCursor::start());
    while let Some(key) = from {
        if job.is_cancelled() {
            return Ok(());
        }
        let page = service
            .verify_index(key, STEP)
            .await
            .map_err(|e| e.to_string())?;
        job.add("index_entries_checked", page.checked);
        from = page.next;
        record(job, page.problems);
    }
    Ok(())
}
