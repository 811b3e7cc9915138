//! `/v1/plans`: propose a plan, read plans, approve and apply them
//! (viewers read, planners write).

use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{extract::State, Json, Router};
use chrono::Utc;
use heliotrope_api_spec::{
    AppliedPlan, EvacuationReport, EvacuationRequest, PageParams, Plan, PlanFilter, PlanPage, PlanRequest, PlanSchedule,
};

use super::error::{ApiError, ErrorResponses};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::AppState;
use crate::db;
use crate::domain::page::PageRequest;
use crate::domain::planner::inputs::{parse_evacuation, parse_request};
use crate::planning::{self, PlanningError};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/plans", get(list_plans).post(create_plan))
        .route("/v1/plans/{id}", get(get_plan))
        .route("/v1/plans/{id}/schedule", get(get_schedule))
        .route("/v1/plans/{id}/approve", post(approve_plan))
        .route("/v1/plans/{id}/apply", post(apply_plan))
        .route("/v1/sites/{id}/evacuate", post(evacuate_site))
}

impl From<PlanningError> for ApiError {
    fn from(e: PlanningError) -> Self {
        match e {
            PlanningError::Inputs(why) => ApiError::Validation(why),
            PlanningError::Infeasible(why) => ApiError::Infeasible(why),
            PlanningError::Unsolved(why) => ApiError::Unsolved(why),
            PlanningError::Busy(why) => ApiError::Conflict(why),
            PlanningError::Store(e) => e.into(),
        }
    }
}

/// Plan from the current inventory and signals. The plan is stored as
/// `proposed` and supersedes older plans not yet applied; with
/// `dry_run: false` it is approved and applied at once. No placement
/// satisfying the constraints answers 422 `infeasible`, naming the binding one.
#[utoipa::path(post, path = "/v1/plans", tag = "plans", request_body = PlanRequest,
    responses((status = 201, body = Plan), ErrorResponses))]
pub async fn create_plan(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<PlanRequest>,
) -> Result<(StatusCode, Json<Plan>), ApiError> {
    let request = parse_request(request)?;
    let made = planning::propose(&state.pool, &state.planner, &request, state.clock.now()).await?;
    Ok((StatusCode::CREATED, Json(made.plan)))
}

/// List plans (without their moves), oldest first.
#[utoipa::path(get, path = "/v1/plans", tag = "plans", params(PageParams, PlanFilter),
    responses((status = 200, body = PlanPage), ErrorResponses))]
pub async fn list_plans(
    State(state): State<AppState>,
    ApiQuery(page): ApiQuery<PageParams>,
    ApiQuery(filter): ApiQuery<PlanFilter>,
) -> Result<Json<PlanPage>, ApiError> {
    let page = db::plans::list(&state.pool, PageRequest::parse(&page)?, &filter).await?;
    Ok(Json(PlanPage { items: page.items, next_cursor: page.next_cursor }))
}

/// Get one plan with its moves and their reasons.
#[utoipa::path(get, path = "/v1/plans/{id}", tag = "plans", params(("id" = i64, Path)),
    responses((status = 200, body = Plan), ErrorResponses))]
pub async fn get_plan(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> Result<Json<Plan>, ApiError> {
    Ok(Json(db::plans::get(&state.pool, id).await?))
}

/// The schedule of a plan's moves: when each starts, its bandwidth cap,
/// predicted duration, bytes and downtime; the makespan against a lower
/// bound; moves that cannot converge; and the baselines on the same moves.
#[utoipa::path(get, path = "/v1/plans/{id}/schedule", tag = "plans", params(("id" = i64, Path)),
    responses((status = 200, body = PlanSchedule), ErrorResponses))]
pub async fn get_schedule(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<PlanSchedule>, ApiError> {
    Ok(Json(db::plans::schedule(&state.pool, id).await?))
}

/// Approve a proposed plan.
#[utoipa::path(post, path = "/v1/plans/{id}/approve", tag = "plans", params(("id" = i64, Path)),
    responses((status = 200, body = Plan), ErrorResponses))]
pub async fn approve_plan(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> Result<Json<Plan>, ApiError> {
    Ok(Json(db::plans::approve(&state.pool, id).await?))
}

/// Apply an approved plan: records one migration job per move. If the
/// inventory changed under the plan, it fails (409) and says why.
#[utoipa::path(post, path = "/v1/plans/{id}/apply", tag = "plans", params(("id" = i64, Path)),
    responses((status = 200, body = AppliedPlan), ErrorResponses))]
pub async fn apply_plan(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<AppliedPlan>, ApiError> {
    let (plan, jobs) = planning::apply(&state.pool, &state.planner, id).await?;
    Ok(Json(AppliedPlan { plan, jobs }))
}

/// Evacuate a site: marks it `draining`, plans destinations for its VMs
/// within capacity and constraints (optionally only to `target_sites`),
/// schedules the moves to get the most (priority-weighted) VMs out before
/// the deadline, and applies the plan; with `dry_run` it only predicts
/// (the site stays open, the plan is proposed). A deadline that cannot be met is an
/// answer, not an error: the report lists which VMs make it, which are
/// late and which stay, and why.
#[utoipa::path(post, path = "/v1/sites/{id}/evacuate", tag = "plans", params(("id" = i64, Path)),
    request_body = EvacuationRequest, responses((status = 200, body = EvacuationReport), ErrorResponses))]
pub async fn evacuate_site(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(request): ApiJson<EvacuationRequest>,
) -> Result<Json<EvacuationReport>, ApiError> {
    let request = parse_evacuation(request)?;
    Ok(Json(crate::evacuation::evacuate(&state.pool, &state.planner, id, &request, Utc::now()).await?))
}
