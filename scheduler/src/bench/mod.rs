//! `heliotrope bench ...`: performance measured on the real parts (a real
//! Postgres database, the real HTTP server over loopback TCP), each figure
//! paired with a baseline run in the same process.

mod api;
mod claims;
mod dispatch;
mod ingest;
mod planner;
mod recovery;
mod schedule;

use anyhow::Context;
use sqlx::PgPool;

use crate::config::Config;
use crate::db;

pub use api::{api, ApiBenchArgs};
pub use claims::{claims, ClaimsBenchArgs};
pub use dispatch::{dispatch, DispatchBenchArgs};
pub use ingest::{ingest, IngestBenchArgs};
pub use planner::{planner, PlannerBenchArgs};
pub use recovery::{recovery, RecoveryBenchArgs};
pub use schedule::{schedule, ScheduleBenchArgs};

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
        let pool = crate::startup::connect(config, &db::with_database(&server, &database)).await?;
        bench(pool).await
    }
    .await;
    db::drop_database(&server, &database).await.context("dropping the benchmark database")?;
    outcome
}
