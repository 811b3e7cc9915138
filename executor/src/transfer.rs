//! Content-addressed transfer of VM images between two executors: what
//! the source and the destination ([`crate::source`],
//! [`crate::destination`]) share: limits, counters, progress and errors.
//!
//! The source offers page hashes in batches over several streams at once;
//! the destination answers where it gets each page (zero, already in
//! place, a repeat, its chunk index, its cached disk replica) and only the
//! pages it lacks travel, zstd-compressed. Every page that arrives is
//! checked against its hash, each part's and then each image's digest are
//! compared at both ends, and only a sealed image is kept.

use std::io;
use std::sync::Mutex;
use std::time::Instant;

use heliotrope_api_spec::SavedBytes;
use serde::Serialize;

use crate::content::PAGE;
use crate::lock;
use crate::wire::{Origin, WireError};

/// Pages offered per batch.
pub const BATCH: usize = 1024;

/// Batches offered on a stream before the first is answered.
pub const WINDOW: usize = 4;

/// The most pages one image may have (1 TiB).
pub const MAX_IMAGE_PAGES: u64 = 1 << 28;

/// The most streams one job's session may open.
pub const MAX_STREAMS: u16 = 16;

/// What a transfer moved and what it saved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Counters {
    /// The bytes offered (a live image's pages count again each round they are offered).
    pub raw_bytes: u64,
    /// Everything written to the connections (frames, hashes, pages).
    pub wire_bytes: u64,
    /// Pages that were all zero: never sent.
    pub zero_pages: u64,
    /// Pages equal to one the destination got earlier in the image: copied there.
    pub repeat_pages: u64,
    /// Pages the destination's chunk index held (images it hosts or received).
    pub index_pages: u64,
    /// Pages the destination's cached replica of the disk held.
    pub cache_pages: u64,
    /// Pages already in place (an earlier connection brought them, or the replica holds them unchanged).
    pub in_place_pages: u64,
    /// Pages of the memory this VM left the destination with before.
    pub returning_pages: u64,
    pub sent_pages: u64,
    /// The sent pages' bytes on the wire, after compression.
    pub compressed_bytes: u64,
}

impl Counters {
    pub(crate) fn count(&mut self, origin: Origin) {
        let counter = match origin {
            Origin::Sent => &mut self.sent_pages,
            Origin::Zero => &mut self.zero_pages,
            Origin::Repeat => &mut self.repeat_pages,
            Origin::Index => &mut self.index_pages,
            Origin::Cache => &mut self.cache_pages,
            Origin::InPlace => &mut self.in_place_pages,
            Origin::Returning => &mut self.returning_pages,
        };
        *counter += 1;
    }

    fn add(&mut self, other: &Counters) {
        self.raw_bytes += other.raw_bytes;
        self.wire_bytes += other.wire_bytes;
        self.zero_pages += other.zero_pages;
        self.repeat_pages += other.repeat_pages;
        self.index_pages += other.index_pages;
        self.cache_pages += other.cache_pages;
        self.in_place_pages += other.in_place_pages;
        self.returning_pages += other.returning_pages;
        self.sent_pages += other.sent_pages;
        self.compressed_bytes += other.compressed_bytes;
    }

    /// Bytes kept off the wire, by mechanism.
    pub fn savings(&self) -> SavedBytes {
        let bytes = |pages: u64| pages * PAGE as u64;
        SavedBytes {
            zero: bytes(self.zero_pages),
            dedup: bytes(self.repeat_pages + self.index_pages),
            disk_cache: bytes(self.cache_pages),
            in_place: bytes(self.in_place_pages),
            compression: bytes(self.sent_pages).saturating_sub(self.compressed_bytes),
            returning: bytes(self.returning_pages),
        }
    }
}

/// A transfer's progress, as the scheduler is told it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Progress {
    #[serde(flatten)]
    pub counters: Counters,
    pub saved: SavedBytes,
    /// Bytes to offer in all (grows as a live image's rounds add pages).
    pub planned_bytes: u64,
    /// Pre-copy round (0: the first pass over every page).
    pub round: u32,
    /// How fast a live guest writes its memory, bytes/s.
    pub dirty_bytes_per_s: f64,
    /// The pause a stop-and-copy would take now, seconds.
    pub expected_downtime_s: Option<f64>,
    /// Time left at the rate so far, seconds.
    pub eta_s: Option<f64>,
    pub elapsed_s: f64,
}

impl Progress {
    /// One tally for a migration whose images travel in several sessions
    /// (memory, disk): bytes add up; the round, dirty rate and expected
    /// downtime are `self`'s (the live memory); the time left is the longest.
    pub fn and(&self, other: &Progress) -> Progress {
        let mut counters = self.counters;
        counters.add(&other.counters);
        let eta_s = match (self.eta_s, other.eta_s) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        Progress {
            counters,
            saved: counters.savings(),
            planned_bytes: self.planned_bytes + other.planned_bytes,
            eta_s,
            elapsed_s: self.elapsed_s.max(other.elapsed_s),
            ..*self
        }
    }
}

/// A session's running totals, shared by its streams; each change is
/// passed on to whoever watches the progress.
pub(crate) struct Tally {
    started: Instant,
    state: Mutex<Progress>,
    watch: Option<tokio::sync::watch::Sender<Progress>>,
}

impl Tally {
    pub(crate) fn new(watch: Option<tokio::sync::watch::Sender<Progress>>) -> Tally {
        Tally { started: Instant::now(), state: Mutex::new(Progress::default()), watch }
    }

    /// Applies `change` and reports the result.
    pub(crate) fn update(&self, change: impl FnOnce(&mut Progress)) {
        let mut p = lock(&self.state);
        change(&mut p);
        p.elapsed_s = self.started.elapsed().as_secs_f64();
        p.saved = p.counters.savings();
        let rate = p.counters.raw_bytes as f64 / p.elapsed_s.max(1e-6);
        p.eta_s = (rate > 0.0).then(|| p.planned_bytes.saturating_sub(p.counters.raw_bytes) as f64 / rate);
        if let Some(watch) = &self.watch {
            watch.send_replace(*p);
        }
    }

    pub(crate) fn add(&self, counters: &Counters) {
        self.update(|p| p.counters.add(counters));
    }

    pub(crate) fn progress(&self) -> Progress {
        *lock(&self.state)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("refused: {0}")]
    Refused(String),
    /// The destination does not hold the job's secret: it does not expect
    /// the job (yet: a destination takes its side when it claims it), or it
    /// is not the executor the job was given to.
    #[error("refused: the destination does not hold this job's secret")]
    NotExpected,
    #[error("protocol: {0}")]
    Protocol(String),
    /// A page or image that does not match its hash: nothing is kept.
    #[error("integrity: {0}")]
    Integrity(String),
    #[error("storage: {0}")]
    Storage(#[from] io::Error),
}

impl TransferError {
    /// The connection dropped: a new session can resume.
    pub fn is_dropped_connection(&self) -> bool {
        matches!(self, TransferError::Wire(WireError::Io(_)))
    }
}

pub(crate) fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    // blake3's Hash compares in constant time.
    blake3::Hash::from(*a) == blake3::Hash::from(*b)
}

/// The zstd level to send at: the strongest of 1, 3 and 6 whose measured
/// speed on `sample` (pages of the image) is at least twice the cap, so
/// that compression never becomes the bottleneck; level 1 when unshaped.
pub fn choose_level(sample: &[u8], cap_bytes_per_s: Option<f64>) -> i32 {
    let Some(cap) = cap_bytes_per_s else { return 1 };
    let sample = &sample[..sample.len().min(256 * PAGE)];
    let mut chosen = 1;
    for level in [3, 6] {
        let started = Instant::now();
        // As batches are compressed: whole.
        let _ = zstd::bulk::compress(sample, level);
        let speed = sample.len() as f64 / started.elapsed().as_secs_f64().max(1e-9);
        if speed >= 2.0 * cap {
            chosen = level;
        }
    }
    chosen
}

/// Page numbers as runs of consecutive pages.
pub(crate) fn runs(numbers: &[u64]) -> Vec<(u64, u32)> {
    let mut runs: Vec<(u64, u32)> = Vec::new();
    for &n in numbers {
        match runs.last_mut() {
            Some((first, len)) if *first + u64::from(*len) == n => *len += 1,
            _ => runs.push((n, 1)),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_migrations_sessions_make_one_tally() {
        let memory = Progress {
            counters: Counters {
                raw_bytes: 100,
                wire_bytes: 40,
                sent_pages: 1,
                compressed_bytes: 1000,
                ..Default::default()
            },
            round: 3,
            dirty_bytes_per_s: 5e6,
            expected_downtime_s: Some(0.2),
            eta_s: Some(4.0),
            elapsed_s: 10.0,
            planned_bytes: 200,
            ..Default::default()
        };
        let disk = Progress {
            counters: Counters { raw_bytes: 1000, wire_bytes: 10, zero_pages: 2, ..Default::default() },
            eta_s: Some(9.0),
            elapsed_s: 9.5,
            planned_bytes: 2000,
            ..Default::default()
        };
        let both = memory.and(&disk);
        assert_eq!((both.counters.raw_bytes, both.counters.wire_bytes, both.planned_bytes), (1100, 50, 2200));
        assert_eq!((both.round, both.dirty_bytes_per_s, both.expected_downtime_s), (3, 5e6, Some(0.2)));
        assert_eq!((both.eta_s, both.elapsed_s), (Some(9.0), 10.0));
        assert_eq!((both.saved.zero, both.saved.compression), (2 * PAGE as u64, PAGE as u64 - 1000));
    }
}
