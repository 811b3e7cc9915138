//! Stored signals as traces. `heliotrope signals export --format csv`
//! writes them in the traces' format, and `simulate --database` reads them
//! through that same text, so that the two see the same hours and values.

use std::fmt::Write;

use chrono::{DateTime, Utc};
use heliotrope_api_spec::{Resolution, Signal};
use sqlx::PgPool;

use crate::db::{self, StoreError};

/// The traces' header.
pub const HEADER: &str = "region,timestamp_utc,carbon_g_per_kwh,price_per_mwh,currency";

/// The span of every stored signal point, if any.
pub async fn stored_span(pool: &PgPool) -> Result<Option<(DateTime<Utc>, DateTime<Utc>)>, StoreError> {
    let span: (Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
        sqlx::query_as("select min(ts), max(ts) + interval '1 hour' from signal_point").fetch_one(pool).await?;
    Ok(span.0.zip(span.1))
}

/// Whether any signal stored from `from` to `to` is synthetic (the demo's, labelled so).
pub async fn any_synthetic(pool: &PgPool, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(
        "select exists (select 1 from signal_point where basis = 'synthetic' and ts >= $1 and ts < $2)",
    )
    .bind(from)
    .bind(to)
    .fetch_one(pool)
    .await?)
}

/// Every site's (or only `site`'s) best-known hourly carbon and price
/// from `from` to `to` as trace CSV, the site's name as its region. An
/// hour that lacks either signal is left out: the traces' reader fills it
/// from an earlier day, as the planner would.
pub async fn traces_csv(
    pool: &PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    site: Option<&str>,
) -> Result<String, StoreError> {
    let mut csv = format!("{HEADER}\n");
    let sites = db::sites::all(pool).await?;
    if let Some(name) = site {
        if !sites.iter().any(|s| s.spec.name == name) {
            return Err(StoreError::NotFound(format!("site {name}")));
        }
    }
    for site in sites.iter().filter(|s| site.is_none_or(|name| s.spec.name == name)) {
        let series = |signal| db::signals::series(pool, site.id, signal, from, to, Resolution::Hourly);
        let carbon = series(Signal::Carbon).await?;
        let prices: std::collections::HashMap<_, _> =
            series(Signal::Price).await?.into_iter().map(|p| (p.timestamp, p)).collect();
        for c in carbon {
            let Some(price) = prices.get(&c.timestamp) else { continue };
            let currency = price.unit.trim_end_matches("/MWh");
            // Display writes the shortest text that reads back as the same f64.
            let _ = writeln!(
                csv,
                "{},{},{},{},{currency}",
                site.spec.name,
                c.timestamp.format("%Y-%m-%dT%H:%M:%SZ"),
                c.value,
                price.value
            );
        }
    }
    Ok(csv)
}
