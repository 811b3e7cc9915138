//! Building and running the scheduler's server: the services the
//! configuration asks for, the database connected and migrated, bind (port
//! 0 picks a free port, which tests use), serve, and stop gracefully when
//! told.

use std::net::SocketAddr;

use anyhow::Context;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use chrono::Utc;

use crate::config::{Config, PlannerConfig, RebalancerConfig};
use crate::db::changes::{watch_inventory, watch_migrations};
use crate::domain::clock::Clock;
use crate::feeds::poller;
use crate::feeds::reach::FeedReach;
use crate::http::server::{self, ConnectionLimits};
use crate::http::{app, AppState};
use crate::rebalancer::{replica_name, Rebalancer};

/// The background work a server runs beside the API, and how it plans.
#[derive(Debug, Clone)]
pub struct Services {
    /// Cache inventory reads (see `http::cache`).
    pub read_cache: bool,
    /// Poll the provider feeds (see `feeds::poller`).
    pub poll_feeds: bool,
    /// Where the feeds may reach beyond the public internet (see `feeds::reach`).
    pub feed_reach: FeedReach,
    pub planner: PlannerConfig,
    /// The rebalancing loop (see `rebalancer`); `enabled: false` keeps this replica out of it.
    pub rebalancer: RebalancerConfig,
    /// What one client may hold of the API server (see `http::server`).
    pub connections: ConnectionLimits,
    /// Where browsers reach the API, when a proxy stands in front (`https` makes session cookies `Secure`).
    pub public_url: Option<url::Url>,
    /// Failed authentications an address may make at once (see `http::auth::FailedAuth`).
    pub failed_auth_burst: u32,
}

impl Default for Services {
    fn default() -> Self {
        Services {
            read_cache: true,
            poll_feeds: true,
            feed_reach: FeedReach::default(),
            planner: PlannerConfig::default(),
            rebalancer: RebalancerConfig::default(),
            connections: ConnectionLimits::default(),
            public_url: None,
            failed_auth_burst: crate::config::FAILED_AUTH_BURST,
        }
    }
}

impl Services {
    /// The background services `config` asks for.
    pub fn configured(config: &Config) -> Services {
        Services {
            read_cache: config.read_cache,
            poll_feeds: config.poll_feeds,
            feed_reach: FeedReach { allowed: config.feed_allow_addresses.clone(), plain_http: config.feed_plain_http },
            planner: config.planner,
            rebalancer: config.rebalancer.clone(),
            public_url: config.public_url.clone(),
            failed_auth_burst: config.failed_auth_burst,
            connections: ConnectionLimits {
                header_timeout: config.header_timeout,
                body_timeout: config.body_timeout,
                max_connections: config.max_connections,
            },
        }
    }

    /// For tests and benchmarks, which poll feeds and rebalance themselves
    /// when they mean to: neither runs on a timer.
    pub fn driven() -> Services {
        let mut services = Services { poll_feeds: false, ..Services::default() };
        services.rebalancer.enabled = false;
        services
    }
}

/// The configured database URL, or why there is none.
pub fn required_database_url(config: &Config) -> anyhow::Result<String> {
    config.database_url().context("no database configured: set HELIOTROPE_DATABASE_URL (or DATABASE_URL)")
}

/// Connects to `url` and applies pending migrations.
pub async fn connect(config: &Config, url: &str) -> anyhow::Result<PgPool> {
    let pool = crate::db::connect(url, config.db_max_connections).await.context("connecting to the database")?;
    crate::db::migrate(&pool).await.context("applying migrations")?;
    Ok(pool)
}

/// The configured admin secret, checked.
pub fn admin_secret(config: &Config) -> anyhow::Result<Option<&str>> {
    let secret = config.admin_token.as_deref();
    secret.map(crate::domain::token::check_configured_secret).transpose()?;
    Ok(secret)
}

/// `heliotrope serve`: the configured database migrated, an admin token
/// made if there is none, and the API with its services until SIGTERM.
pub async fn serve(config: &Config) -> anyhow::Result<()> {
    let configured = admin_secret(config)?;
    let pool = connect(config, &required_database_url(config)?).await?;
    if let Some(secret) = crate::db::tokens::ensure_admin(&pool, configured).await? {
        eprintln!("No admin token existed; made one. It is shown this once:\n\n    {secret}\n");
    }
    let app = Application::build(pool, config.listen, Services::configured(config)).await?;
    tracing::info!(addr = %app.local_addr(), "serving");
    app.run_until_stopped(shutdown_on_signal()).await.context("serving")
}

/// A bound, ready-to-run server.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    services: Services,
}

impl Application {
    /// Binds `listen`; the database must already be migrated.
    pub async fn build(pool: PgPool, listen: SocketAddr, services: Services) -> anyhow::Result<Application> {
        services.rebalancer.check().map_err(anyhow::Error::msg)?;
        services.planner.check().map_err(anyhow::Error::msg)?;
        services.connections.check().map_err(anyhow::Error::msg)?;
        let listener = TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
        let bound = listener.local_addr()?;
        let replica = services.rebalancer.replica.clone().unwrap_or_else(|| replica_name(bound));
        let mut state = AppState::new(pool, services.planner, &replica, services.rebalancer.enabled);
        state.secure_cookies = services.public_url.as_ref().is_some_and(|url| url.scheme() == "https");
        state.failed_auth = std::sync::Arc::new(crate::http::auth::FailedAuth::new(services.failed_auth_burst));
        state.clock = start_clock(&state.pool, services.rebalancer.clock_speed).await?;
        Ok(Application { listener, state, services })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        // A bound TCP listener always has a local address.
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// The application's clock (accelerated in the demo), started at build.
    pub fn clock(&self) -> Clock {
        self.state.clock
    }

    /// Serves until `shutdown` is cancelled, then lets in-flight requests finish.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let mut background = tokio::task::JoinSet::new();
        if self.services.read_cache {
            let (pool, cache, stop) = (self.state.pool.clone(), self.state.read_cache.clone(), shutdown.clone());
            background.spawn(async move { watch_inventory(pool, stop, |change| cache.on_change(change)).await });
        }
        if self.services.poll_feeds {
            let (pool, metrics, stop) = (self.state.pool.clone(), self.state.metrics.clone(), shutdown.clone());
            background.spawn(poller::run(pool, metrics, self.services.feed_reach.clone(), stop));
        }
        let (pool, stop) = (self.state.pool.clone(), shutdown.clone());
        background.spawn(expire_leases(pool, stop));
        if self.state.clock.speed() != 1.0 {
            let (pool, stop) = (self.state.pool.clone(), shutdown.clone());
            background.spawn(keep_clock_run(pool, self.state.clock, stop));
        }
        // Not a service to switch off: without it no migration is admitted.
        let (pool, stop) = (self.state.pool.clone(), shutdown.clone());
        background.spawn(crate::dispatcher::run(pool, self.services.planner, stop));
        let (pool, news, stop) = (self.state.pool.clone(), self.state.news.clone(), shutdown.clone());
        background.spawn(async move { watch_migrations(pool, stop, |item| drop(news.send(item))).await });
        if self.services.rebalancer.enabled {
            let rebalancer = Rebalancer {
                pool: self.state.pool.clone(),
                planner: self.services.planner,
                config: self.services.rebalancer.clone(),
                clock: self.state.clock,
                replica: self.state.replica.to_string(),
            };
            background.spawn(rebalancer.run(shutdown.clone()));
        }
        let stopping = self.state.stopping.clone();
        let limits = within_descriptors(self.services.connections);
        let metrics = self.state.metrics.clone();
        let served = tokio::spawn(server::serve(self.listener, app(self.state), limits, metrics, shutdown.clone()));
        shutdown.cancelled().await;
        // Open event streams end, so that their connections can drain.
        stopping.cancel();
        served.await.map_err(std::io::Error::other)?;
        // They stop on the same token; a panic in one would already have been logged.
        while background.join_next().await.is_some() {}
        Ok(())
    }
}

/// The connection cap lowered, if need be, to leave descriptors for the
/// database pool, the feeds and the files this process opens.
fn within_descriptors(mut limits: ConnectionLimits) -> ConnectionLimits {
    const RESERVED: u64 = 256;
    if let Ok((soft, _)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        let room = usize::try_from(soft.saturating_sub(RESERVED).max(16)).unwrap_or(usize::MAX);
        if room < limits.max_connections {
            tracing::warn!(
                cap = limits.max_connections,
                room,
                "too few file descriptors: lowering the API connection cap"
            );
            limits.max_connections = room;
        }
    }
    limits
}

/// Raises this process's descriptor limit to the most it is allowed: each
/// API connection holds one, and the default soft limit (often 1,024) is
/// far below what a busy server needs.
pub fn raise_descriptor_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, soft, hard, "cannot raise the file descriptor limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the file descriptor limit"),
    }
}

/// Real time, or an accelerated clock (the demo's) that resumes where the
/// last one stopped and whose run is recorded (see `domain::clock`).
async fn start_clock(pool: &sqlx::PgPool, speed: f64) -> anyhow::Result<Clock> {
    if speed == 1.0 {
        return Ok(Clock::new(1.0, Utc::now()));
    }
    let now = Utc::now();
    let clock = crate::db::clock::timeline(pool).await.context("reading the clock's runs")?.resume(speed, now);
    crate::db::clock::record_span(pool, &clock, now).await.context("recording the clock's run")?;
    tracing::info!(speed, reads = %clock.origin(), "the accelerated clock resumes");
    Ok(clock)
}

/// Keeps the accelerated clock's run current (every few seconds, and at
/// the stop), so that a clock started later resumes where this one stopped.
async fn keep_clock_run(pool: sqlx::PgPool, clock: Clock, stop: CancellationToken) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = every.tick() => false,
        };
        if let Err(e) = crate::db::clock::record_span(&pool, &clock, Utc::now()).await {
            tracing::warn!(error = %e, "cannot record the clock's run");
        }
        if stopping {
            return;
        }
    }
}

/// Every few seconds, migrations whose executor stopped reporting go to
/// `recovering` (claims sweep too; this catches a fleet with no one claiming).
async fn expire_leases(pool: sqlx::PgPool, stop: CancellationToken) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {
                match crate::db::dispatch::expire_leases(&pool).await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(migrations = n, "leases ran out: recovering"),
                    Err(e) => tracing::error!(error = %e, "sweeping expired leases failed"),
                }
            }
        }
    }
}

/// A token cancelled on SIGTERM or Ctrl-C.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await
                }
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => tracing::info!("interrupted; shutting down"),
            _ = term => tracing::info!("SIGTERM; shutting down"),
        }
        trigger.cancel();
    });
    token
}
