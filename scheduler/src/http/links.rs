//! `/v1/links`: directed WAN links between sites.

use axum::http::StatusCode;
use axum::routing::get;
use axum::{extract::State, Json, Router};
use heliotrope_api_spec::{CreatedLinks, Link, LinkFilter, LinkPage, LinkSpec, PageParams};

use super::error::{ApiError, ErrorResponses};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::AppState;
use crate::db;
use crate::domain::inventory::check_filter_names;
use crate::domain::inventory::parse_link;
use crate::domain::page::PageRequest;
use crate::domain::ValidationError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/links", get(list_links).post(create_link))
        .route("/v1/links/{id}", get(get_link).put(replace_link).delete(delete_link))
}

/// List links.
#[utoipa::path(get, path = "/v1/links", tag = "links", params(PageParams, LinkFilter),
    responses((status = 200, body = LinkPage), ErrorResponses))]
pub async fn list_links(
    State(state): State<AppState>,
    ApiQuery(page): ApiQuery<PageParams>,
    ApiQuery(filter): ApiQuery<LinkFilter>,
) -> Result<Json<LinkPage>, ApiError> {
    check_filter_names(&[("from_site", filter.from_site.as_deref()), ("to_site", filter.to_site.as_deref())])?;
    let page = db::links::list(&state.pool, PageRequest::parse(&page)?, &filter).await?;
    Ok(Json(LinkPage { items: page.items, next_cursor: page.next_cursor }))
}

/// Create a link, and its reverse with `symmetric: true`.
#[utoipa::path(post, path = "/v1/links", tag = "links", request_body = LinkSpec,
    responses((status = 201, body = CreatedLinks), ErrorResponses))]
pub async fn create_link(
    State(state): State<AppState>,
    ApiJson(spec): ApiJson<LinkSpec>,
) -> Result<(StatusCode, Json<CreatedLinks>), ApiError> {
    let links = db::links::insert(&state.pool, &parse_link(spec)?).await?;
    Ok((StatusCode::CREATED, Json(CreatedLinks { links })))
}

/// Get one link.
#[utoipa::path(get, path = "/v1/links/{id}", tag = "links", params(("id" = i64, Path)),
    responses((status = 200, body = Link), ErrorResponses))]
pub async fn get_link(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> Result<Json<Link>, ApiError> {
    Ok(Json(db::links::get(&state.pool, id).await?))
}

/// Replace one direction of a link (`symmetric` is for creation only).
#[utoipa::path(put, path = "/v1/links/{id}", tag = "links", params(("id" = i64, Path)), request_body = LinkSpec,
    responses((status = 200, body = Link), ErrorResponses))]
pub async fn replace_link(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(spec): ApiJson<LinkSpec>,
) -> Result<Json<Link>, ApiError> {
    if spec.symmetric {
        return Err(ValidationError::new("symmetric", "applies only when creating a link").into());
    }
    Ok(Json(db::links::update(&state.pool, id, &parse_link(spec)?).await?))
}

/// Delete one direction of a link.
#[utoipa::path(delete, path = "/v1/links/{id}", tag = "links", params(("id" = i64, Path)),
    responses((status = 204), ErrorResponses))]
pub async fn delete_link(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> Result<StatusCode, ApiError> {
    db::links::delete(&state.pool, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
