//! Migrations (table `migration_job`): one per move of an applied plan,
//! with the log of every change of its state. A change of state and its
//! event are written in one transaction, under a lock on the row, and only
//! if the state machine (`domain::migration`) allows it.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use heliotrope_api_spec::{Migration, MigrationDetail, MigrationEvent, MigrationFilter, MigrationState};
use sqlx::{PgExecutor, PgPool, Postgres, Transaction};

use super::{enum_from_text, enum_to_text, ListQuery, Result, StoreError};
use crate::domain::migration::can_move;
use crate::domain::page::{Page, PageRequest};

/// SQL: a migration not yet ended (see `domain::migration::is_active`).
pub(crate) const ACTIVE: &str = "state not in ('done', 'failed', 'cancelled', 'rolled_back')";

/// Per VM id: migrations created since `since`, and whether one is still under way.
pub async fn recent(db: impl PgExecutor<'_>, since: DateTime<Utc>) -> Result<HashMap<i64, (u32, bool)>> {
    let rows: Vec<(i64, i64, bool)> = sqlx::query_as(&format!(
        "select vm_id, count(*) filter (where created_at >= $1), bool_or({ACTIVE}) from migration_job \
         where created_at >= $1 or {ACTIVE} group by vm_id"
    ))
    .bind(since)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|(vm, count, open)| (vm, (u32::try_from(count).unwrap_or(u32::MAX), open))).collect())
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
}

/// Records `migrations` for plan `plan_id`, each with its first event; returns how many.
pub async fn record(tx: &mut Transaction<'_, Postgres>, plan_id: i64, migrations: &[NewMigration]) -> Result<u64> {
    let column = |f: fn(&NewMigration) -> i64| migrations.iter().map(f).collect::<Vec<i64>>();
    let bytes: Vec<f64> = migrations.iter().map(|m| m.predicted_bytes).collect();
    let start: Vec<Option<DateTime<Utc>>> = migrations.iter().map(|m| m.start_at).collect();
    let cap: Vec<Option<f64>> = migrations.iter().map(|m| m.cap_mbps).collect();
    let done = sqlx::query(
        "with recorded as ( \
           insert into migration_job (plan_id, vm_id, from_site_id, to_site_id, predicted_bytes, start_at, cap_mbps, state) \
           select $1, vm, f, t, b, s, c, case when s is null then 'pending' else 'scheduled' end \
           from unnest($2::bigint[], $3::bigint[], $4::bigint[], $5::float8[], $6::timestamptz[], $7::float8[]) \
             as m (vm, f, t, b, s, c) \
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
    attempts: i32,
    predicted_bytes: f64,
    failure: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
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
            attempts: u32::try_from(r.attempts).unwrap_or(0),
            predicted_bytes: r.predicted_bytes,
            failure: r.failure,
            created_at: r.created_at,
            updated_at: r.updated_at,
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
        })
    }
}

const SELECT: &str = "select j.job_id, j.plan_id, v.name as vm, f.name as from_site, t.name as to_site, j.state, \
    j.start_at, j.cap_mbps, j.attempts, j.predicted_bytes, j.failure, j.created_at, j.updated_at \
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
        "select at, actor, from_state, to_state, detail from migration_event where job_id = $1 order by event_id",
    )
    .bind(id)
    .fetch_all(db)
    .await?;
    let events = events.into_iter().map(MigrationEvent::try_from).collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(MigrationDetail { migration, events })
}

/// Moves migration `id` to `to`, as `actor` says and why (`detail`), if
/// the state machine allows it from where it is; logs the event. A
/// migration that ends (not done) keeps `detail` as its failure.
pub async fn transition(
    pool: &PgPool,
    id: i64,
    to: MigrationState,
    actor: &str,
    detail: &str,
) -> Result<MigrationDetail> {
    let mut tx = pool.begin().await?;
    let state: Option<String> = sqlx::query_scalar("select state from migration_job where job_id = $1 for update")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let from: MigrationState = enum_from_text(state.ok_or_else(|| StoreError::NotFound(format!("migration {id}")))?)?;
    if !can_move(from, to) {
        return Err(StoreError::Conflict(format!(
            "migration {id} is {}: it cannot become {}",
            enum_to_text(&from),
            enum_to_text(&to)
        )));
    }
    let failure = matches!(to, MigrationState::Failed | MigrationState::Cancelled | MigrationState::RolledBack);
    sqlx::query(
        "update migration_job set state = $2, failure = case when $3 then $4 else failure end where job_id = $1",
    )
    .bind(id)
    .bind(enum_to_text(&to))
    .bind(failure)
    .bind(detail)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "insert into migration_event (job_id, actor, from_state, to_state, detail) values ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(actor)
    .bind(enum_to_text(&from))
    .bind(enum_to_text(&to))
    .bind(detail)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    get(pool, id).await
}
