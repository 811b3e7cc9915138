//! `/v1/sites`: the datacenters of the fleet.

use axum::http::StatusCode;
use axum::routing::get;
use axum::{extract::State, Extension, Json, Router};
use chrono::Utc;
use heliotrope_api_spec::{PageParams, Site, SiteFailure, SiteFilter, SitePage, SiteSpec, SiteState};

use super::auth::Principal;
use super::error::{ApiError, ErrorResponses};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::AppState;
use crate::db;
use crate::domain::dispatch::parse_site_failure;
use crate::domain::inventory::check_filter_names;
use crate::domain::inventory::parse_site;
use crate::domain::page::PageRequest;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/sites", get(list_sites).post(create_site))
        .route("/v1/sites/{id}", get(get_site).put(replace_site).delete(delete_site))
}

/// List sites.
#[utoipa::path(get, path = "/v1/sites", tag = "sites", params(PageParams, SiteFilter),
    responses((status = 200, body = SitePage), ErrorResponses))]
pub async fn list_sites(
    State(state): State<AppState>,
    ApiQuery(page): ApiQuery<PageParams>,
    ApiQuery(filter): ApiQuery<SiteFilter>,
) -> Result<Json<SitePage>, ApiError> {
    check_filter_names(&[("region", filter.region.as_deref())])?;
    let page = db::sites::list(&state.pool, PageRequest::parse(&page)?, &filter).await?;
    Ok(Json(SitePage { items: page.items, next_cursor: page.next_cursor }))
}

/// Create a site.
#[utoipa::path(post, path = "/v1/sites", tag = "sites", request_body = SiteSpec,
    responses((status = 201, body = Site), ErrorResponses))]
pub async fn create_site(
    State(state): State<AppState>,
    ApiJson(spec): ApiJson<SiteSpec>,
) -> Result<(StatusCode, Json<Site>), ApiError> {
    let site = db::sites::insert(&state.pool, &parse_site(spec)?).await?;
    Ok((StatusCode::CREATED, Json(site)))
}

/// Get one site.
#[utoipa::path(get, path = "/v1/sites/{id}", tag = "sites", params(("id" = i64, Path)),
    responses((status = 200, body = Site), ErrorResponses))]
pub async fn get_site(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> Result<Json<Site>, ApiError> {
    Ok(Json(db::sites::get(&state.pool, id).await?))
}

/// Replace a site. Setting its state to `down` fails it, as `POST
/// /v1/sites/{id}/fail` does: its VMs restart at their standbys.
#[utoipa::path(put, path = "/v1/sites/{id}", tag = "sites", params(("id" = i64, Path)), request_body = SiteSpec,
    responses((status = 200, body = Site), ErrorResponses))]
pub async fn replace_site(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(spec): ApiJson<SiteSpec>,
) -> Result<Json<Site>, ApiError> {
    let spec = parse_site(spec)?;
    let before = db::sites::get(&state.pool, id).await?;
    let site = db::sites::update(&state.pool, id, &spec).await?;
    if site.spec.state == SiteState::Down && before.spec.state != SiteState::Down {
        let failure = parse_site_failure(SiteFailure { dry_run: false, reason: "its state was set to down".into() })?;
        db::recoveries::fail_site(&state.pool, id, &failure, &caller.actor(), Utc::now()).await?;
        return Ok(Json(db::sites::get(&state.pool, id).await?));
    }
    Ok(Json(site))
}

/// Delete a site and its links; refused (409) while VMs or executors use it.
#[utoipa::path(delete, path = "/v1/sites/{id}", tag = "sites", params(("id" = i64, Path)),
    responses((status = 204), ErrorResponses))]
pub async fn delete_site(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> Result<StatusCode, ApiError> {
    db::sites::delete(&state.pool, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
