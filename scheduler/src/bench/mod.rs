//! `heliotrope bench ...`: performance measured on the real parts (a real
//! Postgres database, the real HTTP server over loopback TCP), each figure
//! paired with a baseline run in the same process.

mod dispatch;
mod recovery;

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use heliotrope_api_spec::Role;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use sqlx::PgPool;

use crate::config::Config;
use crate::domain::token::{generate_secret, secret_digest};
use crate::startup::{Application, Services};
use crate::{db, demo};

pub use dispatch::{dispatch, DispatchBenchArgs};
pub use recovery::{recovery, RecoveryBenchArgs};

#[derive(Args, Debug)]
pub struct ApiBenchArgs {
    /// VMs in the database.
    #[arg(long, default_value_t = 10_000)]
    pub vms: usize,
    /// Seconds of load per measured endpoint.
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Query string of the measured request (default: the first page, default size).
    #[arg(long, default_value = "")]
    pub query: String,
}

/// What one load run measured.
struct LoadResult {
    requests: usize,
    errors: usize,
    elapsed: Duration,
    /// Sorted latencies in microseconds.
    latencies_us: Vec<u64>,
}

impl LoadResult {
    fn req_per_s(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.latencies_us.len() as f64).ceil() as usize;
        self.latencies_us[rank.clamp(1, self.latencies_us.len()) - 1] as f64 / 1000.0
    }
}

/// Sends GETs to `url` from `concurrency` keep-alive connections for `duration`.
async fn load(url: &str, token: &str, concurrency: usize, duration: Duration) -> anyhow::Result<LoadResult> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build()?;
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, url, auth) = (client.clone(), url.to_owned(), format!("Bearer {token}"));
        workers.spawn(async move {
            let (mut latencies, mut errors) = (Vec::new(), 0usize);
            while Instant::now() < deadline {
                let sent = Instant::now();
                let ok = match client.get(&url).header("authorization", &auth).send().await {
                    Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
                    Err(_) => false,
                };
                latencies.push(sent.elapsed().as_micros() as u64);
                errors += usize::from(!ok);
            }
            (latencies, errors)
        });
    }
    let mut result = LoadResult { requests: 0, errors: 0, elapsed: Duration::ZERO, latencies_us: Vec::new() };
    while let Some(done) = workers.join_next().await {
        let (latencies, errors) = done.context("a load worker panicked")?;
        result.requests += latencies.len();
        result.errors += errors;
        result.latencies_us.extend(latencies);
    }
    result.elapsed = started.elapsed();
    result.latencies_us.sort_unstable();
    Ok(result)
}

/// GET /v1/vms against `--vms` VMs, with and without the read cache, and
/// GET /healthz (no database, no auth) as the baseline: the ratios say what
/// authentication, the database and JSON cost over the bare HTTP stack.
pub async fn api(config: &Config, args: &ApiBenchArgs) -> anyhow::Result<()> {
    with_scratch_database(config, |pool| api_on(pool, args)).await
}

/// Runs `bench` on a fresh, migrated database of its own, dropped afterwards.
async fn with_scratch_database<F, Fut>(config: &Config, bench: F) -> anyhow::Result<()>
where
    F: FnOnce(PgPool) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let server = config.database_url().unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let database = format!("heliotrope_bench_{}", std::process::id());
    db::create_database_if_missing(&server, &database).await.context("creating the benchmark database")?;
    let outcome = async {
        let pool = db::connect(&db::with_database(&server, &database), config.db_max_connections).await?;
        db::migrate(&pool).await?;
        bench(pool).await
    }
    .await;
    db::drop_database(&server, &database).await.context("dropping the benchmark database")?;
    outcome
}

async fn api_on(pool: PgPool, args: &ApiBenchArgs) -> anyhow::Result<()> {
    let seeding = Instant::now();
    demo::store_fleet(&pool, demo::inventory::fleet(args.vms, 42)).await?;
    sqlx::query("analyze").execute(&pool).await?;
    eprintln!("seeded {} VMs in {:.1} s", args.vms, seeding.elapsed().as_secs_f64());
    let secret = generate_secret();
    db::tokens::insert(&pool, "bench", Role::Viewer, None, &secret_digest(&secret)).await?;

    // Two servers in this process on the same database: as configured by
    // default (read cache on), and without the cache, the cost of every miss.
    let stop = CancellationToken::new();
    let mut bases = Vec::new();
    let mut servers = Vec::new();
    for read_cache in [true, false] {
        let app =
            Application::build(pool.clone(), "127.0.0.1:0".parse()?, Services { read_cache, ..Services::driven() })
                .await?;
        bases.push(format!("http://{}", app.local_addr()));
        servers.push(tokio::spawn(app.run_until_stopped(stop.clone())));
    }
    let query = if args.query.is_empty() { String::new() } else { format!("?{}", args.query) };
    let endpoint = format!("/v1/vms{query}");
    let (cached_url, uncached_url) = (format!("{}{endpoint}", bases[0]), format!("{}{endpoint}", bases[1]));

    let duration = Duration::from_secs(args.duration_s);
    // Warm up connections, the cache and the database's buffers.
    for url in [&cached_url, &uncached_url] {
        load(url, &secret, args.concurrency, Duration::from_secs(1)).await?;
    }
    let baseline = load(&format!("{}/healthz", bases[0]), &secret, args.concurrency, duration).await?;
    let uncached = load(&uncached_url, &secret, args.concurrency, duration).await?;
    let measured = load(&cached_url, &secret, args.concurrency, duration).await?;
    stop.cancel();
    for server in servers {
        server.await.context("a server task panicked")??;
    }
    pool.close().await;

    for (name, r) in [
        ("GET /healthz (baseline)", &baseline),
        ("GET /v1/vms without the read cache", &uncached),
        ("GET /v1/vms (default: read cache on)", &measured),
    ] {
        eprintln!(
            "{name}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} errors in {} requests",
            r.req_per_s(),
            r.percentile_ms(50.0),
            r.percentile_ms(99.0),
            r.errors,
            r.requests
        );
    }
    let report = json!({
        "bench": "api",
        "endpoint": endpoint,
        "vms": args.vms,
        "concurrency": args.concurrency,
        "duration_s": args.duration_s,
        "req_per_s": measured.req_per_s().round(),
        "p50_ms": measured.percentile_ms(50.0),
        "p99_ms": measured.percentile_ms(99.0),
        "errors": measured.errors + uncached.errors,
        "uncached_req_per_s": uncached.req_per_s().round(),
        "uncached_p99_ms": uncached.percentile_ms(99.0),
        "baseline_req_per_s": baseline.req_per_s().round(),
        "baseline_p99_ms": baseline.percentile_ms(99.0),
        "ratio_to_baseline": measured.req_per_s() / baseline.req_per_s(),
        "uncached_ratio_to_baseline": uncached.req_per_s() / baseline.req_per_s(),
    });
    println!("{report}");
    Ok(())
}

#[derive(Args, Debug)]
pub struct IngestBenchArgs {
    /// Weeks of hourly data per site.
    #[arg(long, default_value_t = 8)]
    pub weeks: u32,
    /// Rounds of both runs (each on an empty table); medians are reported.
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    /// Where the real traces are; synthetic values are used when the file is absent.
    #[arg(long, default_value = "../shared/data/carbon_price_2023-06-05_2023-07-30.csv")]
    pub trace: std::path::PathBuf,
}

/// Push ingest of `--weeks` of hourly carbon and price for each of the 16
/// demo sites, one CSV push per site over HTTP (parse, validate, upsert).
/// Baseline, in the same process: the same points stored by the bulk upsert
/// directly, without HTTP, CSV or validation.
pub async fn ingest(config: &Config, args: &IngestBenchArgs) -> anyhow::Result<()> {
    with_scratch_database(config, |pool| ingest_on(pool, args)).await
}

async fn ingest_on(pool: PgPool, args: &IngestBenchArgs) -> anyhow::Result<()> {
    use crate::domain::signals::{points_from_csv, IngestOptions};

    demo::store_fleet(&pool, demo::inventory::fleet(0, 42)).await?;
    let sites: Vec<(i64, String)> =
        sqlx::query_as("select site_id, region from site order by site_id").fetch_all(&pool).await?;
    let hours = i64::from(args.weeks) * 7 * 24;
    let trace = std::fs::read_to_string(&args.trace).ok();
    let source = if trace.is_some() { "trace" } else { "synthetic" };
    // One CSV body per site: its rows of the trace (repeated if more weeks are
    // asked for than the trace holds), or a synthetic daily curve.
    let start: chrono::DateTime<chrono::Utc> = "2023-06-05T00:00:00Z".parse()?;
    let bodies: Vec<String> = sites
        .iter()
        .map(|(_, region)| {
            let rows: Vec<(f64, f64)> = trace
                .as_deref()
                .map(|t| {
                    t.lines()
                        .filter(|l| l.starts_with(&format!("{region},")))
                        .filter_map(|l| {
                            let f: Vec<&str> = l.split(',').collect();
                            Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
                        })
                        .collect()
                })
                .filter(|rows: &Vec<(f64, f64)>| !rows.is_empty())
                .unwrap_or_else(|| {
                    (0..24)
                        .map(|h| {
                            (300.0 + 100.0 * (f64::from(h) / 24.0 * std::f64::consts::TAU).sin(), 60.0 + f64::from(h))
                        })
                        .collect()
                });
            let mut body = String::from("timestamp_utc,carbon_g_per_kwh,price_per_mwh,currency\n");
            for h in 0..hours {
                let (carbon, price) = rows[h as usize % rows.len()];
                let ts = start + chrono::Duration::hours(h);
                body.push_str(&format!("{},{carbon},{price},USD\n", ts.format("%Y-%m-%dT%H:%M:%SZ")));
            }
            body
        })
        .collect();

    // The baseline's points, parsed ahead so that only the upsert is timed.
    let options = IngestOptions::parse(&Default::default())?;
    let now = chrono::Utc::now();
    let parsed: Vec<_> = bodies
        .iter()
        .zip(&sites)
        .map(|(body, (_, region))| points_from_csv(body.as_bytes(), &options, region, now).map(|p| p.points))
        .collect::<Result<_, _>>()
        .map_err(|r| anyhow::anyhow!("{}: {}", r.location, r.message))?;
    let secret = generate_secret();
    db::tokens::insert(&pool, "bench", Role::Admin, None, &secret_digest(&secret)).await?;
    let app = Application::build(pool.clone(), "127.0.0.1:0".parse()?, Services::driven()).await?;
    let base = format!("http://{}", app.local_addr());
    let stop = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(stop.clone()));
    let client = reqwest::Client::new();

    let (mut baseline_times, mut pushed_times, mut points, mut baseline_points) = (Vec::new(), Vec::new(), 0, 0);
    for _ in 0..args.rounds.max(1) {
        // Baseline: the bulk upsert alone.
        sqlx::query("truncate signal_point").execute(&pool).await?;
        let started = Instant::now();
        baseline_points = 0;
        for ((site_id, _), site_points) in sites.iter().zip(&parsed) {
            baseline_points += db::signals::upsert(&pool, *site_id, "push", site_points).await?;
        }
        baseline_times.push(started.elapsed().as_secs_f64());

        // Measured: CSV pushes over HTTP.
        sqlx::query("truncate signal_point").execute(&pool).await?;
        let started = Instant::now();
        points = 0;
        for ((site_id, _), body) in sites.iter().zip(&bodies) {
            let response = client
                .post(format!("{base}/v1/sites/{site_id}/signals"))
                .bearer_auth(&secret)
                .header("content-type", "text/csv")
                .body(body.clone())
                .send()
                .await?;
            anyhow::ensure!(response.status().is_success(), "push refused: {}", response.text().await?);
            let report: heliotrope_api_spec::IngestReport = response.json().await?;
            points += report.points;
        }
        pushed_times.push(started.elapsed().as_secs_f64());
    }
    stop.cancel();
    server.await.context("the server task panicked")??;
    pool.close().await;
    let median = |mut times: Vec<f64>| {
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    };
    let (baseline_s, pushed_s) = (median(baseline_times), median(pushed_times));

    let (rate, baseline_rate) = (points as f64 / pushed_s, baseline_points as f64 / baseline_s);
    eprintln!(
        "bulk upsert alone (baseline): {baseline_points} points in {baseline_s:.2} s, {baseline_rate:.0} points/s"
    );
    eprintln!("CSV push over HTTP: {points} points in {pushed_s:.2} s, {rate:.0} points/s");
    let report = json!({
        "bench": "ingest",
        "sites": sites.len(),
        "weeks": args.weeks,
        "values": source,
        "points": points,
        "rounds": args.rounds.max(1),
        "seconds": pushed_s,
        "points_per_s": rate.round(),
        "baseline_points_per_s": baseline_rate.round(),
        "ratio_to_baseline": rate / baseline_rate,
    });
    println!("{report}");
    Ok(())
}

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
    let fleet = demo::inventory::fleet(args.vms, args.seed);
    let start: chrono::DateTime<chrono::Utc> = "2026-06-01T00:00:00Z".parse()?;
    let sites = &fleet.sites[..args.sites];
    let signals = sites
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let tz: chrono_tz::Tz = s.timezone.parse().unwrap_or(chrono_tz::UTC);
            let points =
                demo::signals::synthetic_points(&s.region, tz, start, args.horizon, start, args.seed ^ i as u64);
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
    use crate::domain::schedule::{lower_bound, simulate, Goal, Policy, BASELINES};
    let mut worst_over_lb: f64 = 0.0;
    let mut worst_vs_all: f64 = 0.0;
    let mut non_converging_started = 0;
    let mut out_share = 1.0;
    let mut scenarios = Vec::new();
    for scenario in schedule_scenarios(args.seed) {
        let started = Instant::now();
        let ours = simulate(&scenario.network, &scenario.migrations, Policy::Heliotrope(scenario.goal));
        let schedule_s = started.elapsed().as_secs_f64();
        let baselines =
            BASELINES.map(|(name, policy)| (name, simulate(&scenario.network, &scenario.migrations, policy)));
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

#[derive(Args, Debug)]
pub struct ClaimsBenchArgs {
    /// Migrations claimed in each run.
    #[arg(long, default_value_t = 2000)]
    pub migrations: usize,
    /// Concurrent source executors in the measured run.
    #[arg(long, default_value_t = 8)]
    pub executors: usize,
}

/// Claim throughput: `executors` executors at one site claim `migrations`
/// scheduled migrations at once (each released as soon as it is claimed,
/// so that capacity never limits, to a destination with room for all),
/// against one executor claiming as many alone. Checks that every
/// migration was claimed, and none twice.
pub async fn claims(config: &Config, args: &ClaimsBenchArgs) -> anyhow::Result<()> {
    with_scratch_database(config, |pool| claims_on(pool, args)).await
}

async fn claims_on(pool: PgPool, args: &ClaimsBenchArgs) -> anyhow::Result<()> {
    demo::store_fleet(&pool, demo::inventory::fleet(0, 42)).await?;
    let sites: Vec<i64> =
        sqlx::query_scalar("select site_id from site order by site_id limit 2").fetch_all(&pool).await?;
    let (from, to) = (sites[0], sites[1]);
    db::tokens::ensure_admin(&pool, Some(&generate_secret())).await?;
    let token: i64 = sqlx::query_scalar("select min(token_id) from api_token").fetch_one(&pool).await?;
    sqlx::query(
        "insert into vm (name, vcpus, memory_gib, disk_gib, dirty_rate_mbps, site_id, priority, max_downtime_ms, driver) \
         select 'bench-' || g, 2, 4, 40, 10, $1, 0, 300, 'sim' from generate_series(1, $2) g",
    )
    .bind(from)
    .bind(args.migrations as i64)
    .execute(&pool)
    .await?;
    // Room at the destination never limits either (a claim waits for room).
    sqlx::query(
        "update site set capacity_vcpus = 100000000, capacity_memory_gib = 1e9, capacity_disk_gib = 1e12 \
         where site_id = $1",
    )
    .bind(to)
    .execute(&pool)
    .await?;
    let executor = |site: i64, n: usize| {
        sqlx::query_scalar::<_, i64>(
            "insert into executor (site_id, address, state, last_heartbeat, capacity, token_id) \
             values ($1, $2, 'online', now(), 64, $3) returning executor_id",
        )
        .bind(site)
        .bind(format!("bench-{site}-{n}:7070"))
        .bind(token)
    };
    executor(to, 0).fetch_one(&pool).await?;
    let mut sources = Vec::new();
    for n in 0..args.executors.max(1) {
        sources.push(executor(from, n).fetch_one(&pool).await?);
    }

    let baseline = claim_run(&pool, &sources[..1], from, to, token).await?;
    let measured = claim_run(&pool, &sources, from, to, token).await?;
    let doubled: i64 = sqlx::query_scalar(
        "select count(*) from (select job_id from migration_event where to_state = 'claimed' \
         group by job_id having count(*) > 1) twice",
    )
    .fetch_one(&pool)
    .await?;
    let rate = |(claims, s): (usize, f64)| claims as f64 / s;
    eprintln!(
        "{} migrations: 1 executor {:.0} claims/s; {} executors {:.0} claims/s; claimed twice: {doubled}",
        args.migrations,
        rate(baseline),
        args.executors,
        rate(measured)
    );
    println!(
        "{}",
        json!({
            "bench": "claims",
            "migrations": args.migrations,
            "executors": args.executors,
            "claims_per_s": rate(measured),
            "baseline_one_executor_claims_per_s": rate(baseline),
            "speedup": rate(measured) / rate(baseline),
            "claimed_twice": doubled,
        })
    );
    anyhow::ensure!(doubled == 0, "{doubled} migrations were claimed twice");
    Ok(())
}

/// A fresh plan's worth of scheduled migrations (one per bench VM), claimed
/// by `executors` concurrently until none is left; returns claims and seconds.
async fn claim_run(pool: &PgPool, executors: &[i64], from: i64, to: i64, token: i64) -> anyhow::Result<(usize, f64)> {
    let plan: i64 = sqlx::query_scalar(
        "insert into plan (status, request, horizon_start, currency, inputs, objective, baseline, moves, move_count, \
         solver, signals) values ('applied', '{}', now(), 'EUR', '{}', '{}', '{}', '[]', 0, '{}', '[]') \
         returning plan_id",
    )
    .fetch_one(pool)
    .await?;
    sqlx::query(
        "insert into migration_job (plan_id, vm_id, from_site_id, to_site_id, predicted_bytes, start_at, cap_mbps, state) \
         select $1, vm_id, $2, $3, 1e9, now(), 100, 'scheduled' from vm where name like 'bench-%'",
    )
    .bind(plan)
    .bind(from)
    .bind(to)
    .execute(pool)
    .await?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for &executor in executors {
        let pool = pool.clone();
        tasks.spawn(async move {
            let mut claimed = 0usize;
            while let Some(assignment) = db::migrations::claim(&pool, executor, token).await? {
                let id = assignment.migration.id;
                db::migrations::transition(
                    &pool,
                    id,
                    heliotrope_api_spec::MigrationState::Cancelled,
                    "bench",
                    "released",
                )
                .await?;
                claimed += 1;
            }
            Ok::<_, anyhow::Error>(claimed)
        });
    }
    let mut claimed = 0;
    while let Some(done) = tasks.join_next().await {
        claimed += done??;
    }
    let left: i64 = sqlx::query_scalar("select count(*) from migration_job where plan_id = $1 and state = 'scheduled'")
        .bind(plan)
        .fetch_one(pool)
        .await?;
    anyhow::ensure!(left == 0, "{claimed} migrations claimed, {left} left unclaimed");
    Ok((claimed, started.elapsed().as_secs_f64()))
}
