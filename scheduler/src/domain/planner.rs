//! The placement planner: where every VM should run so that energy cost
//! plus the price of its emissions plus the cost of moving it is least
//! over the horizon, within site capacity, VM constraints and the bytes
//! each WAN link can carry.
//!
//! Model. A placement holds for the whole horizon and moves happen in the
//! first slot, which is what gets executed: the plan is remade every hour,
//! so later slots weigh on whether a move pays, and a move that only pays
//! later is made by a later plan. Interchangeable VMs (same shape, disk,
//! dirty-rate bucket, downtime, current site and constraints) form a class
//! with an integer count per site: at fleet scale this cuts the model by an
//! order of magnitude and leaves the optimum unchanged. VMs under a group
//! policy stay individual. A move is offered wherever it converges on its
//! link; the model charges it `min_net_saving` on top of its cost (the
//! churn charge), so a VM moves for money only when the saving beats both,
//! yet may still move when capacity, a down site or a group requires it.
//!
//! Solving. The LP relaxation (Clp, the fastest LP engine here on these
//! transport-like models) gives the bound and most of the placement: the
//! classes it places in whole VMs are kept; the few it splits, and every
//! group member, go to a small MIP (HiGHS) over what capacity and link
//! budgets remain (the whole MIP if that finds nothing). Should the result
//! still be further than `mip_gap` from the bound, the whole MIP searches
//! on from it while time remains. Integrality is checked on what the
//! solvers hand back, and the gap to the bound is reported as it is.

pub mod inputs;

use std::collections::HashMap;
use std::time::Instant;

use good_lp::solvers::{SolutionStatus, WithTimeLimit};
use good_lp::{
    variable, Expression, ProblemVariables, ResolutionError, Solution, SolverModel, Variable, VariableDefinition,
    WithInitialSolution,
};

use super::cost::{
    estimate_migration, migration_cost, power_kw, running_cost, Cost, MigrationCost, MigrationEstimate, MigrationInput,
    MigrationPrices, PreCopyInput, SiteEnergy, SlotSignal, VmShape, Weights,
};

/// Whether a site takes VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Takes new VMs.
    Open,
    /// Keeps what it hosts, takes nothing new.
    Draining,
    /// Everything must leave.
    Down,
    /// Everything should leave; a VM that finds no room elsewhere stays, at
    /// [`EVACUATION_PENALTY`] (more for higher priorities).
    Evacuating,
}

/// What leaving a VM on a site being evacuated costs in the objective,
/// times 1 + priority / 100: far above any running or migration cost, so
/// VMs stay only where nothing else is possible, the least important first.
pub const EVACUATION_PENALTY: f64 = 1e4;

impl Admission {
    /// Whether VMs here must or should leave.
    fn evacuating(self) -> bool {
        matches!(self, Admission::Down | Admission::Evacuating)
    }
}

/// Resources, of a site (capacity) or a VM (demand).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resources {
    pub vcpus: f64,
    pub memory_gib: f64,
    pub disk_gib: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlanSite {
    pub name: String,
    pub capacity: Resources,
    pub energy: SiteEnergy,
    pub admission: Admission,
    /// One per slot of the horizon.
    pub signals: Vec<SlotSignal>,
    /// What all its outgoing links together can send, bytes/s, if they share an uplink.
    pub uplink_bytes_per_s: Option<f64>,
    pub downlink_bytes_per_s: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlanVm {
    pub name: String,
    pub shape: VmShape,
    pub disk_gib: f64,
    pub dirty_bytes_per_s: f64,
    pub max_downtime_s: f64,
    /// Index of its current site.
    pub site: usize,
    /// Site indices it may run at; `None` means anywhere.
    pub allowed: Option<Vec<usize>>,
    pub pinned: bool,
    /// Index into `PlanInput::groups`.
    pub group: Option<usize>,
    /// Moves it made in the last 24 hours.
    pub moves_today: u32,
    /// 0-100; higher goes first when a site is evacuated.
    pub priority: u8,
    /// Bytes of its disk that sites already hold (a standby's replica as
    /// fresh as last reported), by site index: a move there sends the rest.
    pub cached: Vec<(usize, f64)>,
    /// Bytes of its memory that sites kept when it last left them, as
    /// [`super::cost::memory_kept_share`] predicts them, by site index.
    pub memory_kept: Vec<(usize, f64)>,
    /// Whether the sites it leaves keep its memory (its driver's executors do).
    pub keeps_memory: bool,
}

impl PlanVm {
    /// Bytes of its disk that `site` holds already.
    pub fn cached_at(&self, site: usize) -> f64 {
        held_at(&self.cached, site)
    }

    /// Bytes of its memory that `site` kept.
    pub fn memory_kept_at(&self, site: usize) -> f64 {
        held_at(&self.memory_kept, site)
    }

    /// Bytes of memory a move to `site` sends in its first round.
    pub fn memory_to_send(&self, site: usize) -> f64 {
        (self.shape.memory_gib * GIB - self.memory_kept_at(site)).max(0.0)
    }
}

fn held_at(held: &[(usize, f64)], site: usize) -> f64 {
    held.iter().find(|&&(s, _)| s == site).map_or(0.0, |&(_, bytes)| bytes)
}

/// How a group's members must be placed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GroupRule {
    /// On at least `min_sites` sites, at most `max_per_site` at each.
    Spread { min_sites: u32, max_per_site: u32 },
    /// All at sites within `max_rtt_ms` of each other.
    Colocate { max_rtt_ms: f64 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlanGroup {
    pub name: String,
    pub rule: GroupRule,
}

/// A directed link, by site index.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanLink {
    pub from: usize,
    pub to: usize,
    /// What the background reserve leaves, bytes/s.
    pub usable_bytes_per_s: f64,
    pub egress_per_gb: f64,
    pub rtt_ms: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlanInput {
    pub sites: Vec<PlanSite>,
    pub vms: Vec<PlanVm>,
    pub links: Vec<PlanLink>,
    pub groups: Vec<PlanGroup>,
    pub settings: Settings,
}

/// How to weigh and solve.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub slot_hours: f64,
    /// The currency of the sites' prices (for reasons).
    pub currency: String,
    pub weights: Weights,
    pub prices: MigrationPrices,
    /// Least saving (net of its cost) a move must bring to be made for money alone.
    pub min_net_saving: f64,
    /// A VM that moved this often in the last 24 hours stays, unless its site is down.
    pub max_moves_per_day: u32,
    /// Share of raw bytes that travel after dedup and compression.
    pub wire_fraction: f64,
    pub time_limit_s: f64,
    /// Relative MIP gap at which the solver may stop.
    pub mip_gap: f64,
}

/// A VM to move, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Move {
    pub vm: usize,
    pub from: usize,
    pub to: usize,
    /// Running cost over the horizon at `from` minus at `to`.
    pub saving: Cost,
    pub migration: MigrationCost,
    /// `migration`, weighted.
    pub migration_cost: f64,
    pub estimate: MigrationEstimate,
    pub reason: String,
}

/// What a placement costs over the horizon.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Breakdown {
    /// Running the VMs, plus the energy their migrations use.
    pub energy: Cost,
    pub migration_bytes: f64,
    /// Migrations, weighted (energy, egress, downtime).
    pub migration_cost: f64,
    /// `min_net_saving` per move: the charge against churn the model adds.
    pub churn_charge: f64,
    /// VMs left on a site being evacuated (see [`EVACUATION_PENALTY`]).
    pub evacuation_penalty: f64,
    /// What the planner minimises: running and migrations weighted, plus the churn charge.
    pub objective: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SolverStats {
    pub classes: usize,
    pub variables: usize,
    pub rows: usize,
    /// Classes the LP split, solved again as a MIP.
    pub fractional_classes: usize,
    pub solve_s: f64,
    /// The LP relaxation's optimum: no placement can cost less.
    pub lp_bound: f64,
    /// The best proven bound: the LP's, or higher when the whole MIP ran to
    /// its gap (its objective less the gap it was allowed).
    pub bound: f64,
    /// (objective - bound) / |bound|.
    pub gap: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Site index per VM.
    pub placement: Vec<usize>,
    pub moves: Vec<Move>,
    pub totals: Breakdown,
    /// Leaving every VM where it is.
    pub baseline: Breakdown,
    pub stats: SolverStats,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// No placement satisfies the constraints; names the binding one.
    #[error("{0}")]
    Infeasible(String),
    #[error("solver: {0}")]
    Solver(String),
}

/// A move's link and what it takes.
#[derive(Debug, Clone, Copy)]
struct Migration {
    /// Index into `PlanInput::links`.
    link: usize,
    estimate: MigrationEstimate,
    cost: MigrationCost,
    /// `cost`, weighted.
    weighted: f64,
}

/// One place a class may run: a site, what running there costs over the
/// horizon, and (if it is a move) what moving costs.
#[derive(Debug, Clone)]
struct Choice {
    site: usize,
    /// Weighted cost over the horizon, migration included.
    cost: f64,
    /// What the model adds to a move against churn (`min_net_saving`); 0 for staying.
    hurdle: f64,
    migration: Option<Migration>,
}

struct Class {
    /// Highest dirty rate first: the members that stay are taken first, so
    /// those that move are the cheapest to move.
    members: Vec<usize>,
    options: Vec<Choice>,
}

/// What running `vm` at `site` over the horizon costs, weighted as the planner weighs it.
pub fn horizon_weighted(input: &PlanInput, vm: &PlanVm, site: usize) -> f64 {
    horizon_cost(&input.sites[site], vm, input.settings.slot_hours).weighted(input.settings.weights)
}

fn horizon_cost(site: &PlanSite, vm: &PlanVm, slot_hours: f64) -> Cost {
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
fn classes(input: &PlanInput) -> Vec<Class> {
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
fn staying_penalty(input: &PlanInput, vm: &PlanVm) -> f64 {
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

pub const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

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

/// A move with its saving, predicted migration and reason.
fn explain(input: &PlanInput, vm: usize, to: usize, migration: &Migration) -> Move {
    let v = &input.vms[vm];
    let (from_site, to_site) = (&input.sites[v.site], &input.sites[to]);
    let saving =
        horizon_cost(from_site, v, input.settings.slot_hours) - horizon_cost(to_site, v, input.settings.slot_hours);
    let net = saving.weighted(input.settings.weights) - migration.weighted;
    let mean = |site: &PlanSite, of: fn(&SlotSignal) -> f64| {
        site.signals.iter().map(of).sum::<f64>() / site.signals.len().max(1) as f64
    };
    let reason = if from_site.admission.evacuating() {
        format!(
            "evacuation: {} is {}",
            from_site.name,
            if from_site.admission == Admission::Down { "down" } else { "being evacuated" }
        )
    } else if net + 1e-9 >= input.settings.min_net_saving {
        let (cur, kg) = (&input.settings.currency, saving.emissions_kg);
        let money = if saving.energy_cost >= 0.0 {
            format!("saves {:.2} {cur}", saving.energy_cost)
        } else {
            format!("costs {:.2} {cur} more", -saving.energy_cost)
        };
        let carbon =
            if kg >= 0.0 { format!("saves {kg:.1} kg CO2e") } else { format!("emits {:.1} kg CO2e more", -kg) };
        format!(
            "cheaper at {to}: {money} and {carbon} over {hours} h (average {p_to:.0} vs \
             {p_from:.0} {cur}/MWh, {c_to:.0} vs {c_from:.0} g/kWh at {from}), net of a migration costing {m:.2}",
            to = to_site.name,
            from = from_site.name,
            hours = from_site.signals.len() as f64 * input.settings.slot_hours,
            p_to = mean(to_site, |s| s.price_per_mwh),
            p_from = mean(from_site, |s| s.price_per_mwh),
            c_to = mean(to_site, |s| s.carbon_g_per_kwh),
            c_from = mean(from_site, |s| s.carbon_g_per_kwh),
            m = migration.weighted,
        )
    } else if let Some(group) = v.group {
        format!(
            "group {}: its {} policy needs this member at {} (net {net:.2} on its own)",
            input.groups[group].name,
            match input.groups[group].rule {
                GroupRule::Spread { .. } => "spread",
                GroupRule::Colocate { .. } => "colocate",
            },
            to_site.name
        )
    } else {
        format!("capacity: frees room at {} for what cannot go elsewhere (net {net:.2} on its own)", from_site.name)
    };
    Move {
        vm,
        from: v.site,
        to,
        saving,
        migration: migration.cost,
        migration_cost: migration.weighted,
        estimate: migration.estimate,
        reason,
    }
}

/// What leaving every VM where it is, but for `moves`, costs.
fn breakdown(input: &PlanInput, moves: &[Move]) -> Breakdown {
    let mut totals = Breakdown::default();
    for vm in &input.vms {
        let running = horizon_cost(&input.sites[vm.site], vm, input.settings.slot_hours);
        totals.energy = totals.energy + running;
        totals.objective += running.weighted(input.settings.weights);
        totals.evacuation_penalty += staying_penalty(input, vm);
    }
    for m in moves {
        totals.evacuation_penalty -= staying_penalty(input, &input.vms[m.vm]);
        totals.energy = totals.energy - m.saving + m.migration.energy;
        totals.migration_bytes += m.estimate.wire_bytes;
        totals.migration_cost += m.migration_cost;
        totals.churn_charge += input.settings.min_net_saving.max(0.0);
        totals.objective +=
            m.migration_cost + input.settings.min_net_saving.max(0.0) - m.saving.weighted(input.settings.weights);
    }
    totals.objective += totals.evacuation_penalty;
    totals
}

/// What the greedy baseline does.
#[derive(Debug, Clone, PartialEq)]
pub struct Greedy {
    pub moves: Vec<Move>,
    /// Comparable with [`Breakdown::objective`].
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

/// Bytes a link may carry in the first slot.
fn link_budget(input: &PlanInput, link: usize) -> f64 {
    input.links[link].usable_bytes_per_s * input.settings.slot_hours * 3600.0
}

/// What VMs already placed take: resources per site, bytes per link.
struct Taken {
    load: Vec<[f64; 3]>,
    link_bytes: Vec<f64>,
}

impl Taken {
    fn none(input: &PlanInput) -> Taken {
        Taken { load: vec![[0.0; 3]; input.sites.len()], link_bytes: vec![0.0; input.links.len()] }
    }

    /// What `counts` (VMs per class and choice) take.
    fn by(input: &PlanInput, classes: &[Class], counts: &[Vec<usize>]) -> Taken {
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

/// Resource amounts in a fixed order: vCPUs, memory (GiB), disk (GiB).
const RESOURCE_NAMES: [(&str, &str); 3] = [("vcpus", ""), ("memory", " GiB"), ("disk", " GiB")];

/// A site's capacity or a VM's demand: vCPUs, memory GiB, disk GiB.
pub(crate) fn amounts(r: &Resources) -> [f64; 3] {
    [r.vcpus, r.memory_gib, r.disk_gib]
}

pub(crate) fn demand(vm: &PlanVm) -> [f64; 3] {
    amounts(&Resources { vcpus: f64::from(vm.shape.vcpus), memory_gib: vm.shape.memory_gib, disk_gib: vm.disk_gib })
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

/// Column values for a placement given as counts per class and choice.
fn initial_solution(
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

/// Adds the constraints; returns how many rows.
fn constrain<M: SolverModel>(
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
fn rtt(input: &PlanInput, a: usize, b: usize) -> f64 {
    input
        .links
        .iter()
        .filter(|l| (l.from, l.to) == (a, b) || (l.from, l.to) == (b, a))
        .map(|l| l.rtt_ms)
        .fold(f64::INFINITY, f64::min)
}

/// Names the constraint that makes the problem infeasible, where a simple
/// count can: a site whose VMs with nowhere else to go exceed a resource.
fn diagnose(input: &PlanInput, classes: &[Class]) -> String {
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
pub(crate) mod tests {
    use super::*;

    const GB_S: f64 = 125e6;

    /// A dear site (0) and a cheap one (1), linked both ways.
    pub(crate) fn two_sites() -> PlanInput {
        input(vec![site("A", 200.0, 0.0, 1000.0), site("B", 50.0, 0.0, 1000.0)], vec![], vec![link(0, 1), link(1, 0)])
    }

    fn site(name: &str, price: f64, carbon: f64, capacity_vcpus: f64) -> PlanSite {
        PlanSite {
            name: name.into(),
            capacity: Resources { vcpus: capacity_vcpus, memory_gib: 1e6, disk_gib: 1e6 },
            energy: SiteEnergy { pue: 1.0, watts_per_vcpu: 10.0, watts_per_gib: 0.0 },
            admission: Admission::Open,
            signals: vec![SlotSignal { price_per_mwh: price, carbon_g_per_kwh: carbon }; 24],
            uplink_bytes_per_s: None,
            downlink_bytes_per_s: None,
        }
    }

    pub(crate) fn vm(name: &str, at: usize) -> PlanVm {
        PlanVm {
            name: name.into(),
            shape: VmShape { vcpus: 100, memory_gib: 1.0 },
            disk_gib: 0.0,
            dirty_bytes_per_s: 0.0,
            max_downtime_s: 0.5,
            site: at,
            allowed: None,
            pinned: false,
            group: None,
            moves_today: 0,
            priority: 50,
            cached: Vec::new(),
            memory_kept: Vec::new(),
            keeps_memory: false,
        }
    }

    fn link(from: usize, to: usize) -> PlanLink {
        PlanLink { from, to, usable_bytes_per_s: GB_S, egress_per_gb: 0.0, rtt_ms: 10.0 }
    }

    fn input(sites: Vec<PlanSite>, vms: Vec<PlanVm>, links: Vec<PlanLink>) -> PlanInput {
        PlanInput {
            sites,
            vms,
            links,
            groups: vec![],
            settings: Settings {
                slot_hours: 1.0,
                currency: "EUR".into(),
                weights: Weights::blend(0.0),
                prices: MigrationPrices { network_kwh_per_gb: 0.0, egress_per_gb: 0.0, downtime_penalty_per_s: 0.0 },
                min_net_saving: 0.0,
                max_moves_per_day: 2,
                wire_fraction: 1.0,
                time_limit_s: 10.0,
                mip_gap: 0.0,
            },
        }
    }

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

    #[test]
    fn churn_hurdle_and_forced_moves() {
        // Saving 3.6 a day beats a hurdle of 3 but not of 4.
        let mut i = input(
            vec![site("A", 200.0, 0.0, 1000.0), site("B", 50.0, 0.0, 1000.0)],
            vec![vm("v", 0)],
            vec![link(0, 1)],
        );
        i.settings.min_net_saving = 3.0;
        assert_eq!(plan(&i).unwrap().placement, [1]);
        i.settings.min_net_saving = 4.0;
        assert_eq!(plan(&i).unwrap().placement, [0]);
        // A full site still sheds what it cannot hold, hurdle or not.
        i.sites[0].capacity.vcpus = 100.0;
        i.vms.push(vm("w", 0));
        let p = plan(&i).unwrap();
        assert_eq!(p.moves.len(), 1);
        let m = &p.moves[0];
        assert!(m.reason.starts_with("capacity: frees room at A"), "{}", m.reason);
        assert_eq!(p.totals.churn_charge, 4.0);
        assert!(
            (p.totals.objective - (p.baseline.objective - m.saving.energy_cost + m.migration_cost + 4.0)).abs() < 1e-9
        );
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
