//! The `sim` driver: a VM is a memory image and a disk image in the
//! executor's data dir, whose bytes are real and whose make-up is
//! realistic, so that what the transfer stack saves on them is what it
//! would save on a real guest; while it runs, a task writes its memory and
//! its disk at their rates, and logs what it wrote as a hypervisor would.
//! The guest itself is simulated, and says so wherever it is shown
//! ([`DRIVER`]).
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

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use crate::content::{PageSource, PAGE};
use crate::lock;

/// How the driver names itself wherever a VM is shown: the bytes are real, the guest is not.
pub const DRIVER: &str = "sim";

/// Pages per disk block: writes are tracked, and replicas synced, by block.
pub const BLOCK_PAGES: u64 = 16;

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

impl ContentMix {
    /// Every page unique: nothing to dedup, nothing compressible.
    pub const UNIQUE: ContentMix =
        ContentMix { zero: 0.0, duplicate: 0.0, shared: 0.0, page_cache: 0.0, base_share: 0.0 };
}

/// A simulated VM's images in a directory.
#[derive(Debug, Clone, PartialEq)]
pub struct SimImages {
    pub memory: PathBuf,
    pub disk: PathBuf,
}

/// Pages in the base image's pool of memory pages that VMs share.
const SHARED_POOL: u64 = 4096;

/// Writes the images of a VM into `dir` (`memory.img`, `disk.img`), a
/// megabyte at a time: `base_seed` names the base image (VMs built from
/// one share its disk blocks and shared memory pages), `vm_seed` the VM.
pub fn generate(
    dir: &Path,
    memory_bytes: usize,
    disk_bytes: usize,
    mix: &ContentMix,
    base_seed: u64,
    vm_seed: u64,
) -> io::Result<SimImages> {
    std::fs::create_dir_all(dir)?;
    let images = SimImages { memory: dir.join("memory.img"), disk: dir.join("disk.img") };
    let disk_pages = disk_bytes / PAGE;
    let mut rng = StdRng::seed_from_u64(vm_seed);
    let mut chunk = vec![0u8; 256 * PAGE];
    let mut disk = File::options().read(true).write(true).create(true).truncate(true).open(&images.disk)?;
    for first in (0..disk_pages).step_by(256) {
        let n = (disk_pages - first).min(256);
        for (i, block) in chunk[..n * PAGE].chunks_exact_mut(PAGE).enumerate() {
            let page = first + i;
            if (page as f64) < disk_pages as f64 * mix.base_share {
                StdRng::seed_from_u64(base_seed ^ (page as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).fill_bytes(block);
            } else {
                rng.fill_bytes(block);
            }
        }
        disk.write_all(&chunk[..n * PAGE])?;
    }
    disk.sync_all()?;
    boot_memory(dir, memory_bytes, mix, base_seed, vm_seed)
}

/// Writes a memory image into `dir` beside its disk image, as the guest's
/// memory after it booted from that disk (page-cache pages are blocks of
/// it): what a VM restarted from a replica of its disk starts with.
pub fn boot_memory(
    dir: &Path,
    memory_bytes: usize,
    mix: &ContentMix,
    base_seed: u64,
    vm_seed: u64,
) -> io::Result<SimImages> {
    let images = SimImages { memory: dir.join("memory.img"), disk: dir.join("disk.img") };
    let disk = File::open(&images.disk)?;
    let (memory_pages, disk_pages) = (memory_bytes / PAGE, disk.metadata()?.len() as usize / PAGE);
    let mut rng = StdRng::seed_from_u64(vm_seed.rotate_left(29) ^ 0x6d65_6d6f_7279);
    let mut chunk = vec![0u8; 256 * PAGE];
    // Pages duplicated within the VM copy one of a few hot pages.
    let hot: Vec<[u8; PAGE]> = (0..64)
        .map(|_| {
            let mut page = [0u8; PAGE];
            rng.fill_bytes(&mut page);
            page
        })
        .collect();
    // The memory image appears whole or not at all (written aside, then renamed): a run cut
    // short leaves no image that looks finished, and the next boot makes them again.
    let unfinished = dir.join("memory.img.part");
    let mut memory = File::create(&unfinished)?;
    for first in (0..memory_pages).step_by(256) {
        let n = (memory_pages - first).min(256);
        for page in chunk[..n * PAGE].chunks_exact_mut(PAGE) {
            let pick: f64 = rng.random();
            if pick < mix.zero {
                page.fill(0);
            } else if pick < mix.zero + mix.duplicate {
                page.copy_from_slice(&hot[rng.random_range(0..hot.len())]);
            } else if pick < mix.zero + mix.duplicate + mix.shared {
                let n = rng.random_range(0..SHARED_POOL);
                StdRng::seed_from_u64(base_seed.rotate_left(17) ^ n).fill_bytes(page);
            } else if pick < mix.zero + mix.duplicate + mix.shared + mix.page_cache && disk_pages > 0 {
                let block = rng.random_range(0..disk_pages as u64);
                disk.read_exact_at(page, block * PAGE as u64)?;
            } else {
                rng.fill_bytes(page);
            }
        }
        memory.write_all(&chunk[..n * PAGE])?;
    }
    memory.sync_all()?;
    std::fs::rename(&unfinished, &images.memory)?;
    Ok(images)
}

/// Every disk block a guest writes starts with this, then the time of the
/// write (nanoseconds since the Unix epoch, little-endian): so that what a
/// copy of the disk holds can be dated ([`write_stamp`]).
pub const WRITE_STAMP: [u8; 8] = *b"HLTPWRIT";

/// When the guest wrote `block` (a disk block as it is now), if it did.
pub fn write_stamp(block: &[u8]) -> Option<std::time::SystemTime> {
    let nanos = block.get(8..16)?;
    (block.get(..8)? == WRITE_STAMP)
        .then(|| std::time::UNIX_EPOCH + Duration::from_nanos(u64::from_le_bytes(nanos.try_into().unwrap_or_default())))
}

/// How fast a running guest writes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Workload {
    /// Memory, bytes/s (each write dirties a whole page, as hypervisors track them).
    pub memory_bytes_per_s: f64,
    /// Disk, bytes/s (each write dirties a whole block).
    pub disk_bytes_per_s: f64,
    pub seed: u64,
}

/// A running `sim` VM: its memory held as a guest's RAM (loaded from its
/// memory image), its disk the image file itself, and a task that writes
/// both at the workload's rates, logging the pages and blocks it wrote.
pub struct SimVm {
    images: SimImages,
    state: Arc<Mutex<GuestState>>,
    task: tokio::task::JoinHandle<()>,
}

struct GuestState {
    memory: Vec<u8>,
    dirty: Vec<bool>,
    disk: File,
    disk_blocks: u64,
    /// Open write logs (see [`WriteLog`]), by id; `None` once closed.
    write_logs: Vec<Option<Vec<bool>>>,
    paused: bool,
    workload: Workload,
    /// Share of its rate the guest is let run at (auto-converge lowers it).
    throttle: f64,
}

/// How often the guest's writes are applied.
const TICK: Duration = Duration::from_millis(5);

impl SimVm {
    /// Boots a VM on `images`, writing at `workload`'s rates.
    pub fn start(images: SimImages, workload: Workload) -> io::Result<SimVm> {
        let memory = std::fs::read(&images.memory)?;
        let disk = File::options().read(true).write(true).open(&images.disk)?;
        let disk_blocks = disk.metadata()?.len() / (BLOCK_PAGES * PAGE as u64);
        let pages = memory.len() / PAGE;
        let state = Arc::new(Mutex::new(GuestState {
            memory,
            dirty: vec![false; pages],
            disk,
            disk_blocks,
            write_logs: Vec::new(),
            paused: false,
            workload,
            throttle: 1.0,
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(workload.seed);
            let (mut owed_pages, mut owed_blocks) = (0.0, 0.0);
            let mut last = Instant::now();
            loop {
                tokio::time::sleep(TICK).await;
                let now = Instant::now();
                let mut s = lock(&shared);
                let elapsed = now.duration_since(last).as_secs_f64();
                last = now;
                if s.paused {
                    continue;
                }
                // A task that was held up catches up by at most a tenth of a second.
                let catch_up = |owed: f64, rate: f64| (owed + rate * elapsed).min(rate * 0.1 + 1.0);
                let page_rate = s.workload.memory_bytes_per_s * s.throttle / PAGE as f64;
                let block_rate = s.workload.disk_bytes_per_s * s.throttle / (BLOCK_PAGES as usize * PAGE) as f64;
                owed_pages = catch_up(owed_pages, page_rate);
                owed_blocks = catch_up(owed_blocks, block_rate);
                while owed_pages >= 1.0 && pages > 0 {
                    owed_pages -= 1.0;
                    // A write changes a page (its hash and what must be sent), not all its bytes.
                    let page = rng.random_range(0..pages);
                    let at = page * PAGE + rng.random_range(0..PAGE / 8) * 8;
                    s.memory[at..at + 8].copy_from_slice(&rng.random::<u64>().to_le_bytes());
                    s.dirty[page] = true;
                }
                while owed_blocks >= 1.0 && s.disk_blocks > 0 {
                    owed_blocks -= 1.0;
                    let block = rng.random_range(0..s.disk_blocks);
                    let mut data = vec![0u8; BLOCK_PAGES as usize * PAGE];
                    rng.fill_bytes(&mut data);
                    let written = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                    data[..8].copy_from_slice(&WRITE_STAMP);
                    data[8..16].copy_from_slice(&(written.unwrap_or_default().as_nanos() as u64).to_le_bytes());
                    // A failed write is a guest's I/O error; the block is not logged as written.
                    if s.disk.write_all_at(&data, block * BLOCK_PAGES * PAGE as u64).is_ok() {
                        s.write_logs.iter_mut().flatten().for_each(|log| log[block as usize] = true);
                    }
                }
            }
        });
        Ok(SimVm { images, state, task })
    }

    fn lock(&self) -> MutexGuard<'_, GuestState> {
        lock(&self.state)
    }

    /// Memory pages written since the last take; the log starts afresh.
    pub fn take_dirty(&self) -> Vec<u64> {
        let mut s = self.lock();
        let taken = s.dirty.iter().enumerate().filter(|(_, &d)| d).map(|(n, _)| n as u64).collect();
        s.dirty.iter_mut().for_each(|d| *d = false);
        taken
    }

    /// Memory pages written since the last take.
    pub fn dirty_pages(&self) -> usize {
        self.lock().dirty.iter().filter(|&&d| d).count()
    }

    /// Starts logging the disk's writes for one consumer.
    pub fn open_write_log(&self) -> WriteLog {
        let mut s = self.lock();
        let blocks = vec![false; s.disk_blocks as usize];
        let id = match s.write_logs.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                s.write_logs.push(None);
                s.write_logs.len() - 1
            }
        };
        s.write_logs[id] = Some(blocks);
        WriteLog { state: self.state.clone(), id }
    }

    pub fn pause(&self) {
        self.lock().paused = true;
    }

    /// Pauses the guest until the guard is dropped, whatever ends its
    /// scope (an error, a panic unwinding through it), unless it is kept
    /// paused on purpose (`Paused::keep`, once the destination has it).
    pub fn paused(&self) -> Paused<'_> {
        self.pause();
        Paused { vm: Some(self) }
    }

    pub fn resume(&self) {
        self.lock().paused = false;
    }

    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// Lets the guest run at `share` of its rate (1 is unthrottled).
    pub fn throttle(&self, share: f64) {
        self.lock().throttle = share.clamp(0.0, 1.0);
    }

    pub fn throttled(&self) -> f64 {
        self.lock().throttle
    }

    /// The guest's memory as it is now.
    pub fn memory(&self) -> Vec<u8> {
        self.lock().memory.clone()
    }

    pub fn images(&self) -> &SimImages {
        &self.images
    }

    /// Stops the guest for good and deletes its images (after a migration, at the source).
    pub fn destroy(self) -> io::Result<()> {
        self.task.abort();
        std::fs::remove_file(&self.images.memory)?;
        std::fs::remove_file(&self.images.disk)
    }
}

/// The disk blocks a guest wrote since the log was last taken. Each
/// consumer (a migration, a standby's replication) keeps its own, as a
/// hypervisor keeps a dirty bitmap per consumer; it stops logging when dropped.
pub struct WriteLog {
    state: Arc<Mutex<GuestState>>,
    id: usize,
}

impl WriteLog {
    fn with<T>(&self, f: impl FnOnce(&mut Vec<bool>) -> T) -> T {
        let mut s = lock(&self.state);
        f(s.write_logs[self.id].as_mut().expect("an open log"))
    }

    /// Disk pages (whole blocks) written since the last take; the log starts afresh.
    pub fn take(&self) -> Vec<u64> {
        self.with(|log| {
            let pages = log
                .iter()
                .enumerate()
                .filter(|(_, &w)| w)
                .flat_map(|(b, _)| b as u64 * BLOCK_PAGES..(b as u64 + 1) * BLOCK_PAGES)
                .collect();
            log.iter_mut().for_each(|w| *w = false);
            pages
        })
    }

    /// Disk pages (whole blocks) written since the last take.
    pub fn pending(&self) -> usize {
        self.with(|log| log.iter().filter(|&&w| w).count()) * BLOCK_PAGES as usize
    }
}

impl Drop for WriteLog {
    fn drop(&mut self) {
        lock(&self.state).write_logs[self.id] = None;
    }
}

/// The guest's memory, read page by page as it runs (pre-copy reads it so;
/// the dirty log catches what changes after).
impl PageSource for SimVm {
    fn page_count(&self) -> u64 {
        (self.lock().memory.len() / PAGE) as u64
    }

    fn read_pages(&self, first: u64, buf: &mut [u8]) -> io::Result<()> {
        let s = self.lock();
        let from = first as usize * PAGE;
        let memory =
            s.memory.get(from..from + buf.len()).ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(memory);
        Ok(())
    }
}

impl Drop for SimVm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A paused guest, resumed when this is dropped (see [`SimVm::paused`]).
pub struct Paused<'a> {
    vm: Option<&'a SimVm>,
}

impl Paused<'_> {
    /// Leaves the guest paused: the destination holds it now.
    pub fn keep(mut self) {
        self.vm = None;
    }
}

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        if let Some(vm) = self.vm {
            vm.resume();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::{hash, pages, zero_page_hash};
    use std::collections::HashSet;

    #[test]
    fn the_mix_shows_in_the_pages() {
        let dir = tempfile::tempdir().unwrap();
        let vm = generate(&dir.path().join("a"), 16 << 20, 16 << 20, &ContentMix::default(), 1, 2).unwrap();
        let (memory, disk) = (std::fs::read(&vm.memory).unwrap(), std::fs::read(&vm.disk).unwrap());
        let total = (16 << 20) / PAGE;
        let zero = pages(&memory).filter(|p| hash(p) == zero_page_hash()).count();
        assert!((zero as f64 / total as f64 - 0.15).abs() < 0.02, "{zero} of {total}");
        let disk: HashSet<_> = pages(&disk).map(hash).collect();
        let cached = pages(&memory).filter(|p| disk.contains(&hash(p))).count();
        assert!((cached as f64 / total as f64 - 0.35).abs() < 0.02, "{cached} of {total}");
        // Another VM of the same base image shares half its disk.
        let other = generate(&dir.path().join("b"), 1 << 20, 16 << 20, &ContentMix::default(), 1, 3).unwrap();
        let common = pages(&std::fs::read(&other.disk).unwrap()).filter(|p| disk.contains(&hash(p))).count();
        assert_eq!(common, total / 2);
    }

    #[tokio::test]
    async fn a_running_vm_logs_its_writes_pauses_and_is_destroyed() {
        let dir = tempfile::tempdir().unwrap();
        let images = generate(dir.path(), 1 << 20, 4 << 20, &ContentMix::default(), 1, 2).unwrap();
        let vm =
            SimVm::start(images.clone(), Workload { memory_bytes_per_s: 4e6, disk_bytes_per_s: 4e6, seed: 3 }).unwrap();
        let (first, second) = (vm.open_write_log(), vm.open_write_log());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(vm.dirty_pages() > 0);
        let written = first.take();
        assert!(!written.is_empty() && written.len().is_multiple_of(BLOCK_PAGES as usize));
        assert!(second.pending() >= written.len(), "each consumer keeps its own log");
        drop(second);
        vm.pause();
        vm.take_dirty();
        first.take();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(vm.dirty_pages(), 0, "a paused guest writes nothing");
        assert!(first.take().is_empty());
        drop(first);
        vm.destroy().unwrap();
        assert!(!images.memory.exists() && !images.disk.exists());
    }
}
