//! VM groups (multi-site virtual clusters) and their placement policies.

use chrono::{DateTime, Utc};
use heliotrope_api_spec::{Group, GroupFilter, GroupPolicy, GroupSpec};
use sqlx::{PgExecutor, PgPool};

use super::{enum_to_text, on_constraint, ListQuery, Result, StoreError};
use crate::domain::page::{Page, PageRequest};
use crate::domain::Valid;

#[derive(sqlx::FromRow)]
struct GroupRow {
    group_id: i64,
    name: String,
    policy: String,
    min_sites: Option<i32>,
    max_per_site: Option<i32>,
    max_rtt_ms: Option<f64>,
    members: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<GroupRow> for Group {
    type Error = sqlx::Error;
    fn try_from(r: GroupRow) -> std::result::Result<Group, sqlx::Error> {
        let policy = match (r.policy.as_str(), r.min_sites, r.max_per_site, r.max_rtt_ms) {
            ("spread", Some(min_sites), Some(max_per_site), None) => {
                GroupPolicy::Spread { min_sites: min_sites.unsigned_abs(), max_per_site: max_per_site.unsigned_abs() }
            }
            ("colocate", None, None, Some(max_rtt_ms)) => GroupPolicy::Colocate { max_rtt_ms },
            (other, ..) => return Err(sqlx::Error::Decode(format!("group policy row '{other}' is malformed").into())),
        };
        Ok(Group {
            id: r.group_id,
            spec: GroupSpec { name: r.name, policy },
            members: r.members,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

const SELECT: &str = "select g.group_id, g.name, g.policy, g.min_sites, g.max_per_site, g.max_rtt_ms, \
    (select count(*) from vm where vm.group_id = g.group_id) as members, g.created_at, g.updated_at from vm_group g";

/// The policy as its columns: (kind, min_sites, max_per_site, max_rtt_ms).
fn policy_columns(policy: &GroupPolicy) -> (&'static str, Option<i32>, Option<i32>, Option<f64>) {
    // Validation caps both counts far inside i32.
    match *policy {
        GroupPolicy::Spread { min_sites, max_per_site } => {
            ("spread", Some(min_sites as i32), Some(max_per_site as i32), None)
        }
        GroupPolicy::Colocate { max_rtt_ms } => ("colocate", None, None, Some(max_rtt_ms)),
    }
}

fn name_taken(spec: &GroupSpec) -> impl Fn(&str) -> Option<String> + '_ {
    move |c| (c == "vm_group_name_key").then(|| format!("a group named '{}' already exists", spec.name))
}

pub async fn insert(pool: &PgPool, spec: &Valid<GroupSpec>) -> Result<Group> {
    let (kind, min_sites, max_per_site, max_rtt_ms) = policy_columns(&spec.policy);
    let id: i64 = sqlx::query_scalar(
        "insert into vm_group (name, policy, min_sites, max_per_site, max_rtt_ms) values ($1, $2, $3, $4, $5) \
         returning group_id",
    )
    .bind(&spec.name)
    .bind(kind)
    .bind(min_sites)
    .bind(max_per_site)
    .bind(max_rtt_ms)
    .fetch_one(pool)
    .await
    .map_err(|e| on_constraint(e, name_taken(spec)))?;
    get(pool, id).await
}

pub async fn update(pool: &PgPool, id: i64, spec: &Valid<GroupSpec>) -> Result<Group> {
    let (kind, min_sites, max_per_site, max_rtt_ms) = policy_columns(&spec.policy);
    let updated = sqlx::query(
        "update vm_group set name = $1, policy = $2, min_sites = $3, max_per_site = $4, max_rtt_ms = $5 \
         where group_id = $6",
    )
    .bind(&spec.name)
    .bind(kind)
    .bind(min_sites)
    .bind(max_per_site)
    .bind(max_rtt_ms)
    .bind(id)
    .execute(pool)
    .await
    .map_err(|e| on_constraint(e, name_taken(spec)))?;
    if updated.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("group {id}")));
    }
    get(pool, id).await
}

pub async fn get(db: impl PgExecutor<'_>, id: i64) -> Result<Group> {
    let sql = format!("{SELECT} where g.group_id = $1");
    let row: Option<GroupRow> = sqlx::query_as(&sql).bind(id).fetch_optional(db).await?;
    row.ok_or_else(|| StoreError::NotFound(format!("group {id}")))?.try_into().map_err(Into::into)
}

/// Every group, in id order.
pub async fn all(db: impl PgExecutor<'_>) -> Result<Vec<Group>> {
    super::fetch_all::<GroupRow, _>(db, &format!("{SELECT} order by g.group_id")).await
}

pub async fn list(pool: &PgPool, page: PageRequest, filter: &GroupFilter) -> Result<Page<Group>> {
    let rows: Vec<GroupRow> = ListQuery::new(SELECT, "g.group_id", page)
        .filter("g.policy", filter.policy.as_ref().map(enum_to_text))
        .fetch(pool)
        .await?;
    let groups = rows.into_iter().map(Group::try_from).collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(page.page(groups, |g| g.id))
}

/// Deletes a group; refused while VMs belong to it.
pub async fn delete(pool: &PgPool, id: i64) -> Result<()> {
    let done = sqlx::query("delete from vm_group where group_id = $1").bind(id).execute(pool).await.map_err(|e| {
        on_constraint(e, |c| {
            (c == "vm_group_id_fkey").then(|| format!("group {id} still has member VMs; remove them from it first"))
        })
    })?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("group {id}")));
    }
    Ok(())
}
