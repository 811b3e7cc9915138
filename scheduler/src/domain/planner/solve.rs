//! Solving: the LP relaxation (Clp) for the bound and most of the
//! placement, a small MIP (HiGHS) for the classes it split and the group
//! members, and the whole MIP searching on from there while time remains
//! and the gap is short of `mip_gap`; then the plan, its moves and costs.

use std::time::Instant;

use good_lp::solvers::{SolutionStatus, WithTimeLimit};
use good_lp::{ResolutionError, Solution, SolverModel, Variable, WithInitialSolution};

use super::classes::{classes, Class};
use super::explain::{breakdown, explain};
use super::model::{constrain, diagnose, initial_solution, Columns, Taken};
use super::{Plan, PlanError, PlanInput, SolverStats};

/// Plans the placement of every VM.
pub fn plan(input: &PlanInput) -> Result<Plan, PlanError> {
    let started = Instant::now();
    let classes = classes(input);
    if let Some(class) = classes.iter().find(|c| c.options.is_empty()) {
        let vm = &input.vms[class.members[0]];
        return Err(PlanError::Infeasible(format!(
            "placement: VM {} cannot stay at {} ({:?}) and has no site it may move to",
            vm.name, input.sites[vm.site].name, input.sites[vm.site].admission
        )));
    }
    let everyone: Vec<f64> = classes.iter().map(|c| c.members.len() as f64).collect();
    let nothing_taken = Taken::none(input);
    let settings = &input.settings;
    let relaxed = match solve(input, &classes, &everyone, &nothing_taken, Engine::Relaxation, settings.time_limit_s) {
        Ok(relaxed) => relaxed,
        Err(PlanError::Infeasible(_)) => return Err(PlanError::Infeasible(diagnose(input, &classes))),
        Err(e) => return Err(e),
    };
    let (variables, rows, lp_bound) = (relaxed.variables, relaxed.rows, relaxed.objective);
    let remaining = || (settings.time_limit_s - started.elapsed().as_secs_f64()).max(1.0);
    // The integer searches may stop within a tenth of the gap allowed, in absolute terms.
    let enough = Search { abs_gap: settings.mip_gap * lp_bound.abs() / 10.0, start: None };

    // Keep the classes the LP placed in whole VMs; place the others, and
    // group members, as integers in what capacity and links leave.
    let mut kept: Vec<Vec<usize>> = Vec::with_capacity(classes.len());
    let mut rest: Vec<f64> = Vec::with_capacity(classes.len());
    for ((class, values), n) in classes.iter().zip(&relaxed.values).zip(&everyone) {
        let integral = values.iter().all(|v| (v - v.round()).abs() <= 1e-6);
        if input.vms[class.members[0]].group.is_none() && integral {
            kept.push(values.iter().map(|v| v.round().max(0.0) as usize).collect());
            rest.push(0.0);
        } else {
            kept.push(vec![0; values.len()]);
            rest.push(*n);
        }
    }
    let fractional_classes = rest.iter().filter(|&&r| r > 0.0).count();
    let mut counts = if fractional_classes == 0 {
        kept
    } else {
        let taken = Taken::by(input, &classes, &kept);
        match solve(input, &classes, &rest, &taken, Engine::Integer(enough), remaining()) {
            Ok(solved) => add_counts(kept, &solved.counts()?),
            // What the LP kept left no integer room: solve everything as integers.
            Err(PlanError::Infeasible(_)) => {
                solve(input, &classes, &everyone, &nothing_taken, Engine::Integer(enough), remaining())?.counts()?
            }
            Err(e) => return Err(e),
        }
    };
    // Still short of the gap: search the whole model from this placement
    // while time remains. If that search finishes, its result less the gap
    // it was allowed is a bound too, often far above the LP's.
    let mut bound = lp_bound;
    if gap(model_objective(&classes, &counts), lp_bound) > settings.mip_gap
        && started.elapsed().as_secs_f64() + 1.0 < settings.time_limit_s
    {
        let from_here = Search { start: Some(&counts), ..enough };
        if let Ok(solved) = solve(input, &classes, &everyone, &nothing_taken, Engine::Integer(from_here), remaining()) {
            if let Ok(better) = solved.counts() {
                let polished = model_objective(&classes, &better);
                if solved.finished {
                    bound = bound.max(polished - enough.abs_gap);
                }
                if polished < model_objective(&classes, &counts) {
                    counts = better;
                }
            }
        }
    }

    let mut placement: Vec<usize> = input.vms.iter().map(|vm| vm.site).collect();
    let mut moves = Vec::new();
    for (class, counts) in classes.iter().zip(&counts) {
        let mut members = class.members.iter();
        for (choice, &count) in class.options.iter().zip(counts) {
            for &vm in members.by_ref().take(count) {
                placement[vm] = choice.site;
                if let Some(migration) = choice.migration {
                    moves.push(explain(input, vm, choice.site, &migration));
                }
            }
        }
    }
    moves.sort_by_key(|m| m.vm);
    let totals = breakdown(input, &moves);
    let baseline = breakdown(input, &[]);
    let gap = gap(totals.objective, bound);
    Ok(Plan {
        placement,
        moves,
        totals,
        baseline,
        stats: SolverStats {
            classes: classes.len(),
            variables,
            rows,
            fractional_classes,
            solve_s: started.elapsed().as_secs_f64(),
            lp_bound,
            bound,
            gap,
        },
    })
}

/// How far `objective` is above the bound, relative to it.
fn gap(objective: f64, lp_bound: f64) -> f64 {
    if lp_bound.abs() > 0.0 {
        ((objective - lp_bound) / lp_bound.abs()).max(0.0)
    } else {
        0.0
    }
}

/// The model's objective (churn charges included) of whole-VM counts.
fn model_objective(classes: &[Class], counts: &[Vec<usize>]) -> f64 {
    classes
        .iter()
        .zip(counts)
        .flat_map(|(class, counts)| class.options.iter().zip(counts).map(|(c, &n)| (c.cost + c.hurdle) * n as f64))
        .sum()
}

fn add_counts(mut a: Vec<Vec<usize>>, b: &[Vec<usize>]) -> Vec<Vec<usize>> {
    for (a, b) in a.iter_mut().zip(b) {
        a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
    }
    a
}

/// Which solver, for what.
#[derive(Clone, Copy)]
enum Engine<'a> {
    /// The LP relaxation, by Clp: the bound and most of the placement.
    Relaxation,
    /// Integer counts, by HiGHS's MIP.
    Integer(Search<'a>),
}

/// When an integer search may stop, and the placement it starts from.
#[derive(Clone, Copy)]
struct Search<'a> {
    /// Objective units above the search's own bound that are close enough.
    abs_gap: f64,
    start: Option<&'a [Vec<usize>]>,
}

/// A solved model: per class and choice, how many of the class go there.
struct Solved {
    values: Vec<Vec<f64>>,
    /// Of the model, churn charges included.
    objective: f64,
    variables: usize,
    rows: usize,
    /// An integer search that finished (not stopped by the time limit).
    finished: bool,
}

impl Solved {
    /// The values as counts; good_lp may hand back a relaxed point under a time limit, so check.
    fn counts(&self) -> Result<Vec<Vec<usize>>, PlanError> {
        if self.values.iter().flatten().any(|v| (v - v.round()).abs() > 1e-6) {
            return Err(PlanError::Solver("no integer placement found within the time limit".into()));
        }
        Ok(self.values.iter().map(|vs| vs.iter().map(|v| v.round().max(0.0) as usize).collect()).collect())
    }
}

/// Places `counts[k]` members of each class k within what `taken` leaves.
fn solve(
    input: &PlanInput,
    classes: &[Class],
    counts: &[f64],
    taken: &Taken,
    engine: Engine,
    time_limit_s: f64,
) -> Result<Solved, PlanError> {
    let integer = matches!(engine, Engine::Integer(_));
    let Columns { vars, columns, group_uses, objective, variables } = Columns::new(input, classes, counts, integer);
    let mut finished = false;
    let solution = match engine {
        Engine::Relaxation => {
            let mut model = vars.minimise(objective).using(good_lp::coin_cbc);
            model.set_parameter("log", "0");
            let rows = constrain(&mut model, input, classes, counts, taken, &columns, &group_uses);
            let solution = model.with_time_limit(time_limit_s).solve().map_err(resolution_error)?;
            if !matches!(solution.status(), SolutionStatus::Optimal) {
                return Err(PlanError::Solver("the LP relaxation did not finish within the time limit".into()));
            }
            (values(&solution, &columns), rows)
        }
        Engine::Integer(search) => {
            let mut model = vars
                .minimise(objective)
                .using(good_lp::highs)
                .set_mip_abs_gap(search.abs_gap as f32)
                .map_err(|e| PlanError::Solver(e.to_string()))?
                .set_time_limit(time_limit_s);
            if let Some(start) = search.start {
                model = model.with_initial_solution(initial_solution(input, classes, &columns, &group_uses, start));
            }
            let rows = constrain(&mut model, input, classes, counts, taken, &columns, &group_uses);
            let solution = model.solve().map_err(resolution_error)?;
            finished = !matches!(solution.status(), SolutionStatus::TimeLimit);
            (values(&solution, &columns), rows)
        }
    };
    let (values, rows) = solution;
    let objective = classes
        .iter()
        .zip(&values)
        .flat_map(|(class, values)| class.options.iter().zip(values).map(|(c, v)| (c.cost + c.hurdle) * v))
        .sum();
    Ok(Solved { values, objective, variables, rows, finished })
}

fn resolution_error(e: ResolutionError) -> PlanError {
    match e {
        ResolutionError::Infeasible => PlanError::Infeasible("infeasible".into()),
        e => PlanError::Solver(e.to_string()),
    }
}

/// Column values per class and choice.
fn values(solution: &impl Solution, columns: &[Vec<Variable>]) -> Vec<Vec<f64>> {
    columns.iter().map(|cols| cols.iter().map(|&c| solution.value(c)).collect()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::cost::{MigrationPrices, SlotSignal, VmShape, Weights};
    use crate::domain::planner::model::{amounts, demand, link_budget, rtt};
    use crate::domain::planner::tests::{input, link, site, vm, GB_S};
    use crate::domain::planner::{greedy, Admission, GroupRule, Move, PlanGroup, PlanLink, PlanSite, PlanVm, GIB};

    #[test]
    fn a_move_that_pays() {
        // 100 vCPU x 10 W = 1 kW: 24 kWh a day. At 200/MWh that is 4.8, at 50/MWh 1.2.
        let plan = plan(&input(
            vec![site("A", 200.0, 0.0, 1000.0), site("B", 50.0, 0.0, 1000.0)],
            vec![vm("v", 0)],
            vec![link(0, 1)],
        ))
        .unwrap();
        assert_eq!(plan.placement, [1]);
        assert_eq!(plan.moves.len(), 1);
        let m = &plan.moves[0];
        assert!((m.saving.energy_cost - 3.6).abs() < 1e-9, "{m:?}");
        assert!((plan.baseline.objective - 4.8).abs() < 1e-9);
        // Moving 1 GiB at 125 MB/s takes 8.6 s; the destination copy runs meanwhile.
        assert!((m.estimate.duration_s - GIB / GB_S).abs() < 1e-9);
        assert!(plan.totals.objective < plan.baseline.objective);
        assert!(plan.stats.gap < 1e-6, "{:?}", plan.stats);
    }

    #[test]
    fn a_move_that_does_not_pay() {
        // 1 GiB of egress at 5 per GB costs more than the 24 x 1 kWh x 1/MWh the move saves.
        let mut i =
            input(vec![site("A", 51.0, 0.0, 1000.0), site("B", 50.0, 0.0, 1000.0)], vec![vm("v", 0)], vec![link(0, 1)]);
        i.links[0].egress_per_gb = 5.0;
        let plan = plan(&i).unwrap();
        assert_eq!((plan.placement.clone(), plan.moves.len()), (vec![0], 0));
        assert!((plan.totals.objective - plan.baseline.objective).abs() < 1e-9);
    }

    #[test]
    fn carbon_price_moves_to_the_clean_site() {
        // Same price; A emits 500 g/kWh, B 50. 24 kWh x 0.45 kg = 10.8 kg a day saved, at 100 per tonne 1.08.
        let mut i = input(
            vec![site("A", 100.0, 500.0, 1000.0), site("B", 100.0, 50.0, 1000.0)],
            vec![vm("v", 0)],
            vec![link(0, 1)],
        );
        assert_eq!(plan(&i).unwrap().placement, [0], "no carbon price, no reason to move");
        i.settings.weights = Weights::blend(100.0);
        let moved = plan(&i).unwrap();
        assert_eq!(moved.placement, [1]);
        assert!((moved.moves[0].saving.emissions_kg - 10.8).abs() < 1e-9);
    }

    /// Everything a placement breaks, as readable lines (empty when it is legal).
    fn violations(i: &PlanInput, placement: &[usize], moves: &[Move]) -> Vec<String> {
        let mut broken = Vec::new();
        for (s, site) in i.sites.iter().enumerate() {
            let mut load = [0.0; 3];
            for (v, _) in placement.iter().enumerate().filter(|(_, &at)| at == s) {
                load.iter_mut().zip(demand(&i.vms[v])).for_each(|(l, d)| *l += d);
            }
            for (used, cap) in load.into_iter().zip(amounts(&site.capacity)) {
                if used > cap + 1e-6 {
                    broken.push(format!("{} over capacity: {used} > {cap}", site.name));
                }
            }
            if site.admission == Admission::Down && load[0] > 0.0 {
                broken.push(format!("{} is down but hosts VMs", site.name));
            }
        }
        let mut bytes = vec![0.0; i.links.len()];
        for (v, (vm, &at)) in i.vms.iter().zip(placement).enumerate() {
            if at == vm.site {
                continue;
            }
            if vm.pinned {
                broken.push(format!("pinned {} moved", vm.name));
            }
            if vm.moves_today >= i.settings.max_moves_per_day && i.sites[vm.site].admission != Admission::Down {
                broken.push(format!("{} moved past its moves for the day", vm.name));
            }
            if vm.allowed.as_ref().is_some_and(|a| !a.contains(&at)) {
                broken.push(format!("{} at a site it may not run at", vm.name));
            }
            if i.sites[at].admission != Admission::Open {
                broken.push(format!("{} moved to a site that takes nothing new", vm.name));
            }
            match (i.links.iter().position(|l| (l.from, l.to) == (vm.site, at)), moves.iter().find(|m| m.vm == v)) {
                (Some(l), Some(m)) => bytes[l] += m.estimate.wire_bytes,
                _ => broken.push(format!("{} moved without a link or a move", vm.name)),
            }
        }
        for (l, sent) in bytes.into_iter().enumerate() {
            if sent > link_budget(i, l) + 1e-3 {
                broken.push(format!("link {l} carries {sent} bytes, over its budget"));
            }
        }
        for (g, group) in i.groups.iter().enumerate() {
            let sites: Vec<usize> =
                i.vms.iter().zip(placement).filter(|(vm, _)| vm.group == Some(g)).map(|(_, &s)| s).collect();
            if sites.is_empty() {
                continue;
            }
            match group.rule {
                GroupRule::Spread { min_sites, max_per_site } => {
                    let mut distinct = sites.clone();
                    distinct.sort_unstable();
                    distinct.dedup();
                    if distinct.len() < min_sites as usize {
                        broken.push(format!("group {} on {} sites", group.name, distinct.len()));
                    }
                    if distinct.iter().any(|s| sites.iter().filter(|&&x| x == *s).count() > max_per_site as usize) {
                        broken.push(format!("group {} crowds a site", group.name));
                    }
                }
                GroupRule::Colocate { max_rtt_ms } => {
                    for &a in &sites {
                        for &b in &sites {
                            if a != b && rtt(i, a, b) > max_rtt_ms {
                                broken.push(format!("group {} spans {a} and {b}", group.name));
                            }
                        }
                    }
                }
            }
        }
        broken
    }

    /// A random small instance: 2-4 sites (some draining or down), random
    /// links, 1-12 VMs with pins, allowed sites, spent move budgets and a group.
    fn random_instance(seed: u64) -> PlanInput {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n_sites = rng.random_range(2..=4);
        let sites: Vec<PlanSite> = (0..n_sites)
            .map(|s| {
                let mut site = site(&format!("S{s}"), 0.0, 0.0, rng.random_range(60.0..300.0));
                site.capacity.memory_gib = rng.random_range(64.0..512.0);
                site.admission = match rng.random_range(0..20) {
                    0 => Admission::Down,
                    1 => Admission::Draining,
                    _ => Admission::Open,
                };
                site.signals = (0..24)
                    .map(|_| SlotSignal {
                        price_per_mwh: rng.random_range(0.0..300.0),
                        carbon_g_per_kwh: rng.random_range(0.0..800.0),
                    })
                    .collect();
                site
            })
            .collect();
        let mut links = Vec::new();
        for a in 0..n_sites {
            for b in 0..n_sites {
                if a != b && rng.random_bool(0.7) {
                    links.push(PlanLink {
                        from: a,
                        to: b,
                        usable_bytes_per_s: rng.random_range(1e6..2e8),
                        egress_per_gb: rng.random_range(0.0..0.1),
                        rtt_ms: rng.random_range(1.0..100.0),
                    });
                }
            }
        }
        let groups = vec![PlanGroup {
            name: "g".into(),
            rule: if rng.random_bool(0.5) {
                GroupRule::Spread { min_sites: rng.random_range(1..=2), max_per_site: rng.random_range(1..=3) }
            } else {
                GroupRule::Colocate { max_rtt_ms: rng.random_range(20.0..150.0) }
            },
        }];
        let vms = (0..rng.random_range(1..=12))
            .map(|v| PlanVm {
                name: format!("v{v}"),
                shape: VmShape { vcpus: rng.random_range(1..=32), memory_gib: rng.random_range(1.0..64.0) },
                disk_gib: rng.random_range(0.0..100.0),
                dirty_bytes_per_s: rng.random_range(0.0..5e7),
                max_downtime_s: rng.random_range(0.05..1.0),
                site: rng.random_range(0..n_sites),
                allowed: rng.random_bool(0.2).then(|| (0..n_sites).filter(|_| rng.random_bool(0.5)).collect()),
                pinned: rng.random_bool(0.15),
                group: rng.random_bool(0.25).then_some(0),
                moves_today: rng.random_range(0..=2),
                priority: rng.random_range(0..=100),
                // Some disks half held at a random site.
                cached: if rng.random_bool(0.3) {
                    vec![(rng.random_range(0..n_sites), rng.random_range(0.0..50.0) * GIB)]
                } else {
                    Vec::new()
                },
                // Some memory kept where a VM was before.
                memory_kept: if rng.random_bool(0.3) {
                    vec![(rng.random_range(0..n_sites), rng.random_range(0.0..32.0) * GIB)]
                } else {
                    Vec::new()
                },
                keeps_memory: true,
            })
            .collect();
        let mut i = input(sites, vms, links);
        i.groups = groups;
        i.settings.weights = Weights::blend(rng.random_range(0.0..200.0));
        i.settings.min_net_saving = rng.random_range(0.0..0.2);
        i.settings.prices = MigrationPrices {
            network_kwh_per_gb: 0.01,
            egress_per_gb: 0.0,
            downtime_penalty_per_s: rng.random_range(0.0..1.0),
        };
        i.settings.wire_fraction = rng.random_range(0.05..1.0);
        i.settings.mip_gap = 0.0;
        i
    }

    /// The random instances exercise what the property is about: plans
    /// that move VMs, and inputs no placement satisfies.
    #[test]
    fn random_instances_cover_moves_and_refusals() {
        let (mut moved, mut refused) = (0, 0);
        for seed in 0..100 {
            match plan(&random_instance(seed)) {
                Ok(p) if !p.moves.is_empty() => moved += 1,
                Err(PlanError::Infeasible(_)) => refused += 1,
                _ => {}
            }
        }
        assert!(moved >= 10 && refused >= 5, "of 100: {moved} plans with moves, {refused} infeasible");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        /// Every plan keeps every rule, never costs more than staying put
        /// when staying put is legal, and sits at or above its LP bound.
        #[test]
        fn plans_keep_every_constraint(seed in proptest::prelude::any::<u64>()) {
            let i = random_instance(seed);
            let stay: Vec<usize> = i.vms.iter().map(|v| v.site).collect();
            let baseline_legal = violations(&i, &stay, &[]).is_empty();
            match plan(&i) {
                Ok(p) => {
                    let broken = violations(&i, &p.placement, &p.moves);
                    proptest::prop_assert!(broken.is_empty(), "{broken:?}");
                    proptest::prop_assert!(p.totals.objective >= p.stats.lp_bound - 1e-6);
                    if baseline_legal {
                        proptest::prop_assert!(p.totals.objective <= p.baseline.objective + 1e-6,
                            "{} > {}", p.totals.objective, p.baseline.objective);
                    }
                    let greedy = greedy(&i);
                    if baseline_legal {
                        proptest::prop_assert!(greedy.objective + 1e-6 >= p.totals.objective);
                        let mut placement = stay.clone();
                        greedy.moves.iter().for_each(|m| placement[m.vm] = m.to);
                        let broken = violations(&i, &placement, &greedy.moves);
                        proptest::prop_assert!(broken.is_empty(), "greedy: {broken:?}");
                    }
                }
                Err(PlanError::Infeasible(why)) => {
                    proptest::prop_assert!(!baseline_legal, "staying put is legal, yet: {why}");
                }
                Err(e) => proptest::prop_assert!(false, "{e}"),
            }
        }
    }
}
