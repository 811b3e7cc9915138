//! What the migrations made so far saved, against the fleet having stayed
//! put: for every VM that moved, each hour after its first move is priced
//! where it ran and where it came from, with the cost model the planner
//! uses, and each migration's network energy and egress count against it.
//! Figures are per UTC day, for the dashboard and `GET /v1/savings`. A
//! day's figures depend on nothing after its end, so that a finished day
//! can be kept (see `db::savings`) rather than priced again.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, DurationRound, NaiveDate, Utc};

use super::cost::{energy_cost, power_kw, running_cost, Cost, SiteEnergy, SlotSignal, VmShape};
use super::ValidationError;

/// A finished migration.
#[derive(Debug, Clone, PartialEq)]
pub struct Relocation {
    pub vm: i64,
    /// Site indices.
    pub from: usize,
    pub to: usize,
    pub done_at: DateTime<Utc>,
    pub wire_bytes: f64,
    /// What the link charged per GB.
    pub egress_cost_per_gb: f64,
}

/// Where a VM that had moved before the priced range stood: the site it
/// left on its first move ever, and the site it was at when the range began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Whereabouts {
    pub origin: usize,
    pub at: usize,
}

/// A site's energy model and hourly signals (keyed by the start of the UTC hour).
#[derive(Debug, Clone)]
pub struct SiteHours {
    pub energy: SiteEnergy,
    pub signals: BTreeMap<DateTime<Utc>, SlotSignal>,
}

/// One UTC day's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Day {
    pub day: NaiveDate,
    pub saved: Cost,
    pub migrations: u64,
    pub vm_hours: u64,
}

/// Savings per UTC day from `from` (the start of a UTC day) to `to`, every
/// day present (zero when nothing moved). `relocations` are those finished
/// in the range, in any order; `before` says where the VMs that moved
/// earlier stood. VMs missing from `shapes` (deleted since) are skipped.
pub fn per_day(
    relocations: &[Relocation],
    before: &HashMap<i64, Whereabouts>,
    sites: &[SiteHours],
    shapes: &HashMap<i64, VmShape>,
    network_kwh_per_gb: f64,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<Day> {
    let mut days: BTreeMap<NaiveDate, Day> = (from.date_naive().iter_days())
        .take_while(|day| *day <= to.date_naive())
        .map(|day| (day, Day { day, saved: Cost::default(), migrations: 0, vm_hours: 0 }))
        .collect();
    let hour = |t: DateTime<Utc>| t.duration_trunc(Duration::hours(1)).unwrap_or(t);
    let mut by_vm: HashMap<i64, Vec<&Relocation>> = HashMap::new();
    for r in relocations.iter().filter(|r| r.done_at >= from && r.done_at < to) {
        by_vm.entry(r.vm).or_default().push(r);
        let signal = sites.get(r.from).and_then(|s| s.signals.get(&hour(r.done_at)));
        if let Some(d) = days.get_mut(&r.done_at.date_naive()) {
            d.migrations += 1;
            let gb = r.wire_bytes / 1e9;
            let network = signal.map_or(Cost::default(), |s| energy_cost(gb * network_kwh_per_gb, s));
            d.saved = d.saved - network - Cost { energy_cost: gb * r.egress_cost_per_gb, emissions_kg: 0.0 };
        }
    }
    for vm in before.keys() {
        by_vm.entry(*vm).or_default();
    }
    for (vm, mut moves) in by_vm {
        let Some(shape) = shapes.get(&vm) else { continue };
        moves.sort_by_key(|r| r.done_at);
        let (origin, mut here, mut at) = match (before.get(&vm), moves.first()) {
            (Some(earlier), _) => (earlier.origin, earlier.at, hour(from)),
            // Hours that start after the first move finished: the VM ran elsewhere for all of them.
            (None, Some(first)) => (first.from, first.from, hour(first.done_at) + Duration::hours(1)),
            (None, None) => continue,
        };
        let Some(home) = sites.get(origin) else { continue };
        let mut next = 0;
        while at < to {
            while next < moves.len() && moves[next].done_at <= at {
                here = moves[next].to;
                next += 1;
            }
            if here != origin {
                let priced = sites.get(here).and_then(|site| {
                    let now = site.signals.get(&at)?;
                    let then = home.signals.get(&at)?;
                    Some(
                        running_cost(power_kw(&home.energy, shape), 1.0, then)
                            - running_cost(power_kw(&site.energy, shape), 1.0, now),
                    )
                });
                if let (Some(saving), Some(d)) = (priced, days.get_mut(&at.date_naive())) {
                    d.saved = d.saved + saving;
                    d.vm_hours += 1;
                }
            }
            at += Duration::hours(1);
        }
    }
    days.into_values().collect()
}

/// The days asked of `GET /v1/savings`: 1 to 366, 14 by default.
pub fn parse_days(days: Option<u32>) -> Result<u32, ValidationError> {
    match days.unwrap_or(14) {
        days @ 1..=366 => Ok(days),
        _ => Err(ValidationError::new("days", "between 1 and 366")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(h: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_006_400, 0).unwrap().duration_trunc(Duration::days(1)).unwrap()
            + Duration::hours(h)
    }

    fn site(price: f64, carbon: f64) -> SiteHours {
        let energy = SiteEnergy { pue: 1.0, watts_per_vcpu: 100.0, watts_per_gib: 0.0 };
        let signals = (0..72).map(|h| (t(h), SlotSignal { price_per_mwh: price, carbon_g_per_kwh: carbon })).collect();
        SiteHours { energy, signals }
    }

    #[test]
    fn each_hour_after_a_move_saves_the_difference_and_the_move_costs_its_bytes() {
        let sites = [site(100.0, 500.0), site(50.0, 100.0)];
        let shapes = HashMap::from([(7, VmShape { vcpus: 10, memory_gib: 4.0 })]);
        // 1 kW; moved at 10:30 on day 0; 2 GB at 0.5 kWh/GB priced at the source, 0.02 per GB egress.
        let moved = Relocation {
            vm: 7,
            from: 0,
            to: 1,
            done_at: t(10) + Duration::minutes(30),
            wire_bytes: 2e9,
            egress_cost_per_gb: 0.02,
        };
        let days = per_day(&[moved], &HashMap::new(), &sites, &shapes, 0.5, t(0), t(48));
        assert_eq!(days.len(), 3, "day 0, day 1 and the first instant of day 2");
        // Day 0: hours 11..24 = 13 hours x (0.1 - 0.05) money, (0.5 - 0.1) kg; less 1 kWh at the source and 0.04 egress.
        assert_eq!(days[0].vm_hours, 13);
        assert_eq!(days[0].migrations, 1);
        assert!((days[0].saved.energy_cost - (13.0 * 0.05 - 0.1 - 0.04)).abs() < 1e-9, "{:?}", days[0]);
        assert!((days[0].saved.emissions_kg - (13.0 * 0.4 - 0.5)).abs() < 1e-9, "{:?}", days[0]);
        assert_eq!(days[1].vm_hours, 24);
        assert!((days[1].saved.energy_cost - 24.0 * 0.05).abs() < 1e-9);
        assert_eq!(days[2].vm_hours, 0);
    }

    #[test]
    fn a_vm_that_came_back_home_saves_nothing_more_and_unknown_hours_count_nothing() {
        let mut sites = vec![site(100.0, 500.0), site(50.0, 100.0)];
        sites[1].signals.remove(&t(5));
        let shapes = HashMap::from([(7, VmShape { vcpus: 10, memory_gib: 0.0 })]);
        let go = Relocation { vm: 7, from: 0, to: 1, done_at: t(2), wire_bytes: 0.0, egress_cost_per_gb: 0.0 };
        let back = Relocation { done_at: t(8), from: 1, to: 0, ..go.clone() };
        let days = per_day(&[back.clone(), go.clone()], &HashMap::new(), &sites, &shapes, 0.0, t(0), t(24));
        // Away for hours 3..8 (5 hours), one of them without signals.
        assert_eq!(days[0].vm_hours, 4);
        assert_eq!(days[0].migrations, 2);
        assert!((days[0].saved.energy_cost - 4.0 * 0.05).abs() < 1e-9, "{:?}", days[0]);
    }

    #[test]
    fn a_day_priced_alone_is_the_same_day_priced_in_a_longer_range() {
        let sites = [site(100.0, 500.0), site(50.0, 100.0), site(70.0, 300.0)];
        let shapes = HashMap::from([(7, VmShape { vcpus: 10, memory_gib: 0.0 })]);
        let go = Relocation { vm: 7, from: 0, to: 1, done_at: t(5), wire_bytes: 1e9, egress_cost_per_gb: 0.1 };
        let on = Relocation { done_at: t(30), from: 1, to: 2, ..go.clone() };
        let whole = per_day(&[go, on.clone()], &HashMap::new(), &sites, &shapes, 0.2, t(0), t(48));
        // Day 1 alone: the VM had left site 0 and stood at site 1 when the day began.
        let before = HashMap::from([(7, Whereabouts { origin: 0, at: 1 })]);
        let alone = per_day(&[on], &before, &sites, &shapes, 0.2, t(24), t(48));
        assert_eq!(alone[0], whole[1]);
        assert_eq!(alone[0].vm_hours, 24);
    }
}
