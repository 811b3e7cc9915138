//! The lower bound on a schedule's makespan that no pacing can beat, to
//! measure schedules against: a time-indexed LP over the fewest bytes each
//! migration must send, or the simple bounds beyond its size.

use good_lp::solvers::{SolutionStatus, WithTimeLimit};
use good_lp::{variable, Expression, ProblemVariables, Solution, SolverModel, Variable};

use super::{alone, capacities, least_share, path_bytes_per_s, resources, Migration, Network};

/// Beyond this many migration x step cells the LP bound is skipped for the simple one.
pub const LP_BOUND_MAX_CELLS: usize = 60_000;

/// What no schedule can beat, seconds: the makespan of a time-indexed LP
/// in which each migration sends at least what it would alone at its
/// path's full rate (the fewest bytes it can send), no faster than that
/// rate, and every link and shared uplink carries at most its capacity in
/// each step; steps may be used fractionally, in order. Migrations that
/// cannot converge on their path with the safety margin are left out, as
/// Heliotrope leaves them. Never below the simple bounds (the
/// busiest link or uplink, the longest migration alone), which is all it
/// gives beyond [`LP_BOUND_MAX_CELLS`].
pub fn lower_bound(network: &Network, migrations: &[Migration], steps: usize, horizon_s: f64) -> f64 {
    let capacity = capacities(network);
    // (resources, fewest bytes, path rate, seconds alone) per migration that can converge.
    let jobs: Vec<(Vec<usize>, f64, f64, f64)> = migrations
        .iter()
        .filter_map(|m| {
            let path = path_bytes_per_s(network, m);
            least_share(m, path)?;
            let (bytes, seconds) = alone(m, path)?;
            Some((resources(network, m), bytes, path, seconds))
        })
        .collect();
    if jobs.is_empty() {
        return 0.0;
    }
    let simple_only = jobs.len() * steps > LP_BOUND_MAX_CELLS;
    let mut load = vec![0.0; capacity.len()];
    jobs.iter().for_each(|(uses, bytes, ..)| uses.iter().for_each(|&r| load[r] += bytes));
    let simple = load.iter().zip(&capacity).map(|(l, c)| l / c).chain(jobs.iter().map(|j| j.3)).fold(0.0, f64::max);
    if simple_only {
        return simple;
    }
    let dt = horizon_s.max(simple) / steps as f64;
    let mut vars = ProblemVariables::new();
    // used[t]: how much of step t is used; steps are used in order.
    let used: Vec<Variable> = (0..steps).map(|_| vars.add(variable().min(0).max(1))).collect();
    let sent: Vec<Vec<Variable>> =
        jobs.iter().map(|_| (0..steps).map(|_| vars.add(variable().min(0))).collect()).collect();
    let mut makespan = Expression::with_capacity(steps);
    used.iter().for_each(|&u| makespan.add_mul(dt, u));
    let mut model = vars.minimise(makespan).using(good_lp::coin_cbc);
    model.set_parameter("log", "0");
    for t in 1..steps {
        model.add_constraint((Expression::from(used[t]) - used[t - 1]).leq(0.0));
    }
    let mut per_step: Vec<Vec<Expression>> = vec![vec![Expression::default(); steps]; capacity.len()];
    for ((uses, bytes, path, _), cols) in jobs.iter().zip(&sent) {
        let mut total = Expression::with_capacity(steps);
        for (t, &col) in cols.iter().enumerate() {
            total.add_mul(1.0, col);
            // No faster than its path, and only in used steps.
            model.add_constraint((Expression::from(col) - path * dt * used[t]).leq(0.0));
            uses.iter().for_each(|&r| per_step[r][t].add_mul(1.0, col));
        }
        model.add_constraint(total.geq(*bytes));
    }
    for (r, rows) in per_step.into_iter().enumerate() {
        if capacity[r].is_finite() && load[r] > 0.0 {
            for (t, row) in rows.into_iter().enumerate() {
                model.add_constraint((row - capacity[r] * dt * used[t]).leq(0.0));
            }
        }
    }
    match model.with_time_limit(30.0).solve() {
        Ok(solution) if matches!(solution.status(), SolutionStatus::Optimal) => {
            let lp: f64 = used.iter().map(|&u| solution.value(u) * dt).sum();
            lp.max(simple)
        }
        // Past the time limit (or a step grid too coarse to hold the bytes) the simple bound stands.
        _ => simple,
    }
}
