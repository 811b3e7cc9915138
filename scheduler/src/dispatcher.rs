//! The dispatcher: the one place that decides, while migrations run, which
//! of them start and at what cap. A plan's schedule is a prediction; the
//! dispatcher works from what is so now: every migration running or
//! waiting (all plans, evacuations), the links' and uplinks' usable
//! bandwidth, and the VMs' measured dirty rates. It runs
//! `domain::schedule::dispatch` (the schedule's own admission pass) and
//! writes its decisions: a waiting migration is admitted, at a cap, only
//! when its path has room for it (a claim takes only admitted ones), and
//! running migrations' caps follow (they reach the sources with their next
//! progress answers). Migrations never admitted by their bound expire.
//!
//! Any replica may dispatch: each dispatch is one transaction under an
//! advisory lock. Every replica dispatches every second, and at once after
//! a plan is applied or a migration ends.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::PlannerConfig;
use crate::db::admission::{self, Job};
use crate::db::StoreError;
use crate::domain::cost::usable_bytes_per_s;
use crate::domain::planner::GIB;
use crate::domain::schedule::{self, Dispatch, Link, Migration, Network};

/// How often each replica dispatches.
const EVERY: Duration = Duration::from_secs(1);
/// A cap changes only when it moves by more than this share (less is noise).
const CAP_CHANGE: f64 = 0.01;

/// What one dispatch did.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Dispatched {
    pub admitted: usize,
    pub recapped: usize,
    pub expired: u64,
}

/// Dispatches once.
pub async fn dispatch(pool: &PgPool, config: &PlannerConfig, now: DateTime<Utc>) -> Result<Dispatched, StoreError> {
    let mut tx = admission::begin(pool).await?;
    let expired = admission::expire(&mut tx).await?;
    let jobs = admission::jobs(&mut tx).await?;
    let (network, migrations, limited) = model(&jobs, config.wire_fraction);
    let running: Vec<bool> = limited.iter().map(|&j| jobs[j].running).collect();
    let ceiling: Vec<f64> =
        limited.iter().map(|&j| jobs[j].cap_limit_mbps.map_or(f64::INFINITY, |mbps| mbps * 1e6 / 8.0)).collect();
    let decided = schedule::dispatch(&network, &migrations, &running, &ceiling);
    let mut done = Dispatched { expired, ..Dispatched::default() };
    // Caps that fall are written first, so that the recorded caps on a link never sum
    // above it even between two of this dispatch's writes.
    let mut changes: Vec<(usize, f64)> = decided
        .into_iter()
        .enumerate()
        .filter_map(|(k, decision)| match decision {
            Dispatch::Run { cap_bytes_per_s } if cap_bytes_per_s > 0.0 => Some((k, cap_bytes_per_s * 8.0 / 1e6)),
            _ => None,
        })
        .filter(|&(k, cap_mbps)| {
            !running[k] || jobs[limited[k]].cap_mbps.is_none_or(|was| (cap_mbps - was).abs() > CAP_CHANGE * was)
        })
        .collect();
    // Falling (false) before rising or new (true).
    changes.sort_by_key(|&(k, cap_mbps)| !running[k] || jobs[limited[k]].cap_mbps.is_some_and(|was| cap_mbps > was));
    for (k, cap_mbps) in changes {
        let job = &jobs[limited[k]];
        if running[k] {
            admission::set_cap(&mut tx, job.job_id, cap_mbps).await?;
            done.recapped += 1;
        } else {
            admission::admit(&mut tx, job.job_id, job.state.0, Some(cap_mbps), now).await?;
            done.admitted += 1;
        }
    }
    // A migration whose link is gone has no path to share: nothing holds it back.
    for job in jobs.iter().filter(|j| j.link_mbps.is_none() && !j.running) {
        admission::admit(&mut tx, job.job_id, job.state.0, None, now).await?;
        done.admitted += 1;
    }
    tx.commit().await?;
    Ok(done)
}

/// The jobs that have a link, as the schedule's network and migrations
/// (bytes as they travel, by `wire_fraction`), and which job each migration is.
fn model(jobs: &[Job], wire_fraction: f64) -> (Network, Vec<Migration>, Vec<usize>) {
    let mut sites: Vec<i64> = Vec::new();
    let site = |id: i64, sites: &mut Vec<i64>| match sites.iter().position(|&s| s == id) {
        Some(at) => at,
        None => {
            sites.push(id);
            sites.len() - 1
        }
    };
    let mut network = Network { links: Vec::new(), uplink_bytes_per_s: Vec::new(), downlink_bytes_per_s: Vec::new() };
    let mut migrations = Vec::new();
    let mut limited = Vec::new();
    for (j, job) in jobs.iter().enumerate() {
        let (Some(link_mbps), Some(reserve)) = (job.link_mbps, job.link_reserve_pct) else { continue };
        let (from, to) = (site(job.from_site_id, &mut sites), site(job.to_site_id, &mut sites));
        network.uplink_bytes_per_s.resize(sites.len(), None);
        network.downlink_bytes_per_s.resize(sites.len(), None);
        network.uplink_bytes_per_s[from] = job.uplink_mbps.map(|mbps| mbps * 1e6 / 8.0);
        network.downlink_bytes_per_s[to] = job.downlink_mbps.map(|mbps| mbps * 1e6 / 8.0);
        let link = match network.links.iter().position(|l| (l.from, l.to) == (from, to)) {
            Some(at) => at,
            None => {
                let usable_bytes_per_s = usable_bytes_per_s(link_mbps, reserve);
                network.links.push(Link { from, to, usable_bytes_per_s });
                network.links.len() - 1
            }
        };
        migrations.push(Migration {
            name: job.job_id.to_string(),
            link,
            memory_bytes: job.memory_gib * GIB * wire_fraction,
            dirty_bytes_per_s: job.dirty_rate_mbps * 1e6 / 8.0 * wire_fraction,
            disk_bytes: job.disk_gib * GIB * wire_fraction,
            max_downtime_s: f64::from(job.max_downtime_ms) / 1000.0,
            // Evacuees first, by their VMs' priorities.
            priority: u8::try_from(job.priority.clamp(0, 100)).unwrap_or(0) + if job.evacuation { 101 } else { 0 },
        });
        limited.push(j);
    }
    (network, migrations, limited)
}

/// Dispatches at once, after something freed bandwidth or added work (a
/// migration ended, a plan was applied), rather than at the next turn; a
/// failure only waits for that turn.
pub async fn dispatch_now(pool: &PgPool, config: &PlannerConfig) {
    if let Err(error) = dispatch(pool, config, Utc::now()).await {
        tracing::warn!(%error, "dispatching failed; the next turn will");
    }
}

/// Dispatches every [`EVERY`] until `stop`.
pub async fn run(pool: PgPool, config: PlannerConfig, stop: CancellationToken) {
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => match dispatch(&pool, &config, Utc::now()).await {
                Ok(Dispatched { admitted: 0, expired: 0, recapped }) => {
                    tracing::debug!(recapped, "dispatched");
                }
                Ok(done) => tracing::info!(admitted = done.admitted, recapped = done.recapped,
                    expired = done.expired, "dispatched"),
                Err(error) => tracing::warn!(%error, "dispatching failed; trying again"),
            },
        }
    }
}
