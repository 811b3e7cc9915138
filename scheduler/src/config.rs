//! Configuration: one struct, [`Config`], from command-line flags and
//! environment variables (flags win), shared by every subcommand; the
//! subcommands themselves are `cli`'s. Secrets are never printed: the admin
//! token's value is hidden from `--help` and from `Debug`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// Failed authentications an address may make at once before it is slowed (`--failed-auth-burst`).
pub const FAILED_AUTH_BURST: u32 = 20;

/// Reads a plan mode flag (`cost`, `carbon` or `blend`).
pub fn parse_mode(text: &str) -> Result<heliotrope_api_spec::PlanMode, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|_| format!("'{text}' is not a mode: cost, carbon or blend"))
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
    #[arg(long, global = true, env = "HELIOTROPE_FAILED_AUTH_BURST", default_value_t = FAILED_AUTH_BURST)]
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
