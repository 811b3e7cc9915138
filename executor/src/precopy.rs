//! Pre-copy live migration of a running VM: round 0 offers every page of
//! its memory (and of its disk, when the disk moves too), each later round
//! the pages and blocks written meanwhile; once what is left fits the VM's
//! maximum downtime at the rate the last round reached, the guest pauses
//! for the final round. A guest that writes faster than the rounds shrink
//! is throttled step by step (auto-converge); past the time budget the
//! migration is given up cleanly: the destination drops what it has and
//! the guest runs on at the source. Downtime is measured from the pause to
//! the destination's verdict on the images' digests.

use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::content::{zero_page_hash, ImageFile, PageSource, PAGE};
use crate::sim::SimVm;
use crate::source::Session;
use crate::transfer::{Counters, TransferError};
use crate::wire::ImageKind;

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
    pub memory: Counters,
    pub disk: Option<Counters>,
}

#[derive(Debug, thiserror::Error)]
pub enum PrecopyError {
    #[error(transparent)]
    Transfer(#[from] TransferError),
    /// Given up; the guest runs on at the source.
    #[error("gave up after {rounds} rounds: {dirty_pages} pages still dirty ({reason})")]
    GaveUp { rounds: u32, dirty_pages: usize, reason: String },
}

/// The share of the maximum downtime the last round's pages may take: the
/// pause also ends every part and seals every image (digests over all
/// page hashes at both ends, a round trip each).
const PAGES_SHARE_OF_DOWNTIME: f64 = 0.5;

/// Each auto-converge step lets the guest run at this share of its previous rate.
const THROTTLE_STEP: f64 = 0.6;

/// The names images of a migrated VM take at the destination.
pub const MEMORY_IMAGE: &str = "memory.img";
pub const DISK_IMAGE: &str = "disk.img";

/// Migrates `vm`'s memory over `memory`'s streams and, if given, its disk
/// over `disk`'s, while it runs.
pub async fn migrate_vm<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    memory: &mut Session<S>,
    mut disk: Option<&mut Session<S>>,
    vm: &Arc<SimVm>,
    options: &PrecopyOptions,
) -> Result<PrecopyReport, PrecopyError> {
    let started = Instant::now();
    let guest: Arc<dyn PageSource> = vm.clone();
    let disk_image: Arc<dyn PageSource> = Arc::new(ImageFile::open(&vm.images().disk).map_err(TransferError::from)?);
    // Pages that had to travel, in both sessions: written pages rarely dedup,
    // so their rate is what the stop-and-copy will see.
    let sent = |memory: &Session<S>, disk: &Option<&mut Session<S>>| {
        let pages =
            memory.progress().counters.sent_pages + disk.as_ref().map_or(0, |d| d.progress().counters.sent_pages);
        (pages as usize * PAGE) as f64
    };
    // The disk's writes from now on: this migration's own log.
    let written = vm.open_write_log();
    if let Some(disk) = disk.as_deref_mut() {
        let pages = disk_image.page_count();
        disk.begin(DISK_IMAGE, ImageKind::Migration, vec![zero_page_hash(); pages as usize]).await?;
        disk.offer(disk_image.clone(), &(0..pages).collect::<Vec<_>>()).await?;
    }
    vm.take_dirty();
    let pages = guest.page_count();
    memory.begin(MEMORY_IMAGE, ImageKind::Migration, vec![zero_page_hash(); pages as usize]).await?;
    memory.offer(guest.clone(), &(0..pages).collect::<Vec<_>>()).await?;
    let mut rate = sent(memory, &disk) / started.elapsed().as_secs_f64().max(1e-6);
    let (mut rounds, mut last_dirty) = (0, usize::MAX);
    let mut round_started = Instant::now();
    loop {
        let dirty = vm.dirty_pages() + if disk.is_some() { written.pending() } else { 0 };
        let expected_downtime = (dirty * PAGE) as f64 / rate;
        let dirty_rate = (dirty * PAGE) as f64 / round_started.elapsed().as_secs_f64().max(1e-6);
        memory.report_round(rounds, dirty_rate, expected_downtime);
        if expected_downtime <= options.max_downtime_s * PAGES_SHARE_OF_DOWNTIME {
            break;
        }
        if started.elapsed().as_secs_f64() > options.budget_s {
            let reason = format!("the guest writes faster than {:.0} MB/s can carry", rate / 1e6);
            memory.abort(&reason).await?;
            if let Some(disk) = disk.as_deref_mut() {
                disk.abort(&reason).await?;
            }
            return Err(PrecopyError::GaveUp { rounds, dirty_pages: dirty, reason });
        }
        if dirty >= last_dirty {
            vm.throttle(vm.throttled() * THROTTLE_STEP);
        }
        last_dirty = dirty;
        let before = sent(memory, &disk);
        round_started = Instant::now();
        memory.offer(guest.clone(), &vm.take_dirty()).await?;
        if let Some(disk) = disk.as_deref_mut() {
            disk.offer(disk_image.clone(), &written.take()).await?;
        }
        let moved = sent(memory, &disk) - before;
        if moved > (64 * PAGE) as f64 {
            rate = moved / round_started.elapsed().as_secs_f64().max(1e-6);
        }
        rounds += 1;
    }
    // Resumed however this ends but well: an error, or a panic unwinding through here.
    let pause = vm.paused();
    let paused = Instant::now();
    let last = async {
        memory.offer(guest.clone(), &vm.take_dirty()).await?;
        memory.end().await?;
        if let Some(disk) = disk.as_deref_mut() {
            disk.offer(disk_image.clone(), &written.take()).await?;
            disk.end().await?;
            disk.seal().await?;
        }
        memory.seal().await
    }
    .await;
    // The destination did not take it: the guest runs on here.
    last?;
    pause.keep();
    Ok(PrecopyReport {
        rounds,
        downtime_s: paused.elapsed().as_secs_f64(),
        throttle: vm.throttled(),
        memory: memory.progress().counters,
        disk: disk.map(|d| d.progress().counters),
    })
}
