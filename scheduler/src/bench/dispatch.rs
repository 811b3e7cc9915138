//! `heliotrope bench dispatch`: the dispatcher running the WAN for real.
//! A scheduler (this process) and one `heliotrope-executor run` process
//! per site (sim driver, at full scale: a sim VM's bytes are the
//! inventory's) move `migrations` VMs over six links: three source sites,
//! each linked to two destinations. The moves are recorded waiting, as a
//! plan the schedule could not start would leave them, so that every
//! start and cap is the dispatcher's. Measured: the makespan from the
//! first admission to the last `done`; against it, the schedule's LP
//! lower bound and its fluid model's prediction on the same migrations
//! (with the bytes each actually put on the wire), and the most any link's
//! recorded caps ever summed to over its usable bandwidth.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use heliotrope_api_spec::Role;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::with_scratch_database;
use crate::config::Config;
use crate::domain::cost::usable_bytes_per_s;
use crate::domain::schedule::{self, Goal, Link, Migration, Network, Pacing};
use crate::domain::token::{generate_secret, secret_digest};
use crate::startup::{Application, Services};
use crate::{db, demo, synthetic};

#[derive(Args, Debug)]
pub struct DispatchBenchArgs {
    /// Migrations to run.
    #[arg(long, default_value_t = 200)]
    pub migrations: usize,
    /// Each VM's memory, MiB (its disk is 1 MiB).
    #[arg(long, default_value_t = 8)]
    pub memory_mib: u32,
    /// Each link's bandwidth, Mbit/s (20% of it is kept for other traffic).
    #[arg(long, default_value_t = 10.0)]
    pub link_mbps: f64,
    /// The executor binary (default: the one beside this binary).
    #[arg(long)]
    pub executor_bin: Option<std::path::PathBuf>,
}

/// Background reserve of every link, percent.
const RESERVE_PCT: f64 = 20.0;
/// Each VM's declared dirty rate, Mbit/s (a sim guest dirties its memory at this rate).
const DIRTY_MBPS: f64 = 0.5;

pub async fn dispatch(config: &Config, args: &DispatchBenchArgs) -> anyhow::Result<()> {
    let bin = demo::executors::binary(args.executor_bin.as_deref())?;
    with_scratch_database(config, |pool| dispatch_on(pool, args, bin)).await
}

async fn dispatch_on(pool: PgPool, args: &DispatchBenchArgs, bin: std::path::PathBuf) -> anyhow::Result<()> {
    // Five of the demo's sites, with room for everything: three sources, two destinations.
    demo::store_fleet(&pool, synthetic::inventory::fleet(0, 42)).await?;
    let sites: Vec<(i64, String)> =
        sqlx::query_as("select site_id, name from site order by site_id limit 5").fetch_all(&pool).await?;
    anyhow::ensure!(sites.len() == 5, "the demo fleet has fewer than 5 sites");
    sqlx::query("update site set capacity_vcpus = 100000, capacity_memory_gib = 1e6, capacity_disk_gib = 1e6")
        .execute(&pool)
        .await?;
    let (sources, destinations) = (&sites[..3], &sites[3..]);
    sqlx::query("update link set bandwidth_mbps = $1, background_reserve_pct = $2")
        .bind(args.link_mbps)
        .bind(RESERVE_PCT)
        .execute(&pool)
        .await?;
    let usable = usable_bytes_per_s(args.link_mbps, RESERVE_PCT);

    // The VMs, spread over the sources; each goes to one destination, alternately: six links.
    let gib = f64::from(args.memory_mib) / 1024.0;
    sqlx::query(
        "insert into vm (name, vcpus, memory_gib, disk_gib, dirty_rate_mbps, site_id, priority, max_downtime_ms, driver) \
         select 'bench-' || g, 1, $1, $2, $3, (array[$4, $5, $6]::bigint[])[1 + g % 3], 50, 300, 'sim' \
         from generate_series(0, $7 - 1) g",
    )
    .bind(gib)
    .bind(1.0 / 1024.0)
    .bind(DIRTY_MBPS)
    .bind(sources[0].0)
    .bind(sources[1].0)
    .bind(sources[2].0)
    .bind(args.migrations as i64)
    .execute(&pool)
    .await?;
    let plan: i64 = sqlx::query_scalar(
        "insert into plan (status, request, horizon_start, currency, inputs, objective, baseline, moves, move_count, \
                           solver, signals) \
         values ('applied', '{}', now(), 'EUR', '{}', '{}', '{}', '[]', $1, '{}', '{}') returning plan_id",
    )
    .bind(args.migrations as i32)
    .fetch_one(&pool)
    .await?;
    sqlx::query(
        "with recorded as ( \
           insert into migration_job (plan_id, vm_id, from_site_id, to_site_id, predicted_bytes, state) \
           select $1, v.vm_id, v.site_id, (array[$2, $3]::bigint[])[1 + (v.vm_id / 3) % 2], v.memory_gib * 2^30, 'pending' \
           from vm v returning job_id) \
         insert into migration_event (job_id, actor, to_state, detail) \
         select job_id, 'bench', 'pending', 'recorded waiting' from recorded",
    )
    .bind(plan)
    .bind(destinations[0].0)
    .bind(destinations[1].0)
    .execute(&pool)
    .await?;

    let app = Application::build(pool.clone(), "127.0.0.1:0".parse()?, Services::driven()).await?;
    let scheduler = format!("http://{}", app.local_addr());
    let stop = CancellationToken::new();
    let serving = tokio::spawn(app.run_until_stopped(stop.clone()));
    let mut tokens = Vec::new();
    for (_, site) in &sites {
        let secret = generate_secret();
        db::tokens::insert(&pool, &format!("bench-{site}"), Role::Executor, Some(site), &secret_digest(&secret))
            .await?;
        tokens.push((site.clone(), secret));
    }
    // Full scale: a sim VM's MiB are the inventory's.
    let data = tempfile::Builder::new().prefix("heliotrope-bench-dispatch-").tempdir()?;
    let executors = demo::executors::Executors::start(&bin, &scheduler, &tokens, 1024.0, data.path())?;
    let started = Instant::now();
    let total = args.migrations as i64;
    loop {
        let ended: i64 = sqlx::query_scalar(&format!(
            "select count(*) from migration_job where not ({})",
            db::migration_jobs::ACTIVE
        ))
        .fetch_one(&pool)
        .await?;
        if ended == total {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(3600),
            "{ended} of {total} migrations ended in an hour"
        );
        if started.elapsed().as_secs().is_multiple_of(30) {
            eprintln!("{ended} of {total} migrations ended after {:.0} s", started.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    drop(executors);
    stop.cancel();
    serving.await??;

    // Per migration: its link, admission, end, and bytes on the wire.
    type Row = (i64, i64, i64, String, Option<DateTime<Utc>>, Option<DateTime<Utc>>, Option<f64>);
    let rows: Vec<Row> = sqlx::query_as(
        "select j.job_id, j.from_site_id, j.to_site_id, j.state, j.admitted_at, \
                (select max(e.at) from migration_event e where e.job_id = j.job_id and e.to_state = 'done'), \
                (j.progress->>'wire_bytes')::float8 \
         from migration_job j order by j.job_id",
    )
    .fetch_all(&pool)
    .await?;
    let done = rows.iter().filter(|r| r.3 == "done").count();
    anyhow::ensure!(done == rows.len(), "{} of {} migrations did not end done", rows.len() - done, rows.len());
    let first = rows.iter().filter_map(|r| r.4).min().context("nothing was admitted")?;
    let last = rows.iter().filter_map(|r| r.5).max().context("nothing ended")?;
    let makespan_s = (last - first).as_seconds_f64();

    // The same migrations in the schedule's model, with the bytes each put on the wire.
    let mut links: Vec<(i64, i64)> = rows.iter().map(|r| (r.1, r.2)).collect();
    links.sort_unstable();
    links.dedup();
    let site_index: HashMap<i64, usize> = sites.iter().enumerate().map(|(i, (id, _))| (*id, i)).collect();
    let network = Network {
        links: links
            .iter()
            .map(|(f, t)| Link { from: site_index[f], to: site_index[t], usable_bytes_per_s: usable })
            .collect(),
        uplink_bytes_per_s: vec![None; sites.len()],
        downlink_bytes_per_s: vec![None; sites.len()],
    };
    let migrations: Vec<Migration> = rows
        .iter()
        .map(|r| Migration {
            name: r.0.to_string(),
            link: links.iter().position(|l| *l == (r.1, r.2)).unwrap_or(0),
            memory_bytes: r.6.unwrap_or(gib * 1.073_741_824e9),
            dirty_bytes_per_s: DIRTY_MBPS * 1e6 / 8.0,
            disk_bytes: 0.0,
            max_downtime_s: 0.3,
            priority: 50,
        })
        .collect();
    let predicted =
        schedule::predict(&network, &migrations, Pacing::Heliotrope(Goal::Deadline { deadline_s: f64::INFINITY }));
    let lower_bound_s = schedule::lower_bound(&network, &migrations, 60, predicted.makespan_s);

    // Every recorded cap, replayed per link: the most a link's holders ever summed to, over its usable bandwidth.
    let caps: Vec<(i64, DateTime<Utc>, f64)> =
        sqlx::query_as("select job_id, at, cap_mbps from migration_cap order by at").fetch_all(&pool).await?;
    let link_of: HashMap<i64, (i64, i64)> = rows.iter().map(|r| (r.0, (r.1, r.2))).collect();
    let ended: HashMap<i64, DateTime<Utc>> = rows.iter().filter_map(|r| Some((r.0, r.5?))).collect();
    let mut holding: HashMap<i64, f64> = HashMap::new();
    let mut oversubscription: f64 = 0.0;
    for (job, at, cap_mbps) in &caps {
        holding.retain(|other, _| ended.get(other).is_none_or(|end| end > at));
        holding.insert(*job, *cap_mbps);
        let on_link: f64 =
            holding.iter().filter(|(other, _)| link_of[other] == link_of[job]).map(|(_, mbps)| mbps * 1e6 / 8.0).sum();
        oversubscription = oversubscription.max(on_link / usable);
    }
    let wire: f64 = migrations.iter().map(|m| m.memory_bytes).sum();
    eprintln!(
        "{done} migrations over {} links in {makespan_s:.1} s ({:.1} MB on the wire); model {:.1} s, LP bound {lower_bound_s:.1} s",
        links.len(),
        wire / 1e6,
        predicted.makespan_s
    );
    println!(
        "{}",
        json!({
            "migrations": done,
            "links": links.len(),
            "makespan_s": round(makespan_s),
            "lower_bound_s": round(lower_bound_s),
            "makespan_over_lb": round(makespan_s / lower_bound_s),
            "max_link_oversubscription": round(oversubscription),
            "predicted_makespan_s": round(predicted.makespan_s),
            "predicted_over_actual": round(predicted.makespan_s / makespan_s),
            "wire_bytes": wire,
        })
    );
    Ok(())
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
