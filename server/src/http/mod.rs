//! The HTTP API: routes, one module per resource, and the shared state.
//! `error` is the only place where errors become statuses.

mod all;
mod api;
mod append_body;
pub mod auth;
mod catalog;
mod cluster;
mod console;
pub mod error;
pub(crate) mod extract;
mod jobs;
mod stats;
pub(crate) mod stream_admin;
pub(crate) mod streams;
pub use streams::decode_append;
mod subscriptions;
mod system;
mod track;
pub mod wire;

use std::sync::Arc;

use axum::http::Uri;
use axum::routing::{get, post};
use axum::Router;

use crate::config::Config;
use crate::maintenance::Maintenance;
use crate::model::Direction;
use crate::model::JobKind;
use crate::service::Service;
pub use api::Api;
use error::ApiError;

/// Request-size limits from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_append_bytes: usize,
    pub max_event_bytes: usize,
    pub max_custom_metadata_bytes: usize,
    pub body_timeout: std::time::Duration,
}

/// Slots for long-lived requests; a request holds a permit while it lasts.
#[derive(Clone)]
pub struct Slots {
    pub subscriptions: Arc<tokio::sync::Semaphore>,
    pub long_polls: Arc<tokio::sync::Semaphore>,
}

impl Slots {
    /// A subscription's slot, or 503 `too_many_subscriptions`.
    pub fn subscription(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        Arc::clone(&self.subscriptions)
            .try_acquire_owned()
            .map_err(|_| ApiError::Overloaded {
                code: "too_many_subscriptions",
                message: "the server holds as many subscriptions as --max-subscriptions allows; retry later".into(),
            })
    }

    /// A long-poll's slot, or 503 `too_many_long_polls`.
    pub fn long_poll(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        Arc::clone(&self.long_polls)
            .try_acquire_owned()
            .map_err(|_| ApiError::Overloaded {
                code: "too_many_long_polls",
                message:
                    "the server holds as many long-polls as --max-long-polls allows; retry later"
                        .into(),
            })
    }
}

/// Which protections are on, as `/info` tells.
#[derive(Debug, Clone, Copy)]
pub struct Security {
    pub auth: bool,
    pub tls: bool,
}

/// What every handler receives.
#[derive(Clone)]
pub struct AppState {
    pub service: Arc<Service>,
    pub limits: Limits,
    pub maintenance: Arc<Maintenance>,
    pub slots: Slots,
    pub security: Security,
}

/// Builds the API: the router, and the append route served beside it
/// (`api`). `auth` is the auth file in force; `None` turns access control
/// off.
pub fn router(
    service: Arc<Service>,
    config: &Config,
    maintenance: Arc<Maintenance>,
    auth: Option<Arc<crate::auth::Authenticator>>,
) -> Api {
    let security = Security {
        auth: auth.is_some(),
        tls: config.tls.is_some(),
    };
    let limits = Limits {
        max_append_bytes: config.max_append_bytes,
        max_event_bytes: config.max_event_bytes,
        max_custom_metadata_bytes: config.max_custom_metadata_bytes,
        body_timeout: config.body_timeout,
    };
    let auth = auth::AuthLayer {
        auth,
        metrics: Arc::clone(service.metrics()),
    };
    let state = AppState {
        service,
        limits,
        maintenance,
        security,
        slots: Slots {
            subscriptions: Arc::new(tokio::sync::Semaphore::new(config.max_subscriptions)),
            long_polls: Arc::new(tokio::sync::Semaphore::new(config.max_long_polls)),
        },
    };
    let router = Router::new()
        .route(
            api::APPEND_ROUTE,
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
        .merge(job_routes(JobKind::Scavenge, "scavenge", "scavenges"))
        .merge(job_routes(JobKind::Verify, "verify", "verifies"))
        .merge(job_routes(JobKind::Backup, "backup", "backups"))
        .route("/admin/streams", get(catalog::list))
        .route("/admin/streams/{stream}", get(catalog::get))
        .route("/admin/stats", get(stats::stats))
        .route("/admin/cluster", get(cluster::get))
        .route(
            "/admin/cluster/nodes/{id}",
            axum::routing::delete(cluster::forget),
        )
        .route("/metrics", get(stats::metrics))
        .route("/health/live", get(system::live))
        .route("/health/ready", get(system::ready))
        .route("/info", get(system::info))
        .route("/", get(console::root))
        .route("/ui/", get(console::index))
        .route("/ui/{file}", get(console::file))
        .fallback(|uri: Uri| async move { ApiError::RouteNotFound(uri.path().to_owned()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        // Metrics and access checks, refused requests counted like the others.
        .layer(axum::middleware::from_fn_with_state(
            auth.clone(),
            track::track,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(on_panic))
        .with_state(state.clone());
    Api::new(router, state, auth)
}

/// A panicking handler answers 500 `internal_error`; the panic message goes to
/// the log, not to the client.
/// `POST /admin/{one}`, `GET /admin/{one}/current`, `GET|DELETE
/// /admin/{one}/{id}` and `GET /admin/{many}` for one kind of job.
fn job_routes(kind: JobKind, one: &str, many: &str) -> Router<AppState> {
    use axum::extract::rejection::PathRejection;
    use axum::extract::{Path, RawQuery, State};
    type Id = Result<Path<String>, PathRejection>;
    Router::new()
        .route(
            &format!("/admin/{one}"),
            post(move |s: State<AppState>, q: RawQuery| jobs::start(kind, s, q)),
        )
        .route(
            &format!("/admin/{one}/current"),
            get(move |s: State<AppState>| jobs::current(kind, s)),
        )
        .route(
            &format!("/admin/{one}/{{id}}"),
            get(move |s: State<AppState>, id: Id| jobs::get(kind, s, id))
                .delete(move |s: State<AppState>, id: Id| jobs::cancel(kind, s, id)),
        )
        .route(
            &format!("/admin/{many}"),
            get(move |s: State<AppState>| jobs::list(kind, s)),
        )
}

fn on_panic(panic: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic payload".to_owned());
    tracing::error!(panic = %detail, "a request handler panicked");
    ApiError::Internal("the request handler panicked".into()).into_response()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_answers_internal_error() {
        for payload in [
            Box::new("boom") as Box<dyn std::any::Any + Send>,
            Box::new(String::from("boom")),
            Box::new(42u8),
        ] {
            let response = on_panic(payload);
            assert_eq!(response.status(), 500);
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .expect("body");
            let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
            assert_eq!(json["error"], "internal_error");
            assert!(
                !json["message"].as_str().unwrap_or("").contains("boom"),
                "the panic message stays in the log: {json}"
            );
        }
    }
}
