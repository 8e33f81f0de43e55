//! `/admin/scavenge...` and `/admin/verify...`: start (scavenge with `dry_run`),
//! follow, cancel and list maintenance jobs. The two kinds share every handler.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use skald_proto::{BackupHistory, JobStarted, ScavengeHistory, VerifyHistory};

use super::error::ApiError;
use super::extract::QueryParams;
use super::streams::path_error;
use super::AppState;
use crate::maintenance::{self, JobError};
use crate::model::JobKind;

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::AlreadyRunning { kind, id } => ApiError::Conflict {
                code: match kind {
                    JobKind::Scavenge => "scavenge_running",
                    JobKind::Verify => "verify_running",
                    JobKind::Backup => "backup_running",
                },
                message: format!("a {kind} is already running ({id}); cancel it or wait"),
            },
            JobError::NotFound { .. } => ApiError::RouteNotFound(e.to_string()),
        }
    }
}

fn job_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    Ok(path.map_err(path_error)?.0)
}

pub async fn start(
    kind: JobKind,
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut params = QueryParams::parse(raw.as_deref())?;
    let dry_run = match kind {
        JobKind::Scavenge => params.take_bool("dry_run")?.unwrap_or(false),
        JobKind::Verify | JobKind::Backup => false,
    };
    params.finish()?;
    let service = Arc::clone(&state.service);
    let jobs = Arc::clone(state.maintenance.jobs(kind));
    let job = match kind {
        JobKind::Scavenge => maintenance::scavenge::start(service, jobs, dry_run)?,
        JobKind::Verify => maintenance::verify::start(service, jobs)?,
        JobKind::Backup => {
            let dir = state
                .maintenance
                .backup_dir
                .clone()
                .ok_or_else(|| ApiError::Conflict {
                    code: "backup_not_configured",
                    message: "backups are off: start the server with --backup-dir".into(),
                })?;
            maintenance::backup::start(service, jobs, dir)?
        }
    };
    let id = job.report().id;
    tracing::info!(%kind, %id, dry_run, "job started");
    Ok((StatusCode::ACCEPTED, Json(JobStarted { id })).into_response())
}

pub async fn current(kind: JobKind, State(state): State<AppState>) -> Result<Response, ApiError> {
    let report = state
        .maintenance
        .jobs(kind)
        .current()
        .ok_or_else(|| ApiError::RouteNotFound(format!("no {kind} is running")))?;
    Ok(Json(report).into_response())
}

pub async fn get(
    kind: JobKind,
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let report = state.maintenance.jobs(kind).get(&job_id(path)?)?;
    Ok(Json(report).into_response())
}

pub async fn cancel(
    kind: JobKind,
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let report = state.maintenance.jobs(kind).cancel(&job_id(path)?)?;
    Ok((StatusCode::ACCEPTED, Json(report)).into_response())
}

pub async fn list(kind: JobKind, State(state): State<AppState>) -> Response {
    let reports = state.maintenance.jobs(kind).list();
    match kind {
        JobKind::Scavenge => Json(ScavengeHistory { scavenges: reports }).into_response(),
        JobKind::Verify => Json(VerifyHistory { verifies: reports }).into_response(),
        JobKind::Backup => Json(BackupHistory { backups: reports }).into_response(),
    }
}
