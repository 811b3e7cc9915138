//! `heliotrope simulate`: a trace file and a fleet (a spec or the seeded
//! default) in; a table, SVG plots, the whole report as JSON, and the
//! summary as the last line of output out.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use indicatif::{ProgressBar, ProgressStyle};

use super::fleet::{plan_fleet, regions_from_csv, FleetSpec};
use super::{plots, policies_with_references, replay_side_by_side, report, table, Provenance};
use crate::config::PlannerConfig;
use crate::domain::inventory::check_range;
use crate::domain::simulation::traces::Traces;
use crate::domain::simulation::{Policy, Scenario};

#[derive(clap::Args, Clone)]
pub struct SimulateArgs {
    /// Hourly traces, CSV: region,timestamp_utc,carbon_g_per_kwh,price_per_mwh,currency[,...].
    #[arg(long, required_unless_present = "database", conflicts_with = "database")]
    pub traces: Option<std::path::PathBuf>,
    /// Replay the configured database's stored signals instead (each site a region, named
    /// after it; what `signals export --format csv` writes), e.g. after `signals backfill`.
    #[arg(long)]
    pub database: bool,
    /// A fleet spec (JSON, see the README); default: a seeded fleet of 2,000 VMs on the traces' regions.
    #[arg(long)]
    pub fleet: Option<std::path::PathBuf>,
    /// The regions' coordinates and time zones (CSV like shared/data/regions.csv); default: the built-in table.
    #[arg(long)]
    pub regions: Option<std::path::PathBuf>,
    /// static, greedy, planner, oracle or all (comma-separated); static and oracle always run, the oracle share needs them.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub policy: Vec<PolicyChoice>,
    /// First hour simulated (RFC 3339, or a date); default: a day into the traces (the persistence forecast's history).
    #[arg(long)]
    pub from: Option<String>,
    /// End of the window, exclusive (RFC 3339, or a date); default: the traces' end.
    #[arg(long)]
    pub to: Option<String>,
    /// What the policies are shown of the hours ahead: persistence, noisy:SIGMA or perfect (the oracle always sees the actual future).
    #[arg(long, default_value = "persistence")]
    pub forecast: crate::domain::simulation::Forecast,
    /// The planner's horizon, hours (default: the oracle's, so that the two differ only in what they see).
    #[arg(long, default_value_t = crate::domain::simulation::ORACLE_HORIZON_H as u32)]
    pub horizon: u32,
    /// What to minimise: cost, carbon or blend.
    #[arg(long, default_value = "blend", value_parser = crate::config::parse_mode)]
    pub mode: heliotrope_api_spec::PlanMode,
    /// Price of a tonne of CO2eq, in the price currency.
    #[arg(long, default_value_t = 100.0)]
    pub carbon_price: f64,
    /// Seeds the noisy forecast.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// VMs in the fleet (overrides the fleet spec's count).
    #[arg(long)]
    pub vms: Option<usize>,
    /// Where the report (report.json) and the plots (SVG) go.
    #[arg(long, default_value = "simulation")]
    pub out: std::path::PathBuf,
}

/// Runs the simulation over `traces` (a trace file's text, from `named`;
/// `synthetic` when its values were generated, not measured).
pub fn run(
    planner: &PlannerConfig,
    args: &SimulateArgs,
    traces: &[u8],
    named: &str,
    synthetic: bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    check_range("--carbon-price", args.carbon_price, 0.0, 100_000.0)?;
    let traces = Traces::from_csv(traces).with_context(|| format!("traces {named}"))?;
    let mut spec = match &args.fleet {
        Some(path) => FleetSpec::from_json(
            &std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        )?,
        None => FleetSpec::default(),
    };
    if let Some(vms) = args.vms {
        spec.vms = vms;
    }
    let regions = match &args.regions {
        Some(path) => {
            Some(regions_from_csv(&std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)?)
        }
        None => None,
    };
    let settings = crate::planning::settings(planner, args.mode, args.carbon_price, traces.currency.clone());
    let fleet = plan_fleet(&spec, &traces.regions, regions.as_deref(), settings)?;

    // By default the window starts once the persistence forecast has a day behind it.
    let history = args.forecast.history_h();
    let from = match &args.from {
        Some(text) => hour_in(&traces, text, "--from")?,
        None => history,
    };
    let to = match &args.to {
        Some(text) => hour_in(&traces, text, "--to").or_else(|e| {
            // The end may be the hour just past the traces.
            (parse_time(text)? == traces.hour(traces.hours())).then_some(traces.hours()).ok_or(e)
        })?,
        None => traces.hours(),
    };
    let scenario = Scenario {
        fleet,
        actuals: traces.actuals.clone(),
        from,
        to,
        horizon_h: args.horizon as usize,
        forecast: args.forecast,
        seed: args.seed,
    };
    scenario.check()?;
    let policies = policies_with_references(&args.policy.iter().flat_map(|p| p.policies()).collect::<Vec<_>>());
    let bar = ProgressBar::new(((to - from) * policies.len()) as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} policy-hours, {elapsed} elapsed, {eta} left")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let runs = replay_side_by_side(&scenario, &policies, &|| {
        bar.inc(1);
        true
    })?;
    bar.finish_and_clear();
    let setting = Provenance {
        from: traces.hour(from),
        to: traces.hour(to),
        sites: traces.regions.clone(),
        forecast: args.forecast.to_string(),
        horizon_h: args.horizon,
        mode: args.mode,
        carbon_price_per_tonne: args.carbon_price,
        currency: traces.currency.clone(),
        filled_values: traces.filled as u64,
        synthetic,
    };
    let report = report(setting, &scenario, &runs, started);
    print!("{}", table(&report));
    write_outputs(&args.out, &report)?;
    let mut summary = serde_json::to_value(&report)?;
    if let Some(fields) = summary.as_object_mut() {
        fields.remove("series");
    }
    println!("{summary}");
    Ok(())
}

/// The report (`report.json`) and the plots into `out`.
fn write_outputs(out: &Path, report: &heliotrope_api_spec::SimulationReport) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(report)?)?;
    for name in plots::PLOTS {
        let svg = plots::draw(report, name).with_context(|| format!("drawing {name}"))?;
        std::fs::write(out.join(name), svg)?;
    }
    println!("\nwrote report.json and {} into {}", plots::PLOTS.join(", "), out.display());
    Ok(())
}

/// `text` (RFC 3339, or a date for its midnight UTC) as an hour of the traces.
fn hour_in(traces: &Traces, text: &str, flag: &str) -> anyhow::Result<usize> {
    let t = parse_time(text)?;
    traces.hour_of(t).with_context(|| {
        format!(
            "{flag} {text}: not an hour of the traces ({} to {})",
            traces.start,
            traces.hour(traces.hours().saturating_sub(1))
        )
    })
}

/// An RFC 3339 time, or a date (its midnight, UTC).
pub fn parse_time(text: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.to_utc());
    }
    let day = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .with_context(|| format!("'{text}' is neither an RFC 3339 time nor a date (YYYY-MM-DD)"))?;
    Ok(day.and_time(chrono::NaiveTime::MIN).and_utc() + Duration::zero())
}

/// A `--policy` value: one policy, or all of them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PolicyChoice {
    One(Policy),
    All,
}

impl PolicyChoice {
    fn policies(self) -> Vec<Policy> {
        match self {
            PolicyChoice::One(p) => vec![p],
            PolicyChoice::All => Policy::ALL.to_vec(),
        }
    }
}

impl std::str::FromStr for PolicyChoice {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if text == "all" {
            return Ok(PolicyChoice::All);
        }
        text.parse().map(PolicyChoice::One).map_err(|e: String| format!("{e}, or all"))
    }
}
