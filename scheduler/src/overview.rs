//! The fleet at a glance, for the dashboard: each site's load and grid now
//! (`GET /v1/overview`), and what the migrations made so far saved per day
//! (`GET /v1/savings`, priced by `domain::savings`).

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, Utc};
use heliotrope_api_spec::{DaySavings, Overview, PointKind, Savings, SignalPoint, SiteOverview, SiteState};
use sqlx::PgPool;
use tokio::sync::Semaphore;

use crate::config::PlannerConfig;
use crate::db::savings::KeptDay;
use crate::db::{self, StoreError};
use crate::domain::clock::Clock;
use crate::domain::cost::{SiteEnergy, SlotSignal};
use crate::domain::savings::{per_day, Relocation, SiteHours, Whereabouts};
use crate::domain::signals::hourly_pairs;

/// A site whose newest actual is older than this has a stale feed.
const STALE_AFTER: Duration = Duration::hours(2);

/// Every site with its VMs, migrations under way and current signals.
pub async fn overview(pool: &PgPool, now: DateTime<Utc>, silent_after: Duration) -> Result<Overview, StoreError> {
    let sites = db::sites::all(pool).await?;
    // Silence is told on the real clock, whatever the demo's says.
    let heard = db::executors::last_heard_by_site(pool).await?;
    let silent_before = Utc::now() - silent_after;
    let load = db::vms::load_by_site(pool).await?;
    let moving = db::migration_jobs::active_by_site(pool).await?;
    let mut current: HashMap<String, _> =
        db::signals::current(pool, now).await?.into_iter().map(|s| (s.site.clone(), s)).collect();
    let sites = sites
        .into_iter()
        .map(|site| {
            let (vms, vcpus_used) = load.get(&site.id).copied().unwrap_or_default();
            let (migrations_in, migrations_out) = moving.get(&site.id).copied().unwrap_or_default();
            let signals = current.remove(&site.spec.name);
            let (carbon, price) = signals.map_or((None, None), |s| (s.carbon, s.price));
            let fresh = |p: &Option<SignalPoint>| {
                p.as_ref().is_some_and(|p| p.kind == PointKind::Actual && p.timestamp >= now - STALE_AFTER)
            };
            let stale = !fresh(&carbon) || !fresh(&price);
            let silent_since =
                heard.get(&site.id).copied().filter(|&last| last < silent_before && site.spec.state != SiteState::Down);
            SiteOverview {
                silent_since,
                id: site.id,
                vms,
                vcpus_used,
                vcpus: u64::from(site.spec.capacity.vcpus),
                migrations_in,
                migrations_out,
                stale,
                carbon,
                price,
                name: site.spec.name,
                region: site.spec.region,
                latitude: site.spec.latitude,
                longitude: site.spec.longitude,
                state: site.spec.state,
            }
        })
        .collect();
    Ok(Overview { at: now, sites })
}

#[derive(Debug, thiserror::Error)]
pub enum SavingsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("pricing the savings failed")]
    Pricing(#[from] tokio::task::JoinError),
}

/// What the migrations that finished in the last `days` UTC days (today
/// included) saved, per day, against the moved VMs having stayed put.
/// Days are those of `clock` (the demo's accelerated one, or real time),
/// and so are the times migrations finished. Finished days are priced
/// once and kept; one pricing runs at a time per replica (`pricing`), off
/// the async runtime, and those waiting for it find the days it kept.
pub async fn savings(
    pool: &PgPool,
    config: &PlannerConfig,
    pricing: &Semaphore,
    days: u32,
    clock: &Clock,
) -> Result<Savings, SavingsError> {
    let now = clock.now();
    let today = now.date_naive();
    let first = today - chrono::Days::new(u64::from(days.max(1)) - 1);
    // Acquiring fails only on a closed semaphore, which this one never is.
    let _pricing = pricing.acquire().await;
    let mut known: BTreeMap<NaiveDate, KeptDay> = match today.pred_opt() {
        Some(yesterday) => db::savings::kept(pool, first, yesterday).await?,
        None => Vec::new(),
    }
    .into_iter()
    .map(|d| (d.figures.day, d))
    .collect();
    let midnight = |day: NaiveDate| day.and_time(NaiveTime::MIN).and_utc();
    // Each run of days not kept (today is never kept) is priced in one go.
    let mut run: Option<NaiveDate> = None;
    for day in first.iter_days().take_while(|d| *d <= today) {
        let unknown = !known.contains_key(&day);
        if unknown && run.is_none() {
            run = Some(day);
        }
        let ends = day == today || known.contains_key(&day.succ_opt().unwrap_or(day));
        if let (Some(start), true, true) = (run, unknown, ends) {
            let priced = price(pool, config, midnight(start), now.min(midnight(day) + Duration::days(1))).await?;
            let finished: Vec<KeptDay> = priced.iter().filter(|d| d.figures.day < today).cloned().collect();
            db::savings::keep(pool, &finished).await?;
            known.extend(priced.into_iter().map(|d| (d.figures.day, d)));
            run = None;
        }
    }
    let days: Vec<KeptDay> = known.into_values().filter(|d| d.figures.day >= first).collect();
    Ok(Savings {
        currency: days.iter().find_map(|d| d.currency.clone()).unwrap_or_else(|| "USD".into()),
        total_cost_saved: days.iter().map(|d| d.figures.cost_saved).sum(),
        total_kg_saved: days.iter().map(|d| d.figures.kg_saved).sum(),
        synthetic: days.iter().any(|d| d.synthetic),
        days: days.into_iter().map(|d| d.figures).collect(),
    })
}

/// Prices the days from `from` (the start of a UTC day) to `to`.
async fn price(
    pool: &PgPool,
    config: &PlannerConfig,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<KeptDay>, SavingsError> {
    let sites = db::sites::all(pool).await?;
    let mut currency = None;
    let mut synthetic = HashSet::new();
    let mut hours = Vec::with_capacity(sites.len());
    for site in &sites {
        let (carbon, price) = db::signals::hourly(pool, site.id, from, to).await?;
        synthetic
            .extend(carbon.iter().chain(&price).filter(|p| p.source == "synthetic").map(|p| p.timestamp.date_naive()));
        currency = currency.or_else(|| price.first().map(|p| p.unit.trim_end_matches("/MWh").to_owned()));
        let signals = hourly_pairs(&carbon, &price)
            .map(|(c, p)| (p.timestamp, SlotSignal { price_per_mwh: p.value, carbon_g_per_kwh: c.value }))
            .collect();
        hours.push(SiteHours { energy: SiteEnergy::of(&site.spec), signals });
    }
    let index: HashMap<i64, usize> = sites.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
    // Migrations record real time: read on the clock, through its runs.
    let timeline = db::clock::timeline(pool).await?;
    let real_from = timeline.real_at(from);
    let relocations: Vec<Relocation> = db::migration_jobs::finished_between(pool, real_from, timeline.real_at(to))
        .await?
        .into_iter()
        .filter_map(|f| {
            Some(Relocation {
                vm: f.vm_id,
                from: *index.get(&f.from_site_id)?,
                to: *index.get(&f.to_site_id)?,
                done_at: timeline.reading_at(f.done_at),
                wire_bytes: f.wire_bytes,
                egress_cost_per_gb: f.egress_cost_per_gb,
            })
        })
        .collect();
    let before: HashMap<i64, Whereabouts> = db::migration_jobs::whereabouts_before(pool, real_from)
        .await?
        .into_iter()
        .filter_map(|(vm, origin, at)| Some((vm, Whereabouts { origin: *index.get(&origin)?, at: *index.get(&at)? })))
        .collect();
    let shapes = db::vms::shapes(pool).await?;
    let network_kwh_per_gb = config.network_kwh_per_gb;
    // Hours of moved VMs times sites: seconds of work for a large fleet over a year, not for the runtime's threads.
    let days = tokio::task::spawn_blocking(move || {
        per_day(&relocations, &before, &hours, &shapes, network_kwh_per_gb, from, to)
    })
    .await?;
    Ok(days
        .into_iter()
        // A range that ends at midnight holds no part of the day that begins there.
        .filter(|d| d.day.and_time(NaiveTime::MIN).and_utc() < to)
        .map(|d| KeptDay {
            synthetic: synthetic.contains(&d.day),
            currency: currency.clone(),
            figures: DaySavings {
                day: d.day,
                cost_saved: d.saved.energy_cost,
                kg_saved: d.saved.emissions_kg,
                migrations: d.migrations,
                vm_hours: d.vm_hours,
            },
        })
        .collect())
}
