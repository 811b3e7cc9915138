//! The accelerated clock's runs (see `domain::clock`).

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use super::Result;
use crate::domain::clock::{Clock, Span, Timeline};

#[derive(sqlx::FromRow)]
struct SpanRow {
    real_from: DateTime<Utc>,
    simulated_from: DateTime<Utc>,
    speed: f64,
    real_until: DateTime<Utc>,
}

/// Every run so far.
pub async fn timeline(db: impl PgExecutor<'_>) -> Result<Timeline> {
    let rows: Vec<SpanRow> =
        sqlx::query_as("select real_from, simulated_from, speed, real_until from clock_run").fetch_all(db).await?;
    Ok(Timeline::new(
        rows.into_iter()
            .map(|r| Span { clock: Clock::resumed(r.speed, r.real_from, r.simulated_from), until: r.real_until })
            .collect(),
    ))
}

/// Records that `clock` ran from its real origin until `until` (a new run, or one going on).
pub async fn record_span(db: impl PgExecutor<'_>, clock: &Clock, until: DateTime<Utc>) -> Result<()> {
    sqlx::query(
        "insert into clock_run (real_from, simulated_from, speed, real_until) values ($1, $2, $3, $4) \
         on conflict (real_from) do update set real_until = greatest(clock_run.real_until, excluded.real_until)",
    )
    .bind(clock.real_origin())
    .bind(clock.origin())
    .bind(clock.speed())
    .bind(until.max(clock.real_origin()))
    .execute(db)
    .await?;
    Ok(())
}
