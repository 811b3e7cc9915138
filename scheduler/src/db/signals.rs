//! Signal points: bulk upserts and best-known series.

use chrono::{DateTime, Utc};
use heliotrope_api_spec::{PointKind, Resolution, Signal, SignalPoint, SiteSignals};
use sqlx::PgPool;

use super::{enum_from_text, enum_to_text, Result, StoreError};
use crate::domain::signals::Point;

/// Stores `points` for a site under `source` in one statement: all or
/// nothing, and re-storing the same points changes nothing but their values
/// and fetch time. Returns how many points were written.
pub async fn upsert(pool: &PgPool, site_id: i64, source: &str, points: &[Point]) -> Result<u64> {
    let mut signal = Vec::with_capacity(points.len());
    let mut ts = Vec::with_capacity(points.len());
    let mut value = Vec::with_capacity(points.len());
    let mut currency = Vec::with_capacity(points.len());
    let mut basis = Vec::with_capacity(points.len());
    let mut resolution_s = Vec::with_capacity(points.len());
    let mut forecast = Vec::with_capacity(points.len());
    let mut issued_at = Vec::with_capacity(points.len());
    let mut estimated = Vec::with_capacity(points.len());
    for p in points {
        signal.push(enum_to_text(&p.signal));
        ts.push(p.ts);
        value.push(p.value);
        currency.push(p.currency.clone());
        basis.push(enum_to_text(&p.basis));
        // Validation keeps resolutions within a day.
        resolution_s.push(p.resolution_s as i32);
        forecast.push(p.forecast);
        issued_at.push(p.issued_at);
        estimated.push(p.estimated);
    }
    let done = sqlx::query(
        "insert into signal_point (site_id, source, signal, ts, value, currency, basis, resolution_s, forecast, \
         issued_at, estimated) \
         select $1, $2, * from unnest($3::text[], $4::timestamptz[], $5::float8[], $6::text[], $7::text[], \
         $8::int4[], $9::bool[], $10::timestamptz[], $11::bool[]) \
         on conflict on constraint signal_point_key do update set value = excluded.value, \
         currency = excluded.currency, basis = excluded.basis, resolution_s = excluded.resolution_s, \
         estimated = excluded.estimated, fetched_at = now()",
    )
    .bind(site_id)
    .bind(source)
    .bind(&signal)
    .bind(&ts)
    .bind(&value)
    .bind(&currency)
    .bind(&basis)
    .bind(&resolution_s)
    .bind(&forecast)
    .bind(&issued_at)
    .bind(&estimated)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

#[derive(sqlx::FromRow)]
struct PointRow {
    ts: DateTime<Utc>,
    value: f64,
    currency: Option<String>,
    basis: String,
    source: String,
    resolution_s: i32,
    forecast: bool,
    issued_at: Option<DateTime<Utc>>,
    estimated: bool,
    samples: i64,
}

impl PointRow {
    fn into_point(self, signal: Signal) -> std::result::Result<SignalPoint, sqlx::Error> {
        let decode = |e: std::num::TryFromIntError| sqlx::Error::Decode(Box::new(e));
        Ok(SignalPoint {
            timestamp: self.ts,
            value: self.value,
            unit: match (signal, &self.currency) {
                (Signal::Price, Some(currency)) => format!("{currency}/MWh"),
                _ => "gCO2eq/kWh".to_owned(),
            },
            kind: if self.forecast { PointKind::Forecast } else { PointKind::Actual },
            issued_at: self.issued_at,
            basis: enum_from_text(self.basis)?,
            source: self.source,
            resolution_s: self.resolution_s.try_into().map_err(decode)?,
            estimated: self.estimated,
            samples: self.samples.try_into().map_err(decode)?,
        })
    }
}

/// The best-known point per stored timestamp: an actual over any forecast,
/// then the newest forecast, then the newest fetch.
const BEST: &str = "select distinct on (ts) ts, value, currency, basis, source, resolution_s, forecast, issued_at, \
    estimated from signal_point where site_id = $1 and signal = $2 and ts >= $3 and ts < $4 \
    order by ts, forecast, issued_at desc nulls last, fetched_at desc";

/// A site's series between `from` and `to`, raw or on the UTC hour grid:
/// each hour the mean of its best-known points from one source (the one
/// of its best point), actuals only where the hour has any, so that an
/// hour never blends sources, bases, currencies or actuals with forecasts.
pub async fn series(
    pool: &PgPool,
    site_id: i64,
    signal: Signal,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    resolution: Resolution,
) -> Result<Vec<SignalPoint>> {
    let sql = match resolution {
        Resolution::Raw => format!("select *, 1::int8 as samples from ({BEST}) best order by ts"),
        Resolution::Hourly => format!(
            "with best as ({BEST}), \
             hours as (select *, date_bin('1 hour', ts, timestamptz '2000-01-01 00:00:00+00') as hour from best), \
             ranked as (select *, bool_or(not forecast) over by_hour as has_actual, \
                        first_value(source) over (by_hour order by forecast, issued_at desc nulls last, source) \
                        as chosen_source from hours window by_hour as (partition by hour)) \
             select hour as ts, avg(value) as value, min(currency) as currency, min(basis) as basis, \
                    min(source) as source, max(resolution_s) as resolution_s, bool_or(forecast) as forecast, \
                    max(issued_at) as issued_at, bool_or(estimated) as estimated, count(*) as samples \
             from ranked where source = chosen_source and (not forecast or not has_actual) \
             group by hour order by hour"
        ),
    };
    let rows: Vec<PointRow> =
        sqlx::query_as(&sql).bind(site_id).bind(enum_to_text(&signal)).bind(from).bind(to).fetch_all(pool).await?;
    Ok(rows.into_iter().map(|r| r.into_point(signal)).collect::<std::result::Result<_, _>>()?)
}

/// The region label of a site (pushes skip CSV rows of other regions), and its name.
pub async fn site_region(pool: &PgPool, site_id: i64) -> Result<(String, String)> {
    sqlx::query_as("select name, region from site where site_id = $1")
        .bind(site_id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("site {site_id}")))
}

/// The newest best-known carbon and price at or before `now`, per site.
pub async fn current(pool: &PgPool, now: DateTime<Utc>) -> Result<Vec<SiteSignals>> {
    #[derive(sqlx::FromRow)]
    struct CurrentRow {
        site: String,
        signal: String,
        #[sqlx(flatten)]
        point: PointRow,
    }
    let rows: Vec<CurrentRow> = sqlx::query_as(
        "select s.name as site, sig.signal, p.* from site s \
         cross join (values ('carbon'), ('price')) as sig (signal) \
         cross join lateral (select ts, value, currency, basis, source, resolution_s, forecast, issued_at, estimated, \
             1::int8 as samples from signal_point where site_id = s.site_id and signal = sig.signal and ts <= $1 \
             order by ts desc, forecast, issued_at desc nulls last, fetched_at desc limit 1) p",
    )
    .bind(now)
    .fetch_all(pool)
    .await?;
    let sites: Vec<String> = sqlx::query_scalar("select name from site order by site_id").fetch_all(pool).await?;
    let mut items: Vec<SiteSignals> =
        sites.into_iter().map(|site| SiteSignals { site, carbon: None, price: None }).collect();
    for row in rows {
        let signal: Signal = enum_from_text(row.signal)?;
        let point = row.point.into_point(signal)?;
        if let Some(item) = items.iter_mut().find(|i| i.site == row.site) {
            match signal {
                Signal::Carbon => item.carbon = Some(point),
                Signal::Price => item.price = Some(point),
            }
        }
    }
    Ok(items)
}

/// A site's hourly carbon and price series (see [`series`]) from `from` to `to`.
pub async fn hourly(
    pool: &PgPool,
    site_id: i64,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<(Vec<SignalPoint>, Vec<SignalPoint>)> {
    let carbon = series(pool, site_id, Signal::Carbon, from, to, Resolution::Hourly).await?;
    Ok((carbon, series(pool, site_id, Signal::Price, from, to, Resolution::Hourly).await?))
}

/// The span of every stored point (to the end of the last one's hour), if any.
pub async fn stored_span(pool: &PgPool) -> Result<Option<(DateTime<Utc>, DateTime<Utc>)>> {
    let span: (Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
        sqlx::query_as("select min(ts), max(ts) + interval '1 hour' from signal_point").fetch_one(pool).await?;
    Ok(span.0.zip(span.1))
}

/// Whether any point stored from `from` to `to` is synthetic (the demo's, labelled so).
pub async fn any_synthetic(pool: &PgPool, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "select exists (select 1 from signal_point where basis = 'synthetic' and ts >= $1 and ts < $2)",
    )
    .bind(from)
    .bind(to)
    .fetch_one(pool)
    .await?)
}
