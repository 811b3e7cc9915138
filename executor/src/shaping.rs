//! Shaping: a token bucket holds a job's bytes to the cap the schedule gave
//! it, and another can hold all jobs on a link to its usable bandwidth; a
//! sender takes from every bucket it is under. Caps can change mid-transfer.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket; `None` for a rate means unshaped.
pub struct Shaper {
    bucket: Mutex<Bucket>,
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
        Shaper { bucket: Mutex::new(Bucket { rate: bytes_per_s, tokens: 0.0, last: Instant::now() }) }
    }

    /// Changes the rate from now on.
    pub fn set_rate(&self, bytes_per_s: Option<f64>) {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        b.refill();
        b.rate = bytes_per_s;
    }

    /// Takes `bytes`, waiting as long as the rate asks.
    pub async fn take(&self, bytes: u64) {
        let wait = {
            let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
            b.refill();
            match b.rate {
                None => return,
                Some(rate) => {
                    b.tokens -= bytes as f64;
                    (b.tokens < 0.0).then(|| Duration::from_secs_f64(-b.tokens / rate))
                }
            }
        };
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
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
}
