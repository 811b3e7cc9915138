//! Migrations (table `migration_job`): one per move of an applied plan,
//! with the log of every change of its state. A change of state and its
//! event are written in one transaction, under a lock on the row, and only
//! if the state machine (`domain::migration`) allows it.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use heliotrope_api_spec::{
    Migration, MigrationDetail, MigrationEvent, MigrationFilter, MigrationState, NetworkReport, ProgressReport,
};
use sqlx::{PgExecutor, PgPool, Postgres, Transaction};

use super::{enum_from_text, enum_to_text, ListQuery, Result, StoreError};
use crate::domain::migration::{can_move, is_active};
use crate::domain::page::{Page, PageRequest};

/// SQL: a migration not yet ended (see `domain::migration::is_active`).
pub(crate) const ACTIVE: &str = "state not in ('done', 'failed', 'cancelled', 'rolled_back', 'expired')";

/// Per VM id: migrations created since `since`.
pub async fn recent(db: impl PgExecutor<'_>, since: DateTime<Utc>) -> Result<HashMap<i64, u32>> {
    let rows: Vec<(i64, i64)> =
        sqlx::query_as("select vm_id, count(*) from migration_job where created_at >= $1 group by vm_id")
            .bind(since)
            .fetch_all(db)
            .await?;
    Ok(rows.into_iter().map(|(vm, count)| (vm, u32::try_from(count).unwrap_or(u32::MAX))).collect())
}

/// A VM leaving a site: a migration of it from there that is done.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Departure {
    pub vm_id: i64,
    pub site_id: i64,
    pub left_at: DateTime<Utc>,
}

/// The departures since `since`, a row per move, oldest first.
pub async fn departures(db: impl PgExecutor<'_>, since: DateTime<Utc>) -> Result<Vec<Departure>> {
    Ok(sqlx::query_as(
        "select vm_id, from_site_id as site_id, updated_at as left_at from migration_job \
         where state = 'done' and updated_at >= $1 order by job_id",
    )
    .bind(since)
    .fetch_all(db)
    .await?)
}

/// A migration under way, as a plan's schedule must count it: its VM,
/// whether it holds bandwidth now (admitted or past its claim) and at what
/// cap (Mbit/s), and the bytes it has put on the wire and predicted.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UnderWay {
    pub vm_id: i64,
    pub to_site_id: i64,
    pub running: bool,
    pub cap_mbps: Option<f64>,
    pub sent_bytes: f64,
    pub predicted_bytes: f64,
}

/// Whether a job holds bandwidth on its link: admitted, or past its claim
/// (SQL over `migration_job j`).
pub(super) const HOLDS_BANDWIDTH: &str =
    "(j.admitted_at is not null or j.state in ('claimed', 'transferring', 'cutover', 'recovering'))";

/// Every migration under way.
pub async fn under_way(db: impl PgExecutor<'_>) -> Result<Vec<UnderWay>> {
    Ok(sqlx::query_as(&format!(
        "select vm_id, to_site_id, \
                {HOLDS_BANDWIDTH} as running, \
                cap_mbps, coalesce((progress->>'wire_bytes')::float8, 0) as sent_bytes, predicted_bytes \
         from migration_job j where {ACTIVE} order by job_id"
    ))
    .fetch_all(db)
    .await?)
}

/// A move to record: VM, source and destination site ids, predicted
/// bytes, and when the plan's schedule starts it and at what cap (none:
/// the schedule could not start it, and it waits `pending`).
pub struct NewMigration {
    pub vm_id: i64,
    pub from_site_id: i64,
    pub to_site_id: i64,
    pub predicted_bytes: f64,
    pub start_at: Option<DateTime<Utc>>,
    pub cap_mbps: Option<f64>,
    /// Not admitted by then, it expires (none: it waits as long as it takes).
    pub expires_at: Option<DateTime<Utc>>,
    /// Out of a site being evacuated: it goes before other moves.
    pub evacuation: bool,
}

/// Records `migrations` for plan `plan_id`, each with its first event; returns how many.
pub async fn record(tx: &mut Transaction<'_, Postgres>, plan_id: i64, migrations: &[NewMigration]) -> Result<u64> {
    let column = |f: fn(&NewMigration) -> i64| migrations.iter().map(f).collect::<Vec<i64>>();
    let bytes: Vec<f64> = migrations.iter().map(|m| m.predicted_bytes).collect();
    let start: Vec<Option<DateTime<Utc>>> = migrations.iter().map(|m| m.start_at).collect();
    let cap: Vec<Option<f64>> = migrations.iter().map(|m| m.cap_mbps).collect();
    let expires: Vec<Option<DateTime<Utc>>> = migrations.iter().map(|m| m.expires_at).collect();
    let evacuation: Vec<bool> = migrations.iter().map(|m| m.evacuation).collect();
    let done = sqlx::query(
        "with recorded as ( \
           insert into migration_job (plan_id, vm_id, from_site_id, to_site_id, predicted_bytes, start_at, cap_mbps, \
                                      expires_at, evacuation, state) \
           select $1, vm, f, t, b, s, c, e, x, case when s is null then 'pending' else 'scheduled' end \
           from unnest($2::bigint[], $3::bigint[], $4::bigint[], $5::float8[], $6::timestamptz[], $7::float8[], \
                       $8::timestamptz[], $9::bool[]) as m (vm, f, t, b, s, c, e, x) \
           on conflict (plan_id, vm_id) do nothing \
           returning job_id, state) \
         insert into migration_event (job_id, actor, to_state, detail) \
         select job_id, 'scheduler', state, format('plan %s applied', $1::bigint) from recorded",
    )
    .bind(plan_id)
    .bind(column(|m| m.vm_id))
    .bind(column(|m| m.from_site_id))
    .bind(column(|m| m.to_site_id))
    .bind(&bytes)
    .bind(&start)
    .bind(&cap)
    .bind(&expires)
    .bind(&evacuation)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}

#[derive(sqlx::FromRow)]
struct MigrationRow {
    job_id: i64,
    plan_id: i64,
    vm: String,
    from_site: String,
    to_site: String,
    state: String,
    start_at: Option<DateTime<Utc>>,
    cap_mbps: Option<f64>,
    admitted_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    attempts: i32,
    predicted_bytes: f64,
    failure: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    progress: Option<sqlx::types::Json<ProgressReport>>,
}

impl TryFrom<MigrationRow> for Migration {
    type Error = sqlx::Error;
    fn try_from(r: MigrationRow) -> std::result::Result<Migration, sqlx::Error> {
        Ok(Migration {
            id: r.job_id,
            plan_id: r.plan_id,
            vm: r.vm,
            from: r.from_site,
            to: r.to_site,
            state: enum_from_text(r.state)?,
            start_at: r.start_at,
            cap_mbps: r.cap_mbps,
            admitted_at: r.admitted_at,
            expires_at: r.expires_at,
            attempts: u32::try_from(r.attempts).unwrap_or(0),
            predicted_bytes: r.predicted_bytes,
            failure: r.failure,
            created_at: r.created_at,
            updated_at: r.updated_at,
            progress: r.progress.map(|p| p.0),
        })
    }
}

#[derive(sqlx::FromRow)]
struct EventRow {
    at: DateTime<Utc>,
    actor: String,
    from_state: Option<String>,
    to_state: String,
    detail: String,
    network: Option<sqlx::types::Json<NetworkReport>>,
}

impl TryFrom<EventRow> for MigrationEvent {
    type Error = sqlx::Error;
    fn try_from(r: EventRow) -> std::result::Result<MigrationEvent, sqlx::Error> {
        Ok(MigrationEvent {
            at: r.at,
            actor: r.actor,
            from: r.from_state.map(enum_from_text).transpose()?,
            to: enum_from_text(r.to_state)?,
            detail: r.detail,
            network: r.network.map(|n| n.0),
        })
    }
}

const SELECT: &str = "select j.job_id, j.plan_id, v.name as vm, f.name as from_site, t.name as to_site, j.state, \
    j.start_at, j.cap_mbps, j.admitted_at, j.expires_at, j.attempts, j.predicted_bytes, j.failure, j.created_at, j.updated_at, j.progress \
    from migration_job j join vm v on v.vm_id = j.vm_id \
    join site f on f.site_id = j.from_site_id join site t on t.site_id = j.to_site_id";

pub async fn list(pool: &PgPool, page: PageRequest, filter: &MigrationFilter) -> Result<Page<Migration>> {
    let rows: Vec<MigrationRow> = ListQuery::new(SELECT, "j.job_id", page)
        .filter("j.plan_id", filter.plan)
        .filter("j.state", filter.state.as_ref().map(enum_to_text))
        .filter("v.name", filter.vm.as_deref())
        .filter_either(["f.name", "t.name"], filter.site.as_deref())
        .fetch(pool)
        .await?;
    let migrations = rows.into_iter().map(Migration::try_from).collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(page.page(migrations, |m| m.id))
}

/// A migration with its events, oldest first.
pub async fn get(db: impl PgExecutor<'_> + Copy, id: i64) -> Result<MigrationDetail> {
    let row: Option<MigrationRow> =
        sqlx::query_as(&format!("{SELECT} where j.job_id = $1")).bind(id).fetch_optional(db).await?;
    let migration: Migration = row.ok_or_else(|| StoreError::NotFound(format!("migration {id}")))?.try_into()?;
    let events: Vec<EventRow> = sqlx::query_as(
        "select at, actor, from_state, to_state, detail, network from migration_event where job_id = $1 \
         order by event_id",
    )
    .bind(id)
    .fetch_all(db)
    .await?;
    let events = events.into_iter().map(MigrationEvent::try_from).collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(MigrationDetail { migration, events })
}

/// A migration's row, locked for the transaction that changes it.
#[derive(sqlx::FromRow)]
pub(super) struct Locked {
    pub(super) job_id: i64,
    pub(super) state: String,
    pub(super) vm_id: i64,
    pub(super) from_site_id: i64,
    pub(super) to_site_id: i64,
    pub(super) attempts: i32,
    pub(super) cap_mbps: Option<f64>,
    pub(super) lease_holder: Option<i64>,
    pub(super) destination_executor: Option<i64>,
}

impl Locked {
    /// Only the source executor holding the lease speaks for the migration.
    pub(super) fn held_by(&self, executor_id: i64) -> Result<()> {
        if self.lease_holder == Some(executor_id) {
            Ok(())
        } else {
            Err(StoreError::Conflict(format!("migration {} is not held by executor {executor_id}", self.job_id)))
        }
    }
}

pub(super) async fn lock(tx: &mut Transaction<'_, Postgres>, id: i64) -> Result<(Locked, MigrationState)> {
    let row: Option<Locked> = sqlx::query_as(
        "select job_id, state, vm_id, from_site_id, to_site_id, attempts, cap_mbps, lease_holder, \
         destination_executor from migration_job where job_id = $1 for update",
    )
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    let row = row.ok_or_else(|| StoreError::NotFound(format!("migration {id}")))?;
    let state = enum_from_text(row.state.clone())?;
    Ok((row, state))
}

/// Moves a locked migration from `from` to `to` if the state machine
/// allows it, logging the event; a migration that ends other than done
/// keeps `detail` as its failure, and an ended one lets go of its lease.
pub(super) async fn move_to(
    tx: &mut Transaction<'_, Postgres>,
    id: i64,
    from: MigrationState,
    to: MigrationState,
    actor: &str,
    detail: &str,
) -> Result<()> {
    if !can_move(from, to) {
        return Err(StoreError::Conflict(format!(
            "migration {id} is {}: it cannot become {}",
            enum_to_text(&from),
            enum_to_text(&to)
        )));
    }
    let failure = matches!(
        to,
        MigrationState::Failed | MigrationState::Cancelled | MigrationState::RolledBack | MigrationState::Expired
    );
    sqlx::query(
        "update migration_job set state = $2, failure = case when $3 then $4 else failure end, \
         lease_expires = case when $5 then null else lease_expires end where job_id = $1",
    )
    .bind(id)
    .bind(enum_to_text(&to))
    .bind(failure)
    .bind(detail)
    .bind(!is_active(to))
    .execute(&mut **tx)
    .await?;
    log(tx, id, actor, from, to, detail).await
}

/// Adds an entry to a migration's log (and so to `GET /v1/events`).
pub(super) async fn log(
    tx: &mut Transaction<'_, Postgres>,
    id: i64,
    actor: &str,
    from: MigrationState,
    to: MigrationState,
    detail: &str,
) -> Result<()> {
    sqlx::query(
        "insert into migration_event (job_id, actor, from_state, to_state, detail) values ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(actor)
    .bind(enum_to_text(&from))
    .bind(enum_to_text(&to))
    .bind(detail)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Changes a migration's bandwidth cap (`None` lifts it) while it has not
/// ended; its source picks the cap up with its next progress report. The
/// change is logged (the state stays what it was).
pub async fn set_cap(pool: &PgPool, id: i64, cap_mbps: Option<f64>, actor: &str) -> Result<MigrationDetail> {
    let mut tx = pool.begin().await?;
    let (_, state) = lock(&mut tx, id).await?;
    if !is_active(state) {
        return Err(StoreError::Conflict(format!("migration {id} is {}: it has ended", enum_to_text(&state))));
    }
    // The operator's cap is the cap now, and a ceiling the dispatcher keeps to from then on.
    sqlx::query("update migration_job set cap_limit_mbps = $2, cap_mbps = $2 where job_id = $1")
        .bind(id)
        .bind(cap_mbps)
        .execute(&mut *tx)
        .await?;
    if let Some(cap) = cap_mbps {
        super::admission::record_cap(&mut tx, id, cap).await?;
    }
    let detail = match cap_mbps {
        Some(cap) => format!("cap set to {cap} Mbit/s by {actor}"),
        None => format!("cap lifted by {actor}"),
    };
    log(&mut tx, id, actor, state, state, &detail).await?;
    tx.commit().await?;
    get(pool, id).await
}

/// Moves migration `id` to `to`, as `actor` says and why (`detail`), if
/// the state machine allows it from where it is; logs the event.
pub async fn transition(
    pool: &PgPool,
    id: i64,
    to: MigrationState,
    actor: &str,
    detail: &str,
) -> Result<MigrationDetail> {
    let mut tx = pool.begin().await?;
    let (_, from) = lock(&mut tx, id).await?;
    move_to(&mut tx, id, from, to, actor, detail).await?;
    tx.commit().await?;
    get(pool, id).await
}

/// Per site id: migrations under way into it and out of it.
pub async fn active_by_site(db: impl PgExecutor<'_>) -> Result<HashMap<i64, (u64, u64)>> {
    let rows: Vec<(i64, i64, i64)> = sqlx::query_as(&format!(
        "select site, count(*) filter (where inbound), count(*) filter (where not inbound) from ( \
             select to_site_id as site, true as inbound from migration_job where {ACTIVE} \
             union all select from_site_id, false from migration_job where {ACTIVE}) ends group by site"
    ))
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|(site, into, out)| (site, (into.max(0) as u64, out.max(0) as u64))).collect())
}

/// A migration that finished: VM, source and destination site ids, when,
/// bytes on the wire (its last progress report's), and its link's egress price.
#[derive(Debug, sqlx::FromRow)]
pub struct Finished {
    pub vm_id: i64,
    pub from_site_id: i64,
    pub to_site_id: i64,
    pub done_at: DateTime<Utc>,
    pub wire_bytes: f64,
    pub egress_cost_per_gb: f64,
}

/// For each VM that finished a migration before `at`: the site it left on
/// its first, and the site its last took it to.
pub async fn whereabouts_before(db: impl PgExecutor<'_>, at: DateTime<Utc>) -> Result<Vec<(i64, i64, i64)>> {
    Ok(sqlx::query_as(
        "select distinct on (j.vm_id) j.vm_id, \
                first_value(j.from_site_id) over (partition by j.vm_id order by e.at) as origin, \
                j.to_site_id \
         from migration_job j \
         join migration_event e on e.job_id = j.job_id and e.to_state = 'done' \
           and e.from_state is distinct from 'done' \
         where j.state = 'done' and e.at < $1 order by j.vm_id, e.at desc",
    )
    .bind(at)
    .fetch_all(db)
    .await?)
}

/// Migrations that finished (`done`) between `from` and `to`.
pub async fn finished_between(
    db: impl PgExecutor<'_>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<Finished>> {
    Ok(sqlx::query_as(
        "select j.vm_id, j.from_site_id, j.to_site_id, e.at as done_at, \
                coalesce((j.progress->>'wire_bytes')::float8, j.predicted_bytes) as wire_bytes, \
                coalesce(l.egress_cost_per_gb, 0) as egress_cost_per_gb \
         from migration_job j \
         join migration_event e on e.job_id = j.job_id and e.to_state = 'done' \
           and e.from_state is distinct from 'done' \
         left join link l on l.from_site_id = j.from_site_id and l.to_site_id = j.to_site_id \
         where j.state = 'done' and e.at >= $1 and e.at < $2 order by e.at",
    )
    .bind(from)
    .bind(to)
    .fetch_all(db)
    .await?)
}
