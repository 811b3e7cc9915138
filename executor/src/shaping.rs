//! Shaping: a token bucket holds a job's bytes to the cap the schedule gave
//! it, and a [`Link`]'s bucket holds all jobs on the link to its usable
//! bandwidth; a sender takes from every bucket it is under. Caps can change
//! mid-transfer. Background replication of disks to standby sites runs
//! within a budget of the link and yields to migrations: its rate is what
//! the migrations' caps leave, at most its budget, and nothing while they
//! take the whole link.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::lock;

/// A token bucket; `None` for a rate means unshaped.
pub struct Shaper {
    bucket: Mutex<Bucket>,
    /// How often a sender found the rate zero and waited (see [`Shaper::times_held`]).
    held: AtomicU64,
}

struct Bucket {
    rate: Option<f64>,
    /// May go negative: a sender that took more waits it off.
    tokens: f64,
    last: Instant,
}

/// Burst allowance, in seconds of the rate.
const BURST_S: f64 = 0.05;

impl Shaper {
    pub fn new(bytes_per_s: Option<f64>) -> Shaper {
        Shaper {
            bucket: Mutex::new(Bucket { rate: bytes_per_s, tokens: 0.0, last: Instant::now() }),
            held: AtomicU64::new(0),
        }
    }

    /// Changes the rate from now on.
    pub fn set_rate(&self, bytes_per_s: Option<f64>) {
        let mut b = lock(&self.bucket);
        b.refill();
        b.rate = bytes_per_s;
    }

    pub fn rate(&self) -> Option<f64> {
        lock(&self.bucket).rate
    }

    /// How many times a sender has looked and found the rate zero: it grows
    /// every [`PAUSED_POLL`] while one is held, so that a held sender can be
    /// told from one that is not sending at all.
    pub fn times_held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Takes `bytes`, waiting as long as the rate asks (while it is zero,
    /// until it is not). Total over every rate: a rate below [`MIN_RATE`]
    /// holds the sender as zero does, and no single wait is longer than
    /// [`MAX_WAIT`], so a rate raised meanwhile takes effect soon.
    pub async fn take(&self, bytes: u64) {
        let mut owed = Some(bytes);
        loop {
            let wait = {
                let mut b = lock(&self.bucket);
                b.refill();
                match b.rate {
                    None => return,
                    Some(rate) if rate.is_nan() || rate < MIN_RATE => {
                        self.held.fetch_add(1, Ordering::Relaxed);
                        PAUSED_POLL
                    }
                    Some(rate) => {
                        if let Some(bytes) = owed.take() {
                            b.tokens -= bytes as f64;
                        }
                        if b.tokens >= 0.0 {
                            return;
                        }
                        Duration::from_secs_f64((-b.tokens / rate).min(MAX_WAIT.as_secs_f64()))
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Rates below this (bytes/s) hold the sender, as a rate of zero does.
const MIN_RATE: f64 = 1.0;

/// The longest one wait: a rate raised meanwhile takes effect after it.
const MAX_WAIT: Duration = Duration::from_secs(1);

/// How often a sender held at rate zero looks again.
const PAUSED_POLL: Duration = Duration::from_millis(20);

/// A WAN link as its site's executor shares it.
pub struct Link {
    usable: f64,
    replication_budget: f64,
    /// Everything sent on the link takes from this.
    total: Arc<Shaper>,
    replication: Arc<Shaper>,
    /// Caps of the migrations under way.
    migrations: Mutex<Vec<(u64, f64)>>,
    /// A final sync is pending (a site being evacuated): replication keeps
    /// its budget even while migrations take the rest.
    final_sync: std::sync::atomic::AtomicBool,
}

/// A migration's share of a link, held while it runs.
pub struct MigrationSlot {
    link: Arc<Link>,
    id: u64,
    /// The job's own bucket at its cap.
    pub cap: Arc<Shaper>,
}

impl Link {
    /// A link of `usable` bytes/s, of which replication may use `replication_budget` when migrations leave it.
    pub fn new(usable: f64, replication_budget: f64) -> Arc<Link> {
        let link = Arc::new(Link {
            usable,
            replication_budget,
            total: Arc::new(Shaper::new(Some(usable))),
            replication: Arc::new(Shaper::new(Some(replication_budget.min(usable)))),
            migrations: Mutex::new(Vec::new()),
            final_sync: std::sync::atomic::AtomicBool::new(false),
        });
        link.rebalance();
        link
    }

    /// The buckets a replication on this link takes from.
    pub fn replication_shapers(&self) -> Vec<Arc<Shaper>> {
        vec![self.replication.clone(), self.total.clone()]
    }

    /// Starts a migration at `cap` bytes/s: replication yields to it at once.
    pub fn start_migration(self: &Arc<Self>, cap: f64) -> MigrationSlot {
        let mut migrations = lock(&self.migrations);
        let id = migrations.iter().map(|&(id, _)| id + 1).max().unwrap_or(0);
        migrations.push((id, cap));
        drop(migrations);
        self.rebalance();
        MigrationSlot { link: self.clone(), id, cap: Arc::new(Shaper::new(Some(cap))) }
    }

    fn rebalance(&self) {
        let taken: f64 = lock(&self.migrations).iter().map(|&(_, cap)| cap).sum();
        let left = self.usable - taken;
        let rate = if self.final_sync.load(std::sync::atomic::Ordering::Relaxed) {
            // Shared with the migrations through the link's own bucket.
            left.max(self.replication_budget).min(self.usable)
        } else {
            left.clamp(0.0, self.replication_budget)
        };
        self.replication.set_rate(Some(rate));
    }

    /// Whether a final sync is pending on the link: replication then takes
    /// at least its budget (and what migrations leave), beside them.
    pub fn set_final_sync(&self, pending: bool) {
        if self.final_sync.swap(pending, std::sync::atomic::Ordering::Relaxed) != pending {
            self.rebalance();
        }
    }

    /// What migrations and replication together may send, bytes/s.
    pub fn usable(&self) -> f64 {
        self.usable
    }

    /// What replication may use now, bytes/s.
    pub fn replication_rate(&self) -> f64 {
        self.replication.rate().unwrap_or(0.0)
    }
}

impl MigrationSlot {
    /// The buckets the migration takes from: its cap and the link's.
    pub fn shapers(&self) -> Vec<Arc<Shaper>> {
        vec![self.cap.clone(), self.link.total.clone()]
    }

    /// The schedule changed the job's cap (at most the link's usable bandwidth).
    pub fn set_cap(&self, cap: f64) {
        let cap = cap.min(self.link.usable);
        self.cap.set_rate(Some(cap));
        let mut migrations = lock(&self.link.migrations);
        if let Some(entry) = migrations.iter_mut().find(|(id, _)| *id == self.id) {
            entry.1 = cap;
        }
        drop(migrations);
        self.link.rebalance();
    }
}

impl Drop for MigrationSlot {
    fn drop(&mut self) {
        lock(&self.link.migrations).retain(|&(id, _)| id != self.id);
        self.link.rebalance();
    }
}

impl Bucket {
    fn refill(&mut self) {
        let now = Instant::now();
        if let Some(rate) = self.rate {
            let elapsed = now.duration_since(self.last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * rate).min(rate * BURST_S);
        }
        self.last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn any_rate_is_taken_without_a_panic() {
        // The least positive float, a NaN, infinity: held, held, unshaped in effect.
        for rate in [5e-324, f64::NAN] {
            let shaper = Arc::new(Shaper::new(Some(rate)));
            let taking = tokio::spawn({
                let shaper = shaper.clone();
                async move { shaper.take(1 << 20).await }
            });
            tokio::time::sleep(Duration::from_millis(60)).await;
            assert!(!taking.is_finished(), "a rate of {rate} let bytes through");
            shaper.set_rate(Some(f64::INFINITY));
            tokio::time::timeout(Duration::from_secs(1), taking).await.expect("released").unwrap();
        }
        // A huge debt at a tiny rate waits at most MAX_WAIT at a time, so a raised rate frees it soon.
        let shaper = Arc::new(Shaper::new(Some(2.0)));
        let taking = tokio::spawn({
            let shaper = shaper.clone();
            async move { shaper.take(u64::MAX).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        shaper.set_rate(None);
        tokio::time::timeout(MAX_WAIT * 2, taking).await.expect("released").unwrap();
    }

    #[tokio::test]
    async fn holds_to_the_rate_and_follows_changes() {
        let shaper = Shaper::new(Some(10e6));
        let started = Instant::now();
        for _ in 0..20 {
            shaper.take(100_000).await;
        }
        // 2 MB at 10 MB/s: about 0.2 s.
        let took = started.elapsed().as_secs_f64();
        assert!((0.18..0.4).contains(&took), "{took}");
        shaper.set_rate(None);
        let started = Instant::now();
        shaper.take(1 << 30).await;
        assert!(started.elapsed() < Duration::from_millis(50));
    }

    #[tokio::test]
    async fn replication_yields_to_migrations() {
        let link = Link::new(100e6, 30e6);
        assert_eq!(link.replication_rate(), 30e6);
        let first = link.start_migration(80e6);
        assert_eq!(link.replication_rate(), 20e6);
        let second = link.start_migration(50e6);
        assert_eq!(link.replication_rate(), 0.0, "the migrations take the whole link");
        // Held at zero, a replication sender waits until a migration ends.
        let replication = link.replication_shapers();
        let waiting = tokio::spawn(async move {
            for shaper in &replication {
                shaper.take(1000).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(!waiting.is_finished());
        drop(second);
        assert_eq!(link.replication_rate(), 20e6);
        tokio::time::timeout(Duration::from_secs(1), waiting).await.unwrap().unwrap();
        first.set_cap(10e6);
        assert_eq!(link.replication_rate(), 30e6);
        drop(first);
        assert_eq!(link.replication_rate(), 30e6);
    }
}
