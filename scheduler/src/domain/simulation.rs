//! The what-if simulator: replays hourly carbon and price traces through a
//! placement policy, hour by hour, and accounts for what the fleet would
//! have cost and emitted, and what its migrations took.
//!
//! Each hour a policy sees only what it would see live: the actuals up to
//! the hour before, and a forecast of the hours ahead (`Forecast`); the
//! oracle alone is shown the actual future. It decides moves with the
//! service's own planner (or the greedy baseline); the moves then run in
//! the migration scheduler's fluid model ([`schedule::advance`]) with
//! Heliotrope's admission and caps, so they take time and bandwidth, may
//! wait for room, may outlast the hour, and a VM keeps running at its
//! source until its migration ends; one starts only once its destination
//! has room (the plan's departures from there may still be under way).
//! Energy is accounted at the actual
//! signals, per VM and per second of the hour it ran where it ran: running,
//! the destination's copy while a migration is under way, and the network
//! energy of the bytes sent; plus egress and the downtime penalty. While a
//! VM moves, the plans count it pinned at its destination (`hold_room`).
//! Capacity is checked at every hour's end, in-flight arrivals counted.
//!
//! Pure: no IO. The caller brings the fleet (a [`PlanInput`]) and the
//! traces (`traces`), and turns the [`Run`]s into reports.

pub mod traces;

use std::str::FromStr;

use chrono::{DateTime, Utc};
use heliotrope_api_spec::SimulationRequest;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use super::cost::{energy_cost, power_kw, running_cost, Cost, MigrationCost, SlotSignal};
use super::inventory::check_range;
use super::planner::inputs::persist;
use super::planner::inputs::{check_horizon, hold_room};
use super::planner::{self, amounts, demand, PlanInput};
use super::schedule::{self, advance, Goal, Progress};
use super::{Valid, ValidationError};

/// Who decides the moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Policy {
    /// No moves.
    Static,
    /// Each hour, every VM to the cheapest site with room if the saving of
    /// that one hour beats the migration's cost.
    Greedy,
    /// The service's planner over a receding horizon, on forecasts.
    Planner,
    /// The planner shown the actual future, over at least [`ORACLE_HORIZON_H`].
    Oracle,
}

impl Policy {
    pub const ALL: [Policy; 4] = [Policy::Static, Policy::Greedy, Policy::Planner, Policy::Oracle];

    pub fn name(self) -> &'static str {
        match self {
            Policy::Static => "static",
            Policy::Greedy => "greedy",
            Policy::Planner => "planner",
            Policy::Oracle => "oracle",
        }
    }
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Policy::ALL
            .into_iter()
            .find(|p| p.name() == text)
            .ok_or_else(|| format!("'{text}' is not a policy: static, greedy, planner or oracle"))
    }
}

/// What the policies (but the oracle) are shown of the hours ahead.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Forecast {
    /// The same hour of the day before, as the plans service fills a gap.
    Persistence,
    /// Our own forecast from past values only ([`from_history`]): the
    /// median of the same hour over the last week, plus the last hours'
    /// departure from it, fading with the lead.
    History,
    /// The actual value times 1 + SIGMA x a standard normal draw, per site,
    /// signal, hour and lead (seeded: every policy is shown the same).
    Noisy { sigma: f64 },
    /// The actual future.
    Perfect,
}

/// Largest SIGMA `noisy:SIGMA` accepts.
pub const MAX_NOISE_SIGMA: f64 = 2.0;

impl FromStr for Forecast {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "persistence" => Ok(Forecast::Persistence),
            "history" => Ok(Forecast::History),
            "perfect" => Ok(Forecast::Perfect),
            _ => {
                let sigma = text.strip_prefix("noisy:").and_then(|s| s.parse::<f64>().ok()).ok_or_else(|| {
                    format!("'{text}' is not a forecast: persistence, history, perfect or noisy:SIGMA")
                })?;
                if !(0.0..=MAX_NOISE_SIGMA).contains(&sigma) {
                    return Err(format!("noisy:{sigma}: SIGMA must be between 0 and {MAX_NOISE_SIGMA}"));
                }
                Ok(Forecast::Noisy { sigma })
            }
        }
    }
}

impl std::fmt::Display for Forecast {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Forecast::Persistence => write!(f, "persistence"),
            Forecast::History => write!(f, "history"),
            Forecast::Perfect => write!(f, "perfect"),
            Forecast::Noisy { sigma } => write!(f, "noisy:{sigma}"),
        }
    }
}

/// The oracle plans at least this far ahead.
pub const ORACLE_HORIZON_H: usize = 48;
impl Forecast {
    /// Hours of traces the forecast needs before the first hour simulated:
    /// persistence looks a day back, and so does history at least (it
    /// uses up to a week where the traces hold it).
    pub fn history_h(self) -> usize {
        match self {
            Forecast::Persistence | Forecast::History => 24,
            Forecast::Noisy { .. } | Forecast::Perfect => 0,
        }
    }
}
const HOUR_S: f64 = 3600.0;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The fleet at the window's start, with the planner's settings; the
    /// sites' signals are replaced every hour by what the policy is shown.
    pub fleet: PlanInput,
    /// Per site of `fleet`, the actual signals of every hour of the traces.
    pub actuals: Vec<Vec<SlotSignal>>,
    /// The hours simulated: `from..to`, indices into `actuals`.
    pub from: usize,
    pub to: usize,
    /// The planner's horizon, hours.
    pub horizon_h: usize,
    pub forecast: Forecast,
    /// Seeds the noisy forecast.
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ScenarioError(pub String);

impl Scenario {
    /// Checks that the traces cover every site and the window, and that a
    /// persistence forecast has a day of history.
    pub fn check(&self) -> Result<(), ScenarioError> {
        let fail = |why: String| Err(ScenarioError(why));
        let hours = self.actuals.first().map_or(0, Vec::len);
        if self.actuals.len() != self.fleet.sites.len() {
            return fail(format!(
                "traces for {} sites, but the fleet has {}",
                self.actuals.len(),
                self.fleet.sites.len()
            ));
        }
        if self.actuals.iter().any(|a| a.len() != hours) {
            return fail("the sites' traces cover different hours".into());
        }
        if self.fleet.vms.is_empty() {
            return fail("the fleet has no VMs".into());
        }
        check_horizon("horizon", u32::try_from(self.horizon_h).unwrap_or(u32::MAX))
            .map_err(|e| ScenarioError(e.to_string()))?;
        if self.from >= self.to || self.to > hours {
            return fail(format!(
                "the window (hours {}..{}) is not within the {hours} hours of traces",
                self.from, self.to
            ));
        }
        if self.from < self.forecast.history_h() {
            return fail(format!(
                "a {} forecast needs {} hours of traces before the first hour simulated",
                self.forecast,
                self.forecast.history_h()
            ));
        }
        Ok(())
    }
}

/// One hour of a run, as it happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Hour {
    /// Energy of running and migrating, at the actual signals.
    pub cost: Cost,
    /// Everything weighted as the planner weighs it (egress and downtime included).
    pub objective: f64,
    /// vCPUs running at each site at the hour's end (a VM on the move runs at its source).
    pub vcpus_at: Vec<f64>,
}

/// A run's totals.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    pub energy_cost: f64,
    pub emissions_kg: f64,
    pub egress_cost: f64,
    pub downtime_penalty: f64,
    /// What the planner minimises, as it happened (no churn charge: that is no real cost).
    pub objective: f64,
    pub migrated_bytes: f64,
    /// Migrations completed.
    pub migrations: u64,
    /// Migrations given up (the VM stayed at its source).
    pub failed_migrations: u64,
    pub downtime_s: f64,
    /// Site-hours that ended over capacity in any resource.
    pub capacity_violations: u64,
    /// Hours the planner found no plan (the fleet stayed put).
    pub unplanned_hours: u64,
    /// Time spent deciding, seconds.
    pub decide_s: f64,
}

/// A policy's run over the window.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub policy: Policy,
    pub totals: Totals,
    pub hours: Vec<Hour>,
}

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

/// Runs `policy` over the scenario's window; `tick` is called after every
/// hour, and the run stops (with an error) when it answers `false`.
pub fn run(scenario: &Scenario, policy: Policy, tick: &(dyn Fn() -> bool + Sync)) -> Result<Run, ScenarioError> {
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
        let (ran, next) = advance(&network, &flows, schedule::Policy::Heliotrope(Goal::MeanCompletion), &now, HOUR_S);

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
    Ok(Run { policy, totals, hours })
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

/// The signals of `site` for `slots` hours from `h` as `forecast` shows them.
fn forecast_view(
    scenario: &Scenario,
    forecast: Forecast,
    site: usize,
    h: usize,
    slots: usize,
) -> Result<Vec<SlotSignal>, ScenarioError> {
    let actual = &scenario.actuals[site];
    match forecast {
        Forecast::Perfect => Ok(actual[h..h + slots].to_vec()),
        Forecast::Persistence => persist(slots, |slot| {
            let at = h as i64 + slot;
            (slot < 0 && at >= 0).then(|| actual[at as usize])
        })
        .map_err(|_| ScenarioError(format!("no history for a persistence forecast at hour {h}"))),
        Forecast::History => {
            let past = &actual[..h];
            let series = |value: fn(&SlotSignal) -> f64| {
                from_history(&past.iter().map(value).collect::<Vec<_>>(), slots)
                    .ok_or_else(|| ScenarioError(format!("no day of history for the history forecast at hour {h}")))
            };
            let (price, carbon) = (series(|a| a.price_per_mwh)?, series(|a| a.carbon_g_per_kwh)?);
            Ok(price
                .into_iter()
                .zip(carbon)
                .map(|(price_per_mwh, carbon)| SlotSignal { price_per_mwh, carbon_g_per_kwh: carbon.max(0.0) })
                .collect())
        }
        Forecast::Noisy { sigma } => {
            let mut rng = StdRng::seed_from_u64(
                scenario.seed ^ (h as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (site as u64).rotate_left(32),
            );
            let mut noisy = |value: f64| {
                let z: f64 = StandardNormal.sample(&mut rng);
                value * (1.0 + sigma * z).max(0.0)
            };
            Ok(actual[h..h + slots]
                .iter()
                .map(|a| SlotSignal {
                    price_per_mwh: noisy(a.price_per_mwh),
                    carbon_g_per_kwh: noisy(a.carbon_g_per_kwh),
                })
                .collect())
        }
    }
}

/// Days of the same hour the history forecast takes the median of.
const HISTORY_DAYS: usize = 7;
/// Recent hours whose departure from the weekly profile the history forecast carries forward.
const RECENT_H: usize = 3;
/// How fast that departure fades with the lead, hours.
const FADE_H: f64 = 6.0;

/// A forecast of the `slots` hours after `past` (hourly values, oldest
/// first) from `past` alone; `None` with less than a day of it. Each hour
/// ahead is the median of the same hour on up to [`HISTORY_DAYS`] earlier
/// days, so that one day's spike is not repeated the next, plus how far
/// the last [`RECENT_H`] hours stood from their own such median (the
/// level now), fading with the lead.
pub fn from_history(past: &[f64], slots: usize) -> Option<Vec<f64>> {
    let now = past.len();
    if now < 24 {
        return None;
    }
    // The median of the same hour as `t` on the days before it, among those known.
    let profile = |t: usize| {
        let mut same_hour: Vec<f64> = (1..)
            .map(|day| t.checked_sub(24 * day))
            .map_while(|i| i)
            .filter(|&i| i < now)
            .take(HISTORY_DAYS)
            .map(|i| past[i])
            .collect();
        same_hour.sort_by(f64::total_cmp);
        let n = same_hour.len();
        (n > 0).then(|| if n % 2 == 1 { same_hour[n / 2] } else { (same_hour[n / 2 - 1] + same_hour[n / 2]) / 2.0 })
    };
    let recent: Vec<f64> = (now.saturating_sub(RECENT_H)..now).filter_map(|t| Some(past[t] - profile(t)?)).collect();
    let level = if recent.is_empty() { 0.0 } else { recent.iter().sum::<f64>() / recent.len() as f64 };
    (0..slots).map(|lead| Some(profile(now + lead)? + level * (-((lead + 1) as f64) / FADE_H).exp())).collect()
}

/// Most days one simulation through the API may replay.
pub const MAX_WINDOW_DAYS: i64 = 62;

/// A simulation request, checked, with its policies and forecast parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedRequest {
    pub request: Valid<SimulationRequest>,
    pub policies: Vec<Policy>,
    pub forecast: Forecast,
}

/// Checks a simulation request against `now`: a past window of whole
/// hours, at most [`MAX_WINDOW_DAYS`] long; known policies and forecast;
/// a horizon of 1 to 168 hours; a finite carbon price.
pub fn parse_request(request: SimulationRequest, now: DateTime<Utc>) -> Result<CheckedRequest, ValidationError> {
    for (field, t) in [("from", request.from), ("to", request.to)] {
        if t.timestamp() % 3600 != 0 || t.timestamp_subsec_nanos() != 0 {
            return Err(ValidationError::new(field, "must lie on the hour"));
        }
    }
    if request.to <= request.from {
        return Err(ValidationError::new("to", "must come after from"));
    }
    if request.to > now {
        return Err(ValidationError::new("to", "must lie in the past: a simulation replays stored signals"));
    }
    if request.to - request.from > chrono::Duration::days(MAX_WINDOW_DAYS) {
        return Err(ValidationError::new("to", format!("the window may be at most {MAX_WINDOW_DAYS} days")));
    }
    if request.policies.is_empty() || request.policies.len() > 4 {
        return Err(ValidationError::new("policies", "name one to four of static, greedy, planner, oracle"));
    }
    if let Some(i) = (1..request.policies.len()).find(|&i| request.policies[..i].contains(&request.policies[i])) {
        return Err(ValidationError::new(format!("policies[{i}]"), "is named twice"));
    }
    let policies = request
        .policies
        .iter()
        .enumerate()
        .map(|(i, p)| p.parse::<Policy>().map_err(|e| ValidationError::new(format!("policies[{i}]"), e)))
        .collect::<Result<Vec<_>, _>>()?;
    let forecast = request.forecast.parse::<Forecast>().map_err(|e| ValidationError::new("forecast", e))?;
    check_horizon("horizon_h", request.horizon_h)?;
    check_range("carbon_price_per_tonne", request.carbon_price_per_tonne, 0.0, 100_000.0)?;
    Ok(CheckedRequest { request: Valid(request), policies, forecast })
}

/// The share of the oracle's saving over static that `policy` captured,
/// on the objective; `None` when the oracle saved nothing.
pub fn oracle_share(policy: &Totals, static_: &Totals, oracle: &Totals) -> Option<f64> {
    let best = static_.objective - oracle.objective;
    (best > 1e-9).then(|| (static_.objective - policy.objective) / best)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::cost::{MigrationPrices, SiteEnergy, VmShape, Weights};
    use crate::domain::planner::{Admission, PlanLink, PlanSite, PlanVm, Resources, Settings};

    const CLEAN: SlotSignal = SlotSignal { price_per_mwh: 20.0, carbon_g_per_kwh: 50.0 };
    const DIRTY: SlotSignal = SlotSignal { price_per_mwh: 200.0, carbon_g_per_kwh: 600.0 };

    fn site(name: &str) -> PlanSite {
        PlanSite {
            name: name.into(),
            capacity: Resources { vcpus: 100.0, memory_gib: 400.0, disk_gib: 10_000.0 },
            energy: SiteEnergy { pue: 1.2, watts_per_vcpu: 10.0, watts_per_gib: 0.35 },
            admission: Admission::Open,
            signals: Vec::new(),
            uplink_bytes_per_s: None,
            downlink_bytes_per_s: None,
        }
    }

    /// Ten VMs at A, a 10 Gbit/s link each way, and `actuals` per site for `hours`.
    fn scenario(disk_gib: f64, network_kwh_per_gb: f64, actuals: Vec<Vec<SlotSignal>>) -> Scenario {
        let vms = (0..10)
            .map(|i| PlanVm {
                name: format!("vm-{i}"),
                shape: VmShape { vcpus: 4, memory_gib: 16.0 },
                disk_gib,
                dirty_bytes_per_s: 5e6,
                max_downtime_s: 0.3,
                site: 0,
                allowed: None,
                pinned: false,
                group: None,
                moves_today: 0,
                priority: 50,
                cached: Vec::new(),
                memory_kept: Vec::new(),
                keeps_memory: true,
            })
            .collect();
        let link = |from, to| PlanLink { from, to, usable_bytes_per_s: 1.25e9, egress_per_gb: 0.0, rtt_ms: 20.0 };
        let fleet = PlanInput {
            sites: vec![site("A"), site("B")],
            vms,
            links: vec![link(0, 1), link(1, 0)],
            groups: Vec::new(),
            settings: Settings {
                slot_hours: 1.0,
                currency: "USD".into(),
                weights: Weights::blend(100.0),
                prices: MigrationPrices { network_kwh_per_gb, egress_per_gb: 0.0, downtime_penalty_per_s: 0.01 },
                min_net_saving: 0.0,
                max_moves_per_day: 2,
                wire_fraction: 1.0,
                time_limit_s: 10.0,
                mip_gap: 0.005,
            },
        };
        let to = actuals[0].len() - ORACLE_HORIZON_H;
        Scenario { fleet, actuals, from: 24, to, horizon_h: 24, forecast: Forecast::Persistence, seed: 1 }
    }

    fn runs(s: &Scenario) -> Vec<Run> {
        Policy::ALL.into_iter().map(|p| run(s, p, &|| true).unwrap()).collect()
    }

    #[test]
    fn when_one_region_is_always_cleaner_everything_moves_there_once() {
        let s = scenario(0.0, 0.001, vec![vec![DIRTY; 120], vec![CLEAN; 120]]);
        let runs = runs(&s);
        let (fixed, oracle) = (&runs[0].totals, &runs[3].totals);
        assert_eq!(fixed.migrations, 0);
        for r in &runs[1..] {
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
        let runs = runs(&s);
        for r in &runs {
            assert_eq!(r.totals.migrations, 0, "{:?}", r.policy);
            assert_eq!(r.totals.objective, runs[0].totals.objective);
        }
        assert_eq!(oracle_share(&runs[2].totals, &runs[0].totals, &runs[3].totals), None);
    }

    #[test]
    fn policies_see_only_what_they_would_live() {
        let actual: Vec<SlotSignal> =
            (0..72).map(|h| SlotSignal { price_per_mwh: f64::from(h), carbon_g_per_kwh: 1.0 }).collect();
        let mut s = scenario(0.0, 0.001, vec![actual.clone(), actual]);
        let price = |v: Vec<SlotSignal>| v.iter().map(|x| x.price_per_mwh).collect::<Vec<_>>();
        // Persistence at hour 30: yesterday's hours 6, 7, ...
        assert_eq!(price(forecast_view(&s, Forecast::Persistence, 0, 30, 3).unwrap()), [6.0, 7.0, 8.0]);
        assert_eq!(price(forecast_view(&s, Forecast::Perfect, 0, 30, 2).unwrap()), [30.0, 31.0]);
        let noisy = forecast_view(&s, Forecast::Noisy { sigma: 0.2 }, 0, 30, 24).unwrap();
        assert_eq!(noisy, forecast_view(&s, Forecast::Noisy { sigma: 0.2 }, 0, 30, 24).unwrap(), "seeded");
        assert_ne!(price(noisy), price(forecast_view(&s, Forecast::Perfect, 0, 30, 24).unwrap()));
        s.from = 10;
        assert!(s.check().unwrap_err().0.contains("a persistence forecast needs 24 hours"));
    }

    #[test]
    fn the_history_forecast_repeats_no_spike_and_follows_the_level() {
        // A week of a daily shape (hour of the day), with a spike yesterday at hour 20.
        let day = |d: usize| (0..24).map(move |hour| if d == 6 && hour == 20 { 2000.0 } else { hour as f64 });
        let week: Vec<f64> = (0..7).flat_map(day).collect();
        let ahead = from_history(&week, 24).unwrap();
        assert_eq!(ahead[20], 20.0, "the spike is not repeated");
        assert_eq!(ahead[5], 5.0, "the daily shape is kept");
        let persistence = persist(24, |slot| (slot < 0).then(|| week[(week.len() as i64 + slot) as usize])).unwrap();
        assert_eq!(persistence[20], 2000.0, "where persistence repeats it");
        // The last hours stood 10 above their usual: the next hour is about that much higher, later ones less.
        let mut raised = week.clone();
        raised.iter_mut().rev().take(3).for_each(|v| *v += 10.0);
        let ahead = from_history(&raised, 24).unwrap();
        assert!((ahead[0] - (0.0 + 10.0 * (-1.0f64 / 6.0).exp())).abs() < 1e-9, "{}", ahead[0]);
        assert!(ahead[23] - 23.0 < 0.2);
        assert_eq!(from_history(&week[..23], 1), None, "less than a day of history");
    }

    #[test]
    fn requests_ask_for_a_past_window_of_whole_hours() {
        let now: DateTime<Utc> = "2026-12-01T10:30:00Z".parse().unwrap();
        let request = |from: &str, to: &str| SimulationRequest {
            from: from.parse().unwrap(),
            to: to.parse().unwrap(),
            policies: vec!["planner".into(), "greedy".into()],
            forecast: "noisy:0.1".into(),
            horizon_h: 24,
            mode: Default::default(),
            carbon_price_per_tonne: 100.0,
            seed: 0,
        };
        let asked = parse_request(request("2026-11-20T00:00:00Z", "2026-11-27T00:00:00Z"), now).unwrap();
        assert_eq!(
            (asked.policies, asked.forecast),
            (vec![Policy::Planner, Policy::Greedy], Forecast::Noisy { sigma: 0.1 })
        );
        let field = |r| parse_request(r, now).unwrap_err().field;
        assert_eq!(field(request("2026-11-20T00:30:00Z", "2026-11-27T00:00:00Z")), "from");
        assert_eq!(field(request("2026-11-27T00:00:00Z", "2026-11-20T00:00:00Z")), "to");
        assert_eq!(field(request("2026-11-30T00:00:00Z", "2026-12-01T11:00:00Z")), "to", "in the future");
        assert_eq!(field(request("2026-08-01T00:00:00Z", "2026-11-27T00:00:00Z")), "to", "too long");
        let mut bad = request("2026-11-20T00:00:00Z", "2026-11-27T00:00:00Z");
        bad.policies.push("best".into());
        assert_eq!(field(bad), "policies[2]");
        let mut bad = request("2026-11-20T00:00:00Z", "2026-11-27T00:00:00Z");
        bad.forecast = "crystal-ball".into();
        assert_eq!(field(bad), "forecast");
    }

    #[test]
    fn policies_and_forecasts_parse() {
        assert_eq!("oracle".parse(), Ok(Policy::Oracle));
        assert!("best".parse::<Policy>().is_err());
        assert_eq!("noisy:0.1".parse(), Ok(Forecast::Noisy { sigma: 0.1 }));
        assert_eq!("persistence".parse(), Ok(Forecast::Persistence));
        assert_eq!("history".parse(), Ok(Forecast::History));
        assert!("noisy:-1".parse::<Forecast>().is_err() && "noisy:x".parse::<Forecast>().is_err());
    }
}
