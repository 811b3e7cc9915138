//! `heliotrope signals backfill`: the past of the configured feeds, through
//! each provider's history (`Span::Past`), a window at a time
//! ([`history_window`]) with a pause between requests that keeps within the
//! provider's limits, and a 429's `Retry-After` honoured. What comes back is
//! checked and stored as a poll's is (the same rules, the same source, so
//! a second run changes nothing). Each window stored is recorded
//! (`db::feeds::record_backfill`): a run interrupted and started again over
//! the same range resumes after the last one.

use chrono::{DateTime, Utc};
use heliotrope_api_spec::Feed;
use sqlx::PgPool;

use super::poller::{check_and_store, PollOutcome};
use super::{history_window, FeedError, Fetcher, Span};
use crate::db;
use crate::domain::signals::dedupe;
use crate::metrics::Metrics;

/// How many times a window is asked for again after a 429 or a transient fault.
const RETRIES: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error(transparent)]
    Store(#[from] db::StoreError),
    #[error("feed {feed}, {from} to {to}: {error}")]
    Fetch { feed: i64, from: DateTime<Utc>, to: DateTime<Utc>, error: FeedError },
    #[error("feed {feed}: storing its points failed: {message}")]
    Storing { feed: i64, message: String },
    #[error("feed {feed}, {from} to {to}: the provider's payload broke a rule ({reason}); nothing of it was stored")]
    Rejected { feed: i64, from: DateTime<Utc>, to: DateTime<Utc>, reason: &'static str },
}

/// What a backfill of one feed did.
#[derive(Debug, Clone, PartialEq)]
pub struct Backfilled {
    /// Points stored by this run.
    pub points: u64,
    /// Requests made.
    pub requests: u32,
    /// Where this run started (after what an earlier run over the range stored).
    pub resumed_at: DateTime<Utc>,
}

/// Backfills `feed` (of site `site_id`) from `from` to `to`, resuming after
/// what an earlier run over the same range stored.
pub async fn backfill(
    pool: &PgPool,
    fetcher: &Fetcher,
    metrics: &Metrics,
    (feed, site_id): (&Feed, i64),
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Backfilled, BackfillError> {
    let (window, pause) = history_window(feed.provider);
    let resumed_at = db::feeds::backfilled_until(pool, feed.id, from, to).await?;
    let mut done = Backfilled { points: 0, requests: 0, resumed_at };
    let mut at = resumed_at;
    while at < to {
        let end = (at + window).min(to);
        let points = fetch_window(fetcher, feed, at, end, pause, &mut done.requests).await?;
        let stored = match check_and_store(pool, metrics, feed, site_id, &dedupe(points), Utc::now()).await? {
            PollOutcome::Stored(stored) => stored,
            PollOutcome::Rejected { reason } => {
                return Err(BackfillError::Rejected { feed: feed.id, from: at, to: end, reason })
            }
            PollOutcome::Failed { message, .. } => return Err(BackfillError::Storing { feed: feed.id, message }),
        };
        db::feeds::record_backfill(pool, feed.id, (from, to), end, stored).await?;
        tracing::info!(feed = feed.id, from = %at, to = %end, points = stored, "backfilled");
        done.points += stored;
        at = end;
    }
    Ok(done)
}

/// One window's points, paced, a 429 or a transient fault retried a few times.
async fn fetch_window(
    fetcher: &Fetcher,
    feed: &Feed,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    pause: std::time::Duration,
    requests: &mut u32,
) -> Result<Vec<crate::domain::signals::Point>, BackfillError> {
    let mut attempt = 0;
    loop {
        if *requests > 0 {
            tokio::time::sleep(pause).await;
        }
        *requests += 1;
        let error = match fetcher.fetch(feed, Span::Past { from, to }).await {
            Ok(points) => return Ok(points),
            // Nothing for the window: a gap in the provider's history, not a failure of the backfill.
            Err(FeedError::NoData(_)) => return Ok(Vec::new()),
            Err(error) => error,
        };
        attempt += 1;
        let wait = match &error {
            FeedError::RateLimited { retry_after } => Some(*retry_after),
            e if e.is_transient() => Some(pause * 2u32.pow(attempt.min(6))),
            _ => None,
        };
        let Some(wait) = wait.filter(|_| attempt <= RETRIES) else {
            return Err(BackfillError::Fetch { feed: feed.id, from, to, error });
        };
        tracing::warn!(feed = feed.id, %error, wait_s = wait.as_secs_f64(), "backfill request failed; trying again");
        tokio::time::sleep(wait).await;
    }
}
