//! An image being received (a landing): its file and what each page of
//! it holds, and the parts of it the connections of its session claimed.
//! It outlives those connections, so that a session whose connection
//! dropped resumes where it was. Only the images a job was assigned land,
//! no larger than the scheduler allowed.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::content::{zero_page_hash, Hash, PAGE};
use crate::index::Holding;
use crate::lock;
use crate::transfer::{TransferError, MAX_IMAGE_PAGES};
use crate::wire::ImageKind;

use super::{check_name, Destination};

/// An image being received.
pub(super) struct Landing {
    pub(super) kind: ImageKind,
    pub(super) pages: u64,
    /// Where it is written; where it is kept once sealed.
    pub(super) partial: PathBuf,
    pub(super) path: PathBuf,
    pub(super) file: File,
    pub(super) state: Mutex<LandingState>,
}

/// What a landing holds so far.
pub(super) struct LandingState {
    /// What each page of the file holds.
    pub(super) on_disk: Vec<Hash>,
    pub(super) parts: Vec<Claim>,
}

/// A part of the image a connection carries.
pub(super) struct Claim {
    pub(super) first: u64,
    pub(super) count: u64,
    /// A newer connection that claims the same part (after a drop) supersedes the old one.
    pub(super) generation: u64,
    pub(super) verified: bool,
}

impl Destination {
    /// The landing of image `name` of `job`, made if this is its first part.
    pub(super) fn landing(
        &self,
        job: u64,
        name: &str,
        kind: ImageKind,
        pages: u64,
    ) -> Result<Arc<Landing>, TransferError> {
        check_name(name)?;
        // Only what the job was assigned, no larger than the VM it moves: an authenticated
        // peer cannot make this executor hold more than the scheduler gave the job.
        match lock(&self.allowed).get(&job).map(|allowed| allowed.iter().find(|a| a.name == name && a.kind == kind)) {
            Some(Some(allowed)) if pages <= allowed.max_pages => {}
            Some(Some(allowed)) => {
                let most = allowed.max_pages;
                return Err(TransferError::Protocol(format!(
                    "image {name} of {pages} pages: job {job} sends {most} at most"
                )));
            }
            Some(None) => return Err(TransferError::Protocol(format!("job {job} sends no {kind:?} image {name}"))),
            None if kind == ImageKind::Replica => {
                return Err(TransferError::Protocol(format!("job {job} may not write replica {name}")));
            }
            None => {}
        }
        if pages > MAX_IMAGE_PAGES {
            return Err(TransferError::Protocol(format!("image {name} of {pages} pages is too large")));
        }
        let mut landings = lock(&self.landings);
        if let Some(landing) = landings.get(&(job, name.to_owned())) {
            if landing.kind != kind || landing.pages != pages {
                return Err(TransferError::Protocol(format!("image {name} changed its shape mid-session")));
            }
            return Ok(landing.clone());
        }
        let landing = match kind {
            ImageKind::Migration => {
                let path = self.image_path(job, name);
                let dir = path.parent().expect("an image path has a directory");
                std::fs::create_dir_all(dir)?;
                let partial = dir.join(format!(".{name}.partial"));
                Landing::fresh(kind, pages, partial, path)?
            }
            ImageKind::Replica => {
                let path = self.replica_path(name);
                let known = crate::read(&self.index).hashes_of(&path).map(<[Hash]>::to_vec);
                match known {
                    // The replica as last synced: updated in place, written pages only.
                    Some(on_disk) if on_disk.len() as u64 == pages => {
                        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path)?;
                        Landing::with(kind, pages, path.clone(), path, file, on_disk)
                    }
                    _ => Landing::fresh(kind, pages, path.clone(), path)?,
                }
            }
        };
        let landing = Arc::new(landing);
        landings.insert((job, name.to_owned()), landing.clone());
        Ok(landing)
    }

    /// Drops a landing that failed: a partial image goes; a replica stays,
    /// indexed as what it now holds.
    pub(super) fn drop_landing(&self, job: u64, name: &str) -> Result<(), TransferError> {
        let Some(landing) = lock(&self.landings).remove(&(job, name.to_owned())) else { return Ok(()) };
        match landing.kind {
            ImageKind::Migration => {
                let _ = std::fs::remove_file(&landing.partial);
            }
            ImageKind::Replica => {
                let on_disk = lock(&landing.state).on_disk.clone();
                crate::write(&self.index).add_file(&landing.path, Holding::Replica, on_disk)?;
            }
        }
        Ok(())
    }
}

impl Landing {
    /// A new file of `pages` zero pages.
    fn fresh(kind: ImageKind, pages: u64, partial: PathBuf, path: PathBuf) -> io::Result<Landing> {
        // Read as well as written: later copies of a page are read back from it.
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&partial)?;
        file.set_len(pages * PAGE as u64)?;
        Ok(Landing::with(kind, pages, partial, path, file, vec![zero_page_hash(); pages as usize]))
    }

    fn with(kind: ImageKind, pages: u64, partial: PathBuf, path: PathBuf, file: File, on_disk: Vec<Hash>) -> Landing {
        Landing { kind, pages, partial, path, file, state: Mutex::new(LandingState { on_disk, parts: Vec::new() }) }
    }

    /// Claims pages `first..first + count` for a connection; returns its generation.
    pub(super) fn claim(&self, first: u64, count: u64) -> Result<u64, TransferError> {
        if first.checked_add(count).is_none_or(|end| end > self.pages) {
            return Err(TransferError::Protocol(format!("a part {first}+{count} outside {} pages", self.pages)));
        }
        let mut state = lock(&self.state);
        let generation = state.parts.iter().map(|c| c.generation + 1).max().unwrap_or(0);
        if let Some(claim) = state.parts.iter_mut().find(|c| c.first == first && c.count == count) {
            *claim = Claim { first, count, generation, verified: false };
        } else if state.parts.iter().any(|c| first < c.first + c.count && c.first < first + count) {
            return Err(TransferError::Protocol(format!("part {first}+{count} overlaps another")));
        } else {
            state.parts.push(Claim { first, count, generation, verified: false });
        }
        Ok(generation)
    }
}
