//! `heliotrope bench api`: GET /v1/vms against a fleet of VMs, with and
//! without the read cache, against GET /healthz as the baseline.

use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use heliotrope_api_spec::Role;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::with_scratch_database;
use crate::config::Config;
use crate::domain::token::{generate_secret, secret_digest};
use crate::startup::{Application, Services};
use crate::{db, demo, synthetic};

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

async fn api_on(pool: PgPool, args: &ApiBenchArgs) -> anyhow::Result<()> {
    let seeding = Instant::now();
    demo::store_fleet(&pool, synthetic::inventory::fleet(args.vms, 42)).await?;
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
