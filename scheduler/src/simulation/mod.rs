//! The simulator service: runs the policies of a what-if replay side by
//! side and reports on them (a table, SVG plots, the JSON summary), for
//! `heliotrope simulate` (a trace file and a fleet spec) and for
//! `POST /v1/simulations` (the server's inventory and stored signals).
//! The replay itself is `domain::simulation`.

pub mod command;
pub mod fleet;
pub mod plots;
pub mod service;
pub mod stored;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Instant;

use chrono::{DateTime, Utc};
use heliotrope_api_spec::{PlanMode, PolicyTotals, SimulationReport, SimulationSeries};

use crate::domain::simulation::{oracle_share, replay, Policy, Replay, Scenario, ScenarioError};

/// The policies to run: those asked for, and always static and the
/// oracle, which the oracle share is measured between.
pub fn policies_with_references(asked: &[Policy]) -> Vec<Policy> {
    let mut all: Vec<Policy> = asked.iter().copied().chain([Policy::Static, Policy::Oracle]).collect();
    all.sort();
    all.dedup();
    all
}

/// Runs each policy on a thread of its own; `tick` is called after every
/// simulated hour of any of them and stops them all when it says `false`.
pub fn replay_side_by_side(
    scenario: &Scenario,
    policies: &[Policy],
    tick: &(dyn Fn() -> bool + Sync),
) -> Result<Vec<Replay>, ScenarioError> {
    scenario.check()?;
    std::thread::scope(|scope| {
        let handles: Vec<_> = policies.iter().map(|&p| scope.spawn(move || replay(scenario, p, tick))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(ScenarioError("a policy's run panicked".into()))))
            .collect()
    })
}

/// Where a replay came from, as its report says.
pub struct Provenance {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub sites: Vec<String>,
    pub forecast: String,
    pub horizon_h: u32,
    pub mode: PlanMode,
    pub carbon_price_per_tonne: f64,
    pub currency: String,
    pub filled_values: u64,
    pub synthetic: bool,
}

/// The report of `runs` (which hold static and the oracle).
pub fn report(setting: Provenance, scenario: &Scenario, runs: &[Replay], started: Instant) -> SimulationReport {
    let find = |p: Policy| runs.iter().find(|r| r.policy == p).map(|r| r.totals);
    let (fixed, oracle) = (find(Policy::Static), find(Policy::Oracle));
    let mut policies = BTreeMap::new();
    let mut series =
        SimulationSeries { emissions_kg: BTreeMap::new(), objective: BTreeMap::new(), vcpus_at: BTreeMap::new() };
    for r in runs {
        let t = &r.totals;
        let name = r.policy.name().to_owned();
        policies.insert(
            name.clone(),
            PolicyTotals {
                emissions_kg: t.emissions_kg,
                energy_cost: t.energy_cost,
                egress_cost: t.egress_cost,
                downtime_penalty: t.downtime_penalty,
                objective: t.objective,
                migrated_bytes: t.migrated_bytes,
                migrations: t.migrations,
                failed_migrations: t.failed_migrations,
                downtime_s: t.downtime_s,
                capacity_violations: t.capacity_violations,
                oracle_share: fixed.zip(oracle).and_then(|(f, o)| oracle_share(t, &f, &o)),
                unplanned_hours: t.unplanned_hours,
                decide_s: t.decide_s,
            },
        );
        series.emissions_kg.insert(name.clone(), r.hours.iter().map(|h| h.cost.emissions_kg).collect());
        series.objective.insert(name.clone(), r.hours.iter().map(|h| h.objective).collect());
        let per_site = (0..setting.sites.len()).map(|s| r.hours.iter().map(|h| h.vcpus_at[s]).collect()).collect();
        series.vcpus_at.insert(name, per_site);
    }
    SimulationReport {
        from: setting.from,
        to: setting.to,
        hours: (scenario.to - scenario.from) as u64,
        sites: setting.sites,
        vms: scenario.fleet.vms.len() as u64,
        forecast: setting.forecast,
        horizon_h: setting.horizon_h,
        mode: setting.mode,
        carbon_price_per_tonne: setting.carbon_price_per_tonne,
        currency: setting.currency,
        filled_values: setting.filled_values,
        synthetic: setting.synthetic,
        runtime_s: started.elapsed().as_secs_f64(),
        policies,
        series,
    }
}

/// The report as a table, one row per policy.
pub fn table(report: &SimulationReport) -> String {
    let mut out = String::new();
    let cur = &report.currency;
    let _ = writeln!(
        out,
        "{} VMs on {} sites, {} hours from {} ({} forecast, {} h horizon, mode {:?}, carbon {} {cur}/t){}",
        report.vms,
        report.sites.len(),
        report.hours,
        report.from.format("%Y-%m-%d %H:%M UTC"),
        report.forecast,
        report.horizon_h,
        report.mode,
        report.carbon_price_per_tonne,
        if report.synthetic { "; SYNTHETIC signals (demo data)" } else { "" }
    );
    let _ = writeln!(
        out,
        "\n{:<8} {:>12} {:>12} {:>11} {:>10} {:>7} {:>10} {:>10} {:>9} {:>8}",
        "policy",
        format!("cost {cur}"),
        "t CO2e",
        "objective",
        "moved TB",
        "moves",
        "failed",
        "down s",
        "cap viol",
        "oracle %"
    );
    let in_order = Policy::ALL.into_iter().filter_map(|p| Some((p.name(), report.policies.get(p.name())?)));
    for (name, t) in in_order {
        let _ = writeln!(
            out,
            "{:<8} {:>12.2} {:>12.3} {:>11.2} {:>10.3} {:>7} {:>10} {:>10.1} {:>9} {:>8}",
            name,
            t.energy_cost,
            t.emissions_kg / 1000.0,
            t.objective,
            t.migrated_bytes / 1e12,
            t.migrations,
            t.failed_migrations,
            t.downtime_s,
            t.capacity_violations,
            t.oracle_share.map_or("-".to_owned(), |s| format!("{:.1}", s * 100.0))
        );
    }
    if report.filled_values > 0 {
        let _ = writeln!(
            out,
            "\n{} signal values were missing and filled from the same hour a day before",
            report.filled_values
        );
    }
    out
}
