//! Feeds and their polling health.

use chrono::{DateTime, Utc};
use heliotrope_api_spec::{Feed, FeedFilter, FeedHealth, FeedSpec};
use sqlx::{PgExecutor, PgPool};

use super::{enum_from_text, enum_to_text, on_constraint, site_id_by_name, ListQuery, Result, StoreError};
use crate::domain::feeds::{default_base_url, is_stale};
use crate::domain::page::{Page, PageRequest};
use crate::domain::Valid;

#[derive(sqlx::FromRow)]
struct FeedRow {
    feed_id: i64,
    site_id: i64,
    site: String,
    provider: String,
    signal: String,
    area: String,
    base_url: String,
    credential_env: Option<String>,
    poll_interval_s: i32,
    enabled: bool,
    last_success_at: Option<DateTime<Utc>>,
    last_error_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
    points_ingested: i64,
    newest_point_at: Option<DateTime<Utc>>,
    last_new_data_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<FeedRow> for Feed {
    type Error = sqlx::Error;
    fn try_from(r: FeedRow) -> std::result::Result<Feed, sqlx::Error> {
        let poll_interval_s = u32::try_from(r.poll_interval_s).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        Ok(Feed {
            id: r.feed_id,
            site: r.site,
            provider: enum_from_text(r.provider)?,
            signal: enum_from_text(r.signal)?,
            area: r.area,
            base_url: r.base_url,
            credential_env: r.credential_env,
            poll_interval_s,
            enabled: r.enabled,
            health: FeedHealth {
                last_success_at: r.last_success_at,
                last_error_at: r.last_error_at,
                last_error: r.last_error,
                points_ingested: r.points_ingested,
                newest_point_at: r.newest_point_at,
                stale: r.enabled && is_stale(r.last_new_data_at, r.created_at, poll_interval_s, Utc::now()),
            },
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

const SELECT: &str =
    "select f.feed_id, f.site_id, s.name as site, f.provider, f.signal, f.area, f.base_url, f.credential_env, \
    f.poll_interval_s, f.enabled, f.last_success_at, f.last_error_at, f.last_error, f.points_ingested, \
    f.newest_point_at, f.last_new_data_at, f.created_at, f.updated_at from feed f join site s on s.site_id = f.site_id";

fn taken(spec: &FeedSpec) -> impl Fn(&str) -> Option<String> + '_ {
    move |c| {
        (c == "feed_site_id_provider_signal_area_key").then(|| {
            format!(
                "site '{}' already has this provider's {} feed for '{}'",
                spec.site,
                enum_to_text(&spec.signal),
                spec.area
            )
        })
    }
}

/// Creates (`id` None) or replaces a feed.
pub async fn store(pool: &PgPool, id: Option<i64>, spec: &Valid<FeedSpec>) -> Result<Feed> {
    let mut tx = pool.begin().await?;
    let site_id = site_id_by_name(&mut tx, "site", &spec.site).await?;
    let base_url = spec.base_url.clone().unwrap_or_else(|| default_base_url(spec.provider).to_owned());
    let sql = match id {
        None => {
            "insert into feed (site_id, provider, signal, area, base_url, credential_env, poll_interval_s, enabled) \
                 values ($1, $2, $3, $4, $5, $6, $7, $8) returning feed_id"
        }
        Some(_) => {
            "update feed set site_id = $1, provider = $2, signal = $3, area = $4, base_url = $5, \
                    credential_env = $6, poll_interval_s = $7, enabled = $8 where feed_id = $9 returning feed_id"
        }
    };
    let stored: Option<i64> = sqlx::query_scalar(sql)
        .bind(site_id)
        .bind(enum_to_text(&spec.provider))
        .bind(enum_to_text(&spec.signal))
        .bind(&spec.area)
        .bind(&base_url)
        .bind(&spec.credential_env)
        // Validation keeps the interval within a day.
        .bind(spec.poll_interval_s as i32)
        .bind(spec.enabled)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| on_constraint(e, taken(spec)))?;
    let feed_id = stored.ok_or_else(|| StoreError::NotFound(format!("feed {}", id.unwrap_or_default())))?;
    let feed = get(&mut *tx, feed_id).await?;
    tx.commit().await?;
    Ok(feed)
}

pub async fn get(db: impl PgExecutor<'_>, id: i64) -> Result<Feed> {
    let sql = format!("{SELECT} where f.feed_id = $1");
    let row: Option<FeedRow> = sqlx::query_as(&sql).bind(id).fetch_optional(db).await?;
    row.ok_or_else(|| StoreError::NotFound(format!("feed {id}")))?.try_into().map_err(Into::into)
}

pub async fn list(pool: &PgPool, page: PageRequest, filter: &FeedFilter) -> Result<Page<Feed>> {
    let rows: Vec<FeedRow> = ListQuery::new(SELECT, "f.feed_id", page)
        .filter("s.name", filter.site.as_deref())
        .filter("f.provider", filter.provider.as_ref().map(enum_to_text))
        .filter("f.signal", filter.signal.as_ref().map(enum_to_text))
        .fetch(pool)
        .await?;
    let feeds = rows.into_iter().map(Feed::try_from).collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(page.page(feeds, |f| f.id))
}

/// Every enabled feed with its site's id, for the poller.
pub async fn enabled(pool: &PgPool) -> Result<Vec<(Feed, i64)>> {
    let sql = format!("{SELECT} where f.enabled order by f.feed_id");
    let rows: Vec<FeedRow> = sqlx::query_as(&sql).fetch_all(pool).await?;
    rows.into_iter()
        .map(|r| {
            let site_id = r.site_id;
            Ok((Feed::try_from(r)?, site_id))
        })
        .collect()
}

pub async fn delete(pool: &PgPool, id: i64) -> Result<()> {
    let done = sqlx::query("delete from feed where feed_id = $1").bind(id).execute(pool).await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("feed {id}")));
    }
    Ok(())
}

/// Records a successful poll that stored `points` points, the newest at `newest`.
pub async fn record_success(pool: &PgPool, id: i64, points: u64, newest: Option<DateTime<Utc>>) -> Result<()> {
    sqlx::query(
        "update feed set last_success_at = now(), last_error = null, points_ingested = points_ingested + $2, \
         last_new_data_at = case when $3::timestamptz > coalesce(newest_point_at, '-infinity') then now() \
                                 else last_new_data_at end, \
         newest_point_at = greatest(newest_point_at, $3) where feed_id = $1",
    )
    .bind(id)
    .bind(i64::try_from(points).unwrap_or(i64::MAX))
    .bind(newest)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records a failed poll; the data already stored stays.
pub async fn record_failure(pool: &PgPool, id: i64, message: &str) -> Result<()> {
    sqlx::query("update feed set last_error_at = now(), last_error = $2 where feed_id = $1")
        .bind(id)
        .bind(message)
        .execute(pool)
        .await?;
    Ok(())
}

/// How far a backfill of feed `id` over `from..to` got (`from` if it never ran).
pub async fn backfilled_until(pool: &PgPool, id: i64, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<DateTime<Utc>> {
    let done: Option<DateTime<Utc>> = sqlx::query_scalar(
        "select done_until from feed_backfill where feed_id = $1 and range_from = $2 and range_to = $3",
    )
    .bind(id)
    .bind(from)
    .bind(to)
    .fetch_optional(pool)
    .await?;
    Ok(done.unwrap_or(from))
}

/// Records that the backfill of feed `id` over `from..to` has stored everything up to `until` (`points` more of them).
pub async fn record_backfill(
    pool: &PgPool,
    id: i64,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    until: DateTime<Utc>,
    points: u64,
) -> Result<()> {
    sqlx::query(
        "insert into feed_backfill (feed_id, range_from, range_to, done_until, points) values ($1, $2, $3, $4, $5) \
         on conflict (feed_id, range_from, range_to) do update set done_until = excluded.done_until, \
           points = feed_backfill.points + excluded.points, updated_at = now()",
    )
    .bind(id)
    .bind(from)
    .bind(to)
    .bind(until)
    .bind(i64::try_from(points).unwrap_or(i64::MAX))
    .execute(pool)
    .await?;
    Ok(())
}
