//! Plans and their lifecycle: proposed plans supersede older waiting ones,
//! approval and application are guarded transitions, and applying records
//! one migration job per move after checking the moves still hold.

use chrono::{DateTime, Utc};
use heliotrope_api_spec::{
    Plan, PlanCosts, PlanFilter, PlanInputs, PlanRequest, PlanSchedule, PlanStatus, PlanSummary, PlannedMove,
    SignalCoverage, SolverReport,
};
use sqlx::types::Json;
use sqlx::{PgExecutor, PgPool};

use super::migration_jobs::{self, NewMigration, ACTIVE};
use super::{enum_from_text, enum_to_text, ListQuery, Result, StoreError};
use crate::domain::page::{Page, PageRequest};

/// A plan to store, as made.
pub struct NewPlan {
    pub request: PlanRequest,
    pub horizon_start: DateTime<Utc>,
    pub currency: String,
    pub inputs: PlanInputs,
    pub objective: PlanCosts,
    pub baseline: PlanCosts,
    pub moves: Vec<PlannedMove>,
    pub solver: SolverReport,
    pub signals: Vec<SignalCoverage>,
    pub schedule: PlanSchedule,
}

#[derive(sqlx::FromRow)]
struct PlanRow {
    plan_id: i64,
    created_at: DateTime<Utc>,
    status: String,
    status_changed_at: DateTime<Utc>,
    request: Json<PlanRequest>,
    horizon_start: DateTime<Utc>,
    currency: String,
    inputs: Json<PlanInputs>,
    objective: Json<PlanCosts>,
    baseline: Json<PlanCosts>,
    moves: Json<Vec<PlannedMove>>,
    solver: Json<SolverReport>,
    signals: Json<Vec<SignalCoverage>>,
    failure: Option<String>,
}

impl TryFrom<PlanRow> for Plan {
    type Error = sqlx::Error;
    fn try_from(r: PlanRow) -> std::result::Result<Plan, sqlx::Error> {
        Ok(Plan {
            id: r.plan_id,
            created_at: r.created_at,
            status: enum_from_text(r.status)?,
            status_changed_at: r.status_changed_at,
            request: r.request.0,
            horizon_start: r.horizon_start,
            currency: r.currency,
            inputs: r.inputs.0,
            objective: r.objective.0,
            baseline: r.baseline.0,
            moves: r.moves.0,
            solver: r.solver.0,
            signals: r.signals.0,
            failure: r.failure,
        })
    }
}

#[derive(sqlx::FromRow)]
struct SummaryRow {
    plan_id: i64,
    created_at: DateTime<Utc>,
    status: String,
    status_changed_at: DateTime<Utc>,
    request: Json<PlanRequest>,
    horizon_start: DateTime<Utc>,
    currency: String,
    objective: Json<PlanCosts>,
    baseline: Json<PlanCosts>,
    move_count: i32,
    solver: Json<SolverReport>,
    failure: Option<String>,
}

impl TryFrom<SummaryRow> for PlanSummary {
    type Error = sqlx::Error;
    fn try_from(r: SummaryRow) -> std::result::Result<PlanSummary, sqlx::Error> {
        Ok(PlanSummary {
            id: r.plan_id,
            created_at: r.created_at,
            status: enum_from_text(r.status)?,
            status_changed_at: r.status_changed_at,
            request: r.request.0,
            horizon_start: r.horizon_start,
            currency: r.currency,
            objective: r.objective.0,
            baseline: r.baseline.0,
            move_count: r.move_count.unsigned_abs().into(),
            solver: r.solver.0,
            failure: r.failure,
        })
    }
}

const WAITING: &str = "('proposed', 'approved')";

/// Stores a proposed plan and supersedes every older plan not yet applied.
pub async fn propose(pool: &PgPool, plan: &NewPlan) -> Result<Plan> {
    let mut tx = pool.begin().await?;
    // One proposal at a time, so that the newest always wins.
    sqlx::query("lock table plan in share row exclusive mode").execute(&mut *tx).await?;
    sqlx::query(&format!("update plan set status = 'superseded', status_changed_at = now() where status in {WAITING}"))
        .execute(&mut *tx)
        .await?;
    let id: i64 = sqlx::query_scalar(
        "insert into plan (status, request, horizon_start, currency, inputs, objective, baseline, moves, move_count, \
         solver, signals, schedule) values ('proposed', $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         returning plan_id",
    )
    .bind(Json(&plan.request))
    .bind(plan.horizon_start)
    .bind(&plan.currency)
    .bind(Json(&plan.inputs))
    .bind(Json(&plan.objective))
    .bind(Json(&plan.baseline))
    .bind(Json(&plan.moves))
    .bind(i32::try_from(plan.moves.len()).unwrap_or(i32::MAX))
    .bind(Json(&plan.solver))
    .bind(Json(&plan.signals))
    .bind(Json(&plan.schedule))
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    get(pool, id).await
}

pub async fn get(db: impl PgExecutor<'_>, id: i64) -> Result<Plan> {
    let row: Option<PlanRow> = sqlx::query_as(
        "select plan_id, created_at, status, status_changed_at, request, horizon_start, currency, inputs, objective, \
         baseline, moves, solver, signals, failure from plan where plan_id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await?;
    row.ok_or_else(|| StoreError::NotFound(format!("plan {id}")))?.try_into().map_err(Into::into)
}

/// The schedule of plan `id`'s moves.
pub async fn schedule(pool: &PgPool, id: i64) -> Result<PlanSchedule> {
    let row: Option<Option<Json<PlanSchedule>>> =
        sqlx::query_scalar("select schedule from plan where plan_id = $1").bind(id).fetch_optional(pool).await?;
    match row {
        None => Err(StoreError::NotFound(format!("plan {id}"))),
        Some(None) => Err(StoreError::NotFound(format!("a schedule of plan {id}"))),
        Some(Some(Json(schedule))) => Ok(schedule),
    }
}

pub async fn list(pool: &PgPool, page: PageRequest, filter: &PlanFilter) -> Result<Page<PlanSummary>> {
    let rows: Vec<SummaryRow> = ListQuery::new(
        "select plan_id, created_at, status, status_changed_at, request, horizon_start, currency, objective, \
         baseline, move_count, solver, failure from plan",
        "plan_id",
        page,
    )
    .filter("status", filter.status.as_ref().map(enum_to_text))
    .fetch(pool)
    .await?;
    let plans = rows.into_iter().map(PlanSummary::try_from).collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(page.page(plans, |p| p.id))
}

/// Locks plan `id` for a transition and returns its status.
async fn lock(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, id: i64) -> Result<PlanStatus> {
    let status: Option<String> = sqlx::query_scalar("select status from plan where plan_id = $1 for update")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(enum_from_text(status.ok_or_else(|| StoreError::NotFound(format!("plan {id}")))?)?)
}

async fn set_status(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: i64,
    status: PlanStatus,
    failure: Option<&str>,
) -> Result<()> {
    sqlx::query("update plan set status = $2, status_changed_at = now(), failure = $3 where plan_id = $1")
        .bind(id)
        .bind(enum_to_text(&status))
        .bind(failure)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Approves a proposed plan (approving an approved one changes nothing).
pub async fn approve(pool: &PgPool, id: i64) -> Result<Plan> {
    let mut tx = pool.begin().await?;
    match lock(&mut tx, id).await? {
        PlanStatus::Proposed => set_status(&mut tx, id, PlanStatus::Approved, None).await?,
        PlanStatus::Approved => {}
        other => {
            return Err(StoreError::Conflict(format!(
                "plan {id} is {}: only a proposed plan can be approved",
                enum_to_text(&other)
            )));
        }
    }
    tx.commit().await?;
    get(pool, id).await
}

/// How long past its predicted start (or the plan's applying, for one the
/// schedule could not start) a move stays worth making: the plans that
/// follow, hourly, see the fleet as it is by then.
pub const PLAN_VALIDITY: chrono::Duration = chrono::Duration::hours(1);

/// Applies an approved plan: records a migration per move, scheduled to
/// start when the plan's schedule starts it (from now) at its cap. If the
/// inventory moved on (a VM gone, elsewhere or already moving, a
/// destination gone or not active), the plan fails instead and says why.
pub async fn apply(pool: &PgPool, id: i64) -> Result<(Plan, u64)> {
    let mut tx = pool.begin().await?;
    let status = lock(&mut tx, id).await?;
    if status != PlanStatus::Approved {
        return Err(StoreError::Conflict(format!(
            "plan {id} is {}: only an approved plan can be applied",
            enum_to_text(&status)
        )));
    }
    let (Json(moves), schedule): (Json<Vec<PlannedMove>>, Option<Json<PlanSchedule>>) =
        sqlx::query_as("select moves, schedule from plan where plan_id = $1").bind(id).fetch_one(&mut *tx).await?;
    let now = Utc::now();
    let scheduled: std::collections::HashMap<&str, (Option<DateTime<Utc>>, Option<f64>)> = schedule
        .iter()
        .flat_map(|s| &s.0.migrations)
        .map(|m| {
            let start =
                m.start_s.and_then(|s| chrono::Duration::try_milliseconds((s * 1000.0) as i64)).map(|d| now + d);
            (m.vm.as_str(), (start, m.cap_mbps))
        })
        .collect();
    let names: Vec<&str> = moves.iter().map(|m| m.vm.as_str()).collect();
    let destinations: Vec<&str> = moves.iter().map(|m| m.to.as_str()).collect();
    // Per move, in order: the VM's id and site now, whether it has a
    // migration under way, and the destination's id and state; nulls where gone.
    #[allow(clippy::type_complexity)]
    let rows: Vec<(
        Option<i64>,
        Option<i64>,
        Option<String>,
        Option<String>,
        Option<bool>,
        Option<i64>,
        Option<String>,
    )> = sqlx::query_as(&format!(
        "select v.vm_id, v.site_id, s.name, s.state, \
             exists (select 1 from migration_job j where j.vm_id = v.vm_id and j.{ACTIVE}), \
             d.site_id, d.state \
             from unnest($1::text[], $2::text[]) with ordinality as m (vm, dest, ord) \
             left join vm v on v.name = m.vm left join site s on s.site_id = v.site_id \
             left join site d on d.name = m.dest order by m.ord"
    ))
    .bind(&names)
    .bind(&destinations)
    .fetch_all(&mut *tx)
    .await?;
    let mut jobs = Vec::with_capacity(moves.len());
    let mut stale = None;
    for (m, (vm_id, from_id, at, at_state, moving, to_id, to_state)) in moves.iter().zip(rows) {
        let why = match (vm_id, from_id, to_id) {
            (None, ..) => Some(format!("VM {} no longer exists", m.vm)),
            (_, _, None) => Some(format!("site {} no longer exists", m.to)),
            _ if at.as_deref() != Some(m.from.as_str()) => {
                Some(format!("VM {} is at {}, not {}", m.vm, at.unwrap_or_default(), m.from))
            }
            _ if moving == Some(true) => Some(format!("VM {} already has a migration under way", m.vm)),
            _ if to_state.as_deref() != Some("active") => {
                Some(format!("site {} is {}, not active", m.to, to_state.unwrap_or_default()))
            }
            (Some(vm_id), Some(from_site_id), Some(to_site_id)) => {
                let (start_at, cap_mbps) = scheduled.get(m.vm.as_str()).copied().unwrap_or_default();
                // An evacuee (its site draining) moves however late its turn comes.
                let evacuee = matches!(at_state.as_deref(), Some("draining" | "down"));
                let expires_at = (!evacuee).then(|| start_at.unwrap_or(now) + PLAN_VALIDITY);
                jobs.push(NewMigration {
                    vm_id,
                    from_site_id,
                    to_site_id,
                    predicted_bytes: m.predicted_bytes,
                    start_at,
                    cap_mbps,
                    expires_at,
                    evacuation: evacuee,
                });
                None
            }
            _ => Some(format!("VM {} has no site", m.vm)),
        };
        if why.is_some() {
            stale = why;
            break;
        }
    }
    if let Some(why) = stale {
        let failure = format!("the inventory changed since the plan was made: {why}");
        set_status(&mut tx, id, PlanStatus::Failed, Some(&failure)).await?;
        tx.commit().await?;
        return Err(StoreError::Conflict(format!("plan {id} failed: {failure}")));
    }
    let recorded = migration_jobs::record(&mut tx, id, &jobs).await?;
    set_status(&mut tx, id, PlanStatus::Applied, None).await?;
    tx.commit().await?;
    Ok((get(pool, id).await?, recorded))
}
