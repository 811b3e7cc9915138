//! Executors: they register themselves (with an executor token, which then
//! speaks for them alone) and heartbeat; people read them.

use chrono::{DateTime, Utc};
use heliotrope_api_spec::{Executor, ExecutorFilter, ExecutorRegistration, Heartbeat, ListenerHealth};
use sqlx::PgPool;

use super::{enum_from_text, enum_to_text, on_constraint, site_id_by_name, ListQuery, Result, StoreError};
use crate::domain::page::{Page, PageRequest};
use crate::domain::Valid;

/// An executor that has not heartbeat for this long is not handed work.
pub(super) const ONLINE_WITHIN: &str = "interval '60 seconds'";

/// Whether an executor of driver `executor` (SQL) runs VMs of driver `vm`
/// (SQL): its own, and `sim` VMs, which every executor runs.
pub(super) fn runs(vm: &str, executor: &str) -> String {
    format!("({vm} = 'sim' or {vm} = {executor})")
}

#[derive(sqlx::FromRow)]
struct ExecutorRow {
    executor_id: i64,
    site: String,
    address: String,
    last_heartbeat: Option<DateTime<Utc>>,
    state: String,
    driver: String,
    capacity: i32,
    tunnel_address: Option<String>,
    listener: Option<sqlx::types::Json<ListenerHealth>>,
    running_vms: Vec<String>,
    fenced_since: Option<DateTime<Utc>>,
}

impl TryFrom<ExecutorRow> for Executor {
    type Error = sqlx::Error;
    fn try_from(r: ExecutorRow) -> std::result::Result<Executor, sqlx::Error> {
        Ok(Executor {
            id: r.executor_id,
            site: r.site,
            address: r.address,
            last_heartbeat: r.last_heartbeat,
            state: enum_from_text(r.state)?,
            driver: enum_from_text(r.driver)?,
            capacity: u32::try_from(r.capacity).unwrap_or(1),
            tunnel_address: r.tunnel_address,
            listener: r.listener.map(|l| l.0),
            running: r.running_vms,
            fenced_since: r.fenced_since,
        })
    }
}

const SELECT: &str = "select e.executor_id, s.name as site, e.address, e.last_heartbeat, e.state, e.driver, \
    e.capacity, e.tunnel_address, e.listener, e.running_vms, e.fenced_since from executor e join site s on s.site_id = e.site_id";

pub async fn get(pool: &PgPool, id: i64) -> Result<Executor> {
    let sql = format!("{SELECT} where e.executor_id = $1");
    let row: Option<ExecutorRow> = sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?;
    row.ok_or_else(|| StoreError::NotFound(format!("executor {id}")))?.try_into().map_err(Into::into)
}

pub async fn list(pool: &PgPool, page: PageRequest, filter: &ExecutorFilter) -> Result<Page<Executor>> {
    let rows: Vec<ExecutorRow> = ListQuery::new(SELECT, "e.executor_id", page)
        .filter("s.name", filter.site.as_deref())
        .filter("e.state", filter.state.as_ref().map(enum_to_text))
        .fetch(pool)
        .await?;
    let executors = rows.into_iter().map(Executor::try_from).collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(page.page(executors, |e| e.id))
}

/// Registers the executor of token `token_id`, or updates it (a restart,
/// a new address): a token speaks for one executor, at the site it serves
/// (named when it was made, or bound now by the first registration of a
/// token made before). Another token's executor is never taken over: its
/// address is a conflict, unless its token was revoked.
pub async fn register(pool: &PgPool, token_id: i64, r: &Valid<ExecutorRegistration>) -> Result<Executor> {
    let mut tx = pool.begin().await?;
    let site_id = site_id_by_name(&mut tx, "site", &r.site).await?;
    let serves: i64 = sqlx::query_scalar(
        "update api_token set site_id = coalesce(site_id, $2) where token_id = $1 returning site_id",
    )
    .bind(token_id)
    .bind(site_id)
    .fetch_one(&mut *tx)
    .await?;
    if serves != site_id {
        return Err(StoreError::NotYours(format!("this token serves another site's executor, not one at {}", r.site)));
    }
    let taken = |e| {
        on_constraint(e, |c| {
            (c == "executor_site_address").then(|| format!("{} at {} is another executor's address", r.address, r.site))
        })
    };
    let mine: Option<i64> =
        sqlx::query_scalar("select executor_id from executor where token_id = $1 order by executor_id limit 1")
            .bind(token_id)
            .fetch_optional(&mut *tx)
            .await?;
    let id: i64 = match mine {
        Some(id) => sqlx::query_scalar(
            "update executor set address = $2, driver = $3, capacity = $4, tunnel_address = $5, state = 'online', \
               last_heartbeat = now() where executor_id = $1 returning executor_id",
        )
        .bind(id)
        .bind(&r.address)
        .bind(enum_to_text(&r.driver))
        .bind(r.capacity as i32)
        .bind(&r.tunnel_address)
        .fetch_one(&mut *tx)
        .await
        .map_err(taken)?,
        // A new executor; or one whose token was revoked, taken over by this one at the same address.
        None => sqlx::query_scalar(
            "insert into executor (site_id, address, driver, capacity, token_id, state, last_heartbeat, tunnel_address) \
             values ($1, $2, $3, $4, $5, 'online', now(), $6) \
             on conflict (site_id, address) do update set driver = excluded.driver, capacity = excluded.capacity, \
               token_id = excluded.token_id, state = 'online', last_heartbeat = now(), \
               tunnel_address = excluded.tunnel_address \
             where executor.token_id is null \
             returning executor_id",
        )
        .bind(site_id)
        .bind(&r.address)
        .bind(enum_to_text(&r.driver))
        .bind(r.capacity as i32)
        .bind(token_id)
        .bind(&r.tunnel_address)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::Conflict(format!("{} at {} is another executor's address", r.address, r.site)))?,
    };
    // Registering again means a restart: what it was receiving is handed to it
    // again (it keeps sealed images on disk, so a cutover can still be confirmed).
    sqlx::query(
        "update migration_job set destination_ready = false \
         where destination_executor = $1 and state in ('claimed', 'transferring', 'cutover')",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    get(pool, id).await
}

/// The executor `id` if `token_id` registered it; 404 otherwise (another
/// executor's id is not this token's to use).
pub async fn owned(db: impl sqlx::PgExecutor<'_>, id: i64, token_id: i64) -> Result<i64> {
    let site: Option<i64> = sqlx::query_scalar("select site_id from executor where executor_id = $1 and token_id = $2")
        .bind(id)
        .bind(token_id)
        .fetch_optional(db)
        .await?;
    site.ok_or_else(|| StoreError::NotFound(format!("executor {id} of this token")))
}

/// When each site's executors were last heard from, by site id (sites with an executor that was).
pub async fn last_heard_by_site(pool: &PgPool) -> Result<std::collections::HashMap<i64, DateTime<Utc>>> {
    let rows: Vec<(i64, DateTime<Utc>)> = sqlx::query_as(
        "select site_id, max(last_heartbeat) from executor where last_heartbeat is not null group by site_id",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Records what an executor said with its replication report: it is
/// online, runs `running` (if it said), and holds its VMs stopped or not.
pub(super) async fn heard(pool: &PgPool, id: i64, running: Option<&[String]>, fenced: bool) -> Result<()> {
    sqlx::query(
        "update executor set last_heartbeat = now(), state = 'online', running_vms = coalesce($2, running_vms), \
         fenced_since = case when $3 then coalesce(fenced_since, now()) end where executor_id = $1",
    )
    .bind(id)
    .bind(running)
    .bind(fenced)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records a heartbeat: the executor is online, its listener as it says.
pub async fn heartbeat(pool: &PgPool, id: i64, token_id: i64, heartbeat: &Valid<Heartbeat>) -> Result<()> {
    owned(pool, id, token_id).await?;
    sqlx::query(
        "update executor set last_heartbeat = now(), state = 'online', listener = coalesce($2, listener) \
         where executor_id = $1",
    )
    .bind(id)
    .bind(heartbeat.listener.as_ref().map(sqlx::types::Json))
    .execute(pool)
    .await?;
    Ok(())
}
