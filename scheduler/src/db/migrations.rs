//! Migrations (table `migration_job`): one per move of an applied plan,
//! with the log of every change of its state. A change of state and its
//! event are written in one transaction, under a lock on the row, and only
//! if the state machine (`domain::migration`) allows it.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use heliotrope_api_spec::{
    AssignedVm, Assignment, Completion, JobRole, Migration, MigrationDetail, MigrationEvent, MigrationFilter,
    MigrationNews, MigrationState, NetworkReport, ProgressAnswer, ProgressNews, ProgressReport, VmRunsAt,
};
use sqlx::{PgExecutor, PgPool, Postgres, Transaction};

use super::{enum_from_text, enum_to_text, ListQuery, Result, StoreError};
use crate::domain::dispatch::{after_recovery, lease};
use crate::domain::migration::{can_move, is_active};
use crate::domain::page::{Page, PageRequest};
use crate::domain::Valid;

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
struct Locked {
    job_id: i64,
    state: String,
    vm_id: i64,
    from_site_id: i64,
    to_site_id: i64,
    attempts: i32,
    cap_mbps: Option<f64>,
    lease_holder: Option<i64>,
    destination_executor: Option<i64>,
}

impl Locked {
    /// Only the source executor holding the lease speaks for the migration.
    fn held_by(&self, executor_id: i64) -> Result<()> {
        if self.lease_holder == Some(executor_id) {
            Ok(())
        } else {
            Err(StoreError::Conflict(format!("migration {} is not held by executor {executor_id}", self.job_id)))
        }
    }
}

async fn lock(tx: &mut Transaction<'_, Postgres>, id: i64) -> Result<(Locked, MigrationState)> {
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

/// The most network steps one migration's log takes: each end's few steps,
/// with room for retried releases (a failed one is tried again every minute).
const MAX_NETWORK_REPORTS: i64 = 64;

/// Logs a network step `executor_id` took for migration `id`: it must be
/// one of its two executors, and the migration must be in or past its
/// cutover, or recovering (an old site taking the addresses back). The
/// state stays.
pub async fn record_network(
    pool: &PgPool,
    id: i64,
    executor_id: i64,
    token_id: i64,
    report: &Valid<NetworkReport>,
) -> Result<MigrationDetail> {
    let mut tx = pool.begin().await?;
    super::executors::owned(&mut *tx, executor_id, token_id).await?;
    let (job, state) = lock(&mut tx, id).await?;
    if job.lease_holder != Some(executor_id) && job.destination_executor != Some(executor_id) {
        return Err(StoreError::Conflict(format!("executor {executor_id} is neither end of migration {id}")));
    }
    if !matches!(
        state,
        MigrationState::Cutover | MigrationState::Done | MigrationState::RolledBack | MigrationState::Recovering
    ) {
        return Err(StoreError::Conflict(format!(
            "migration {id} is {}: its network moves only from the cutover on",
            enum_to_text(&state)
        )));
    }
    let logged: i64 =
        sqlx::query_scalar("select count(*) from migration_event where job_id = $1 and network is not null")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
    if logged >= MAX_NETWORK_REPORTS {
        return Err(StoreError::Conflict(format!(
            "migration {id} has {logged} network steps logged, the most it takes"
        )));
    }
    let outcome = if report.ok { "" } else { " FAILED" };
    let detail = format!(
        "network {} ({}){outcome} in {:.1} ms: {}",
        enum_to_text(&report.step),
        enum_to_text(&report.driver),
        report.duration_ms,
        report.detail
    );
    sqlx::query(
        "insert into migration_event (job_id, actor, from_state, to_state, detail, network) \
         values ($1, $2, $3, $3, $4, $5)",
    )
    .bind(id)
    .bind(executor_actor(executor_id))
    .bind(enum_to_text(&state))
    .bind(&detail)
    .bind(sqlx::types::Json(&**report))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    get(pool, id).await
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

fn executor_actor(id: i64) -> String {
    format!("executor:{id}")
}

/// An executor that has not heartbeat for this long is not handed work.
pub(super) const ONLINE_WITHIN: &str = "interval '60 seconds'";

/// The next piece of work for executor `executor_id`: first its side of a
/// migration it is the destination of and has not taken yet; then a
/// recovering migration from its site, to say where the VM runs (handed
/// out again only once its lease runs out); else (within its capacity) the
/// earliest scheduled migration from its site the dispatcher admitted,
/// whose VM's driver it runs, and whose destination site has an online
/// executor that runs it too.
/// A source claim is taken under `FOR UPDATE SKIP LOCKED`, so concurrent
/// claims never take one migration twice.
pub async fn claim(pool: &PgPool, executor_id: i64, token_id: i64) -> Result<Option<Assignment>> {
    let mut tx = pool.begin().await?;
    let site_id = super::executors::owned(&mut *tx, executor_id, token_id).await?;
    // The destination is told of its source too: its network tunnel takes packets from there only.
    #[derive(sqlx::FromRow)]
    struct Taken {
        job_id: i64,
        secret: Vec<u8>,
        source_address: Option<String>,
        source_tunnel_address: Option<String>,
    }
    let destination: Option<Taken> = sqlx::query_as(
        "update migration_job j set destination_ready = true \
         where job_id = (select job_id from migration_job where destination_executor = $1 and not destination_ready \
                         and state in ('claimed', 'transferring', 'cutover') order by job_id limit 1 for update skip locked) \
         returning j.job_id, j.secret, \
           (select e.address from executor e where e.executor_id = j.lease_holder) as source_address, \
           (select e.tunnel_address from executor e where e.executor_id = j.lease_holder) as source_tunnel_address",
    )
    .bind(executor_id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(taken) = destination {
        tx.commit().await?;
        let tunnel_address = taken.source_tunnel_address;
        let source = taken.source_address.map(|address| Peer { address, tunnel_address });
        return Ok(Some(assignment(pool, taken.job_id, JobRole::Destination, source, &taken.secret, None).await?));
    }
    let lease_expires = Utc::now() + lease();
    let recovering: Option<(i64, Vec<u8>)> = sqlx::query_as(
        "update migration_job set lease_holder = $2, lease_expires = $3 \
         where job_id = (select job_id from migration_job where state = 'recovering' and from_site_id = $1 \
                         and (lease_expires is null or lease_expires < now()) order by job_id limit 1 \
                         for update skip locked) \
         returning job_id, secret",
    )
    .bind(site_id)
    .bind(executor_id)
    .bind(lease_expires)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((id, secret)) = recovering {
        tx.commit().await?;
        return Ok(Some(assignment(pool, id, JobRole::Recover, None, &secret, Some(lease_expires)).await?));
    }
    let (busy, capacity, driver): (i64, i32, String) = sqlx::query_as(&format!(
        "select (select count(*) from migration_job where lease_holder = $1 and {ACTIVE}), capacity, driver \
         from executor where executor_id = $1"
    ))
    .bind(executor_id)
    .fetch_one(&mut *tx)
    .await?;
    if busy >= i64::from(capacity) {
        return Ok(None);
    }
    // The migration first (the next one nobody else is taking), then its
    // destination's least busy online executor: choosing the executor for
    // every candidate would cost a count per scheduled migration. Both ends
    // must run the VM's driver (a `qemu` executor runs `sim` VMs too).
    // An arrival waits until its destination has room for it beside what
    // runs there and what is arriving (a plan counts a VM under way at its
    // destination only, so a swap's arrivals wait for its departures); the
    // destination's row is locked so that two claims cannot both take its
    // last room.
    // Online, and its transfer listener accepting (as its last heartbeat said).
    let online = format!(
        "e.state = 'online' and e.last_heartbeat > now() - {ONLINE_WITHIN} \
         and coalesce((e.listener->>'accepting')::boolean, true)"
    );
    let runs = "(v.driver = 'sim' or e.driver = 'qemu')";
    let found: Option<(i64, i64, i64)> = sqlx::query_as(&format!(
        "with {} \
         select j.job_id, j.to_site_id, j.vm_id from migration_job j join vm v on v.vm_id = j.vm_id \
         join room r on r.site_id = j.to_site_id \
         where j.state = 'scheduled' and j.from_site_id = $1 and j.admitted_at is not null \
         and (v.driver = 'sim' or $2 = 'qemu') and {FITS} \
         and exists (select 1 from executor e where e.site_id = j.to_site_id and {online} and {runs}) \
         order by j.admitted_at, j.job_id limit 1 for update of j skip locked",
        room("select to_site_id from migration_job where state = 'scheduled' and from_site_id = $1")
    ))
    .bind(site_id)
    .bind(&driver)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((id, to_site_id, vm_id)) = found else { return Ok(None) };
    // Claims for one destination take its row in turn, then look again: the
    // room seen above may have gone to a claim that committed meanwhile.
    sqlx::query("select 1 from site where site_id = $1 for no key update").bind(to_site_id).execute(&mut *tx).await?;
    let fits: bool = sqlx::query_scalar(&format!(
        "with {} select {FITS} from migration_job j join vm v on v.vm_id = j.vm_id \
         join room r on r.site_id = j.to_site_id where j.job_id = $1",
        room("select to_site_id from migration_job where job_id = $1")
    ))
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    if !fits {
        return Ok(None);
    }
    let (destination_executor, peer_address, peer_tunnel_address): (i64, String, Option<String>) =
        sqlx::query_as(&format!(
            "select e.executor_id, e.address, e.tunnel_address from executor e join vm v on v.vm_id = $2 \
         where e.site_id = $1 and {online} and {runs} \
         order by (select count(*) from migration_job o where o.destination_executor = e.executor_id and o.{ACTIVE}), \
           e.executor_id limit 1"
        ))
        .bind(to_site_id)
        .bind(vm_id)
        .fetch_one(&mut *tx)
        .await?;
    // One secret per migration, kept across its attempts: a destination that
    // took an earlier attempt's side proves the same one.
    let fresh: [u8; 32] = rand::random();
    let secret: Vec<u8> = sqlx::query_scalar(
        "update migration_job set lease_holder = $2, lease_expires = $3, destination_executor = $4, \
         destination_ready = false, secret = coalesce(secret, $5), attempts = attempts + 1 where job_id = $1 \
         returning secret",
    )
    .bind(id)
    .bind(executor_id)
    .bind(lease_expires)
    .bind(destination_executor)
    .bind(&fresh[..])
    .fetch_one(&mut *tx)
    .await?;
    let detail = format!("claimed; destination executor {destination_executor} at {peer_address}");
    move_to(&mut tx, id, MigrationState::Scheduled, MigrationState::Claimed, &executor_actor(executor_id), &detail)
        .await?;
    tx.commit().await?;
    let peer = Peer { address: peer_address, tunnel_address: peer_tunnel_address };
    Ok(Some(assignment(pool, id, JobRole::Source, Some(peer), &secret, Some(lease_expires)).await?))
}

/// A CTE `room`: what each site of `sites` (a subquery of site ids) has left
/// beside the VMs it runs and those arriving (a migration claimed and not
/// yet ended).
pub(super) fn room(sites: &str) -> String {
    format!(
        "room as (select s.site_id, s.capacity_vcpus - coalesce(sum(x.vcpus), 0) as vcpus, \
             s.capacity_memory_gib - coalesce(sum(x.memory_gib), 0) as memory_gib, \
             s.capacity_disk_gib - coalesce(sum(x.disk_gib), 0) as disk_gib \
         from site s left join (select site_id, vcpus, memory_gib, disk_gib from vm \
             union all select o.to_site_id, a.vcpus, a.memory_gib, a.disk_gib from migration_job o \
             join vm a on a.vm_id = o.vm_id where o.state in ('claimed', 'transferring', 'cutover', 'recovering')) x \
           on x.site_id = s.site_id where s.site_id in ({sites}) group by s.site_id)"
    )
}

/// Whether VM `v` fits in its destination's `r`oom.
const FITS: &str = "(r.vcpus >= v.vcpus and r.memory_gib >= v.memory_gib - 1e-9 and r.disk_gib >= v.disk_gib - 1e-9)";

/// What an executor is told of a VM it moves or replicates (the columns of `vm` by these names).
#[derive(sqlx::FromRow)]
pub(super) struct VmRow {
    memory_gib: f64,
    disk_gib: f64,
    dirty_rate_mbps: f64,
    max_downtime_ms: i32,
    driver: String,
    driver_spec: sqlx::types::Json<serde_json::Value>,
}

impl VmRow {
    pub(super) fn assigned(self, addresses: Vec<String>) -> std::result::Result<AssignedVm, sqlx::Error> {
        Ok(AssignedVm {
            addresses,
            memory_gib: self.memory_gib,
            disk_gib: self.disk_gib,
            dirty_rate_mbps: self.dirty_rate_mbps,
            max_downtime_ms: u32::try_from(self.max_downtime_ms).unwrap_or(0),
            driver: enum_from_text(self.driver)?,
            driver_spec: self.driver_spec.0,
        })
    }
}

/// The other end's executor, as each end is told.
struct Peer {
    address: String,
    tunnel_address: Option<String>,
}

/// Migration `id` as handed to an executor.
async fn assignment(
    pool: &PgPool,
    id: i64,
    role: JobRole,
    peer: Option<Peer>,
    secret: &[u8],
    lease_expires: Option<DateTime<Utc>>,
) -> Result<Assignment> {
    let migration = get(pool, id).await?.migration;
    let vm: VmRow = sqlx::query_as(
        "select v.memory_gib, v.disk_gib, v.dirty_rate_mbps, v.max_downtime_ms, v.driver, v.driver_spec \
         from migration_job j join vm v on v.vm_id = j.vm_id where j.job_id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await?;
    let addresses: Vec<String> = sqlx::query_scalar(
        "select a.address from vm_address a join migration_job j on j.vm_id = a.vm_id where j.job_id = $1 \
         order by a.position",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let vm = vm.assigned(addresses)?;
    let (peer_address, peer_tunnel_address) = match peer {
        Some(peer) => (Some(peer.address), peer.tunnel_address),
        None => (None, None),
    };
    Ok(Assignment { migration, vm, role, peer_address, peer_tunnel_address, secret: hex(secret), lease_expires })
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How much each progress report's dirty rate weighs in a VM's measured one.
const DIRTY_RATE_WEIGHT: f64 = 0.3;

/// A progress report from the source executor holding the lease: it
/// extends the lease, may move the migration on (to transferring or
/// cutover), and answers with the cap to send at and whether to stop.
pub async fn progress(
    pool: &PgPool,
    id: i64,
    executor_id: i64,
    token_id: i64,
    report: &Valid<ProgressReport>,
) -> Result<ProgressAnswer> {
    let mut tx = pool.begin().await?;
    super::executors::owned(&mut *tx, executor_id, token_id).await?;
    let (job, mut state) = lock(&mut tx, id).await?;
    job.held_by(executor_id)?;
    // An ended migration tells its source how it ended: stop (cancelled,
    // failed, rolled back) or let go of the VM (done).
    if !is_active(state) {
        tx.commit().await?;
        let cancelled = state != MigrationState::Done;
        return Ok(ProgressAnswer { state, cap_mbps: job.cap_mbps, cancelled, lease_expires: None });
    }
    if state == MigrationState::Recovering {
        return Err(StoreError::Conflict(format!("migration {id} is recovering: say where the VM runs first")));
    }
    if let Some(to) = report.state.filter(|&to| to != state) {
        move_to(&mut tx, id, state, to, &executor_actor(executor_id), "reported by the source").await?;
        state = to;
    }
    if report.dirty_bytes_per_s > 0.0 {
        // The guest's dirty rate as measured, smoothed (each report weighs 30%): the
        // dispatcher and the planner use it in place of the declared one.
        sqlx::query(&format!(
            "update vm set measured_dirty_rate_mbps = coalesce({keep} * measured_dirty_rate_mbps + {take} * $2, $2) \
             where vm_id = (select vm_id from migration_job where job_id = $1)",
            keep = 1.0 - DIRTY_RATE_WEIGHT,
            take = DIRTY_RATE_WEIGHT,
        ))
        .bind(id)
        .bind(report.dirty_bytes_per_s * 8.0 / 1e6)
        .execute(&mut *tx)
        .await?;
    }
    let lease_expires = Utc::now() + lease();
    sqlx::query("update migration_job set progress = $2, lease_expires = $3 where job_id = $1")
        .bind(id)
        .bind(sqlx::types::Json(&**report))
        .bind(lease_expires)
        .execute(&mut *tx)
        .await?;
    let news =
        MigrationNews::Progress(ProgressNews { migration: id, at: Utc::now(), state, report: (**report).clone() });
    sqlx::query("select pg_notify($1, $2)")
        .bind(super::changes::NEWS_CHANNEL)
        .bind(serde_json::to_string(&news).map_err(|e| sqlx::Error::Encode(Box::new(e)))?)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(ProgressAnswer { state, cap_mbps: job.cap_mbps, cancelled: false, lease_expires: Some(lease_expires) })
}

/// Ends a migration as its executors say: `done` only from the
/// destination executor once in cutover, moving the VM's site in the same
/// transaction; `failed` from the source holding the lease, before
/// cutover; `rolled_back` from it in cutover, when the destination never
/// confirmed (it resumes the VM; the destination's `done` is then refused).
pub async fn complete(
    pool: &PgPool,
    id: i64,
    executor_id: i64,
    token_id: i64,
    completion: &Valid<Completion>,
) -> Result<MigrationDetail> {
    let mut tx = pool.begin().await?;
    super::executors::owned(&mut *tx, executor_id, token_id).await?;
    let (job, state) = lock(&mut tx, id).await?;
    let actor = executor_actor(executor_id);
    match completion.state {
        MigrationState::Done => {
            if job.destination_executor != Some(executor_id) {
                return Err(StoreError::Conflict(format!("only migration {id}'s destination executor confirms it")));
            }
            // Confirmed already (a recovery found the VM at the destination): the same answer again.
            if state == MigrationState::Done {
                tx.commit().await?;
                return get(pool, id).await;
            }
            if state != MigrationState::Cutover {
                return Err(StoreError::Conflict(format!(
                    "migration {id} is {}: it is done only after cutover",
                    enum_to_text(&state)
                )));
            }
            finish_at_destination(&mut tx, &job, state, &actor, &completion.detail).await?;
        }
        // `failed` before cutover, `rolled_back` after it (`can_move` says which).
        to => {
            job.held_by(executor_id)?;
            move_to(&mut tx, id, state, to, &actor, &completion.detail).await?;
        }
    }
    tx.commit().await?;
    get(pool, id).await
}

/// The VM runs at the destination: the migration is done and the VM's site moves, together.
async fn finish_at_destination(
    tx: &mut Transaction<'_, Postgres>,
    job: &Locked,
    from: MigrationState,
    actor: &str,
    detail: &str,
) -> Result<()> {
    move_to(tx, job.job_id, from, MigrationState::Done, actor, detail).await?;
    sqlx::query("update vm set site_id = $2 where vm_id = $1 and site_id = $3")
        .bind(job.vm_id)
        .bind(job.to_site_id)
        .bind(job.from_site_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// An executor at the source site, back from a crash, says where a
/// recovering migration's VM runs: done (at the destination), or again
/// scheduled or rolled back (at the source).
pub async fn recover(
    pool: &PgPool,
    id: i64,
    executor_id: i64,
    token_id: i64,
    runs_at: VmRunsAt,
) -> Result<MigrationDetail> {
    let mut tx = pool.begin().await?;
    let site_id = super::executors::owned(&mut *tx, executor_id, token_id).await?;
    let (job, state) = lock(&mut tx, id).await?;
    if site_id != job.from_site_id {
        return Err(StoreError::Conflict(format!("migration {id} is recovered by an executor at its source site")));
    }
    if state != MigrationState::Recovering {
        return Err(StoreError::Conflict(format!("migration {id} is {}, not recovering", enum_to_text(&state))));
    }
    let actor = executor_actor(executor_id);
    let to = after_recovery(runs_at, u32::try_from(job.attempts).unwrap_or(0));
    let detail = format!("the VM runs at the {}", enum_to_text(&runs_at));
    if to == MigrationState::Done {
        finish_at_destination(&mut tx, &job, state, &actor, &detail).await?;
    } else {
        move_to(&mut tx, id, state, to, &actor, &detail).await?;
        sqlx::query(
            "update migration_job set lease_holder = null, lease_expires = null, destination_executor = null, \
             destination_ready = false where job_id = $1",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    get(pool, id).await
}

/// Migrations whose executor stopped reporting (the lease ran out) go to
/// `recovering`; returns how many. Idempotent: a sweep by every replica is harmless.
pub async fn expire_leases(pool: &PgPool) -> Result<u64> {
    let done = sqlx::query(
        "with expired as ( \
           update migration_job j set state = 'recovering' from ( \
             select job_id, state from migration_job where lease_expires < now() \
             and state in ('claimed', 'transferring', 'cutover') for update skip locked) old \
           where j.job_id = old.job_id returning j.job_id, old.state) \
         insert into migration_event (job_id, actor, from_state, to_state, detail) \
         select job_id, 'scheduler', state, 'recovering', 'the lease ran out: the executor stopped reporting' from expired",
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
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
