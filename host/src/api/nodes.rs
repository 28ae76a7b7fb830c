//! `/api/v1/nodes`: the nodes of the deployment as they last reported themselves.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiState;
use super::error::{ApiError, ErrorBody};
use super::openapi;
use crate::domain::{Millis, NodeHeartbeat, SCHEDULER_LEASE, now_millis};

const TAG: &str = "nodes";

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    openapi::tagged(TAG, "The `runcell serve` processes of this deployment.").routes(routes!(list))
}

/// One node and whether it is alive.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct NodeView {
    node_id: String,
    started_at: Millis,
    last_heartbeat_at: Millis,
    /// Executions it may run at once.
    workers: u32,
    /// Executions it was running at its last heartbeat.
    running: u32,
    version: String,
    /// Whether it reported within the last few heartbeat periods.
    alive: bool,
    /// Whether it fires cron schedules now (holds the scheduler's lease). When the
    /// holder dies, another node takes over once the lease (5 s) runs out; ticks due
    /// meanwhile fire once, late.
    cron_leader: bool,
}

#[derive(Debug, Serialize, ToSchema)]
struct Nodes {
    items: Vec<NodeView>,
}

/// List nodes
///
/// Every node that ever reported, with its last heartbeat, worker count and running
/// executions; `alive` is false once it missed a few heartbeats.
#[utoipa::path(
    get,
    path = "/nodes",
    tag = TAG,
    operation_id = "listNodes",
    responses(
        (status = 200, description = "The nodes, by id.", body = Nodes),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn list(State(state): State<ApiState>) -> Result<Json<Nodes>, ApiError> {
    let nodes = state
        .services
        .store
        .list_nodes()
        .await
        .map_err(crate::services::ServiceError::from)?;
    let now = now_millis();
    let cron_leader = state
        .services
        .store
        .lease_holder(SCHEDULER_LEASE, now)
        .await
        .map_err(crate::services::ServiceError::from)?;
    let items = nodes
        .into_iter()
        .map(|node: NodeHeartbeat| NodeView {
            alive: node.is_alive(now),
            cron_leader: cron_leader.as_deref() == Some(node.node_id.as_str()),
            node_id: node.node_id,
            started_at: node.started_at,
            last_heartbeat_at: node.last_heartbeat_at,
            workers: node.workers,
            running: node.running,
            version: node.version,
        })
        .collect();
    Ok(Json(Nodes { items }))
}
