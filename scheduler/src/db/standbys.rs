//! Standbys: the sites where VMs' disks are kept warm (the operator's
//! named ones, part of the VM's spec, and those chosen from the plans),
//! what each site's executor replicates and keeps, and each replica's
//! freshness as the VM's executor reports it.
//!
//! A VM's replication is the work of one executor at its site, its keeper:
//! the online one with the lowest id that runs the VM's driver. The same
//! rule names the executor that keeps a standby site's replicas.

use heliotrope_api_spec::{
    IncomingReplica, OutgoingReplica, ReplicationPlan, ReplicationReport, REPLICATION_SESSION_BASE,
};
use sqlx::{PgExecutor, PgPool, Postgres, Transaction};

use super::dispatch::hex;
use super::executors::ONLINE_WITHIN;
use super::Result;
use crate::domain::Valid;

/// The executor that keeps `site`'s replicas and replicates its VMs of
/// driver `driver` (SQL over the columns named). No executor keeps
/// replicas of `libvirt` VMs yet: replication reads a disk over the VM's
/// QMP, which libvirt keeps to itself.
pub(super) fn keeper(site: &str, driver: &str) -> String {
    format!(
        "(select min(k.executor_id) from executor k where k.site_id = {site} and k.state = 'online' \
         and k.last_heartbeat > now() - {ONLINE_WITHIN} and coalesce((k.listener->>'accepting')::boolean, true) \
         and {runs} and {driver} <> 'libvirt')",
        runs = super::executors::runs(driver, "k.driver"),
    )
}

/// Stores the standbys an operator names for a VM (in spec order) and puts
/// them in force; a site no longer named stays only if the plans chose it.
pub(super) async fn name(tx: &mut Transaction<'_, Postgres>, vm_id: i64, sites: &[i64]) -> Result<()> {
    super::vms::store_site_list(tx, super::vms::SiteList::Standby, vm_id, sites).await?;
    sqlx::query("delete from standby where vm_id = $1 and chosen_by = 'operator' and site_id <> all($2)")
        .bind(vm_id)
        .bind(sites)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "insert into standby (vm_id, site_id, chosen_by, secret) \
         select $1, site_id, 'operator', secret from unnest($2::bigint[], $3::bytea[]) as t(site_id, secret) \
         on conflict (vm_id, site_id) do update set chosen_by = 'operator'",
    )
    .bind(vm_id)
    .bind(sites)
    .bind(secrets(sites.len()))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn secrets(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|_| rand::random::<[u8; 32]>().to_vec()).collect()
}

/// A standby in force, with its replica's freshness.
#[derive(sqlx::FromRow)]
pub struct InForce {
    pub vm_id: i64,
    pub site_id: i64,
    pub synced: bool,
    pub synced_bytes: i64,
    pub written_bytes: i64,
}

/// Every standby in force, apart from any at its VM's own site.
pub async fn in_force(db: impl PgExecutor<'_>) -> Result<Vec<InForce>> {
    Ok(sqlx::query_as(
        "select b.vm_id, b.site_id, b.synced_at is not null as synced, b.synced_bytes, b.written_bytes \
         from standby b join vm v on v.vm_id = b.vm_id where b.site_id <> v.site_id order by b.standby_id",
    )
    .fetch_all(db)
    .await?)
}

/// Operator-named standby sites, per VM id.
pub async fn named(db: impl PgExecutor<'_>) -> Result<Vec<(i64, i64)>> {
    Ok(sqlx::query_as("select vm_id, site_id from vm_standby_site order by vm_id, position").fetch_all(db).await?)
}

/// Puts the plans' choice of standbys (VM id, site id; from `domain::standby::choose`, never a client) in force: those it
/// no longer names go (their replicas are freed at their sites), new ones
/// come; the operator's stay as they are. So does a standby a migration
/// under way is headed to, until it ends: its replica is being read.
pub async fn choose(pool: &PgPool, chosen: &[(i64, i64)]) -> Result<()> {
    let (vms, sites): (Vec<i64>, Vec<i64>) = chosen.iter().copied().unzip();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "delete from standby b where chosen_by = 'plans' \
         and (vm_id, site_id) not in (select * from unnest($1::bigint[], $2::bigint[])) \
         and not exists (select 1 from migration_job j where j.vm_id = b.vm_id and j.to_site_id = b.site_id \
                         and j.state in ('claimed', 'transferring', 'cutover', 'recovering'))",
    )
    .bind(&vms)
    .bind(&sites)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "insert into standby (vm_id, site_id, chosen_by, secret) \
         select vm_id, site_id, 'plans', secret from unnest($1::bigint[], $2::bigint[], $3::bytea[]) \
           as t(vm_id, site_id, secret) \
         on conflict (vm_id, site_id) do nothing",
    )
    .bind(&vms)
    .bind(&sites)
    .bind(secrets(vms.len()))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct OutgoingRow {
    standby_id: i64,
    vm: String,
    standby: String,
    peer_address: Option<String>,
    secret: Vec<u8>,
    vm_id: i64,
    #[sqlx(flatten)]
    spec: super::dispatch::VmRow,
    bandwidth_mbps: f64,
    background_reserve_pct: f64,
    final_sync_after: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(sqlx::FromRow)]
struct IncomingRow {
    standby_id: i64,
    vm_id: i64,
    vm: String,
    disk_gib: f64,
    driver: String,
    secret: Vec<u8>,
}

/// The replica of VM `vm_id`'s disk, by file name.
pub(super) fn replica_name(vm_id: i64) -> String {
    format!("vm-{vm_id}-disk.img")
}

/// What executor `executor_id` (of this token) replicates and keeps now:
/// the disks of the VMs it keeps at its site, to their standbys (a
/// link's replication budget is `link_share` of what the link leaves
/// usable); the replicas its site keeps for VMs elsewhere; the VMs of a
/// lost site it restarts from those replicas; and, at a site that is down,
/// to keep every VM stopped (nothing replicates from there), and at a site
/// that came back, the stale copies of its VMs restarted elsewhere.
pub async fn plan_for(
    pool: &PgPool,
    executor_id: i64,
    token_id: i64,
    link_share: f64,
    interval_s: f64,
) -> Result<ReplicationPlan> {
    let site_id = super::executors::owned(pool, executor_id, token_id).await?;
    let down: bool =
        sqlx::query_scalar("select state = 'down' from site where site_id = $1").bind(site_id).fetch_one(pool).await?;
    let outgoing: Vec<OutgoingRow> = sqlx::query_as(&format!(
        "select b.standby_id, v.name as vm, x.name as standby, \
           (select e.address from executor e where e.executor_id = {peer}) as peer_address, \
           b.secret, v.vm_id, v.memory_gib, v.disk_gib, v.dirty_rate_mbps, v.max_downtime_ms, v.driver, v.driver_spec, \
           l.bandwidth_mbps, l.background_reserve_pct, b.final_sync_after \
         from standby b join vm v on v.vm_id = b.vm_id join site x on x.site_id = b.site_id \
           join link l on l.from_site_id = v.site_id and l.to_site_id = b.site_id \
         where v.site_id = $1 and b.site_id <> v.site_id and {mine} = $2 and not $3 \
         order by b.standby_id",
        peer = keeper("b.site_id", "v.driver"),
        mine = keeper("v.site_id", "v.driver"),
    ))
    .bind(site_id)
    .bind(executor_id)
    .bind(down)
    .fetch_all(pool)
    .await?;
    let incoming: Vec<IncomingRow> = sqlx::query_as(&format!(
        "select b.standby_id, v.vm_id, v.name as vm, v.disk_gib, v.driver, b.secret from standby b join vm v on v.vm_id = b.vm_id \
         where b.site_id = $1 and v.site_id <> $1 and {keeper} = $2 order by b.standby_id",
        keeper = keeper("b.site_id", "v.driver"),
    ))
    .bind(site_id)
    .bind(executor_id)
    .fetch_all(pool)
    .await?;
    let session = |id: i64| REPLICATION_SESSION_BASE + id as u64;
    let outgoing = outgoing
        .into_iter()
        .map(|r| {
            let usable_mbps = r.bandwidth_mbps * (1.0 - r.background_reserve_pct / 100.0);
            Ok(OutgoingReplica {
                session: session(r.standby_id),
                vm: r.vm,
                vm_spec: r.spec.assigned(Vec::new())?,
                standby: r.standby,
                peer_address: r.peer_address,
                replica: replica_name(r.vm_id),
                secret: hex(&r.secret),
                link_usable_mbps: usable_mbps,
                replication_mbps: usable_mbps * link_share,
                final_sync_after: r.final_sync_after,
            })
        })
        .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?;
    let incoming = incoming
        .into_iter()
        .map(|r| {
            Ok(IncomingReplica {
                session: session(r.standby_id),
                vm: r.vm,
                disk_gib: r.disk_gib,
                driver: super::enum_from_text(r.driver)?,
                replica: replica_name(r.vm_id),
                secret: hex(&r.secret),
            })
        })
        .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?;
    let restarts = super::recoveries::restarts_for(pool, executor_id, site_id).await?;
    let quarantine = super::recoveries::quarantine_for(pool, site_id).await?;
    Ok(ReplicationPlan { outgoing, incoming, interval_s, fence: down, restarts, quarantine })
}

/// Records what executor `executor_id` reports: the freshness of the
/// replicas it sends (reports of standbys it does not replicate are
/// ignored, and so are reports that change nothing: `reported_at` is then
/// the last change), the VMs it runs, whether it holds them stopped, and
/// the stale copies it quarantines. The report is also a heartbeat.
pub async fn record(pool: &PgPool, executor_id: i64, token_id: i64, report: &Valid<ReplicationReport>) -> Result<()> {
    let site_id = super::executors::owned(pool, executor_id, token_id).await?;
    super::executors::heard(pool, executor_id, report.running.as_deref(), report.fenced).await?;
    super::recoveries::record_quarantine(pool, site_id, &report.quarantine).await?;
    let base = REPLICATION_SESSION_BASE;
    let ids: Vec<i64> = report.replicas.iter().map(|r| (r.session - base) as i64).collect();
    let synced_at: Vec<Option<chrono::DateTime<chrono::Utc>>> = report.replicas.iter().map(|r| r.synced_at).collect();
    let synced_bytes: Vec<i64> = report.replicas.iter().map(|r| r.synced_bytes as i64).collect();
    let written_bytes: Vec<i64> = report.replicas.iter().map(|r| r.written_bytes as i64).collect();
    sqlx::query(
        "update standby b set synced_at = r.synced_at, synced_bytes = r.synced_bytes, \
           written_bytes = r.written_bytes, reported_at = now() \
         from unnest($1::bigint[], $2::timestamptz[], $3::bigint[], $4::bigint[]) \
           as r(standby_id, synced_at, synced_bytes, written_bytes), vm v \
         where b.standby_id = r.standby_id and v.vm_id = b.vm_id and v.site_id = $5 \
           and (b.synced_at, b.synced_bytes, b.written_bytes) \
               is distinct from (r.synced_at, r.synced_bytes, r.written_bytes)",
    )
    .bind(&ids)
    .bind(&synced_at)
    .bind(&synced_bytes)
    .bind(&written_bytes)
    .bind(site_id)
    .execute(pool)
    .await?;
    Ok(())
}
