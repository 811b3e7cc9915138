//! `/v1/vms`: the virtual machines Heliotrope places and moves.

use axum::http::StatusCode;
use axum::routing::get;
use axum::{extract::State, Json, Router};
use heliotrope_api_spec::{PageParams, Vm, VmFilter, VmPage, VmSpec};

use super::error::{ApiError, ErrorResponses};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::AppState;
use crate::db;
use crate::domain::inventory::check_filter_names;
use crate::domain::inventory::parse_vm;
use crate::domain::page::PageRequest;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/vms", get(list_vms).post(create_vm))
        .route("/v1/vms/{id}", get(get_vm).put(replace_vm).delete(delete_vm))
}

/// List VMs.
#[utoipa::path(get, path = "/v1/vms", tag = "vms", params(PageParams, VmFilter),
    responses((status = 200, body = VmPage), ErrorResponses))]
pub async fn list_vms(
    State(state): State<AppState>,
    ApiQuery(page): ApiQuery<PageParams>,
    ApiQuery(filter): ApiQuery<VmFilter>,
) -> Result<Json<VmPage>, ApiError> {
    check_filter_names(&[("site", filter.site.as_deref()), ("group", filter.group.as_deref())])?;
    let page = db::vms::list(&state.pool, PageRequest::parse(&page)?, &filter).await?;
    Ok(Json(VmPage { items: page.items, next_cursor: page.next_cursor }))
}

/// Create a VM.
#[utoipa::path(post, path = "/v1/vms", tag = "vms", request_body = VmSpec,
    responses((status = 201, body = Vm), ErrorResponses))]
pub async fn create_vm(
    State(state): State<AppState>,
    ApiJson(spec): ApiJson<VmSpec>,
) -> Result<(StatusCode, Json<Vm>), ApiError> {
    let vm = db::vms::insert(&state.pool, &parse_vm(spec)?).await?;
    Ok((StatusCode::CREATED, Json(vm)))
}

/// Get one VM.
#[utoipa::path(get, path = "/v1/vms/{id}", tag = "vms", params(("id" = i64, Path)),
    responses((status = 200, body = Vm), ErrorResponses))]
pub async fn get_vm(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> Result<Json<Vm>, ApiError> {
    Ok(Json(db::vms::get(&state.pool, id).await?))
}

/// Replace a VM's record.
#[utoipa::path(put, path = "/v1/vms/{id}", tag = "vms", params(("id" = i64, Path)), request_body = VmSpec,
    responses((status = 200, body = Vm), ErrorResponses))]
pub async fn replace_vm(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(spec): ApiJson<VmSpec>,
) -> Result<Json<Vm>, ApiError> {
    Ok(Json(db::vms::update(&state.pool, id, &parse_vm(spec)?).await?))
}

/// Delete a VM's record.
#[utoipa::path(delete, path = "/v1/vms/{id}", tag = "vms", params(("id" = i64, Path)),
    responses((status = 204), ErrorResponses))]
pub async fn delete_vm(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> Result<StatusCode, ApiError> {
    db::vms::delete(&state.pool, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
