//! The memory images migrations carry through this site (`memory/<vm>/<job>/`):
//! a fresh one is live while its migration runs; kept, its files join the
//! chunk index (the VM's earlier images go, and those the index's budget
//! dropped); dropped, it goes. A VM that comes back finds most of its
//! memory here already.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::content::Hash;
use crate::index::{page_hashes, ChunkIndex, Holding};
use crate::lock;
use crate::ram_image::RamImage;

use super::{check_name, Destination};

impl Destination {
    /// A fresh image for the memory migration `job` of VM `vm` carries
    /// through this site, in `memory/<vm>/<job>/`. Until it is kept or
    /// dropped it is live: no other image's keeping touches it.
    pub fn new_ram_image(&self, vm: &str, job: u64) -> io::Result<Arc<RamImage>> {
        check_name(vm).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let dir = self.data_dir.join("memory").join(vm).join(job.to_string());
        let mut live = lock(&self.live_images);
        // As the index names files: whole, so that a VM's own earlier images are told apart.
        std::fs::create_dir_all(&dir)?;
        let dir = std::fs::canonicalize(&dir)?;
        let image = Arc::new(RamImage::create(&dir)?);
        live.insert(dir);
        Ok(image)
    }

    /// Keeps `image` (its migration is done): its files join the chunk
    /// index and the VM's earlier images here go; then, best effort, so do
    /// the images the index's budget has dropped. Live images are never
    /// touched. Hashes every page: call it off the async runtime.
    pub fn keep_ram_image(&self, image: &RamImage) -> io::Result<()> {
        let files = image.files()?;
        let hashed: Vec<(PathBuf, Vec<Hash>)> =
            files.into_iter().map(|f| page_hashes(&f).map(|h| (f, h))).collect::<io::Result<_>>()?;
        // Whole paths, as the live images are named.
        let memory = std::fs::canonicalize(self.data_dir.join("memory"))?;
        let vm_dir = image.dir().parent().unwrap_or(&memory).to_owned();
        let mut live = lock(&self.live_images);
        live.remove(image.dir());
        let mut index = crate::write(&self.index);
        for earlier in subdirectories(&vm_dir)?.into_iter().filter(|d| d != image.dir() && !live.contains(d)) {
            for file in std::fs::read_dir(&earlier)? {
                index.forget(&file?.path())?;
            }
            std::fs::remove_dir_all(&earlier)?;
        }
        for (file, hashes) in hashed {
            index.add_file(&file, Holding::Image, hashes)?;
        }
        if let Err(e) = sweep_dropped(&memory, &index, &live) {
            tracing::warn!(error = %e, "memory images the index dropped are left on disk for now");
        }
        Ok(())
    }

    /// Drops `image` (its migration did not move the VM, or keeping it failed).
    pub fn drop_ram_image(&self, image: &RamImage) {
        let mut live = lock(&self.live_images);
        live.remove(image.dir());
        let mut index = crate::write(&self.index);
        for file in image.files().unwrap_or_default() {
            let _ = index.forget(&file);
        }
        if let Err(e) = std::fs::remove_dir_all(image.dir()) {
            tracing::warn!(error = %e, dir = %image.dir().display(), "a memory image was left behind");
        }
    }
}

/// The directories in `dir` (none if it does not exist).
fn subdirectories(dir: &Path) -> io::Result<Vec<PathBuf>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            let mut dirs = Vec::new();
            for entry in entries {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    dirs.push(entry.path());
                }
            }
            Ok(dirs)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Deletes the images under `memory` (`<vm>/<job>/`) of which the index
/// holds no file any more, and VMs' directories left empty; never a live one.
fn sweep_dropped(memory: &Path, index: &ChunkIndex, live: &HashSet<PathBuf>) -> io::Result<()> {
    for vm in subdirectories(memory)? {
        for job in subdirectories(&vm)?.into_iter().filter(|j| !live.contains(j)) {
            let files = std::fs::read_dir(&job)?.map(|f| f.map(|f| f.path())).collect::<io::Result<Vec<_>>>()?;
            if files.iter().all(|f| index.hashes_of(f).is_none()) {
                std::fs::remove_dir_all(&job)?;
            }
        }
        if subdirectories(&vm)?.is_empty() && !live.iter().any(|l| l.starts_with(&vm)) {
            std::fs::remove_dir(&vm)?;
        }
    }
    Ok(())
}
