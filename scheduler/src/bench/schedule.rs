//! `heliotrope bench schedule`: migration scheduling on seeded scenarios,
//! against all-at-once, one-at-a-time and two-per-link.

use std::time::Instant;

use clap::Args;
use serde_json::json;

#[derive(Args, Debug)]
pub struct ScheduleBenchArgs {
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// One scheduling scenario: a network, its migrations, and the goal Heliotrope schedules for.
struct Scenario {
    name: &'static str,
    network: crate::domain::schedule::Network,
    migrations: Vec<crate::domain::schedule::Migration>,
    goal: crate::domain::schedule::Goal,
}

/// Seeded scenarios: 200 moves over 6 links; a 500-VM evacuation in 30
/// minutes through the site's shared uplink; two sites' uplinks feeding
/// one destination whose downlink they share.
fn schedule_scenarios(seed: u64) -> Vec<Scenario> {
    use crate::domain::schedule::{Goal, Link, Migration, Network};
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let gbit = 1e9 / 8.0;
    let vm = |name: String, link: usize, rng: &mut rand::rngs::StdRng| Migration {
        name,
        link,
        memory_bytes: [2.0, 4.0, 8.0, 16.0, 32.0, 64.0][rng.random_range(0..6)] * 1e9 * 0.5,
        dirty_bytes_per_s: rng.random_range(1.0..60.0) * 1e6,
        disk_bytes: rng.random_range(0.0..40.0) * 1e9,
        max_downtime_s: [0.1, 0.3, 1.0][rng.random_range(0..3)],
        priority: rng.random_range(0..=100),
    };
    // Six links between four sites, 1 to 10 Gbit/s usable.
    let pairs = [(0, 1), (1, 0), (0, 2), (2, 3), (3, 1), (1, 2)];
    let links: Vec<Link> = pairs
        .iter()
        .map(|&(from, to)| Link { from, to, usable_bytes_per_s: rng.random_range(1.0..10.0) * gbit })
        .collect();
    let moves = (0..200).map(|i| vm(format!("m{i}"), rng.random_range(0..6), &mut rng)).collect();
    let wan = Scenario {
        name: "200 moves over 6 links",
        network: Network { links, uplink_bytes_per_s: vec![None; 4], downlink_bytes_per_s: vec![None; 4] },
        migrations: moves,
        goal: Goal::MeanCompletion,
    };
    // Site 0 empties onto five sites over 10 Gbit/s links; its uplink carries 25 Gbit/s in all.
    let evac_links: Vec<Link> = (1..=5).map(|to| Link { from: 0, to, usable_bytes_per_s: 10.0 * gbit }).collect();
    let mut uplinks = vec![None; 6];
    uplinks[0] = Some(25.0 * gbit);
    let evacuees = (0..500)
        .map(|i| {
            let mut m = vm(format!("e{i}"), rng.random_range(0..5), &mut rng);
            // Disks were cached at the likely destinations ahead of time: a little is left to send.
            m.disk_bytes *= 0.1;
            m
        })
        .collect();
    let evacuation = Scenario {
        name: "evacuate 500 VMs in 30 min",
        network: Network { links: evac_links, uplink_bytes_per_s: uplinks, downlink_bytes_per_s: vec![None; 6] },
        migrations: evacuees,
        goal: Goal::Deadline { deadline_s: 1800.0 },
    };
    // Sites 0 and 1 (uplinks 6 and 4 Gbit/s) send to site 2, whose downlink takes 8 Gbit/s.
    let shared_links = vec![
        Link { from: 0, to: 2, usable_bytes_per_s: 10.0 * gbit },
        Link { from: 1, to: 2, usable_bytes_per_s: 10.0 * gbit },
    ];
    let shared = Scenario {
        name: "two uplinks into one downlink",
        network: Network {
            links: shared_links,
            uplink_bytes_per_s: vec![Some(6.0 * gbit), Some(4.0 * gbit), None],
            downlink_bytes_per_s: vec![None, None, Some(8.0 * gbit)],
        },
        migrations: (0..100).map(|i| vm(format!("s{i}"), i % 2, &mut rng)).collect(),
        goal: Goal::Makespan,
    };
    vec![wan, evacuation, shared]
}

/// Schedules each scenario with Heliotrope's policy and the baselines on the same fluid model.
pub fn schedule(args: &ScheduleBenchArgs) -> anyhow::Result<()> {
    use crate::domain::schedule::{lower_bound, predict, Goal, Pacing, BASELINES};
    let mut worst_over_lb: f64 = 0.0;
    let mut worst_vs_all: f64 = 0.0;
    let mut non_converging_started = 0;
    let mut out_share = 1.0;
    let mut scenarios = Vec::new();
    for scenario in schedule_scenarios(args.seed) {
        let started = Instant::now();
        let ours = predict(&scenario.network, &scenario.migrations, Pacing::Heliotrope(scenario.goal));
        let schedule_s = started.elapsed().as_secs_f64();
        let baselines =
            BASELINES.map(|(name, pacing)| (name, predict(&scenario.network, &scenario.migrations, pacing)));
        let n = scenario.migrations.len();
        non_converging_started += ours.started_not_converging;
        eprintln!(
            "{}: {n} migrations, {} cannot converge on their path; scheduled in {schedule_s:.3} s",
            scenario.name,
            ours.cannot_converge.len()
        );
        let mut row =
            json!({"scenario": scenario.name, "migrations": n, "cannot_converge": ours.cannot_converge.len()});
        if let Goal::Deadline { deadline_s } = scenario.goal {
            let out = |s: &crate::domain::schedule::Schedule| {
                s.outcomes.iter().filter(|o| o.finish_s.is_some_and(|f| f <= deadline_s)).count()
            };
            out_share = out(&ours) as f64 / n as f64;
            eprintln!("  out before the {:.0} min deadline: Heliotrope {} of {n}", deadline_s / 60.0, out(&ours));
            for (name, b) in &baselines {
                eprintln!("  {name:>13}: {} out, {} started and never converged", out(b), b.started_not_converging);
            }
            row["vms_out"] = json!(out(&ours));
        } else {
            let lb = lower_bound(&scenario.network, &scenario.migrations, 60, ours.makespan_s);
            worst_over_lb = worst_over_lb.max(ours.makespan_s / lb);
            let all = &baselines[0].1;
            worst_vs_all = worst_vs_all.max(ours.mean_completion_s / all.mean_completion_s);
            eprintln!(
                "  Heliotrope: makespan {:.0} s = {:.3} x the lower bound {lb:.0} s; mean completion {:.0} s; {} started and never converged",
                ours.makespan_s, ours.makespan_s / lb, ours.mean_completion_s, ours.started_not_converging
            );
            for (name, b) in &baselines {
                eprintln!(
                    "  {name:>13}: makespan {:.0} s; mean completion {:.0} s ({:.2} x Heliotrope's); {} started and never converged",
                    b.makespan_s, b.mean_completion_s, b.mean_completion_s / ours.mean_completion_s, b.started_not_converging
                );
            }
            row["makespan_over_lb"] = json!(ours.makespan_s / lb);
            row["mean_completion_vs_all_at_once"] = json!(ours.mean_completion_s / all.mean_completion_s);
        }
        scenarios.push(row);
    }
    println!(
        "{}",
        json!({
            "bench": "schedule",
            "seed": args.seed,
            "worst_makespan_over_lb": worst_over_lb,
            "worst_mean_completion_vs_all_at_once": worst_vs_all,
            "non_converging_started": non_converging_started,
            "evacuation_vms_out_share": out_share,
            "scenarios": scenarios,
        })
    );
    Ok(())
}
