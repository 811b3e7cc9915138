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

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::content::{zero_page_hash, Hash, ImageFile, PageSource, PAGE};
use crate::lock;
use crate::sim::{SimVm, WriteLog};
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

    /// Whether the next sync of a disk of `pages` offers every page (the
    /// standby's copy is unknown) rather than the ones written since.
    pub fn needs_full(&self, pages: u64) -> bool {
        self.synced.as_ref().is_none_or(|h| h.len() as u64 != pages)
    }

    /// The disk's page hashes as the standby holds them since the last sync.
    pub fn hashes(&self) -> Option<&[Hash]> {
        self.synced.as_deref()
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
        let offered = if self.needs_full(pages) { (0..pages).collect() } else { written.to_vec() };
        self.sync_offering(session, disk, &offered).await
    }

    /// As [`Replica::sync`], offering `offered` (increasing): the pages
    /// written since the last sync or, when [`Replica::needs_full`], every
    /// page that may not read as zeros.
    pub async fn sync_offering<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &mut self,
        session: &mut Session<S>,
        disk: Arc<dyn PageSource>,
        offered: &[u64],
    ) -> Result<(), TransferError> {
        let pages = disk.page_count();
        let full = self.needs_full(pages);
        let baseline = match self.synced.take() {
            Some(hashes) if !full => hashes,
            _ => vec![zero_page_hash(); pages as usize],
        };
        session.begin(&self.name, ImageKind::Replica, baseline).await?;
        session.offer(disk, offered).await?;
        session.end().await?;
        self.synced = Some(session.seal().await?);
        Ok(())
    }
}

/// A VM's disk being kept in sync at one standby, in the background; stops when dropped.
pub struct Replicating {
    task: tokio::task::JoinHandle<()>,
    /// Syncs completed so far, and what the last one left at the standby.
    pub synced: tokio::sync::watch::Receiver<Synced>,
    written: Written,
    /// The page hashes the standby holds as of the last sync.
    held: Arc<Mutex<Option<Arc<Vec<Hash>>>>>,
    /// Wakes the loop for a sync out of turn.
    now: Arc<tokio::sync::Notify>,
}

/// What is known of the disk's writes since the last sync began.
#[derive(Clone)]
pub enum Written {
    /// A sim VM's write log.
    Log(Arc<WriteLog>),
    /// Bytes, as last counted (a QEMU's dirty bitmaps, queried by the caller).
    Counted(Arc<AtomicU64>),
}

impl Written {
    fn bytes(&self) -> u64 {
        match self {
            Written::Log(log) => log.pending() as u64 * PAGE as u64,
            Written::Counted(bytes) => bytes.load(Ordering::Relaxed),
        }
    }
}

/// What the standby holds after the syncs so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Synced {
    pub count: u64,
    /// When the last completed sync began: the replica holds every write
    /// made before it (its recovery point).
    pub at: Option<std::time::SystemTime>,
    /// The disk's size as of that sync.
    pub bytes: u64,
}

/// How fresh a replica is now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Freshness {
    pub synced: Synced,
    /// Bytes of the disk written since the last sync began (what a migration there still sends).
    pub written_bytes: u64,
}

impl Replicating {
    pub fn freshness(&self) -> Freshness {
        Freshness { synced: *self.synced.borrow(), written_bytes: self.written.bytes() }
    }

    /// The page hashes the standby holds, as of the last completed sync.
    pub fn held(&self) -> Option<Arc<Vec<Hash>>> {
        lock(&self.held).clone()
    }

    /// Syncs at once (after the sync under way, if any), not at the next interval.
    pub fn sync_now(&self) {
        self.now.notify_one();
    }

    /// Stops syncing and waits until the sync under way (if any) is gone.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Replicating {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Keeps replica `name` of `vm`'s disk at a standby up to date while the
/// VM runs: every `interval`, a session from `open` carries the blocks
/// written since the last sync (from a write log of its own). `open`
/// should give sessions whose streams take from the link's replication
/// shapers, so that replication yields to migrations. A sync that fails
/// is retried at the next interval, in full.
pub fn keep_synced<S, F, Fut>(vm: &SimVm, name: &str, open: F, interval: Duration) -> io::Result<Replicating>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<Session<S>, TransferError>> + Send,
{
    let disk: Arc<dyn PageSource> = Arc::new(ImageFile::open(&vm.images().disk)?);
    // Opened before the first (full) sync: what is written during it is caught.
    let log = Arc::new(vm.open_write_log());
    let task_log = log.clone();
    let sync = move |mut replica: Replica, mut session: Session<S>| {
        let (disk, log) = (disk.clone(), task_log.clone());
        async move {
            let written = log.take();
            let outcome = replica.sync(&mut session, disk.clone(), &written).await;
            (replica, outcome.map(|()| disk.page_count() * PAGE as u64))
        }
    };
    Ok(keep_synced_by(name, open, interval, Written::Log(log), sync))
}

/// The loop behind [`keep_synced`], for any disk: every `interval`,
/// `sync` brings the replica up to date over a session from `open` and
/// says how large the disk is now.
pub fn keep_synced_by<S, F, Fut, Y, YFut>(
    name: &str,
    mut open: F,
    interval: Duration,
    written: Written,
    mut sync: Y,
) -> Replicating
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<Session<S>, TransferError>> + Send,
    Y: FnMut(Replica, Session<S>) -> YFut + Send + 'static,
    YFut: Future<Output = (Replica, Result<u64, TransferError>)> + Send,
{
    let mut replica = Some(Replica::new(name));
    let (synced, watch) = tokio::sync::watch::channel(Synced::default());
    let held = Arc::new(Mutex::new(None));
    let task_held = held.clone();
    let now = Arc::new(tokio::sync::Notify::new());
    let woken = now.clone();
    let task = tokio::spawn(async move {
        loop {
            let Some(current) = replica.take() else { return };
            let name = current.name.clone();
            match open().await {
                Ok(session) => {
                    let began = std::time::SystemTime::now();
                    let (done, outcome) = sync(current, session).await;
                    match outcome {
                        Ok(bytes) => {
                            let hashes = done.hashes().map(|h| Arc::new(h.to_vec()));
                            *lock(&task_held) = hashes;
                            synced.send_modify(|s| *s = Synced { count: s.count + 1, at: Some(began), bytes });
                        }
                        // The replica forgot its last sync: the next one offers every page.
                        Err(e) => {
                            *lock(&task_held) = None;
                            tracing::warn!(replica = %name, error = %e, "a replica sync failed");
                        }
                    }
                    replica = Some(done);
                }
                Err(e) => {
                    tracing::warn!(replica = %name, error = %e, "no session to the standby");
                    replica = Some(current);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = woken.notified() => {}
            }
        }
    });
    Replicating { task, synced: watch, written, held, now }
}
