//! `/v1/migrations`: the migrations applied plans turned into, with their
//! logs (viewers read), and cancelling one before cutover (planners).

use axum::routing::{get, post};
use axum::{extract::State, Extension, Json, Router};
use heliotrope_api_spec::{
    MigrationChange, MigrationDetail, MigrationFilter, MigrationPage, MigrationState, PageParams,
};

use super::auth::Principal;
use super::error::{ApiError, ErrorResponses};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::AppState;
use crate::db;
use crate::domain::dispatch::parse_change;
use crate::domain::inventory::check_filter_names;
use crate::domain::page::PageRequest;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/migrations", get(list_migrations))
        .route("/v1/migrations/{id}", get(get_migration).patch(change_migration))
        .route("/v1/migrations/{id}/cancel", post(cancel_migration))
}

/// List migrations (without their logs), oldest first; `site` matches either end.
#[utoipa::path(get, path = "/v1/migrations", tag = "migrations", params(PageParams, MigrationFilter),
    responses((status = 200, body = MigrationPage), ErrorResponses))]
pub async fn list_migrations(
    State(state): State<AppState>,
    ApiQuery(page): ApiQuery<PageParams>,
    ApiQuery(filter): ApiQuery<MigrationFilter>,
) -> Result<Json<MigrationPage>, ApiError> {
    check_filter_names(&[("site", filter.site.as_deref()), ("vm", filter.vm.as_deref())])?;
    let page = db::migration_jobs::list(&state.pool, PageRequest::parse(&page)?, &filter).await?;
    Ok(Json(MigrationPage { items: page.items, next_cursor: page.next_cursor }))
}

/// Get one migration with its log: every change of state, who made it and when.
#[utoipa::path(get, path = "/v1/migrations/{id}", tag = "migrations", params(("id" = i64, Path)),
    responses((status = 200, body = MigrationDetail), ErrorResponses))]
pub async fn get_migration(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<MigrationDetail>, ApiError> {
    Ok(Json(db::migration_jobs::get(&state.pool, id).await?))
}

/// Cancel a migration before its cutover: the VM keeps running at the
/// source. From cutover on (or once ended) it answers 409.
#[utoipa::path(post, path = "/v1/migrations/{id}/cancel", tag = "migrations", params(("id" = i64, Path)),
    responses((status = 200, body = MigrationDetail), ErrorResponses))]
pub async fn cancel_migration(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<MigrationDetail>, ApiError> {
    let actor = caller.actor();
    let detail = format!("cancelled by {actor}");
    Ok(Json(db::migration_jobs::transition(&state.pool, id, MigrationState::Cancelled, &actor, &detail).await?))
}

/// Change a migration's bandwidth cap while it has not ended (`null`
/// lifts it); its source picks it up with its next progress report.
#[utoipa::path(patch, path = "/v1/migrations/{id}", tag = "migrations", params(("id" = i64, Path)),
    request_body = MigrationChange, responses((status = 200, body = MigrationDetail), ErrorResponses))]
pub async fn change_migration(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(change): ApiJson<MigrationChange>,
) -> Result<Json<MigrationDetail>, ApiError> {
    let change = parse_change(change)?;
    Ok(Json(db::migration_jobs::set_cap(&state.pool, id, change.cap_mbps, &caller.actor()).await?))
}
