//! `/health/live` and `/info`: liveness and what this server is.

use axum::extract::State;
use axum::Json;
use skald_proto::{Health, ServerInfo};

use super::AppState;

pub async fn live() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

pub async fn info(State(state): State<AppState>) -> Json<ServerInfo> {
    Json(ServerInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        data_dir: state.service.data_dir().display().to_string(),
        head_position: state.service.head_position(),
    })
}
