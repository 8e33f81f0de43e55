//! `/admin/streams`: the stream catalog, paged in name order, and one stream's entry.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::ApiError;
use super::extract::QueryParams;
use super::streams::stream_name;
use super::wire::{metadata_answer, time_text, CatalogPage, StreamInfo};
use super::AppState;
use crate::model::CatalogEntry;

/// Most streams per catalog page.
const MAX_CATALOG_PAGE: u64 = 1000;

pub async fn list(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut params = QueryParams::parse(raw.as_deref())?;
    let prefix = params.take_str("prefix").filter(|p| !p.is_empty());
    let after = params.take_str("after").filter(|p| !p.is_empty());
    let limit = params.take_bounded("limit", 1, MAX_CATALOG_PAGE, 100)? as usize;
    params.finish()?;
    let (page, more) = state.service.catalog_page(prefix, after, limit).await?;
    let next_after = more
        .then(|| page.last().map(|entry| entry.name.as_str().to_owned()))
        .flatten();
    let streams = page.iter().map(describe).collect();
    Ok(Json(CatalogPage {
        streams,
        next_after,
    })
    .into_response())
}

pub async fn get(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let stream = stream_name(path)?;
    let entry = state
        .service
        .catalog_entry(stream.clone())
        .await?
        .ok_or(ApiError::StreamNotFound(stream))?;
    Ok(Json(describe(&entry)).into_response())
}

/// One catalog entry. `event_count` counts the stored events from the first
/// visible revision to the last; events past `max_age` count until a read or
/// scavenge passes them.
fn describe(entry: &CatalogEntry) -> StreamInfo {
    let s = &entry.state;
    let last = s.last_revision.filter(|_| s.exists());
    let event_count = match (entry.first_stored_revision, last) {
        (Some(first), Some(last)) if last >= first => last - first + 1,
        _ => 0,
    };
    StreamInfo {
        stream: entry.name.as_str().to_owned(),
        first_revision: entry.first_stored_revision,
        last_revision: s.last_revision,
        event_count,
        bytes: s.bytes,
        created_at: time_text(s.created_at_micros),
        last_appended_at: time_text(s.last_appended_micros),
        deleted: !s.tombstoned && s.last_revision.is_some() && !s.exists(),
        tombstoned: s.tombstoned,
        metadata: metadata_answer(entry.name.as_str(), &s.metadata),
    }
}
