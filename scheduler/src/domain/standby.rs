//! Standby sites: where each VM's disk is kept warm (replicated in the
//! background), so that a migration there sends only what was written
//! since the last sync. The operator's named standbys always stand; beside
//! them each VM gets the destinations its plans favour, within each site's
//! replica budget (bytes) and each link's replication budget.
//!
//! A replica is a cache: a standby chosen wrongly costs disk space and
//! background bandwidth, never correctness.

use std::collections::HashMap;

use super::planner::{amounts, demand, horizon_weighted, PlanInput, PlanVm, Resources, GIB};

/// Who made a site a standby.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    Operator,
    Plans,
}

/// How many standbys, and how much room for them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budgets {
    /// Standbys per VM chosen from the plans (the operator's come on top).
    pub per_vm: usize,
    /// Share of each site's disk capacity that replicas may take.
    pub site_share: f64,
    /// Share of each link's usable bandwidth that replication may take.
    pub link_share: f64,
    /// A link's replicas must sync in full within this long at its replication budget.
    pub full_sync_s: f64,
}

/// One VM's standby, by index into the input's VMs and sites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub vm: usize,
    pub site: usize,
    pub chosen: Chosen,
}

/// A link's standbys must be able to sync in full within a day at its replication budget.
pub const FULL_SYNC_S: f64 = 86_400.0;

/// What each site has free beside the VMs that run there, by site index.
fn free_room(input: &PlanInput) -> Vec<[f64; 3]> {
    let mut free: Vec<[f64; 3]> = input.sites.iter().map(|s| amounts(&s.capacity)).collect();
    for vm in &input.vms {
        for (left, need) in free[vm.site].iter_mut().zip(demand(vm)) {
            *left -= need;
        }
    }
    free
}

/// Takes the room that protected VMs' standbys keep for them (`held`:
/// (VM, site) pairs) out of those sites' capacity, as far as it is free:
/// the plans leave it for the VMs to restart in if their sites are lost.
pub fn hold_room(input: &mut PlanInput, held: &[(usize, usize)]) {
    let mut free = free_room(input);
    for &(vm, site) in held.iter().filter(|&&(vm, site)| input.vms[vm].site != site) {
        let need = demand(&input.vms[vm]);
        let capacity = &mut input.sites[site].capacity;
        let mut left = amounts(capacity);
        for k in 0..3 {
            let taken = need[k].min(free[site][k].max(0.0));
            free[site][k] -= taken;
            left[k] -= taken;
        }
        *capacity = Resources { vcpus: left[0], memory_gib: left[1], disk_gib: left[2] };
    }
}

/// Chooses every VM's standbys. `operator` are the sites each VM's spec
/// names (by VM index); `favoured` the (VM, site) destinations of recent
/// and current plans, a pair once per plan that moved it there. Beside
/// those, a VM's candidates are the sites that would run it cheaper than
/// its own over the input's horizon (where the planner would move it if a
/// move paid), best first. Pinned VMs get only the operator's standbys;
/// `protected` VMs (by index) only standbys with room free for them
/// (beside what runs there and the room held for other protected VMs).
pub fn choose(
    input: &PlanInput,
    operator: &[Vec<usize>],
    favoured: &[(usize, usize)],
    protected: &[bool],
    budgets: Budgets,
) -> Vec<Choice> {
    let mut free = free_room(input);
    let is_protected = |vm: usize| protected.get(vm).copied().unwrap_or(false);
    let mut site_room: Vec<f64> = input.sites.iter().map(|s| s.capacity.disk_gib * GIB * budgets.site_share).collect();
    let mut link_room: Vec<f64> =
        input.links.iter().map(|l| l.usable_bytes_per_s * budgets.link_share * budgets.full_sync_s).collect();
    let link_of: HashMap<(usize, usize), usize> =
        input.links.iter().enumerate().map(|(i, l)| ((l.from, l.to), i)).collect();
    let mut plans: HashMap<(usize, usize), usize> = HashMap::new();
    for &pair in favoured {
        *plans.entry(pair).or_default() += 1;
    }
    let mut chosen = Vec::new();
    for (vm, sites) in operator.iter().enumerate() {
        let disk = input.vms[vm].disk_gib * GIB;
        for &site in sites.iter().filter(|&&s| s != input.vms[vm].site) {
            // Named by the operator: kept whatever the budgets say, and counted against them.
            site_room[site] -= disk;
            if is_protected(vm) {
                for (left, need) in free[site].iter_mut().zip(demand(&input.vms[vm])) {
                    *left -= need;
                }
            }
            if let Some(&link) = link_of.get(&(input.vms[vm].site, site)) {
                link_room[link] -= disk;
            }
            chosen.push(Choice { vm, site, chosen: Chosen::Operator });
        }
    }
    // Every candidate (VM, site, its link) with its score: plans that moved it there first, then the saving.
    let mut candidates: Vec<(usize, usize, usize, usize, f64)> = Vec::new();
    for (vm, v) in input.vms.iter().enumerate().filter(|(_, v)| !v.pinned) {
        let here = horizon_weighted(input, v, v.site);
        for (link, to) in input.links.iter().enumerate().filter(|(_, l)| l.from == v.site).map(|(i, l)| (i, l.to)) {
            if !allowed(v, to) || operator[vm].contains(&to) {
                continue;
            }
            let plans = plans.get(&(vm, to)).copied().unwrap_or(0);
            let saving = here - horizon_weighted(input, v, to);
            if plans > 0 || saving > 0.0 {
                candidates.push((vm, to, link, plans, saving));
            }
        }
    }
    candidates.sort_by(|a, b| b.3.cmp(&a.3).then(b.4.total_cmp(&a.4)).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1)));
    let mut per_vm = vec![0usize; input.vms.len()];
    for (vm, site, link, _, _) in candidates {
        let disk = input.vms[vm].disk_gib * GIB;
        if per_vm[vm] >= budgets.per_vm || site_room[site] < disk || link_room[link] < disk {
            continue;
        }
        if is_protected(vm) {
            let need = demand(&input.vms[vm]);
            if free[site].iter().zip(need).any(|(left, need)| *left < need - 1e-9) {
                continue;
            }
            for (left, need) in free[site].iter_mut().zip(need) {
                *left -= need;
            }
        }
        site_room[site] -= disk;
        link_room[link] -= disk;
        per_vm[vm] += 1;
        chosen.push(Choice { vm, site, chosen: Chosen::Plans });
    }
    chosen.sort_by_key(|c| (c.vm, c.site));
    chosen
}

fn allowed(vm: &PlanVm, site: usize) -> bool {
    vm.allowed.as_ref().is_none_or(|a| a.contains(&site))
}

/// The share of a replica's disk that is current: what it held at its last
/// sync less what was written since (nothing before a first full sync).
pub fn cached_share(synced: bool, synced_bytes: u64, written_bytes: u64) -> f64 {
    if !synced || synced_bytes == 0 {
        return 0.0;
    }
    (1.0 - written_bytes as f64 / synced_bytes as f64).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::planner::tests::two_sites;

    fn vm(name: &str, at: usize) -> PlanVm {
        PlanVm { disk_gib: 100.0, ..crate::domain::planner::tests::vm(name, at) }
    }

    const BUDGETS: Budgets = Budgets { per_vm: 1, site_share: 1.0, link_share: 1.0, full_sync_s: 86_400.0 };

    #[test]
    fn a_vm_gets_the_cheaper_site_and_the_operators_choice_stands() {
        // Site 1 is cheaper than site 0.
        let mut input = two_sites();
        input.vms = vec![vm("a", 0), vm("b", 1), PlanVm { pinned: true, ..vm("c", 0) }];
        let chosen = choose(&input, &[vec![], vec![0], vec![]], &[], &[], BUDGETS);
        assert_eq!(
            chosen,
            [
                Choice { vm: 0, site: 1, chosen: Chosen::Plans },
                // b runs at the cheaper site already: only the operator's standby.
                Choice { vm: 1, site: 0, chosen: Chosen::Operator },
            ]
        );
    }

    #[test]
    fn plans_first_and_budgets_hold() {
        let mut input = two_sites();
        // Room for one disk at site 1; the plans favour b.
        input.sites[1].capacity.disk_gib = 150.0;
        input.vms = vec![vm("a", 0), vm("b", 0)];
        let chosen = choose(&input, &[vec![], vec![]], &[(1, 1)], &[], BUDGETS);
        assert_eq!(chosen, [Choice { vm: 1, site: 1, chosen: Chosen::Plans }]);
        // The link's budget: a full sync of one 100 GiB disk takes longer than allowed.
        let slow = Budgets { full_sync_s: 1.0, ..BUDGETS };
        assert_eq!(choose(&input, &[vec![], vec![]], &[(1, 1)], &[], slow), []);
    }

    #[test]
    fn protected_vms_get_standbys_only_where_their_room_is_free_and_plans_leave_it() {
        let mut input = two_sites();
        input.vms = vec![vm("a", 0), vm("b", 0), vm("c", 1)];
        let vcpus = f64::from(input.vms[0].shape.vcpus);
        // Site 1 runs c and has room for one more VM.
        input.sites[1].capacity.vcpus = 2.0 * vcpus;
        let favoured = [(0, 1), (1, 1)];
        let budgets = Budgets { per_vm: 1, ..BUDGETS };
        let chosen = choose(&input, &[vec![], vec![], vec![]], &favoured, &[true, true, false], budgets);
        assert_eq!(chosen, [Choice { vm: 0, site: 1, chosen: Chosen::Plans }], "room for one protected VM");
        let unprotected = choose(&input, &[vec![], vec![], vec![]], &favoured, &[], budgets);
        assert_eq!(unprotected.len(), 2, "room is no object for the others");
        // The room a's standby keeps is no longer the plans' to fill; only what is free is held.
        hold_room(&mut input, &[(0, 1), (1, 1)]);
        assert_eq!(input.sites[1].capacity.vcpus, vcpus);
    }

    #[test]
    fn a_replica_is_as_fresh_as_what_was_written_since() {
        assert_eq!(cached_share(false, 100, 0), 0.0);
        assert_eq!(cached_share(true, 100, 10), 0.9);
        assert_eq!(cached_share(true, 100, 500), 0.0);
    }
}
