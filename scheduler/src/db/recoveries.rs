//! Recoveries: a lost site's VMs, each restarted once at a standby from
//! its replica or listed lost (`domain::recovery` decides where), handed
//! to the standby's executor only once the lost site's executors are
//! fenced, and the stale copies the returning site holds, quarantined
//! until an operator discards them.
//!
//! Exactly once: a recovery is handed out by one update from `waiting` to
//! `starting`, in the transaction that moves the VM's record to the
//! standby; from then on the lost site's executors are told, whenever
//! they are back, that any copy they hold must never run.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use heliotrope_api_spec::{
    Quarantine, QuarantineHolding, RecoveryState, Restart, RestartOutcome, SiteFailure, SiteRecovery, VmRecovery,
};
use sqlx::{PgPool, Postgres, Transaction};

use super::dispatch::{room, VmRow};
use super::migration_jobs::move_to;
use super::standbys::{keeper, replica_name};
use super::{enum_from_text, enum_to_text, Result, StoreError};
use crate::domain::recovery::{self, Heard, Placement, Replica, Room, Stranded, SyncCandidate};
use crate::domain::Valid;
use heliotrope_api_spec::MigrationState;

#[derive(sqlx::FromRow)]
struct RecoveryRow {
    recovery_id: i64,
    vm: String,
    from_site: String,
    to_site: Option<String>,
    state: String,
    priority: i16,
    recovery_point: Option<DateTime<Utc>>,
    lost_bytes: Option<i64>,
    detail: String,
    executor_id: Option<i64>,
    failed_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    running_at: Option<DateTime<Utc>>,
    quarantine: String,
}

impl TryFrom<RecoveryRow> for VmRecovery {
    type Error = sqlx::Error;
    fn try_from(r: RecoveryRow) -> std::result::Result<VmRecovery, sqlx::Error> {
        Ok(VmRecovery {
            id: r.recovery_id,
            vm: r.vm,
            from: r.from_site,
            to: r.to_site,
            state: enum_from_text(r.state)?,
            priority: u8::try_from(r.priority).unwrap_or(0),
            rpo_s: r.recovery_point.map(|at| (r.failed_at - at).as_seconds_f64()),
            recovery_point: r.recovery_point,
            lost_bytes: r.lost_bytes.map(|b| u64::try_from(b).unwrap_or(0)),
            detail: r.detail,
            executor: r.executor_id,
            failed_at: r.failed_at,
            started_at: r.started_at,
            running_at: r.running_at,
            quarantine: enum_from_text(r.quarantine)?,
        })
    }
}

const SELECT: &str =
    "select r.recovery_id, v.name as vm, f.name as from_site, t.name as to_site, r.state, r.priority, \
    r.recovery_point, r.lost_bytes, r.detail, r.executor_id, r.failed_at, r.started_at, r.running_at, r.quarantine \
    from recovery r join vm v on v.vm_id = r.vm_id join site f on f.site_id = r.from_site_id \
    left join site t on t.site_id = r.to_site_id";

pub async fn get(pool: &PgPool, id: i64) -> Result<VmRecovery> {
    let row: Option<RecoveryRow> =
        sqlx::query_as(&format!("{SELECT} where r.recovery_id = $1")).bind(id).fetch_optional(pool).await?;
    row.ok_or_else(|| StoreError::NotFound(format!("recovery {id}")))?.try_into().map_err(Into::into)
}

#[derive(sqlx::FromRow)]
struct SiteRow {
    name: String,
    state: String,
    down_at: Option<DateTime<Utc>>,
    down_reason: String,
}

async fn site(db: impl sqlx::PgExecutor<'_>, site_id: i64, lock: bool) -> Result<SiteRow> {
    let sql = format!(
        "select name, state, down_at, down_reason from site where site_id = $1{}",
        if lock { " for update" } else { "" }
    );
    let row: Option<SiteRow> = sqlx::query_as(&sql).bind(site_id).fetch_optional(db).await?;
    row.ok_or_else(|| StoreError::NotFound(format!("site {site_id}")))
}

#[derive(sqlx::FromRow)]
struct HeardRow {
    last_heartbeat: Option<DateTime<Utc>>,
    fenced_since: Option<DateTime<Utc>>,
}

/// What the scheduler last heard of each executor of site `site_id`.
async fn heard(db: impl sqlx::PgExecutor<'_>, site_id: i64) -> Result<Vec<Heard>> {
    let rows: Vec<HeardRow> = sqlx::query_as("select last_heartbeat, fenced_since from executor where site_id = $1")
        .bind(site_id)
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(|r| Heard { last: r.last_heartbeat, fenced_since: r.fenced_since }).collect())
}

/// Site `site_id`'s last failure and what became of each of its VMs (also
/// once it is back: the copies it holds wait for an operator's word).
pub async fn for_site(pool: &PgPool, site_id: i64) -> Result<SiteRecovery> {
    let site = site(pool, site_id, false).await?;
    let Some(down_at) = site.down_at else {
        return Ok(SiteRecovery {
            site: site.name,
            failed_at: None,
            reason: String::new(),
            dry_run: false,
            fenced_by: None,
            vms: Vec::new(),
        });
    };
    let rows: Vec<RecoveryRow> = sqlx::query_as(&format!(
        "{SELECT} where r.from_site_id = $1 and r.failed_at = $2 order by r.priority desc, v.name"
    ))
    .bind(site_id)
    .bind(down_at)
    .fetch_all(pool)
    .await?;
    let vms = rows.into_iter().map(VmRecovery::try_from).collect::<std::result::Result<_, _>>()?;
    let fenced_by = match site.state.as_str() {
        "down" => recovery::fenced_by(down_at, &heard(pool, site_id).await?).filter(|&at| at > Utc::now()),
        _ => None,
    };
    Ok(SiteRecovery {
        site: site.name,
        failed_at: Some(down_at),
        reason: site.down_reason,
        dry_run: false,
        fenced_by,
        vms,
    })
}

#[derive(sqlx::FromRow)]
struct StrandedRow {
    vm_id: i64,
    name: String,
    priority: i16,
    protected: bool,
    vcpus: i32,
    memory_gib: f64,
    disk_gib: f64,
}

/// Marks site `site_id` down (as `actor` says, at `now`) and records what
/// becomes of each VM there, by `domain::recovery::place`: its migrations
/// under way end (one past its cutover finishes at its destination and is
/// left to), and each VM is to restart at a standby, or is lost. Failing a
/// site that is down already says what its failure became. A dry run
/// changes nothing.
pub async fn fail_site(
    pool: &PgPool,
    site_id: i64,
    failure: &Valid<SiteFailure>,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<SiteRecovery> {
    let mut tx = pool.begin().await?;
    let site = site(&mut *tx, site_id, true).await?;
    if site.state == "down" && site.down_at.is_some() {
        tx.rollback().await?;
        return for_site(pool, site_id).await;
    }
    let stranded: Vec<StrandedRow> = sqlx::query_as(
        "select v.vm_id, v.name, v.priority, v.protected, v.vcpus, v.memory_gib, v.disk_gib from vm v where v.site_id = $1 \
         and not exists (select 1 from migration_job j where j.vm_id = v.vm_id and j.state = 'cutover') \
         order by v.vm_id",
    )
    .bind(site_id)
    .fetch_all(&mut *tx)
    .await?;
    let replicas: Vec<(i64, i64, Option<DateTime<Utc>>, i64)> = sqlx::query_as(
        "select b.vm_id, b.site_id, b.synced_at, b.written_bytes from standby b join vm v on v.vm_id = b.vm_id \
         where v.site_id = $1 and b.site_id <> $1",
    )
    .bind(site_id)
    .fetch_all(&mut *tx)
    .await?;
    let mut by_vm: HashMap<i64, Vec<Replica>> = HashMap::new();
    for (vm_id, site_id, synced_at, written) in replicas {
        by_vm.entry(vm_id).or_default().push(Replica {
            site_id,
            synced_at,
            written_bytes: u64::try_from(written).unwrap_or(0),
        });
    }
    let open: Vec<(i64, f64, f64, f64)> = sqlx::query_as(&format!(
        "with {} select site_id, vcpus::float8, memory_gib, disk_gib from room",
        room("select site_id from site where state = 'active'")
    ))
    .fetch_all(&mut *tx)
    .await?;
    let mut rooms: HashMap<i64, Room> =
        open.into_iter().map(|(id, vcpus, memory_gib, disk_gib)| (id, Room { vcpus, memory_gib, disk_gib })).collect();
    // The room other sites' protected VMs' standbys keep for them is theirs.
    let held: Vec<(i64, f64, f64, f64)> = sqlx::query_as(
        "select b.site_id, sum(v.vcpus)::float8, sum(v.memory_gib), sum(v.disk_gib) from standby b \
         join vm v on v.vm_id = b.vm_id where v.protected and v.site_id <> $1 and b.site_id <> v.site_id \
         group by b.site_id",
    )
    .bind(site_id)
    .fetch_all(&mut *tx)
    .await?;
    for (id, vcpus, memory_gib, disk_gib) in held {
        if let Some(room) = rooms.get_mut(&id) {
            room.vcpus -= vcpus;
            room.memory_gib -= memory_gib;
            room.disk_gib -= disk_gib;
        }
    }
    let names: HashMap<i64, String> = sqlx::query_as::<_, (i64, String)>("select site_id, name from site")
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
    let input: Vec<Stranded> = stranded
        .iter()
        .map(|v| Stranded {
            name: v.name.clone(),
            priority: u8::try_from(v.priority).unwrap_or(0),
            protected: v.protected,
            vcpus: f64::from(v.vcpus),
            memory_gib: v.memory_gib,
            disk_gib: v.disk_gib,
            replicas: by_vm.remove(&v.vm_id).unwrap_or_default(),
        })
        .collect();
    let placed = recovery::place(&input, &mut rooms, |id| names.get(&id).cloned().unwrap_or_default());
    if failure.dry_run {
        tx.rollback().await?;
        let mut vms: Vec<VmRecovery> =
            stranded.iter().zip(&placed).map(|(v, p)| predicted(v, p, &site.name, &names, now)).collect();
        vms.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.vm.cmp(&b.vm)));
        return Ok(SiteRecovery {
            site: site.name,
            failed_at: Some(now),
            reason: failure.reason.clone(),
            dry_run: true,
            fenced_by: recovery::fenced_by(now, &heard(pool, site_id).await?),
            vms,
        });
    }
    sqlx::query("update site set state = 'down', down_at = $2, down_reason = $3 where site_id = $1")
        .bind(site_id)
        .bind(now)
        .bind(&failure.reason)
        .execute(&mut *tx)
        .await?;
    end_migrations(&mut tx, site_id, &site.name, actor).await?;
    for (v, p) in stranded.iter().zip(&placed) {
        let (state, to, point, lost, detail) = match p {
            Placement::Restart { site_id, recovery_point, lost_bytes } => {
                ("waiting", Some(*site_id), Some(*recovery_point), Some(*lost_bytes as i64), String::new())
            }
            Placement::Lost { why } => ("lost", None, None, None, why.clone()),
        };
        sqlx::query(
            "insert into recovery (vm_id, from_site_id, to_site_id, state, detail, failed_at, recovery_point, \
             lost_bytes, priority) values ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(v.vm_id)
        .bind(site_id)
        .bind(to)
        .bind(state)
        .bind(detail)
        .bind(now)
        .bind(point)
        .bind(lost)
        .bind(v.priority)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    for_site(pool, site_id).await
}

/// A dry run's prediction for one VM.
fn predicted(
    v: &StrandedRow,
    p: &Placement,
    from: &str,
    names: &HashMap<i64, String>,
    now: DateTime<Utc>,
) -> VmRecovery {
    let (state, to, recovery_point, lost_bytes, detail) = match p {
        Placement::Restart { site_id, recovery_point, lost_bytes } => (
            RecoveryState::Waiting,
            names.get(site_id).cloned(),
            Some(*recovery_point),
            Some(*lost_bytes),
            String::new(),
        ),
        Placement::Lost { why } => (RecoveryState::Lost, None, None, None, why.clone()),
    };
    VmRecovery {
        id: 0,
        vm: v.name.clone(),
        from: from.to_owned(),
        to,
        state,
        priority: u8::try_from(v.priority).unwrap_or(0),
        rpo_s: recovery_point.map(|at| (now - at).as_seconds_f64()),
        recovery_point,
        lost_bytes,
        detail,
        executor: None,
        failed_at: now,
        started_at: None,
        running_at: None,
        quarantine: heliotrope_api_spec::QuarantineState::Pending,
    }
}

/// Ends the migrations under way that the lost site takes part in: those
/// not yet started are cancelled; those it was sending fail (or, waiting
/// to be recovered, go back to it: its VM is recovered with the rest);
/// those past their cutover are left to finish at their destination, and
/// those it was receiving to fail at their source.
async fn end_migrations(tx: &mut Transaction<'_, Postgres>, site_id: i64, site: &str, actor: &str) -> Result<()> {
    let jobs: Vec<(i64, String, bool)> = sqlx::query_as(
        "select job_id, state, from_site_id = $1 from migration_job \
         where (from_site_id = $1 or to_site_id = $1) and state in ('pending', 'scheduled', 'claimed', 'transferring', 'recovering') \
         order by job_id for update",
    )
    .bind(site_id)
    .fetch_all(&mut **tx)
    .await?;
    let detail = format!("site {site} was lost");
    for (id, state, from_lost) in jobs {
        let from: MigrationState = enum_from_text(state)?;
        let to = match (from, from_lost) {
            (MigrationState::Pending | MigrationState::Scheduled, _) => MigrationState::Cancelled,
            (MigrationState::Claimed | MigrationState::Transferring, true) => MigrationState::Failed,
            (MigrationState::Recovering, true) => MigrationState::RolledBack,
            _ => continue,
        };
        move_to(tx, id, from, to, actor, &detail).await?;
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
struct RestartRow {
    recovery_id: i64,
    vm_id: i64,
    vm: String,
    from_site: String,
    recovery_point: Option<DateTime<Utc>>,
    addresses: Vec<String>,
    #[sqlx(flatten)]
    spec: VmRow,
}

/// The restarts executor `executor_id` (of site `site_id`) makes now: it
/// takes the waiting recoveries to its site whose replicas it keeps, once
/// their lost site's executors are fenced (each taken once, its VM's
/// record moved here in the same transaction), and is told again those
/// it took and has not said the outcome of (it may have restarted since).
pub(super) async fn restarts_for(pool: &PgPool, executor_id: i64, site_id: i64) -> Result<Vec<Restart>> {
    let waiting: Vec<(i64, i64, DateTime<Utc>)> = sqlx::query_as(&format!(
        "select r.recovery_id, r.from_site_id, r.failed_at from recovery r join vm v on v.vm_id = r.vm_id \
         where r.state = 'waiting' and r.to_site_id = $1 and {keeper} = $2",
        keeper = keeper("r.to_site_id", "v.driver"),
    ))
    .bind(site_id)
    .bind(executor_id)
    .fetch_all(pool)
    .await?;
    let mut ready = Vec::new();
    let mut fenced: HashMap<(i64, DateTime<Utc>), bool> = HashMap::new();
    for (id, from, failed_at) in waiting {
        let is_fenced = match fenced.get(&(from, failed_at)) {
            Some(&known) => known,
            None => {
                let by = recovery::fenced_by(failed_at, &heard(pool, from).await?);
                let known = by.is_none_or(|at| at <= Utc::now());
                fenced.insert((from, failed_at), known);
                known
            }
        };
        if is_fenced {
            ready.push(id);
        }
    }
    if !ready.is_empty() {
        let mut tx = pool.begin().await?;
        let taken: Vec<(i64, i64)> = sqlx::query_as(
            "update recovery set state = 'starting', executor_id = $2, started_at = now() \
             where recovery_id = any($1) and state = 'waiting' returning vm_id, to_site_id",
        )
        .bind(&ready)
        .bind(executor_id)
        .fetch_all(&mut *tx)
        .await?;
        let (vms, sites): (Vec<i64>, Vec<i64>) = taken.into_iter().unzip();
        sqlx::query(
            "update vm v set site_id = t.site_id from unnest($1::bigint[], $2::bigint[]) as t(vm_id, site_id) \
             where v.vm_id = t.vm_id",
        )
        .bind(&vms)
        .bind(&sites)
        .execute(&mut *tx)
        .await?;
        // The replica becomes the VM's disk: the standby there holds none any more.
        sqlx::query(
            "update standby b set synced_at = null, synced_bytes = 0, written_bytes = 0, reported_at = null \
             from unnest($1::bigint[], $2::bigint[]) as t(vm_id, site_id) where b.vm_id = t.vm_id and b.site_id = t.site_id",
        )
        .bind(&vms)
        .bind(&sites)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    let rows: Vec<RestartRow> = sqlx::query_as(
        "select r.recovery_id, r.vm_id, v.name as vm, f.name as from_site, r.recovery_point, \
           array(select a.address from vm_address a where a.vm_id = v.vm_id order by a.position) as addresses, \
           v.memory_gib, v.disk_gib, v.dirty_rate_mbps, v.max_downtime_ms, v.driver, v.driver_spec \
         from recovery r join vm v on v.vm_id = r.vm_id join site f on f.site_id = r.from_site_id \
         where r.state = 'starting' and r.executor_id = $1 order by r.priority desc, r.recovery_id",
    )
    .bind(executor_id)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(Restart {
                recovery: r.recovery_id,
                vm: r.vm,
                vm_spec: r.spec.assigned(r.addresses)?,
                from: r.from_site,
                replica: replica_name(r.vm_id),
                recovery_point: r.recovery_point,
            })
        })
        .collect::<std::result::Result<_, sqlx::Error>>()
        .map_err(Into::into)
}

/// Records how executor `executor_id` (of this token) says restart `id`
/// went: only the executor it was handed to, and only once (the same
/// outcome again changes nothing).
pub async fn record_outcome(
    pool: &PgPool,
    id: i64,
    executor_id: i64,
    token_id: i64,
    outcome: &Valid<RestartOutcome>,
) -> Result<VmRecovery> {
    super::executors::owned(pool, executor_id, token_id).await?;
    let state = enum_to_text(&outcome.state);
    let (current, holder): (String, Option<i64>) =
        sqlx::query_as("select state, executor_id from recovery where recovery_id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("recovery {id}")))?;
    if holder != Some(executor_id) {
        return Err(StoreError::NotYours(format!("recovery {id} was not handed to executor {executor_id}")));
    }
    if current != state {
        let done = sqlx::query(
            "update recovery set state = $2, detail = $3, running_at = case when $2 = 'running' then now() end \
             where recovery_id = $1 and state = 'starting' and executor_id = $4",
        )
        .bind(id)
        .bind(&state)
        .bind(&outcome.detail)
        .bind(executor_id)
        .execute(pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("recovery {id} is {current}: it cannot become {state}")));
        }
    }
    get(pool, id).await
}

/// What the executors of site `site_id` must quarantine: its VMs restarted
/// elsewhere while it was lost (and not back here since), whose stale
/// copies are not yet discarded.
pub(super) async fn quarantine_for(pool: &PgPool, site_id: i64) -> Result<Vec<Quarantine>> {
    let rows: Vec<(i64, String, String)> = sqlx::query_as(
        "select r.recovery_id, v.name, r.quarantine from recovery r join vm v on v.vm_id = r.vm_id \
         where r.from_site_id = $1 and v.site_id <> $1 and r.state in ('starting', 'running', 'failed') \
           and r.quarantine in ('pending', 'held', 'discarding') order by r.recovery_id",
    )
    .bind(site_id)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(recovery, vm, state)| Quarantine { recovery, vm, discard: state == "discarding" })
        .collect())
}

/// Records what an executor of site `site_id` holds of the copies it was told to quarantine.
pub(super) async fn record_quarantine(pool: &PgPool, site_id: i64, holdings: &[QuarantineHolding]) -> Result<()> {
    if holdings.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = holdings.iter().map(|h| h.recovery).collect();
    let held: Vec<bool> = holdings.iter().map(|h| h.held).collect();
    sqlx::query(
        "update recovery r set quarantine = case \
             when h.held and r.quarantine = 'discarding' then 'discarding' when h.held then 'held' \
             when r.quarantine = 'discarding' then 'discarded' when r.quarantine = 'held' then 'discarded' else 'none' end \
         from unnest($1::bigint[], $2::bool[]) as h(recovery_id, held) \
         where r.recovery_id = h.recovery_id and r.from_site_id = $3 and r.quarantine in ('pending', 'held', 'discarding')",
    )
    .bind(&ids)
    .bind(&held)
    .bind(site_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// An operator's word that the stale copy recovery `id` left at its lost site may go.
pub async fn discard(pool: &PgPool, id: i64) -> Result<VmRecovery> {
    let done = sqlx::query(
        "update recovery set quarantine = 'discarding' where recovery_id = $1 and quarantine in ('pending', 'held') \
         and state in ('starting', 'running', 'failed')",
    )
    .bind(id)
    .execute(pool)
    .await?;
    let recovery = get(pool, id).await?;
    if done.rows_affected() == 0 && recovery.quarantine != heliotrope_api_spec::QuarantineState::Discarding {
        return Err(StoreError::Conflict(format!(
            "recovery {id} leaves no copy to discard (its quarantine is {})",
            enum_to_text(&recovery.quarantine)
        )));
    }
    Ok(recovery)
}

/// A final sync an evacuation may order: the freshest synced replica of a
/// VM at an open site, and what it needs.
pub struct FinalSync {
    pub vm_id: i64,
    pub standby_id: i64,
    pub standby: String,
    pub synced_at: DateTime<Utc>,
    pub candidate: SyncCandidate,
}

#[derive(sqlx::FromRow)]
struct FinalSyncRow {
    vm_id: i64,
    name: String,
    priority: i16,
    standby_id: i64,
    site_id: i64,
    standby: String,
    synced_at: DateTime<Utc>,
    written_bytes: i64,
    bandwidth_mbps: f64,
    background_reserve_pct: f64,
}

/// For each VM of site `site_id` named in `vms`, its freshest synced
/// replica at an active site: replication is sure of `link_share` of what
/// the link leaves usable.
pub async fn final_sync_candidates(
    pool: &PgPool,
    site_id: i64,
    vms: &[String],
    link_share: f64,
) -> Result<Vec<FinalSync>> {
    let rows: Vec<FinalSyncRow> = sqlx::query_as(
        "select distinct on (v.vm_id) v.vm_id, v.name, v.priority, b.standby_id, b.site_id, x.name as standby, \
           b.synced_at, b.written_bytes, l.bandwidth_mbps, l.background_reserve_pct \
         from standby b join vm v on v.vm_id = b.vm_id join site x on x.site_id = b.site_id \
           join link l on l.from_site_id = v.site_id and l.to_site_id = b.site_id \
         where v.site_id = $1 and v.name = any($2) and x.state = 'active' and b.synced_at is not null \
         order by v.vm_id, b.synced_at desc",
    )
    .bind(site_id)
    .bind(vms)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let usable = r.bandwidth_mbps * (1.0 - r.background_reserve_pct / 100.0) * 1e6 / 8.0;
            FinalSync {
                vm_id: r.vm_id,
                standby_id: r.standby_id,
                standby: r.standby,
                synced_at: r.synced_at,
                candidate: SyncCandidate {
                    name: r.name,
                    priority: u8::try_from(r.priority).unwrap_or(0),
                    site_id: r.site_id,
                    bytes_per_s: usable * link_share,
                    written_bytes: u64::try_from(r.written_bytes).unwrap_or(0),
                },
            }
        })
        .collect())
}

/// Orders the final syncs of `syncs` (as of `after`) and cancels the live
/// moves plan `plan_id` recorded for their VMs, which would not have
/// finished in time: their links are left to the moves that will.
pub async fn order_final_syncs(
    pool: &PgPool,
    plan_id: i64,
    syncs: &[&FinalSync],
    after: DateTime<Utc>,
    actor: &str,
) -> Result<()> {
    let standbys: Vec<i64> = syncs.iter().map(|s| s.standby_id).collect();
    let vms: Vec<i64> = syncs.iter().map(|s| s.vm_id).collect();
    let mut tx = pool.begin().await?;
    sqlx::query("update standby set final_sync_after = $2 where standby_id = any($1)")
        .bind(&standbys)
        .bind(after)
        .execute(&mut *tx)
        .await?;
    let jobs: Vec<(i64, String)> = sqlx::query_as(
        "select job_id, state from migration_job where plan_id = $1 and vm_id = any($2) \
         and state in ('pending', 'scheduled', 'claimed', 'transferring') order by job_id for update",
    )
    .bind(plan_id)
    .bind(&vms)
    .fetch_all(&mut *tx)
    .await?;
    for (id, state) in jobs {
        let detail = "its live migration would not finish before the deadline: its replica gets a final sync instead";
        move_to(&mut tx, id, enum_from_text(state)?, MigrationState::Cancelled, actor, detail).await?;
    }
    tx.commit().await?;
    Ok(())
}
