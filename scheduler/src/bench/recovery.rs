//! `heliotrope bench recovery`: a site lost for real. A scheduler (this
//! process) and one `heliotrope-executor run` process per site (sim
//! driver, at full scale) keep `--vms` VMs of one site replicated at
//! `--standby-sites` others, every `--replication-interval-s`; after the
//! replicas have synced a few times the lost site's executor is killed
//! (SIGKILL) and the site failed through the API. Measured: the recovery
//! time (the failure to the last VM running at its standby), the recovery
//! points' age at the failure (p50, p99) against the replication
//! interval, the VMs lost, and the VMs that ran twice: after the lost
//! site's executor comes back, the VMs that more than one executor says
//! it runs.

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use heliotrope_api_spec::Role;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::with_scratch_database;
use crate::config::{Config, PlannerConfig};
use crate::demo::executors::Executors;
use crate::domain::token::{generate_secret, secret_digest};
use crate::startup::{Application, Services};
use crate::{db, demo, synthetic};

#[derive(Args, Debug)]
pub struct RecoveryBenchArgs {
    /// VMs at the site that is lost.
    #[arg(long, default_value_t = 200)]
    pub vms: usize,
    /// Sites holding their replicas (each VM has one, in turn).
    #[arg(long, default_value_t = 3)]
    pub standby_sites: usize,
    /// How often each replica syncs, seconds.
    #[arg(long, default_value_t = 30.0)]
    pub replication_interval_s: f64,
    /// Each VM's memory, MiB.
    #[arg(long, default_value_t = 4)]
    pub memory_mib: u32,
    /// Each VM's disk, MiB.
    #[arg(long, default_value_t = 8)]
    pub disk_mib: u32,
    /// The executor binary (default: the one beside this binary).
    #[arg(long)]
    pub executor_bin: Option<std::path::PathBuf>,
}

/// Each VM's declared dirty rate, Mbit/s (its disk is written at a twentieth of it).
const DIRTY_MBPS: f64 = 2.0;

pub async fn recovery(config: &Config, args: &RecoveryBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!((1..=15).contains(&args.standby_sites), "--standby-sites: 1 to 15");
    anyhow::ensure!(args.vms >= 1, "--vms: at least 1");
    let bin = demo::executors::binary(args.executor_bin.as_deref())?;
    with_scratch_database(config, |pool| recovery_on(pool, args, bin)).await
}

/// Waits up to `within` for `done` (asked every half second), saying what it waits for.
async fn until<F, Fut>(what: &str, within: Duration, mut done: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let started = Instant::now();
    while !done().await? {
        anyhow::ensure!(started.elapsed() < within, "{what}: not within {} s", within.as_secs());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("{what}: {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

async fn count(pool: &PgPool, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
}

async fn recovery_on(pool: PgPool, args: &RecoveryBenchArgs, bin: std::path::PathBuf) -> anyhow::Result<()> {
    demo::store_fleet(&pool, synthetic::inventory::fleet(0, 42)).await?;
    let sites: Vec<(i64, String)> = sqlx::query_as("select site_id, name from site order by site_id limit $1")
        .bind(1 + args.standby_sites as i64)
        .fetch_all(&pool)
        .await?;
    anyhow::ensure!(sites.len() == 1 + args.standby_sites, "the demo fleet has too few sites");
    sqlx::query("update site set capacity_vcpus = 100000, capacity_memory_gib = 1e6, capacity_disk_gib = 1e6")
        .execute(&pool)
        .await?;
    sqlx::query("update link set bandwidth_mbps = 1000, background_reserve_pct = 20").execute(&pool).await?;
    let (lost, standbys) = (&sites[0], &sites[1..]);

    let planner = PlannerConfig { replication_interval_s: args.replication_interval_s, ..PlannerConfig::default() };
    let app =
        Application::build(pool.clone(), "127.0.0.1:0".parse()?, Services { planner, ..Services::driven() }).await?;
    let scheduler = format!("http://{}", app.local_addr());
    let stop = CancellationToken::new();
    let serving = tokio::spawn(app.run_until_stopped(stop.clone()));

    // The VMs go in as an operator puts them: through the API, each naming its standby.
    let operator = generate_secret();
    db::tokens::insert(&pool, "bench-operator", Role::Admin, None, &secret_digest(&operator)).await?;
    let http = reqwest::Client::new();
    for k in 0..args.vms {
        let vm = json!({
            "name": format!("vm-{k}"), "vcpus": 1, "memory_gib": f64::from(args.memory_mib) / 1024.0,
            "disk_gib": f64::from(args.disk_mib) / 1024.0, "dirty_rate_mbps": DIRTY_MBPS, "site": lost.1,
            "priority": k % 101, "standby_sites": [standbys[k % standbys.len()].1], "driver": "sim",
        });
        let answer = http.post(format!("{scheduler}/v1/vms")).bearer_auth(&operator).json(&vm).send().await?;
        anyhow::ensure!(answer.status().is_success(), "adding a VM: {}", answer.text().await?);
    }
    let mut tokens = Vec::new();
    for (_, site) in &sites {
        let secret = generate_secret();
        db::tokens::insert(&pool, &format!("bench-{site}"), Role::Executor, Some(site), &secret_digest(&secret))
            .await?;
        tokens.push((site.clone(), secret));
    }
    let data = tempfile::Builder::new().prefix("heliotrope-bench-recovery-").tempdir()?;
    let mut at_lost = Executors::start(&bin, &scheduler, &tokens[..1], 1024.0, data.path())?;
    let at_standbys = Executors::start(&bin, &scheduler, &tokens[1..], 1024.0, data.path())?;

    let vms = args.vms as i64;
    let hour = Duration::from_secs(3600);
    until("every replica synced", hour, || async {
        Ok(count(&pool, "select count(*) from standby where synced_at is not null").await? == vms)
    })
    .await?;
    until("the lost site's executor runs every VM", Duration::from_secs(120), || async {
        let runs =
            format!("select coalesce(max(cardinality(running_vms)), 0)::int8 from executor where site_id = {}", lost.0);
        Ok(count(&pool, &runs).await? == vms)
    })
    .await?;
    // Fail between syncs, as a site is lost at any time: after a few intervals.
    tokio::time::sleep(Duration::from_secs_f64(args.replication_interval_s * 2.5)).await;

    at_lost.kill();
    let failed = http
        .post(format!("{scheduler}/v1/sites/{}/fail", lost.0))
        .bearer_auth(&operator)
        .json(&json!({"reason": "bench recovery: its executor was killed"}))
        .send()
        .await?;
    anyhow::ensure!(failed.status().is_success(), "failing the site: {}", failed.text().await?);
    until("every VM running at a standby (or lost)", hour, || async {
        Ok(count(&pool, "select count(*) from recovery where state in ('running', 'failed', 'lost')").await? == vms)
    })
    .await?;

    type Row = (String, DateTime<Utc>, Option<DateTime<Utc>>, Option<DateTime<Utc>>, Option<DateTime<Utc>>);
    let rows: Vec<Row> =
        sqlx::query_as("select state, failed_at, recovery_point, started_at, running_at from recovery")
            .fetch_all(&pool)
            .await?;
    let failed_at = rows.first().context("no recovery recorded")?.1;
    let lost_vms = rows.iter().filter(|r| r.0 != "running").count();
    let last_running = rows.iter().filter_map(|r| r.4).max().context("nothing ran")?;
    let first_handed = rows.iter().filter_map(|r| r.3).min().context("nothing handed out")?;
    let rto_s = (last_running - failed_at).as_seconds_f64();
    let mut rpo: Vec<f64> = rows.iter().filter_map(|r| Some((failed_at - r.2?).as_seconds_f64())).collect();
    rpo.sort_by(f64::total_cmp);
    let percentile = |p: f64| rpo.get(((p * rpo.len() as f64).ceil() as usize).clamp(1, rpo.len()) - 1).copied();

    // The lost site comes back: its executor must start none of them (it quarantines its copies).
    let returned = Executors::start(&bin, &scheduler, &tokens[..1], 1024.0, data.path())?;
    until("the returning executor quarantined its copies", Duration::from_secs(120), || async {
        Ok(count(&pool, "select count(*) from recovery where quarantine = 'held'").await? == vms - lost_vms as i64)
    })
    .await?;
    // Every executor's next report, after the return.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let doubles = count(
        &pool,
        "select count(*) from (select vm from executor, unnest(running_vms) as vm group by vm having count(*) > 1) d",
    )
    .await?;
    let at_returned = count(
        &pool,
        &format!("select coalesce(sum(cardinality(running_vms)), 0)::int8 from executor where site_id = {}", lost.0),
    )
    .await?;
    drop(returned);
    drop(at_standbys);
    stop.cancel();
    serving.await??;

    let (p50, p99) = (percentile(0.5).unwrap_or(f64::NAN), percentile(0.99).unwrap_or(f64::NAN));
    eprintln!(
        "{} VMs: all running {rto_s:.1} s after the failure (the first restart handed out after {:.1} s: the \
         executors' lease); recovery points {p50:.1} s (p50) and {p99:.1} s (p99) old, interval {} s; {lost_vms} lost; \
         {doubles} ran twice; {at_returned} run at the returned site",
        args.vms,
        (first_handed - failed_at).as_seconds_f64(),
        args.replication_interval_s
    );
    println!(
        "{}",
        json!({
            "vms": args.vms,
            "standby_sites": args.standby_sites,
            "replication_interval_s": args.replication_interval_s,
            "rto_s": round(rto_s),
            "fence_wait_s": round((first_handed - failed_at).as_seconds_f64()),
            "rpo_s_p50": round(p50),
            "rpo_s_p99": round(p99),
            "rpo_p99_over_interval": round(p99 / args.replication_interval_s),
            "lost_vms": lost_vms,
            "doubles": doubles + at_returned,
        })
    );
    Ok(())
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
