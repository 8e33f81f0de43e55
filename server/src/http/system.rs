//! `/health/live` and `/info`: liveness and what this server is.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::AppState;

pub async fn live() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn info(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "data_dir": state.service.data_dir().display().to_string(),
        "head_position": state.service.head_position(),
    }))
}
