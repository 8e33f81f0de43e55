//! `/admin/cluster` (cluster mode): this node's id and the cluster's registry
//! of nodes and purge horizon; forgetting a node gone for good.

use axum::extract::{Path, State};
use axum::Json;
use skald_proto::ClusterInfo;

use super::error::ApiError;
use super::AppState;

fn cluster(state: &AppState) -> Result<&std::sync::Arc<crate::cluster::Cluster>, ApiError> {
    state.service.cluster().ok_or_else(|| ApiError::Conflict {
        code: "not_in_cluster_mode",
        message: "this server runs as one node (start it with --cluster)".into(),
    })
}

fn unavailable(message: String) -> ApiError {
    ApiError::Overloaded {
        code: "cluster_unavailable",
        message,
    }
}

/// `GET /admin/cluster`.
pub async fn get(State(state): State<AppState>) -> Result<Json<ClusterInfo>, ApiError> {
    let cluster = cluster(&state)?;
    let registry = cluster
        .registry()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    Ok(Json(ClusterInfo {
        node_id: cluster.node_id().to_owned(),
        nodes: registry.nodes,
        horizon: registry.horizon,
        purged_through: registry.purged_through,
    }))
}

/// `DELETE /admin/cluster/nodes/{id}`: the purge horizon stops waiting for
/// that node (it can no longer catch up once the horizon passes it).
pub async fn forget(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::http::StatusCode, ApiError> {
    let cluster = cluster(&state)?;
    if id == cluster.node_id() {
        return Err(ApiError::Conflict {
            code: "node_is_this_one",
            message: "a node cannot forget itself; ask another node".into(),
        });
    }
    match cluster.forget(&state.service, &id).await {
        Ok(true) => Ok(axum::http::StatusCode::NO_CONTENT),
        Ok(false) => Err(ApiError::RouteNotFound(format!("no registered node {id}"))),
        Err(e) => Err(unavailable(e)),
    }
}
