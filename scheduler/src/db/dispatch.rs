//! The executor protocol over migrations (table `migration_job`): an
//! executor claims its next piece of work, reports progress, completes or
//! says where a VM runs after a crash, and leases that stop being renewed
//! run out. Each step is one transaction that changes a migration's state
//! through `migration_jobs`' locked, logged transitions; the rules
//! (leases, what a recovery means) are `domain::dispatch`'s.

use chrono::{DateTime, Utc};
use heliotrope_api_spec::{
    AssignedVm, Assignment, Completion, JobRole, MigrationDetail, MigrationNews, MigrationState, NetworkReport,
    ProgressAnswer, ProgressNews, ProgressReport, VmRunsAt,
};
use sqlx::{PgPool, Postgres, Transaction};

use super::executors::ONLINE_WITHIN;
use super::migration_jobs::{get, lock, move_to, Locked, ACTIVE};
use super::{enum_from_text, enum_to_text, Result, StoreError};
use crate::domain::dispatch::{after_recovery, lease};
use crate::domain::migration::is_active;
use crate::domain::Valid;

fn executor_actor(id: i64) -> String {
    format!("executor:{id}")
}

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
    let runs = super::executors::runs("v.driver", "e.driver");
    let found: Option<(i64, i64, i64)> = sqlx::query_as(&format!(
        "with {} \
         select j.job_id, j.to_site_id, j.vm_id from migration_job j join vm v on v.vm_id = j.vm_id \
         join room r on r.site_id = j.to_site_id \
         where j.state = 'scheduled' and j.from_site_id = $1 and j.admitted_at is not null \
         and {runs_here} and {FITS} \
         and exists (select 1 from executor e where e.site_id = j.to_site_id and {online} and {runs}) \
         order by j.admitted_at, j.job_id limit 1 for update of j skip locked",
        room("select to_site_id from migration_job where state = 'scheduled' and from_site_id = $1"),
        runs_here = super::executors::runs("v.driver", "$2"),
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
            // Ended otherwise: the VM stays at the source, and the destination drops what it received.
            if matches!(
                state,
                MigrationState::Failed
                    | MigrationState::Cancelled
                    | MigrationState::RolledBack
                    | MigrationState::Expired
            ) {
                return Err(StoreError::Conflict(format!(
                    "migration {id} ended {}: the VM stays at the source",
                    enum_to_text(&state)
                )));
            }
            if state != MigrationState::Cutover {
                return Err(StoreError::NotInCutover(format!(
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
