//! Configuration: one struct, from command-line flags and environment
//! variables (flags win). Secrets are never printed: the admin token's
//! value is hidden from `--help` and from `Debug`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    Demo(DemoArgs),
    /// Print the OpenAPI document.
    Openapi,
    /// Plan from the current inventory and signals, store the plan and print it as a table.
    Plan(PlanArgs),
    /// Replay hourly carbon and price traces through placement policies and compare them (what-if).
    Simulate(SimulateArgs),
    /// Stored carbon and price signals: backfill them from the providers' history, or export them.
    #[command(subcommand)]
    Signals(SignalsCommand),
    /// Measure performance; the last line of output is one JSON object.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Args)]
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
    #[arg(long, default_value = "blend", value_parser = parse_mode)]
    pub mode: heliotrope_api_spec::PlanMode,
    /// Price of a tonne of CO2eq, in the price currency.
    #[arg(long, default_value_t = 100.0)]
    pub carbon_price: f64,
}

#[derive(Args, Clone)]
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
    pub policy: Vec<crate::simulation::command::PolicyChoice>,
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
    #[arg(long, default_value = "blend", value_parser = parse_mode)]
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

fn parse_mode(text: &str) -> Result<heliotrope_api_spec::PlanMode, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|_| format!("'{text}' is not a mode: cost, carbon or blend"))
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

/// Settings shared by every command.
#[derive(Args, Clone)]
pub struct Config {
    /// Postgres URL (falls back to DATABASE_URL).
    #[arg(long, global = true, env = "HELIOTROPE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Address the API listens on.
    #[arg(long, global = true, env = "HELIOTROPE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The first admin token's secret; generated and printed once when absent.
    #[arg(long, global = true, env = "HELIOTROPE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Log format.
    #[arg(long, global = true, env = "HELIOTROPE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Cache inventory reads, dropped on every change (`false` to turn off).
    #[arg(long, global = true, env = "HELIOTROPE_READ_CACHE", default_value_t = true, action = clap::ArgAction::Set)]
    pub read_cache: bool,
    /// Poll the provider feeds (one replica at a time polls).
    #[arg(long, global = true, env = "HELIOTROPE_POLL_FEEDS", default_value_t = true, action = clap::ArgAction::Set)]
    pub poll_feeds: bool,
    /// Private, loopback or link-local addresses (CIDR, comma-separated) feeds may reach; public ones need no listing.
    #[arg(long, global = true, env = "HELIOTROPE_FEED_ALLOW_ADDRESSES", value_delimiter = ',')]
    pub feed_allow_addresses: Vec<ipnet::IpNet>,
    /// Fetch `http://` feed URLs (stored only for loopback hosts): for tests against local fakes, never production.
    #[arg(long, global = true, env = "HELIOTROPE_FEED_PLAIN_HTTP", default_value_t = false, action = clap::ArgAction::Set)]
    pub feed_plain_http: bool,
    /// Most database connections this process opens.
    #[arg(long, global = true, env = "HELIOTROPE_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
    /// The URL browsers reach the API at, when a TLS-terminating proxy stands in front (`https://...` makes session cookies Secure).
    #[arg(long, global = true, env = "HELIOTROPE_PUBLIC_URL")]
    pub public_url: Option<url::Url>,
    /// Failed authentications an address may make at once before it is slowed to one per 3 s (429).
    #[arg(long, global = true, env = "HELIOTROPE_FAILED_AUTH_BURST", default_value_t = crate::http::auth::FAILURE_BURST)]
    pub failed_auth_burst: u32,
    /// Time a client has to send each request's head, and to send the next one on a kept-alive connection.
    #[arg(long, global = true, env = "HELIOTROPE_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,
    /// Time a client has to send a request's body.
    #[arg(long, global = true, env = "HELIOTROPE_BODY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub body_timeout: Duration,
    /// Most API connections open at once (lowered to fit the descriptor limit); more are closed on arrival.
    #[arg(long, global = true, env = "HELIOTROPE_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    #[command(flatten)]
    pub planner: PlannerConfig,
    #[command(flatten)]
    pub rebalancer: RebalancerConfig,
}

/// The hourly rebalancer: how often the leading replica plans, how it
/// plans and whether it applies what it finds.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct RebalancerConfig {
    /// Take part in electing the one replica that rebalances (`false`: never lead).
    #[arg(long = "rebalance", global = true, env = "HELIOTROPE_REBALANCE", default_value_t = true, action = clap::ArgAction::Set)]
    pub enabled: bool,
    /// How often the leader plans, in the rebalancer clock's time (`1h`, `15m`, `90s`).
    #[arg(long, global = true, env = "HELIOTROPE_REBALANCE_INTERVAL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub rebalance_interval: Duration,
    /// Apply a rebalancing plan without a planner's approval when it saves enough.
    #[arg(long, global = true, env = "HELIOTROPE_AUTO_APPLY", default_value_t = false, action = clap::ArgAction::Set)]
    pub auto_apply: bool,
    /// Least net saving (the baseline's objective minus the plan's, in the price currency) a plan needs to be applied automatically.
    #[arg(long, global = true, env = "HELIOTROPE_AUTO_APPLY_MIN_SAVING", default_value_t = 10.0)]
    pub auto_apply_min_saving: f64,
    /// What the rebalancer minimises: cost, carbon or blend.
    #[arg(long, global = true, env = "HELIOTROPE_REBALANCE_MODE", default_value = "blend", value_parser = parse_mode)]
    pub rebalance_mode: heliotrope_api_spec::PlanMode,
    /// The rebalancer's price of a tonne of CO2eq.
    #[arg(long, global = true, env = "HELIOTROPE_REBALANCE_CARBON_PRICE", default_value_t = 100.0)]
    pub rebalance_carbon_price: f64,
    /// Hours the rebalancer plans over (1 to 168). On the June-July 2023 traces a 48-hour
    /// horizon captured 83% of the oracle's saving, a 24-hour one 69% (README, simulator).
    #[arg(long, global = true, env = "HELIOTROPE_REBALANCE_HORIZON_H", default_value_t = 48)]
    pub rebalance_horizon_h: u32,
    /// Simulated seconds per real second on the rebalancer's clock (the demo runs 60: an hour a minute).
    #[arg(long, global = true, env = "HELIOTROPE_CLOCK_SPEED", default_value_t = 1.0)]
    pub clock_speed: f64,
    /// How often the leader confirms its lead and the others try to take it.
    #[arg(long, global = true, env = "HELIOTROPE_LEADER_CHECK", default_value = "5s", value_parser = humantime::parse_duration)]
    pub leader_check: Duration,
    /// This replica's name in `GET /v1/rebalancer` (default: host, process id and listen address).
    #[arg(long, global = true, env = "HELIOTROPE_REPLICA")]
    pub replica: Option<String>,
}

impl Default for RebalancerConfig {
    fn default() -> Self {
        RebalancerConfig {
            enabled: true,
            rebalance_interval: Duration::from_secs(3600),
            auto_apply: false,
            auto_apply_min_saving: 10.0,
            rebalance_mode: Default::default(),
            rebalance_carbon_price: 100.0,
            rebalance_horizon_h: 48,
            clock_speed: 1.0,
            leader_check: Duration::from_secs(5),
            replica: None,
        }
    }
}

impl RebalancerConfig {
    /// Refuses settings the loop cannot run with.
    pub fn check(&self) -> Result<(), String> {
        if self.rebalance_interval < Duration::from_secs(1) {
            return Err("--rebalance-interval must be at least 1s".into());
        }
        if !(self.clock_speed.is_finite() && self.clock_speed > 0.0 && self.clock_speed <= 3600.0) {
            return Err(format!("--clock-speed must be above 0 and at most 3600, got {}", self.clock_speed));
        }
        if !self.auto_apply_min_saving.is_finite() {
            return Err("--auto-apply-min-saving must be a number".into());
        }
        if !(self.rebalance_carbon_price.is_finite() && (0.0..=100_000.0).contains(&self.rebalance_carbon_price)) {
            return Err("--rebalance-carbon-price must be 0 to 100000".into());
        }
        if crate::domain::planner::inputs::check_horizon("--rebalance-horizon-h", self.rebalance_horizon_h).is_err() {
            return Err("--rebalance-horizon-h must be 1 to 168 hours".into());
        }
        if self.leader_check < Duration::from_millis(100) {
            return Err("--leader-check must be at least 100ms".into());
        }
        Ok(())
    }
}

/// How the planner prices moves and how long it may solve.
#[derive(Args, Debug, Clone, Copy, PartialEq)]
pub struct PlannerConfig {
    /// Least saving over the horizon, net of its cost, a move must bring to be made for money alone.
    #[arg(long, global = true, env = "HELIOTROPE_MIN_NET_SAVING", default_value_t = 0.5)]
    pub min_net_saving: f64,
    /// A VM that moved this often in the last 24 hours stays, unless its site is down.
    #[arg(long, global = true, env = "HELIOTROPE_MAX_MOVES_PER_DAY", default_value_t = 2)]
    pub max_moves_per_day: u32,
    /// Share of a migration's raw bytes expected on the wire after dedup and compression.
    #[arg(long, global = true, env = "HELIOTROPE_WIRE_FRACTION", default_value_t = 1.0)]
    pub wire_fraction: f64,
    /// Network energy per GB moved, kWh.
    #[arg(long, global = true, env = "HELIOTROPE_NETWORK_KWH_PER_GB", default_value_t = 0.01)]
    pub network_kwh_per_gb: f64,
    /// What a second of a VM's downtime costs, in the price currency.
    #[arg(long, global = true, env = "HELIOTROPE_DOWNTIME_PENALTY_PER_S", default_value_t = 0.1)]
    pub downtime_penalty_per_s: f64,
    /// Longest a plan may solve, seconds.
    #[arg(long, global = true, env = "HELIOTROPE_PLAN_TIME_LIMIT_S", default_value_t = 30.0)]
    pub plan_time_limit_s: f64,
    /// Relative gap to the LP bound at which the integer search may stop.
    #[arg(long, global = true, env = "HELIOTROPE_PLAN_MIP_GAP", default_value_t = 0.005)]
    pub plan_mip_gap: f64,
    /// Standby sites per VM chosen from the plans (where its disk is kept warm), beside the operator's.
    #[arg(long, global = true, env = "HELIOTROPE_STANDBYS_PER_VM", default_value_t = 1)]
    pub standbys_per_vm: usize,
    /// Share of each site's disk capacity that replicas of other sites' VMs may take.
    #[arg(long, global = true, env = "HELIOTROPE_REPLICA_BUDGET_SHARE", default_value_t = 0.2)]
    pub replica_budget_share: f64,
    /// Share of each link's usable bandwidth that background replication may take when migrations leave it.
    #[arg(long, global = true, env = "HELIOTROPE_REPLICATION_SHARE", default_value_t = 0.1)]
    pub replication_share: f64,
    /// How often each replica is synced, seconds.
    #[arg(long, global = true, env = "HELIOTROPE_REPLICATION_INTERVAL_S", default_value_t = 60.0)]
    pub replication_interval_s: f64,
    /// A site whose executors have all been silent this long is shown as silent (it may be
    /// lost: an operator confirms with `POST /v1/sites/{id}/fail`), seconds.
    #[arg(long, global = true, env = "HELIOTROPE_SITE_SILENT_AFTER_S", default_value_t = 60.0)]
    pub site_silent_after_s: f64,
}

impl PlannerConfig {
    /// Refuses settings the standby choice cannot work with.
    pub fn check(&self) -> Result<(), String> {
        for (flag, share) in
            [("--replica-budget-share", self.replica_budget_share), ("--replication-share", self.replication_share)]
        {
            if !(share.is_finite() && (0.0..=1.0).contains(&share)) {
                return Err(format!("{flag} must be 0 to 1, got {share}"));
            }
        }
        if !(self.replication_interval_s.is_finite() && (1.0..=86_400.0).contains(&self.replication_interval_s)) {
            return Err("--replication-interval-s must be 1 to 86400".into());
        }
        if self.standbys_per_vm > 8 {
            return Err("--standbys-per-vm must be at most 8".into());
        }
        if !(self.site_silent_after_s.is_finite() && (1.0..=86_400.0).contains(&self.site_silent_after_s)) {
            return Err("--site-silent-after-s must be 1 to 86400".into());
        }
        Ok(())
    }
}

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig {
            min_net_saving: 0.5,
            max_moves_per_day: 2,
            wire_fraction: 1.0,
            network_kwh_per_gb: 0.01,
            downtime_penalty_per_s: 0.1,
            plan_time_limit_s: 30.0,
            plan_mip_gap: 0.005,
            standbys_per_vm: 1,
            replica_budget_share: 0.2,
            replication_share: 0.1,
            replication_interval_s: 60.0,
            site_silent_after_s: 60.0,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &self.database_url.as_ref().map(|_| "<set>"))
            .field("listen", &self.listen)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<set>"))
            .field("log_format", &self.log_format)
            .field("read_cache", &self.read_cache)
            .field("poll_feeds", &self.poll_feeds)
            .field("feed_allow_addresses", &self.feed_allow_addresses)
            .field("feed_plain_http", &self.feed_plain_http)
            .field("db_max_connections", &self.db_max_connections)
            .field("public_url", &self.public_url)
            .field("failed_auth_burst", &self.failed_auth_burst)
            .field("header_timeout", &self.header_timeout)
            .field("body_timeout", &self.body_timeout)
            .field("max_connections", &self.max_connections)
            .field("planner", &self.planner)
            .field("rebalancer", &self.rebalancer)
            .finish()
    }
}

impl Config {
    /// The background services these settings ask for.
    pub fn services(&self) -> crate::startup::Services {
        crate::startup::Services {
            read_cache: self.read_cache,
            poll_feeds: self.poll_feeds,
            feed_reach: crate::feeds::reach::FeedReach {
                allowed: self.feed_allow_addresses.clone(),
                plain_http: self.feed_plain_http,
            },
            planner: self.planner,
            rebalancer: self.rebalancer.clone(),
            public_url: self.public_url.clone(),
            failed_auth_burst: self.failed_auth_burst,
            connections: crate::http::server::ConnectionLimits {
                header_timeout: self.header_timeout,
                body_timeout: self.body_timeout,
                max_connections: self.max_connections,
            },
        }
    }

    /// The database URL from `--database-url`, `HELIOTROPE_DATABASE_URL` or `DATABASE_URL`.
    pub fn database_url(&self) -> Option<String> {
        self.database_url.clone().or_else(|| std::env::var("DATABASE_URL").ok()).filter(|u| !u.is_empty())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}
