//! `/all`: the global log in position order, with server-side prefix filters and long-poll.

use axum::extract::{RawQuery, State};
use axum::response::Response;

use super::auth::Caller;
use super::error::ApiError;
use super::extract::QueryParams;
use super::streams::{wait_param, DEFAULT_READ_LIMIT, MAX_READ_LIMIT};
use super::wire::{page_body, AllPage};
use super::{parse_direction, AppState};
use crate::model::AllFilter;
use crate::service::AllQuery;

pub async fn read(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut params = QueryParams::parse(raw.as_deref())?;
    let from = params.take_u64("from")?;
    let direction = parse_direction(params.take_str("direction"))?;
    let limit = params.take_bounded("limit", 1, MAX_READ_LIMIT, DEFAULT_READ_LIMIT)?;
    let wait = wait_param(&mut params, direction)?;
    let filter = AllFilter {
        stream_prefix: params.take_str("stream_prefix").filter(|p| !p.is_empty()),
        type_prefix: params.take_str("type_prefix").filter(|p| !p.is_empty()),
        scope: caller.scope(),
    };
    params.finish()?;
    let _slot = (!wait.is_zero())
        .then(|| state.slots.long_poll())
        .transpose()?;
    let query = AllQuery {
        from,
        direction,
        limit: limit as usize,
        filter,
        wait,
    };
    let slice = state.service.read_all(query).await?;
    let page = AllPage {
        events: Vec::new(),
        next_position: slice.next_position,
        head_position: slice.head_position,
    };
    page_body(&page, slice.events)
}
