//! VMs, with their allowed sites (rows of `vm_allowed_site`, so that a
//! site named there cannot vanish under them).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use heliotrope_api_spec::{Standby, Vm, VmFilter, VmSpec};
use sqlx::{PgExecutor, PgPool, Postgres, Transaction};

use super::{enum_from_text, enum_to_text, on_constraint, site_id_by_name, ListQuery, Result, StoreError};
use crate::domain::page::{Page, PageRequest};
use crate::domain::Valid;

#[derive(sqlx::FromRow)]
struct VmRow {
    vm_id: i64,
    name: String,
    vcpus: i32,
    memory_gib: f64,
    disk_gib: f64,
    dirty_rate_mbps: f64,
    site: String,
    allowed_sites: Option<Vec<String>>,
    allowed_regions: Option<Vec<String>>,
    pinned: bool,
    protected: bool,
    group_name: Option<String>,
    priority: i16,
    max_downtime_ms: i32,
    driver: String,
    driver_spec: serde_json::Value,
    addresses: Vec<String>,
    standby_sites: Vec<String>,
    standbys: sqlx::types::Json<Vec<Standby>>,
    measured_dirty_rate_mbps: Option<f64>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<VmRow> for Vm {
    type Error = sqlx::Error;
    fn try_from(r: VmRow) -> std::result::Result<Vm, sqlx::Error> {
        let decode = |e: std::num::TryFromIntError| sqlx::Error::Decode(Box::new(e));
        Ok(Vm {
            id: r.vm_id,
            spec: VmSpec {
                name: r.name,
                vcpus: r.vcpus.try_into().map_err(decode)?,
                memory_gib: r.memory_gib,
                disk_gib: r.disk_gib,
                dirty_rate_mbps: r.dirty_rate_mbps,
                site: r.site,
                allowed_sites: r.allowed_sites,
                allowed_regions: r.allowed_regions,
                pinned: r.pinned,
                protected: r.protected,
                group: r.group_name,
                priority: r.priority.try_into().map_err(decode)?,
                max_downtime_ms: r.max_downtime_ms.try_into().map_err(decode)?,
                driver: enum_from_text(r.driver)?,
                driver_spec: r.driver_spec,
                addresses: r.addresses,
                standby_sites: r.standby_sites,
            },
            standbys: r.standbys.0,
            measured_dirty_rate_mbps: r.measured_dirty_rate_mbps,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

const SELECT: &str = "select v.vm_id, v.name, v.vcpus, v.memory_gib, v.disk_gib, v.dirty_rate_mbps, \
    v.measured_dirty_rate_mbps, \
    s.name as site, \
    (select array_agg(x.name order by a.position) from vm_allowed_site a join site x on x.site_id = a.site_id \
     where a.vm_id = v.vm_id) as allowed_sites, \
    v.allowed_regions, v.pinned, v.protected, g.name as group_name, v.priority, v.max_downtime_ms, v.driver, v.driver_spec, \
    array(select d.address from vm_address d where d.vm_id = v.vm_id order by d.position) as addresses, \
    array(select x.name from vm_standby_site b join site x on x.site_id = b.site_id where b.vm_id = v.vm_id \
          order by b.position) as standby_sites, \
    coalesce((select json_agg(json_build_object('site', x.name, 'chosen_by', b.chosen_by, 'chosen_at', b.chosen_at, \
              'synced_at', b.synced_at, 'synced_bytes', b.synced_bytes, 'written_bytes', b.written_bytes, \
              'reported_at', b.reported_at) order by x.name) \
              from standby b join site x on x.site_id = b.site_id where b.vm_id = v.vm_id and b.site_id <> v.site_id), \
             '[]') as standbys, \
    v.created_at, v.updated_at \
    from vm v join site s on s.site_id = v.site_id left join vm_group g on g.group_id = v.group_id";

fn name_taken(spec: &VmSpec) -> impl Fn(&str) -> Option<String> + '_ {
    move |constraint| (constraint == "vm_name_key").then(|| format!("a VM named '{}' already exists", spec.name))
}

/// The ids a VM's references resolve to.
struct Refs {
    site: i64,
    group: Option<i64>,
    allowed_sites: Vec<i64>,
    standby_sites: Vec<i64>,
}

async fn resolve(tx: &mut Transaction<'_, Postgres>, spec: &VmSpec) -> Result<Refs> {
    let site = site_id_by_name(tx, "site", &spec.site).await?;
    let group = match &spec.group {
        None => None,
        Some(name) => Some(
            sqlx::query_scalar("select group_id from vm_group where name = $1")
                .bind(name)
                .fetch_optional(&mut **tx)
                .await?
                .ok_or_else(|| StoreError::UnknownReference {
                    field: "group".into(),
                    kind: "group",
                    name: name.clone(),
                })?,
        ),
    };
    let mut allowed_sites = Vec::new();
    for (i, name) in spec.allowed_sites.iter().flatten().enumerate() {
        allowed_sites.push(site_id_by_name(tx, &format!("allowed_sites[{i}]"), name).await?);
    }
    let mut standby_sites = Vec::new();
    for (i, name) in spec.standby_sites.iter().enumerate() {
        standby_sites.push(site_id_by_name(tx, &format!("standby_sites[{i}]"), name).await?);
    }
    Ok(Refs { site, group, allowed_sites, standby_sites })
}

/// Stores a VM's list of sites (`vm_allowed_site` or `vm_standby_site`), in order, in place of the one it had.
pub(super) async fn store_site_list(
    tx: &mut Transaction<'_, Postgres>,
    table: SiteList,
    vm_id: i64,
    sites: &[i64],
) -> Result<()> {
    let table = match table {
        SiteList::Allowed => "vm_allowed_site",
        SiteList::Standby => "vm_standby_site",
    };
    sqlx::query(&format!("delete from {table} where vm_id = $1")).bind(vm_id).execute(&mut **tx).await?;
    sqlx::query(&format!(
        "insert into {table} (vm_id, site_id, position) \
         select $1, site_id, (ord - 1)::smallint from unnest($2::bigint[]) with ordinality as t(site_id, ord)"
    ))
    .bind(vm_id)
    .bind(sites)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn insert(pool: &PgPool, spec: &Valid<VmSpec>) -> Result<Vm> {
    let mut tx = pool.begin().await?;
    let refs = resolve(&mut tx, spec).await?;
    let insert = sqlx::query_scalar(
        "insert into vm (name, vcpus, memory_gib, disk_gib, dirty_rate_mbps, site_id, allowed_regions, pinned, \
         group_id, priority, max_downtime_ms, driver, driver_spec, protected) \
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) returning vm_id",
    );
    let vm_id: i64 =
        bind_columns(insert, spec, &refs).fetch_one(&mut *tx).await.map_err(|e| on_constraint(e, name_taken(spec)))?;
    finish(tx, vm_id, &refs, &spec.addresses).await
}

pub async fn update(pool: &PgPool, id: i64, spec: &Valid<VmSpec>) -> Result<Vm> {
    let mut tx = pool.begin().await?;
    let refs = resolve(&mut tx, spec).await?;
    let update = sqlx::query_scalar(
        "update vm set name = $1, vcpus = $2, memory_gib = $3, disk_gib = $4, dirty_rate_mbps = $5, site_id = $6, \
         allowed_regions = $7, pinned = $8, group_id = $9, priority = $10, max_downtime_ms = $11, driver = $12, \
         driver_spec = $13, protected = $14 where vm_id = $15 returning vm_id",
    );
    let updated: Option<i64> = bind_columns(update, spec, &refs)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| on_constraint(e, name_taken(spec)))?;
    let vm_id = updated.ok_or_else(|| StoreError::NotFound(format!("VM {id}")))?;
    finish(tx, vm_id, &refs, &spec.addresses).await
}

type ScalarQuery<'q> = sqlx::query::QueryScalar<'q, Postgres, i64, sqlx::postgres::PgArguments>;

/// Binds the VM's columns as $1 to $14.
fn bind_columns<'q>(query: ScalarQuery<'q>, spec: &'q VmSpec, refs: &Refs) -> ScalarQuery<'q> {
    // Validation caps vcpus at 1024 and max_downtime_ms at an hour, well inside i32.
    query
        .bind(&spec.name)
        .bind(spec.vcpus as i32)
        .bind(spec.memory_gib)
        .bind(spec.disk_gib)
        .bind(spec.dirty_rate_mbps)
        .bind(refs.site)
        .bind(&spec.allowed_regions)
        .bind(spec.pinned)
        .bind(refs.group)
        .bind(i16::from(spec.priority))
        .bind(spec.max_downtime_ms as i32)
        .bind(enum_to_text(&spec.driver))
        .bind(&spec.driver_spec)
        .bind(spec.protected)
}

/// A VM's ordered lists of sites.
pub(super) enum SiteList {
    Allowed,
    Standby,
}

/// Stores the VM's addresses in place of those it had; one another VM holds is a conflict.
async fn store_addresses(tx: &mut Transaction<'_, Postgres>, vm_id: i64, addresses: &[String]) -> Result<()> {
    sqlx::query("delete from vm_address where vm_id = $1").bind(vm_id).execute(&mut **tx).await?;
    for (position, address) in addresses.iter().enumerate() {
        sqlx::query("insert into vm_address (address, vm_id, position) values ($1, $2, $3)")
            .bind(address)
            .bind(vm_id)
            .bind(position as i16)
            .execute(&mut **tx)
            .await
            .map_err(|e| {
                on_constraint(e, |c| {
                    (c == "vm_address_pkey").then(|| format!("address {address} belongs to another VM"))
                })
            })?;
    }
    Ok(())
}

/// Stores the allowed sites and addresses, reads the VM back and commits.
async fn finish(mut tx: Transaction<'_, Postgres>, vm_id: i64, refs: &Refs, addresses: &[String]) -> Result<Vm> {
    store_site_list(&mut tx, SiteList::Allowed, vm_id, &refs.allowed_sites).await?;
    store_addresses(&mut tx, vm_id, addresses).await?;
    super::standbys::name(&mut tx, vm_id, &refs.standby_sites).await?;
    let vm = get(&mut *tx, vm_id).await?;
    tx.commit().await?;
    Ok(vm)
}

pub async fn get(db: impl PgExecutor<'_>, id: i64) -> Result<Vm> {
    let sql = format!("{SELECT} where v.vm_id = $1");
    let row: Option<VmRow> = sqlx::query_as(&sql).bind(id).fetch_optional(db).await?;
    row.ok_or_else(|| StoreError::NotFound(format!("VM {id}")))?.try_into().map_err(Into::into)
}

/// Every VM, in id order.
pub async fn all(db: impl PgExecutor<'_>) -> Result<Vec<Vm>> {
    super::fetch_all::<VmRow, _>(db, &format!("{SELECT} order by v.vm_id")).await
}

pub async fn list(pool: &PgPool, page: PageRequest, filter: &VmFilter) -> Result<Page<Vm>> {
    let rows: Vec<VmRow> = ListQuery::new(SELECT, "v.vm_id", page)
        .filter("s.name", filter.site.as_deref())
        .filter("g.name", filter.group.as_deref())
        .filter("v.driver", filter.driver.as_ref().map(enum_to_text))
        .filter("v.pinned", filter.pinned)
        .fetch(pool)
        .await?;
    let vms = rows.into_iter().map(Vm::try_from).collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(page.page(vms, |v| v.id))
}

pub async fn delete(pool: &PgPool, id: i64) -> Result<()> {
    let done = sqlx::query("delete from vm where vm_id = $1").bind(id).execute(pool).await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("VM {id}")));
    }
    Ok(())
}

/// Per site id: VMs it hosts and the vCPUs they hold.
pub async fn load_by_site(db: impl PgExecutor<'_>) -> Result<HashMap<i64, (u64, u64)>> {
    let rows: Vec<(i64, i64, i64)> =
        sqlx::query_as("select site_id, count(*), coalesce(sum(vcpus), 0)::int8 from vm group by site_id")
            .fetch_all(db)
            .await?;
    Ok(rows.into_iter().map(|(site, vms, vcpus)| (site, (vms.max(0) as u64, vcpus.max(0) as u64))).collect())
}

/// Per VM id: what it holds (the shapes of the cost model).
pub async fn shapes(db: impl PgExecutor<'_>) -> Result<HashMap<i64, crate::domain::cost::VmShape>> {
    let rows: Vec<(i64, i32, f64)> = sqlx::query_as("select vm_id, vcpus, memory_gib from vm").fetch_all(db).await?;
    Ok(rows
        .into_iter()
        .map(|(vm, vcpus, memory_gib)| (vm, crate::domain::cost::VmShape { vcpus: vcpus.max(0) as u32, memory_gib }))
        .collect())
}
