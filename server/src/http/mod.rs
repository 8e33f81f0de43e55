//! The HTTP API: routes, one module per resource, and the shared state.
//! `error` is the only place where errors become statuses.

pub mod admin;
mod all;
pub mod error;
mod extract;
mod stream_admin;
mod streams;
mod subscriptions;
mod system;
pub mod wire;

use std::sync::Arc;

use axum::http::Uri;
use axum::routing::{get, post};
use axum::Router;

use crate::config::Config;
use crate::service::Service;
use crate::storage::Direction;
use error::ApiError;

/// Request-size limits from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_append_bytes: usize,
    pub max_event_bytes: usize,
    pub body_timeout: std::time::Duration,
}

/// What every handler receives.
#[derive(Clone)]
pub struct AppState {
    pub service: Arc<Service>,
    pub limits: Limits,
    pub maintenance: Arc<admin::Maintenance>,
}

/// Builds the router.
pub fn router(
    service: Arc<Service>,
    config: &Config,
    maintenance: Arc<admin::Maintenance>,
) -> Router {
    let limits = Limits {
        max_append_bytes: config.max_append_bytes,
        max_event_bytes: config.max_event_bytes,
        body_timeout: config.body_timeout,
    };
    Router::new()
        .route(
            "/streams/{stream}",
            post(streams::append)
                .get(streams::read)
                .delete(stream_admin::delete),
        )
        .route(
            "/streams/{stream}/metadata",
            get(stream_admin::get_metadata).put(stream_admin::put_metadata),
        )
        .route("/streams/{stream}/{revision}", get(streams::read_one))
        .route("/all", get(all::read))
        .route("/subscriptions/all", get(subscriptions::all))
        .route(
            "/subscriptions/streams/{stream}",
            get(subscriptions::stream),
        )
        .route("/admin/scavenge", post(admin::start_scavenge))
        .route("/admin/scavenge/current", get(admin::current_scavenge))
        .route(
            "/admin/scavenge/{id}",
            get(admin::get_scavenge).delete(admin::cancel_scavenge),
        )
        .route("/admin/scavenges", get(admin::list_scavenges))
        .route("/admin/verify", post(admin::start_verify))
        .route("/admin/verify/current", get(admin::current_verify))
        .route(
            "/admin/verify/{id}",
            get(admin::get_verify).delete(admin::cancel_verify),
        )
        .route("/admin/verifies", get(admin::list_verifies))
        .route("/admin/streams", get(admin::list_streams))
        .route("/admin/streams/{stream}", get(admin::get_stream))
        .route("/admin/stats", get(admin::stats))
        .route("/metrics", get(admin::metrics))
        .route("/health/live", get(system::live))
        .route("/info", get(system::info))
        .fallback(|uri: Uri| async move { ApiError::RouteNotFound(uri.path().to_owned()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(service.metrics()),
            admin::track,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(on_panic))
        .with_state(AppState {
            service,
            limits,
            maintenance,
        })
}

fn on_panic(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    use axum::response::IntoResponse;
    ApiError::Storage("internal error: the request handler panicked".into()).into_response()
}

/// `direction=forward|backward`, forward when absent.
fn parse_direction(raw: Option<String>) -> Result<Direction, ApiError> {
    match raw.as_deref() {
        None | Some("forward") => Ok(Direction::Forward),
        Some("backward") => Ok(Direction::Backward),
        Some(other) => Err(ApiError::bad_request(
            "invalid_query",
            format!("query parameter 'direction' must be 'forward' or 'backward', got '{other}'"),
        )),
    }
}
