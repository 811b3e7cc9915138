//! `heliotrope demo`: the whole product on one machine, for a newcomer.
//!
//! Finds a database (the configured one, else a server on localhost:5432,
//! else a private throwaway cluster it starts itself), matches it with the
//! demo's state outside it (`state`), seeds the demo fleet when it starts
//! afresh, starts an executor per site and serves, rebalancing on an
//! accelerated clock that resumes where it stopped.

pub mod executors;
pub mod local_pg;
pub mod state;

use anyhow::Context;
use heliotrope_api_spec::Role;
use sqlx::PgPool;

use self::local_pg::{localhost_answers, LocalPostgres};
use crate::config::Config;
use crate::startup::{self, Application, Services};

use crate::db;
use crate::domain::clock::Clock;
use crate::domain::inventory::{parse_group, parse_link, parse_site, parse_vm};
use crate::synthetic::inventory::Fleet;
use crate::synthetic::{regions, signals};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Regions to seed as sites (zone ids, comma-separated, or `all` for the 16; default GB,DE-LU,US-CAL-CISO).
    /// A demo that ran before resumes with its sites: naming others is refused unless with --reset.
    #[arg(long, value_delimiter = ',')]
    pub sites: Option<Vec<String>>,
    /// How many VMs to seed when the demo starts afresh (default: 20 per site).
    #[arg(long)]
    pub vms: Option<usize>,
    /// Start afresh: empty the demo's database and remove its executors' state (VMs, images, tokens).
    #[arg(long)]
    pub reset: bool,
    /// Where the demo keeps its executors' state and its private PostgreSQL cluster
    /// (default: $XDG_DATA_HOME/heliotrope, or /var/tmp/heliotrope-demo as root).
    #[arg(long, env = "HELIOTROPE_DEMO_STATE_DIR")]
    pub state_dir: Option<std::path::PathBuf>,
    /// Always start the private PostgreSQL cluster, even if one answers on localhost:5432.
    #[arg(long)]
    pub private_postgres: bool,
    /// Simulated hours per real minute on the rebalancer's clock (it plans every simulated hour).
    #[arg(long, default_value_t = 1.0)]
    pub hours_per_minute: f64,
    /// The demo's churn charge: least net saving a move must bring (the demo's VMs save cents a day).
    #[arg(long, default_value_t = 0.01)]
    pub min_net_saving: f64,
    /// Leave rebalancing to the planners: no hourly plans, plans are made and applied by hand (the dashboard's Plan view).
    #[arg(long)]
    pub no_rebalance: bool,
    /// The executor binary (default: `heliotrope-executor` beside this one).
    #[arg(long)]
    pub executor_bin: Option<std::path::PathBuf>,
    /// Sim VMs' MiB of memory and disk per GiB the inventory says (real bytes move between the executors).
    #[arg(long, default_value_t = 0.25)]
    pub sim_mib_per_gib: f64,
}

/// Stores a fleet: sites, then links and groups, then VMs (several at a time).
pub async fn store_fleet(pool: &PgPool, fleet: Fleet) -> anyhow::Result<()> {
    for site in fleet.sites {
        let name = site.name.clone();
        db::sites::insert(pool, &parse_site(site)?).await.with_context(|| format!("storing site {name}"))?;
    }
    for link in fleet.links {
        db::links::insert(pool, &parse_link(link)?).await.context("storing a link")?;
    }
    for group in fleet.groups {
        db::groups::insert(pool, &parse_group(group)?).await.context("storing a group")?;
    }
    const LANES: usize = 8;
    let mut lanes: Vec<Vec<_>> = (0..LANES).map(|_| Vec::new()).collect();
    for (i, vm) in fleet.vms.into_iter().enumerate() {
        lanes[i % LANES].push(parse_vm(vm)?);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for lane in lanes {
        let pool = pool.clone();
        tasks.spawn(async move {
            for vm in lane {
                db::vms::insert(&pool, &vm).await.with_context(|| format!("storing VM {}", vm.name))?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a seeding task panicked")??;
    }
    Ok(())
}

/// Stores synthetic actuals from `back` before `now` and two days of
/// synthetic forecasts for every site whose region has a profile, labelled
/// `synthetic` (basis and source). Returns how many points were stored.
pub async fn store_synthetic_signals(
    pool: &PgPool,
    now: chrono::DateTime<chrono::Utc>,
    back: chrono::Duration,
) -> anyhow::Result<u64> {
    let page = crate::domain::page::PageRequest { limit: 1000, after_id: 0 };
    let hours = u32::try_from((back + chrono::Duration::hours(48)).num_hours()).unwrap_or(48);
    let mut stored = 0;
    for site in db::sites::list(pool, page, &Default::default()).await?.items {
        let tz: chrono_tz::Tz = site.spec.timezone.parse().unwrap_or(chrono_tz::UTC);
        // One path per site: the actuals stored now agree with those stored an hour ago.
        let seed = site.id.unsigned_abs();
        let points = signals::synthetic_points(&site.spec.region, tz, now - back, hours, now, seed);
        stored += db::signals::upsert(pool, site.id, "synthetic", &points).await?;
    }
    Ok(stored)
}

/// Keeps the synthetic signals moving while the demo runs: every hour on
/// `clock` (simulated, in an accelerated demo), the hour just past becomes
/// an actual and a fresh two-day forecast is issued.
pub async fn replay_synthetic_signals(pool: PgPool, clock: Clock, stop: tokio_util::sync::CancellationToken) {
    loop {
        let into_hour = clock.now().timestamp().rem_euclid(3600) as u64;
        let next = clock.real(std::time::Duration::from_secs(3600 - into_hour + 5));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(next) => {}
        }
        match store_synthetic_signals(&pool, clock.now(), chrono::Duration::hours(1)).await {
            Ok(points) => tracing::info!(points, clock = %clock.now(), "replayed an hour of synthetic signals"),
            Err(error) => tracing::warn!(error = format!("{error:#}"), "cannot store synthetic signals"),
        }
    }
}

/// The regions a demo seeds when none are named.
pub const DEFAULT_SITES: [&str; 3] = ["GB", "DE-LU", "US-CAL-CISO"];

/// The regions named (zone ids, or `all`), in the order given.
pub fn regions_named(names: &[String]) -> anyhow::Result<Vec<regions::Region>> {
    if names.iter().any(|n| n == "all") {
        return Ok(regions::REGIONS.to_vec());
    }
    let mut picked = Vec::with_capacity(names.len());
    for name in names {
        let region = regions::REGIONS.iter().find(|r| r.zone == name.as_str()).with_context(|| {
            let known: Vec<&str> = regions::REGIONS.iter().map(|r| r.zone.as_ref()).collect();
            format!("no demo region '{name}': one of {} or all", known.join(", "))
        })?;
        if !picked.iter().any(|r: &regions::Region| r.zone == region.zone) {
            picked.push(region.clone());
        }
    }
    anyhow::ensure!(!picked.is_empty(), "name at least one region");
    Ok(picked)
}

/// Every site's name.
pub async fn site_names(pool: &PgPool) -> anyhow::Result<Vec<String>> {
    let page = crate::domain::page::PageRequest { limit: 1000, after_id: 0 };
    Ok(db::sites::list(pool, page, &Default::default()).await?.items.into_iter().map(|s| s.spec.name).collect())
}

/// Whether the inventory holds no site yet.
pub async fn is_empty(pool: &PgPool) -> anyhow::Result<bool> {
    let page = crate::domain::page::PageRequest { limit: 1, after_id: 0 };
    Ok(db::sites::list(pool, page, &Default::default()).await?.items.is_empty())
}

const DEMO_DATABASE: &str = "heliotrope_demo";

/// `heliotrope demo`: finds or makes a database, then [`demo_with_database`].
pub async fn run(config: &Config, args: &DemoArgs) -> anyhow::Result<()> {
    // Signals are caught from here on, so that Ctrl-C during set-up still stops a private cluster.
    let stop = startup::shutdown_on_signal();
    let base = state::base_dir(args.state_dir.as_deref())?;
    let mut private = None;
    let (url, own_database) = match config.database_url() {
        Some(url) if !args.private_postgres => (url, false),
        _ => {
            let on_localhost = if !args.private_postgres && localhost_answers() {
                localhost_demo_database()
                    .await
                    .inspect_err(|e| {
                        tracing::warn!(
                            error = format!("{e:#}"),
                            "localhost:5432 answers but refuses the demo; using a private cluster"
                        )
                    })
                    .ok()
            } else {
                None
            };
            match on_localhost {
                Some(url) => (url, true),
                None => {
                    let pg = LocalPostgres::start(&base).context("starting a private PostgreSQL cluster")?;
                    let pg = private.insert(pg);
                    let url = pg.url(DEMO_DATABASE);
                    db::create_database_if_missing(&db::with_database(&url, "postgres"), DEMO_DATABASE).await?;
                    (url, true)
                }
            }
        }
    };
    // `private` (if any) stops its cluster when dropped, however this ends.
    demo_with_database(config, args, &url, own_database, &base, stop).await
}

/// The demo database on the server at localhost:5432 (user `postgres`, trust auth).
async fn localhost_demo_database() -> anyhow::Result<String> {
    let server = "postgres://postgres@127.0.0.1:5432/postgres";
    db::create_database_if_missing(server, DEMO_DATABASE)
        .await
        .context("creating the demo database on localhost:5432")?;
    Ok(db::with_database(server, DEMO_DATABASE))
}

async fn demo_with_database(
    config: &Config,
    args: &DemoArgs,
    url: &str,
    own_database: bool,
    base: &std::path::Path,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.hours_per_minute.is_finite() && args.hours_per_minute > 0.0 && args.hours_per_minute <= 60.0,
        "--hours-per-minute must be above 0 and at most 60"
    );
    anyhow::ensure!(
        args.sim_mib_per_gib.is_finite() && args.sim_mib_per_gib > 0.0 && args.sim_mib_per_gib <= 16.0,
        "--sim-mib-per-gib must be above 0 and at most 16"
    );
    let executor_bin = executors::binary(args.executor_bin.as_deref())?;
    let named = args.sites.as_deref().map(regions_named).transpose()?;
    let pool = startup::connect(config, url).await?;
    let wanted = state::Wanted { regions: named.as_deref(), reset: args.reset, own_database };
    let (state, found) = state::open(&pool, base, &wanted).await?;
    if let state::Found::Empty = found {
        let regions = match named {
            Some(regions) => regions,
            None => regions_named(&DEFAULT_SITES.map(String::from))?,
        };
        let vms = args.vms.unwrap_or(20 * regions.len());
        tracing::info!(sites = regions.len(), vms, "seeding the demo fleet");
        store_fleet(&pool, crate::synthetic::inventory::fleet_in(&regions, vms, 2026)).await?;
    }
    let secret = match startup::admin_secret(config)? {
        Some(secret) => {
            db::tokens::ensure_admin(&pool, Some(secret)).await?;
            secret.to_owned()
        }
        None => state.token(&pool, "admin", Role::Admin, None).await?,
    };
    // The demo rebalances by itself, an hour of its clock every minute (by default), applying every plan that saves.
    let mut services = Services::configured(config);
    services.rebalancer.enabled = !args.no_rebalance;
    services.rebalancer.auto_apply = true;
    services.rebalancer.auto_apply_min_saving = 0.0;
    services.rebalancer.clock_speed = 60.0 * args.hours_per_minute;
    // A demo VM draws tens to hundreds of watts: a day's saving is cents, which the default churn charge would refuse.
    services.planner.min_net_saving = args.min_net_saving;
    let app = Application::build(pool.clone(), config.listen, services).await?;
    let addr = app.local_addr();
    let clock = app.clock();
    // Signals on the demo's clock, which resumes where it stopped: a week back fills the hours it stood still.
    let points = store_synthetic_signals(&pool, clock.now(), chrono::Duration::days(7)).await?;
    tracing::info!(points, "stored synthetic signals (basis and source 'synthetic'): a week back, two days ahead");
    let sites = site_names(&pool).await?;
    // One executor token per site: each serves its own site alone.
    let mut tokens = Vec::with_capacity(sites.len());
    for site in &sites {
        tokens.push(state.token(&pool, &format!("executor-{site}"), Role::Executor, Some(site)).await?);
    }
    let executors = executors::Executors::start(
        &executor_bin,
        &format!("http://{addr}"),
        &sites.iter().cloned().zip(tokens).collect::<Vec<_>>(),
        args.sim_mib_per_gib,
        &state.executors_dir(),
    )?;
    println!(
        "Heliotrope demo: {} real grid regions as sites ({}), links between them, a seeded fleet of",
        sites.len(),
        sites.join(", ")
    );
    println!("SIMULATED VMs (sim driver: real bytes move between the executors, the guests are simulated), and");
    println!("SYNTHETIC carbon and price signals generated from real per-region profiles (labelled 'synthetic').");
    println!(
        "{} executors (sim driver) run as child processes, one per site. The rebalancer plans every hour of a",
        executors.len()
    );
    if args.no_rebalance {
        println!(
            "SIMULATED clock running {}x real time, but only when a planner asks (--no-rebalance):",
            clock.speed()
        );
    } else {
        println!(
            "SIMULATED clock running {}x real time and applies every plan that saves; watch the VMs move:",
            clock.speed()
        );
    }
    println!("  dashboard    http://{addr}/  (sign in with the admin token)");
    println!("  admin token  {secret}");
    println!("  API          http://{addr}/v1/sites");
    println!("  rebalancer   curl -H 'Authorization: Bearer {secret}' http://{addr}/v1/rebalancer");
    println!("  migrations   curl -H 'Authorization: Bearer {secret}' 'http://{addr}/v1/migrations?state=done'");
    println!("  live news    curl -N -H 'Authorization: Bearer {secret}' http://{addr}/v1/events");
    println!("  signals      curl -H 'Authorization: Bearer {secret}' 'http://{addr}/v1/signals/current'");
    println!("  OpenAPI      api-spec/openapi.json; metrics at http://{addr}/metrics");
    println!("  database     {}  (what-if on its signals: heliotrope simulate --database)", db::redacted(url));
    println!("Ctrl-C stops the demo.");
    let replay = tokio::spawn(replay_synthetic_signals(pool, clock, stop.clone()));
    // The server stops first (its long polls end at once), so that no executor's last words reach it
    // as a failure; the executors then stop, and a restarted demo recovers what they left under way.
    let served = app.run_until_stopped(stop).await.context("serving");
    drop(executors);
    replay.await.context("the signal replay panicked")?;
    served
}
