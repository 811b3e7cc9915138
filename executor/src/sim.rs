//! The `sim` driver's VM content: a memory image and a disk image whose
//! bytes are real and whose make-up is realistic, so that what the
//! transfer stack saves on them is what it would save on a real guest.
//! The guest itself is simulated, and says so wherever it is shown.
//!
//! Default shares of memory pages (they are settings; real guests vary
//! widely):
//! - zero 15%: Barker et al., "An Empirical Study of Memory Sharing in
//!   Virtual Machines" (USENIX ATC 2012) count zero pages apart from
//!   sharing; idle or oversized guests hold far more (an idle 32 GiB guest
//!   migrated in 5-12% of the time once zero pages were skipped), long-running
//!   ones fewer. 15% is a middle reading, not a measurement.
//! - duplicated within the VM 10% and shared with VMs of the same base
//!   image 2%: Barker et al. find sharing (zero pages excluded) "generally
//!   under 15%", over 90% of it within a single machine.
//! - page cache 35% (pages equal to blocks of the VM's disk): Jo et al.,
//!   "Efficient Live Migration of Virtual Machines Using Shared Storage"
//!   (VEE 2013): the OS uses "the better part of the physical memory to
//!   cache data from secondary storage"; 35% is a conservative reading.
//! - the rest, 38%, unique.
//!
//! Disks: `base_share` of the blocks come from the base image (the same
//! for every VM built from it, like an OS image), the rest are the VM's own.

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use crate::content::PAGE;

/// Shares of memory pages by kind; they sum to at most 1 (the rest is unique).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ContentMix {
    pub zero: f64,
    pub duplicate: f64,
    pub shared: f64,
    pub page_cache: f64,
    /// Share of disk blocks taken from the base image.
    pub base_share: f64,
}

impl Default for ContentMix {
    fn default() -> Self {
        ContentMix { zero: 0.15, duplicate: 0.10, shared: 0.02, page_cache: 0.35, base_share: 0.5 }
    }
}

/// A simulated VM's images.
#[derive(Debug, Clone, PartialEq)]
pub struct SimImages {
    pub memory: Vec<u8>,
    pub disk: Vec<u8>,
}

/// Pages in the base image's pool of memory pages that VMs share.
const SHARED_POOL: u64 = 4096;

/// Builds the images of a VM: `base_seed` names the base image (VMs built
/// from one share its disk blocks and shared memory pages), `vm_seed` the VM.
pub fn generate(memory_bytes: usize, disk_bytes: usize, mix: &ContentMix, base_seed: u64, vm_seed: u64) -> SimImages {
    let (memory_pages, disk_pages) = (memory_bytes / PAGE, disk_bytes / PAGE);
    let mut rng = StdRng::seed_from_u64(vm_seed);
    let mut disk = vec![0u8; disk_pages * PAGE];
    for (i, block) in disk.chunks_exact_mut(PAGE).enumerate() {
        if (i as f64) < disk_pages as f64 * mix.base_share {
            StdRng::seed_from_u64(base_seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).fill_bytes(block);
        } else {
            rng.fill_bytes(block);
        }
    }
    let mut memory = vec![0u8; memory_pages * PAGE];
    // Pages duplicated within the VM copy one of a few hot pages.
    let hot: Vec<[u8; PAGE]> = (0..64)
        .map(|_| {
            let mut page = [0u8; PAGE];
            rng.fill_bytes(&mut page);
            page
        })
        .collect();
    for page in memory.chunks_exact_mut(PAGE) {
        let pick: f64 = rng.random();
        if pick < mix.zero {
            continue;
        } else if pick < mix.zero + mix.duplicate {
            page.copy_from_slice(&hot[rng.random_range(0..hot.len())]);
        } else if pick < mix.zero + mix.duplicate + mix.shared {
            let n = rng.random_range(0..SHARED_POOL);
            StdRng::seed_from_u64(base_seed.rotate_left(17) ^ n).fill_bytes(page);
        } else if pick < mix.zero + mix.duplicate + mix.shared + mix.page_cache && disk_pages > 0 {
            let block = rng.random_range(0..disk_pages) * PAGE;
            page.copy_from_slice(&disk[block..block + PAGE]);
        } else {
            rng.fill_bytes(page);
        }
    }
    SimImages { memory, disk }
}

/// A running simulated guest: its memory, written by a task at its dirty
/// rate (8 random bytes at a time in random pages: every write dirties its
/// page, and the dirty rate counts whole pages, as hypervisors track them),
/// with a dirty log as the hypervisor would keep one.
pub struct SimGuest {
    state: std::sync::Arc<std::sync::Mutex<GuestState>>,
    task: tokio::task::JoinHandle<()>,
}

struct GuestState {
    memory: Vec<u8>,
    dirty: Vec<bool>,
    paused: bool,
    /// Bytes/s the guest writes before any throttling.
    dirty_bytes_per_s: f64,
    /// Share of its rate the guest is let run at (auto-converge lowers it).
    throttle: f64,
}

/// How often the guest's writes are applied.
const TICK: std::time::Duration = std::time::Duration::from_millis(5);

impl SimGuest {
    /// Starts a guest on `memory` (whole pages) dirtying `dirty_bytes_per_s`.
    pub fn start(memory: Vec<u8>, dirty_bytes_per_s: f64, seed: u64) -> SimGuest {
        let pages = memory.len() / PAGE;
        let state = std::sync::Arc::new(std::sync::Mutex::new(GuestState {
            memory,
            dirty: vec![false; pages],
            paused: false,
            dirty_bytes_per_s,
            throttle: 1.0,
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut owed = 0.0;
            let mut last = std::time::Instant::now();
            loop {
                tokio::time::sleep(TICK).await;
                let now = std::time::Instant::now();
                let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                if s.paused || pages == 0 {
                    last = now;
                    continue;
                }
                // A task that was held up catches up by at most a tenth of a second.
                let rate = s.dirty_bytes_per_s * s.throttle / PAGE as f64;
                owed = (owed + rate * now.duration_since(last).as_secs_f64()).min(rate * 0.1 + 1.0);
                last = now;
                while owed >= 1.0 {
                    owed -= 1.0;
                    // A write changes a page (its hash and what must be sent), not all its bytes.
                    let page = rng.random_range(0..pages);
                    let at = page * PAGE + rng.random_range(0..PAGE / 8) * 8;
                    s.memory[at..at + 8].copy_from_slice(&rng.random::<u64>().to_le_bytes());
                    s.dirty[page] = true;
                }
            }
        });
        SimGuest { state, task }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GuestState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// All of memory, as of now; the dirty log starts afresh.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut s = self.lock();
        s.dirty.iter_mut().for_each(|d| *d = false);
        s.memory.clone()
    }

    /// Pages written since the last snapshot or take, with their content now; the log starts afresh.
    pub fn take_dirty(&self) -> Vec<(u64, Vec<u8>)> {
        let mut s = self.lock();
        let mut taken = Vec::new();
        for page in 0..s.dirty.len() {
            if std::mem::take(&mut s.dirty[page]) {
                taken.push((page as u64, s.memory[page * PAGE..(page + 1) * PAGE].to_vec()));
            }
        }
        taken
    }

    /// Pages written since the last snapshot or take.
    pub fn dirty_pages(&self) -> usize {
        self.lock().dirty.iter().filter(|&&d| d).count()
    }

    pub fn pause(&self) {
        self.lock().paused = true;
    }

    pub fn resume(&self) {
        self.lock().paused = false;
    }

    /// Lets the guest run at `share` of its rate (1 is unthrottled).
    pub fn throttle(&self, share: f64) {
        self.lock().throttle = share.clamp(0.0, 1.0);
    }

    pub fn throttled(&self) -> f64 {
        self.lock().throttle
    }

    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// Memory as it is now.
    pub fn memory(&self) -> Vec<u8> {
        self.lock().memory.clone()
    }
}

impl Drop for SimGuest {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::{hash, pages, zero_page_hash};
    use std::collections::HashSet;

    #[test]
    fn the_mix_shows_in_the_pages() {
        let images = generate(16 << 20, 16 << 20, &ContentMix::default(), 1, 2);
        let total = (16 << 20) / PAGE;
        let zero = pages(&images.memory).filter(|p| hash(p) == zero_page_hash()).count();
        assert!((zero as f64 / total as f64 - 0.15).abs() < 0.02, "{zero} of {total}");
        let disk: HashSet<_> = pages(&images.disk).map(hash).collect();
        let cached = pages(&images.memory).filter(|p| disk.contains(&hash(p))).count();
        assert!((cached as f64 / total as f64 - 0.35).abs() < 0.02, "{cached} of {total}");
        // Another VM of the same base image shares half its disk.
        let other = generate(1 << 20, 16 << 20, &ContentMix::default(), 1, 3);
        let common = pages(&other.disk).filter(|p| disk.contains(&hash(p))).count();
        assert_eq!(common, total / 2);
    }
}
