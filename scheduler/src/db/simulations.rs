//! Simulations and their reports. A simulation runs in the replica that
//! accepted it and writes its progress as it goes; one whose runner has
//! been silent for [`SILENT`] reads as failed (its replica stopped).

use chrono::{DateTime, Utc};
use heliotrope_api_spec::{Simulation, SimulationReport, SimulationRequest, SimulationStatus};
use sqlx::types::Json;
use sqlx::PgPool;

use super::{enum_from_text, ListQuery, Result, StoreError};
use crate::domain::page::{Page, PageRequest};
use crate::domain::Valid;

/// How long a running simulation's runner may stay silent.
pub const SILENT: &str = "2 minutes";

/// Why a silent simulation failed.
const INTERRUPTED: &str = "interrupted: the server running it stopped before it finished";

#[derive(sqlx::FromRow)]
struct SimulationRow {
    simulation_id: i64,
    status: String,
    request: Json<SimulationRequest>,
    created_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    progress_hours: i64,
    error: Option<String>,
    report: Option<Json<SimulationReport>>,
}

impl TryFrom<SimulationRow> for Simulation {
    type Error = StoreError;
    fn try_from(r: SimulationRow) -> std::result::Result<Self, StoreError> {
        Ok(Simulation {
            id: r.simulation_id,
            status: enum_from_text::<SimulationStatus>(r.status)?,
            request: r.request.0,
            created_at: r.created_at,
            finished_at: r.finished_at,
            progress_hours: r.progress_hours.unsigned_abs(),
            error: r.error,
            report: r.report.map(|r| r.0),
        })
    }
}

/// The columns as served: a silent running simulation reads as failed.
fn columns(report: &str) -> String {
    format!(
        "select simulation_id, \
         case when status = 'running' and updated_at < now() - interval '{SILENT}' then 'failed' else status end \
         as status, request, created_at, finished_at, progress_hours, \
         case when status = 'running' and updated_at < now() - interval '{SILENT}' then '{INTERRUPTED}' \
         else error end as error, {report} from simulation"
    )
}

pub async fn insert(pool: &PgPool, request: &Valid<SimulationRequest>) -> Result<Simulation> {
    let id: i64 = sqlx::query_scalar("insert into simulation (request) values ($1) returning simulation_id")
        .bind(Json(&**request))
        .fetch_one(pool)
        .await?;
    get(pool, id).await
}

pub async fn get(pool: &PgPool, id: i64) -> Result<Simulation> {
    let row: Option<SimulationRow> = sqlx::query_as(&format!("{} where simulation_id = $1", columns("report")))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.ok_or_else(|| StoreError::NotFound(format!("simulation {id}")))?.try_into()
}

/// Simulations without their reports, oldest first.
pub async fn list(pool: &PgPool, page: PageRequest) -> Result<Page<Simulation>> {
    let rows: Vec<SimulationRow> =
        ListQuery::new(&columns("null::jsonb as report"), "simulation_id", page).fetch(pool).await?;
    let items = rows.into_iter().map(Simulation::try_from).collect::<Result<Vec<_>>>()?;
    Ok(page.page(items, |s| s.id))
}

/// Records progress (and that the runner is alive).
pub async fn progress(pool: &PgPool, id: i64, hours: u64) -> Result<()> {
    sqlx::query(
        "update simulation set progress_hours = $2, updated_at = now() where simulation_id = $1 and status = 'running'",
    )
    .bind(id)
    .bind(i64::try_from(hours).unwrap_or(i64::MAX))
    .execute(pool)
    .await?;
    Ok(())
}

/// Ends a running simulation with its report or why it failed.
pub async fn finish(pool: &PgPool, id: i64, outcome: std::result::Result<&SimulationReport, &str>) -> Result<()> {
    let (status, report, error) = match outcome {
        Ok(report) => ("done", Some(Json(report)), None),
        Err(why) => ("failed", None, Some(why)),
    };
    sqlx::query(
        "update simulation set status = $2, report = $3, error = $4, finished_at = now(), updated_at = now() \
         where simulation_id = $1 and status = 'running'",
    )
    .bind(id)
    .bind(status)
    .bind(report)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}
