//! `/admin/...`: scavenge and verify jobs, the stream catalog and server stats;
//! `/metrics`: Prometheus.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::QueryParams;
use super::stream_admin::MetadataJson;
use super::streams::{path_error, stream_name};
use super::AppState;
use crate::maintenance::{self, JobError, JobResult, Jobs};
use crate::model::StreamName;
use crate::storage::StreamState;

/// The two kinds of maintenance jobs.
pub struct Maintenance {
    pub scavenges: Arc<Jobs>,
    pub verifies: Arc<Jobs>,
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::AlreadyRunning { kind, id } => ApiError::Conflict {
                code: if kind == "scavenge" {
                    "scavenge_running"
                } else {
                    "verify_running"
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

pub async fn start_scavenge(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut params = QueryParams::parse(raw.as_deref())?;
    let dry_run = match params.take_str("dry_run").as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("dry_run must be true or false, got '{other}'"),
            ))
        }
    };
    params.finish()?;
    let jobs = Arc::clone(&state.maintenance.scavenges);
    let job = maintenance::scavenge::start(Arc::clone(&state.service), jobs, dry_run)?;
    let id = job.report().id;
    tracing::info!(%id, dry_run, "scavenge started");
    Ok((StatusCode::ACCEPTED, Json(json!({"id": id}))).into_response())
}

pub async fn start_verify(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    QueryParams::parse(raw.as_deref())?.finish()?;
    let job = maintenance::verify::start(
        Arc::clone(&state.service),
        Arc::clone(&state.maintenance.verifies),
    )?;
    let id = job.report().id;
    tracing::info!(%id, "verify started");
    Ok((StatusCode::ACCEPTED, Json(json!({"id": id}))).into_response())
}

fn current(jobs: &Jobs, kind: &str) -> Result<Response, ApiError> {
    let report = jobs
        .current()
        .ok_or_else(|| ApiError::RouteNotFound(format!("no {kind} is running")))?;
    Ok(Json(report).into_response())
}

pub async fn current_scavenge(State(state): State<AppState>) -> Result<Response, ApiError> {
    current(&state.maintenance.scavenges, "scavenge")
}

pub async fn current_verify(State(state): State<AppState>) -> Result<Response, ApiError> {
    current(&state.maintenance.verifies, "verify")
}

pub async fn get_scavenge(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    Ok(Json(state.maintenance.scavenges.get(&job_id(path)?)?).into_response())
}

pub async fn get_verify(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    Ok(Json(state.maintenance.verifies.get(&job_id(path)?)?).into_response())
}

pub async fn cancel_scavenge(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let report = state.maintenance.scavenges.cancel(&job_id(path)?)?;
    Ok((StatusCode::ACCEPTED, Json(report)).into_response())
}

pub async fn cancel_verify(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let report = state.maintenance.verifies.cancel(&job_id(path)?)?;
    Ok((StatusCode::ACCEPTED, Json(report)).into_response())
}

pub async fn list_scavenges(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"scavenges": state.maintenance.scavenges.list()}))
}

pub async fn list_verifies(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"verifies": state.maintenance.verifies.list()}))
}

/// Most streams per catalog page.
const MAX_CATALOG_PAGE: u64 = 1000;

pub async fn list_streams(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut params = QueryParams::parse(raw.as_deref())?;
    let prefix = params.take_str("prefix").filter(|p| !p.is_empty());
    let after = params.take_str("after").filter(|p| !p.is_empty());
    let limit = params.take_bounded("limit", 1, MAX_CATALOG_PAGE, 100)? as usize;
    params.finish()?;
    // One more than asked, to know whether another page follows.
    let mut page = state.service.streams_page(prefix, after, limit + 1).await?;
    let next_after = (page.len() > limit).then(|| page[limit - 1].0.as_str().to_owned());
    page.truncate(limit);
    let mut streams = Vec::with_capacity(page.len());
    for (name, stream_state) in page {
        streams.push(describe(&state, &name, &stream_state).await?);
    }
    Ok(Json(json!({"streams": streams, "next_after": next_after})).into_response())
}

pub async fn get_stream(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let stream = stream_name(path)?;
    let stream_state = state
        .service
        .stream_state(stream.clone())
        .await?
        .ok_or_else(|| ApiError::StreamNotFound(stream.clone()))?;
    Ok(Json(describe(&state, &stream, &stream_state).await?).into_response())
}

/// One catalog entry. `event_count` counts the stored events from the first
/// visible revision to the last; events past `max_age` count until a read or
/// scavenge passes them.
async fn describe(state: &AppState, name: &StreamName, s: &StreamState) -> Result<Value, ApiError> {
    let first = if s.exists() {
        state
            .service
            .first_stored_revision(name.clone(), s.first_visible_revision())
            .await?
    } else {
        None
    };
    let last = s.last_revision.filter(|_| s.exists());
    let count = match (first, last) {
        (Some(first), Some(last)) if last >= first => last - first + 1,
        _ => 0,
    };
    let time = |micros: u64| {
        (micros > 0).then(|| {
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_micros(micros);
            humantime::format_rfc3339_micros(at).to_string()
        })
    };
    Ok(json!({
        "stream": name.as_str(),
        "first_revision": first,
        "last_revision": s.last_revision,
        "event_count": count,
        "bytes": s.bytes,
        "created_at": time(s.created_at_micros),
        "last_appended_at": time(s.last_appended_micros),
        "deleted": !s.tombstoned && s.last_revision.is_some() && !s.exists(),
        "tombstoned": s.tombstoned,
        "metadata": MetadataJson::new(name.as_str(), &s.metadata),
    }))
}

pub async fn stats(State(state): State<AppState>) -> Result<Response, ApiError> {
    let service = &state.service;
    let head = service.head_position();
    let removed = service.removed_events().await?;
    let engine = service.engine_stats().await;
    let metrics = service.metrics();
    Ok(Json(json!({
        "head_position": head,
        "stream_count_estimate": engine.estimated_streams,
        "event_count": head.map_or(0, |h| h + 1).saturating_sub(removed),
        "events_removed_by_scavenging": removed,
        "disk_bytes": service.disk_bytes().await,
        "rocksdb": {
            "write_amplification": engine.write_amplification,
            "pending_compaction_bytes": engine.pending_compaction_bytes,
            "running_compactions": engine.running_compactions,
            "memtable_bytes": engine.memtable_bytes,
            "block_cache_bytes": engine.block_cache_bytes,
            "sst_bytes": engine.sst_bytes,
        },
        "append_rate_per_sec_1m": metrics.append_rate(),
        "read_rate_per_sec_1m": metrics.read_rate(),
        "live_subscriptions": metrics.subscriptions.get(),
        "long_polls_waiting": metrics.long_polls.get(),
        "scavenge": state.maintenance.scavenges.current(),
    }))
    .into_response())
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let metrics = state.service.metrics();
    let scavenge = state.maintenance.scavenges.list().into_iter().next();
    if let Some(report) = scavenge {
        let counter = |name: &str| report.counters.get(name).copied().unwrap_or(0) as i64;
        metrics
            .scavenge_running
            .set(i64::from(report.result == JobResult::Running));
        metrics
            .scavenge_events_scanned
            .set(counter("events_scanned"));
        metrics
            .scavenge_events_removed
            .set(counter("events_removed"));
        metrics
            .scavenge_bytes_reclaimed
            .set(counter("bytes_reclaimed"));
    }
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], metrics.render()).into_response()
}

/// Records every request in the metrics, by route pattern, method and status.
pub async fn track(
    State(metrics): State<Arc<crate::metrics::Metrics>>,
    matched: Option<axum::extract::MatchedPath>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = matched.map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = request.method().to_string();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let labels = crate::metrics::RequestLabels {
        route,
        method,
        status: response.status().as_u16(),
    };
    metrics.requests.get_or_create(&labels).inc();
    metrics
        .request_seconds
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}
