//! `heliotrope`: the scheduler binary. Loads configuration, sets up
//! logging and hands over to the library.

use anyhow::Context;
use clap::Parser;
use heliotrope::config::{
    BackfillArgs, BenchCommand, Cli, Command, Config, DemoArgs, ExportArgs, PlanArgs, SignalsCommand, SimulateArgs,
};
use heliotrope::demo::local_pg::{localhost_answers, LocalPostgres};
use heliotrope::simulation::command::parse_time;
use heliotrope::simulation::stored;
use heliotrope::startup::{shutdown_on_signal, Application};
use heliotrope::{bench, db, demo, http, telemetry};
use heliotrope_api_spec::Role;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.config.log_format);
    heliotrope::startup::raise_descriptor_limit();
    match cli.command {
        Command::Serve => serve(&cli.config).await,
        Command::Migrate => {
            let pool = connect(&cli.config, &required_url(&cli.config)?).await?;
            tracing::info!("migrations applied");
            pool.close().await;
            Ok(())
        }
        Command::Demo(args) => run_demo(&cli.config, &args).await,
        Command::Openapi => {
            print!("{}", http::openapi::document());
            Ok(())
        }
        Command::Plan(args) => plan(&cli.config, &args).await,
        Command::Simulate(args) => simulate(&cli.config, &args).await,
        Command::Signals(SignalsCommand::Backfill(args)) => backfill(&cli.config, &args).await,
        Command::Signals(SignalsCommand::Export(args)) => export(&cli.config, &args).await,
        Command::Bench(BenchCommand::Api(args)) => bench::api(&cli.config, &args).await,
        Command::Bench(BenchCommand::Ingest(args)) => bench::ingest(&cli.config, &args).await,
        Command::Bench(BenchCommand::Planner(args)) => bench::planner(&args),
        Command::Bench(BenchCommand::Schedule(args)) => bench::schedule(&args),
        Command::Bench(BenchCommand::Claims(args)) => bench::claims(&cli.config, &args).await,
        Command::Bench(BenchCommand::Dispatch(args)) => bench::dispatch(&cli.config, &args).await,
        Command::Bench(BenchCommand::Recovery(args)) => bench::recovery(&cli.config, &args).await,
    }
}

/// The configured admin secret, checked.
fn admin_secret(config: &Config) -> anyhow::Result<Option<&str>> {
    let secret = config.admin_token.as_deref();
    secret.map(heliotrope::domain::token::check_configured_secret).transpose()?;
    Ok(secret)
}

fn required_url(config: &Config) -> anyhow::Result<String> {
    config.database_url().context("no database configured: set HELIOTROPE_DATABASE_URL (or DATABASE_URL)")
}

/// Connects and applies pending migrations.
async fn connect(config: &Config, url: &str) -> anyhow::Result<sqlx::PgPool> {
    let pool = db::connect(url, config.db_max_connections).await.context("connecting to the database")?;
    db::migrate(&pool).await.context("applying migrations")?;
    Ok(pool)
}

/// `heliotrope plan`: the same path as `POST /v1/plans`, printed as a table.
async fn plan(config: &Config, args: &PlanArgs) -> anyhow::Result<()> {
    let request = heliotrope::domain::planner::inputs::parse_request(heliotrope_api_spec::PlanRequest {
        horizon_h: args.horizon,
        mode: args.mode,
        carbon_price_per_tonne: args.carbon_price,
        dry_run: !args.apply,
        schedule_goal: Default::default(),
    })?;
    let pool = connect(config, &required_url(config)?).await?;
    let made = heliotrope::planning::propose(&pool, &config.planner, &request, chrono::Utc::now()).await?;
    print!("{}", heliotrope::planning::table(&made));
    pool.close().await;
    Ok(())
}

/// `heliotrope simulate`: over a trace file, or over the database's stored signals.
async fn simulate(config: &Config, args: &SimulateArgs) -> anyhow::Result<()> {
    let (traces, named, synthetic) = match &args.traces {
        Some(path) => {
            let body = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            (body, path.display().to_string(), false)
        }
        None => {
            let pool = connect(config, &required_url(config)?).await?;
            let (from, to) = db::signals::stored_span(&pool).await?.context("the database holds no signals")?;
            let csv = stored::traces_csv(&pool, from, to, None).await?;
            let synthetic = db::signals::any_synthetic(&pool, from, to).await?;
            pool.close().await;
            (csv.into_bytes(), "stored in the database".to_owned(), synthetic)
        }
    };
    // The replay is long and CPU-bound: off the async runtime.
    let (planner, args) = (config.planner, args.clone());
    tokio::task::spawn_blocking(move || {
        heliotrope::simulation::command::run(&planner, &args, &traces, &named, synthetic)
    })
    .await?
}

/// `heliotrope signals backfill`: every enabled feed's (or a site's) past, stored.
async fn backfill(config: &Config, args: &BackfillArgs) -> anyhow::Result<()> {
    let (from, to) = (parse_time(&args.from)?, parse_time(&args.to)?);
    anyhow::ensure!(from < to, "--to must come after --from");
    anyhow::ensure!(to <= chrono::Utc::now(), "--to must not lie in the future: a backfill fetches the past");
    let pool = connect(config, &required_url(config)?).await?;
    let feeds: Vec<_> = db::feeds::enabled(&pool)
        .await?
        .into_iter()
        .filter(|(feed, _)| args.site.as_ref().is_none_or(|site| &feed.site == site))
        .collect();
    anyhow::ensure!(
        !feeds.is_empty(),
        "no enabled feed{}: add one with POST /v1/feeds",
        args.site.as_ref().map(|s| format!(" at site {s}")).unwrap_or_default()
    );
    let fetcher = heliotrope::feeds::Fetcher::new(config.services().feed_reach)?;
    let metrics = http::metrics::Metrics::default();
    for (feed, site_id) in &feeds {
        let done = heliotrope::feeds::backfill::backfill(&pool, &fetcher, &metrics, (feed, *site_id), from, to).await?;
        println!(
            "feed {} ({} {:?} at {}): {} points stored in {} requests{}",
            feed.id,
            feed.area,
            feed.signal,
            feed.site,
            done.points,
            done.requests,
            if done.resumed_at > from { format!(", resumed at {}", done.resumed_at) } else { String::new() }
        );
    }
    pool.close().await;
    Ok(())
}

/// `heliotrope signals export --format csv`: stored hourly signals as traces.
async fn export(config: &Config, args: &ExportArgs) -> anyhow::Result<()> {
    let pool = connect(config, &required_url(config)?).await?;
    let span = db::signals::stored_span(&pool).await?;
    let from = match &args.from {
        Some(text) => parse_time(text)?,
        None => span.context("the database holds no signals")?.0,
    };
    let to = match &args.to {
        Some(text) => parse_time(text)?,
        None => span.context("the database holds no signals")?.1,
    };
    anyhow::ensure!(from < to, "--to must come after --from");
    let csv = stored::traces_csv(&pool, from, to, args.site.as_deref()).await?;
    pool.close().await;
    match &args.out {
        Some(path) => std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))?,
        None => print!("{csv}"),
    }
    Ok(())
}

async fn serve(config: &Config) -> anyhow::Result<()> {
    let configured = admin_secret(config)?;
    let pool = connect(config, &required_url(config)?).await?;
    if let Some(secret) = db::tokens::ensure_admin(&pool, configured).await? {
        eprintln!("No admin token existed; made one. It is shown this once:\n\n    {secret}\n");
    }
    let app = Application::build(pool, config.listen, config.services()).await?;
    tracing::info!(addr = %app.local_addr(), "serving");
    app.run_until_stopped(shutdown_on_signal()).await.context("serving")
}

const DEMO_DATABASE: &str = "heliotrope_demo";

async fn run_demo(config: &Config, args: &DemoArgs) -> anyhow::Result<()> {
    // Signals are caught from here on, so that Ctrl-C during set-up still stops a private cluster.
    let stop = shutdown_on_signal();
    let base = demo::state::base_dir(args.state_dir.as_deref())?;
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
    let executor_bin = demo::executors::binary(args.executor_bin.as_deref())?;
    let named = args.sites.as_deref().map(demo::regions_named).transpose()?;
    let pool = connect(config, url).await?;
    let wanted = demo::state::Wanted { regions: named.as_deref(), reset: args.reset, own_database };
    let (state, found) = demo::state::open(&pool, base, &wanted).await?;
    if let demo::state::Found::Empty = found {
        let regions = match named {
            Some(regions) => regions,
            None => demo::regions_named(&demo::DEFAULT_SITES.map(String::from))?,
        };
        let vms = args.vms.unwrap_or(20 * regions.len());
        tracing::info!(sites = regions.len(), vms, "seeding the demo fleet");
        demo::store_fleet(&pool, demo::inventory::fleet_in(&regions, vms, 2026)).await?;
    }
    let secret = match admin_secret(config)? {
        Some(secret) => {
            db::tokens::ensure_admin(&pool, Some(secret)).await?;
            secret.to_owned()
        }
        None => state.token(&pool, "admin", Role::Admin, None).await?,
    };
    // The demo rebalances by itself, an hour of its clock every minute (by default), applying every plan that saves.
    let mut services = config.services();
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
    let points = demo::store_synthetic_signals(&pool, clock.now(), chrono::Duration::days(7)).await?;
    tracing::info!(points, "stored synthetic signals (basis and source 'synthetic'): a week back, two days ahead");
    let sites = demo::site_names(&pool).await?;
    // One executor token per site: each serves its own site alone.
    let mut tokens = Vec::with_capacity(sites.len());
    for site in &sites {
        tokens.push(state.token(&pool, &format!("executor-{site}"), Role::Executor, Some(site)).await?);
    }
    let executors = demo::executors::Executors::start(
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
    let replay = tokio::spawn(demo::replay_synthetic_signals(pool, clock, stop.clone()));
    // The server stops first (its long polls end at once), so that no executor's last words reach it
    // as a failure; the executors then stop, and a restarted demo recovers what they left under way.
    let served = app.run_until_stopped(stop).await.context("serving");
    drop(executors);
    replay.await.context("the signal replay panicked")?;
    served
}
