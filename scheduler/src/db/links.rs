//! Directed WAN links between sites.

use chrono::{DateTime, Utc};
use heliotrope_api_spec::{Link, LinkFilter, LinkSpec};
use sqlx::{PgExecutor, PgPool, Postgres, Transaction};

use super::{on_constraint, site_id_by_name, ListQuery, Result, StoreError};
use crate::domain::page::{Page, PageRequest};
use crate::domain::Valid;

#[derive(sqlx::FromRow)]
struct LinkRow {
    link_id: i64,
    from_site: String,
    to_site: String,
    bandwidth_mbps: f64,
    rtt_ms: f64,
    background_reserve_pct: f64,
    egress_cost_per_gb: f64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<LinkRow> for Link {
    fn from(r: LinkRow) -> Link {
        Link {
            id: r.link_id,
            spec: LinkSpec {
                from_site: r.from_site,
                to_site: r.to_site,
                bandwidth_mbps: r.bandwidth_mbps,
                rtt_ms: r.rtt_ms,
                background_reserve_pct: r.background_reserve_pct,
                egress_cost_per_gb: r.egress_cost_per_gb,
                symmetric: false,
            },
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

const SELECT: &str = "select l.link_id, f.name as from_site, t.name as to_site, l.bandwidth_mbps, l.rtt_ms, \
    l.background_reserve_pct, l.egress_cost_per_gb, l.created_at, l.updated_at \
    from link l join site f on f.site_id = l.from_site_id join site t on t.site_id = l.to_site_id";

fn pair_taken(from: &str, to: &str) -> impl Fn(&str) -> Option<String> {
    let message = format!("a link from '{from}' to '{to}' already exists");
    move |constraint| (constraint == "link_from_site_id_to_site_id_key").then(|| message.clone())
}

/// Creates the link, and its reverse when `spec.symmetric` is set, in one transaction.
pub async fn insert(pool: &PgPool, spec: &Valid<LinkSpec>) -> Result<Vec<Link>> {
    let mut tx = pool.begin().await?;
    let from = (site_id_by_name(&mut tx, "from_site", &spec.from_site).await?, spec.from_site.as_str());
    let to = (site_id_by_name(&mut tx, "to_site", &spec.to_site).await?, spec.to_site.as_str());
    let mut ids = vec![insert_one(&mut tx, spec, from, to).await?];
    if spec.symmetric {
        ids.push(insert_one(&mut tx, spec, to, from).await?);
    }
    let sql = format!("{SELECT} where l.link_id = any($1) order by l.link_id");
    let rows: Vec<LinkRow> = sqlx::query_as(&sql).bind(&ids).fetch_all(&mut *tx).await?;
    tx.commit().await?;
    Ok(rows.into_iter().map(Link::from).collect())
}

/// Inserts one direction; `from` and `to` are (site id, site name).
async fn insert_one(
    tx: &mut Transaction<'_, Postgres>,
    spec: &LinkSpec,
    from: (i64, &str),
    to: (i64, &str),
) -> Result<i64> {
    sqlx::query_scalar(
        "insert into link (from_site_id, to_site_id, bandwidth_mbps, rtt_ms, background_reserve_pct, \
         egress_cost_per_gb) values ($1, $2, $3, $4, $5, $6) returning link_id",
    )
    .bind(from.0)
    .bind(to.0)
    .bind(spec.bandwidth_mbps)
    .bind(spec.rtt_ms)
    .bind(spec.background_reserve_pct)
    .bind(spec.egress_cost_per_gb)
    .fetch_one(&mut **tx)
    .await
    .map_err(|e| on_constraint(e, pair_taken(from.1, to.1)))
}

/// Replaces one link's ends and figures.
pub async fn update(pool: &PgPool, id: i64, spec: &Valid<LinkSpec>) -> Result<Link> {
    let mut tx = pool.begin().await?;
    let from = site_id_by_name(&mut tx, "from_site", &spec.from_site).await?;
    let to = site_id_by_name(&mut tx, "to_site", &spec.to_site).await?;
    let updated = sqlx::query(
        "update link set from_site_id = $1, to_site_id = $2, bandwidth_mbps = $3, rtt_ms = $4, \
         background_reserve_pct = $5, egress_cost_per_gb = $6 where link_id = $7",
    )
    .bind(from)
    .bind(to)
    .bind(spec.bandwidth_mbps)
    .bind(spec.rtt_ms)
    .bind(spec.background_reserve_pct)
    .bind(spec.egress_cost_per_gb)
    .bind(id)
    .execute(&mut *tx)
    .await
    .map_err(|e| on_constraint(e, pair_taken(&spec.from_site, &spec.to_site)))?;
    if updated.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("link {id}")));
    }
    let link = get(&mut *tx, id).await?;
    tx.commit().await?;
    Ok(link)
}

pub async fn get(db: impl PgExecutor<'_>, id: i64) -> Result<Link> {
    let sql = format!("{SELECT} where l.link_id = $1");
    let row: Option<LinkRow> = sqlx::query_as(&sql).bind(id).fetch_optional(db).await?;
    row.map(Link::from).ok_or_else(|| StoreError::NotFound(format!("link {id}")))
}

/// Every link, in id order.
pub async fn all(db: impl PgExecutor<'_>) -> Result<Vec<Link>> {
    let rows: Vec<LinkRow> = sqlx::query_as(&format!("{SELECT} order by l.link_id")).fetch_all(db).await?;
    Ok(rows.into_iter().map(Link::from).collect())
}

pub async fn list(pool: &PgPool, page: PageRequest, filter: &LinkFilter) -> Result<Page<Link>> {
    let rows: Vec<LinkRow> = ListQuery::new(SELECT, "l.link_id", page)
        .filter("f.name", filter.from_site.as_deref())
        .filter("t.name", filter.to_site.as_deref())
        .fetch(pool)
        .await?;
    Ok(page.page(rows.into_iter().map(Link::from).collect(), |l| l.id))
}

pub async fn delete(pool: &PgPool, id: i64) -> Result<()> {
    let done = sqlx::query("delete from link where link_id = $1").bind(id).execute(pool).await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("link {id}")));
    }
    Ok(())
}
