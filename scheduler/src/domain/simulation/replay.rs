//! The replay itself: hour by hour, what a policy is shown and decides,
//! the hour's migrations in the scheduler's fluid model (held until their
//! destination has room), and what running and moving the fleet cost at
//! the actual signals.

use super::forecast::forecast_view;
use super::{Forecast, Hour, Policy, Replay, Scenario, ScenarioError, Totals, ORACLE_HORIZON_H};
use crate::domain::cost::{energy_cost, power_kw, running_cost, Cost, MigrationCost};
use crate::domain::planner::inputs::hold_room;
use crate::domain::planner::{self, amounts, demand, PlanInput};
use crate::domain::schedule::{self, advance, Goal, Progress};

const HOUR_S: f64 = 3600.0;

/// A migration decided and not yet ended: its VM, and where it stands in
/// the fluid model.
struct Underway {
    vm: usize,
    from: usize,
    to: usize,
    egress_per_gb: f64,
    /// In the fluid model's terms.
    flow: schedule::Migration,
    progress: Progress,
    /// Its bandwidth while it runs, bytes/s.
    rate: f64,
    downtime_s: f64,
    /// The first hour it waited for room at its destination.
    held_since: Option<usize>,
}

impl Underway {
    fn running(&self) -> bool {
        matches!(self.progress, Progress::Disk { .. } | Progress::Round { .. } | Progress::Final { .. })
    }
}

/// A migration that has waited this many hours for room at its
/// destination (VMs there leaving later than planned) is given up.
pub const MAX_WAIT_FOR_ROOM_H: usize = 24;

/// What each site holds: the VMs running there and those on their way to it.
fn load(fleet: &PlanInput, site: &[usize], underway: &[Underway]) -> Vec<[f64; 3]> {
    let mut load = vec![[0.0_f64; 3]; fleet.sites.len()];
    let arriving = underway.iter().filter(|u| u.running()).map(|u| (u.vm, u.to));
    for (vm, at) in site.iter().copied().enumerate().chain(arriving) {
        load[at].iter_mut().zip(demand(&fleet.vms[vm])).for_each(|(l, d)| *l += d);
    }
    load
}

fn fits(fleet: &PlanInput, load: &[f64; 3], at: usize) -> bool {
    load.iter().zip(amounts(&fleet.sites[at].capacity)).all(|(l, c)| *l <= c + 1e-6)
}

/// Replays the scenario's window under `policy`; `tick` is called after
/// every hour, and the replay stops (with an error) when it answers `false`.
pub fn replay(scenario: &Scenario, policy: Policy, tick: &(dyn Fn() -> bool + Sync)) -> Result<Replay, ScenarioError> {
    scenario.check()?;
    let fleet = &scenario.fleet;
    let settings = &fleet.settings;
    let (network, _) = schedule::for_moves(fleet, &[]);
    let mut site: Vec<usize> = fleet.vms.iter().map(|v| v.site).collect();
    // Per VM, its moves: the hour each was decided and the site it left.
    let mut moved_at: Vec<Vec<(usize, usize)>> = vec![Vec::new(); fleet.vms.len()];
    let mut underway: Vec<Underway> = Vec::new();
    let mut totals = Totals::default();
    let mut hours = Vec::with_capacity(scenario.to - scenario.from);
    let power = |vm: usize, at: usize| power_kw(&fleet.sites[at].energy, &fleet.vms[vm].shape);

    for h in scenario.from..scenario.to {
        // What the policy sees, and what it decides.
        if policy != Policy::Static {
            let started = std::time::Instant::now();
            let input = policy_input(scenario, policy, h, &site, &underway, &moved_at)?;
            let moves = match policy {
                Policy::Greedy => planner::greedy(&input).moves,
                _ => match planner::plan(&input) {
                    Ok(plan) => plan.moves,
                    Err(_) => {
                        totals.unplanned_hours += 1;
                        Vec::new()
                    }
                },
            };
            let (_, flows) = schedule::for_moves(&input, &moves);
            if flows.len() != moves.len() {
                return Err(ScenarioError(format!("hour {h}: a move has no link to travel")));
            }
            for (m, flow) in moves.iter().zip(flows) {
                underway.push(Underway {
                    vm: m.vm,
                    from: m.from,
                    to: m.to,
                    egress_per_gb: input.links[flow.link].egress_per_gb,
                    flow,
                    progress: Progress::Waiting,
                    rate: 0.0,
                    downtime_s: 0.0,
                    held_since: None,
                });
                moved_at[m.vm].push((h, m.from));
            }
            totals.decide_s += started.elapsed().as_secs_f64();
        }

        // A migration starts only once its destination has room for the VM
        // (the plan's departures from there may not have ended yet); the
        // others sit this hour out, marked skipped for the fluid model.
        let mut room = load(fleet, &site, &underway);
        let mut held = vec![false; underway.len()];
        for (i, u) in underway.iter_mut().enumerate() {
            if u.progress != Progress::Waiting {
                continue;
            }
            let mut with = room[u.to];
            with.iter_mut().zip(demand(&fleet.vms[u.vm])).for_each(|(l, d)| *l += d);
            if fits(fleet, &with, u.to) {
                room[u.to] = with;
                u.held_since = None;
            } else {
                held[i] = true;
                u.held_since.get_or_insert(h);
            }
        }
        // The hour's migrations, in the scheduler's fluid model.
        let flows: Vec<schedule::Migration> = underway.iter().map(|u| u.flow.clone()).collect();
        let now: Vec<(Progress, f64)> = underway
            .iter()
            .zip(&held)
            .map(|(u, &held)| (if held { Progress::Skipped } else { u.progress }, u.rate))
            .collect();
        let (ran, next) = advance(&network, &flows, schedule::Pacing::Heliotrope(Goal::MeanCompletion), &now, HOUR_S);

        let actual = |s: usize| &scenario.actuals[s][h];
        let (mut running, mut migrating) = (Cost::default(), Cost::default());
        let (mut egress, mut penalty) = (0.0, 0.0);
        // Per VM whose migration ended this hour: when, and where it went.
        let mut arrived: Vec<Option<(f64, usize)>> = vec![None; fleet.vms.len()];
        for ((u, outcome), (progress, rate)) in underway.iter_mut().zip(&ran.outcomes).zip(next) {
            totals.migrated_bytes += outcome.bytes;
            let gb = outcome.bytes / 1e9;
            migrating = migrating + energy_cost(gb * settings.prices.network_kwh_per_gb, actual(u.from));
            egress += gb * u.egress_per_gb;
            u.downtime_s += outcome.downtime_s;
            if let Some(start) = outcome.start_s {
                // The destination's copy runs while the VM moves.
                let end = outcome.finish_s.or(outcome.failed_s).unwrap_or(HOUR_S).min(HOUR_S);
                migrating = migrating + running_cost(power(u.vm, u.to), (end - start).max(0.0) / HOUR_S, actual(u.to));
            }
            (u.progress, u.rate) = (progress, rate);
            match progress {
                Progress::Finished => {
                    totals.migrations += 1;
                    totals.downtime_s += u.downtime_s;
                    penalty += u.downtime_s * settings.prices.downtime_penalty_per_s;
                    arrived[u.vm] = Some((outcome.finish_s.unwrap_or(HOUR_S), u.to));
                }
                Progress::Skipped if u.held_since.is_some_and(|since| h + 1 - since < MAX_WAIT_FOR_ROOM_H) => {
                    u.progress = Progress::Waiting;
                }
                Progress::Failed | Progress::Skipped => totals.failed_migrations += 1,
                _ => {}
            }
        }
        for (vm, at) in site.iter_mut().enumerate() {
            running = running
                + match arrived[vm] {
                    Some((finish, to)) => {
                        let before = running_cost(power(vm, *at), finish / HOUR_S, actual(*at));
                        *at = to;
                        before + running_cost(power(vm, to), 1.0 - finish / HOUR_S, actual(to))
                    }
                    None => running_cost(power(vm, *at), 1.0, actual(*at)),
                };
        }
        // Those still under way (or waiting for room) carry over.
        underway.retain(|u| !matches!(u.progress, Progress::Finished | Progress::Failed | Progress::Skipped));

        // Capacity at the hour's end: what runs at a site, and what is on its way there.
        let load = load(fleet, &site, &underway);
        totals.capacity_violations += (0..fleet.sites.len()).filter(|&s| !fits(fleet, &load[s], s)).count() as u64;

        let migration = MigrationCost { energy: migrating, egress_cost: egress, downtime_penalty: penalty };
        let objective = running.weighted(settings.weights) + migration.weighted(settings.weights);
        let cost = running + migrating;
        totals.energy_cost += cost.energy_cost;
        totals.emissions_kg += cost.emissions_kg;
        totals.egress_cost += egress;
        totals.downtime_penalty += penalty;
        totals.objective += objective;
        let mut vcpus_at = vec![0.0; fleet.sites.len()];
        for (vm, &at) in site.iter().enumerate() {
            vcpus_at[at] += f64::from(fleet.vms[vm].shape.vcpus);
        }
        hours.push(Hour { cost, objective, vcpus_at });
        if !tick() {
            return Err(ScenarioError(format!(
                "stopped after {} of {} hours",
                hours.len(),
                scenario.to - scenario.from
            )));
        }
    }
    Ok(Replay { policy, totals, hours })
}

/// What `policy` is shown at hour `h`: the fleet as it stands (VMs on the
/// move counted pinned at their destination; the
/// moves of the last 24 hours counted) and each site's signals for its
/// horizon (cut at the traces' end).
fn policy_input(
    scenario: &Scenario,
    policy: Policy,
    h: usize,
    site: &[usize],
    underway: &[Underway],
    moved_at: &[Vec<(usize, usize)>],
) -> Result<PlanInput, ScenarioError> {
    let mut input = scenario.fleet.clone();
    let (horizon, forecast) = match policy {
        Policy::Oracle => (scenario.horizon_h.max(ORACLE_HORIZON_H), Forecast::Perfect),
        Policy::Greedy => {
            // One hour's saving against the migration's cost, nothing more.
            input.settings.min_net_saving = 0.0;
            (1, scenario.forecast)
        }
        Policy::Static | Policy::Planner => (scenario.horizon_h, scenario.forecast),
    };
    let slots = horizon.min(scenario.actuals[0].len() - h);
    for (s, plan_site) in input.sites.iter_mut().enumerate() {
        plan_site.signals = forecast_view(scenario, forecast, s, h, slots)?;
    }
    for (vm, v) in input.vms.iter_mut().enumerate() {
        v.site = site[vm];
        v.moves_today = moved_at[vm].iter().filter(|&&(at, _)| at + 24 > h).count() as u32;
    }
    let left = moved_at
        .iter()
        .enumerate()
        .flat_map(|(vm, moves)| moves.iter().map(move |&(at, from)| (vm, from, (h - at) as f64 * 3600.0)));
    planner::inputs::departures(&mut input, left);
    // Room is held for every migration decided, started or not, as the
    // plans service holds it for every migration job not yet ended.
    for u in underway {
        hold_room(&mut input, u.vm, u.to);
    }
    Ok(input)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::cost::SlotSignal;
    use crate::domain::simulation::oracle_share;
    use crate::domain::simulation::tests::{scenario, CLEAN, DIRTY};

    fn replays(s: &Scenario) -> Vec<Replay> {
        Policy::ALL.into_iter().map(|p| replay(s, p, &|| true).unwrap()).collect()
    }

    #[test]
    fn when_one_region_is_always_cleaner_everything_moves_there_once() {
        let s = scenario(0.0, 0.001, vec![vec![DIRTY; 120], vec![CLEAN; 120]]);
        let replays = replays(&s);
        let (fixed, oracle) = (&replays[0].totals, &replays[3].totals);
        assert_eq!(fixed.migrations, 0);
        for r in &replays[1..] {
            let t = &r.totals;
            assert_eq!((t.migrations, t.failed_migrations, t.capacity_violations), (10, 0, 0), "{:?}", r.policy);
            assert_eq!(r.hours.last().unwrap().vcpus_at, [0.0, 40.0], "{:?}", r.policy);
            assert!(t.objective < fixed.objective && t.emissions_kg < fixed.emissions_kg);
            assert!(t.downtime_s > 0.0 && t.migrated_bytes > 10.0 * 16.0 * 1e9);
            let share = oracle_share(t, fixed, oracle).unwrap();
            assert!(share > 0.95 && share < 1.05, "{:?}: {share}", r.policy);
        }
    }

    #[test]
    fn when_regions_alternate_and_moving_is_dear_nothing_moves() {
        let day = |first: SlotSignal, second: SlotSignal| -> Vec<SlotSignal> {
            (0..120).map(|h| if h % 24 < 12 { first } else { second }).collect()
        };
        let s = scenario(500.0, 0.01, vec![day(CLEAN, DIRTY), day(DIRTY, CLEAN)]);
        let replays = replays(&s);
        for r in &replays {
            assert_eq!(r.totals.migrations, 0, "{:?}", r.policy);
            assert_eq!(r.totals.objective, replays[0].totals.objective);
        }
        assert_eq!(oracle_share(&replays[2].totals, &replays[0].totals, &replays[3].totals), None);
    }
}
