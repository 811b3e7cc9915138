//! The greedy baseline planners are measured against (the benchmark and
//! the simulator's greedy policy): no solver, each VM in turn to its
//! cheapest choice that still fits.

use super::classes::{classes, Choice};
use super::explain::explain;
use super::model::{amounts, demand, link_budget, Taken};
use super::{Move, PlanInput};

/// What the greedy baseline does.
#[derive(Debug, Clone, PartialEq)]
pub struct Greedy {
    pub moves: Vec<Move>,
    /// Comparable with [`Breakdown::objective`](super::Breakdown::objective).
    pub objective: f64,
}

/// The baseline planners are measured against: each VM in turn goes to
/// its cheapest choice (cost plus churn charge) that still fits capacity
/// and the link's bytes; group members stay where they are.
pub fn greedy(input: &PlanInput) -> Greedy {
    let classes = classes(input);
    let mut moves = Vec::new();
    let mut taken = Taken::none(input);
    for vm in &input.vms {
        taken.load[vm.site].iter_mut().zip(demand(vm)).for_each(|(l, d)| *l += d);
    }
    let mut total = 0.0;
    for class in &classes {
        let vm = &input.vms[class.members[0]];
        let need = demand(vm);
        let mut choices: Vec<&Choice> = class.options.iter().collect();
        choices.sort_by(|a, b| (a.cost + a.hurdle).total_cmp(&(b.cost + b.hurdle)));
        for &member in &class.members {
            let fits = |c: &&&Choice| match c.migration {
                None => true,
                Some(m) => {
                    vm.group.is_none()
                        && taken.load[c.site]
                            .iter()
                            .zip(need)
                            .zip(amounts(&input.sites[c.site].capacity))
                            .all(|((l, d), cap)| l + d <= cap + 1e-9)
                        && taken.link_bytes[m.link] + m.estimate.wire_bytes <= link_budget(input, m.link) + 1e-9
                }
            };
            // Staying is always possible unless the site is down; then the cheapest move that fits.
            let Some(choice) = choices.iter().find(fits).or(choices.first()) else { continue };
            if let Some(m) = choice.migration {
                taken.load[vm.site].iter_mut().zip(need).for_each(|(l, d)| *l -= d);
                taken.load[choice.site].iter_mut().zip(need).for_each(|(l, d)| *l += d);
                taken.link_bytes[m.link] += m.estimate.wire_bytes;
                moves.push(explain(input, member, choice.site, &m));
            }
            total += choice.cost + choice.hurdle;
        }
    }
    moves.sort_by_key(|m| m.vm);
    Greedy { moves, objective: total }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::planner::tests::{input, link, site, vm};
    use crate::domain::planner::{plan, PlanVm};

    #[test]
    fn greedy_is_never_better_than_the_plan() {
        let sites = vec![site("A", 200.0, 0.0, 1000.0), site("B", 50.0, 0.0, 250.0), site("C", 120.0, 0.0, 1000.0)];
        let vms: Vec<PlanVm> =
            (0..5).map(|i| PlanVm { dirty_bytes_per_s: 1e5 * f64::from(i + 1), ..vm(&format!("v{i}"), 0) }).collect();
        let i = input(sites, vms, vec![link(0, 1), link(0, 2)]);
        let (planned, greedy) = (plan(&i).unwrap(), greedy(&i).objective);
        assert!(greedy + 1e-9 >= planned.totals.objective, "greedy {greedy} < planned {}", planned.totals.objective);
        assert_eq!(planned.placement.iter().filter(|&&s| s == 1).count(), 2, "B takes two");
        assert_eq!(planned.placement.iter().filter(|&&s| s == 2).count(), 3, "C takes the rest");
        assert_eq!(planned.stats.classes, 1, "dirty rates under 25 Mbit/s share a class");
    }
}
