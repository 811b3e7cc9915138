//! Configuration: one struct, from command-line flags and environment
//! variables (flags win). Secrets are never printed: the admin token's
//! value is hidden from `--help` and from `Debug`.

use std::net::SocketAddr;

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
    /// Measure performance; the last line of output is one JSON object.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Args)]
pub struct DemoArgs {
    /// How many VMs to seed into an empty database.
    #[arg(long, default_value_t = 320)]
    pub vms: usize,
    /// Always start the private PostgreSQL cluster, even if one answers on localhost:5432.
    #[arg(long)]
    pub private_postgres: bool,
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Throughput and latency of GET /v1/vms against a fleet of VMs.
    Api(crate::bench::ApiBenchArgs),
    /// Push-ingest throughput of signal points (8 weeks x 16 sites by default).
    Ingest(crate::bench::IngestBenchArgs),
    /// Placement planning on a seeded instance, against a greedy baseline.
    Planner(crate::bench::PlannerBenchArgs),
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
    /// Most database connections this process opens.
    #[arg(long, global = true, env = "HELIOTROPE_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
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
            .field("db_max_connections", &self.db_max_connections)
            .finish()
    }
}

impl Config {
    /// The background services these settings ask for.
    pub fn services(&self) -> crate::startup::Services {
        crate::startup::Services { read_cache: self.read_cache, poll_feeds: self.poll_feeds }
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
