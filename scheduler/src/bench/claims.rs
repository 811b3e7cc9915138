//! `heliotrope bench claims`: migration claims by concurrent executors
//! against one database, against one executor alone.

use std::time::Instant;

use clap::Args;
use serde_json::json;
use sqlx::PgPool;

use super::with_scratch_database;
use crate::config::Config;
use crate::domain::token::generate_secret;
use crate::{db, demo, synthetic};

#[derive(Args, Debug)]
pub struct ClaimsBenchArgs {
    /// Migrations claimed in each run.
    #[arg(long, default_value_t = 2000)]
    pub migrations: usize,
    /// Concurrent source executors in the measured run.
    #[arg(long, default_value_t = 8)]
    pub executors: usize,
}

/// Claim throughput: `executors` executors at one site claim `migrations`
/// scheduled migrations at once (each released as soon as it is claimed,
/// so that capacity never limits, to a destination with room for all),
/// against one executor claiming as many alone. Checks that every
/// migration was claimed, and none twice.
pub async fn claims(config: &Config, args: &ClaimsBenchArgs) -> anyhow::Result<()> {
    with_scratch_database(config, |pool| claims_on(pool, args)).await
}

async fn claims_on(pool: PgPool, args: &ClaimsBenchArgs) -> anyhow::Result<()> {
    demo::store_fleet(&pool, synthetic::inventory::fleet(0, 42)).await?;
    let sites: Vec<i64> =
        sqlx::query_scalar("select site_id from site order by site_id limit 2").fetch_all(&pool).await?;
    let (from, to) = (sites[0], sites[1]);
    db::tokens::ensure_admin(&pool, Some(&generate_secret())).await?;
    let token: i64 = sqlx::query_scalar("select min(token_id) from api_token").fetch_one(&pool).await?;
    sqlx::query(
        "insert into vm (name, vcpus, memory_gib, disk_gib, dirty_rate_mbps, site_id, priority, max_downtime_ms, driver) \
         select 'bench-' || g, 2, 4, 40, 10, $1, 0, 300, 'sim' from generate_series(1, $2) g",
    )
    .bind(from)
    .bind(args.migrations as i64)
    .execute(&pool)
    .await?;
    // Room at the destination never limits either (a claim waits for room).
    sqlx::query(
        "update site set capacity_vcpus = 100000000, capacity_memory_gib = 1e9, capacity_disk_gib = 1e12 \
         where site_id = $1",
    )
    .bind(to)
    .execute(&pool)
    .await?;
    let executor = |site: i64, n: usize| {
        sqlx::query_scalar::<_, i64>(
            "insert into executor (site_id, address, state, last_heartbeat, capacity, token_id) \
             values ($1, $2, 'online', now(), 64, $3) returning executor_id",
        )
        .bind(site)
        .bind(format!("bench-{site}-{n}:7070"))
        .bind(token)
    };
    executor(to, 0).fetch_one(&pool).await?;
    let mut sources = Vec::new();
    for n in 0..args.executors.max(1) {
        sources.push(executor(from, n).fetch_one(&pool).await?);
    }

    let baseline = claim_run(&pool, &sources[..1], from, to, token).await?;
    let measured = claim_run(&pool, &sources, from, to, token).await?;
    let doubled: i64 = sqlx::query_scalar(
        "select count(*) from (select job_id from migration_event where to_state = 'claimed' \
         group by job_id having count(*) > 1) twice",
    )
    .fetch_one(&pool)
    .await?;
    let rate = |(claims, s): (usize, f64)| claims as f64 / s;
    eprintln!(
        "{} migrations: 1 executor {:.0} claims/s; {} executors {:.0} claims/s; claimed twice: {doubled}",
        args.migrations,
        rate(baseline),
        args.executors,
        rate(measured)
    );
    println!(
        "{}",
        json!({
            "bench": "claims",
            "migrations": args.migrations,
            "executors": args.executors,
            "claims_per_s": rate(measured),
            "baseline_one_executor_claims_per_s": rate(baseline),
            "speedup": rate(measured) / rate(baseline),
            "claimed_twice": doubled,
        })
    );
    anyhow::ensure!(doubled == 0, "{doubled} migrations were claimed twice");
    Ok(())
}

/// A fresh plan's worth of scheduled migrations (one per bench VM), claimed
/// by `executors` concurrently until none is left; returns claims and seconds.
async fn claim_run(pool: &PgPool, executors: &[i64], from: i64, to: i64, token: i64) -> anyhow::Result<(usize, f64)> {
    let plan: i64 = sqlx::query_scalar(
        "insert into plan (status, request, horizon_start, currency, inputs, objective, baseline, moves, move_count, \
         solver, signals) values ('applied', '{}', now(), 'EUR', '{}', '{}', '{}', '[]', 0, '{}', '[]') \
         returning plan_id",
    )
    .fetch_one(pool)
    .await?;
    sqlx::query(
        "insert into migration_job (plan_id, vm_id, from_site_id, to_site_id, predicted_bytes, start_at, cap_mbps, state) \
         select $1, vm_id, $2, $3, 1e9, now(), 100, 'scheduled' from vm where name like 'bench-%'",
    )
    .bind(plan)
    .bind(from)
    .bind(to)
    .execute(pool)
    .await?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for &executor in executors {
        let pool = pool.clone();
        tasks.spawn(async move {
            let mut claimed = 0usize;
            while let Some(assignment) = db::dispatch::claim(&pool, executor, token).await? {
                let id = assignment.migration.id;
                db::migration_jobs::transition(
                    &pool,
                    id,
                    heliotrope_api_spec::MigrationState::Cancelled,
                    "bench",
                    "released",
                )
                .await?;
                claimed += 1;
            }
            Ok::<_, anyhow::Error>(claimed)
        });
    }
    let mut claimed = 0;
    while let Some(done) = tasks.join_next().await {
        claimed += done??;
    }
    let left: i64 = sqlx::query_scalar("select count(*) from migration_job where plan_id = $1 and state = 'scheduled'")
        .bind(plan)
        .fetch_one(pool)
        .await?;
    anyhow::ensure!(left == 0, "{claimed} migrations claimed, {left} left unclaimed");
    Ok((claimed, started.elapsed().as_secs_f64()))
}
