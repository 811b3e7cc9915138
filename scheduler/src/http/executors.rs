//! `/v1/executors`: the workers at each site (read-only; they register
//! themselves once dispatch exists).

use axum::routing::get;
use axum::{extract::State, Json, Router};
use heliotrope_api_spec::{Executor, ExecutorFilter, ExecutorPage, PageParams};

use super::error::{ApiError, ErrorResponses};
use super::extract::{ApiPath, ApiQuery};
use super::AppState;
use crate::db;
use crate::domain::inventory::check_filter_names;
use crate::domain::page::PageRequest;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/executors", get(list_executors)).route("/v1/executors/{id}", get(get_executor))
}

/// List executors.
#[utoipa::path(get, path = "/v1/executors", tag = "executors", params(PageParams, ExecutorFilter),
    responses((status = 200, body = ExecutorPage), ErrorResponses))]
pub async fn list_executors(
    State(state): State<AppState>,
    ApiQuery(page): ApiQuery<PageParams>,
    ApiQuery(filter): ApiQuery<ExecutorFilter>,
) -> Result<Json<ExecutorPage>, ApiError> {
    check_filter_names(&[("site", filter.site.as_deref())])?;
    let page = db::executors::list(&state.pool, PageRequest::parse(&page)?, &filter).await?;
    Ok(Json(ExecutorPage { items: page.items, next_cursor: page.next_cursor }))
}

/// Get one executor.
#[utoipa::path(get, path = "/v1/executors/{id}", tag = "executors", params(("id" = i64, Path)),
    responses((status = 200, body = Executor), ErrorResponses))]
pub async fn get_executor(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Executor>, ApiError> {
    Ok(Json(db::executors::get(&state.pool, id).await?))
}
