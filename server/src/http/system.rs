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
        caller: caller.info(),
    })
}
