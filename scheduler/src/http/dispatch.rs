//! The executor protocol (executor tokens only): registration and
//! heartbeats, claiming work by long poll, progress reports under a lease,
//! completion, and recovery after a crash. Each executor acts only as
//! itself: the token that registered it.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{extract::State, Extension, Json, Router};
use heliotrope_api_spec::{
    Assignment, ClaimParams, Completion, Executor, ExecutorParam, ExecutorRegistration, Heartbeat, MigrationDetail,
    MigrationState, NetworkReport, ProgressAnswer, ProgressReport, RecoveryReport, ReplicationPlan, ReplicationReport,
    RestartOutcome, VmRecovery,
};

use super::auth::Principal;
use super::error::{ApiError, ErrorResponses};
use super::extract::{ApiJson, ApiJsonOrEmpty, ApiPath, ApiQuery};
use super::AppState;
use crate::db;
use crate::domain::dispatch::{
    parse_completion, parse_heartbeat, parse_network_report, parse_progress, parse_registration,
    parse_replication_report, parse_restart_outcome, MAX_CLAIM_WAIT_S,
};
use crate::domain::ValidationError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/executors/register", post(register_executor))
        .route("/v1/executors/{id}/heartbeat", post(heartbeat))
        .route("/v1/executors/{id}/claim", post(claim))
        .route("/v1/migrations/{id}/progress", post(report_progress))
        .route("/v1/migrations/{id}/complete", post(complete_migration))
        .route("/v1/migrations/{id}/recover", post(recover_migration))
        .route("/v1/migrations/{id}/network", post(report_network))
        .route("/v1/executors/{id}/replication", post(replication))
        .route("/v1/recoveries/{id}/outcome", post(restart_outcome))
}

/// Say how a restart of a lost site's VM went, as the standby's executor
/// it was handed to: `running` (from its replica) or `failed`.
#[utoipa::path(post, path = "/v1/recoveries/{id}/outcome", tag = "dispatch", params(("id" = i64, Path), ExecutorParam),
    request_body = RestartOutcome, responses((status = 200, body = VmRecovery), ErrorResponses))]
pub async fn restart_outcome(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(executor): ApiQuery<ExecutorParam>,
    ApiJson(outcome): ApiJson<RestartOutcome>,
) -> Result<Json<VmRecovery>, ApiError> {
    let outcome = parse_restart_outcome(outcome)?;
    Ok(Json(db::recoveries::record_outcome(&state.pool, id, executor.executor, caller.token_id, &outcome).await?))
}

/// Report the freshness of the replicas this executor sends (and the VMs
/// it runs, whether it holds them stopped, the stale copies it
/// quarantines), and hear what it replicates and keeps now: the disks of
/// the VMs it keeps at its site, to their standby sites; the replicas its
/// site keeps for VMs elsewhere (any other replica there may be dropped);
/// the lost site's VMs it restarts from them; whether its own site is
/// down (every VM stays stopped), and which of its VMs were restarted
/// elsewhere (their copies here never run again). Also a heartbeat.
#[utoipa::path(post, path = "/v1/executors/{id}/replication", tag = "dispatch", params(("id" = i64, Path)),
    request_body = ReplicationReport, responses((status = 200, body = ReplicationPlan), ErrorResponses))]
pub async fn replication(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(report): ApiJson<ReplicationReport>,
) -> Result<Json<ReplicationPlan>, ApiError> {
    let report = parse_replication_report(report, chrono::Utc::now())?;
    db::standbys::record(&state.pool, id, caller.token_id, &report).await?;
    let planner = &state.planner;
    let plan = db::standbys::plan_for(
        &state.pool,
        id,
        caller.token_id,
        planner.replication_share,
        planner.replication_interval_s,
    )
    .await?;
    Ok(Json(plan))
}

/// Register this executor (or again, after a restart, from the same site
/// and address): it is online, and this token speaks for it.
#[utoipa::path(post, path = "/v1/executors/register", tag = "dispatch", request_body = ExecutorRegistration,
    responses((status = 200, body = Executor), ErrorResponses))]
pub async fn register_executor(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    ApiJson(registration): ApiJson<ExecutorRegistration>,
) -> Result<Json<Executor>, ApiError> {
    let registration = parse_registration(registration)?;
    Ok(Json(db::executors::register(&state.pool, caller.token_id, &registration).await?))
}

/// The executor is alive, and its transfer listener as healthy as it says
/// (the body may be left out: the last report stands).
#[utoipa::path(post, path = "/v1/executors/{id}/heartbeat", tag = "dispatch", params(("id" = i64, Path)),
    request_body(content = Option<Heartbeat>), responses((status = 204), ErrorResponses))]
pub async fn heartbeat(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    ApiPath(id): ApiPath<i64>,
    ApiJsonOrEmpty(heartbeat): ApiJsonOrEmpty<Heartbeat>,
) -> Result<StatusCode, ApiError> {
    let heartbeat = parse_heartbeat(heartbeat)?;
    db::executors::heartbeat(&state.pool, id, caller.token_id, &heartbeat).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Claim work: this executor's side of a migration it is the destination
/// of, or a scheduled migration from its site whose start time has come
/// (at most `capacity` at once). Waits up to `wait_s` for one; 204 if none.
#[utoipa::path(post, path = "/v1/executors/{id}/claim", tag = "dispatch", params(("id" = i64, Path), ClaimParams),
    responses((status = 200, body = Assignment), (status = 204, description = "Nothing to do yet"), ErrorResponses))]
pub async fn claim(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(params): ApiQuery<ClaimParams>,
) -> Result<Response, ApiError> {
    let wait_s = params.wait_s.unwrap_or(0);
    if wait_s > MAX_CLAIM_WAIT_S {
        let message = format!("must be at most {MAX_CLAIM_WAIT_S}, got {wait_s}");
        return Err(ValidationError::new("wait_s", message).into());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(u64::from(wait_s));
    // Once per claim, not per poll: the server's own sweep runs every few seconds too.
    db::dispatch::expire_leases(&state.pool).await?;
    loop {
        if let Some(assignment) = db::dispatch::claim(&state.pool, id, caller.token_id).await? {
            return Ok(Json(assignment).into_response());
        }
        // A server that is stopping answers at once, so that its shutdown does not wait out the long polls.
        if tokio::time::Instant::now() >= deadline || state.stopping.is_cancelled() {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = state.stopping.cancelled() => {}
        }
    }
}

/// Report a migration's progress as its source executor (`executor`, one
/// this token registered). Extends the lease; moves the migration to
/// `transferring` or `cutover` when `state` says so; answers with the cap
/// to send at and whether it was cancelled.
#[utoipa::path(post, path = "/v1/migrations/{id}/progress", tag = "dispatch", params(("id" = i64, Path), ExecutorParam),
    request_body = ProgressReport, responses((status = 200, body = ProgressAnswer), ErrorResponses))]
pub async fn report_progress(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(executor): ApiQuery<ExecutorParam>,
    ApiJson(report): ApiJson<ProgressReport>,
) -> Result<Json<ProgressAnswer>, ApiError> {
    let report = parse_progress(report)?;
    Ok(Json(db::dispatch::progress(&state.pool, id, executor.executor, caller.token_id, &report).await?))
}

/// End a migration: `done` from its destination executor once the VM runs
/// there after cutover (the VM's site changes in the same transaction), or
/// `failed` from its source executor before cutover (the VM runs on at the
/// source; refused with 503 by a server that is shutting down).
#[utoipa::path(post, path = "/v1/migrations/{id}/complete", tag = "dispatch", params(("id" = i64, Path), ExecutorParam),
    request_body = Completion, responses((status = 200, body = MigrationDetail), ErrorResponses))]
pub async fn complete_migration(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(executor): ApiQuery<ExecutorParam>,
    ApiJson(completion): ApiJson<Completion>,
) -> Result<Json<MigrationDetail>, ApiError> {
    let completion = parse_completion(completion)?;
    // A server shutting down may have dropped the source's last progress reports, which is
    // why it failed: its word waits for a server that stays, and the lease and recovery, which
    // ask the source where the VM runs, settle the migration meanwhile.
    if completion.state == MigrationState::Failed && state.stopping.is_cancelled() {
        return Err(ApiError::Unavailable);
    }
    let detail = db::dispatch::complete(&state.pool, id, executor.executor, caller.token_id, &completion).await?;
    // What it held is free: the next migration on its link need not wait for the dispatcher's turn.
    crate::dispatcher::dispatch_now(&state.pool, &state.planner).await;
    Ok(Json(detail))
}

/// Say where a `recovering` migration's VM runs, as an executor at its
/// source site back from a crash: at the destination it is done; at the
/// source it is scheduled again, or rolled back once its attempts are spent.
#[utoipa::path(post, path = "/v1/migrations/{id}/recover", tag = "dispatch", params(("id" = i64, Path), ExecutorParam),
    request_body = RecoveryReport, responses((status = 200, body = MigrationDetail), ErrorResponses))]
pub async fn recover_migration(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(executor): ApiQuery<ExecutorParam>,
    ApiJson(report): ApiJson<RecoveryReport>,
) -> Result<Json<MigrationDetail>, ApiError> {
    Ok(Json(db::dispatch::recover(&state.pool, id, executor.executor, caller.token_id, report.runs_at).await?))
}

/// Log a network step after the cutover (forwarding away, routing here,
/// announcing, taking back, releasing), as either executor of the
/// migration: its driver, duration and outcome join the migration's events.
#[utoipa::path(post, path = "/v1/migrations/{id}/network", tag = "dispatch", params(("id" = i64, Path), ExecutorParam),
    request_body = NetworkReport, responses((status = 200, body = MigrationDetail), ErrorResponses))]
pub async fn report_network(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(executor): ApiQuery<ExecutorParam>,
    ApiJson(report): ApiJson<NetworkReport>,
) -> Result<Json<MigrationDetail>, ApiError> {
    let report = parse_network_report(report)?;
    let logged = db::dispatch::record_network(&state.pool, id, executor.executor, caller.token_id, &report).await?;
    state.metrics.network_step(&report);
    Ok(Json(logged))
}
