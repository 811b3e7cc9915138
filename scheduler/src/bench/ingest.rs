//! `heliotrope bench ingest`: push-ingest throughput of signal points
//! over the API, against the same points stored straight into the database.

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

    demo::store_fleet(&pool, synthetic::inventory::fleet(0, 42)).await?;
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
