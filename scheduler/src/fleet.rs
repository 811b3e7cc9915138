//! The fleet at a glance, for the dashboard: each site's load and grid now
//! (`GET /v1/overview`), and what the migrations made so far saved per day
//! (`GET /v1/savings`, priced by `domain::savings`).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};
use heliotrope_api_spec::{DaySavings, Overview, PointKind, Resolution, Savings, Signal, SignalPoint, SiteOverview};
use sqlx::PgPool;

use crate::config::PlannerConfig;
use crate::db::{self, StoreError};
use crate::domain::cost::{SiteEnergy, SlotSignal};
use crate::domain::savings::{per_day, Relocation, SiteHours};

/// A site whose newest actual is older than this has a stale feed.
const STALE_AFTER: Duration = Duration::hours(2);

/// Every site with its VMs, migrations under way and current signals.
pub async fn overview(pool: &PgPool, now: DateTime<Utc>) -> Result<Overview, StoreError> {
    let sites = db::sites::all(pool).await?;
    let load = db::vms::load_by_site(pool).await?;
    let moving = db::migrations::active_by_site(pool).await?;
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
            SiteOverview {
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

/// What the migrations that finished in the last `days` UTC days (today
/// included) saved, per day, against the moved VMs having stayed put.
pub async fn savings(
    pool: &PgPool,
    config: &PlannerConfig,
    days: u32,
    now: DateTime<Utc>,
) -> Result<Savings, StoreError> {
    let from =
        (now.date_naive() - chrono::Days::new(u64::from(days.max(1)) - 1)).and_time(Default::default()).and_utc();
    let sites = db::sites::all(pool).await?;
    let mut currency = None;
    let mut synthetic = false;
    let mut hours = Vec::with_capacity(sites.len());
    for site in &sites {
        let series = |signal| db::signals::series(pool, site.id, signal, from, now, Resolution::Hourly);
        let (carbon, price) = (series(Signal::Carbon).await?, series(Signal::Price).await?);
        synthetic |= carbon.iter().chain(&price).any(|p| p.source == "synthetic");
        currency = currency.or_else(|| price.first().map(|p| p.unit.trim_end_matches("/MWh").to_owned()));
        let carbon: BTreeMap<_, _> = carbon.into_iter().map(|p| (p.timestamp, p.value)).collect();
        let signals = price
            .into_iter()
            .filter_map(|p| {
                let carbon_g_per_kwh = *carbon.get(&p.timestamp)?;
                Some((p.timestamp, SlotSignal { price_per_mwh: p.value, carbon_g_per_kwh }))
            })
            .collect();
        hours.push(SiteHours { energy: SiteEnergy::of(&site.spec), signals });
    }
    let index: HashMap<i64, usize> = sites.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
    let relocations: Vec<Relocation> = db::migrations::finished_between(pool, from, now)
        .await?
        .into_iter()
        .filter_map(|f| {
            Some(Relocation {
                vm: f.vm_id,
                from: *index.get(&f.from_site_id)?,
                to: *index.get(&f.to_site_id)?,
                done_at: f.done_at,
                wire_bytes: f.wire_bytes,
                egress_cost_per_gb: f.egress_cost_per_gb,
            })
        })
        .collect();
    let shapes = db::vms::shapes(pool).await?;
    let days: Vec<DaySavings> = per_day(&relocations, &hours, &shapes, config.network_kwh_per_gb, from, now)
        .into_iter()
        .map(|d| DaySavings {
            day: d.day,
            cost_saved: d.saved.energy_cost,
            kg_saved: d.saved.emissions_kg,
            migrations: d.migrations,
            vm_hours: d.vm_hours,
        })
        .collect();
    Ok(Savings {
        currency: currency.unwrap_or_else(|| "USD".into()),
        total_cost_saved: days.iter().map(|d| d.cost_saved).sum(),
        total_kg_saved: days.iter().map(|d| d.kg_saved).sum(),
        days,
        synthetic,
    })
}
