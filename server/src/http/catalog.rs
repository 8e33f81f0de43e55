//! `/admin/streams`: the stream catalog, paged in name order, and one stream's entry.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::auth::Caller;
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
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut params = QueryParams::parse(raw.as_deref())?;
    let prefix = params.take_str("prefix").filter(|p| !p.is_empty());
    let after = params.take_str("after").filter(|p| !p.is_empty());
    let limit = params.take_bounded("limit", 1, MAX_CATALOG_PAGE, 100)? as usize;
    params.finish()?;
    let (page, more) = match caller.scope() {
        None => state.service.catalog_page(prefix, after, limit).await?,
        Some(scope) => scoped_page(&state, &scope, prefix, after, limit).await?,
    };
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
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let stream = stream_name(path)?;
    caller.check_stream(&stream)?;
    let entry = state
        .service
        .catalog_entry(stream.clone())
        .await?
        .ok_or(ApiError::StreamNotFound(stream))?;
    Ok(Json(describe(&entry)).into_response())
}

/// A catalog page of a caller limited to stream prefixes: the name ranges
/// its prefixes (narrowed by the query's) allow, walked in name order, each
/// read at most a page: the cost stays that of one page per prefix.
async fn scoped_page(
    state: &AppState,
    scope: &[String],
    prefix: Option<String>,
    after: Option<String>,
    limit: usize,
) -> Result<(Vec<CatalogEntry>, bool), ApiError> {
    let ranges = scoped_prefixes(scope, prefix.as_deref());
    let mut page = Vec::new();
    for (i, range) in ranges.iter().enumerate() {
        if let Some(after) = &after {
            // Every name in this range sorts before `after`.
            if after.as_str() > range.as_str() && !after.starts_with(range.as_str()) {
                continue;
            }
        }
        let (entries, more) = state
            .service
            .catalog_page(Some(range.clone()), after.clone(), limit - page.len())
            .await?;
        page.extend(entries);
        if more || (page.len() == limit && i + 1 < ranges.len()) {
            return Ok((page, true));
        }
    }
    Ok((page, false))
}

/// The prefixes whose streams are both under one of `scope`'s and under
/// `wanted` (when given), in name order, none under another.
fn scoped_prefixes(scope: &[String], wanted: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = scope
        .iter()
        .filter_map(|p| match wanted {
            None => Some(p.clone()),
            Some(w) if w.starts_with(p.as_str()) => Some(w.to_owned()),
            Some(w) if p.starts_with(w) => Some(p.clone()),
            Some(_) => None,
        })
        .collect();
    out.sort();
    out.dedup();
    // Sorted, a prefix comes right before what it covers.
    let mut kept: Vec<String> = Vec::with_capacity(out.len());
    for p in out {
        if kept.last().is_none_or(|last| !p.starts_with(last.as_str())) {
            kept.push(p);
        }
    }
    kept
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
        metadata: metadata_answer(entry.name.as_str(), s),
    }
}

#[cfg(test)]
mod tests {
    use super::scoped_prefixes;

    #[test]
    fn scoped_prefixes_intersect_and_drop_covered_ones() {
        let scope = [
            "orders-".to_owned(),
            "b".to_owned(),
            "billing-".to_owned(),
            "a".to_owned(),
        ];
        assert_eq!(scoped_prefixes(&scope, None), ["a", "b", "orders-"]);
        assert_eq!(scoped_prefixes(&scope, Some("bil")), ["bil"]);
        assert_eq!(scoped_prefixes(&scope, Some("order")), ["orders-"]);
        assert_eq!(scoped_prefixes(&scope, Some("orders-9")), ["orders-9"]);
        assert!(scoped_prefixes(&scope, Some("users")).is_empty());
    }
}
