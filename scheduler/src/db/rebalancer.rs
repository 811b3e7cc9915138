//! The rebalancer's shared row: who leads, with what settings, and what
//! its runs did. Leading itself is `db::leader`'s advisory lock; the row
//! only tells the others.

use chrono::{DateTime, Utc};
use heliotrope_api_spec::{RebalanceOutcome, RebalancerStatus};
use sqlx::PgPool;

use super::{enum_from_text, enum_to_text, Result};

/// The leader's settings, as the others show them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RebalancerSettings {
    pub interval_s: f64,
    pub auto_apply: bool,
    pub auto_apply_min_saving: f64,
    pub clock_speed: f64,
}

/// Records `replica` as the leader (it holds the lock) and returns when the rebalancer last ran.
pub async fn record_leader(
    pool: &PgPool,
    replica: &str,
    settings: RebalancerSettings,
) -> Result<Option<DateTime<Utc>>> {
    Ok(sqlx::query_scalar(
        "insert into rebalancer (leader, leader_since, leader_seen_at, interval_s, auto_apply, \
             auto_apply_min_saving, clock_speed) values ($1, now(), now(), $2, $3, $4, $5) \
         on conflict (singleton) do update set leader = $1, leader_since = now(), leader_seen_at = now(), \
             interval_s = $2, auto_apply = $3, auto_apply_min_saving = $4, clock_speed = $5 \
         returning last_run_at",
    )
    .bind(replica)
    .bind(settings.interval_s)
    .bind(settings.auto_apply)
    .bind(settings.auto_apply_min_saving)
    .bind(settings.clock_speed)
    .fetch_one(pool)
    .await?)
}

/// The leader confirms it still leads; false if the row names another.
pub async fn seen(pool: &PgPool, replica: &str, next_run_at: DateTime<Utc>) -> Result<bool> {
    let rows = sqlx::query("update rebalancer set leader_seen_at = now(), next_run_at = $2 where leader = $1")
        .bind(replica)
        .bind(next_run_at)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(rows == 1)
}

/// What one run did.
#[derive(Debug, Clone, PartialEq)]
pub struct Rebalanced {
    /// What the rebalancer's clock read when it planned.
    pub clock: DateTime<Utc>,
    pub plan: Option<i64>,
    pub outcome: RebalanceOutcome,
    pub detail: String,
}

/// Records a run by `replica` and when the next is due.
pub async fn ran(pool: &PgPool, replica: &str, run: &Rebalanced, next_run_at: DateTime<Utc>) -> Result<()> {
    sqlx::query(
        "update rebalancer set last_run_at = now(), last_run_clock = $2, last_plan_id = $3, last_outcome = $4, \
             last_detail = $5, next_run_at = $6, leader_seen_at = now() where leader = $1",
    )
    .bind(replica)
    .bind(run.clock)
    .bind(run.plan)
    .bind(enum_to_text(&run.outcome))
    .bind(&run.detail)
    .bind(next_run_at)
    .execute(pool)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct Row {
    leader: String,
    leader_since: DateTime<Utc>,
    leader_seen_at: DateTime<Utc>,
    leader_alive: bool,
    interval_s: f64,
    auto_apply: bool,
    auto_apply_min_saving: f64,
    clock_speed: f64,
    last_run_at: Option<DateTime<Utc>>,
    last_run_clock: Option<DateTime<Utc>>,
    next_run_at: Option<DateTime<Utc>>,
    last_plan_id: Option<i64>,
    last_outcome: Option<String>,
    last_detail: Option<String>,
}

/// The rebalancer as the row shows it, answered by `replica`. The leader
/// is alive if it confirmed within `stale_after` (runs may take a while).
pub async fn status(
    pool: &PgPool,
    replica: &str,
    replica_rebalances: bool,
    stale_after: std::time::Duration,
) -> Result<RebalancerStatus> {
    let row: Option<Row> =
        sqlx::query_as("select *, leader_seen_at > now() - make_interval(secs => $1) as leader_alive from rebalancer")
            .bind(stale_after.as_secs_f64())
            .fetch_optional(pool)
            .await?;
    let mut status = RebalancerStatus {
        replica: replica.to_owned(),
        replica_rebalances,
        leader: None,
        leader_since: None,
        leader_seen_at: None,
        leader_alive: false,
        interval_s: None,
        auto_apply: None,
        auto_apply_min_saving: None,
        clock_speed: None,
        last_run_at: None,
        last_run_clock: None,
        next_run_at: None,
        last_plan: None,
        last_outcome: None,
        last_detail: None,
    };
    if let Some(row) = row {
        status.leader = Some(row.leader);
        status.leader_since = Some(row.leader_since);
        status.leader_seen_at = Some(row.leader_seen_at);
        status.leader_alive = row.leader_alive;
        status.interval_s = Some(row.interval_s);
        status.auto_apply = Some(row.auto_apply);
        status.auto_apply_min_saving = Some(row.auto_apply_min_saving);
        status.clock_speed = Some(row.clock_speed);
        status.last_run_at = row.last_run_at;
        status.last_run_clock = row.last_run_clock;
        status.next_run_at = row.next_run_at;
        status.last_plan = row.last_plan_id;
        status.last_outcome = row.last_outcome.map(enum_from_text).transpose()?;
        status.last_detail = row.last_detail;
    }
    Ok(status)
}
