//! Pre-copy live migration of a running guest's memory: round 0 offers
//! every page, each later round the pages written meanwhile; once what is
//! left fits the VM's maximum downtime at the rate the last round reached,
//! the guest pauses for the final round. A guest that writes faster than
//! the rounds shrink is throttled step by step (auto-converge); past the
//! time budget the migration is given up cleanly: the destination drops
//! what it has and the guest runs on at the source. Downtime is measured
//! from the pause to the destination's verdict on the image's digest.

use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::content::{Hash, PAGE};
use crate::sim::SimGuest;
use crate::transfer::{finish, handshake, offer, Counters, SendOptions, TransferError};
use crate::wire::{write_frame, Frame};

/// When to stop and copy, and when to give up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrecopyOptions {
    pub max_downtime_s: f64,
    /// Longest the live rounds may take before the migration is given up.
    pub budget_s: f64,
}

/// A migration that converged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrecopyReport {
    /// Live rounds after round 0.
    pub rounds: u32,
    pub downtime_s: f64,
    /// The share of its rate the guest ran at in the end (1: never throttled).
    pub throttle: f64,
    pub counters: Counters,
}

#[derive(Debug, thiserror::Error)]
pub enum PrecopyError {
    #[error(transparent)]
    Transfer(#[from] TransferError),
    /// Given up; the guest runs on at the source.
    #[error("gave up after {rounds} rounds: {dirty_pages} pages still dirty ({reason})")]
    GaveUp { rounds: u32, dirty_pages: usize, reason: String },
}

/// Each auto-converge step lets the guest run at this share of its previous rate.
const THROTTLE_STEP: f64 = 0.6;

/// Migrates `guest`'s memory as image `name` of `job` over `stream`.
pub async fn migrate_guest<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    job: u64,
    secret: &[u8],
    guest: &SimGuest,
    name: &str,
    send: &SendOptions<'_>,
    options: &PrecopyOptions,
) -> Result<PrecopyReport, PrecopyError> {
    let mut counters = Counters { wire_bytes: handshake(stream, job, secret).await?, ..Counters::default() };
    let mut compressor = zstd::bulk::Compressor::new(send.level).map_err(TransferError::from)?;
    let started = Instant::now();
    let snapshot = guest.snapshot();
    let pages = snapshot.len() / PAGE;
    counters.wire_bytes += write_frame(stream, &Frame::Image { name: name.to_owned(), pages: pages as u64 })
        .await
        .map_err(TransferError::from)?;
    let numbered: Vec<(u64, &[u8])> = snapshot.chunks_exact(PAGE).enumerate().map(|(n, p)| (n as u64, p)).collect();
    counters.raw_bytes += snapshot.len() as u64;
    let mut hashes: Vec<Hash> = offer(stream, &numbered, &mut compressor, send, &mut counters).await?;
    // Bytes of pages that had to travel, per second, in the last round: what
    // the stop-and-copy will see (written pages rarely dedup).
    let mut rate = (counters.sent_pages as usize * PAGE) as f64 / started.elapsed().as_secs_f64().max(1e-6);
    let mut rounds = 0;
    let mut last_dirty = usize::MAX;
    loop {
        let dirty = guest.dirty_pages();
        if (dirty * PAGE) as f64 / rate <= options.max_downtime_s {
            break;
        }
        if started.elapsed().as_secs_f64() > options.budget_s {
            let reason = format!("the guest dirties memory faster than {:.0} MB/s can carry", rate / 1e6);
            write_frame(stream, &Frame::Abort { reason: reason.clone() }).await.map_err(TransferError::from)?;
            return Err(PrecopyError::GaveUp { rounds, dirty_pages: dirty, reason });
        }
        if dirty >= last_dirty {
            guest.throttle(guest.throttled() * THROTTLE_STEP);
        }
        last_dirty = dirty;
        let (round_started, sent_before) = (Instant::now(), counters.sent_pages);
        send_dirty(stream, guest, &mut hashes, &mut compressor, send, &mut counters).await?;
        let sent = (counters.sent_pages - sent_before) as usize * PAGE;
        if sent > 64 * PAGE {
            rate = sent as f64 / round_started.elapsed().as_secs_f64().max(1e-6);
        }
        rounds += 1;
    }
    guest.pause();
    let paused = Instant::now();
    let last = async {
        send_dirty(stream, guest, &mut hashes, &mut compressor, send, &mut counters).await?;
        finish(stream, &hashes, &mut counters).await
    }
    .await;
    if let Err(e) = last {
        // The destination did not take it: the guest runs on here.
        guest.resume();
        return Err(e.into());
    }
    Ok(PrecopyReport { rounds, downtime_s: paused.elapsed().as_secs_f64(), throttle: guest.throttled(), counters })
}

/// Offers the pages written since the last round.
async fn send_dirty<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    guest: &SimGuest,
    hashes: &mut [Hash],
    compressor: &mut zstd::bulk::Compressor<'_>,
    send: &SendOptions<'_>,
    counters: &mut Counters,
) -> Result<(), TransferError> {
    let taken = guest.take_dirty();
    if taken.is_empty() {
        return Ok(());
    }
    let numbered: Vec<(u64, &[u8])> = taken.iter().map(|(n, p)| (*n, p.as_slice())).collect();
    let fresh = offer(stream, &numbered, compressor, send, counters).await?;
    for ((n, _), h) in taken.iter().zip(fresh) {
        hashes[*n as usize] = h;
    }
    counters.raw_bytes += (taken.len() * PAGE) as u64;
    Ok(())
}
