//! Plans: where the planner would run every VM over the horizon, what that
//! costs against leaving everything in place, which VMs move and why.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// What the objective weighs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlanMode {
    /// Energy cost only.
    Cost,
    /// Emissions only, priced at `carbon_price_per_tonne`.
    Carbon,
    /// Energy cost plus emissions at `carbon_price_per_tonne`.
    #[default]
    Blend,
}

/// What a plan's migration schedule favours.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleGoal {
    /// Shortest first: each VM done as soon as possible on average.
    #[default]
    MeanCompletion,
    /// Longest first: all done as soon as possible.
    Makespan,
}

fn default_horizon_h() -> u32 {
    24
}

fn default_carbon_price() -> f64 {
    100.0
}

fn default_dry_run() -> bool {
    true
}

/// What `POST /v1/plans` asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlanRequest {
    /// Hourly slots to plan over (default 24).
    #[serde(default = "default_horizon_h")]
    #[schema(minimum = 1, maximum = 168, default = 24)]
    pub horizon_h: u32,
    #[serde(default)]
    pub mode: PlanMode,
    /// Price of a tonne of CO2eq, in the price currency (default 100).
    #[serde(default = "default_carbon_price")]
    #[schema(minimum = 0, maximum = 100000, default = 100)]
    pub carbon_price_per_tonne: f64,
    /// Only propose (the default). `false` approves and applies the plan at once.
    #[serde(default = "default_dry_run")]
    #[schema(default = true)]
    pub dry_run: bool,
    /// How the moves are ordered on the WAN (default `mean_completion`).
    #[serde(default)]
    pub schedule_goal: ScheduleGoal,
}

impl Default for PlanRequest {
    fn default() -> Self {
        PlanRequest {
            horizon_h: default_horizon_h(),
            mode: PlanMode::default(),
            carbon_price_per_tonne: default_carbon_price(),
            dry_run: default_dry_run(),
            schedule_goal: ScheduleGoal::default(),
        }
    }
}

/// Where a plan stands. `proposed` -> `approved` -> `applied`; a newer
/// proposal supersedes any older plan not yet applied; `failed` when
/// applying found the inventory changed under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlanStatus {
    Proposed,
    Approved,
    Applied,
    Superseded,
    Failed,
}

/// What a placement costs over the horizon.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlanCosts {
    /// Energy of running the VMs and of their migrations, in the price currency.
    pub energy_cost: f64,
    pub emissions_kg: f64,
    /// Predicted bytes on the wire for all moves.
    pub migration_bytes: f64,
    /// Moves' cost (network energy, egress, running at both ends, downtime), weighted.
    pub migration_cost: f64,
    /// The minimum net saving charged per move so the fleet does not churn.
    pub churn_charge: f64,
    /// What VMs left on a site being evacuated add (10,000 each, more for higher priorities).
    pub evacuation_penalty: f64,
    /// What the planner minimises: energy cost and emissions as the mode
    /// weighs them, plus migration cost and churn charge.
    pub objective: f64,
}

/// One VM to move.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlannedMove {
    pub vm: String,
    pub from: String,
    pub to: String,
    /// Slot of the horizon the move is made in (moves are made in the first; later slots are replanned).
    pub slot: u32,
    /// Running cost over the horizon at `from` minus at `to`, in the price currency.
    pub saving_cost: f64,
    pub saving_kg: f64,
    /// The migration's cost, weighted as the objective weighs it.
    pub migration_cost: f64,
    pub predicted_bytes: f64,
    pub predicted_duration_s: f64,
    pub predicted_downtime_ms: f64,
    /// Why: cheaper (with the figures), evacuation, capacity or group policy.
    pub reason: String,
}

/// How the solver did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SolverReport {
    /// `optimal` (at the bound), `within_gap` (within the configured gap of it)
    /// or `feasible` (further: the time limit stopped the search).
    pub status: String,
    pub variables: u64,
    pub rows: u64,
    /// VM classes the fleet was aggregated into.
    pub classes: u64,
    /// Classes the LP relaxation split, placed again by the MIP.
    pub fractional_classes: u64,
    /// Building and solving, seconds.
    pub solve_s: f64,
    /// The LP relaxation's objective: no plan can do better.
    pub lp_bound: f64,
    /// The best proven bound: the LP's, or higher when the whole MIP ran to its gap.
    pub bound: f64,
    /// (objective - bound) / |bound|.
    pub gap: f64,
}

/// Where one site's signals for the horizon came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SignalCoverage {
    pub site: String,
    /// Slots (carbon and price counted separately) with measured values.
    pub actual_slots: u32,
    /// Slots from the newest forecast.
    pub forecast_slots: u32,
    /// Slots with nothing stored, filled from the same hour on an earlier day.
    pub persisted_slots: u32,
    /// Whether any value is synthetic demo data rather than a measurement.
    pub synthetic: bool,
}

/// What a plan was made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlanInputs {
    pub sites: u64,
    pub links: u64,
    pub vms: u64,
    pub groups: u64,
    /// SHA-256 of the inventory the plan was made on, as canonical JSON:
    /// two plans with the same digest saw the same sites, links, VMs and groups.
    pub inventory_digest: String,
    pub min_net_saving: f64,
    pub max_moves_per_day: u32,
    pub wire_fraction: f64,
    pub network_kwh_per_gb: f64,
    pub downtime_penalty_per_s: f64,
}

/// A stored plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Plan {
    pub id: i64,
    pub created_at: DateTime<Utc>,
    pub status: PlanStatus,
    pub status_changed_at: DateTime<Utc>,
    pub request: PlanRequest,
    /// Start of the first slot.
    pub horizon_start: DateTime<Utc>,
    /// Currency of every money figure.
    pub currency: String,
    pub inputs: PlanInputs,
    pub objective: PlanCosts,
    /// The same figures for leaving every VM where it is.
    pub baseline: PlanCosts,
    pub moves: Vec<PlannedMove>,
    pub solver: SolverReport,
    pub signals: Vec<SignalCoverage>,
    /// Why applying failed.
    pub failure: Option<String>,
}

/// A plan in a list: everything but its moves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlanSummary {
    pub id: i64,
    pub created_at: DateTime<Utc>,
    pub status: PlanStatus,
    pub status_changed_at: DateTime<Utc>,
    pub request: PlanRequest,
    pub horizon_start: DateTime<Utc>,
    pub currency: String,
    pub objective: PlanCosts,
    pub baseline: PlanCosts,
    pub move_count: u64,
    pub solver: SolverReport,
    pub failure: Option<String>,
}

/// Filters of `GET /v1/plans`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PlanFilter {
    pub status: Option<PlanStatus>,
}

/// What applying a plan recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AppliedPlan {
    pub plan: Plan,
    /// Migration jobs recorded, one per move.
    pub jobs: u64,
}

/// When one move starts and how fast it may go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ScheduledMigration {
    pub vm: String,
    pub from: String,
    pub to: String,
    /// Seconds after the schedule starts; absent if it is not started (see `cannot_converge`, `late`).
    pub start_s: Option<f64>,
    /// Its bandwidth cap when it starts, megabits per second (raised when others finish).
    pub cap_mbps: Option<f64>,
    /// Seconds from its start to its end.
    pub predicted_duration_s: Option<f64>,
    pub predicted_bytes: f64,
    pub predicted_downtime_ms: f64,
}

/// A baseline policy run on the same moves and model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BaselineSchedule {
    /// `all_at_once`, `one_at_a_time` or `two_per_link`.
    pub policy: String,
    pub makespan_s: f64,
    pub mean_completion_s: f64,
    /// Started, then never converged (their share fell below their dirty rate).
    pub started_not_converging: u64,
}

/// The schedule of a plan's moves over the WAN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlanSchedule {
    /// Last predicted finish, seconds from the start.
    pub makespan_s: f64,
    pub mean_completion_s: f64,
    /// No schedule of these moves can finish sooner.
    pub lower_bound_s: f64,
    pub migrations: Vec<ScheduledMigration>,
    /// VMs that cannot converge on their path even alone (with the safety
    /// margin over their dirty rate): never started.
    pub cannot_converge: Vec<String>,
    /// The same moves under the baseline policies, for comparison.
    pub baselines: Vec<BaselineSchedule>,
}

/// What `POST /v1/sites/{id}/evacuate` asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EvacuationRequest {
    /// Seconds from now by which the VMs should be out.
    #[schema(minimum = 1, maximum = 604800)]
    pub deadline_s: f64,
    /// Only these sites may receive the VMs (by name); absent means any open site.
    #[serde(default)]
    #[schema(max_items = 256)]
    pub target_sites: Option<Vec<String>>,
    /// Only predict: plan and report without draining the site or applying
    /// (the plan is stored as `proposed`). Default false.
    #[serde(default)]
    pub dry_run: bool,
}

/// One VM of an evacuated site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Evacuee {
    pub vm: String,
    /// Where it goes; absent if it stays.
    pub to: Option<String>,
    /// Seconds from now at which its migration is predicted to finish.
    pub predicted_finish_s: Option<f64>,
    /// Why it is late or stays, or gets a final sync.
    pub why: Option<String>,
    /// For a VM whose replica gets a final sync: when that sync is predicted
    /// to begin (the replica will hold every write made before it). For a
    /// VM that stays: its replica's last sync, if it has one.
    #[serde(default)]
    pub recovery_point: Option<DateTime<Utc>>,
}

/// What an evacuation will achieve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EvacuationReport {
    pub site: String,
    pub deadline_s: f64,
    /// The plan holding the moves: applied, or proposed for a dry run (its schedule: `GET /v1/plans/{id}/schedule`).
    pub plan_id: i64,
    /// Out before the deadline, soonest first.
    pub out_in_time: Vec<Evacuee>,
    /// Moving, but not before the deadline (or not at all: see `why`).
    pub late: Vec<Evacuee>,
    /// Staying: pinned, or no room on any site it may go to.
    pub staying: Vec<Evacuee>,
    /// Not out live in time, so its replica at `to` gets a final sync
    /// (finished by `predicted_finish_s`, within the deadline, sharing the
    /// link with the live moves, highest priority first) instead of a live
    /// move: if the site is then lost, it restarts there from that sync.
    #[serde(default)]
    pub synced: Vec<Evacuee>,
}
