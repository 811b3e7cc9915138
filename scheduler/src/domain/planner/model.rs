//! The model the solvers solve: a column per class and choice (how many
//! of the class go there) and per group and site (whether the group uses
//! the site), the objective over them, and the rows: every VM somewhere,
//! site capacities, link budgets, group policies. Also what VMs already
//! placed take from capacity and links, a starting point for a search, and
//! the name of the constraint that makes a model infeasible.

use good_lp::{variable, Expression, ProblemVariables, SolverModel, Variable, VariableDefinition};

use super::classes::Class;
use super::{GroupRule, PlanInput, PlanVm, Resources};

/// Bytes a link may carry in the first slot.
pub(super) fn link_budget(input: &PlanInput, link: usize) -> f64 {
    input.links[link].usable_bytes_per_s * input.settings.slot_hours * 3600.0
}

/// What VMs already placed take: resources per site, bytes per link.
pub(super) struct Taken {
    pub(super) load: Vec<[f64; 3]>,
    pub(super) link_bytes: Vec<f64>,
}

impl Taken {
    pub(super) fn none(input: &PlanInput) -> Taken {
        Taken { load: vec![[0.0; 3]; input.sites.len()], link_bytes: vec![0.0; input.links.len()] }
    }

    /// What `counts` (VMs per class and choice) take.
    pub(super) fn by(input: &PlanInput, classes: &[Class], counts: &[Vec<usize>]) -> Taken {
        let mut taken = Taken::none(input);
        for (class, counts) in classes.iter().zip(counts) {
            let need = demand(&input.vms[class.members[0]]);
            for (choice, &count) in class.options.iter().zip(counts) {
                let n = count as f64;
                taken.load[choice.site].iter_mut().zip(need).for_each(|(l, d)| *l += d * n);
                if let Some(m) = choice.migration {
                    taken.link_bytes[m.link] += m.estimate.wire_bytes * n;
                }
            }
        }
        taken
    }
}

/// Resource amounts in a fixed order: vCPUs, memory (GiB), disk (GiB).
const RESOURCE_NAMES: [(&str, &str); 3] = [("vcpus", ""), ("memory", " GiB"), ("disk", " GiB")];

/// A site's capacity or a VM's demand: vCPUs, memory GiB, disk GiB.
pub(crate) fn amounts(r: &Resources) -> [f64; 3] {
    [r.vcpus, r.memory_gib, r.disk_gib]
}

pub(crate) fn demand(vm: &PlanVm) -> [f64; 3] {
    amounts(&Resources { vcpus: f64::from(vm.shape.vcpus), memory_gib: vm.shape.memory_gib, disk_gib: vm.disk_gib })
}

/// The columns of a model placing `counts[k]` members of each class k,
/// and its objective over them (churn charges included).
pub(super) struct Columns {
    pub(super) vars: ProblemVariables,
    /// Per class and choice; none for a class with nothing to place.
    pub(super) columns: Vec<Vec<Variable>>,
    /// Per group and site: whether the group uses the site.
    pub(super) group_uses: Vec<Vec<Variable>>,
    pub(super) objective: Expression,
    /// How many columns in all.
    pub(super) variables: usize,
}

impl Columns {
    /// Integer counts and binary indicators if `integer`, else their relaxation.
    pub(super) fn new(input: &PlanInput, classes: &[Class], counts: &[f64], integer: bool) -> Columns {
        let column = |n: f64| if integer { variable().integer().min(0).max(n) } else { variable().min(0) };
        let mut vars = ProblemVariables::new();
        let columns: Vec<Vec<Variable>> = classes
            .iter()
            .zip(counts)
            .map(|(c, &n)| if n > 0.0 { c.options.iter().map(|_| vars.add(column(n))).collect() } else { Vec::new() })
            .collect();
        // Per group and site: whether the group uses the site.
        let indicator: fn() -> VariableDefinition =
            if integer { || variable().binary() } else { || variable().min(0).max(1) };
        let group_uses: Vec<Vec<Variable>> =
            input.groups.iter().map(|_| (0..input.sites.len()).map(|_| vars.add(indicator())).collect()).collect();
        let variables = columns.iter().map(Vec::len).sum::<usize>() + group_uses.iter().map(Vec::len).sum::<usize>();
        let mut objective = Expression::with_capacity(variables);
        for (class, cols) in classes.iter().zip(&columns) {
            for (choice, &col) in class.options.iter().zip(cols) {
                objective.add_mul(choice.cost + choice.hurdle, col);
            }
        }
        Columns { vars, columns, group_uses, objective, variables }
    }
}

/// Column values for a placement given as counts per class and choice.
pub(super) fn initial_solution(
    input: &PlanInput,
    classes: &[Class],
    columns: &[Vec<Variable>],
    group_uses: &[Vec<Variable>],
    counts: &[Vec<usize>],
) -> Vec<(Variable, f64)> {
    let mut used = vec![vec![0.0; input.sites.len()]; input.groups.len()];
    let mut values = Vec::new();
    for ((class, cols), counts) in classes.iter().zip(columns).zip(counts) {
        for ((choice, &col), &n) in class.options.iter().zip(cols).zip(counts) {
            values.push((col, n as f64));
            if let (Some(g), true) = (input.vms[class.members[0]].group, n > 0) {
                used[g][choice.site] = 1.0;
            }
        }
    }
    for (vars, used) in group_uses.iter().zip(used) {
        values.extend(vars.iter().copied().zip(used));
    }
    values
}

/// Adds the constraints; returns how many rows.
pub(super) fn constrain<M: SolverModel>(
    model: &mut M,
    input: &PlanInput,
    classes: &[Class],
    counts: &[f64],
    taken: &Taken,
    columns: &[Vec<Variable>],
    group_uses: &[Vec<Variable>],
) -> usize {
    let mut rows = 0;
    // Every VM is somewhere; one pass gathers site loads and link bytes.
    let mut load: Vec<[Expression; 3]> = (0..input.sites.len()).map(|_| Default::default()).collect();
    let mut bytes: Vec<Expression> = vec![Expression::default(); input.links.len()];
    for ((class, cols), &n) in classes.iter().zip(columns).zip(counts) {
        if cols.is_empty() {
            continue;
        }
        let mut all = Expression::with_capacity(cols.len());
        let need = demand(&input.vms[class.members[0]]);
        for (choice, &col) in class.options.iter().zip(cols) {
            all.add_mul(1.0, col);
            load[choice.site].iter_mut().zip(need).for_each(|(row, d)| row.add_mul(d, col));
            if let Some(m) = choice.migration {
                bytes[m.link].add_mul(m.estimate.wire_bytes, col);
            }
        }
        model.add_constraint(all.eq(n));
        rows += 1;
    }
    for ((site, rows_at), used) in input.sites.iter().zip(load).zip(&taken.load) {
        for ((row, capacity), used) in rows_at.into_iter().zip(amounts(&site.capacity)).zip(used) {
            model.add_constraint(row.leq((capacity - used).max(0.0)));
            rows += 1;
        }
    }
    for (l, (row, used)) in bytes.into_iter().zip(&taken.link_bytes).enumerate() {
        model.add_constraint(row.leq((link_budget(input, l) - used).max(0.0)));
        rows += 1;
    }
    // Group policies, over each group's members (individual classes) and a
    // "the group uses site s" indicator per site.
    for (g, group) in input.groups.iter().enumerate() {
        let members: Vec<(&Class, &Vec<Variable>)> = classes
            .iter()
            .zip(columns)
            .filter(|(c, cols)| !cols.is_empty() && input.vms[c.members[0]].group == Some(g))
            .collect();
        if members.is_empty() {
            continue;
        }
        let at = |s: usize| {
            let mut here = Expression::default();
            for (class, cols) in &members {
                for (choice, &col) in class.options.iter().zip(cols.iter()) {
                    if choice.site == s {
                        here.add_mul(1.0, col);
                    }
                }
            }
            here
        };
        let uses = &group_uses[g];
        match group.rule {
            GroupRule::Spread { min_sites, max_per_site } => {
                let mut spread = Expression::default();
                for (s, &used) in uses.iter().enumerate() {
                    model.add_constraint(at(s).leq(f64::from(max_per_site)));
                    model.add_constraint((Expression::from(used) - at(s)).leq(0.0));
                    spread.add_mul(1.0, used);
                    rows += 2;
                }
                model.add_constraint(spread.geq(f64::from(min_sites)));
                rows += 1;
            }
            GroupRule::Colocate { max_rtt_ms } => {
                // A member at s means the group uses s: one row per member and
                // site, which bounds the LP far tighter than one per site.
                for (class, cols) in &members {
                    for (choice, &col) in class.options.iter().zip(cols.iter()) {
                        model.add_constraint((Expression::from(col) - uses[choice.site]).leq(0.0));
                        rows += 1;
                    }
                }
                for a in 0..input.sites.len() {
                    for b in a + 1..input.sites.len() {
                        if rtt(input, a, b) > max_rtt_ms {
                            model.add_constraint((Expression::from(uses[a]) + uses[b]).leq(1.0));
                            rows += 1;
                        }
                    }
                }
            }
        }
    }
    rows
}

/// Round-trip time between two sites over either direction's link; no link, no reach.
pub(super) fn rtt(input: &PlanInput, a: usize, b: usize) -> f64 {
    input
        .links
        .iter()
        .filter(|l| (l.from, l.to) == (a, b) || (l.from, l.to) == (b, a))
        .map(|l| l.rtt_ms)
        .fold(f64::INFINITY, f64::min)
}

/// Names the constraint that makes the problem infeasible, where a simple
/// count can: a site whose VMs with nowhere else to go exceed a resource.
pub(super) fn diagnose(input: &PlanInput, classes: &[Class]) -> String {
    for (s, site) in input.sites.iter().enumerate() {
        let mut forced = [0.0; 3];
        for class in classes.iter().filter(|c| c.options.len() == 1 && c.options[0].site == s) {
            let each = demand(&input.vms[class.members[0]]);
            forced.iter_mut().zip(each).for_each(|(f, d)| *f += d * class.members.len() as f64);
        }
        for ((need, have), (name, unit)) in forced.into_iter().zip(amounts(&site.capacity)).zip(RESOURCE_NAMES) {
            if need > have + 1e-9 {
                return format!(
                    "capacity: {name} at site {} is short by {}{unit} for the VMs that cannot be anywhere else",
                    site.name,
                    (need - have).ceil()
                );
            }
        }
    }
    "capacity or link budgets: the VMs cannot all be placed (check site capacities and links)".to_owned()
}

#[cfg(test)]
mod tests {
    use crate::domain::planner::tests::{input, link, site, vm};
    use crate::domain::planner::{inputs, plan, GroupRule, PlanGroup, PlanVm, GIB};

    #[test]
    fn capacity_links_pins_and_allowed_sites() {
        let sites = || vec![site("A", 200.0, 0.0, 1000.0), site("B", 50.0, 0.0, 250.0)];
        // B holds two of the four.
        let four: Vec<PlanVm> = (0..4).map(|i| vm(&format!("v{i}"), 0)).collect();
        let plan_four = plan(&input(sites(), four.clone(), vec![link(0, 1)])).unwrap();
        assert_eq!(plan_four.placement.iter().filter(|&&s| s == 1).count(), 2);
        assert_eq!(plan_four.stats.classes, 1, "interchangeable VMs are one class");
        // The link carries 1.5 GiB in the slot: one VM's 1 GiB, not two.
        let mut narrow = input(sites(), four.clone(), vec![link(0, 1)]);
        narrow.links[0].usable_bytes_per_s = GIB * 1.5 / 3600.0;
        assert_eq!(plan(&narrow).unwrap().moves.len(), 1);
        // A guest that dirties memory faster than that link never converges: no move at all.
        narrow.vms.iter_mut().for_each(|v| v.dirty_bytes_per_s = 1e6);
        assert_eq!(plan(&narrow).unwrap().moves.len(), 0);
        // Pinned and disallowed VMs stay.
        let mut fixed = four;
        fixed[0].pinned = true;
        fixed[1].allowed = Some(vec![0]);
        fixed[2].allowed = Some(vec![0]);
        let p = plan(&input(sites(), fixed, vec![link(0, 1)])).unwrap();
        assert_eq!(p.placement, [0, 0, 0, 1]);
    }

    #[test]
    fn groups_spread_and_colocate() {
        // Three cheap-at-A members, spread over at least 2 sites with at most 2 per site.
        let sites = vec![site("A", 50.0, 0.0, 1000.0), site("B", 200.0, 0.0, 1000.0), site("C", 300.0, 0.0, 1000.0)];
        let links = vec![link(0, 1), link(0, 2), link(1, 0), link(2, 0)];
        let members: Vec<PlanVm> = (0..3).map(|i| PlanVm { group: Some(0), ..vm(&format!("db{i}"), 0) }).collect();
        let mut i = input(sites, members, links);
        i.groups = vec![PlanGroup { name: "db".into(), rule: GroupRule::Spread { min_sites: 2, max_per_site: 2 } }];
        let p = plan(&i).unwrap();
        assert_eq!(p.placement.iter().filter(|&&s| s == 0).count(), 2, "two stay at the cheap site");
        assert_eq!(p.placement.iter().filter(|&&s| s == 1).count(), 1, "one goes to the cheaper of the others");
        // Colocated within 5 ms: members split between A and B (10 ms apart, same price) must come together.
        let mut c = i.clone();
        c.vms[2].site = 1;
        c.sites[1].signals = c.sites[0].signals.clone();
        c.groups[0].rule = GroupRule::Colocate { max_rtt_ms: 5.0 };
        let p = plan(&c).unwrap();
        assert_eq!(p.placement, [0, 0, 0]);
        c.groups[0].rule = GroupRule::Colocate { max_rtt_ms: 20.0 };
        assert_eq!(plan(&c).unwrap().placement, [0, 0, 1], "within reach, and moving would only cost: each stays");
    }

    #[test]
    fn a_vm_on_its_way_counts_at_its_destination() {
        // One per site: db0 has arrived at B, db1 is on its way from B to C,
        // and nothing else may move (as when another site is evacuated).
        let sites = vec![site("A", 50.0, 0.0, 100.0), site("B", 50.0, 0.0, 100.0), site("C", 50.0, 0.0, 100.0)];
        let links = vec![link(0, 1), link(1, 2), link(2, 0)];
        let members: Vec<PlanVm> =
            (0..2).map(|i| PlanVm { group: Some(0), pinned: true, ..vm(&format!("db{i}"), 1) }).collect();
        let mut i = input(sites, members, links);
        i.groups = vec![PlanGroup { name: "db".into(), rule: GroupRule::Spread { min_sites: 2, max_per_site: 1 } }];
        inputs::hold_room(&mut i, 1, 2);
        let p = plan(&i).unwrap();
        assert_eq!(p.placement, [1, 2], "the group's rule and C's room hold with db1 counted at C");
        assert!(p.moves.is_empty());
    }

    #[test]
    fn infeasible_capacity_names_the_site_and_resource() {
        let mut v = vm("big", 0);
        v.pinned = true;
        v.shape.memory_gib = 600.0;
        let mut sites = vec![site("DE-LU", 50.0, 0.0, 1000.0)];
        sites[0].capacity.memory_gib = 188.0;
        let err = plan(&input(sites, vec![v], vec![])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "capacity: memory at site DE-LU is short by 412 GiB for the VMs that cannot be anywhere else"
        );
    }
}
