//! Migration jobs: one per move of an applied plan. Until dispatch runs
//! them they are only recorded, and they count against a VM's moves per day.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, Postgres, Transaction};

use super::Result;

/// Per VM id: jobs created since `since`, and whether one is still queued.
pub async fn recent(db: impl PgExecutor<'_>, since: DateTime<Utc>) -> Result<HashMap<i64, (u32, bool)>> {
    let rows: Vec<(i64, i64, bool)> = sqlx::query_as(
        "select vm_id, count(*) filter (where created_at >= $1), bool_or(state = 'queued') from migration_job \
         where created_at >= $1 or state = 'queued' group by vm_id",
    )
    .bind(since)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|(vm, count, open)| (vm, (u32::try_from(count).unwrap_or(u32::MAX), open))).collect())
}

/// A move to record: VM, source and destination site ids, predicted bytes.
pub struct NewJob {
    pub vm_id: i64,
    pub from_site_id: i64,
    pub to_site_id: i64,
    pub predicted_bytes: f64,
}

/// Records `jobs` for plan `plan_id`; returns how many.
pub async fn record(tx: &mut Transaction<'_, Postgres>, plan_id: i64, jobs: &[NewJob]) -> Result<u64> {
    let vm: Vec<i64> = jobs.iter().map(|j| j.vm_id).collect();
    let from: Vec<i64> = jobs.iter().map(|j| j.from_site_id).collect();
    let to: Vec<i64> = jobs.iter().map(|j| j.to_site_id).collect();
    let bytes: Vec<f64> = jobs.iter().map(|j| j.predicted_bytes).collect();
    let done = sqlx::query(
        "insert into migration_job (plan_id, vm_id, from_site_id, to_site_id, predicted_bytes) \
         select $1, * from unnest($2::bigint[], $3::bigint[], $4::bigint[], $5::float8[])",
    )
    .bind(plan_id)
    .bind(&vm)
    .bind(&from)
    .bind(&to)
    .bind(&bytes)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}
