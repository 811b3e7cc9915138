//! `/v1/groups`: multi-site virtual clusters and their placement policies.

use axum::http::StatusCode;
use axum::routing::get;
use axum::{extract::State, Json, Router};
use heliotrope_api_spec::{Group, GroupFilter, GroupPage, GroupSpec, PageParams};

use super::error::{ApiError, ErrorResponses};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::AppState;
use crate::db;
use crate::domain::inventory::parse_group;
use crate::domain::page::PageRequest;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/groups", get(list_groups).post(create_group))
        .route("/v1/groups/{id}", get(get_group).put(replace_group).delete(delete_group))
}

/// List VM groups.
#[utoipa::path(get, path = "/v1/groups", tag = "groups", params(PageParams, GroupFilter),
    responses((status = 200, body = GroupPage), ErrorResponses))]
pub async fn list_groups(
    State(state): State<AppState>,
    ApiQuery(page): ApiQuery<PageParams>,
    ApiQuery(filter): ApiQuery<GroupFilter>,
) -> Result<Json<GroupPage>, ApiError> {
    let page = db::groups::list(&state.pool, PageRequest::parse(&page)?, &filter).await?;
    Ok(Json(GroupPage { items: page.items, next_cursor: page.next_cursor }))
}

/// Create a VM group.
#[utoipa::path(post, path = "/v1/groups", tag = "groups", request_body = GroupSpec,
    responses((status = 201, body = Group), ErrorResponses))]
pub async fn create_group(
    State(state): State<AppState>,
    ApiJson(spec): ApiJson<GroupSpec>,
) -> Result<(StatusCode, Json<Group>), ApiError> {
    let group = db::groups::insert(&state.pool, &parse_group(spec)?).await?;
    Ok((StatusCode::CREATED, Json(group)))
}

/// Get one VM group.
#[utoipa::path(get, path = "/v1/groups/{id}", tag = "groups", params(("id" = i64, Path)),
    responses((status = 200, body = Group), ErrorResponses))]
pub async fn get_group(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> Result<Json<Group>, ApiError> {
    Ok(Json(db::groups::get(&state.pool, id).await?))
}

/// Replace a VM group's name or policy.
#[utoipa::path(put, path = "/v1/groups/{id}", tag = "groups", params(("id" = i64, Path)), request_body = GroupSpec,
    responses((status = 200, body = Group), ErrorResponses))]
pub async fn replace_group(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(spec): ApiJson<GroupSpec>,
) -> Result<Json<Group>, ApiError> {
    Ok(Json(db::groups::update(&state.pool, id, &parse_group(spec)?).await?))
}

/// Delete a VM group; refused (409) while it has members.
#[utoipa::path(delete, path = "/v1/groups/{id}", tag = "groups", params(("id" = i64, Path)),
    responses((status = 204), ErrorResponses))]
pub async fn delete_group(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> Result<StatusCode, ApiError> {
    db::groups::delete(&state.pool, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
