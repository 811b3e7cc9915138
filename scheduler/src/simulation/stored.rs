//! Stored signals as traces. `heliotrope signals export --format csv`
//! writes them in the traces' format, and `simulate --database` reads them
//! through that same text, so that the two see the same hours and values.

use std::fmt::Write;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::db::{self, StoreError};
use crate::domain::signals::hourly_pairs;

/// The traces' header.
pub const HEADER: &str = "region,timestamp_utc,carbon_g_per_kwh,price_per_mwh,currency";

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
        let (carbon, price) = db::signals::hourly(pool, site.id, from, to).await?;
        for (c, p) in hourly_pairs(&carbon, &price) {
            let currency = p.unit.trim_end_matches("/MWh");
            // Display writes the shortest text that reads back as the same f64.
            let _ = writeln!(
                csv,
                "{},{},{},{},{currency}",
                site.spec.name,
                c.timestamp.format("%Y-%m-%dT%H:%M:%SZ"),
                c.value,
                p.value
            );
        }
    }
    Ok(csv)
}
