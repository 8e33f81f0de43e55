//! Stream lifecycle: `DELETE /streams/{stream}` (soft or hard) and
//! `GET`/`PUT /streams/{stream}/metadata` (limits and custom metadata).

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::auth::Caller;
use super::error::ApiError;
use super::extract::{parse_json, read_body, QueryParams};
use super::streams::stream_name;
use super::wire::{metadata_answer, MetadataBody};
use super::AppState;
use crate::model::ExpectedRevision;
use crate::model::{StreamMetadata, StreamState};
use crate::service::WriteError;

pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let stream = stream_name(path)?;
    caller.check_stream(&stream)?;
    let mut params = QueryParams::parse(raw.as_deref())?;
    let expected = expected_in(&mut params, "expected_revision")?;
    let hard = params.take_bool("hard")?.unwrap_or(false);
    params.finish()?;
    state.service.delete(stream.clone(), expected, hard).await?;
    tracing::info!(stream = %stream, hard, "stream deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The expectation in the query parameter `name` (`any` when absent).
fn expected_in(params: &mut QueryParams, name: &str) -> Result<ExpectedRevision, ApiError> {
    match params.take_str(name) {
        Some(text) => text
            .parse()
            .map_err(|e: String| ApiError::bad_request("invalid_query", format!("{name}: {e}"))),
        None => Ok(ExpectedRevision::Any),
    }
}

pub async fn get_metadata(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let stream = stream_name(path)?;
    caller.check_stream(&stream)?;
    let current = state
        .service
        .stream_state(stream.clone())
        .await?
        .unwrap_or_default();
    if current.tombstoned {
        return Err(ApiError::StreamDeleted(stream));
    }
    Ok(Json(metadata_answer(stream.as_str(), &current)).into_response())
}

/// Bytes a metadata body may hold beyond `--max-custom-metadata-bytes`.
const METADATA_BODY_SLACK: usize = 4096;

pub async fn put_metadata(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let stream = stream_name(path)?;
    caller.check_stream(&stream)?;
    let mut params = QueryParams::parse(raw.as_deref())?;
    // The version the metadata is expected at: `no_stream` (never set),
    // `stream_exists` (set before), a number, or `any` (the default).
    let expected = expected_in(&mut params, "expected_version")?;
    params.finish()?;
    let max_custom = state.limits.max_custom_metadata_bytes;
    // Room for the limits and for whitespace around the custom object.
    let bytes = read_body(
        &headers,
        body,
        max_custom + METADATA_BODY_SLACK,
        "--max-custom-metadata-bytes",
        state.limits.body_timeout,
    )
    .await?;
    let metadata = decode_metadata(&bytes, max_custom)?;
    let updated: StreamState = state
        .service
        .set_metadata(stream.clone(), metadata, expected)
        .await
        .map_err(|e| match e {
            WriteError::WrongExpectedRevision { expected, actual } => {
                ApiError::WrongExpectedVersion { expected, actual }
            }
            other => other.into(),
        })?;
    tracing::info!(stream = %stream, "stream metadata set");
    Ok(Json(metadata_answer(stream.as_str(), &updated)).into_response())
}

/// Decodes and checks the body of `PUT /streams/{stream}/metadata`.
pub(crate) fn decode_metadata(bytes: &[u8], max_custom: usize) -> Result<StreamMetadata, ApiError> {
    let body: MetadataBody = parse_json(bytes)?;
    if let Some(custom) = &body.custom {
        let size = custom.get().len();
        if size > max_custom {
            return Err(ApiError::TooLarge {
                code: "custom_metadata_too_large",
                message: format!(
                    "custom metadata is {size} bytes, above the limit of {max_custom} bytes (set by --max-custom-metadata-bytes)"
                ),
                limit: max_custom,
            });
        }
        if !custom.get().trim_start().starts_with('{') {
            return Err(ApiError::bad_request(
                "invalid_body",
                "custom must be a JSON object",
            ));
        }
        super::streams::check_json_text(format_args!("custom"), custom)?;
    }
    if body.max_count == Some(0) {
        return Err(ApiError::bad_request(
            "invalid_body",
            "max_count must be at least 1",
        ));
    }
    Ok(StreamMetadata {
        max_count: body.max_count,
        max_age_secs: body.max_age_secs,
        truncate_before: body.truncate_before,
        custom: body.custom.map(|c| c.get().to_owned()),
    })
}
