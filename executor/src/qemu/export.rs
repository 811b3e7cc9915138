//! A running QEMU's disks as proactive caching reads them: only through
//! QEMU's own interfaces, never the image files behind its back. Each
//! disk's writes are recorded in a dirty bitmap; at each sync one QMP
//! `transaction` freezes the bitmaps and starts the next ones, so that no
//! write falls between two syncs. The disks are then published on a
//! read-only NBD export with the frozen bitmaps, and the client reads the
//! extents their block status (`qemu:dirty-bitmap:NAME`) marks; a first
//! sync reads what the disks allocate (`base:allocation`).
//!
//! A VM's disks are replicated as one image, back to back, each starting
//! at a whole page.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::future::Future;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};

use heliotrope_api_spec::QemuDisk;

use super::machine::Machine;
use super::migrate::MigrateError;
use crate::content::{PageSource, PAGE};
use crate::lock;
use crate::nbd::{self, Client, NbdError};
use crate::replica::{keep_synced_by, Replica, Replicating, Written};
use crate::source::Session;
use crate::transfer::TransferError;

const PREFIX: &str = "heliotrope-replica-";

/// A VM's disks whose writes are being recorded for replication.
pub struct Recorded {
    machine: Arc<Machine>,
    disks: Vec<QemuDisk>,
    socket: PathBuf,
    generation: u64,
}

/// The bitmaps one sync reads (frozen), published on the NBD export.
pub struct Frozen {
    bitmap: String,
}

fn bitmap(generation: u64) -> String {
    format!("{PREFIX}{generation}")
}

fn export_id(node: &str) -> String {
    format!("replica-{node}")
}

/// Where each disk starts in the replica, in pages, and the replica's length.
pub fn layout(disks: &[QemuDisk]) -> (Vec<u64>, u64) {
    let mut first = Vec::with_capacity(disks.len());
    let mut pages = 0;
    for disk in disks {
        first.push(pages);
        pages += disk.size_bytes.div_ceil(PAGE as u64);
    }
    (first, pages)
}

/// The dirty bitmaps on `node` (QEMU lists them per block device).
fn bitmaps_on(query_block: &Value, node: &str) -> Vec<(String, u64)> {
    let devices = query_block.as_array().map(Vec::as_slice).unwrap_or_default();
    devices
        .iter()
        .filter(|d| d["inserted"]["node-name"] == node)
        .flat_map(|d| {
            let listed = d["inserted"]["dirty-bitmaps"].as_array().or_else(|| d["dirty-bitmaps"].as_array());
            listed.cloned().unwrap_or_default()
        })
        .filter_map(|b| Some((b["name"].as_str()?.to_owned(), b["count"].as_u64().unwrap_or(0))))
        .collect()
}

impl Recorded {
    /// Starts recording the writes to `disks` of `machine` (dropping the
    /// bitmaps an earlier executor left); the export will listen at `socket`.
    pub async fn start(machine: Arc<Machine>, disks: Vec<QemuDisk>, socket: &Path) -> Result<Recorded, MigrateError> {
        let qmp = &machine.qmp;
        let blocks = qmp.execute("query-block", json!({})).await?;
        for disk in &disks {
            for (name, _) in bitmaps_on(&blocks, &disk.node).into_iter().filter(|(n, _)| n.starts_with(PREFIX)) {
                qmp.execute("block-dirty-bitmap-remove", json!({"node": disk.node, "name": name})).await?;
            }
        }
        let actions: Vec<Value> = disks
            .iter()
            .map(|d| {
                json!({"type": "block-dirty-bitmap-add",
                    "data": {"node": d.node, "name": bitmap(0), "granularity": PAGE, "persistent": false}})
            })
            .collect();
        qmp.execute("transaction", json!({ "actions": actions })).await?;
        Ok(Recorded { machine, disks, socket: socket.to_owned(), generation: 0 })
    }

    /// Bytes written since the last freeze.
    pub async fn written_bytes(&self) -> Result<u64, MigrateError> {
        let blocks = self.machine.qmp.execute("query-block", json!({})).await?;
        let active = bitmap(self.generation);
        Ok(self
            .disks
            .iter()
            .flat_map(|d| bitmaps_on(&blocks, &d.node))
            .filter(|(name, _)| *name == active)
            .map(|(_, count)| count)
            .sum())
    }

    /// Freezes the writes recorded so far (recording goes on in new
    /// bitmaps) and exports the disks read-only with the frozen ones.
    pub async fn freeze(&mut self) -> Result<Frozen, MigrateError> {
        let qmp = &self.machine.qmp;
        let (frozen, next) = (bitmap(self.generation), bitmap(self.generation + 1));
        let mut actions = Vec::new();
        for d in &self.disks {
            actions.push(json!({"type": "block-dirty-bitmap-add",
                "data": {"node": d.node, "name": next, "granularity": PAGE, "persistent": false}}));
            actions.push(json!({"type": "block-dirty-bitmap-disable", "data": {"node": d.node, "name": frozen}}));
        }
        qmp.execute("transaction", json!({ "actions": actions })).await?;
        self.generation += 1;
        let _ = std::fs::remove_file(&self.socket);
        let addr = json!({"type": "unix", "data": {"path": self.socket}});
        qmp.execute("nbd-server-start", json!({ "addr": addr })).await?;
        for d in &self.disks {
            let export = json!({"type": "nbd", "id": export_id(&d.node), "node-name": d.node, "name": d.node,
                "writable": false, "bitmaps": [frozen]});
            qmp.execute("block-export-add", export).await?;
        }
        Ok(Frozen { bitmap: frozen })
    }

    /// What opens the export of `frozen` (see [`open`]), to run off the runtime.
    fn open(&self, frozen: &Frozen, full: bool) -> impl FnOnce() -> Result<(ExportedDisks, Vec<u64>), NbdError> {
        let (socket, disks) = (self.socket.clone(), self.disks.clone());
        let context = format!("qemu:dirty-bitmap:{}", frozen.bitmap);
        move || open(&socket, &disks, &context, full)
    }

    /// Ends the sync of `frozen`: the export goes, and the frozen bitmaps
    /// with it; unless `synced`, their writes go back into the recording
    /// ones first, so that a failed sync loses none.
    pub async fn release(&self, frozen: Frozen, synced: bool) -> Result<(), MigrateError> {
        let qmp = &self.machine.qmp;
        for d in &self.disks {
            let id = export_id(&d.node);
            if qmp.execute("block-export-del", json!({"id": id, "mode": "hard"})).await.is_ok() {
                qmp.wait_event("BLOCK_EXPORT_DELETED", |e| e["id"] == id.as_str(), Duration::from_secs(10)).await?;
            }
        }
        let _ = qmp.execute("nbd-server-stop", json!({})).await;
        let active = bitmap(self.generation);
        for d in &self.disks {
            if !synced {
                let merge = json!({"node": d.node, "target": active, "bitmaps": [frozen.bitmap]});
                qmp.execute("block-dirty-bitmap-merge", merge).await?;
            }
            qmp.execute("block-dirty-bitmap-remove", json!({"node": d.node, "name": frozen.bitmap})).await?;
        }
        Ok(())
    }
}

/// Opens the export at `socket`: `disks` as one image, and (unless `full`)
/// the pages `context` (a frozen bitmap) marks written, else the pages the
/// disks allocate. Blocking.
fn open(socket: &Path, disks: &[QemuDisk], context: &str, full: bool) -> Result<(ExportedDisks, Vec<u64>), NbdError> {
    let (first, pages) = layout(disks);
    let mut clients = Vec::new();
    let mut numbers = Vec::new();
    for (disk, &first) in disks.iter().zip(&first) {
        let mut client = Client::connect(socket, &disk.node, &[nbd::BASE_ALLOCATION, context])?;
        if client.size() > disk.size_bytes {
            return Err(NbdError::Protocol(format!("{} is larger than its spec says", disk.node)));
        }
        let wanted = if full { nbd::BASE_ALLOCATION } else { context };
        for extent in client.extents(wanted)? {
            // Allocated: anything that does not read as zeros; written: marked dirty.
            let take = if full { extent.flags & nbd::STATE_ZERO == 0 } else { extent.flags & nbd::STATE_DIRTY != 0 };
            if take {
                let (from, to) = (extent.offset / PAGE as u64, (extent.offset + extent.length).div_ceil(PAGE as u64));
                numbers.extend((from..to).map(|p| first + p));
            }
        }
        clients.push(Exported { first, size: client.size(), client: Mutex::new(client) });
    }
    numbers.dedup();
    Ok((ExportedDisks { disks: clients, pages }, numbers))
}

struct Exported {
    first: u64,
    size: u64,
    client: Mutex<Client>,
}

/// A VM's disks on their export, read as one image (see [`layout`]).
pub struct ExportedDisks {
    disks: Vec<Exported>,
    pages: u64,
}

/// The most one NBD read asks for.
const READ_SPAN: usize = 4 << 20;

impl PageSource for ExportedDisks {
    fn page_count(&self) -> u64 {
        self.pages
    }

    fn read_pages(&self, first: u64, buf: &mut [u8]) -> std::io::Result<()> {
        buf.fill(0);
        let mut page = first;
        let mut rest = &mut buf[..];
        while !rest.is_empty() {
            let disk = self
                .disks
                .iter()
                .rev()
                .find(|d| d.first <= page)
                .ok_or_else(|| std::io::Error::other(format!("page {page} is in no disk")))?;
            let offset = (page - disk.first) * PAGE as u64;
            let left = disk.size.div_ceil(PAGE as u64).saturating_sub(page - disk.first) as usize * PAGE;
            if left == 0 {
                return Err(std::io::Error::other(format!("page {page} is past the disks' end")));
            }
            let take = rest.len().min(READ_SPAN).min(left);
            let (now, later) = rest.split_at_mut(take);
            // The last page of a disk whose size is not whole pages reads short; the rest stays zero.
            let readable = (disk.size.saturating_sub(offset) as usize).min(now.len());
            if readable > 0 {
                let mut client = lock(&disk.client);
                client.read(offset, &mut now[..readable]).map_err(std::io::Error::other)?;
            }
            page += (take / PAGE) as u64;
            rest = later;
        }
        Ok(())
    }
}

/// Keeps replica `name` of the `recorded` disks up to date at a standby
/// (the loop of [`crate::replica::keep_synced_by`]): each sync freezes the
/// bitmaps and offers the pages they mark (a first or failed-before sync:
/// the pages the disks allocate). `written` is where the caller keeps the
/// bytes written since (see [`Recorded::written_bytes`]).
pub fn keep_synced<S, F, Fut>(
    recorded: Arc<tokio::sync::Mutex<Recorded>>,
    name: &str,
    open: F,
    interval: Duration,
    written: Arc<std::sync::atomic::AtomicU64>,
) -> Replicating
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<Session<S>, TransferError>> + Send,
{
    let sync = move |mut replica: Replica, mut session: Session<S>| {
        let recorded = recorded.clone();
        async move {
            let mut recorded = recorded.lock().await;
            let outcome = sync_once(&mut recorded, &mut replica, &mut session).await;
            (replica, outcome)
        }
    };
    keep_synced_by(name, open, interval, Written::Counted(written), sync)
}

async fn sync_once<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    recorded: &mut Recorded,
    replica: &mut Replica,
    session: &mut Session<S>,
) -> Result<u64, TransferError> {
    let qemu = |e: MigrateError| TransferError::Protocol(format!("QEMU: {e}"));
    let frozen = recorded.freeze().await.map_err(qemu)?;
    let full = replica.needs_full(layout(&recorded.disks).1);
    let outcome = async {
        let opened = tokio::task::spawn_blocking(recorded.open(&frozen, full)).await;
        let opened = opened.map_err(|e| TransferError::Protocol(format!("reading the export: {e}")))?;
        let (disks, numbers) = opened.map_err(|e| TransferError::Protocol(e.to_string()))?;
        let bytes = disks.page_count() * PAGE as u64;
        replica.sync_offering(session, Arc::new(disks), &numbers).await?;
        Ok(bytes)
    }
    .await;
    recorded.release(frozen, outcome.is_ok()).await.map_err(qemu)?;
    outcome
}
