//! `heliotrope demo`: the whole product on one machine, for a newcomer.
//!
//! Finds a database (the configured one, else a server on localhost:5432,
//! else a private throwaway cluster it starts itself), matches it with the
//! demo's state outside it (`state`), seeds the demo fleet when it starts
//! afresh, starts an executor per site and serves, rebalancing on an
//! accelerated clock that resumes where it stopped.

pub mod executors;
pub mod inventory;
pub mod local_pg;
pub mod profiles;
pub mod regions;
pub mod signals;
pub mod state;

use anyhow::Context;
use sqlx::PgPool;

use self::inventory::Fleet;
use crate::db;
use crate::domain::clock::Clock;
use crate::domain::inventory::{parse_group, parse_link, parse_site, parse_vm};

/// Stores a fleet: sites, then links and groups, then VMs (several at a time).
pub async fn store_fleet(pool: &PgPool, fleet: Fleet) -> anyhow::Result<()> {
    for site in fleet.sites {
        let name = site.name.clone();
        db::sites::insert(pool, &parse_site(site)?).await.with_context(|| format!("storing site {name}"))?;
    }
    for link in fleet.links {
        db::links::insert(pool, &parse_link(link)?).await.context("storing a link")?;
    }
    for group in fleet.groups {
        db::groups::insert(pool, &parse_group(group)?).await.context("storing a group")?;
    }
    const LANES: usize = 8;
    let mut lanes: Vec<Vec<_>> = (0..LANES).map(|_| Vec::new()).collect();
    for (i, vm) in fleet.vms.into_iter().enumerate() {
        lanes[i % LANES].push(parse_vm(vm)?);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for lane in lanes {
        let pool = pool.clone();
        tasks.spawn(async move {
            for vm in lane {
                db::vms::insert(&pool, &vm).await.with_context(|| format!("storing VM {}", vm.name))?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a seeding task panicked")??;
    }
    Ok(())
}

/// Stores synthetic actuals from `back` before `now` and two days of
/// synthetic forecasts for every site whose region has a profile, labelled
/// `synthetic` (basis and source). Returns how many points were stored.
pub async fn store_synthetic_signals(
    pool: &PgPool,
    now: chrono::DateTime<chrono::Utc>,
    back: chrono::Duration,
) -> anyhow::Result<u64> {
    let page = crate::domain::page::PageRequest { limit: 1000, after_id: 0 };
    let hours = u32::try_from((back + chrono::Duration::hours(48)).num_hours()).unwrap_or(48);
    let mut stored = 0;
    for site in db::sites::list(pool, page, &Default::default()).await?.items {
        let tz: chrono_tz::Tz = site.spec.timezone.parse().unwrap_or(chrono_tz::UTC);
        // One path per site: the actuals stored now agree with those stored an hour ago.
        let seed = site.id.unsigned_abs();
        let points = signals::synthetic_points(&site.spec.region, tz, now - back, hours, now, seed);
        stored += db::signals::upsert(pool, site.id, "synthetic", &points).await?;
    }
    Ok(stored)
}

/// Keeps the synthetic signals moving while the demo runs: every hour on
/// `clock` (simulated, in an accelerated demo), the hour just past becomes
/// an actual and a fresh two-day forecast is issued.
pub async fn replay_synthetic_signals(pool: PgPool, clock: Clock, stop: tokio_util::sync::CancellationToken) {
    loop {
        let into_hour = clock.now().timestamp().rem_euclid(3600) as u64;
        let next = clock.real(std::time::Duration::from_secs(3600 - into_hour + 5));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(next) => {}
        }
        match store_synthetic_signals(&pool, clock.now(), chrono::Duration::hours(1)).await {
            Ok(points) => tracing::info!(points, clock = %clock.now(), "replayed an hour of synthetic signals"),
            Err(error) => tracing::warn!(error = format!("{error:#}"), "cannot store synthetic signals"),
        }
    }
}

/// The regions a demo seeds when none are named.
pub const DEFAULT_SITES: [&str; 3] = ["GB", "DE-LU", "US-CAL-CISO"];

/// The regions named (zone ids, or `all`), in the order given.
pub fn regions_named(names: &[String]) -> anyhow::Result<Vec<regions::Region>> {
    if names.iter().any(|n| n == "all") {
        return Ok(regions::REGIONS.to_vec());
    }
    let mut picked = Vec::with_capacity(names.len());
    for name in names {
        let region = regions::REGIONS.iter().find(|r| r.zone == name.as_str()).with_context(|| {
            let known: Vec<&str> = regions::REGIONS.iter().map(|r| r.zone.as_ref()).collect();
            format!("no demo region '{name}': one of {} or all", known.join(", "))
        })?;
        if !picked.iter().any(|r: &regions::Region| r.zone == region.zone) {
            picked.push(region.clone());
        }
    }
    anyhow::ensure!(!picked.is_empty(), "name at least one region");
    Ok(picked)
}

/// Every site's name.
pub async fn site_names(pool: &PgPool) -> anyhow::Result<Vec<String>> {
    let page = crate::domain::page::PageRequest { limit: 1000, after_id: 0 };
    Ok(db::sites::list(pool, page, &Default::default()).await?.items.into_iter().map(|s| s.spec.name).collect())
}

/// Whether the inventory holds no site yet.
pub async fn is_empty(pool: &PgPool) -> anyhow::Result<bool> {
    let page = crate::domain::page::PageRequest { limit: 1, after_id: 0 };
    Ok(db::sites::list(pool, page, &Default::default()).await?.items.is_empty())
}
