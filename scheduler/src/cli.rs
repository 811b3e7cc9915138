//! The command line: `heliotrope`'s subcommands, over the settings every
//! subcommand shares (`config`), and the subcommands that are only glue
//! between their flags and a service (`migrate`, `plan`, `signals backfill`
//! and `export`, `simulate`'s input). A subcommand owned by a module keeps
//! its flags there: `serve` is `startup::serve`, `demo` is `demo::run`
//! (`DemoArgs`), the replay is `simulation::command` (`SimulateArgs`), the
//! benchmarks are `bench`'s. The top of the module graph: nothing imports
//! it but `main.rs`.

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Config;
use crate::db;
use crate::simulation::command::{parse_time, SimulateArgs};
use crate::simulation::stored;
use crate::startup::{connect, required_database_url, Services};

#[derive(Parser)]
#[command(
    name = "heliotrope",
    version,
    about = "Moves VMs between datacenters to follow cheap, low-carbon electricity"
)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the API (applies pending migrations first).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Run the whole loop on this machine with a seeded demo fleet.
    Demo(crate::demo::DemoArgs),
    /// Print the OpenAPI document.
    Openapi,
    /// Plan from the current inventory and signals, store the plan and print it as a table.
    Plan(PlanArgs),
    /// Replay hourly carbon and price traces through placement policies and compare them (what-if).
    Simulate(crate::simulation::command::SimulateArgs),
    /// Stored carbon and price signals: backfill them from the providers' history, or export them.
    #[command(subcommand)]
    Signals(SignalsCommand),
    /// Measure performance; the last line of output is one JSON object.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
pub enum SignalsCommand {
    /// Fetch past hourly carbon and price through every enabled feed's provider history
    /// (paced to its limits; a run over the same range resumes where one stopped).
    Backfill(BackfillArgs),
    /// Write stored hourly signals as traces, the format `simulate --traces` reads.
    Export(ExportArgs),
}

#[derive(Args)]
pub struct BackfillArgs {
    /// Start of the past to fetch (RFC 3339, or a date).
    #[arg(long)]
    pub from: String,
    /// Its end, exclusive (RFC 3339, or a date); at most now.
    #[arg(long)]
    pub to: String,
    /// Only the feeds of this site.
    #[arg(long)]
    pub site: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    /// `region,timestamp_utc,carbon_g_per_kwh,price_per_mwh,currency`, one row per site and hour.
    Csv,
}

#[derive(Args)]
pub struct ExportArgs {
    #[arg(long, value_enum, default_value = "csv")]
    pub format: ExportFormat,
    /// Start (RFC 3339, or a date); default: the first stored point.
    #[arg(long)]
    pub from: Option<String>,
    /// End, exclusive (RFC 3339, or a date); default: after the last stored point.
    #[arg(long)]
    pub to: Option<String>,
    /// Only this site.
    #[arg(long)]
    pub site: Option<String>,
    /// Where to write (default: standard output).
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

#[derive(Args)]
pub struct PlanArgs {
    /// Approve and apply the plan at once (records its migration jobs).
    #[arg(long)]
    pub apply: bool,
    /// Hourly slots to plan over.
    #[arg(long, default_value_t = 24)]
    pub horizon: u32,
    /// What to minimise: cost, carbon or blend.
    #[arg(long, default_value = "blend", value_parser = crate::config::parse_mode)]
    pub mode: heliotrope_api_spec::PlanMode,
    /// Price of a tonne of CO2eq, in the price currency.
    #[arg(long, default_value_t = 100.0)]
    pub carbon_price: f64,
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Throughput and latency of GET /v1/vms against a fleet of VMs.
    Api(crate::bench::ApiBenchArgs),
    /// Push-ingest throughput of signal points (8 weeks x 16 sites by default).
    Ingest(crate::bench::IngestBenchArgs),
    /// Placement planning on a seeded instance, against a greedy baseline.
    Planner(crate::bench::PlannerBenchArgs),
    /// Migration scheduling on seeded scenarios, against all-at-once, one-at-a-time and 2-per-link.
    Schedule(crate::bench::ScheduleBenchArgs),
    /// Migration claims by concurrent executors against one database, against one executor alone.
    Claims(crate::bench::ClaimsBenchArgs),
    /// The dispatcher running migrations over six links with real executors, against the schedule's LP bound.
    Dispatch(crate::bench::DispatchBenchArgs),
    /// A site lost with its executor: its VMs restarted at their standbys from their replicas (RTO, RPO, doubles).
    Recovery(crate::bench::RecoveryBenchArgs),
}

/// `heliotrope migrate`: pending migrations applied.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let pool = connect(config, &required_database_url(config)?).await?;
    tracing::info!("migrations applied");
    pool.close().await;
    Ok(())
}

/// `heliotrope plan`: the same path as `POST /v1/plans`, printed as a table.
pub async fn plan(config: &Config, args: &PlanArgs) -> anyhow::Result<()> {
    let request = crate::domain::planner::inputs::parse_request(heliotrope_api_spec::PlanRequest {
        horizon_h: args.horizon,
        mode: args.mode,
        carbon_price_per_tonne: args.carbon_price,
        dry_run: !args.apply,
        schedule_goal: Default::default(),
    })?;
    let pool = connect(config, &required_database_url(config)?).await?;
    let made = crate::planning::propose(&pool, &config.planner, &request, chrono::Utc::now()).await?;
    print!("{}", crate::planning::table(&made));
    pool.close().await;
    Ok(())
}

/// `heliotrope simulate`: over a trace file, or over the database's stored signals.
pub async fn simulate(config: &Config, args: &SimulateArgs) -> anyhow::Result<()> {
    let (traces, named, synthetic) = match &args.traces {
        Some(path) => {
            let body = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            (body, path.display().to_string(), false)
        }
        None => {
            let pool = connect(config, &required_database_url(config)?).await?;
            let (from, to) = db::signals::stored_span(&pool).await?.context("the database holds no signals")?;
            let csv = stored::traces_csv(&pool, from, to, None).await?;
            let synthetic = db::signals::any_synthetic(&pool, from, to).await?;
            pool.close().await;
            (csv.into_bytes(), "stored in the database".to_owned(), synthetic)
        }
    };
    // The replay is long and CPU-bound: off the async runtime.
    let (planner, args) = (config.planner, args.clone());
    tokio::task::spawn_blocking(move || crate::simulation::command::run(&planner, &args, &traces, &named, synthetic))
        .await?
}

/// `heliotrope signals backfill`: every enabled feed's (or a site's) past, stored.
pub async fn backfill(config: &Config, args: &BackfillArgs) -> anyhow::Result<()> {
    let (from, to) = (parse_time(&args.from)?, parse_time(&args.to)?);
    anyhow::ensure!(from < to, "--to must come after --from");
    anyhow::ensure!(to <= chrono::Utc::now(), "--to must not lie in the future: a backfill fetches the past");
    let pool = connect(config, &required_database_url(config)?).await?;
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
    let fetcher = crate::feeds::Fetcher::new(Services::configured(config).feed_reach)?;
    let metrics = crate::metrics::Metrics::default();
    for (feed, site_id) in &feeds {
        let done = crate::feeds::backfill::backfill(&pool, &fetcher, &metrics, (feed, *site_id), from, to).await?;
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
pub async fn export(config: &Config, args: &ExportArgs) -> anyhow::Result<()> {
    let pool = connect(config, &required_database_url(config)?).await?;
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
