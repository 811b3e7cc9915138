//! `heliotrope bench planner`: placement planning on a seeded instance,
//! against a greedy baseline.

use std::time::Instant;

use clap::Args;
use serde_json::json;

use crate::synthetic;

#[derive(Args, Debug)]
pub struct PlannerBenchArgs {
    /// VMs in the instance.
    #[arg(long, default_value_t = 1000)]
    pub vms: usize,
    /// Sites (2 to 16, the demo's real regions in order).
    #[arg(long, default_value_t = 16)]
    pub sites: usize,
    /// Hourly slots of the horizon.
    #[arg(long, default_value_t = 24)]
    pub horizon: u32,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Time limit for each solve.
    #[arg(long, default_value_t = 60.0)]
    pub time_limit_s: f64,
}

/// A seeded, realistic planning instance: the demo fleet's shape mix and
/// sites (capacities at roughly 60-85% use), links between all of them,
/// and signals generated from the real traces' per-region profiles.
pub fn planner_instance(args: &PlannerBenchArgs) -> anyhow::Result<crate::domain::planner::PlanInput> {
    use crate::domain::cost::{MigrationPrices, SlotSignal, Weights};
    use crate::domain::planner::inputs::{plan_input, Inventory};
    use crate::domain::planner::{PlanVm, Resources, Settings};
    use heliotrope_api_spec::Signal;

    anyhow::ensure!((2..=16).contains(&args.sites), "--sites must be between 2 and 16");
    anyhow::ensure!((1..=168).contains(&args.horizon), "--horizon must be between 1 and 168 hours");
    let fleet = synthetic::inventory::fleet(args.vms, args.seed);
    let start: chrono::DateTime<chrono::Utc> = "2026-06-01T00:00:00Z".parse()?;
    let sites = &fleet.sites[..args.sites];
    let signals = sites
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let tz: chrono_tz::Tz = s.timezone.parse().unwrap_or(chrono_tz::UTC);
            let points =
                synthetic::signals::synthetic_points(&s.region, tz, start, args.horizon, start, args.seed ^ i as u64);
            let series = |signal: Signal| points.iter().filter(move |p| p.signal == signal).map(|p| p.value);
            series(Signal::Price)
                .zip(series(Signal::Carbon))
                .map(|(price_per_mwh, carbon_g_per_kwh)| SlotSignal { price_per_mwh, carbon_g_per_kwh })
                .collect()
        })
        .collect();
    // With fewer sites, VMs of the others spread round those kept.
    let vms: Vec<_> = fleet
        .vms
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let mut v = v.clone();
            if !sites.iter().any(|s| s.name == v.site) {
                v.site = sites[i % sites.len()].name.clone();
            }
            (v, 0)
        })
        .collect();
    let inventory = Inventory { sites, links: &fleet.links, vms: &vms, groups: &fleet.groups };
    let settings = Settings {
        slot_hours: 1.0,
        currency: "EUR".into(),
        weights: Weights::blend(100.0),
        prices: MigrationPrices { network_kwh_per_gb: 0.01, egress_per_gb: 0.0, downtime_penalty_per_s: 0.1 },
        min_net_saving: 0.05,
        max_moves_per_day: 2,
        // What the transfer stack is built to achieve: disks cached ahead at likely
        // destinations and memory deduplicated leave about a tenth on the wire.
        wire_fraction: 0.1,
        time_limit_s: args.time_limit_s,
        mip_gap: 0.005,
    };
    let mut input = plan_input(&inventory, signals, settings);
    // Capacities put every site at 60-85% use of each resource as placed now.
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(args.seed);
    for (s, site) in input.sites.iter_mut().enumerate() {
        let here = input.vms.iter().filter(|v: &&PlanVm| v.site == s);
        let load = here
            .fold([0.0_f64; 3], |[c, m, d], v| [c + f64::from(v.shape.vcpus), m + v.shape.memory_gib, d + v.disk_gib]);
        let mut sized =
            |used: f64, floor: f64| (used / rand::Rng::random_range(&mut rng, 0.60..0.85)).max(floor).ceil();
        site.capacity = Resources {
            vcpus: sized(load[0], 64.0),
            memory_gib: sized(load[1], 256.0),
            disk_gib: sized(load[2], 4096.0),
        };
    }
    Ok(input)
}

/// Plans a seeded instance and the greedy baseline on the same input.
pub fn planner(args: &PlannerBenchArgs) -> anyhow::Result<()> {
    use crate::domain::planner::{greedy, plan};
    let input = planner_instance(args)?;
    let planned = plan(&input)?;
    let started = Instant::now();
    let greedy_objective = greedy(&input).objective;
    let greedy_s = started.elapsed().as_secs_f64();
    let s = &planned.stats;
    eprintln!(
        "{} VMs, {} sites, {} h: {} classes, {} variables, {} rows; solved in {:.2} s",
        args.vms, args.sites, args.horizon, s.classes, s.variables, s.rows, s.solve_s
    );
    eprintln!(
        "objective {:.2} (no moves {:.2}); LP bound {:.2}, gap {:.4}% ({} classes split by the LP); {} moves",
        planned.totals.objective,
        planned.baseline.objective,
        s.lp_bound,
        s.gap * 100.0,
        s.fractional_classes,
        planned.moves.len()
    );
    eprintln!(
        "greedy baseline {greedy_objective:.2} in {greedy_s:.2} s: {:.4} x the plan",
        greedy_objective / planned.totals.objective
    );
    for m in planned.moves.iter().take(5) {
        eprintln!(
            "  move {} {} -> {}: saves {:.3} and {:.3} kg over the horizon; migration {:.3}, {:.1} GB in {:.0} s",
            input.vms[m.vm].name,
            input.sites[m.from].name,
            input.sites[m.to].name,
            m.saving.energy_cost,
            m.saving.emissions_kg,
            m.migration_cost,
            m.estimate.wire_bytes / 1e9,
            m.estimate.duration_s
        );
    }
    let report = json!({
        "bench": "planner",
        "vms": args.vms,
        "sites": args.sites,
        "horizon_h": args.horizon,
        "seed": args.seed,
        "solve_s": s.solve_s,
        "objective": planned.totals.objective,
        "baseline_objective": planned.baseline.objective,
        "lp_bound": s.lp_bound,
        "bound": s.bound,
        "gap": s.gap,
        "greedy_objective": greedy_objective,
        "greedy_ratio": greedy_objective / planned.totals.objective,
        "classes": s.classes,
        "variables": s.variables,
        "rows": s.rows,
        "fractional_classes": s.fractional_classes,
        "moves": planned.moves.len(),
    });
    println!("{report}");
    Ok(())
}
