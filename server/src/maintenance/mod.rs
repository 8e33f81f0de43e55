//! Long-running maintenance jobs (scavenge, verify, backup): one at a time per
//! kind, with live progress, cancellation and a persisted history of the last 20.

pub mod backup;
pub mod scavenge;
pub mod verify;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use skald_proto::{JobReport, JobResult};
use tokio_util::sync::CancellationToken;

use crate::model::JobKind;
use crate::service::Service;

/// How many finished jobs of each kind are kept.
pub const HISTORY: usize = 20;

/// A running job: its report and its cancellation.
pub struct Job {
    report: Mutex<JobReport>,
    cancel: CancellationToken,
}

impl Job {
    /// Updates the report.
    pub fn update(&self, change: impl FnOnce(&mut JobReport)) {
        if let Ok(mut report) = self.report.lock() {
            change(&mut report);
        }
    }

    /// Adds `n` to a counter.
    pub fn add(&self, counter: &str, n: u64) {
        self.update(|r| *r.counters.entry(counter.to_owned()).or_default() += n);
    }

    /// Sets a counter.
    pub fn set(&self, counter: &str, n: u64) {
        self.update(|r| {
            r.counters.insert(counter.to_owned(), n);
        });
    }

    pub fn report(&self) -> JobReport {
        self.report
            .lock()
            .map(|r| r.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Completes when the job is cancelled (by a request or by shutdown).
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }
}

/// Why a job request was refused.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("a {kind} is already running ({id})")]
    AlreadyRunning { kind: JobKind, id: String },
    #[error("no {kind} with id {id}")]
    NotFound { kind: JobKind, id: String },
}

/// Registers a job in `jobs` and runs `work` for it in the background; the
/// outcome (completed, cancelled, failed) goes to the history.
pub fn spawn<F, Fut>(
    service: Arc<Service>,
    jobs: Arc<Jobs>,
    dry_run: bool,
    work: F,
) -> Result<Arc<Job>, JobError>
where
    F: FnOnce(Arc<Service>, Arc<Job>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let job = jobs.start(dry_run, service.shutdown_token())?;
    let running = Arc::clone(&job);
    let tasks = Arc::clone(&service);
    tasks.spawn(async move {
        let outcome = work(Arc::clone(&service), Arc::clone(&running)).await;
        let (result, error) = match outcome {
            Ok(()) if running.is_cancelled() => (JobResult::Cancelled, None),
            Ok(()) => (JobResult::Completed, None),
            Err(e) => (JobResult::Failed, Some(e)),
        };
        jobs.finish(&running, result, error, &service).await;
    });
    Ok(job)
}

/// The jobs of every kind, as the HTTP layer reaches them.
pub struct Maintenance {
    pub scavenges: Arc<Jobs>,
    pub verifies: Arc<Jobs>,
    pub backups: Arc<Jobs>,
    /// Where backups go (`--backup-dir`); `None`: backups are off.
    pub backup_dir: Option<std::path::PathBuf>,
}

impl Maintenance {
    /// The jobs of `kind`.
    pub fn jobs(&self, kind: JobKind) -> &Arc<Jobs> {
        match kind {
            JobKind::Scavenge => &self.scavenges,
            JobKind::Verify => &self.verifies,
            JobKind::Backup => &self.backups,
        }
    }
}

/// The jobs of one kind.
pub struct Jobs {
    kind: JobKind,
    current: Mutex<Option<Arc<Job>>>,
    history: Mutex<VecDeque<JobReport>>,
    /// Told when the running job finishes.
    finished: tokio::sync::Notify,
}

impl Jobs {
    /// Jobs of `kind`, with the history persisted in `service`'s store.
    pub async fn load(kind: JobKind, service: &Service) -> Self {
        let stored = service.job_history(kind).await.ok().flatten();
        let history = stored
            .and_then(|bytes| serde_json::from_slice::<VecDeque<JobReport>>(&bytes).ok())
            .unwrap_or_default();
        Self {
            kind,
            current: Mutex::new(None),
            history: Mutex::new(history),
            finished: tokio::sync::Notify::new(),
        }
    }

    /// Registers a new running job, unless one is running.
    pub fn start(&self, dry_run: bool, shutdown: &CancellationToken) -> Result<Arc<Job>, JobError> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(job) = current.as_ref() {
            return Err(JobError::AlreadyRunning {
                kind: self.kind,
                id: job.report().id,
            });
        }
        let job = Arc::new(Job {
            report: Mutex::new(JobReport {
                id: uuid::Uuid::now_v7().to_string(),
                dry_run,
                phase: "starting".into(),
                result: JobResult::Running,
                error: None,
                started_at: now_text(),
                finished_at: None,
                counters: BTreeMap::new(),
                problems: Vec::new(),
            }),
            // Shutdown cancels running jobs too.
            cancel: shutdown.child_token(),
        });
        *current = Some(Arc::clone(&job));
        Ok(job)
    }

    /// Ends the running job with `result` and moves it to the history.
    pub async fn finish(
        &self,
        job: &Job,
        result: JobResult,
        error: Option<String>,
        service: &Service,
    ) {
        job.update(|r| {
            r.result = result;
            r.error = error;
            r.finished_at = Some(now_text());
            r.phase = "done".into();
        });
        let report = job.report();
        tracing::info!(kind = %self.kind, id = %report.id, ?result, counters = ?report.counters, "job finished");
        let serialized = {
            let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
            history.push_front(report);
            history.truncate(HISTORY);
            serde_json::to_vec(&*history).unwrap_or_default()
        };
        if let Err(e) = service.set_job_history(self.kind, serialized).await {
            tracing::warn!(error = %e, kind = %self.kind, "cannot persist the job history");
        }
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.finished.notify_waiters();
    }

    /// Completes once the job running when this was called has finished
    /// (call it before trying to start one, so no finish is missed).
    pub fn idle(&self) -> impl std::future::Future<Output = ()> + '_ {
        self.finished.notified()
    }

    /// The running job's report.
    pub fn current(&self) -> Option<JobReport> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|j| j.report())
    }

    /// The report of job `id`, running or finished.
    pub fn get(&self, id: &str) -> Result<JobReport, JobError> {
        if let Some(report) = self.current().filter(|r| r.id == id) {
            return Ok(report);
        }
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        history
            .iter()
            .find(|r| r.id == id)
            .cloned()
            .ok_or_else(|| JobError::NotFound {
                kind: self.kind,
                id: id.to_owned(),
            })
    }

    /// Asks the running job `id` to stop; returns its report.
    pub fn cancel(&self, id: &str) -> Result<JobReport, JobError> {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        match current.as_ref() {
            Some(job) if job.report().id == id => {
                job.cancel.cancel();
                Ok(job.report())
            }
            _ => Err(JobError::NotFound {
                kind: self.kind,
                id: id.to_owned(),
            }),
        }
    }

    /// The running job (if any) and then the history, newest first.
    pub fn list(&self) -> Vec<JobReport> {
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        self.current()
            .into_iter()
            .chain(history.iter().cloned())
            .collect()
    }
}

fn now_text() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}
