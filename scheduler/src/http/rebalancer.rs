//! `GET /v1/rebalancer`: who runs the hourly rebalancing, when it ran and
//! will run, and what its last plan came to.

use axum::routing::get;
use axum::{extract::State, Json, Router};
use heliotrope_api_spec::RebalancerStatus;

use super::error::{ApiError, ErrorResponses};
use super::AppState;
use crate::db;
use crate::rebalancer::LEADER_STALE;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/rebalancer", get(get_rebalancer))
}

/// The rebalancer: leader, last and next run, last plan and what came of it.
#[utoipa::path(get, path = "/v1/rebalancer", tag = "plans",
    responses((status = 200, body = RebalancerStatus), ErrorResponses))]
pub async fn get_rebalancer(State(state): State<AppState>) -> Result<Json<RebalancerStatus>, ApiError> {
    Ok(Json(db::rebalancer::status(&state.pool, &state.replica, state.rebalances, LEADER_STALE).await?))
}
