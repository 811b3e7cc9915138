//! The dispatcher's reads and writes of migration jobs (see
//! `crate::dispatcher`): every job running or waiting with what its path
//! and VM need, the caps and admissions it decides, and expiry. One
//! dispatch at a time, on any replica: each takes a transaction-level
//! advisory lock. It reads the jobs without locking them (a claim, which
//! skips locked rows, must not miss an admitted job because a dispatch
//! is reading), and writes only what changed, each write conditional on
//! the job still being where the dispatch saw it: a job that moved on
//! meanwhile is seen as it is at the next dispatch.

use chrono::{DateTime, Utc};
use heliotrope_api_spec::MigrationState;
use sqlx::{Postgres, Transaction};

use super::migration_jobs::{log, move_to, HOLDS_BANDWIDTH};
use super::{enum_from_text, Result};

/// The advisory lock dispatches take (one at a time, fleet-wide).
const DISPATCH_LOCK: i64 = 0x6865_6c69_6469_7370; // "helidisp"

/// A migration running or waiting, with what the dispatcher needs of it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Job {
    pub job_id: i64,
    #[sqlx(try_from = "String")]
    pub state: JobState,
    /// It holds bandwidth: admitted, or past its claim.
    pub running: bool,
    pub cap_mbps: Option<f64>,
    /// An operator's ceiling.
    pub cap_limit_mbps: Option<f64>,
    pub from_site_id: i64,
    pub to_site_id: i64,
    pub memory_gib: f64,
    pub disk_gib: f64,
    /// The measured dirty rate once the source reported one, else the declared.
    pub dirty_rate_mbps: f64,
    pub max_downtime_ms: i32,
    pub priority: i16,
    /// A move out of a site being evacuated.
    pub evacuation: bool,
    pub uplink_mbps: Option<f64>,
    pub downlink_mbps: Option<f64>,
    /// Its link's bandwidth and background reserve; none if the link is gone.
    pub link_mbps: Option<f64>,
    pub link_reserve_pct: Option<f64>,
}

/// A job's state, parsed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobState(pub MigrationState);

impl TryFrom<String> for JobState {
    type Error = sqlx::Error;
    fn try_from(text: String) -> std::result::Result<Self, sqlx::Error> {
        enum_from_text(text).map(JobState)
    }
}

/// Starts a dispatch: its transaction, holding the dispatch lock.
pub async fn begin(pool: &sqlx::PgPool) -> Result<Transaction<'static, Postgres>> {
    let mut tx = pool.begin().await?;
    sqlx::query("select pg_advisory_xact_lock($1)").bind(DISPATCH_LOCK).execute(&mut *tx).await?;
    Ok(tx)
}

/// Ends `expired` every job not admitted by its bound; how many.
pub async fn expire(tx: &mut Transaction<'_, Postgres>) -> Result<u64> {
    let due: Vec<(i64, String)> = sqlx::query_as(
        "select job_id, state from migration_job where state in ('pending', 'scheduled') \
         and admitted_at is null and expires_at < now() for update",
    )
    .fetch_all(&mut **tx)
    .await?;
    for (id, state) in &due {
        let from: MigrationState = enum_from_text(state.clone())?;
        let why = "never admitted before its plan's validity ran out: its room is given back";
        move_to(tx, *id, from, MigrationState::Expired, "dispatcher", why).await?;
    }
    Ok(due.len() as u64)
}

/// Every job running or waiting.
pub async fn jobs(tx: &mut Transaction<'_, Postgres>) -> Result<Vec<Job>> {
    Ok(sqlx::query_as(&format!(
        "select j.job_id, j.state, {HOLDS_BANDWIDTH} as running, j.cap_mbps, j.cap_limit_mbps, j.from_site_id, j.to_site_id, \
                v.memory_gib, v.disk_gib, coalesce(v.measured_dirty_rate_mbps, v.dirty_rate_mbps) as dirty_rate_mbps, \
                v.max_downtime_ms, v.priority, j.evacuation, \
                f.uplink_mbps, t.downlink_mbps, l.bandwidth_mbps as link_mbps, \
                l.background_reserve_pct as link_reserve_pct \
         from migration_job j join vm v on v.vm_id = j.vm_id \
         join site f on f.site_id = j.from_site_id join site t on t.site_id = j.to_site_id \
         left join link l on l.from_site_id = j.from_site_id and l.to_site_id = j.to_site_id \
         where j.state in ('pending', 'scheduled', 'claimed', 'transferring', 'cutover', 'recovering') \
         order by j.job_id"
    ))
    .fetch_all(&mut **tx)
    .await?)
}

/// Gives running job `id` a new cap, and records it.
pub async fn set_cap(tx: &mut Transaction<'_, Postgres>, id: i64, cap_mbps: f64) -> Result<()> {
    let set = sqlx::query(
        "update migration_job set cap_mbps = $2 where job_id = $1 \
         and state in ('scheduled', 'claimed', 'transferring', 'cutover', 'recovering')",
    )
    .bind(id)
    .bind(cap_mbps)
    .execute(&mut **tx)
    .await?;
    if set.rows_affected() == 0 {
        return Ok(());
    }
    record_cap(tx, id, cap_mbps).await
}

/// Admits waiting job `id` at `cap_mbps` (none: no link limits it): a claim may take it now.
pub async fn admit(
    tx: &mut Transaction<'_, Postgres>,
    id: i64,
    from: MigrationState,
    cap_mbps: Option<f64>,
    now: DateTime<Utc>,
) -> Result<()> {
    let admitted = sqlx::query(
        "update migration_job set admitted_at = $2, start_at = $2, cap_mbps = coalesce($3, cap_mbps) \
         where job_id = $1 and admitted_at is null and state in ('pending', 'scheduled')",
    )
    .bind(id)
    .bind(now)
    .bind(cap_mbps)
    .execute(&mut **tx)
    .await?;
    if admitted.rows_affected() == 0 {
        return Ok(());
    }
    let detail = match cap_mbps {
        Some(cap) => format!("admitted by the dispatcher at {cap:.1} Mbit/s: its link has room"),
        None => "admitted by the dispatcher: no link limits it".to_owned(),
    };
    if from == MigrationState::Pending {
        move_to(tx, id, from, MigrationState::Scheduled, "dispatcher", &detail).await?;
    } else {
        log(tx, id, "dispatcher", from, from, &detail).await?;
    }
    if let Some(cap) = cap_mbps {
        record_cap(tx, id, cap).await?;
    }
    Ok(())
}

/// Records the cap job `id` has from now on.
pub(super) async fn record_cap(tx: &mut Transaction<'_, Postgres>, id: i64, cap_mbps: f64) -> Result<()> {
    sqlx::query("insert into migration_cap (job_id, cap_mbps) values ($1, $2)")
        .bind(id)
        .bind(cap_mbps)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
