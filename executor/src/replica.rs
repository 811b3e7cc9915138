//! Proactive disk caching: a VM's disk replicated in the background to
//! its standby sites (the planner's likeliest destinations), so that a
//! migration there later sends only what was written since.
//!
//! The first sync offers every page (the standby's chunk index already
//! holds the base image's blocks); each later one offers only the blocks
//! the guest wrote since, against the hashes of the last sync. A replica is
//! a cache, not a backup: the guest writes on while it syncs, and what a
//! migration takes from it is checked page by page like everything else.
//! A sync that fails (the standby lost or changed its copy) leaves the
//! next one to offer every page again.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::content::{zero_page_hash, Hash, PageSource};
use crate::source::Session;
use crate::transfer::TransferError;
use crate::wire::ImageKind;

/// A VM's disk as one standby site holds it.
pub struct Replica {
    /// Its name at the standby (a file name).
    pub name: String,
    /// The disk's page hashes as of the last sync that completed.
    synced: Option<Vec<Hash>>,
}

impl Replica {
    pub fn new(name: &str) -> Replica {
        Replica { name: name.to_owned(), synced: None }
    }

    pub fn is_synced(&self) -> bool {
        self.synced.is_some()
    }

    /// Brings the standby's replica up to date over `session`: `written`
    /// (increasing) are the disk's pages written since the last sync.
    pub async fn sync<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &mut self,
        session: &mut Session<S>,
        disk: Arc<dyn PageSource>,
        written: &[u64],
    ) -> Result<(), TransferError> {
        let pages = disk.page_count();
        let (baseline, numbers) = match self.synced.take() {
            Some(hashes) if hashes.len() as u64 == pages => (hashes, written.to_vec()),
            _ => (vec![zero_page_hash(); pages as usize], (0..pages).collect()),
        };
        session.begin(&self.name, ImageKind::Replica, baseline).await?;
        session.offer(disk, &numbers).await?;
        session.end().await?;
        self.synced = Some(session.seal().await?);
        Ok(())
    }
}
