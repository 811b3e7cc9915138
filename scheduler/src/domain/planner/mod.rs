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
//!
//! Layout: the types here are what goes in and out; [`inputs`] builds a
//! [`PlanInput`] from the inventory; `classes` groups interchangeable VMs
//! and prices each class's choices; `model` turns classes into the
//! columns and constraints of the LP/MIP; `solve` runs the solvers and
//! assembles the [`Plan`]; `explain` says why each move is made and what a
//! placement costs; `greedy` is the baseline planners are measured against.

mod classes;
mod explain;
mod greedy;
pub mod inputs;
mod model;
mod solve;

pub use classes::{horizon_weighted, DIRTY_RATE_FLOOR_BYTES_PER_S};
pub use greedy::{greedy, Greedy};
pub(crate) use model::{amounts, demand};
pub use solve::plan;

use super::cost::{Cost, MigrationCost, MigrationEstimate, MigrationPrices, SiteEnergy, SlotSignal, VmShape, Weights};

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

pub const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const GB_S: f64 = 125e6;

    /// A dear site (0) and a cheap one (1), linked both ways.
    pub(crate) fn two_sites() -> PlanInput {
        input(vec![site("A", 200.0, 0.0, 1000.0), site("B", 50.0, 0.0, 1000.0)], vec![], vec![link(0, 1), link(1, 0)])
    }

    pub(crate) fn site(name: &str, price: f64, carbon: f64, capacity_vcpus: f64) -> PlanSite {
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

    pub(crate) fn link(from: usize, to: usize) -> PlanLink {
        PlanLink { from, to, usable_bytes_per_s: GB_S, egress_per_gb: 0.0, rtt_ms: 10.0 }
    }

    pub(crate) fn input(sites: Vec<PlanSite>, vms: Vec<PlanVm>, links: Vec<PlanLink>) -> PlanInput {
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
}
