//! Classes of interchangeable VMs and their choices. VMs alike in shape,
//! disk, dirty-rate bucket, downtime, current site and constraints (group
//! members excepted) form one class with an integer count per site, which
//! cuts the model by an order of magnitude at fleet scale and leaves its
//! optimum unchanged. Each class's choices are where it may run, priced
//! over the horizon, with the migration a move there takes.

use std::collections::HashMap;

use super::{Admission, PlanInput, PlanSite, PlanVm, EVACUATION_PENALTY, GIB};
use crate::domain::cost::{
    estimate_migration, migration_cost, power_kw, running_cost, Cost, MigrationCost, MigrationEstimate, MigrationInput,
    MigrationPrices, PreCopyInput, SlotSignal,
};

/// A move's link and what it takes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Migration {
    /// Index into `PlanInput::links`.
    pub(super) link: usize,
    pub(super) estimate: MigrationEstimate,
    pub(super) cost: MigrationCost,
    /// `cost`, weighted.
    pub(super) weighted: f64,
}

/// One place a class may run: a site, what running there costs over the
/// horizon, and (if it is a move) what moving costs.
#[derive(Debug, Clone)]
pub(super) struct Choice {
    pub(super) site: usize,
    /// Weighted cost over the horizon, migration included.
    pub(super) cost: f64,
    /// What the model adds to a move against churn (`min_net_saving`); 0 for staying.
    pub(super) hurdle: f64,
    pub(super) migration: Option<Migration>,
}

pub(super) struct Class {
    /// Highest dirty rate first: the members that stay are taken first, so
    /// those that move are the cheapest to move.
    pub(super) members: Vec<usize>,
    pub(super) options: Vec<Choice>,
}

/// What running `vm` at `site` over the horizon costs, weighted as the planner weighs it.
pub fn horizon_weighted(input: &PlanInput, vm: &PlanVm, site: usize) -> f64 {
    horizon_cost(&input.sites[site], vm, input.settings.slot_hours).weighted(input.settings.weights)
}

pub(super) fn horizon_cost(site: &PlanSite, vm: &PlanVm, slot_hours: f64) -> Cost {
    let kw = power_kw(&site.energy, &vm.shape);
    site.signals.iter().map(|signal| running_cost(kw, slot_hours, signal)).sum()
}

/// Dirty rates above 0 are rounded up to the next of 12.5, 25, 50, 100, ... Mbit/s:
/// VMs in one bucket share a class (at fleet scale the rates would
/// otherwise make every VM its own class), and rounding up keeps the
/// pre-copy estimate on the safe side.
pub const DIRTY_RATE_FLOOR_BYTES_PER_S: f64 = 12.5e6 / 8.0;

fn dirty_bucket(bytes_per_s: f64) -> f64 {
    if bytes_per_s <= 0.0 {
        return 0.0;
    }
    let steps = (bytes_per_s / DIRTY_RATE_FLOOR_BYTES_PER_S).max(1.0).log2().ceil();
    DIRTY_RATE_FLOOR_BYTES_PER_S * steps.exp2()
}

/// Groups interchangeable VMs and works out each class's options.
pub(super) fn classes(input: &PlanInput) -> Vec<Class> {
    let mut by_key: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, vm) in input.vms.iter().enumerate() {
        if vm.group.is_some() {
            by_key.insert(format!("member {i}"), vec![i]);
            continue;
        }
        let key = format!(
            "{}|{}|{}|{}|{}|{}|{:?}|{}|{:?}|{:?}",
            vm.shape.vcpus,
            vm.shape.memory_gib.to_bits(),
            vm.disk_gib.to_bits(),
            dirty_bucket(vm.dirty_bytes_per_s).to_bits(),
            vm.max_downtime_s.to_bits(),
            vm.site,
            vm.allowed,
            !may_move(input, vm),
            vm.cached,
            vm.memory_kept
        );
        by_key.entry(key).or_default().push(i);
    }
    let mut classes: Vec<Class> = by_key
        .into_values()
        .map(|mut members| {
            members.sort_by(|&a, &b| input.vms[b].dirty_bytes_per_s.total_cmp(&input.vms[a].dirty_bytes_per_s));
            let vm = &input.vms[members[0]];
            Class { options: options(input, vm), members }
        })
        .collect();
    classes.sort_by_key(|c| c.members.iter().min().copied());
    classes
}

/// Pinned VMs stay, and so do those that used up their moves for the day,
/// unless their site is down or being evacuated.
fn may_move(input: &PlanInput, vm: &PlanVm) -> bool {
    !vm.pinned && (vm.moves_today < input.settings.max_moves_per_day || input.sites[vm.site].admission.evacuating())
}

/// The objective's charge for `vm` staying where it is.
pub(super) fn staying_penalty(input: &PlanInput, vm: &PlanVm) -> f64 {
    match input.sites[vm.site].admission {
        Admission::Evacuating => EVACUATION_PENALTY * (1.0 + f64::from(vm.priority) / 100.0),
        _ => 0.0,
    }
}

fn options(input: &PlanInput, vm: &PlanVm) -> Vec<Choice> {
    let from = &input.sites[vm.site];
    let here = horizon_cost(from, vm, input.settings.slot_hours).weighted(input.settings.weights);
    let mut options = Vec::new();
    if from.admission != Admission::Down {
        options.push(Choice { site: vm.site, cost: here + staying_penalty(input, vm), hurdle: 0.0, migration: None });
    }
    if !may_move(input, vm) {
        return options;
    }
    for (index, link) in input.links.iter().enumerate().filter(|(_, l)| l.from == vm.site) {
        let to = &input.sites[link.to];
        if to.admission != Admission::Open || vm.allowed.as_ref().is_some_and(|a| !a.contains(&link.to)) {
            continue;
        }
        let migration = MigrationInput {
            memory: PreCopyInput {
                memory_bytes: vm.memory_to_send(link.to),
                dirty_bytes_per_s: dirty_bucket(vm.dirty_bytes_per_s),
                bandwidth_bytes_per_s: link.usable_bytes_per_s,
                max_downtime_s: vm.max_downtime_s,
                max_rounds: 30,
            },
            disk_bytes: vm.disk_gib * GIB,
            disk_cached_bytes: vm.cached_at(link.to),
            disk_write_bytes_per_s: 0.0,
            wire_fraction: input.settings.wire_fraction,
        };
        // A VM that cannot converge on this link has no move there.
        let Some(estimate) = estimate_migration(&migration) else { continue };
        let prices = MigrationPrices { egress_per_gb: link.egress_per_gb, ..input.settings.prices };
        let kw = power_kw(&to.energy, &vm.shape);
        let cost = migration_cost(&estimate, kw, &first_slot(from), &first_slot(to), &prices);
        let weighted = cost.weighted(input.settings.weights);
        let there = horizon_cost(to, vm, input.settings.slot_hours).weighted(input.settings.weights);
        options.push(Choice {
            site: link.to,
            cost: there + weighted,
            hurdle: input.settings.min_net_saving.max(0.0),
            migration: Some(Migration { link: index, estimate, cost, weighted }),
        });
    }
    options
}

/// The signals of the slot in which moves are made.
fn first_slot(site: &PlanSite) -> SlotSignal {
    site.signals.first().copied().unwrap_or(SlotSignal { price_per_mwh: 0.0, carbon_g_per_kwh: 0.0 })
}

#[cfg(test)]
mod tests {
    use crate::domain::planner::tests::{input, link, site, vm};
    use crate::domain::planner::{inputs, plan, Admission, GIB};

    #[test]
    fn a_site_that_kept_a_vms_memory_makes_its_return_cheap() {
        let sites = vec![site("A", 200.0, 0.0, 1000.0), site("B", 50.0, 0.0, 1000.0)];
        let mut back = vm("v", 0);
        back.shape.memory_gib = 16.0;
        let cold = plan(&input(sites.clone(), vec![back.clone()], vec![link(0, 1)])).unwrap();
        // B kept 12 of its 16 GiB when it left: the first round sends the other 4.
        inputs::left(&mut back, 1, 12.0 * GIB);
        let warm = plan(&input(sites, vec![back], vec![link(0, 1)])).unwrap();
        let (cold, warm) = (&cold.moves[0].estimate, &warm.moves[0].estimate);
        assert!((cold.wire_bytes - 16.0 * GIB).abs() < 1.0 && (warm.wire_bytes - 4.0 * GIB).abs() < 1.0, "{warm:?}");
        assert!((warm.duration_s - cold.duration_s / 4.0).abs() < 1e-9);
    }

    #[test]
    fn draining_and_down_sites() {
        let mut sites = vec![site("A", 50.0, 0.0, 1000.0), site("B", 10.0, 0.0, 1000.0), site("C", 300.0, 0.0, 1000.0)];
        sites[1].admission = Admission::Draining;
        sites[0].admission = Admission::Down;
        // Down A must empty; draining B takes nothing new; C is dear but open.
        let p = plan(&input(sites.clone(), vec![vm("v", 0)], vec![link(0, 1), link(0, 2)])).unwrap();
        assert_eq!(p.placement, [2]);
        let mut pinned = vm("p", 0);
        pinned.pinned = true;
        let err = plan(&input(sites, vec![pinned], vec![link(0, 2)])).unwrap_err();
        assert!(err.to_string().contains("VM p cannot stay at A"), "{err}");
    }
}
