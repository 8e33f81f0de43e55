//! `/health/live` and `/info`: liveness and what this server is.

use axum::extract::State;
use axum::Json;
use skald_proto::{Health, ServerInfo};

use super::auth::Caller;
use super::AppState;

pub async fn live() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Whether this node should get traffic: always on a single node; in cluster
/// mode, 503 while it is further behind the log than `--cluster-ready-lag`
/// or has stopped applying it.
pub async fn ready(State(state): State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let status = match state.service.cluster() {
        Some(cluster) if cluster.stopped() => "stopped",
        Some(cluster) if !cluster.ready() => "behind",
        _ => "ok",
    };
    let code = if status == "ok" {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(Health {
            status: status.into(),
        }),
    )
        .into_response()
}

/// What this server is; paths only for an admin.
pub async fn info(State(state): State<AppState>, caller: Caller) -> Json<ServerInfo> {
    Json(ServerInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        data_dir: caller
            .is_server_admin()
            .then(|| state.service.data_dir().display().to_string()),
        auth: state.security.auth,
        tls: state.security.tls,
        head_position: state.service.head_position(),
        worker_threads: caller
            .is_server_admin()
            .then(|| tokio::runtime::Handle::current().metrics().num_workers()),
        caller: caller.info(),
    })
}
