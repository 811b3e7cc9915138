//! Polls every enabled feed on its interval (with jitter), validates what
//! comes back with the rules a push follows, and stores it.
//!
//! One replica polls at a time: the one that leads the duty (`db::leader`);
//! the others wait for it. A feed's failure never touches another feed or
//! the data already stored: a 429 waits for its `Retry-After`, a transient
//! fault backs off exponentially (capped at the feed's interval), anything
//! else waits for the next interval.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use heliotrope_api_spec::Feed;
use rand::Rng;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::reach::FeedReach;
use super::{FeedError, Fetcher, Span};
use crate::db;
use crate::db::leader::{self, Duty, Lead};
use crate::domain::signals::{check_point, dedupe, Point};
use crate::metrics::Metrics;

/// How often the poller looks for due feeds and for feeds added or changed.
const TICK: Duration = Duration::from_secs(5);
/// First back-off after a transient failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(30);

/// What one poll of one feed came to.
#[derive(Debug, Clone, PartialEq)]
pub enum PollOutcome {
    /// Stored this many points.
    Stored(u64),
    /// The payload broke a rule (`reason`); nothing was stored.
    Rejected { reason: &'static str },
    /// The fetch failed; `retry_in` says when to try again.
    Failed { message: String, retry_in: Option<Duration>, transient: bool },
}

/// Polls `feed` (of site `site_id`) once and records its health.
pub async fn poll_once(
    pool: &PgPool,
    fetcher: &Fetcher,
    metrics: &Metrics,
    feed: &Feed,
    site_id: i64,
    now: DateTime<Utc>,
) -> Result<PollOutcome, db::StoreError> {
    let source = format!("feed:{}", feed.id);
    let points = match fetcher.fetch(feed, Span::Now(now)).await {
        Ok(points) => dedupe(points),
        Err(error) => {
            if matches!(error, FeedError::Shape(_)) {
                metrics.signal_rejected(&source, "unparseable");
            }
            let outcome = PollOutcome::Failed {
                message: error.to_string(),
                retry_in: match &error {
                    FeedError::RateLimited { retry_after } => Some(*retry_after),
                    _ => None,
                },
                transient: error.is_transient(),
            };
            tracing::warn!(feed = feed.id, %error, "feed poll failed");
            db::feeds::record_failure(pool, feed.id, &error.to_string()).await?;
            return Ok(outcome);
        }
    };
    let outcome = check_and_store(pool, metrics, feed, site_id, &points, now).await?;
    if let PollOutcome::Stored(stored) = outcome {
        let newest = points.iter().map(|p| p.ts).max();
        db::feeds::record_success(pool, feed.id, stored, newest).await?;
    }
    Ok(outcome)
}

/// Checks what `feed` brought with the rules a push follows and stores it
/// (as source `feed:ID`, replacing what the same points said before); a
/// rule broken stores nothing, and is recorded as the feed's last error.
pub(super) async fn check_and_store(
    pool: &PgPool,
    metrics: &Metrics,
    feed: &Feed,
    site_id: i64,
    points: &[Point],
    now: DateTime<Utc>,
) -> Result<PollOutcome, db::StoreError> {
    let source = format!("feed:{}", feed.id);
    if let Some((reason, message)) = points.iter().find_map(|p| check_point(p, now).err()) {
        metrics.signal_rejected(&source, reason);
        tracing::warn!(feed = feed.id, reason, %message, "feed payload rejected");
        db::feeds::record_failure(pool, feed.id, &format!("payload rejected ({reason}): {message}")).await?;
        return Ok(PollOutcome::Rejected { reason });
    }
    match db::signals::upsert(pool, site_id, &source, points).await {
        Ok(stored) => Ok(PollOutcome::Stored(stored)),
        Err(error) => {
            tracing::error!(feed = feed.id, %error, "storing a feed's points failed");
            db::feeds::record_failure(pool, feed.id, "storing the points failed; see the scheduler's log").await?;
            Ok(PollOutcome::Failed { message: error.to_string(), retry_in: None, transient: true })
        }
    }
}

/// When a feed is due next, given how its last poll went.
pub fn next_delay(outcome: &PollOutcome, interval: Duration, failures: u32) -> Duration {
    let jitter = |d: Duration| d + d.mul_f64(rand::rng().random_range(0.0..0.1));
    match outcome {
        PollOutcome::Failed { retry_in: Some(wait), .. } => *wait,
        PollOutcome::Failed { transient: true, .. } => {
            jitter(FIRST_BACKOFF.saturating_mul(2u32.saturating_pow(failures.min(16))).min(interval))
        }
        _ => jitter(interval),
    }
}

/// Runs until `stop`: takes the poller lock, then polls due feeds.
pub async fn run(pool: PgPool, metrics: Arc<Metrics>, reach: FeedReach, stop: CancellationToken) {
    let fetcher = match Fetcher::new(reach) {
        Ok(fetcher) => Arc::new(fetcher),
        Err(error) => {
            tracing::error!(%error, "cannot make the feeds' HTTP client; no feed will be polled");
            return;
        }
    };
    while !stop.is_cancelled() {
        match leader::take(&pool, Duty::FeedPolling).await {
            Ok(Some(mut lead)) => {
                tracing::info!("polling feeds");
                poll_while_leading(&pool, &mut lead, &fetcher, &metrics, &stop).await;
                if stop.is_cancelled() {
                    if let Err(error) = lead.release().await {
                        tracing::warn!(%error, "cannot release the feed poller lock; it goes with the connection");
                    }
                } else {
                    tracing::warn!("stopped polling feeds; will try to lead again");
                }
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "cannot take the feed poller lock"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
    }
}

struct Schedule {
    due: Instant,
    failures: u32,
}

/// Polls until `stop`, or until the connection holding the lock is lost
/// (Postgres then frees the lock, and another replica may take over).
async fn poll_while_leading(
    pool: &PgPool,
    lead: &mut Lead,
    fetcher: &Arc<Fetcher>,
    metrics: &Arc<Metrics>,
    stop: &CancellationToken,
) {
    let mut schedule: HashMap<i64, Schedule> = HashMap::new();
    let mut polls = JoinSet::new();
    let mut ticker = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                polls.shutdown().await;
                return;
            }
            Some(done) = polls.join_next() => {
                let Ok((feed_id, interval, outcome)) = done else { continue };
                let entry = schedule.entry(feed_id).or_insert(Schedule { due: Instant::now(), failures: 0 });
                entry.failures = match &outcome {
                    Ok(PollOutcome::Failed { .. }) | Err(_) => entry.failures + 1,
                    _ => 0,
                };
                let outcome = outcome.unwrap_or_else(|e: db::StoreError| PollOutcome::Failed {
                    message: e.to_string(), retry_in: None, transient: true,
                });
                entry.due = Instant::now() + next_delay(&outcome, interval, entry.failures.saturating_sub(1));
            }
            _ = ticker.tick() => {
                if !lead.still_held().await {
                    tracing::warn!("lost the feed poller lock");
                    polls.shutdown().await;
                    return;
                }
                let feeds = match db::feeds::enabled(pool).await {
                    Ok(feeds) => feeds,
                    Err(error) => {
                        tracing::warn!(%error, "cannot list feeds");
                        continue;
                    }
                };
                schedule.retain(|id, _| feeds.iter().any(|(f, _)| f.id == *id));
                for (feed, site_id) in feeds {
                    // Spread first polls over a few seconds so a restart does not burst.
                    let entry = schedule.entry(feed.id).or_insert_with(|| Schedule {
                        due: Instant::now() + Duration::from_millis(rand::rng().random_range(0..3000)),
                        failures: 0,
                    });
                    if entry.due > Instant::now() {
                        continue;
                    }
                    // Not due again until this poll reports back.
                    entry.due = Instant::now() + Duration::from_secs(24 * 3600);
                    let (pool, fetcher, metrics) = (pool.clone(), fetcher.clone(), metrics.clone());
                    let interval = Duration::from_secs(u64::from(feed.poll_interval_s));
                    polls.spawn(async move {
                        let outcome = poll_once(&pool, &fetcher, &metrics, &feed, site_id, Utc::now()).await;
                        (feed.id, interval, outcome)
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays() {
        let interval = Duration::from_secs(900);
        let ok = next_delay(&PollOutcome::Stored(1), interval, 0);
        assert!(ok >= interval && ok <= interval.mul_f64(1.1));
        let limited =
            PollOutcome::Failed { message: String::new(), retry_in: Some(Duration::from_secs(120)), transient: true };
        assert_eq!(next_delay(&limited, interval, 3), Duration::from_secs(120), "Retry-After is honoured exactly");
        let transient = PollOutcome::Failed { message: String::new(), retry_in: None, transient: true };
        let first = next_delay(&transient, interval, 0);
        let third = next_delay(&transient, interval, 2);
        assert!(first >= Duration::from_secs(30) && first < Duration::from_secs(34), "{first:?}");
        assert!(third >= Duration::from_secs(120) && third < Duration::from_secs(133), "{third:?}");
        assert!(next_delay(&transient, interval, 10) <= interval.mul_f64(1.1), "capped at the interval");
        let permanent = PollOutcome::Failed { message: String::new(), retry_in: None, transient: false };
        assert!(next_delay(&permanent, interval, 5) >= interval);
    }
}
