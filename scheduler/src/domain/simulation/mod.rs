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
//! traces (`traces`), and turns the [`Replay`]s into reports.
//!
//! Layout: the policies, the scenario and what a replay yields are here;
//! `replay` is the hour-by-hour loop ([`replay()`]); `forecast` is what the
//! policies are shown of the hours ahead; `request` checks a
//! `/v1/simulations` request; `traces` reads trace files.
//!
//! [`schedule::advance`]: crate::domain::schedule::advance

mod forecast;
mod replay;
mod request;
pub mod traces;

pub use forecast::{from_history, Forecast, MAX_NOISE_SIGMA};
pub use replay::{replay, MAX_WAIT_FOR_ROOM_H};
pub use request::{parse_request, MAX_WINDOW_DAYS};

use std::str::FromStr;

use super::cost::{Cost, SlotSignal};
use super::planner::inputs::check_horizon;
use super::planner::PlanInput;

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

/// The oracle plans at least this far ahead.
pub const ORACLE_HORIZON_H: usize = 48;

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

/// One hour of a replay, as it happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Hour {
    /// Energy of running and migrating, at the actual signals.
    pub cost: Cost,
    /// Everything weighted as the planner weighs it (egress and downtime included).
    pub objective: f64,
    /// vCPUs running at each site at the hour's end (a VM on the move runs at its source).
    pub vcpus_at: Vec<f64>,
}

/// A replay's totals.
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

/// A policy's replay of the window.
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    pub policy: Policy,
    pub totals: Totals,
    pub hours: Vec<Hour>,
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

    pub(super) const CLEAN: SlotSignal = SlotSignal { price_per_mwh: 20.0, carbon_g_per_kwh: 50.0 };
    pub(super) const DIRTY: SlotSignal = SlotSignal { price_per_mwh: 200.0, carbon_g_per_kwh: 600.0 };

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
    pub(super) fn scenario(disk_gib: f64, network_kwh_per_gb: f64, actuals: Vec<Vec<SlotSignal>>) -> Scenario {
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
