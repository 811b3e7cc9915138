//! Turns the inventory and stored signals into a [`PlanInput`]: the one
//! translation from what operators declare to what the planner solves,
//! shared by the plans service and the planner benchmark.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use heliotrope_api_spec::{
    Basis, Driver, EvacuationRequest, GroupPolicy, GroupSpec, LinkSpec, PlanRequest, PointKind, SignalPoint, SiteSpec,
    SiteState, VmSpec,
};

use super::{Admission, GroupRule, PlanGroup, PlanInput, PlanLink, PlanSite, PlanVm, Resources, Settings, GIB};
use crate::domain::cost::{memory_kept_share, usable_bytes_per_s, SiteEnergy, SlotSignal, VmShape};
use crate::domain::inventory::check_range;
use crate::domain::{Valid, ValidationError};

/// Longest horizon a plan may look over, hours (a week).
pub const MAX_HORIZON_H: u32 = 168;

/// Checks a planning horizon: 1 to [`MAX_HORIZON_H`] hours.
pub fn check_horizon(field: &str, horizon_h: u32) -> Result<(), ValidationError> {
    if !(1..=MAX_HORIZON_H).contains(&horizon_h) {
        return Err(ValidationError::new(field, format!("must be 1 to {MAX_HORIZON_H} hours, got {horizon_h}")));
    }
    Ok(())
}

/// Checks a plan request: horizon 1 to 168 hours, a finite carbon price.
pub fn parse_request(request: PlanRequest) -> Result<Valid<PlanRequest>, ValidationError> {
    check_horizon("horizon_h", request.horizon_h)?;
    check_range("carbon_price_per_tonne", request.carbon_price_per_tonne, 0.0, 100_000.0)?;
    Ok(Valid(request))
}

/// Where a site's slot values came from, counted over the horizon.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Coverage {
    pub actual: u32,
    pub forecast: u32,
    /// Missing, so taken from the same hour on an earlier day.
    pub persistence: u32,
    /// Whether any value used is synthetic demo data.
    pub synthetic: bool,
}

/// How many days back persistence may look for the same hour.
pub const PERSISTENCE_DAYS: i64 = 7;

/// One value per hourly slot from `start`, from a site's hourly best-known
/// points (actuals over forecasts, newest forecast first, as the store
/// ranks them) covering `start - PERSISTENCE_DAYS` to the horizon's end.
/// A slot without a point takes the same hour of the nearest earlier day
/// that has one (persistence, slots already filled included).
pub fn slot_values(
    points: &[SignalPoint],
    start: DateTime<Utc>,
    slots: u32,
) -> Result<(Vec<f64>, Coverage), DateTime<Utc>> {
    let by_hour: HashMap<DateTime<Utc>, &SignalPoint> = points.iter().map(|p| (p.timestamp, p)).collect();
    let mut coverage = Coverage::default();
    let values = persist(slots as usize, |slot| {
        let point = by_hour.get(&(start + Duration::hours(slot)))?;
        coverage.synthetic |= point.basis == Basis::Synthetic;
        if slot >= 0 {
            match point.kind {
                PointKind::Actual => coverage.actual += 1,
                PointKind::Forecast => coverage.forecast += 1,
            }
        }
        Some(point.value)
    })
    .map_err(|slot| start + Duration::hours(slot as i64))?;
    coverage.persistence = slots - coverage.actual - coverage.forecast;
    Ok((values, coverage))
}

/// The persistence rule on its own: one value per slot, `known(slot)`
/// where there is one, else the same hour on the nearest earlier day
/// within [`PERSISTENCE_DAYS`] (slots already filled first, then
/// `known` of slots before the first). `Err` names the first slot left
/// without a value. The plans service and the simulator's persistence
/// forecast both fill with it.
pub fn persist<T: Copy>(slots: usize, mut known: impl FnMut(i64) -> Option<T>) -> Result<Vec<T>, usize> {
    let mut values: Vec<T> = Vec::with_capacity(slots);
    for slot in 0..slots {
        if let Some(value) = known(slot as i64) {
            values.push(value);
            continue;
        }
        let earlier = (1..=PERSISTENCE_DAYS).find_map(|day| {
            let back = slot as i64 - 24 * day;
            if back >= 0 {
                Some(values[back as usize])
            } else {
                known(back)
            }
        });
        values.push(earlier.ok_or(slot)?);
    }
    Ok(values)
}

/// Checks an evacuation request: a deadline of 1 s to 7 days, and target
/// site names (whether they exist is for the caller, who knows the sites).
/// The most target sites an evacuation may name (each VM's choices are copied from them).
pub const MAX_TARGET_SITES: usize = 256;

pub fn parse_evacuation(mut request: EvacuationRequest) -> Result<Valid<EvacuationRequest>, ValidationError> {
    check_range("deadline_s", request.deadline_s, 1.0, 7.0 * 86_400.0)?;
    if let Some(targets) = &mut request.target_sites {
        if targets.is_empty() {
            return Err(ValidationError::new("target_sites", "name at least one site, or leave it out"));
        }
        if targets.len() > MAX_TARGET_SITES {
            return Err(ValidationError::new("target_sites", format!("at most {MAX_TARGET_SITES} sites")));
        }
        for (i, name) in targets.iter().enumerate() {
            crate::domain::inventory::check_name(&format!("target_sites[{i}]"), name)?;
        }
        // A site named twice is one target.
        let mut seen = std::collections::HashSet::new();
        targets.retain(|name| seen.insert(name.clone()));
    }
    Ok(Valid(request))
}

/// Turns `input` into an evacuation of site `site`: it takes nothing new
/// and what it hosts should leave (what cannot, stays at a penalty), VMs
/// elsewhere stay put, and `targets` (site indices), if given, are the
/// only places its VMs may go.
pub fn evacuation(input: &mut PlanInput, site: usize, targets: Option<&[usize]>) {
    input.sites[site].admission = Admission::Evacuating;
    for vm in &mut input.vms {
        if vm.site != site {
            vm.pinned = true;
        } else if let Some(targets) = targets {
            let allowed: Vec<usize> = match &vm.allowed {
                Some(allowed) => targets.iter().copied().filter(|t| allowed.contains(t)).collect(),
                None => targets.to_vec(),
            };
            vm.allowed = Some(allowed);
        }
    }
}

/// A VM with a migration under way to site `to`: the plan counts it there,
/// pinned, for everything (its room, its running cost, its group's rules),
/// as that is where it will be. Counted at its source instead, a swap under
/// way (a plan that moved VMs out of a site to make room for others) would
/// leave the next plan no room, and a group between two of its moves (one
/// member arrived, the one that makes way not yet gone) no placement at all.
pub fn hold_room(input: &mut PlanInput, vm: usize, to: usize) {
    let v = &mut input.vms[vm];
    v.pinned = true;
    v.site = to;
}

/// Counts what sites kept of the memory of the VMs that left them:
/// `departures` are (VM index, site index, seconds ago), oldest first, and
/// a site holds what [`memory_kept_share`] says of the last departure from
/// it. Only VMs whose executors keep what leaves count.
pub fn departures(input: &mut PlanInput, departures: impl IntoIterator<Item = (usize, usize, f64)>) {
    for (vm, site, age_s) in departures {
        let v = &mut input.vms[vm];
        if v.keeps_memory {
            let kept = memory_kept_share(age_s) * v.shape.memory_gib * GIB;
            left(v, site, kept);
        }
    }
}

/// `vm` left `site`, which kept `bytes` of its memory (what it kept before goes).
pub fn left(vm: &mut PlanVm, site: usize, bytes: f64) {
    vm.memory_kept.retain(|&(s, _)| s != site);
    if bytes > 0.0 {
        vm.memory_kept.push((site, bytes));
    }
}

/// The inventory, as stored.
pub struct Inventory<'a> {
    pub sites: &'a [SiteSpec],
    pub links: &'a [LinkSpec],
    /// With the moves each made in the last 24 hours.
    pub vms: &'a [(VmSpec, u32)],
    pub groups: &'a [GroupSpec],
}

/// The planner's input: `signals` holds one slot signal list per site, in
/// the order of `inventory.sites`. References are by name and the store
/// keeps them valid; one that does not resolve is skipped.
pub fn plan_input(inventory: &Inventory, signals: Vec<Vec<SlotSignal>>, settings: Settings) -> PlanInput {
    let index: HashMap<&str, usize> = inventory.sites.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    let sites = inventory
        .sites
        .iter()
        .zip(signals)
        .map(|(s, signals)| PlanSite {
            name: s.name.clone(),
            capacity: Resources {
                vcpus: f64::from(s.capacity.vcpus),
                memory_gib: s.capacity.memory_gib,
                disk_gib: s.capacity.disk_gib,
            },
            energy: SiteEnergy::of(s),
            admission: match s.state {
                SiteState::Active => Admission::Open,
                SiteState::Draining => Admission::Draining,
                SiteState::Down => Admission::Down,
            },
            signals,
            uplink_bytes_per_s: s.uplink_mbps.map(|mbps| mbps * 1e6 / 8.0),
            downlink_bytes_per_s: s.downlink_mbps.map(|mbps| mbps * 1e6 / 8.0),
        })
        .collect();
    let groups: Vec<PlanGroup> = inventory
        .groups
        .iter()
        .map(|g| PlanGroup {
            name: g.name.clone(),
            rule: match g.policy {
                GroupPolicy::Spread { min_sites, max_per_site } => GroupRule::Spread { min_sites, max_per_site },
                GroupPolicy::Colocate { max_rtt_ms } => GroupRule::Colocate { max_rtt_ms },
            },
        })
        .collect();
    let vms = inventory
        .vms
        .iter()
        .filter_map(|(v, moves_today)| {
            let site = *index.get(v.site.as_str())?;
            // A VM may always stay where it runs; the allowed sites bound where it may go.
            let allowed = match (&v.allowed_sites, &v.allowed_regions) {
                (Some(names), _) => Some(names.iter().filter_map(|n| index.get(n.as_str()).copied()).collect()),
                (None, Some(regions)) => {
                    Some((0..inventory.sites.len()).filter(|&s| regions.contains(&inventory.sites[s].region)).collect())
                }
                (None, None) => None,
            }
            .map(|mut allowed: Vec<usize>| {
                if !allowed.contains(&site) {
                    allowed.push(site);
                }
                allowed.sort_unstable();
                allowed
            });
            Some(PlanVm {
                name: v.name.clone(),
                shape: VmShape { vcpus: v.vcpus, memory_gib: v.memory_gib },
                disk_gib: v.disk_gib,
                dirty_bytes_per_s: v.dirty_rate_mbps * 1e6 / 8.0,
                max_downtime_s: f64::from(v.max_downtime_ms) / 1000.0,
                site,
                allowed,
                pinned: v.pinned,
                group: v.group.as_ref().and_then(|g| groups.iter().position(|p| &p.name == g)),
                moves_today: *moves_today,
                priority: v.priority,
                // What standbys hold is the plans service's to add: the inventory does not know it.
                cached: Vec::new(),
                memory_kept: Vec::new(),
                keeps_memory: matches!(v.driver, Driver::Qemu | Driver::Libvirt),
            })
        })
        .collect();
    let links = inventory
        .links
        .iter()
        .filter_map(|l| {
            Some(PlanLink {
                from: *index.get(l.from_site.as_str())?,
                to: *index.get(l.to_site.as_str())?,
                usable_bytes_per_s: usable_bytes_per_s(l.bandwidth_mbps, l.background_reserve_pct),
                egress_per_gb: l.egress_cost_per_gb,
                rtt_ms: l.rtt_ms,
            })
        })
        .collect();
    PlanInput { sites, vms, links, groups, settings }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(at: DateTime<Utc>, value: f64, kind: PointKind) -> SignalPoint {
        SignalPoint {
            timestamp: at,
            value,
            unit: "EUR/MWh".into(),
            kind,
            issued_at: None,
            basis: heliotrope_api_spec::Basis::MarketDayAhead,
            source: "test".into(),
            resolution_s: 3600,
            estimated: false,
            samples: 1,
        }
    }

    #[test]
    fn missing_slots_fall_back_to_the_same_hour_earlier() {
        let start: DateTime<Utc> = "2026-06-02T00:00:00Z".parse().unwrap();
        let h = |n: i64| start + Duration::hours(n);
        // Yesterday's 02:00 and 03:00 are known; today 00:00 is actual, 01:00 forecast.
        let points = vec![
            point(h(0), 10.0, PointKind::Actual),
            point(h(1), 11.0, PointKind::Forecast),
            point(h(-22), 7.0, PointKind::Actual),
            point(h(-21), 8.0, PointKind::Actual),
        ];
        let (values, coverage) = slot_values(&points, start, 4).unwrap();
        assert_eq!(values, [10.0, 11.0, 7.0, 8.0]);
        assert_eq!(coverage, Coverage { actual: 1, forecast: 1, persistence: 2, synthetic: false });
        // Nothing for 04:00 in the week before: an error naming the hour.
        assert_eq!(slot_values(&points, start, 5), Err(h(4)));
        // Beyond a day, slots repeat the horizon's own first day.
        let day: Vec<SignalPoint> = (0..24).map(|n| point(h(n), n as f64, PointKind::Forecast)).collect();
        let (values, coverage) = slot_values(&day, start, 26).unwrap();
        assert_eq!(values[24..], [0.0, 1.0]);
        assert_eq!((coverage.forecast, coverage.persistence), (24, 2));
    }
}
