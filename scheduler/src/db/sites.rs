//! Sites.

use chrono::{DateTime, Utc};
use heliotrope_api_spec::{Capacity, PowerModel, Site, SiteFilter, SiteSpec};
use sqlx::{PgExecutor, PgPool};

use super::{enum_from_text, enum_to_text, on_constraint, ListQuery, Result, StoreError};
use crate::domain::page::{Page, PageRequest};
use crate::domain::Valid;

#[derive(sqlx::FromRow)]
struct SiteRow {
    site_id: i64,
    name: String,
    region: String,
    latitude: f64,
    longitude: f64,
    timezone: String,
    capacity_vcpus: i32,
    capacity_memory_gib: f64,
    capacity_disk_gib: f64,
    pue: f64,
    watts_per_vcpu: f64,
    watts_per_gib: f64,
    state: String,
    uplink_mbps: Option<f64>,
    downlink_mbps: Option<f64>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<SiteRow> for Site {
    type Error = sqlx::Error;
    fn try_from(r: SiteRow) -> std::result::Result<Site, sqlx::Error> {
        Ok(Site {
            id: r.site_id,
            spec: SiteSpec {
                name: r.name,
                region: r.region,
                latitude: r.latitude,
                longitude: r.longitude,
                timezone: r.timezone,
                capacity: Capacity {
                    vcpus: u32::try_from(r.capacity_vcpus).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                    memory_gib: r.capacity_memory_gib,
                    disk_gib: r.capacity_disk_gib,
                },
                pue: r.pue,
                power_model: PowerModel { watts_per_vcpu: r.watts_per_vcpu, watts_per_gib: r.watts_per_gib },
                state: enum_from_text(r.state)?,
                uplink_mbps: r.uplink_mbps,
                downlink_mbps: r.downlink_mbps,
            },
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

const COLUMNS: &str = "site_id, name, region, latitude, longitude, timezone, capacity_vcpus, \
    capacity_memory_gib, capacity_disk_gib, pue, watts_per_vcpu, watts_per_gib, state, uplink_mbps, downlink_mbps, created_at, \
    updated_at";

fn name_taken(spec: &SiteSpec) -> impl Fn(&str) -> Option<String> + '_ {
    move |constraint| (constraint == "site_name_key").then(|| format!("a site named '{}' already exists", spec.name))
}

pub async fn insert(pool: &PgPool, spec: &Valid<SiteSpec>) -> Result<Site> {
    let sql = format!(
        "insert into site (name, region, latitude, longitude, timezone, capacity_vcpus, capacity_memory_gib, \
         capacity_disk_gib, pue, watts_per_vcpu, watts_per_gib, state, uplink_mbps, downlink_mbps) \
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) returning {COLUMNS}"
    );
    let row: SiteRow =
        bind_spec(sqlx::query_as(&sql), spec).fetch_one(pool).await.map_err(|e| on_constraint(e, name_taken(spec)))?;
    Ok(row.try_into()?)
}

pub async fn update(pool: &PgPool, id: i64, spec: &Valid<SiteSpec>) -> Result<Site> {
    let sql = format!(
        "update site set name = $1, region = $2, latitude = $3, longitude = $4, timezone = $5, capacity_vcpus = $6, \
         capacity_memory_gib = $7, capacity_disk_gib = $8, pue = $9, watts_per_vcpu = $10, watts_per_gib = $11, \
         state = $12, uplink_mbps = $13, downlink_mbps = $14 where site_id = $15 returning {COLUMNS}"
    );
    let row: Option<SiteRow> = bind_spec(sqlx::query_as(&sql), spec)
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(|e| on_constraint(e, name_taken(spec)))?;
    row.ok_or_else(|| StoreError::NotFound(format!("site {id}")))?.try_into().map_err(Into::into)
}

fn bind_spec<'q>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, SiteRow, sqlx::postgres::PgArguments>,
    spec: &'q SiteSpec,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, SiteRow, sqlx::postgres::PgArguments> {
    query
        .bind(&spec.name)
        .bind(&spec.region)
        .bind(spec.latitude)
        .bind(spec.longitude)
        .bind(&spec.timezone)
        // Validation caps vcpus at 1e8, well inside i32.
        .bind(spec.capacity.vcpus as i32)
        .bind(spec.capacity.memory_gib)
        .bind(spec.capacity.disk_gib)
        .bind(spec.pue)
        .bind(spec.power_model.watts_per_vcpu)
        .bind(spec.power_model.watts_per_gib)
        .bind(enum_to_text(&spec.state))
        .bind(spec.uplink_mbps)
        .bind(spec.downlink_mbps)
}

pub async fn get(pool: &PgPool, id: i64) -> Result<Site> {
    let sql = format!("select {COLUMNS} from site where site_id = $1");
    let row: Option<SiteRow> = sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?;
    row.ok_or_else(|| StoreError::NotFound(format!("site {id}")))?.try_into().map_err(Into::into)
}

/// Every site, in id order.
pub async fn all(db: impl PgExecutor<'_>) -> Result<Vec<Site>> {
    super::fetch_all::<SiteRow, _>(db, &format!("select {COLUMNS} from site order by site_id")).await
}

pub async fn list(pool: &PgPool, page: PageRequest, filter: &SiteFilter) -> Result<Page<Site>> {
    let rows: Vec<SiteRow> = ListQuery::new(&format!("select {COLUMNS} from site"), "site_id", page)
        .filter("region", filter.region.as_deref())
        .filter("state", filter.state.as_ref().map(enum_to_text))
        .fetch(pool)
        .await?;
    let sites = rows.into_iter().map(Site::try_from).collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(page.page(sites, |s| s.id))
}

/// Marks an active site `draining` (a down site stays down) and returns it.
pub async fn drain(pool: &PgPool, id: i64) -> Result<Site> {
    sqlx::query("update site set state = 'draining' where site_id = $1 and state = 'active'")
        .bind(id)
        .execute(pool)
        .await?;
    get(pool, id).await
}

/// Deletes a site and its links. Refused while VMs run there, VMs may run
/// only there, or executors serve it.
pub async fn delete(pool: &PgPool, id: i64) -> Result<()> {
    let done = sqlx::query("delete from site where site_id = $1").bind(id).execute(pool).await.map_err(|e| {
        on_constraint(e, |constraint| match constraint {
            "vm_site_id_fkey" => Some(format!("site {id} still hosts VMs; move or delete them first")),
            "vm_allowed_site_site_id_fkey" => Some(format!("site {id} is in some VM's allowed_sites")),
            "vm_standby_site_site_id_fkey" => Some(format!("site {id} is in some VM's standby_sites")),
            "executor_site_id_fkey" => Some(format!("site {id} still has executors registered")),
            _ => None,
        })
    })?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("site {id}")));
    }
    Ok(())
}
