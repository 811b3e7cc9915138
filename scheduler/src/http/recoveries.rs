//! Disaster recovery: failing a site (its VMs restart at their standbys
//! from their replicas, or are listed lost), reading what became of them,
//! and discarding the stale copies a returning site holds.

use axum::routing::{get, post};
use axum::{extract::State, Extension, Json, Router};
use chrono::Utc;
use heliotrope_api_spec::{SiteFailure, SiteRecovery, VmRecovery};

use super::auth::Principal;
use super::error::{ApiError, ErrorResponses};
use super::extract::{ApiJson, ApiPath};
use super::AppState;
use crate::db;
use crate::domain::dispatch::parse_site_failure;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/sites/{id}/fail", post(fail_site))
        .route("/v1/sites/{id}/recovery", get(site_recovery))
        .route("/v1/recoveries/{id}", get(get_recovery))
        .route("/v1/recoveries/{id}/discard", post(discard_copy))
}

/// Declare a site lost: it is marked `down`, its migrations under way end,
/// and each VM there is restarted at its freshest standby with room
/// (highest priority first) from its replica, crash-consistent, once the
/// site's executors are fenced (silent past their lease, or holding their
/// VMs stopped); a VM with no usable replica is listed lost, with why.
/// Failing a site that is down already answers what its failure became;
/// with `dry_run` nothing changes and the answer is a prediction.
#[utoipa::path(post, path = "/v1/sites/{id}/fail", tag = "recovery", params(("id" = i64, Path)),
    request_body = SiteFailure, responses((status = 200, body = SiteRecovery), ErrorResponses))]
pub async fn fail_site(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(failure): ApiJson<SiteFailure>,
) -> Result<Json<SiteRecovery>, ApiError> {
    let failure = parse_site_failure(failure)?;
    Ok(Json(db::recoveries::fail_site(&state.pool, id, &failure, &caller.actor(), Utc::now()).await?))
}

/// A lost site's recovery: each VM that ran there when it failed, where it
/// restarts and from how fresh a replica, or why it is lost (empty while
/// the site is not down).
#[utoipa::path(get, path = "/v1/sites/{id}/recovery", tag = "recovery", params(("id" = i64, Path)),
    responses((status = 200, body = SiteRecovery), ErrorResponses))]
pub async fn site_recovery(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<SiteRecovery>, ApiError> {
    Ok(Json(db::recoveries::for_site(&state.pool, id).await?))
}

/// One VM's recovery.
#[utoipa::path(get, path = "/v1/recoveries/{id}", tag = "recovery", params(("id" = i64, Path)),
    responses((status = 200, body = VmRecovery), ErrorResponses))]
pub async fn get_recovery(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<VmRecovery>, ApiError> {
    Ok(Json(db::recoveries::get(&state.pool, id).await?))
}

/// Discard the stale copy the lost site holds of a VM restarted elsewhere:
/// its executor deletes it (until then it is kept, stopped, set aside).
#[utoipa::path(post, path = "/v1/recoveries/{id}/discard", tag = "recovery", params(("id" = i64, Path)),
    responses((status = 200, body = VmRecovery), ErrorResponses))]
pub async fn discard_copy(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<VmRecovery>, ApiError> {
    Ok(Json(db::recoveries::discard(&state.pool, id).await?))
}
