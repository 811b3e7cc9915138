//! Simulations: what-if replays of past carbon and price signals through
//! placement policies, and what each would have cost, emitted and moved.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::PlanMode;

fn default_policies() -> Vec<String> {
    ["static", "greedy", "planner", "oracle"].map(String::from).to_vec()
}

fn default_forecast() -> String {
    "persistence".to_owned()
}

fn default_horizon_h() -> u32 {
    48
}

fn default_carbon_price() -> f64 {
    100.0
}

/// What `POST /v1/simulations` asks for: the server's own inventory
/// replayed through the stored signals of a past window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SimulationRequest {
    /// First hour simulated (on the hour; a day of signals before it feeds the persistence forecast).
    pub from: DateTime<Utc>,
    /// End of the window (exclusive, on the hour, in the past); at most 62 days after `from`.
    pub to: DateTime<Utc>,
    /// Any of static, greedy, planner, oracle (default all four; static and oracle are always run,
    /// as the oracle share needs them), each once.
    #[serde(default = "default_policies")]
    #[schema(min_items = 1, max_items = 4)]
    pub policies: Vec<String>,
    /// persistence, perfect or noisy:SIGMA (default persistence).
    #[serde(default = "default_forecast")]
    #[schema(default = "persistence")]
    pub forecast: String,
    /// The planner's horizon, hours (default 48, the oracle's: the two then differ only in what they see).
    #[serde(default = "default_horizon_h")]
    #[schema(minimum = 1, maximum = 168, default = 48)]
    pub horizon_h: u32,
    #[serde(default)]
    pub mode: PlanMode,
    #[serde(default = "default_carbon_price")]
    #[schema(minimum = 0, maximum = 100000, default = 100)]
    pub carbon_price_per_tonne: f64,
    /// Seeds the noisy forecast.
    #[serde(default)]
    pub seed: u64,
}

/// Where a simulation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SimulationStatus {
    Running,
    Done,
    Failed,
}

/// A simulation as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Simulation {
    pub id: i64,
    pub status: SimulationStatus,
    pub request: SimulationRequest,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Hours simulated so far, over all policies.
    pub progress_hours: u64,
    /// Why it failed.
    pub error: Option<String>,
    pub report: Option<SimulationReport>,
}

/// One policy's run, totalled over the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PolicyTotals {
    pub emissions_kg: f64,
    /// In the price currency.
    pub energy_cost: f64,
    pub egress_cost: f64,
    pub downtime_penalty: f64,
    /// What the planner minimises, as it happened: energy cost and emissions
    /// weighted by the mode, egress and the downtime penalty.
    pub objective: f64,
    pub migrated_bytes: f64,
    /// Migrations completed.
    pub migrations: u64,
    /// Migrations given up (the VM ran on at its source).
    pub failed_migrations: u64,
    pub downtime_s: f64,
    /// Site-hours that ended over capacity (in-flight arrivals counted).
    pub capacity_violations: u64,
    /// The share of the oracle's saving over static (on the objective) this policy captured;
    /// `null` when the oracle saved nothing.
    pub oracle_share: Option<f64>,
    /// Hours the planner found no plan and the fleet stayed put.
    pub unplanned_hours: u64,
    /// Time spent deciding, seconds.
    pub decide_s: f64,
}

/// Hourly series of a simulation, for plots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SimulationSeries {
    /// Per policy, emissions per hour, kg.
    pub emissions_kg: BTreeMap<String, Vec<f64>>,
    /// Per policy, the objective per hour.
    pub objective: BTreeMap<String, Vec<f64>>,
    /// Per policy, then per site (in `sites` order), vCPUs running there at each hour's end.
    pub vcpus_at: BTreeMap<String, Vec<Vec<f64>>>,
}

/// What a simulation found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SimulationReport {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub hours: u64,
    pub sites: Vec<String>,
    pub vms: u64,
    pub forecast: String,
    pub horizon_h: u32,
    pub mode: PlanMode,
    pub carbon_price_per_tonne: f64,
    pub currency: String,
    /// Signal values missing for the window, filled from the same hour on an earlier day.
    pub filled_values: u64,
    /// Whether any signal replayed is synthetic demo data.
    pub synthetic: bool,
    pub runtime_s: f64,
    /// By policy name.
    pub policies: BTreeMap<String, PolicyTotals>,
    pub series: SimulationSeries,
}
