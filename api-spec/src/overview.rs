//! The fleet at a glance, for the dashboard: where the VMs are, what each
//! site's grid is doing now, and what the migrations made so far saved.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::{SignalPoint, SiteState};

/// One site with its load and its grid now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SiteOverview {
    pub id: i64,
    pub name: String,
    pub region: String,
    pub latitude: f64,
    pub longitude: f64,
    pub state: SiteState,
    /// VMs it hosts.
    pub vms: u64,
    /// vCPUs those VMs hold, and what the site offers.
    pub vcpus_used: u64,
    pub vcpus: u64,
    /// Migrations under way into and out of it.
    pub migrations_in: u64,
    pub migrations_out: u64,
    /// The newest best-known values at or before `at`.
    pub carbon: Option<SignalPoint>,
    pub price: Option<SignalPoint>,
    /// Whether its signals have no actual value from the last 2 hours (a
    /// stale or failing feed): plans then run on forecasts or persistence.
    pub stale: bool,
    /// When its executors were last heard, if they have all been silent for
    /// longer than the scheduler's `--site-silent-after-s` and the site is
    /// not down: it may be lost (an operator confirms with `POST
    /// /v1/sites/{id}/fail`).
    #[serde(default)]
    pub silent_since: Option<DateTime<Utc>>,
}

/// Answer to `GET /v1/overview`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Overview {
    pub at: DateTime<Utc>,
    pub sites: Vec<SiteOverview>,
}

/// Query parameters of `GET /v1/savings`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SavingsParams {
    /// UTC days back from today, today included (default 14).
    #[param(minimum = 1, maximum = 366)]
    pub days: Option<u32>,
}

/// What one UTC day's placement saved against leaving every moved VM where it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DaySavings {
    pub day: NaiveDate,
    /// Running cost saved, net of the migrations' network energy and egress, in `currency`.
    pub cost_saved: f64,
    /// Emissions saved, net of the migrations' network energy, kg CO2eq.
    pub kg_saved: f64,
    /// Migrations that finished that day.
    pub migrations: u64,
    /// Hours of moved VMs priced (an hour without signals at either site counts nothing).
    pub vm_hours: u64,
}

/// Answer to `GET /v1/savings`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Savings {
    pub currency: String,
    pub days: Vec<DaySavings>,
    pub total_cost_saved: f64,
    pub total_kg_saved: f64,
    /// Whether any signal behind the figures is synthetic demo data.
    pub synthetic: bool,
}
