//! The fleet at a glance for the dashboard: `GET /v1/overview` (each
//! site's load and grid now) and `GET /v1/savings` (what the migrations
//! saved per day). Viewers read both.

use axum::routing::get;
use axum::{extract::State, Json, Router};
use heliotrope_api_spec::{Overview, Savings, SavingsParams};

use super::error::{ApiError, ErrorResponses};
use super::extract::ApiQuery;
use super::AppState;
use crate::domain::savings::parse_days;
use crate::overview;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/overview", get(get_overview)).route("/v1/savings", get(get_savings))
}

/// Every site with the VMs it hosts, the migrations under way at either
/// end, its current carbon and price, and whether its feed is stale.
#[utoipa::path(get, path = "/v1/overview", tag = "fleet", responses((status = 200, body = Overview), ErrorResponses))]
pub async fn get_overview(State(state): State<AppState>) -> Result<Json<Overview>, ApiError> {
    let silent_after = chrono::Duration::milliseconds((state.planner.site_silent_after_s * 1000.0) as i64);
    Ok(Json(overview::overview(&state.pool, state.clock.now(), silent_after).await?))
}

/// What the migrations that finished in the last `days` saved per UTC day,
/// against the VMs they moved having stayed where they were: running cost
/// and emissions, net of the migrations' network energy and egress.
#[utoipa::path(get, path = "/v1/savings", tag = "fleet", params(SavingsParams),
    responses((status = 200, body = Savings), ErrorResponses))]
pub async fn get_savings(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<SavingsParams>,
) -> Result<Json<Savings>, ApiError> {
    let days = parse_days(params.days)?;
    Ok(Json(overview::savings(&state.pool, &state.planner, &state.savings_pricing, days, &state.clock).await?))
}
